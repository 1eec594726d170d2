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

from diag.diagnostics.advice import run_next_steps
from diag.diagnostics.onset import locate_onset
from diag.diagnostics.policy import Check, Policy, evaluate_checkpoint, is_eligible, pct

from diag.metrics import METRICS, with_symptom

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


def find_base(checkpoints: list[dict], run: str | None) -> dict | None:
    """The step-0 record for ``run``: its own if it has one, else a shared base record."""
    zeros = [c for c in checkpoints if c.get("step") == 0 and c.get("status", "ok") == "ok"]
    own = [c for c in zeros if c.get("run") == run]
    return (own or zeros or [None])[0]


def recommend(results: dict, policy: Policy | None = None) -> dict:
    """The ``recommendation`` block for a sweep's results.json dict (see the module docstring).

    Returns ``run, step, path, reasons, onset_step`` (None when nothing is eligible), plus
    ``verdict`` (one line), ``nearest_miss``, ``runs`` (per-run picks and onsets), ``checks``
    (every checkpoint's checks) and the ``policy`` used.
    """
    policy = policy or Policy()
    checkpoints = [c for c in results.get("checkpoints") or [] if c.get("step") is not None]
    by_run: dict[str, list[dict]] = defaultdict(list)
    for c in checkpoints:
        if c["step"] != 0:
            by_run[str(c.get("run"))].append(c)

    judged: list[dict] = []  # {"record", "base", "checks", "eligible"}
    for run in sorted(by_run):
        base = find_base(checkpoints, run)
        for record in sorted(by_run[run], key=lambda r: (r["step"], str(r.get("path")))):
            checks = evaluate_checkpoint(record, base, policy)
            judged.append(
                {"record": record, "base": base, "checks": checks, "eligible": is_eligible(checks)}
            )

    runs: dict[str, dict] = {}
    picks: list[dict] = []
    for run in sorted(by_run):
        mine = [j for j in judged if str(j["record"].get("run")) == run]
        base = find_base(checkpoints, run)
        pick = _pick_in_run([j for j in mine if j["eligible"]], policy)
        onset = locate_onset(by_run[run], base, policy)
        miss = None if pick else _nearest_miss(mine)
        if pick:
            picks.append(pick)
        runs[run] = {
            **_where(pick["record"] if pick else None),
            "reasons": _reasons(pick, mine, onset, miss, policy),
            "onset": onset.to_dict() if onset else None,
            "onset_step": onset.collapsing_from if onset else None,
            "nearest_miss": _miss_dict(miss),
        }

    run_facts = results.get("runs") if isinstance(results.get("runs"), dict) else {}
    healthy = {
        run: (info["step"], run_facts.get(run) or {})
        for run, info in runs.items()
        if info["step"] is not None
    }
    for run, info in runs.items():
        if info["step"] is None:
            mine = [j for j in judged if str(j["record"].get("run")) == run]
            onset = locate_onset(by_run[run], find_base(checkpoints, run), policy)
            info["next_steps"] = run_next_steps(
                run, mine, run_facts.get(run) or {}, onset, policy, healthy
            )

    best = _pick_across_runs(picks, policy)
    miss = None if best else _nearest_miss(judged)
    focus_run = str((best or miss or {"record": {}})["record"].get("run")) if judged else None
    overall = runs.get(focus_run, {}) if focus_run else {}
    reasons = list(overall.get("reasons", []))
    if best and len(runs) > 1:
        others = [f"{r}: step {v['step']}" for r, v in runs.items() if v["step"] is not None]
        reasons.append(
            f"best across {len(runs)} runs (per-run picks: {', '.join(others)}); lowest drift "
            "among the picks on the identity plateau"
        )
    if not judged:
        reasons = ["the sweep has no fine-tuned checkpoints to judge (only the base, or nothing)"]
    return {
        **_where(best["record"] if best else None),
        "reasons": reasons,
        "onset_step": overall.get("onset_step"),
        "onset": overall.get("onset"),
        "verdict": _verdict(best, miss, overall),
        "next_steps": [] if best else list(overall.get("next_steps") or []),
        "eligible_count": sum(j["eligible"] for j in judged),
        "nearest_miss": _miss_dict(miss),
        "rule": RULE.format(tol=pct(policy.plateau_tolerance)),
        "policy": policy.to_dict(),
        "policy_hash": policy.hash,
        "runs": runs,
        "checks": [
            {
                **_where(j["record"]),
                "eligible": j["eligible"],
                "checks": [c.to_dict() for c in j["checks"]],
            }
            for j in judged
        ],
    }


def _where(record: dict | None) -> dict:
    if record is None:
        return {"run": None, "step": None, "path": None}
    return {"run": record.get("run"), "step": record["step"], "path": record.get("path")}


def _m(judgement: dict, name: str) -> float | None:
    return (judgement["record"].get("metrics") or {}).get(name)


