"""Recommend a checkpoint from sweep results, per run and across runs, with reasons in numbers.

Choice rule (also in ``docs/policy.md``), deterministic:

1. A checkpoint is *eligible* when every blocking policy check passes (``evaluate_checkpoint``).
2. Per run: among eligible checkpoints, those whose taught metrics (identity recall; task facts
   for a run whose data teaches a narrow task; both for a run that teaches both) are each within
   ``policy.plateau_tolerance`` of the run's best eligible value are *on the plateau*; the
   earliest of them (lowest step; then lowest drift; then path) is the run's pick. The earliest
   plateau checkpoint has learned what was taught as well as any later one and has trained least,
   so it sits furthest from the cliff where the model starts to parrot. A run that taught neither
   is judged for damage only: its pick is the latest checkpoint passing every check.
3. Across runs: among the runs' picks on the overall plateau, the lowest drift wins
   (then highest retention, then run name, then step). Step numbers are not compared across runs:
   runs may use different schedules.
4. Nothing eligible: say so, and name the *nearest miss* (``diagnostics/nearest.py``): among
   checkpoints probed without error that made progress on what was taught and are closer to the
   goal than the base, the one with the smallest distance from eligible (each failed blocking
   check's shortfall in its own statistic, summed); or, when none is, say why and where the
   window between learning and collapse lies.
"""

from __future__ import annotations

from collections import defaultdict

from diag.diagnostics import nearest
from diag.diagnostics.advice import NextSteps, run_next_steps
from diag.diagnostics.checks import evaluate_checkpoint, is_eligible, pct
from diag.diagnostics.judged import Judged, describe, label, taught_name
from diag.diagnostics.onset import locate_onset
from diag.diagnostics.policy import Policy

from diag.metrics import taught
from diag.records import (
    CheckpointRecord,
    JudgedCheckpoint,
    NearestMiss,
    Recommendation,
    RunPick,
    RunRecord,
    SweepRecord,
    find_base,
)
from diag.task import SEEN_LABEL

RULE = (
    "eligible = every blocking check passes; per run: the earliest eligible checkpoint whose "
    "taught metrics (identity recall, task facts) are within {tol} of the run's best eligible "
    "values; across runs: the lowest drift among the runs' picks on that plateau; nothing "
    "eligible: the nearest miss is "
    "the checkpoint with the smallest distance from eligible (failed blocking checks' shortfalls, "
    "summed) among those that made progress on what was taught and are closer than the base"
)
_INF = float("inf")


def rule(policy: Policy) -> str:
    """The choice rule in words, as the recommendation stores it; a stored recommendation made
    under another rule (an older diag) is made again when read."""
    return RULE.format(tol=pct(policy.plateau_tolerance))


def rejudged(sweep, policy_file=None, overrides=None):
    """``sweep`` (a stored SweepResult) with its recommendation re-made in memory when a policy
    file or overrides are given, or when the stored one predates per-checkpoint checks or was
    made under another choice rule (then with the policy it stored); the results on disk are
    never rewritten (the gate reads them)."""
    from dataclasses import replace

    from diag.diagnostics.policy import load_policy

    from diag.errors import DiagError

    stored = sweep.data.get("recommendation") or {}
    if policy_file is None and not overrides:
        try:
            policy = load_policy(None, stored.get("policy") or {})  # the one it was made with
        except DiagError:  # a policy this diag cannot read back: keep what was stored
            return sweep
        if "checks" in stored and stored.get("rule") == rule(policy):
            return sweep
    else:
        policy = load_policy(policy_file, overrides)
    data = {**sweep.data, "recommendation": recommend(sweep.data, policy)}
    return replace(sweep, data=data)


def recommend(results: SweepRecord | dict, policy: Policy | None = None) -> dict:
    """The ``recommendation`` block for a sweep's results (see the module docstring).

    Returns ``run, step, path, reasons, onset_step`` (None when nothing is eligible), plus
    ``verdict`` (one line), ``nearest_miss``, ``runs`` (per-run picks and onsets), ``checks``
    (every checkpoint's checks) and the ``policy`` used.
    """
    return judge_sweep(SweepRecord.coerce(results), policy or Policy()).to_dict()


