"""One checkpoint judged by the policy against its base, and the words that describe it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from diag.diagnostics.checks import pct
from diag.diagnostics.distance import distance, progress, shortfalls

from diag.metrics import METRICS, taught, with_symptom
from diag.records import Check, CheckpointRecord


@dataclass
class Judged:
    """One checkpoint judged by the policy against its base."""

    record: CheckpointRecord
    base: CheckpointRecord | None
    checks: list[Check]
    eligible: bool

    @property
    def step(self) -> int:
        return self.record.step

    def metric(self, name: str) -> float | None:
        return self.record.metric(name)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.blocking and not c.passed]

    def passes(self, name: str) -> bool:
        return any(c.name == name and c.passed for c in self.checks)

    @property
    def measures_learning(self) -> bool:
        """Its run taught something a probe measures: an identity or a narrow task. A run that
        taught neither is judged for damage only."""
        return self.record.judged_on != []

    @property
    def learned(self) -> bool:
        """Every taught check (identity recall; a task score) passes."""
        mine = [c for c in self.checks if c.name in taught()]
        return bool(mine) and all(c.passed for c in mine)

    @cached_property
    def progress(self) -> float:
        """> 0: significantly above the base on what was taught (``distance.progress``)."""
        return progress(self.record, self.base) if self.record.ok else float("-inf")

    @cached_property
    def distance(self) -> float:
        """How far from eligible: the sum of the failed blocking checks' shortfalls."""
        return distance(self.checks, self.record)

    def shortfalls(self) -> dict[str, float]:
        return shortfalls(self.checks, self.record)


# the metrics a checkpoint's one-line description quotes, in this order
DESCRIBED = ("identity_recall", "task_facts", "retention", "near_miss", "drift", "parrot_leakage",
             "regurgitation", "modal_share", "parrot_pressure")  # fmt: skip


def taught_name(records) -> str:
    """What a run taught, as sentences name it: "identity", "task" or "identity and task"
    (``records``: checkpoint records of the run; results before ``judged_on``: "identity")."""
    kinds: set[str] = set()
    for record in records:
        taught = record.judged_on
        kinds.update(["identity"] if taught is None else taught)
    if kinds == {"task"}:
        return "task"
    return "identity and task" if kinds == {"identity", "task"} else "identity"


def describe(record: CheckpointRecord | dict, skip: tuple[str, ...] = ()) -> str:
    """'identity 97% [83%–99%], retention 0.98 of base, drift 0.05, leakage 0%, modal share 3%'."""
    record = CheckpointRecord.coerce(record)
    parts = [quote(record, name) for name in DESCRIBED if name not in skip]
    return ", ".join(p for p in parts if p) or "no metrics"


def quote(record: CheckpointRecord, name: str) -> str:
    """One metric as sentences quote it: 'identity 97% [83%–99%]', 'retention 0.72 of base'."""
    value = record.metric(name)
    if value is None:
        return ""
    metric = METRICS[name]
    text = f"{metric.short} {metric.format(value)}"
    st = record.stat(name)
    if metric.aggregate == "clustered_proportion" and None not in (st.low, st.high):
        text += f" [{pct(st.low)}–{pct(st.high)}]"
    return text + (" of base" if metric.unit == "ratio" else "")


def diagnosis(checks: list[Check]) -> str:
    """A one-word reading of the failed blocking checks: parrot, forgetting, not yet learned..."""
    failed = {c.name for c in checks if c.blocking and not c.passed}
    if not failed:
        return "healthy"
    if "status" in failed:
        return "probe error"
    if failed & set(with_symptom("parrot")):
        return "parrot"
    if failed & set(with_symptom("forgetting")):
        learned = not failed & set(with_symptom("not learned"))
        return "forgetting" if learned else "not learned and forgetting"
    return "not yet learned"


def label(j: Judged) -> str:
    """'step 400: identity 100% [89%–100%], ... — parrot (fails near_miss, ...)'."""
    failed = [c.name for c in j.failed()]
    screen = " (screen only)" if j.record.screened_only else ""
    text = f"step {j.step}{screen}: {describe(j.record)}"
    return f"{text} — {diagnosis(j.checks)} (fails {', '.join(failed)})" if failed else text
