"""When nothing is eligible: the checkpoint closest to the goal, and the headline that says so.

The rule (also in ``docs/policy.md``, "Nothing eligible"):

1. Only checkpoints probed without error compete; one that failed is listed, never compared.
2. Learning first: only a checkpoint that made *progress* on what was taught competes (the 95 %
   lower bound of identity recall, or of a task score, above the base's value): one that learned
   nothing is the base with noise, and never the nearest miss.
3. It must also be closer to the goal than the base, where training started: its *distance* from
   eligible (each failed blocking check's shortfall, in that check's own statistic, summed; see
   ``diagnostics/distance.py``) below the base's. A parrot that learned the identity but lost its
   general ability is further from a usable model than the model it started from.
4. Among those, the smallest distance wins; then the most progress; then run name and step.

Each checkpoint is scored on its own numbers, so adding checkpoints between existing ones never
reorders the existing ones; and in a staged sweep only fully measured checkpoints are compared
when any of them competes (the staged sweep measures the contenders fully).
"""

from __future__ import annotations

from diag.diagnostics.advice import NextSteps
from diag.diagnostics.checks import pct
from diag.diagnostics.distance import start
from diag.diagnostics.judged import Judged, diagnosis, label, quote, taught_name
from diag.diagnostics.policy import Policy

from diag.metrics import METRICS, taught
from diag.records import Check, CheckpointRecord

_EPS = 1e-9


def contenders(judged: list[Judged], policy: Policy) -> list[Judged]:
    """The checkpoints that may be named the nearest miss (rules 1-3 of the module docstring)."""
    starts: dict[int, float] = {}
    out = []
    for j in judged:
        if not j.record.ok or j.progress <= 0:
            continue
        if id(j.base) not in starts:
            starts[id(j.base)] = start(j.base, policy)
        if j.distance < starts[id(j.base)] - _EPS:
            out.append(j)
    return out


def miss_order(j: Judged) -> tuple:
    """Nearer first: the smallest distance, then the most progress, then run and step."""
    return (round(j.distance, 9), -round(j.progress, 9), str(j.record.run), j.step)


def nearest_miss(judged: list[Judged], policy: Policy) -> Judged | None:
    """The nearest miss, or None when no checkpoint competes. In a staged sweep, one the full
    suite measured when any competes (the screen only says which checkpoints to measure)."""
    pool = contenders(judged, policy)
    full = [j for j in pool if not j.record.screened_only]
    return min(full or pool, key=miss_order) if pool else None


def _lack(check: Check) -> str:
    """'retention 0.72 of base (limit 0.90)', 'leakage 12% (limit 10%)'."""
    metric = METRICS.get(check.name)
    if metric is None:
        return check.name
    if check.value is None:
        return f"{metric.short} (not measured)"
    unit = " of base" if metric.unit == "ratio" else ""
    limit = metric.format(check.threshold) if check.threshold is not None else "n/a"
    return f"{metric.short} {metric.format(check.value)}{unit} (limit {limit})"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def standing(j: Judged) -> str:
    """What the nearest miss has and lacks, in the checks' own numbers."""
    taught_checks = [c for c in j.checks if c.name in taught()]
    learned = ", ".join(q for q in (quote(j.record, c.name) for c in taught_checks) if q)
    missing = [c for c in j.failed() if c.name not in taught()]
    lacks = _listing([_lack(c) for c in missing]) if missing else ""
    what = taught_name([j.record])
    if j.learned:
        return f"it learned the {what} ({learned}) but lacks {lacks}"
    short = [c for c in taught_checks if c.blocking and not c.passed and c.value is not None]
    need = "; ".join(f"lower bound {pct(c.value)}, needs {pct(c.threshold)}" for c in short)
    partly = f"the {what} is only partly learned ({learned}" + (f"; {need})" if need else ")")
    return f"{partly} and it lacks {lacks}" if lacks else f"healthy, but {partly}"