def judge_sweep(sweep: SweepRecord, policy: Policy) -> Recommendation:
    checkpoints = [c for c in sweep.checkpoints if c.step is not None]
    by_run: dict[str, list[CheckpointRecord]] = defaultdict(list)
    for c in checkpoints:
        if c.step != 0:
            by_run[str(c.run)].append(c)
    judged = _judge_all(checkpoints, by_run, policy)
    runs, picks = _run_picks(checkpoints, by_run, judged, policy)
    advice = _advise_runs(runs, judged, sweep.runs, policy)

    best = _pick_across_runs(picks, policy)
    miss = None if best else nearest.nearest_miss(judged, policy)
    focus = _focus(best or miss, judged)
    overall = runs.get(str(focus)) if focus is not None else None
    reasons = list(overall.reasons) if overall else []
    if best and len(runs) > 1:
        others = [f"{r}: step {v.step}" for r, v in runs.items() if v.step is not None]
        reasons.append(
            f"best across {len(runs)} runs (per-run picks: {', '.join(others)}); lowest drift "
            "among the picks on the plateau of what each taught"
        )
    elif len(runs) > 1:
        reasons.append("per run: " + "; ".join(_run_miss(r, v) for r, v in runs.items()))
    if not judged:
        reasons = ["the sweep has no fine-tuned checkpoints to judge (only the base, or nothing)"]
    mine = [j for j in judged if str(j.record.run) == str(focus)]
    return Recommendation(
        **_where(best.record if best else None),
        reasons=reasons,
        onset_step=overall.onset_step if overall else None,
        onset=overall.onset if overall else None,
        verdict=_verdict(best, miss, overall, mine, advice.get(str(focus))),
        next_steps=[] if best or not overall else list(overall.next_steps or []),
        eligible_count=sum(j.eligible for j in judged),
        nearest_miss=_miss_record(miss),
        rule=rule(policy),
        policy=policy.to_dict(),
        policy_hash=policy.hash,
        runs=runs,
        checks=[
            JudgedCheckpoint(**_where(j.record), eligible=j.eligible, checks=j.checks)
            for j in judged
        ],
    )


def _focus(chosen: Judged | None, judged: list[Judged]):
    """The run the headline is about: the pick's or nearest miss's; with neither, the first run
    where something was learned (its window is the news), else the first run."""
    if chosen is not None:
        return chosen.record.run
    moved = [j for j in judged if j.progress > 0]
    return (moved or judged)[0].record.run if judged else None


def _run_miss(run: str, pick: RunPick) -> str:
    miss = pick.nearest_miss
    return f"{run}: nearest miss step {miss.step}" if miss else f"{run}: no nearest miss"


def _judge_all(checkpoints, by_run, policy: Policy) -> list[Judged]:
    """Every fine-tuned checkpoint judged against its base, by run, then step and path."""
    judged = []
    for run in sorted(by_run):
        base = find_base(checkpoints, run)
        for record in sorted(by_run[run], key=lambda r: (r.step, str(r.path))):
            checks = evaluate_checkpoint(record, base, policy)
            judged.append(Judged(record, base, checks, is_eligible(checks)))
    return judged


def _run_picks(checkpoints, by_run, judged, policy: Policy):
    """({run: its pick, reasons and onset}, [each run's pick])."""
    runs: dict[str, RunPick] = {}
    picks: list[Judged] = []
    for run in sorted(by_run):
        mine = [j for j in judged if str(j.record.run) == run]
        pick = _pick_in_run([j for j in mine if j.eligible], policy)
        onset = locate_onset(by_run[run], find_base(checkpoints, run), policy)
        miss = None if pick else nearest.nearest_miss(mine, policy)
        if pick:
            picks.append(pick)
        runs[run] = RunPick(
            **_where(pick.record if pick else None),
            reasons=_reasons(pick, mine, onset, miss, policy),
            onset=onset,
            onset_step=onset.collapsing_from if onset else None,
            nearest_miss=_miss_record(miss),
        )
    return runs, picks


def _advise_runs(runs, judged, run_facts, policy: Policy) -> dict[str, NextSteps]:
    """Next steps for every run without a pick, citing the runs that have one (stored in
    ``runs``, and returned by run for the headline)."""
    facts = {name: RunRecord.coerce(info) for name, info in (run_facts or {}).items()}
    healthy = {
        run: (info.step, facts.get(run) or RunRecord())
        for run, info in runs.items()
        if info.step is not None
    }
    advice = {}
    for run, info in runs.items():
        if info.step is None:
            mine = [j for j in judged if str(j.record.run) == run and j.record.ok]
            advice[run] = run_next_steps(
                run, mine, facts.get(run) or RunRecord(), info.onset, policy, healthy
            )
            info.next_steps = advice[run].steps()
    return advice


