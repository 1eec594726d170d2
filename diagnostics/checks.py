"""Judging one checkpoint against its base by the policy's checks: one judge per check, each
reading the statistic its check compares (a Wilson lower bound, a paired McNemar test, ...) and
saying why in numbers. The thresholds and severities are :mod:`diag.diagnostics.policy`'s.
"""

from __future__ import annotations

from diag.diagnostics.policy import CHECKS, Policy

from diag.records import Check, CheckpointRecord, MetricStats
from diag.stats import mcnemar_exact_one_sided, wilson_interval
from diag.task import SEEN_LABEL

# Checks that measure what a run taught: the identity's apply to runs that taught one, the task's
# to runs whose data teaches a narrow task (a record's ``judged_on``); the rest judge every run.
IDENTITY_CHECKS = ("identity_recall", "near_miss", "parrot_leakage")
TASK_CHECKS = ("task_facts", "regurgitation")


def applies(name: str, record: CheckpointRecord) -> bool:
    """Whether check ``name`` judges ``record`` (results written before ``judged_on``: the
    identity checks, as then). A check that reads only sets the record never asked (a staged
    sweep's screen stops after the identity prompts when nothing is learned yet) has no
    evidence either way and is not judged."""
    if _unasked(name, record):
        return False
    taught = record.judged_on
    if taught is None:
        return name not in TASK_CHECKS
    if name in IDENTITY_CHECKS:
        return "identity" in taught
    if name in TASK_CHECKS:
        return "task" in taught
    return True


def _unasked(name: str, record: CheckpointRecord) -> bool:
    """Every set check ``name`` reads was stopped before any of its prompts was asked."""
    never = {s for s, info in (record.stopped or {}).items() if info.get("asked") == 0}
    if not never:
        return False
    from diag.probes.registry import reads

    sets = reads(name)
    return bool(sets) and set(sets) <= never


def evaluate_checkpoint(
    ckpt: CheckpointRecord | dict, base: CheckpointRecord | dict | None, policy: Policy
) -> list[Check]:
    """Judge one checkpoint record against its base record (records or results.json dicts).

    Returns one Check per policy check that is not ``off`` and applies (the identity checks do not
    apply to a run that taught no identity). A metric that was not measured fails its check
    (detail "not measured"): the policy never passes on missing evidence.

    >>> ckpt = {"status": "ok", "metrics": {"identity_recall": 1.0},
    ...         "stats": {"identity_recall": {"value": 1.0, "successes": 30, "n": 30}}}
    >>> [c for c in evaluate_checkpoint(ckpt, None, Policy()) if c.name == "identity_recall"][0].passed
    True
    """
    ckpt, base = CheckpointRecord.coerce(ckpt), CheckpointRecord.coerce(base)
    out: list[Check] = []
    for name in CHECKS:
        level = policy.severity(name)
        if level == "off":
            continue
        if name != "status" and not ckpt.ok:
            continue  # an errored checkpoint is judged by its status check alone
        if not applies(name, ckpt):
            continue
        passed, value, threshold, detail = _JUDGES[name](ckpt, base, policy)
        out.append(Check(name, bool(passed), level == "blocking", value, threshold, detail))
    return out


def is_eligible(checks: list[Check]) -> bool:
    """Eligible = every blocking check passed."""
    return all(c.passed for c in checks if c.blocking)


def _metric(record: CheckpointRecord | None, name: str) -> float | None:
    value = record.metric(name) if record is not None else None
    return None if value is None else float(value)


def _base_value(ckpt: CheckpointRecord, base: CheckpointRecord | None, name: str) -> float | None:
    value = ckpt.base_metric(name, base)
    return None if value is None else float(value)


def _successes(st: MetricStats, value: float) -> int:
    return int(st.successes if st.successes is not None else round(value * st.n))


def pct(x: float | None) -> str:
    """0.973 -> '97%'; None -> 'n/a'."""
    return "n/a" if x is None else f"{100 * x:.0f}%"


