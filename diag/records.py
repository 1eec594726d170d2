"""The records diag writes to ``results.json``, as typed dataclasses with a schema version.

``results.json`` is written from these types and read back into them: :class:`SweepRecord` (the
file), :class:`CheckpointRecord` (one probed checkpoint or base), :class:`MetricStats` (a
metric's value with its interval), :class:`Recommendation`, :class:`Onset`, :class:`Check`.
The JSON Schema in ``docs/results.schema.json`` is generated from them (:func:`json_schema`;
``python -m diag.records`` prints it) and a test validates real sweep results against it.

Reading is lenient (a missing key takes its default; a key this version does not know is kept
and written back unchanged); the schema is strict about what is there.

>>> rec = CheckpointRecord.from_dict({"run": "lora", "step": 10, "metrics": {"drift": 0.1}})
>>> rec.where, rec.metric("drift"), rec.metric("retention")
('lora step 10', 0.1, None)
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from diag.serde import Record, record_field
from diag.serde import json_schema as record_schema

SCHEMA_VERSION = 1


def tool_block() -> dict:
    from diag import __version__

    return {"name": "diag", "version": __version__}


# ---------------------------------------------------------------------------------- records
@dataclass
class MetricStats(Record):
    """Everything the policy and the report need to judge one metric, beyond its point value."""

    value: float | None = record_field(
        doc="the point estimate (same as metrics[name])", omit="empty"
    )
    low: float | None = record_field(doc="95 % interval (Wilson for proportions)", omit="empty")
    high: float | None = record_field(doc="upper end of the interval", omit="empty")
    successes: int | None = record_field(doc="for proportions: how many passed", omit="empty")
    n: int | None = record_field(doc="samples the value rests on", omit="empty")
    base_value: float | None = record_field(doc="the same metric on the base model", omit="empty")
    paired: dict[str, Any] | None = record_field(
        doc="retention: both/base_only/ckpt_only/neither counts and newly_wrong item ids",
        omit="empty",
    )
    extra: dict[str, Any] = record_field(
        doc="metric-specific details (clusters, design_effect, answer_logprob, hit_max...)",
        omit="empty",
        factory=dict,
    )


@dataclass(frozen=True)
class Check(Record):
    """One policy check on one checkpoint: the same object drives recommend, report and gate.

    value/threshold are what the detail sentence quotes. A check that could not be evaluated (the
    metric was not measured) has ``passed=False`` and ``value=None``: no evidence, no pass.
    """

    name: str = record_field("", "a policy check: status or a metric name")
    passed: bool = record_field(False, "whether the checkpoint passes it")
    blocking: bool = record_field(
        True, "a failure makes the checkpoint ineligible (else a warning)"
    )
    value: float | None = record_field(None, "the measured value the detail quotes")
    threshold: float | None = record_field(None, "the limit it was compared with")
    detail: str = record_field("", "one sentence, with the numbers")

    @property
    def no_evidence(self) -> bool:
        """The policy could not evaluate it: the probe errored or the metric is missing."""
        return not self.passed and (self.name == "status" or self.value is None)


@dataclass(frozen=True)
class Onset(Record):
    """Where a run's collapse score breaks; ``changes`` quotes each curve before -> after."""

    healthy_until: int = record_field(0, "last step judged healthy (0 = the base)")
    collapsing_from: int = record_field(0, "first step of the collapse")
    jump: float = record_field(0.0, "rise of the mean collapse score across the onset (0..1)")
    changes: dict[str, tuple[float, float]] = record_field(
        doc="metric -> [before, after] for curves that got worse by at least 0.05", factory=dict
    )
    method: str = record_field("policy", '"policy" (persistent failed checks) or "change_point"')
    failed: tuple[str, ...] = record_field((), "the collapse checks failed at collapsing_from")
    first_failure: int | None = record_field(
        None, "an earlier step that failed a check, then recovered"
    )
    pressure_crossed: list[int] | None = record_field(
        None,
        "[A, B]: parrot pressure crossed one half between saves A and B (the early sign)",
        "none",
    )
    _derived: typing.ClassVar[dict[str, str]] = {"sentence": "the onset in words"}

    @classmethod
    def from_dict(cls, data):
        return super().from_dict({k: v for k, v in data.items() if k not in cls._derived})

    def sentence(self) -> str:
        """'healthy up to step 300, collapsing from step 400 (leakage 0% -> 83%, ...)'."""
        from diag.metrics import METRICS

        parts = [
            f"{METRICS[name].short} {METRICS[name].format(a)} → {METRICS[name].format(b)}"
            for name, (a, b) in self.changes.items()
        ]
        where = "the base (step 0)" if self.healthy_until == 0 else f"step {self.healthy_until}"
        detail = f" ({', '.join(parts)})" if parts else ""
        text = f"healthy up to {where}, collapsing from step {self.collapsing_from}{detail}"
        if self.first_failure is not None:
            text += f"; step {self.first_failure} already failed a check once, then recovered"
        if self.pressure_crossed:
            a, b = self.pressure_crossed
            text += f"; parrot pressure crossed one half between steps {a} and {b}"
        return text

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sentence": self.sentence()}


