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

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Union

SCHEMA_VERSION = 1


def tool_block() -> dict:
    from diag import __version__

    return {"name": "diag", "version": __version__}


# ------------------------------------------------------------------------ the record machinery
def _field(default=None, doc: str = "", omit: str | None = None, factory=None):
    """A record field. omit: "none" = not written while None; "empty" = not while None/{}/[]."""
    meta = {"doc": doc, "omit": omit}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Record:
    """Base of every record: ``from_dict``/``to_dict`` driven by the dataclass's field types.

    _sometimes: fields an ``_omitted`` rule may leave out (so the schema does not require them);
    _derived: keys ``to_dict`` adds from other fields (name -> description).
    """

    _sometimes: typing.ClassVar[frozenset[str]] = frozenset()
    _derived: typing.ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, data: typing.Mapping[str, Any]):
        hints = _hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        # a null where the type allows none (an older or hand-made file) takes the default
        values = {
            k: _load(hints[k], v)
            for k, v in data.items()
            if k in known and (v is not None or _nullable(hints[k]))
        }
        record = cls(**values)
        object.__setattr__(record, "_unknown", {k: v for k, v in data.items() if k not in known})
        return record

    @classmethod
    def coerce(cls, value):
        """``value`` itself when it is already this record, else :meth:`from_dict` of it."""
        if value is None or isinstance(value, cls):
            return value
        return cls.from_dict(value)

    def to_dict(self) -> dict:
        out = {}
        omitted = self._omitted()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            rule = f.metadata.get("omit")
            if f.name in omitted or (rule and value is None):
                continue
            if rule == "empty" and value in ({}, []):
                continue
            out[f.name] = _dump(value)
        out.update(getattr(self, "_unknown", {}))
        return out

    def _omitted(self) -> set[str]:
        """Fields left out of this record's JSON (a rule that depends on other fields)."""
        return set()


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nullable(hint) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)


def _load(hint, value):
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _load(inner[0], value) if len(inner) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value) if isinstance(value, dict) else value
    if origin in (list, tuple) and isinstance(value, list):
        item = args[0] if args else Any
        loaded = [_load(item, v) for v in value]
        return tuple(loaded) if origin is tuple else loaded
    if origin is dict and isinstance(value, dict):
        item = args[1] if len(args) == 2 else Any
        return {k: _load(item, v) for k, v in value.items()}
    return value


