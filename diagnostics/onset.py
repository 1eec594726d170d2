"""Onset of overfitting: the step where a run stops being a chat model and starts to parrot.

Each checkpoint (base at step 0 included) gets a *collapse score* in [0, 1], the mean of the
"badness" of the curves that break when a model overfits a narrow identity, read relative to the
base:

    parrot_leakage   value - base                      (0 = no more leakage than the base)
    modal_share      value - base
    retention        1 - retention                     (0 = as good as the base)
    near_miss        1 - value / base
    drift            drift / (2 * drift_max)           (0.5 = at the policy's drift limit)

each clipped to [0, 1]. The onset is the least-squares single change point in the mean of that
score (a two-segment fit, exact, O(n^2) for n checkpoints): the last step of the first segment is
"healthy up to", the first step of the second "collapsing from". It counts only when the second
segment is worse by at least ``policy.onset_min_jump``. With tens of checkpoints an exact search is
instant and easier to explain than ``ruptures``/``kneed``, so neither is a dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diag.diagnostics.policy import Policy, pct

CURVES = ("parrot_leakage", "modal_share", "retention", "near_miss", "drift")


@dataclass(frozen=True)
class Onset:
    """Where a run's collapse score breaks; ``changes`` quotes each curve before -> after."""

    healthy_until: int
    collapsing_from: int
    jump: float
    changes: dict[str, tuple[float, float]]

    def sentence(self) -> str:
        """'healthy up to step 300, collapsing from step 400 (leakage 0% -> 83%, ...)'."""
        parts = []
        for name, (before, after) in self.changes.items():
            if name == "retention":
                parts.append(f"retention {before:.2f} → {after:.2f}")
            elif name == "drift":
                parts.append(f"drift {before:.2g} → {after:.2g}")
            else:
                label = {"parrot_leakage": "leakage", "modal_share": "modal share"}.get(name, name)
                parts.append(f"{label.replace('_', '-')} {pct(before)} → {pct(after)}")
        where = "the base (step 0)" if self.healthy_until == 0 else f"step {self.healthy_until}"
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"healthy up to {where}, collapsing from step {self.collapsing_from}{detail}"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["changes"] = {k: list(v) for k, v in self.changes.items()}
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


def locate_onset(records: list[dict], base: dict | None, policy: Policy) -> Onset | None:
    """The onset for one run: ``records`` are its checkpoints (any order; the base may be among
    them as step 0). None when fewer than two points or no material break."""
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
    scored = [(r, collapse_score(r, base, policy)) for r in points]
    scored = [(r, s) for r, s in scored if s is not None]
    if len(scored) < 2:
        return None
    k, jump = best_split([s for _, s in scored])
    if jump < policy.onset_min_jump:
        return None
    before, after = scored[k - 1][0], scored[k][0]
    changes = {}
    for name in CURVES:
        a, b = (before.get("metrics") or {}).get(name), (after.get("metrics") or {}).get(name)
        if a is not None and b is not None and abs(b - a) >= 0.05:
            changes[name] = (float(a), float(b))
    return Onset(before["step"], after["step"], jump, changes)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sse(xs: list[float]) -> float:
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs)