@dataclass
class ProbeInfo(Record):
    version: int = record_field(1, "bumped when the probe's scoring changes")
    direction: str = record_field("higher", '"higher" or "lower" is better for its headline metric')


@dataclass
class CheckpointRecord(Record):
    """One probed checkpoint, or the base model as step 0 (``format`` "base")."""

    run: str = record_field("", "run folder relative to RUNS_DIR ('base' for a shared base row)")
    step: int = record_field(0, "training step; 0 for the base model")
    path: str = record_field("", "where the weights were found (the base's name for step 0)")
    format: str = record_field(
        "", "base, peft-adapter, full-model, xtuner-pth, deepspeed-zero, ..."
    )
    label: str | None = record_field(None, 'null, "final" or "epoch N"')
    also: list[str] = record_field(doc="other paths holding the same weights", factory=list)
    fingerprint: str | None = record_field(None, "content hash of the weight files")
    base: str | None = record_field(None, "the base model it was probed on")
    chat: dict[str, Any] | None = record_field(None, "the prompt format used")
    target: str | None = record_field(
        None,
        'what it was judged against: the hash of its run\'s identity, or "none" when the run '
        "taught no identity (its identity checks do not apply); null in older results",
    )
    judged_on: list[str] | None = record_field(
        None,
        'what its run taught that checks measure: "identity", "task", both, or neither (then '
        "it is judged for damage only); null in older results (the identity checks apply)",
        "none",
    )
    status: str = record_field("ok", '"ok" or "error"')
    error: str | None = record_field(None, "one-line message when status is error")
    error_type: str | None = record_field(None, "the kind of error (DiagError, OSError, ...)")
    stage: str | None = record_field(
        None,
        '"full": the full probe suite measured it; "screen": only the screen (a fixed subset '
        "of prompts in the identity's languages); null in results written before stages",
        "none",
    )
    prompts: dict[str, int] | None = record_field(
        None, "prompts asked per probe set (each metric's own count is stats[name].n)", "none"
    )
    stopped: dict[str, dict[str, Any]] | None = record_field(
        None,
        "probe sets whose prompts stopped early because every blocking check reading them was "
        "settled, or (asked 0, a staged sweep's screen) never asked because the checkpoint had "
        "learned nothing yet: {set: {asked, of, settled: [checks]}}",
        "none",
    )
    cached: bool | None = record_field(None, "read from cache/ rather than probed now", "none")
    cache_key: str | None = record_field(
        None, "the cache entry it was read from or written to", "none"
    )
    metrics: dict[str, float | None] = record_field(
        doc="every metric of diag.metrics.METRICS; null when not run or on error", factory=dict
    )
    stats: dict[str, MetricStats] | None = record_field(
        None, "intervals and counts per metric", "none"
    )
    by_language: dict[str, dict[str, float | None]] | None = record_field(
        None, "every metric per prompt language", "none"
    )
    identity_keywords: dict[str, MetricStats] | None = record_field(
        None, "recall per identity keyword", "none"
    )
    task: dict[str, Any] | None = record_field(
        None,
        "task runs: the task's hash, whether its questions are held-out rows (held_out; else "
        "seen rows: fit, not generalisation), that label, and its distinctive terms",
        "none",
    )
    probe_sets: dict[str, str] | None = record_field(None, "content hash of each probe set", "none")
    set_versions: dict[str, int] | None = record_field(
        None, "probe-set versions that scored it", "none"
    )
    probes: dict[str, ProbeInfo] | None = record_field(
        None, "version and direction per probe", "none"
    )
    rescored: dict[str, dict[str, int]] | None = record_field(
        None, "sets re-scored from answers generated under an older version", "none"
    )
    no_change: bool | None = record_field(None, "its likelihoods equal the base's exactly", "none")
    train_loss: float | None = record_field(
        None, "last logged training loss at or before this step"
    )
    eval_loss: float | None = record_field(None, "last logged eval loss at or before this step")
    notes: list[str] | None = record_field(None, "what discovery noticed about it", "none")
    _sometimes: typing.ClassVar[frozenset[str]] = frozenset({"train_loss", "eval_loss"})

    def _omitted(self) -> set[str]:
        # a base row has no training history: no notes, and no loss keys at all
        return {"train_loss", "eval_loss"} if self.notes is None else set()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def where(self) -> str:
        return f"{self.run} step {self.step}"

    @property
    def screened_only(self) -> bool:
        """Measured by the screen alone, not by the full probe suite."""
        return self.stage == "screen"

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    def base_metric(self, name: str, base: CheckpointRecord | None) -> float | None:
        """The base model's value of ``name``, asked the same prompts as this checkpoint: the
        base row's, or for a screened checkpoint the base's own value on the screen's prompts."""
        value = None if base is None or self.screened_only else base.metric(name)
        return self.stat(name).base_value if value is None else value

    def stat(self, name: str) -> MetricStats:
        """The metric's stats (an empty MetricStats when there are none)."""
        return (self.stats or {}).get(name) or MetricStats(None)


