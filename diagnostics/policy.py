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