def keyword_progress(record: CheckpointRecord | dict, limit: float) -> str:
    """ "'Nova' learned (100%), 'Jianfeng' 72%": each keyword's recall, "learned" when its lower
    bound reaches the identity limit. Empty when the identity has one keyword or none was measured.
    """
    keywords = CheckpointRecord.coerce(record).identity_keywords or {}
    if len(keywords) < 2:
        return ""
    parts = []
    for word, st in keywords.items():
        learned = st.low is not None and st.low >= limit
        parts.append(
            f"'{word}' learned ({pct(st.value)})" if learned else f"'{word}' {pct(st.value)}"
        )
    return ", ".join(parts)


def _not_measured(name: str, threshold: float | None):
    return False, None, threshold, f"{name} not measured (no evidence, so the check fails)"


def _judge_status(ckpt, base, policy):
    if ckpt.ok:
        return True, None, None, "probed without errors"
    return False, None, None, f"probing failed: {ckpt.error or 'unknown error'}"


def _judge_identity(ckpt, base, policy):
    limit = policy.identity_min_low
    value = _metric(ckpt, "identity_recall")
    st = ckpt.stat("identity_recall")
    if value is None:
        return _not_measured("identity recall", limit)
    if st.n:
        n, k = int(st.n), _successes(st, value)
        # paraphrase groups are clusters: the interval uses the effective n = n / design effect
        deff = float(st.extra.get("design_effect") or 1.0)
        low, high = wilson_interval(k / deff, n / deff)
        text = f"identity {pct(value)} [{pct(low)}–{pct(high)}] over {n} prompts"
        if deff > 1.0 + 1e-9:
            clusters = st.extra.get("clusters")
            text += f" in {clusters} paraphrase groups (design effect {deff:.1f})"
        verdict = "lower bound reaches" if low >= limit else "lower bound below"
        progress = "" if low >= limit else keyword_progress(ckpt, limit)
        text += f"; {verdict} {pct(limit)}" + (f"; {progress}" if progress else "")
        return low >= limit, low, limit, text
    # No counts: the point value is all there is, so it must clear the bound by itself.
    return value >= limit, value, limit, f"identity {pct(value)} (no counts, no interval)"


def _judge_near_miss(ckpt, base, policy):
    value = _metric(ckpt, "near_miss")
    base_value = _base_value(ckpt, base, "near_miss")
    if base_value is not None:  # relative to the base, even a weak one: "not collapsed"
        limit = policy.near_miss_min_ratio * base_value
        where = f"{policy.near_miss_min_ratio:.2g} × base {pct(base_value)}"
    else:
        limit, where = policy.near_miss_min, "the absolute floor (base not measured)"
    if value is None:
        return _not_measured("near-miss accuracy", limit)
    ok = value >= limit
    return (
        ok,
        value,
        limit,
        f"near-miss {pct(value)} vs {pct(limit)} = {where}" + ("" if ok else "; collapsed"),
    )


def _judge_retention(ckpt, base, policy):
    limit = 1.0 - policy.retention_margin
    value = _metric(ckpt, "retention")
    st = ckpt.stat("retention")
    if value is None:
        acc, base_acc = (
            _metric(ckpt, "general_accuracy"),
            _base_value(ckpt, base, "general_accuracy"),
        )
        if acc is None or not base_acc:
            return _not_measured("retention", limit)
        value = acc / base_acc
    paired = st.paired or {}
    if "base_only" not in paired or "ckpt_only" not in paired:
        ok = value >= limit
        return ok, value, limit, f"retention {value:.2f} of base (no paired data; point value only)"
    b, c = int(paired["base_only"]), int(paired["ckpt_only"])
    p = mcnemar_exact_one_sided(b, c)
    significant = p < policy.retention_alpha
    text = f"retention {value:.2f} of base ({b} items lost, {c} gained; McNemar p={p:.2g})"
    if value >= limit:
        return True, value, limit, f"{text}; within the {policy.retention_margin:.0%} margin"
    if not significant:
        return True, value, limit, f"{text}; below {limit:.2f} but not significant"
    return False, value, limit, f"{text}; significantly below {limit:.2f}"


def _judge_drift(ckpt, base, policy):
    value, limit = _metric(ckpt, "drift"), policy.drift_max
    if value is None:
        return _not_measured("drift", limit)
    return value <= limit, value, limit, f"drift {value:.3g} nats/token (limit {limit:.3g})"