@dataclass
class TaughtRecord(Record):
    """What a run was taught (``diag taught RUNS_DIR`` prints it as identity YAML)."""

    identity: dict[str, Any] | None = record_field(
        None, "the identity spec and its hash; null: the run taught none"
    )
    source: str = record_field("", "where it came from: --identity, diag-run.json, the data")
    known: bool = record_field(True, "false when what the run taught could not be known")
    files: list[dict[str, Any]] = record_field(
        doc="training files read: path, how it was found, rows, format, role", factory=list
    )
    rows: int = record_field(0, "training rows read")
    self_description_rows: int | None = record_field(
        None, "rows that ask who the assistant is (derived identities)"
    )
    parts: dict[str, str] = record_field(
        doc="where each part of a derived identity came from", factory=dict
    )
    placeholders: dict[str, int] = record_field(
        doc="unfilled placeholders in the training answers, with how many answers carry each",
        factory=dict,
    )
    warnings: list[str] = record_field(doc="what the user should check", factory=list)
    why_none: str | None = record_field(None, "why no identity was derived")
    task: dict[str, Any] | None = record_field(
        None,
        "the narrow task the rest of the data teaches (diag/task.py TaskSpec: the questions asked "
        "with their reference answers, a sample of training answers, the typical answers), its "
        "hash and label (held-out rows, or seen rows); null: none",
    )
    task_parts: dict[str, str] = record_field(
        doc="where each part of the task came from", factory=dict
    )
    why_no_task: str | None = record_field(None, "why no task was derived")