def _where(record: CheckpointRecord | None) -> dict:
    if record is None:
        return {"run": None, "step": None, "path": None}
    return {"run": record.run, "step": record.step, "path": record.path}


def _on_plateau(candidates: list[Judged], policy: Policy) -> list[Judged]:
    """The candidates within the tolerance of the best on every taught metric they measure
    (identity recall, task facts); on the first alone when no candidate is near both bests."""
    names = [m for m in taught() if any(j.metric(m) is not None for j in candidates)]
    plateaus = []
    for name in names or ["identity_recall"]:
        values = [(j.metric(name) or 0.0) for j in candidates]
        top = max(values)
        tol = policy.plateau_tolerance + 1e-12
        plateaus.append({id(j) for j, v in zip(candidates, values) if v >= top - tol})
    both = set.intersection(*plateaus)
    return [j for j in candidates if id(j) in (both or plateaus[0])]


def _pick_in_run(eligible: list[Judged], policy: Policy) -> Judged | None:
    if not eligible:
        return None
    if not any(j.measures_learning for j in eligible):
        # nothing taught that a probe measures: the checkpoint that trained most without damage
        return max(eligible, key=lambda j: (j.step, str(j.record.path)))
    plateau = _on_plateau(eligible, policy)
    return min(plateau, key=lambda j: (j.step, _num(j.metric("drift")), str(j.record.path)))


def _pick_across_runs(picks: list[Judged], policy: Policy) -> Judged | None:
    if not picks:
        return None
    plateau = _on_plateau(picks, policy)
    return min(
        plateau,
        key=lambda j: (
            _num(j.metric("drift")),
            -_num(j.metric("retention"), -_INF),
            str(j.record.run),
            j.step,
        ),
    )


def _num(x: float | None, default: float = _INF) -> float:
    return default if x is None else float(x)


def _miss_record(miss: Judged | None) -> NearestMiss | None:
    if miss is None:
        return None
    failed = miss.failed()
    return NearestMiss(
        **_where(miss.record),
        failed=[c.name for c in failed],
        details=[c.detail for c in failed],
        distance=round(miss.distance, 4),
    )


def _reasons(pick, mine, onset, miss, policy: Policy) -> list[str]:
    reasons: list[str] = []
    if pick:
        retention = next((c for c in pick.checks if c.name == "retention"), None)
        skip = ("retention",) if retention else ()
        reasons.append(
            f"step {pick.step}: {describe(pick.record, skip)}"
            + (f"; {retention.detail}" if retention else "")
        )
        if pick.measures_learning:
            what = taught_name([pick.record])
            reasons.append(
                f"earliest eligible checkpoint on the {what} plateau "
                f"(within {pct(policy.plateau_tolerance)} of the best eligible value)"
            )
            task = pick.record.task or {}
            if "task" in (pick.record.judged_on or []) and not task.get("held_out", True):
                reasons.append(f"task scored on {SEEN_LABEL}")
        else:
            reasons.append(
                "the run taught no identity, so it is judged for damage only (retention, drift, "
                "repetition): the latest checkpoint that passes every check, the one that trained "
                "most without damage"
            )
        others = [j for j in mine if not j.eligible and j.record.ok]
        before = [j for j in others if j.step < pick.step]
        after = [j for j in others if j.step > pick.step]
        if after:
            reasons.append("later, " + label(after[0]))
        if before:
            reasons.append("earlier, " + label(before[-1]))
    elif mine:
        reasons += nearest.reasons(mine, miss, policy)
    if onset:
        reasons.append(onset.sentence())
    return reasons


def _verdict(best, miss, overall: RunPick | None, mine: list[Judged], advice) -> str:
    if best:
        r = best.record
        text = f"recommend {r.run} step {r.step} ({r.path})"
        onset = overall.onset if overall else None
        return f"{text}; {onset.sentence()}" if onset else text
    if not mine:
        return "no checkpoint to judge"
    if not any(j.measures_learning for j in mine):
        ok = [j for j in mine if j.record.ok]
        last = ok[-1] if ok else None
        lacks = ", ".join(c.detail for c in last.failed()) if last else "none could be probed"
        return (
            f"no checkpoint is eligible; run {mine[0].record.run} taught no identity, so it is "
            f"judged for damage only, and every checkpoint is damaged: latest, step "
            f"{last.step if last else '?'}: {lacks}"
        )
    failed = nearest.failed_records([j.record for j in mine])
    return nearest.verdict(miss, mine, advice, failed)
