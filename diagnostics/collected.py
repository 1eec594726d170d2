"""The results of a sweep as they are collected: one CheckpointRecord per probed checkpoint (or
error), written out after every one so that nothing finished is lost, then judged and written as
results.json, scores.csv and samples.jsonl.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from diag.diagnostics.discover import Discovery
from diag.diagnostics.recommend import judge_sweep
from diag.diagnostics.stored import SweepResult, scores_frame

from diag.files import strict_json, write_json_atomic, write_text_atomic
from diag.metrics import METRICS
from diag.records import (
    SCHEMA_VERSION,
    CheckpointRecord,
    MetricStats,
    ProbeInfo,
    RunRecord,
    SkipRecord,
    SweepRecord,
    SweepSettings,
    Timing,
    ToolInfo,
    tool_block,
)


def _loss_at(points: list, step: int) -> float | None:
    """The last logged loss at or before ``step``."""
    before = [loss for s, loss in points if s <= step]
    return before[-1] if before else None


class CollectedResults:
    """The results being assembled; written after every checkpoint so nothing done is lost."""

    def __init__(self, root: Path, out: Path, found: Discovery, taught: dict, settings: dict):
        """taught: run name -> :class:`diag.data.teaching.Taught`, what each run is judged against."""
        self.root, self.out, self.found = root, out, found
        self.taught, self.settings = taught, settings
        self._records: dict[tuple, CheckpointRecord] = {}  # by (run, step, path): the latest
        self._samples: dict[tuple, list[dict]] = {}
        self.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    @property
    def records(self) -> list[CheckpointRecord]:
        return list(self._records.values())

    def base_record(self, base: str, chat, target: str) -> CheckpointRecord | None:
        """The step-0 record of ``base`` probed with ``chat`` for ``target``."""
        wanted = chat.to_dict()
        return next(
            (
                r
                for r in self._records.values()
                if r.step == 0 and r.path == base and r.chat == wanted and r.target == target
            ),
            None,
        )

    def add(
        self,
        record: CheckpointRecord,
        run,
        *,
        cached: bool,
        cache_key: str,
        ckpt=None,
        stage: str = "full",
    ):
        """Add a probed checkpoint; one measured again (a staged sweep's full suite after its
        screen) replaces what was there."""
        record.status, record.error, record.error_type = "ok", None, None
        record.cached, record.cache_key = cached, cache_key
        record.stage = stage
        fill_record(record, run.summary)
        if ckpt is not None and record.metrics.get("drift") == 0.0:
            # the same log-likelihoods as the base to the last bit: the weights change nothing
            record.no_change = True
        self._finish_record(record, ckpt)
        if record.no_change:
            record.notes.append(
                "this adapter does not change the model (its likelihoods equal the base's "
                "exactly): was it trained, and applied?"
            )
        self._samples[_key(record)] = [
            {"run": record.run, "step": record.step, **sample} for sample in run.samples
        ]

    def add_error(
        self, record: CheckpointRecord, message: str, ckpt=None, error_type: str = "OSError"
    ) -> None:
        record.status, record.error, record.error_type = "error", message, error_type
        record.metrics = dict.fromkeys(METRICS)
        self._samples.pop(_key(record), None)
        self._finish_record(record, ckpt)

    def _finish_record(self, record: CheckpointRecord, ckpt) -> None:
        if ckpt is not None:
            run = self.found.runs[ckpt.run]
            # no loss from another checkpoint's history for one whose own state is unreadable
            known = ckpt.losses_known
            record.train_loss = _loss_at(run.train_loss, ckpt.step) if known else None
            record.eval_loss = _loss_at(run.eval_loss, ckpt.step) if known else None
            record.notes = list(ckpt.notes)
        self._records[_key(record)] = record

    def record(self, complete: bool) -> SweepRecord:
        return SweepRecord(
            schema_version=SCHEMA_VERSION,
            tool=ToolInfo.from_dict(tool_block()),
            created=self.created,
            complete=complete,
            root=str(self.root.resolve()),
            base=next((r.path for r in self.records if r.step == 0), None),
            identity=self._shared_identity(),
            settings=SweepSettings.from_dict(self.settings),
            runs={
                name: RunRecord.from_dict(
                    {**run.to_dict(), "taught": self.taught[name].to_dict()}
                    if name in self.taught
                    else run.to_dict()
                )
                for name, run in sorted(self.found.runs.items())
            },
            checkpoints=sorted(self.records, key=_order),
            skipped=[SkipRecord.from_dict(skip.to_dict()) for skip in self.found.skipped],
        )

    def _shared_identity(self) -> dict:
        """The identity every run was judged against, when they share one (else see
        ``runs[name].taught``): the spec and its hash; empty when none or several."""
        specs = {t.spec.hash: t.spec for t in self.taught.values() if t.spec is not None}
        if len(specs) != 1 or any(t.spec is None for t in self.taught.values()):
            return {}
        spec = next(iter(specs.values()))
        return {**spec.to_dict(), "hash": spec.hash}

    def write_partial(self) -> None:
        write_json_atomic(self.out / "results.json", self.record(complete=False).to_dict())

    def finish(self, policy, seconds: float) -> SweepResult:
        record = self.record(complete=True)
        probed = sum(1 for r in self.records if r.ok and not r.cached)
        record.timing = Timing(round(seconds, 2), probed, sum(1 for r in self.records if r.cached))
        record.recommendation = judge_sweep(record, as_policy(policy))
        data = record.to_dict()
        every = [s for rows in self._samples.values() for s in rows]
        samples = sorted(every, key=lambda s: (str(s["run"]), s["step"]))
        lines = "".join(_json_line(s) for s in samples)
        write_text_atomic(self.out / "samples.jsonl", lines)
        write_text_atomic(self.out / "scores.csv", scores_frame(record).to_csv(index=False))
        write_json_atomic(self.out / "results.json", data)
        return SweepResult(data, self.out)


def fill_record(record: CheckpointRecord, summary: dict) -> CheckpointRecord:
    """``record`` with the measurements of a probe summary: metrics, stats, prompts asked."""
    record.prompts = dict(summary.get("counts") or {})
    record.stopped = summary.get("stopped") or None
    record.metrics = {m: summary.get("metrics", {}).get(m) for m in METRICS}
    record.stats = _stats(summary.get("stats", {}))
    record.by_language = summary.get("by_language", {})
    record.identity_keywords = _stats(summary.get("identity_keywords", {}))
    record.task = summary.get("task")
    record.probe_sets = summary.get("probe_sets", {})
    record.set_versions = summary.get("set_versions", {})
    record.probes = {k: ProbeInfo.from_dict(v) for k, v in summary.get("probes", {}).items()}
    record.rescored = summary.get("rescored") or None
    return record


def _stats(block: dict) -> dict[str, MetricStats]:
    return {name: MetricStats.from_dict(st) for name, st in block.items()}


def _key(record: CheckpointRecord) -> tuple:
    return (str(record.run), record.step, str(record.path))


def _order(record: CheckpointRecord):
    return (record.step != 0, str(record.run), record.step, str(record.path))


def _json_line(row: dict) -> str:
    return strict_json(row) + "\n"


def as_policy(policy):
    """A Policy from what ``sweep(policy=...)`` accepts: a Policy, a file, a dict of overrides or
    None for the built-in one."""
    from diag.diagnostics.policy import Policy, load_policy

    if isinstance(policy, Policy):
        return policy
    return load_policy(None, policy) if isinstance(policy, dict) else load_policy(policy)