@dataclass
class RunRecord(Record):
    """A training run found under RUNS_DIR: what its files say about it."""

    path: str = record_field("", "the run folder")
    trainer: str | None = record_field(None, "diag, llama-factory, xtuner, ms-swift, ... or null")
    base: str | None = record_field(None, "the base model the run names")
    base_source: str | None = record_field(None, "the file (and key) the base came from")
    chat: dict[str, Any] | None = record_field(None, "the prompt format the trainer recorded")
    xtuner_config: str | None = record_field(None, "the XTuner config read")
    steps_per_epoch: int | None = record_field(None, "for epoch-numbered checkpoints")
    training: dict[str, Any] | None = record_field(
        None, "diag runs: save_every, max_steps, lr, ..."
    )
    notes: list[str] = record_field(doc="what discovery noticed about the run", factory=list)
    taught: TaughtRecord | None = record_field(
        None, "what the run was taught, and from where (null in older results)"
    )
    train_loss: list[list[float]] = record_field(doc="[step, loss] pairs", factory=list)
    eval_loss: list[list[float]] = record_field(doc="[step, loss] pairs", factory=list)


@dataclass
class SkipRecord(Record):
    """A folder that looks like a checkpoint but was not swept."""

    path: str = record_field("", "the folder or file")
    reason: str = record_field("", "why it was not swept")
    fix: str = record_field("", "what would make it sweepable")


@dataclass
class Timing(Record):
    seconds: float = record_field(0.0, "wall time of the sweep")
    probed: int = record_field(0, "checkpoints probed in this sweep")
    cached: int = record_field(0, "checkpoints read from the cache")


@dataclass
class NearestMiss(Record):
    run: str | None = record_field(None, "its run")
    step: int | None = record_field(None, "its step")
    path: str | None = record_field(None, "its path")
    failed: list[str] = record_field(doc="the blocking checks it failed", factory=list)
    details: list[str] = record_field(doc="their sentences", factory=list)
    distance: float | None = record_field(
        None,
        "how far from eligible: each failed blocking check's shortfall (0 at its limit, 1 at "
        "its worst), summed; the nearest miss has the smallest (docs/policy.md)",
        "none",
    )


@dataclass
class JudgedCheckpoint(Record):
    run: str | None = record_field(None, "its run")
    step: int | None = record_field(None, "its step")
    path: str | None = record_field(None, "its path")
    eligible: bool = record_field(False, "every blocking check passes")
    checks: list[Check] = record_field(
        doc="every policy check, in the policy's order", factory=list
    )


@dataclass
class RunPick(Record):
    """The recommendation within one run."""

    run: str | None = record_field(None, "the run")
    step: int | None = record_field(None, "its pick (null: nothing eligible)")
    path: str | None = record_field(None, "the pick's path")
    reasons: list[str] = record_field(doc="why, in numbers", factory=list)
    onset: Onset | None = record_field(None, "where the run collapses")
    onset_step: int | None = record_field(None, "onset.collapsing_from")
    nearest_miss: NearestMiss | None = record_field(
        None, "nothing eligible: the closest checkpoint"
    )
    next_steps: list[str] | None = record_field(None, "nothing eligible: what to do next", "none")


_JUDGED = (
    "onset",
    "verdict",
    "next_steps",
    "eligible_count",
    "nearest_miss",
    "rule",
    "policy",
    "policy_hash",
    "runs",
    "checks",
)


@dataclass
class Recommendation(Record):
    """The checkpoint to ship, with reasons; every field null/empty when there is none.

    While a sweep is running only run/step/path/reasons/onset_step are written (all null).
    """

    run: str | None = record_field(None, "the recommended checkpoint's run")
    step: int | None = record_field(None, "its step (null: nothing eligible)")
    path: str | None = record_field(None, "its path")
    reasons: list[str] = record_field(doc="why, in numbers", factory=list)
    onset_step: int | None = record_field(None, "where overfitting starts in the pick's run")
    onset: Onset | None = record_field(None, "that onset in full")
    verdict: str | None = record_field(None, "one line")
    next_steps: list[str] = record_field(doc="nothing eligible: what to do next", factory=list)
    eligible_count: int = record_field(0, "checkpoints passing every blocking check")
    nearest_miss: NearestMiss | None = record_field(
        None, "nothing eligible: the closest checkpoint"
    )
    rule: str = record_field("", "the choice rule, in words")
    policy: dict[str, Any] = record_field(
        doc="the policy's thresholds and severities", factory=dict
    )
    policy_hash: str = record_field("", "hash of the policy")
    runs: dict[str, RunPick] = record_field(doc="the pick and onset of every run", factory=dict)
    checks: list[JudgedCheckpoint] = record_field(doc="every checkpoint's checks", factory=list)
    _sometimes: typing.ClassVar[frozenset[str]] = frozenset(_JUDGED)

    def _omitted(self) -> set[str]:
        return set(_JUDGED) if self.verdict is None else set()


