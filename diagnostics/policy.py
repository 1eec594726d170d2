"""The policy: when is a checkpoint good enough to ship? One source of truth for recommend and gate.

A checkpoint is judged against its base model (the sweep's step-0 record) by a list of checks.
Each check is ``blocking`` (a failure makes the checkpoint ineligible / fails the gate),
``warning`` (shown, never decisive) or ``off``. Defaults are documented in ``docs/policy.md``;
a YAML file and flag overrides change them::

    # policy.yaml
    identity_min_low: 0.8          # Wilson lower bound of identity recall must reach 80 %
    drift_max: 0.3
    checks:
      near_miss: warning           # show it, but do not block on it

>>> policy = load_policy(overrides={"drift_max": "0.3"})
>>> policy.drift_max, policy.severity("drift")
(0.3, 'blocking')
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from diag.display import shown
from diag.errors import DiagError
from diag.files import load_yaml
from diag.records import Check, CheckpointRecord, MetricStats
from diag.stats import mcnemar_exact_one_sided, wilson_interval
from diag.task import SEEN_LABEL

# Every check the policy knows, in the order they are shown.
CHECKS = (
    "status",
    "identity_recall",
    "task_facts",
    "near_miss",
    "retention",
    "drift",
    "parrot_leakage",
    "regurgitation",
    "modal_share",
    "loop_rate",
)
SEVERITIES = ("blocking", "warning", "off")
# Checks that measure what a run taught: the identity's apply to runs that taught one, the task's
# to runs whose data teaches a narrow task (a record's ``judged_on``); the rest judge every run.
IDENTITY_CHECKS = ("identity_recall", "near_miss", "parrot_leakage")
TASK_CHECKS = ("task_facts", "regurgitation")


def applies(name: str, record: CheckpointRecord) -> bool:
    """Whether check ``name`` judges ``record`` (results written before ``judged_on``: the
    identity checks, as then)."""
    taught = record.judged_on
    if taught is None:
        return name not in TASK_CHECKS
    if name in IDENTITY_CHECKS:
        return "identity" in taught
    if name in TASK_CHECKS:
        return "task" in taught
    return True


@dataclass(frozen=True)
class Policy:
    """Thresholds (units in the comments) and per-check severities. Immutable; use ``replace``."""

    # identity_recall: the 95 % Wilson lower bound of successes/n must reach this (a fraction).
    identity_min_low: float = 0.70
    # near_miss: accuracy must stay at least this fraction of the base model's near-miss accuracy...
    near_miss_min_ratio: float = 0.50
    # ... or, when the base was not measured, at least this absolute accuracy.
    near_miss_min: float = 0.30
    # retention: fails when acc(ckpt)/acc(base) < 1 - margin AND the paired exact one-sided
    # McNemar test says the checkpoint is worse than the base at level alpha.
    retention_margin: float = 0.10
    retention_alpha: float = 0.05
    # drift: mean per-token log-likelihood gap on the base's own answers (nats/token), at most.
    drift_max: float = 0.50
    # parrot_leakage: share of non-identity answers that carry the identity, at most.
    leakage_max: float = 0.10
    # modal_share: share of answers in the largest near-identical group, at most this, or at most
    # the base's own share + modal_margin when the base is already above the limit.
    modal_share_max: float = 0.25
    modal_margin: float = 0.05
    # loop_rate: share of answers ending in a repeated loop, at most base + loop_margin, unless
    # the excess is not significant (95 % Wilson lower bound still at or below that limit).
    loop_margin: float = 0.05
    # choice rule: checkpoints whose identity recall is within this of the best eligible one are
    # "on the identity plateau"; the earliest of them is recommended.
    plateau_tolerance: float = 0.05
    # task_facts: the 95 % Wilson lower bound of the share of task questions answered with the
    # reference's facts must exceed the base's share by this much (a fraction): a task counts as
    # learned on knowledge, never on style.
    task_min_gain: float = 0.20
    # regurgitation: share of unrelated answers bringing the task's content, at most base + this,
    # unless the excess is not significant (as loop_rate).
    regurgitation_margin: float = 0.10
    # onset: the composite collapse score must jump by at least this (0..1) to call a collapse.
    onset_min_jump: float = 0.25
    checks: dict[str, str] = field(default_factory=lambda: dict.fromkeys(CHECKS, "blocking"))

    def severity(self, check: str) -> str:
        return self.checks.get(check, "blocking")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


THRESHOLDS = tuple(f.name for f in fields(Policy) if f.name != "checks")


def parse_overrides(pairs) -> dict[str, str]:
    """``("drift_max=0.3", "checks.near_miss=warning")`` (repeated ``--set``) -> a dict.

    >>> parse_overrides(["drift_max=0.3"])
    {'drift_max': '0.3'}
    """
    parsed = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise DiagError(f"--set {shown(pair)} is not KEY=VALUE", fix="e.g. --set drift_max=0.3")
        parsed[key.strip()] = value.strip()
    return parsed


def load_policy(path: str | Path | None = None, overrides=None) -> Policy:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (e.g. from CLI flags).

    ``overrides`` is a dict or the ``--set KEY=VALUE`` strings. Values may be strings ("0.3",
    "warning"); ``checks`` maps check names to severities, and a key ``checks.NAME`` (or ``NAME`` =
    a severity) sets one. All problems are reported in one DiagError naming the file and the fix.
    """
    if overrides is not None and not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    source = "policy overrides"
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise DiagError(
                f"policy file '{path}' not found", fix="pass --policy PATH to a YAML file"
            )
        try:
            loaded = load_yaml(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise DiagError(f"policy file '{path}' is not valid YAML: {first}") from exc
        if not isinstance(loaded, dict):
            raise DiagError(f"policy file '{path}' must be a mapping of threshold names to values")
        data, source = loaded, f"policy file '{path}'"
    problems: list[str] = []
    policy = _apply(Policy(), data, problems)
    if problems:
        raise DiagError(f"{source}: " + "; ".join(problems), fix="see docs/policy.md for the keys")
    policy = _apply(policy, _nest_overrides(overrides or {}), problems)
    if problems:
        raise DiagError("policy overrides: " + "; ".join(problems), fix="see docs/policy.md")
    return policy


def _nest_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if key.startswith("checks."):
            nested.setdefault("checks", {})[key.split(".", 1)[1]] = value
        elif key in CHECKS and str(value) in SEVERITIES:
            nested.setdefault("checks", {})[key] = value
        else:
            nested[key] = value
    return nested


def _apply(policy: Policy, data: dict[str, Any], problems: list[str]) -> Policy:
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "checks":
            if not isinstance(value, dict):
                problems.append("'checks' must map check names to blocking|warning|off")
                continue
            severities = dict(policy.checks)
            for name, level in value.items():
                if level is False:  # YAML 1.1 reads a bare `off` as false
                    level = "off"
                if name not in CHECKS:
                    problems.append(f"unknown check {shown(name)}{_did_you_mean(name, CHECKS)}")
                elif str(level) not in SEVERITIES:
                    problems.append(
                        f"check '{shown(name)}': severity {shown(level)} is not one of {SEVERITIES}"
                    )
                else:
                    severities[name] = str(level)
            changes["checks"] = severities
        elif key not in THRESHOLDS:
            problems.append(
                f"unknown key {shown(key)}{_did_you_mean(key, THRESHOLDS + ('checks',))}"
            )
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                problems.append(f"'{key}' must be a number, got {shown(value)}")
                continue
            if not math.isfinite(number):  # nan compares false with every bound
                problems.append(f"'{key}' must be a finite number, got {shown(value)}")
                continue
            if number < 0 or (number > 1 and key != "drift_max"):
                problems.append(f"'{key}' = {number} is outside its range (0..1)")
                continue
            changes[key] = number
    return replace(policy, **changes)


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- evaluating one checkpoint ---------------------------------------------------------------


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