def _judge_leakage(ckpt, base, policy):
    value, limit = _metric(ckpt, "parrot_leakage"), policy.leakage_max
    if value is None:
        return _not_measured("parrot leakage", limit)
    st = ckpt.stat("parrot_leakage")
    counts = f" ({st.successes}/{st.n} answers)" if st.n and st.successes is not None else ""
    return value <= limit, value, limit, f"leakage {pct(value)}{counts} (limit {pct(limit)})"


def _judge_modal(ckpt, base, policy):
    value = _metric(ckpt, "modal_share")
    base_value = _base_value(ckpt, base, "modal_share") or 0.0
    limit = max(policy.modal_share_max, base_value + policy.modal_margin)
    if value is None:
        return _not_measured("modal-answer share", limit)
    return value <= limit, value, limit, f"modal answer share {pct(value)} (limit {pct(limit)})"


def _judge_loop(ckpt, base, policy):
    value = _metric(ckpt, "loop_rate")
    base_value = _base_value(ckpt, base, "loop_rate") or 0.0
    limit = base_value + policy.loop_margin
    if value is None:
        return _not_measured("loop rate", limit)
    detail = f"loop rate {pct(value)} (base {pct(base_value)} + {pct(policy.loop_margin)})"
    if value <= limit + 1e-12:
        return True, value, limit, detail
    # Fail only when the excess is clear: the 95 % Wilson lower bound is beyond base + margin.
    # A few more looping answers on a quick probe set (3/60 -> 8/60) are noise, not a collapse.
    st = ckpt.stat("loop_rate")
    if st.n:
        n = int(st.n)
        low, _ = wilson_interval(_successes(st, value), n)
        if low <= limit:
            return (
                True,
                value,
                limit,
                f"{detail}; not significantly above the limit (lower bound {pct(low)})",
            )
        return (
            False,
            value,
            limit,
            f"{detail}; significantly above the limit (lower bound {pct(low)})",
        )
    return False, value, limit, detail


def _judge_task_facts(ckpt, base, policy):
    value = _metric(ckpt, "task_facts")
    base_value = _base_value(ckpt, base, "task_facts") or 0.0
    limit = min(1.0, base_value + policy.task_min_gain)
    if value is None:
        return _not_measured("task facts", limit)
    st = ckpt.stat("task_facts")
    seen = "" if (ckpt.task or {}).get("held_out", True) else f"; {SEEN_LABEL}"
    if not st.n:
        return value > limit, value, limit, f"task facts {pct(value)} (no counts){seen}"
    n, k = int(st.n), _successes(st, value)
    low, high = wilson_interval(k, n)
    text = (
        f"task facts {pct(value)} [{pct(low)}–{pct(high)}] over {n} questions ({k} carried "
        f"the reference's facts); lower bound {'above' if low > limit else 'not above'} "
        f"{pct(limit)} = base {pct(base_value)} + {pct(policy.task_min_gain)}{seen}"
    )
    return low > limit, low, limit, text


def _judge_regurgitation(ckpt, base, policy):
    value = _metric(ckpt, "regurgitation")
    base_value = _base_value(ckpt, base, "regurgitation") or 0.0
    limit = base_value + policy.regurgitation_margin
    if value is None:
        return _not_measured("regurgitation", limit)
    st = ckpt.stat("regurgitation")
    counts = f" ({st.successes}/{st.n} answers)" if st.n and st.successes is not None else ""
    detail = (
        f"regurgitation {pct(value)}{counts} (base {pct(base_value)} + "
        f"{pct(policy.regurgitation_margin)})"
    )
    if value <= limit + 1e-12:
        return True, value, limit, detail
    if st.n:
        low, _ = wilson_interval(_successes(st, value), int(st.n))
        if low <= limit:
            return True, value, limit, f"{detail}; not significantly above (lower bound {pct(low)})"
        return False, value, limit, f"{detail}; significantly above (lower bound {pct(low)})"
    return False, value, limit, detail


_JUDGES = {
    "status": _judge_status,
    "identity_recall": _judge_identity,
    "task_facts": _judge_task_facts,
    "regurgitation": _judge_regurgitation,
    "near_miss": _judge_near_miss,
    "retention": _judge_retention,
    "drift": _judge_drift,
    "parrot_leakage": _judge_leakage,
    "modal_share": _judge_modal,
    "loop_rate": _judge_loop,
}
