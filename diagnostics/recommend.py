"""Recommend a checkpoint from sweep results, per run and across runs, with reasons in numbers.

Choice rule (also in ``docs/policy.md``), deterministic:

1. A checkpoint is *eligible* when every blocking policy check passes (``evaluate_checkpoint``).
2. Per run: among eligible checkpoints, those whose identity recall is within
   ``policy.plateau_tolerance`` of the run's best eligible recall are *on the identity plateau*;
   the earliest of them (lowest step; then lowest drift; then path) is the run's pick. The earliest
   plateau checkpoint has learned the identity as well as any later one and has trained least, so
   it sits furthest from the cliff where the model starts to parrot.
3. Across runs: among the runs' picks on the overall identity plateau, the lowest drift wins
   (then highest retention, then run name, then step). Step numbers are not compared across runs:
   runs may use different schedules.
4. Nothing eligible: say so, and name the *nearest miss*: the checkpoint with the fewest failed
   blocking checks (then the smallest total relative shortfall), with what failed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from diag.diagnostics.advice import run_next_steps
from diag.diagnostics.onset import locate_onset
from diag.diagnostics.policy import Check, Policy, evaluate_checkpoint, is_eligible, pct

from diag.metrics import METRICS, with_symptom
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

RULE = (
    "eligible = every blocking check passes; per run: the earliest eligible checkpoint whose "
    "identity recall is within {tol} of the run's best eligible recall; across runs: the lowest "
    "drift among the runs' picks on the identity plateau"
)
_INF = float("inf")


def rejudged(sweep, policy_file=None, overrides=None):
    """``sweep`` (a stored SweepResult) with its recommendation re-made in memory when a policy
    file or overrides are given, or when the stored one predates per-checkpoint checks; the
    results on disk are never rewritten (the gate reads them)."""
    from dataclasses import replace

    from diag.diagnostics.policy import load_policy

    stored = sweep.data.get("recommendation") or {}
    if policy_file is None and not overrides and "checks" in stored:
        return sweep
    data = {
        **sweep.data,
        "recommendation": recommend(sweep.data, load_policy(policy_file, overrides)),
    }
    return replace(sweep, data=data)


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
    _advise_runs(runs, judged, sweep.runs, policy)

    best = _pick_across_runs(picks, policy)
    miss = None if best else _nearest_miss(judged)
    focus = (best or miss).record.run if judged else None
    overall = runs.get(str(focus)) if focus is not None else None
    reasons = list(overall.reasons) if overall else []
    if best and len(runs) > 1:
        others = [f"{r}: step {v.step}" for r, v in runs.items() if v.step is not None]
        reasons.append(
            f"best across {len(runs)} runs (per-run picks: {', '.join(others)}); lowest drift "
            "among the picks on the identity plateau"
        )
    if not judged:
        reasons = ["the sweep has no fine-tuned checkpoints to judge (only the base, or nothing)"]
    return Recommendation(
        **_where(best.record if best else None),
        reasons=reasons,
        onset_step=overall.onset_step if overall else None,
        onset=overall.onset if overall else None,
        verdict=_verdict(best, miss, overall),
        next_steps=[] if best or not overall else list(overall.next_steps or []),
        eligible_count=sum(j.eligible for j in judged),
        nearest_miss=_miss_record(miss),
        rule=RULE.format(tol=pct(policy.plateau_tolerance)),
        policy=policy.to_dict(),
        policy_hash=policy.hash,
        runs=runs,
        checks=[
            JudgedCheckpoint(**_where(j.record), eligible=j.eligible, checks=j.checks)
            for j in judged
        ],
    )


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
        miss = None if pick else _nearest_miss(mine)
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


def _advise_runs(runs, judged, run_facts, policy: Policy) -> None:
    """Next steps for every run without a pick, citing the runs that have one."""
    facts = {name: RunRecord.coerce(info) for name, info in (run_facts or {}).items()}
    healthy = {
        run: (info.step, facts.get(run) or RunRecord())
        for run, info in runs.items()
        if info.step is not None
    }
    for run, info in runs.items():
        if info.step is None:
            mine = [j for j in judged if str(j.record.run) == run]
            info.next_steps = run_next_steps(
                run, mine, facts.get(run) or RunRecord(), info.onset, policy, healthy
            )


def _where(record: CheckpointRecord | None) -> dict:
    if record is None:
        return {"run": None, "step": None, "path": None}
    return {"run": record.run, "step": record.step, "path": record.path}


def _on_plateau(candidates: list[Judged], policy: Policy) -> list[Judged]:
    recall = [(j.metric("identity_recall") or 0.0) for j in candidates]
    top = max(recall)
    return [j for j, r in zip(candidates, recall) if r >= top - policy.plateau_tolerance - 1e-12]


def _pick_in_run(eligible: list[Judged], policy: Policy) -> Judged | None:
    if not eligible:
        return None
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


def _shortfall(check: Check) -> float:
    if check.value is None or check.threshold is None:
        return 1.0
    scale = max(abs(check.threshold), 1e-6)
    if check.name in METRICS and METRICS[check.name].higher_is_better:
        return max(0.0, check.threshold - check.value) / scale
    return max(0.0, check.value - check.threshold) / scale


def miss_order(j: Judged) -> tuple:
    """How near ``j`` comes to eligible (lower is nearer): probed without error, then the fewest
    failed blocking checks, the smallest total relative shortfall, the highest identity recall."""
    failed = j.failed()
    return (
        not j.record.ok,
        len(failed),
        sum(_shortfall(c) for c in failed),
        -_num(j.metric("identity_recall"), 0.0),
        str(j.record.run),
        j.step,
    )


def _nearest_miss(judged: list[Judged]) -> Judged | None:
    """The nearest miss; in a staged sweep, one the full suite measured (the screen only picks
    which checkpoints those are: its numbers are not compared with the full suite's)."""
    if not judged:
        return None
    measured = [j for j in judged if not j.record.screened_only] or judged
    return min(measured, key=miss_order)


def _miss_record(miss: Judged | None) -> NearestMiss | None:
    if miss is None:
        return None
    failed = miss.failed()
    return NearestMiss(
        **_where(miss.record), failed=[c.name for c in failed], details=[c.detail for c in failed]
    )


# the metrics a checkpoint's one-line description quotes, in this order
DESCRIBED = ("identity_recall", "retention", "near_miss", "drift", "parrot_leakage", "modal_share")


def describe(record: CheckpointRecord | dict, skip: tuple[str, ...] = ()) -> str:
    """'identity 97% [83%–99%], retention 0.98 of base, drift 0.05, leakage 0%, modal share 3%'."""
    record = CheckpointRecord.coerce(record)
    parts = []
    for name in DESCRIBED:
        value = record.metric(name)
        if value is None or name in skip:
            continue
        metric = METRICS[name]
        text = f"{metric.short} {metric.format(value)}"
        st = record.stat(name)
        if metric.aggregate == "clustered_proportion" and None not in (st.low, st.high):
            text += f" [{pct(st.low)}–{pct(st.high)}]"
        if metric.unit == "ratio":
            text += " of base"
        parts.append(text)
    return ", ".join(parts) or "no metrics"


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
    return "identity not yet learned"


def _label(j: Judged) -> str:
    failed = [c.name for c in j.failed()]
    text = f"step {j.step}: {describe(j.record)}"
    return f"{text} — {diagnosis(j.checks)} (fails {', '.join(failed)})" if failed else text


def _reasons(pick, mine, onset, miss, policy: Policy) -> list[str]:
    reasons: list[str] = []
    if pick:
        retention = next((c for c in pick.checks if c.name == "retention"), None)
        skip = ("retention",) if retention else ()
        reasons.append(
            f"step {pick.step}: {describe(pick.record, skip)}"
            + (f"; {retention.detail}" if retention else "")
        )
        reasons.append(
            "earliest eligible checkpoint on the identity plateau "
            f"(within {pct(policy.plateau_tolerance)} of the best eligible recall)"
        )
        before = [j for j in mine if j.step < pick.step and not j.eligible]
        after = [j for j in mine if j.step > pick.step and not j.eligible]
        if after:
            reasons.append("later, " + _label(after[0]))
        if before:
            reasons.append("earlier, " + _label(before[-1]))
    elif mine:
        learned = [j for j in mine if j.passes("identity_recall")]
        if not learned:
            best = max(mine, key=lambda j: _num(j.metric("identity_recall"), -1.0))
            ident = next((c for c in best.checks if c.name == "identity_recall"), None)
            reasons.append(
                "no checkpoint learned the identity: best is "
                f"step {best.step}, {ident.detail if ident else 'not measured'}"
            )
        else:
            reasons.append(
                f"no eligible checkpoint: all {len(learned)} that learned the identity fail "
                "other checks"
            )
        if miss:
            reasons.append("nearest miss: " + _label(miss))
    if onset:
        reasons.append(onset.sentence())
    return reasons


def _verdict(best: Judged | None, miss: Judged | None, overall: RunPick | None) -> str:
    if best:
        r = best.record
        text = f"recommend {r.run} step {r.step} ({r.path})"
    elif miss:
        r = miss.record
        text = (
            f"no checkpoint is eligible; nearest miss {r.run} step {r.step} "
            f"({diagnosis(miss.checks)})"
        )
    else:
        text = "no checkpoint to judge"
    onset = overall.onset if overall else None
    return f"{text}; {onset.sentence()}" if onset else text
