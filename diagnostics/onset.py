"""Onset of overfitting: the step where a run stops being a chat model and starts to parrot.

The onset is read from the policy's own collapse checks, so it never contradicts the verdict
shown next to it: ``collapsing from step Y`` is the first checkpoint from which *every* later
checkpoint fails at least one blocking collapse check (near-miss, retention, drift, parrot
leakage, modal share, loop rate; identity recall is not a collapse check), and ``healthy up to
step X`` is the checkpoint just before it, which passed them all. "Every later one" keeps a single
noisy failure that recovers from being called a collapse; such an early failure is still reported
as ``first_failure``.

When no check fails persistently, a softer signal is looked for: each checkpoint (base at step 0
included) gets a *collapse score* in [0, 1], the mean "badness" of the curves that break when a
model overfits a narrow identity, read relative to the base:

    parrot_leakage   value - base                      (0 = no more leakage than the base)
    regurgitation    value - base                      (task runs: the task's content leaking)
    modal_share      value - base
    retention        1 - retention                     (0 = as good as the base)
    near_miss        1 - value / base
    drift            drift / (2 * drift_max)           (0.5 = at the policy's drift limit)

each clipped to [0, 1]; the least-squares single change point in the mean of that score (an
exact two-segment fit, O(n^2) for n checkpoints) is the onset when the second segment is worse by
at least ``policy.onset_min_jump`` (``method="change_point"``). With tens of checkpoints an exact
search is instant and easier to explain than ``ruptures``/``kneed``, so neither is a dependency.
The score's jump across the onset is reported for both methods, and where parrot pressure
(likelihood only) first rose past one half: on real runs it rises a save or so before the parrot
shows in the generated answers (docs/probes.md).
"""

from __future__ import annotations

from diag.diagnostics.checks import evaluate_checkpoint
from diag.diagnostics.policy import Policy

from diag.metrics import METRICS, with_symptom
from diag.records import CheckpointRecord, Onset

CURVES = ("parrot_leakage", "regurgitation", "modal_share", "retention", "near_miss", "drift")
PRESSURE_HALF = 0.5  # parrot pressure past one half: the taught answer wins on most prompts
# The policy checks whose failure means the model is losing its general behaviour.
COLLAPSE_CHECKS = with_symptom("parrot", "forgetting")


def collapse_score(
    record: CheckpointRecord | dict, base: CheckpointRecord | dict | None, policy: Policy
) -> float | None:
    """Mean badness of the collapse curves for one checkpoint (None when nothing was measured)."""
    record, base = CheckpointRecord.coerce(record), CheckpointRecord.coerce(base)
    parts: list[float] = []
    for name in CURVES:
        value = record.metric(name)
        if value is None:
            continue
        ref = record.base_metric(name, base)
        if name in ("parrot_leakage", "regurgitation", "modal_share"):
            bad = value - (ref or 0.0)
        elif name == "retention":
            bad = 1.0 - value
        elif name == "near_miss":
            if not ref:
                continue
            bad = 1.0 - value / ref
        else:
            bad = value / (2 * policy.drift_max) if policy.drift_max > 0 else 0.0
        parts.append(min(1.0, max(0.0, bad)))
    return sum(parts) / len(parts) if parts else None


def best_split(scores: list[float]) -> tuple[int, float]:
    """Index k (1..n-1) minimising the two-segment squared error of ``scores[:k] | scores[k:]``,
    and the jump mean(right) - mean(left). Ties go to the earliest k.

    >>> best_split([0.0, 0.0, 0.1, 0.8, 0.9])
    (3, 0.8167)
    """
    best_k, best_sse = 0, float("inf")
    for k in range(1, len(scores)):
        sse = _sse(scores[:k]) + _sse(scores[k:])
        if sse < best_sse - 1e-12:
            best_k, best_sse = k, sse
    if best_k == 0:
        return 0, 0.0
    jump = _mean(scores[best_k:]) - _mean(scores[:best_k])
    return best_k, round(jump, 4)


def collapse_failures(
    record: CheckpointRecord | dict, base: CheckpointRecord | dict | None, policy: Policy
) -> tuple[str, ...]:
    """The blocking collapse checks ``record`` fails against ``base`` (empty: it is healthy)."""
    return tuple(
        c.name
        for c in evaluate_checkpoint(record, base, policy)
        if c.name in COLLAPSE_CHECKS and c.blocking and not c.passed and c.value is not None
    )  # a metric that was not measured is no evidence of a collapse


def pressure_crossing(points: list[CheckpointRecord]) -> list[int] | None:
    """[A, B]: the saves between which parrot pressure first rose past one half (points in step
    order, the base first), or None."""
    measured = [r for r in points if r.metric("parrot_pressure") is not None]
    for before, after in zip(measured, measured[1:]):
        if before.metric("parrot_pressure") <= PRESSURE_HALF < after.metric("parrot_pressure"):
            return [before.step, after.step]
    return None


def locate_onset(
    records: list[CheckpointRecord | dict], base: CheckpointRecord | dict | None, policy: Policy
) -> Onset | None:
    """The onset for one run: ``records`` are its checkpoints (any order; the base may be among
    them as step 0). None when fewer than two points, or nothing fails and nothing breaks."""
    typed = {id(r): CheckpointRecord.coerce(r) for r in [*records, base] if r is not None}
    base = typed[id(base)] if base is not None else None
    points = [base] if base is not None else []
    points += [
        r
        for r in (typed[id(r)] for r in records)
        if r is not base and r.ok and not (base is not None and r.step == 0)
    ]
    points.sort(key=lambda r: r.step)
    if len(points) < 2:
        return None
    failures = [() if r is base else collapse_failures(r, base, policy) for r in points]
    k = len(points)
    while k > 1 and failures[k - 1]:  # walk back over the run's failing tail
        k -= 1
    scores = [collapse_score(r, base, policy) for r in points]
    if k < len(points):
        method = "policy"
        earlier = [points[i].step for i in range(1, k) if failures[i]]
        first_failure = earlier[0] if earlier else None
    else:
        scored = [(i, s) for i, s in enumerate(scores) if s is not None]
        if len(scored) < 2:
            return None
        split, jump = best_split([s for _, s in scored])
        if jump < policy.onset_min_jump:
            return None
        k, method, first_failure = scored[split][0], "change_point", None
    before, after = points[k - 1], points[k]
    left = [s for s in scores[:k] if s is not None]
    right = [s for s in scores[k:] if s is not None]
    jump = round(_mean(right) - _mean(left), 4) if left and right else 0.0
    changes = {}  # the curves that got worse across the onset, by at least 0.05
    for name in CURVES:
        a, b = before.metric(name), after.metric(name)
        if a is None or b is None:
            continue
        if METRICS[name].worsening(a, b) >= 0.05:
            changes[name] = (float(a), float(b))
    return Onset(
        before.step,
        after.step,
        jump,
        changes,
        method,
        failures[k],
        first_failure,
        pressure_crossing(points),
    )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sse(xs: list[float]) -> float:
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs)