@dataclass
class ToolInfo(Record):
    name: str = record_field("diag", "the tool")
    version: str = record_field("", "its version")


@dataclass
class SweepSettings(Record):
    """What decides what the model is asked and how it answers: the cache key."""

    probes: list[str] = record_field(doc="probe names", factory=list)
    size: str = record_field("full", '"staged" (the default), "full" or "quick"')
    languages: list[str] | None = record_field(None, "prompt languages asked (null: all)")
    probe_sets: dict[str, str] = record_field(doc="hash of the exact prompts asked", factory=dict)
    generation: dict[str, Any] = record_field(doc="decoding settings", factory=dict)
    reference_version: int = record_field(0, "version of the base reference's format")
    identity: str = record_field("", "hash of the identity spec")
    probe_files: list[str] = record_field(doc="user probe files", factory=list)
    dtype: str | None = record_field(
        None,
        'the dtype models ran in, where not float32 ("bfloat16" on a GPU that computes it; LoRA '
        "adapters then stay beside the weights, unfolded)",
        "none",
    )
    screen: dict[str, Any] | None = record_field(
        None,
        "a staged sweep's screen: its languages and the hash of each of its probe sets",
        "none",
    )


@dataclass
class SweepRecord(Record):
    """``results.json``: a sweep of every checkpoint under a folder."""

    schema_version: int = record_field(SCHEMA_VERSION, "this file's format; readers refuse others")
    tool: ToolInfo = record_field(doc="what wrote it", factory=ToolInfo)
    created: str = record_field("", "when the sweep started (ISO 8601, UTC)")
    complete: bool = record_field(True, "false while a sweep is running or was interrupted")
    root: str = record_field("", "the absolute RUNS_DIR")
    base: str | None = record_field(None, "the base model of the shared step-0 row")
    identity: dict[str, Any] = record_field(
        doc="the identity spec and its hash, when every run was judged against the same one "
        "(else empty: see runs[name].taught)",
        factory=dict,
    )
    settings: SweepSettings = record_field(doc="the cache key settings", factory=SweepSettings)
    runs: dict[str, RunRecord] = record_field(doc="every training run found", factory=dict)
    checkpoints: list[CheckpointRecord] = record_field(doc="step-0 rows first, then by run and step", factory=list)  # fmt: skip
    skipped: list[SkipRecord] = record_field(doc="folders not swept, with the fix", factory=list)
    timing: Timing | None = record_field(None, "written when the sweep finishes", "none")
    recommendation: Recommendation = record_field(doc="the pick", factory=Recommendation)
    non_finite: list[str] | None = record_field(None, "values written as null because they were NaN/inf", "none")  # fmt: skip

    def base_for(self, run: str | None) -> CheckpointRecord | None:
        """The step-0 record for ``run``: its own if it has one, else a shared base record."""
        return find_base(self.checkpoints, run)


def find_base(checkpoints: list[CheckpointRecord], run: str | None) -> CheckpointRecord | None:
    """The step-0 record for ``run``: its own if it has one, else a shared base record."""
    zeros = [c for c in checkpoints if c.step == 0 and c.ok]
    own = [c for c in zeros if c.run == run]
    return (own or zeros or [None])[0]


def json_schema() -> dict:
    """The JSON Schema of results.json (``docs/results.schema.json``)."""
    title = f"diag sweep results (results.json, schema_version {SCHEMA_VERSION})"
    return record_schema(SweepRecord, title)


if __name__ == "__main__":
    import json

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