def _dump(value):
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------- records
@dataclass
class MetricStats(Record):
    """Everything the policy and the report need to judge one metric, beyond its point value."""

    value: float | None = _field(doc="the point estimate (same as metrics[name])", omit="empty")
    low: float | None = _field(doc="95 % interval (Wilson for proportions)", omit="empty")
    high: float | None = _field(doc="upper end of the interval", omit="empty")
    successes: int | None = _field(doc="for proportions: how many passed", omit="empty")
    n: int | None = _field(doc="samples the value rests on", omit="empty")
    base_value: float | None = _field(doc="the same metric on the base model", omit="empty")
    paired: dict[str, Any] | None = _field(
        doc="retention: both/base_only/ckpt_only/neither counts and newly_wrong item ids",
        omit="empty",
    )
    extra: dict[str, Any] = _field(
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

    name: str = _field("", "a policy check: status or a metric name")
    passed: bool = _field(False, "whether the checkpoint passes it")
    blocking: bool = _field(True, "a failure makes the checkpoint ineligible (else a warning)")
    value: float | None = _field(None, "the measured value the detail quotes")
    threshold: float | None = _field(None, "the limit it was compared with")
    detail: str = _field("", "one sentence, with the numbers")

    @property
    def no_evidence(self) -> bool:
        """The policy could not evaluate it: the probe errored or the metric is missing."""
        return not self.passed and (self.name == "status" or self.value is None)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Onset(Record):
    """Where a run's collapse score breaks; ``changes`` quotes each curve before -> after."""

    healthy_until: int = _field(0, "last step judged healthy (0 = the base)")
    collapsing_from: int = _field(0, "first step of the collapse")
    jump: float = _field(0.0, "rise of the mean collapse score across the onset (0..1)")
    changes: dict[str, tuple[float, float]] = _field(
        doc="metric -> [before, after] for curves that got worse by at least 0.05", factory=dict
    )
    method: str = _field("policy", '"policy" (persistent failed checks) or "change_point"')
    failed: tuple[str, ...] = _field((), "the collapse checks failed at collapsing_from")
    first_failure: int | None = _field(None, "an earlier step that failed a check, then recovered")
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
        return text

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sentence": self.sentence()}


@dataclass
class ProbeInfo(Record):
    version: int = _field(1, "bumped when the probe's scoring changes")
    direction: str = _field("higher", '"higher" or "lower" is better for its headline metric')


@dataclass
class CheckpointRecord(Record):
    """One probed checkpoint, or the base model as step 0 (``format`` "base")."""

    run: str = _field("", "run folder relative to RUNS_DIR ('base' for a shared base row)")
    step: int = _field(0, "training step; 0 for the base model")
    path: str = _field("", "where the weights were found (the base's name for step 0)")
    format: str = _field("", "base, peft-adapter, full-model, xtuner-pth, deepspeed-zero, ...")
    label: str | None = _field(None, 'null, "final" or "epoch N"')
    also: list[str] = _field(doc="other paths holding the same weights", factory=list)
    fingerprint: str | None = _field(None, "content hash of the weight files")
    base: str | None = _field(None, "the base model it was probed on")
    chat: dict[str, Any] | None = _field(None, "the prompt format used")
    status: str = _field("ok", '"ok" or "error"')
    error: str | None = _field(None, "one-line message when status is error")
    error_type: str | None = _field(None, "the kind of error (DiagError, OSError, ...)")
    cached: bool | None = _field(None, "read from cache/ rather than probed now", "none")
    cache_key: str | None = _field(None, "the cache entry it was read from or written to", "none")
    metrics: dict[str, float | None] = _field(
        doc="every metric of diag.metrics.METRICS; null when not run or on error", factory=dict
    )
    stats: dict[str, MetricStats] | None = _field(None, "intervals and counts per metric", "none")
    by_language: dict[str, dict[str, float | None]] | None = _field(
        None, "every metric per prompt language", "none"
    )
    identity_keywords: dict[str, MetricStats] | None = _field(
        None, "recall per identity keyword", "none"
    )
    probe_sets: dict[str, str] | None = _field(None, "content hash of each probe set", "none")
    set_versions: dict[str, int] | None = _field(None, "probe-set versions that scored it", "none")
    probes: dict[str, ProbeInfo] | None = _field(None, "version and direction per probe", "none")
    rescored: dict[str, dict[str, int]] | None = _field(
        None, "sets re-scored from answers generated under an older version", "none"
    )
    no_change: bool | None = _field(None, "its likelihoods equal the base's exactly", "none")
    train_loss: float | None = _field(None, "last logged training loss at or before this step")
    eval_loss: float | None = _field(None, "last logged eval loss at or before this step")
    notes: list[str] | None = _field(None, "what discovery noticed about it", "none")
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

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    def stat(self, name: str) -> MetricStats:
        """The metric's stats (an empty MetricStats when there are none)."""
        return (self.stats or {}).get(name) or MetricStats(None)


@dataclass
class RunRecord(Record):
    """A training run found under RUNS_DIR: what its files say about it."""

    path: str = _field("", "the run folder")
    trainer: str | None = _field(None, "diag, llama-factory, xtuner, ms-swift, ... or null")
    base: str | None = _field(None, "the base model the run names")
    base_source: str | None = _field(None, "the file (and key) the base came from")
    chat: dict[str, Any] | None = _field(None, "the prompt format the trainer recorded")
    xtuner_config: str | None = _field(None, "the XTuner config read")
    steps_per_epoch: int | None = _field(None, "for epoch-numbered checkpoints")
    training: dict[str, Any] | None = _field(None, "diag runs: save_every, max_steps, lr, ...")
    notes: list[str] = _field(doc="what discovery noticed about the run", factory=list)
    train_loss: list[list[float]] = _field(doc="[step, loss] pairs", factory=list)
    eval_loss: list[list[float]] = _field(doc="[step, loss] pairs", factory=list)


@dataclass
class SkipRecord(Record):
    """A folder that looks like a checkpoint but was not swept."""

    path: str = _field("", "the folder or file")
    reason: str = _field("", "why it was not swept")
    fix: str = _field("", "what would make it sweepable")


@dataclass
class Timing(Record):
    seconds: float = _field(0.0, "wall time of the sweep")
    probed: int = _field(0, "checkpoints probed in this sweep")
    cached: int = _field(0, "checkpoints read from the cache")


@dataclass
class NearestMiss(Record):
    run: str | None = _field(None, "its run")
    step: int | None = _field(None, "its step")
    path: str | None = _field(None, "its path")
    failed: list[str] = _field(doc="the blocking checks it failed", factory=list)
    details: list[str] = _field(doc="their sentences", factory=list)


@dataclass
class JudgedCheckpoint(Record):
    run: str | None = _field(None, "its run")
    step: int | None = _field(None, "its step")
    path: str | None = _field(None, "its path")
    eligible: bool = _field(False, "every blocking check passes")
    checks: list[Check] = _field(doc="every policy check, in the policy's order", factory=list)


@dataclass
class RunPick(Record):
    """The recommendation within one run."""

    run: str | None = _field(None, "the run")
    step: int | None = _field(None, "its pick (null: nothing eligible)")
    path: str | None = _field(None, "the pick's path")
    reasons: list[str] = _field(doc="why, in numbers", factory=list)
    onset: Onset | None = _field(None, "where the run collapses")
    onset_step: int | None = _field(None, "onset.collapsing_from")
    nearest_miss: NearestMiss | None = _field(None, "nothing eligible: the closest checkpoint")
    next_steps: list[str] | None = _field(None, "nothing eligible: what to do next", "none")


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

    run: str | None = _field(None, "the recommended checkpoint's run")
    step: int | None = _field(None, "its step (null: nothing eligible)")
    path: str | None = _field(None, "its path")
    reasons: list[str] = _field(doc="why, in numbers", factory=list)
    onset_step: int | None = _field(None, "where overfitting starts in the pick's run")
    onset: Onset | None = _field(None, "that onset in full")
    verdict: str | None = _field(None, "one line")
    next_steps: list[str] = _field(doc="nothing eligible: what to do next", factory=list)
    eligible_count: int = _field(0, "checkpoints passing every blocking check")
    nearest_miss: NearestMiss | None = _field(None, "nothing eligible: the closest checkpoint")
    rule: str = _field("", "the choice rule, in words")
    policy: dict[str, Any] = _field(doc="the policy's thresholds and severities", factory=dict)
    policy_hash: str = _field("", "hash of the policy")
    runs: dict[str, RunPick] = _field(doc="the pick and onset of every run", factory=dict)
    checks: list[JudgedCheckpoint] = _field(doc="every checkpoint's checks", factory=list)
    _sometimes: typing.ClassVar[frozenset[str]] = frozenset(_JUDGED)

    def _omitted(self) -> set[str]:
        return set(_JUDGED) if self.verdict is None else set()


@dataclass
class ToolInfo(Record):
    name: str = _field("diag", "the tool")
    version: str = _field("", "its version")


@dataclass
class SweepSettings(Record):
    """What decides what the model is asked and how it answers: the cache key."""

    probes: list[str] = _field(doc="probe names", factory=list)
    size: str = _field("full", '"full" or "quick"')
    languages: list[str] | None = _field(None, "prompt languages asked (null: all)")
    probe_sets: dict[str, str] = _field(doc="hash of the exact prompts asked", factory=dict)
    generation: dict[str, Any] = _field(doc="decoding settings", factory=dict)
    reference_version: int = _field(0, "version of the base reference's format")
    identity: str = _field("", "hash of the identity spec")
    probe_files: list[str] = _field(doc="user probe files", factory=list)


@dataclass
class SweepRecord(Record):
    """``results.json``: a sweep of every checkpoint under a folder."""

    schema_version: int = _field(SCHEMA_VERSION, "this file's format; readers refuse others")
    tool: ToolInfo = _field(doc="what wrote it", factory=ToolInfo)
    created: str = _field("", "when the sweep started (ISO 8601, UTC)")
    complete: bool = _field(True, "false while a sweep is running or was interrupted")
    root: str = _field("", "the absolute RUNS_DIR")
    base: str | None = _field(None, "the base model of the shared step-0 row")
    identity: dict[str, Any] = _field(doc="the identity spec and its hash", factory=dict)
    settings: SweepSettings = _field(doc="the cache key settings", factory=SweepSettings)
    runs: dict[str, RunRecord] = _field(doc="every training run found", factory=dict)
    checkpoints: list[CheckpointRecord] = _field(doc="step-0 rows first, then by run and step", factory=list)  # fmt: skip
    skipped: list[SkipRecord] = _field(doc="folders not swept, with the fix", factory=list)
    timing: Timing | None = _field(None, "written when the sweep finishes", "none")
    recommendation: Recommendation = _field(doc="the pick", factory=Recommendation)
    non_finite: list[str] | None = _field(None, "values written as null because they were NaN/inf", "none")  # fmt: skip

    def base_for(self, run: str | None) -> CheckpointRecord | None:
        """The step-0 record for ``run``: its own if it has one, else a shared base record."""
        return find_base(self.checkpoints, run)


def find_base(checkpoints: list[CheckpointRecord], run: str | None) -> CheckpointRecord | None:
    """The step-0 record for ``run``: its own if it has one, else a shared base record."""
    zeros = [c for c in checkpoints if c.step == 0 and c.ok]
    own = [c for c in zeros if c.run == run]
    return (own or zeros or [None])[0]


# ------------------------------------------------------------------------------ JSON Schema
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def json_schema(root: type[Record] = SweepRecord) -> dict:
    """The JSON Schema (draft 2020-12) of ``root`` and every record it holds."""
    defs: dict[str, dict] = {}

    def of(hint) -> dict:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint in _SIMPLE:
            return {"type": _SIMPLE[hint]}
        if hint is Any:
            return {}
        if origin in (Union, types.UnionType):
            parts = [of(a) for a in args]
            if all(list(p) == ["type"] for p in parts):
                return {"type": [p["type"] for p in parts]}
            return {"anyOf": parts}
        if isinstance(hint, type) and issubclass(hint, Record):
            if hint.__name__ not in defs:
                defs[hint.__name__] = {}  # placeholder against recursion
                defs[hint.__name__] = record_schema(hint)
            return {"$ref": f"#/$defs/{hint.__name__}"}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": of(args[0])}
            return {"type": "array", "prefixItems": [of(a) for a in args], "items": False}
        if origin is list:
            return {"type": "array", "items": of(args[0]) if args else {}}
        if origin is dict:
            return {"type": "object", "additionalProperties": of(args[1]) if args else {}}
        raise TypeError(f"no JSON Schema for {hint!r}")

    def record_schema(cls) -> dict:
        hints = _hints(cls)
        props, required = {}, []
        for f in dataclasses.fields(cls):
            props[f.name] = {**of(hints[f.name]), "description": f.metadata.get("doc", "")}
            if not f.metadata.get("omit") and f.name not in cls._sometimes:
                required.append(f.name)
        for name, doc in cls._derived.items():
            props[name] = {"type": "string", "description": doc}
            required.append(name)
        doc = (cls.__doc__ or cls.__name__).strip().split("\n\n")[0]
        return {
            "type": "object",
            "description": " ".join(doc.split()),
            "properties": props,
            "required": required,
        }

    body = record_schema(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"diag sweep results (results.json, schema_version {SCHEMA_VERSION})",
        **body,
        "$defs": dict(sorted(defs.items())),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
