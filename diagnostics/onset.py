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
    modal_share      value - base
    retention        1 - retention                     (0 = as good as the base)
    near_miss        1 - value / base
    drift            drift / (2 * drift_max)           (0.5 = at the policy's drift limit)

each clipped to [0, 1]; the least-squares single change point in the mean of that score (an
exact two-segment fit, O(n^2) for n checkpoints) is the onset when the second segment is worse by
at least ``policy.onset_min_jump`` (``method="change_point"``). With tens of checkpoints an exact
search is instant and easier to explain than ``ruptures``/``kneed``, so neither is a dependency.
The score's jump across the onset is reported for both methods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diag.diagnostics.policy import Policy, evaluate_checkpoint

from diag.metrics import METRICS, with_symptom

CURVES = ("parrot_leakage", "modal_share", "retention", "near_miss", "drift")
# The policy checks whose failure means the model is losing its general behaviour.
COLLAPSE_CHECKS = with_symptom("parrot", "forgetting")


@dataclass(frozen=True)
class Onset:
    """Where a run's collapse score breaks; ``changes`` quotes each curve before -> after."""

    healthy_until: int
    collapsing_from: int
    jump: float
    changes: dict[str, tuple[float, float]]
    method: str = "policy"  # "policy" (persistent failed checks) or "change_point"
    failed: tuple[str, ...] = ()  # the collapse checks failed at ``collapsing_from``
    first_failure: int | None = None  # an earlier step that failed a check, then recovered

    def sentence(self) -> str:
        """'healthy up to step 300, collapsing from step 400 (leakage 0% -> 83%, ...)'."""
        parts = []
        for name, (before, after) in self.changes.items():
            metric = METRICS[name]
            parts.append(f"{metric.short} {metric.format(before)} → {metric.format(after)}")
        where = "the base (step 0)" if self.healthy_until == 0 else f"step {self.healthy_until}"
        detail = f" ({', '.join(parts)})" if parts else ""
        text = f"healthy up to {where}, collapsing from step {self.collapsing_from}{detail}"
        if self.first_failure is not None:
            text += f"; step {self.first_failure} already failed a check once, then recovered"
        return text

    def to_dict(self) -> dict:
        data = asdict(self)
        data["changes"] = {k: list(v) for k, v in self.changes.items()}
        data["failed"] = list(self.failed)
        data["sentence"] = self.sentence()
        return data


def collapse_score(record: dict, base: dict | None, policy: Policy) -> float | None:
    """Mean badness of the collapse curves for one checkpoint (None when nothing was measured)."""
    metrics = record.get("metrics") or {}
    base_metrics = (base or {}).get("metrics") or {}
    parts: list[float] = []
    for name in CURVES:
        value = metrics.get(name)
        if value is None:
            continue
        ref = base_metrics.get(name)
        if name in ("parrot_leakage", "modal_share"):
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


def collapse_failures(record: dict, base: dict | None, policy: Policy) -> tuple[str, ...]:
    """The blocking collapse checks ``record`` fails against ``base`` (empty: it is healthy)."""
    return tuple(
        c.name
        for c in evaluate_checkpoint(record, base, policy)
        if c.name in COLLAPSE_CHECKS and c.blocking and not c.passed and c.value is not None
    )  # a metric that was not measured is no evidence of a collapse


def locate_onset(records: list[dict], base: dict | None, policy: Policy) -> Onset | None:
    """The onset for one run: ``records`` are its checkpoints (any order; the base may be among
    them as step 0). None when fewer than two points, or nothing fails and nothing breaks."""
    points = []
    if base is not None:
        points.append(base)
    points += [
        r
        for r in records
        if r is not base
        and r.get("status", "ok") == "ok"
        and not (base is not None and r["step"] == 0)
    ]
    points.sort(key=lambda r: r["step"])
    if len(points) < 2:
        return None
    failures = [() if r is base else collapse_failures(r, base, policy) for r in points]
    k = len(points)
    while k > 1 and failures[k - 1]:  # walk back over the run's failing tail
        k -= 1
    scores = [collapse_score(r, base, policy) for r in points]
    if k < len(points):
        method = "policy"
        earlier = [points[i]["step"] for i in range(1, k) if failures[i]]
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
        a, b = (before.get("metrics") or {}).get(name), (after.get("metrics") or {}).get(name)
        if a is None or b is None:
            continue
        if METRICS[name].worsening(a, b) >= 0.05:
            changes[name] = (float(a), float(b))
    return Onset(before["step"], after["step"], jump, changes, method, failures[k], first_failure)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sse(xs: list[float]) -> float:
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs)
