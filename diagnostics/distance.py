"""How far a checkpoint is from eligible, measured in each blocking check's own statistic.

When no checkpoint passes every blocking check, the recommendation names the one closest to the
goal (``docs/policy.md``, "Nothing eligible"). Pure: checks and records in, numbers out.

**Shortfall** of one failed check: how far the statistic the check compares lies beyond its
limit, as a share of the way from the limit to the worst value that statistic can take. 0 is
"just at the limit", 1 "as bad as it gets"; a check with no evidence (not measured) counts 1::

    identity recall  (limit − Wilson lower bound) / limit                      worst 0
    near-miss        (limit − accuracy) / limit                                worst 0
    retention        (limit − ratio) / limit, limit = 1 − margin               worst 0
    leakage, modal   (share − limit) / (1 − limit)                             worst 1
    loop rate        (Wilson lower bound − limit) / (1 − limit)                worst 1
    drift            (drift − limit) / limit, at most 1                        worst 2 × limit

Drift has no natural worst value; twice its limit is the point the onset's collapse score also
reads as fully broken (``diagnostics/onset.py``). A retention failure already means the paired
test found the loss significant; its size beyond the margin is the shortfall.

**Distance**: the sum of the shortfalls of the failed blocking checks. **Progress** on what was
taught: how far the 95 % lower bound of a taught metric (``diag.metrics.taught``) lies above the
base's value, on the same prompts. The **start**: the base's own distance on the taught checks,
where training began (1.0 when the base never gives the taught answer).
"""

from __future__ import annotations

from diag.diagnostics.checks import evaluate_checkpoint
from diag.diagnostics.policy import Policy

from diag.metrics import METRICS, taught
from diag.records import Check, CheckpointRecord
from diag.stats import wilson_interval


def shortfall(check: Check, record: CheckpointRecord | None = None) -> float:
    """0 for a passed check; else how far beyond its limit, in [0, 1] (see the module docstring).

    >>> round(shortfall(Check("parrot_leakage", False, True, 0.55, 0.10)), 3)  # of 0.10..1
    0.5
    """
    if check.passed:
        return 0.0
    metric = METRICS.get(check.name)
    if metric is None or check.value is None or check.threshold is None:
        return 1.0  # a failed status, or no evidence: as far as a check can be
    value, limit = _compared(check, record), check.threshold
    if metric.higher_is_better:
        gap, span = limit - value, limit
    elif metric.unit == "fraction":
        gap, span = value - limit, 1.0 - limit
    else:  # unbounded (drift): twice the limit is the worst
        gap, span = value - limit, limit
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, gap / span))


def _compared(check: Check, record: CheckpointRecord | None) -> float:
    """The statistic the check compares with its limit: its value, except for the loop rate,
    which fails on its Wilson lower bound (policy.py, ``_judge_loop``)."""
    if check.name == "loop_rate" and record is not None:
        st = record.stat("loop_rate")
        if st.n:
            k = st.successes if st.successes is not None else round(check.value * st.n)
            return wilson_interval(int(k), int(st.n))[0]
    return float(check.value)


def shortfalls(checks: list[Check], record: CheckpointRecord | None = None) -> dict[str, float]:
    """{check: shortfall} for the failed blocking checks, in the policy's order."""
    return {c.name: shortfall(c, record) for c in checks if c.blocking and not c.passed}


def distance(checks: list[Check], record: CheckpointRecord | None = None) -> float:
    """How far from eligible: the sum of the failed blocking checks' shortfalls (0: eligible)."""
    return sum(shortfalls(checks, record).values())


def progress(record: CheckpointRecord, base: CheckpointRecord | None) -> float:
    """How far above the base the checkpoint's taught metrics are, on their 95 % lower bound (the
    largest over the taught metrics); > 0 means it significantly learned something.

    The base's value is the one on the same prompts (a screened checkpoint's own ``base_value``).
    """
    best = float("-inf")
    for name in taught():
        value = record.metric(name)
        if value is None:
            continue
        st = record.stat(name)
        low = st.low if st.low is not None else value
        reference = record.base_metric(name, base) or 0.0
        best = max(best, float(low) - float(reference))
    return best


def start(base: CheckpointRecord | None, policy: Policy) -> float:
    """Where training started: the base's own distance on the blocking taught checks (it has lost
    nothing, by definition). 1 per taught check when the base gives none of the taught answers,
    or when there is no base record to read."""
    record = base if base is not None else CheckpointRecord()
    checks = [c for c in evaluate_checkpoint(record, base, policy) if c.name in taught()]
    return distance(checks, record)