def verdict(miss: Judged | None, mine: list[Judged], advice: NextSteps | None, failed: list) -> str:
    """The one-line headline when nothing is eligible: which checkpoint is closest and what it
    lacks (or why none is named), where the window lies, and the first next step.

    mine: the judged checkpoints of the run the headline is about; failed: the records that could
    not be probed (never compared, named at the end).
    """
    advice = advice or NextSteps()
    window = advice.window
    first = f"first: {advice.actions[0]}" if advice.actions else ""
    last = max((j.step for j in mine if j.record.ok), default=-1)
    later = [r.step for r in failed if r.step > last]
    if later and miss is None:  # what was not probed may be what is missing
        first = f"first: make {steps_text(later)} loadable (errors below) and sweep again"
    if miss is not None:
        r = miss.record
        parts = [f"no checkpoint is eligible; closest is {r.run} step {r.step}: {standing(miss)}"]
        parts += [window or "", first]
    elif any(j.progress > 0 for j in mine):
        parts = [
            f"no checkpoint is eligible: {window}" if window else "no checkpoint is eligible",
            "none is worth considering: " + _why_none(mine),
            first,
        ]
    elif mine:
        parts = [f"no checkpoint is eligible: {window or 'nothing was learned'}", first]
    else:
        parts = ["no checkpoint is eligible: none could be probed"]
    if failed:  # before the first next step, which may be about them
        gone = f"{steps_text([r.step for r in failed])} could not be probed (not compared)"
        parts.insert(len(parts) - 1 if parts[-1] == first else len(parts), gone)
    return "; ".join(p for p in parts if p)


def steps_text(steps: list[int]) -> str:
    """'step 60', 'steps 60 and 80', 'steps 20, 30 and 40'."""
    if len(steps) == 1:
        return f"step {steps[0]}"
    return "steps " + _listing([str(s) for s in steps])


def _why_none(mine: list[Judged]) -> str:
    """'steps 60 and 80 learned but collapsed (parrot), further from the goal than the base,
    steps 20 and 40 learned nothing'."""
    moved = [j for j in mine if j.record.ok and j.progress > 0]
    words = "/".join(sorted({diagnosis(j.checks) for j in moved}))
    text = (
        f"{steps_text([j.step for j in moved])} learned but collapsed ({words}), further from "
        "the goal than the base"
    )
    still = [j.step for j in mine if j.record.ok and j.progress <= 0]
    return text + (f", {steps_text(still)} learned nothing" if still else "")


def reasons(mine: list[Judged], miss: Judged | None, policy: Policy) -> list[str]:
    """Why nothing in one run is eligible, and how its checkpoints rank by distance."""
    ok = [j for j in mine if j.record.ok]
    out: list[str] = []
    learned = [j for j in ok if j.learned]
    if not ok:
        out.append("no checkpoint could be probed")
    elif not any(j.measures_learning for j in ok):
        out.append("the run taught no identity: judged for damage only, and no checkpoint passes")
    elif not learned:
        what = taught_name([j.record for j in ok])
        names = [m for m in taught() if any(j.metric(m) is not None for j in ok)] or list(taught())
        best = max(ok, key=lambda j: j.metric(names[0]) or 0.0)
        check = next((c for c in best.checks if c.name == names[0]), None)
        detail = check.detail if check else f"{names[0]} not judged"
        out.append(f"no checkpoint learned the {what}: best is step {best.step}, {detail}")
    else:
        what = taught_name([j.record for j in ok])
        out.append(
            f"no eligible checkpoint: all {len(learned)} that learned the {what} fail other checks"
        )
    if miss is not None:
        out.append("nearest miss: " + label(miss))
    ranked = sorted((j for j in ok if j.progress > 0), key=miss_order)
    if ranked:
        base = start(ranked[0].base, policy)
        shown = ", ".join(f"step {j.step} {_distance(j)}" for j in ranked[:4])
        out.append(
            f"distance from eligible (each failed check's shortfall: 0 at its limit, 1 at its "
            f"worst; the base is {base:.2f} away): {shown}"
        )
    errors = [j.record for j in mine if not j.record.ok]
    out += [f"could not be probed, so never compared: step {r.step}: {r.error}" for r in errors]
    return out


def _distance(j: Judged) -> str:
    """'0.22 (retention 0.20, leakage 0.02)'."""
    parts = [
        f"{METRICS[n].short if n in METRICS else n} {v:.2f}" for n, v in j.shortfalls().items()
    ]
    return f"{j.distance:.2f}" + (f" ({', '.join(parts)})" if parts else "")


def failed_records(records: list[CheckpointRecord]) -> list[CheckpointRecord]:
    """The records that could not be probed, in step order."""
    return sorted((r for r in records if not r.ok), key=lambda r: (str(r.run), r.step))