def _on_plateau(candidates: list[dict], policy: Policy) -> list[dict]:
    recall = [(_m(j, "identity_recall") or 0.0) for j in candidates]
    top = max(recall)
    return [j for j, r in zip(candidates, recall) if r >= top - policy.plateau_tolerance - 1e-12]


def _pick_in_run(eligible: list[dict], policy: Policy) -> dict | None:
    if not eligible:
        return None
    plateau = _on_plateau(eligible, policy)
    return min(
        plateau,
        key=lambda j: (
            j["record"]["step"],
            _num(_m(j, "drift")),
            str(j["record"].get("path")),
        ),
    )


def _pick_across_runs(picks: list[dict], policy: Policy) -> dict | None:
    if not picks:
        return None
    plateau = _on_plateau(picks, policy)
    return min(
        plateau,
        key=lambda j: (
            _num(_m(j, "drift")),
            -_num(_m(j, "retention"), -_INF),
            str(j["record"].get("run")),
            j["record"]["step"],
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


def _nearest_miss(judged: list[dict]) -> dict | None:
    if not judged:
        return None

    def key(j):
        failed = [c for c in j["checks"] if c.blocking and not c.passed]
        errored = j["record"].get("status", "ok") != "ok"
        return (
            errored,
            len(failed),
            sum(_shortfall(c) for c in failed),
            -_num(_m(j, "identity_recall"), 0.0),
            str(j["record"].get("run")),
            j["record"]["step"],
        )

    return min(judged, key=key)


def _miss_dict(miss: dict | None) -> dict | None:
    if miss is None:
        return None
    failed = [c for c in miss["checks"] if c.blocking and not c.passed]
    return {
        **_where(miss["record"]),
        "failed": [c.name for c in failed],
        "details": [c.detail for c in failed],
    }


# the metrics a checkpoint's one-line description quotes, in this order
DESCRIBED = ("identity_recall", "retention", "near_miss", "drift", "parrot_leakage", "modal_share")


def describe(record: dict, skip: tuple[str, ...] = ()) -> str:
    """'identity 97% [83%–99%], retention 0.98 of base, drift 0.05, leakage 0%, modal share 3%'."""
    values, stats = record.get("metrics") or {}, record.get("stats") or {}
    parts = []
    for name in DESCRIBED:
        value = values.get(name)
        if value is None or name in skip:
            continue
        metric = METRICS[name]
        text = f"{metric.short} {metric.format(value)}"
        st = stats.get(name) or {}
        if metric.aggregate == "clustered_proportion" and None not in (
            st.get("low"),
            st.get("high"),
        ):
            text += f" [{pct(st['low'])}–{pct(st['high'])}]"
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


def _label(j: dict) -> str:
    failed = [c.name for c in j["checks"] if c.blocking and not c.passed]
    text = f"step {j['record']['step']}: {describe(j['record'])}"
    return f"{text} — {diagnosis(j['checks'])} (fails {', '.join(failed)})" if failed else text


def _reasons(pick, mine, onset, miss, policy: Policy) -> list[str]:
    reasons: list[str] = []
    if pick:
        checks = {c.name: c for c in pick["checks"]}
        retention = checks.get("retention")
        skip = ("retention",) if retention else ()
        reasons.append(
            f"step {pick['record']['step']}: {describe(pick['record'], skip)}"
            + (f"; {retention.detail}" if retention else "")
        )
        reasons.append(
            "earliest eligible checkpoint on the identity plateau "
            f"(within {pct(policy.plateau_tolerance)} of the best eligible recall)"
        )
        step = pick["record"]["step"]
        before = [j for j in mine if j["record"]["step"] < step and not j["eligible"]]
        after = [j for j in mine if j["record"]["step"] > step and not j["eligible"]]
        if after:
            reasons.append("later, " + _label(after[0]))
        if before:
            reasons.append("earlier, " + _label(before[-1]))
    elif mine:
        learned = [j for j in mine if _passes(j, "identity_recall")]
        if not learned:
            best = max(mine, key=lambda j: _num(_m(j, "identity_recall"), -1.0))
            ident = next((c for c in best["checks"] if c.name == "identity_recall"), None)
            reasons.append(
                "no checkpoint learned the identity: best is "
                f"step {best['record']['step']}, {ident.detail if ident else 'not measured'}"
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


def _passes(j: dict, name: str) -> bool:
    return any(c.name == name and c.passed for c in j["checks"])


def _verdict(best, miss, overall: dict) -> str:
    if best:
        r = best["record"]
        text = f"recommend {r.get('run')} step {r['step']} ({r.get('path')})"
    elif miss:
        r = miss["record"]
        text = (
            f"no checkpoint is eligible; nearest miss {r.get('run')} step {r['step']} "
            f"({diagnosis(miss['checks'])})"
        )
    else:
        text = "no checkpoint to judge"
    onset = overall.get("onset")
    return f"{text}; {onset['sentence']}" if onset else text
