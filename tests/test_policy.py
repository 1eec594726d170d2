"""The policy judges checkpoints with statistics, not point values, and says why in numbers."""

from __future__ import annotations

import pytest
from diag.diagnostics.checks import TASK_CHECKS, evaluate_checkpoint, is_eligible
from diag.diagnostics.policy import CHECKS, Policy, load_policy
from synthetic_sweep import base, ckpt

from diag.errors import DiagError


def _by_name(checks):
    return {c.name: c for c in checks}


def test_healthy_checkpoint_passes_every_check_with_numbers_in_the_details():
    checks = evaluate_checkpoint(ckpt(300), base(), Policy())
    # an identity run (results without judged_on): every check but the task's
    assert [c.name for c in checks] == [c for c in CHECKS if c not in TASK_CHECKS]
    assert is_eligible(checks)
    identity = _by_name(checks)["identity_recall"]
    assert identity.detail.startswith("identity 97% [83%–99%] over 30 prompts")
    assert identity.value == pytest.approx(0.833, abs=1e-3)  # the Wilson lower bound is judged


def test_identity_uses_the_lower_bound_not_the_point_value():
    # 8/8 is 100 % but its Wilson lower bound is 0.68 < 0.70: not enough evidence yet.
    check = _by_name(evaluate_checkpoint(ckpt(100, identity=(8, 8)), base(), Policy()))
    assert check["identity_recall"].passed is False
    assert "lower bound below 70%" in check["identity_recall"].detail


def test_parrot_fails_leakage_modal_retention_drift_and_near_miss():
    parrot = ckpt(600, near_miss=0.0, lost=90, gained=0, drift=2.5, leakage=1.0, modal=1.0)
    checks = _by_name(evaluate_checkpoint(parrot, base(), Policy()))
    failed = {name for name, c in checks.items() if not c.passed}
    assert failed == {"near_miss", "retention", "drift", "parrot_leakage", "modal_share"}
    assert "significantly below 0.90" in checks["retention"].detail
    assert checks["retention"].value == pytest.approx(0.10)


def test_retention_drop_beyond_margin_but_not_significant_passes():
    # 12 lost, 6 gained on 30 base-right items: retention 0.8 < 0.9, but McNemar p = 0.12.
    small = ckpt(100, base_right=30, lost=12, gained=6)
    check = _by_name(evaluate_checkpoint(small, base(), Policy()))["retention"]
    assert check.passed and "not significant" in check.detail


def test_missing_metric_fails_closed_and_severities_change_blocking():
    record = ckpt(100)
    del record["metrics"]["drift"]
    checks = _by_name(evaluate_checkpoint(record, base(), Policy()))
    assert checks["drift"].passed is False and "not measured" in checks["drift"].detail
    relaxed = load_policy(overrides={"checks.drift": "warning", "loop_rate": "off"})
    checks = evaluate_checkpoint(record, base(), relaxed)
    assert is_eligible(checks)
    assert "loop_rate" not in _by_name(checks)


def test_errored_checkpoint_is_judged_by_its_status_only():
    checks = evaluate_checkpoint(ckpt(100, status="error"), base(), Policy())
    assert [c.name for c in checks] == ["status"]
    assert not is_eligible(checks) and "adapter shapes" in checks[0].detail


def test_loop_and_modal_limits_follow_the_base():
    noisy_base = base()
    noisy_base["metrics"].update(loop_rate=0.2, modal_share=0.4)
    checks = _by_name(evaluate_checkpoint(ckpt(100, loop=0.22, modal=0.42), noisy_base, Policy()))
    assert checks["loop_rate"].passed and checks["modal_share"].passed
    checks = _by_name(evaluate_checkpoint(ckpt(100, loop=0.3, modal=0.5), noisy_base, Policy()))
    assert not checks["loop_rate"].passed and not checks["modal_share"].passed


def test_policy_file_and_overrides(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("identity_min_low: 0.8\nchecks:\n  near_miss: warning\n  loop_rate: off\n")
    policy = load_policy(path, overrides=("drift_max=0.3",))
    assert policy.identity_min_low == 0.8 and policy.drift_max == 0.3
    assert policy.severity("near_miss") == "warning"
    assert policy.severity("loop_rate") == "off"  # a bare YAML `off` is read as false
    assert policy.hash != Policy().hash


def test_bad_policy_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("drift_mx: 0.3\nleakage_max: lots\nchecks:\n  identity: off\n")
    with pytest.raises(DiagError) as err:
        load_policy(path)
    message = str(err.value)
    assert str(path) in message
    assert "did you mean 'drift_max'" in message
    assert "'leakage_max' must be a number" in message
    assert "unknown check 'identity'" in message
    with pytest.raises(DiagError, match="not found"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(DiagError, match="is not KEY=VALUE"):
        load_policy(None, ("drift_max",))


def test_near_miss_is_read_relative_to_the_base_or_an_absolute_floor():
    weak_base = base()
    weak_base["metrics"]["near_miss"] = 0.2
    checks = _by_name(evaluate_checkpoint(ckpt(100, near_miss=0.12), weak_base, Policy()))
    assert checks["near_miss"].passed and checks["near_miss"].threshold == 0.1
    checks = _by_name(evaluate_checkpoint(ckpt(100, near_miss=0.08), weak_base, Policy()))
    assert not checks["near_miss"].passed and "collapsed" in checks["near_miss"].detail
    checks = _by_name(evaluate_checkpoint(ckpt(100, near_miss=0.25), None, Policy()))
    assert not checks["near_miss"].passed and checks["near_miss"].threshold == 0.3


def test_loop_rate_needs_a_significant_excess_over_the_base():
    base_record = base()
    base_record["metrics"]["loop_rate"] = 3 / 60

    def looping(k: int) -> dict:
        record = ckpt(100, loop=k / 60)
        record["stats"]["loop_rate"] = {"value": k / 60, "successes": k, "n": 60}
        return record

    few = _by_name(evaluate_checkpoint(looping(8), base_record, Policy()))["loop_rate"]
    assert few.passed and "not significantly above the limit" in few.detail  # 13% vs 5%+5%: noise
    many = _by_name(evaluate_checkpoint(looping(30), base_record, Policy()))["loop_rate"]
    assert not many.passed and "significantly above the limit" in many.detail
