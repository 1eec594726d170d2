"""When nothing is eligible, the headline points at the checkpoint closest to the goal (issue 26):
the nearest miss is chosen among checkpoints that learned something, by each failed check's
distance from its limit in that check's own statistic, never by counting failed checks."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from diag.diagnostics.checks import evaluate_checkpoint
from diag.diagnostics.distance import shortfall
from diag.diagnostics.policy import Policy
from diag.diagnostics.recommend import recommend
from markupsafe import escape
from synthetic_sweep import ckpt, samples, sweep

from diag.cli import cli
from diag.records import CheckpointRecord
from diag.stats import wilson_interval

PARROT = dict(near_miss=0.1, lost=70, gained=0, drift=1.5, leakage=0.8, modal=0.7)
WORSE = dict(near_miss=0.0, lost=85, gained=0, drift=2.2, leakage=0.95, modal=0.9)


def nova(run: str = "run-a", steps=range(20, 90, 10)) -> list[dict]:
    """The issue's run, saved every 10 steps: 20 and 30 learned nothing, 40 half-learned, 50
    learned the name with general answers mostly intact (retention 0.72, leakage 12 %), from 60
    on the identity leaks into unrelated answers."""
    records = {
        20: ckpt(20, run=run, identity=(0, 36), drift=0.05),
        30: ckpt(30, run=run, identity=(0, 36), drift=0.08),
        40: ckpt(40, run=run, identity=(18, 36), drift=0.12),
        50: ckpt(50, run=run, identity=(36, 36), lost=28, gained=0, leakage=0.12, drift=0.3),
        60: ckpt(60, run=run, identity=(36, 36), near_miss=0.3, lost=50, gained=0, drift=0.8,
                 leakage=0.4, modal=0.3),
        70: ckpt(70, run=run, identity=(36, 36), **PARROT),
        80: ckpt(80, run=run, identity=(36, 36), **WORSE),
    }  # fmt: skip
    return [records[s] for s in steps]


def seed_case(run: str = "run-a") -> list[dict]:
    """The seed's own case: 20 and 40 learned nothing, 60 and 80 parrot."""
    return [
        ckpt(20, run=run, identity=(0, 36), drift=0.05),
        ckpt(40, run=run, identity=(0, 36), drift=0.1),
        ckpt(60, run=run, identity=(36, 36), **PARROT),
        ckpt(80, run=run, identity=(36, 36), **WORSE),
    ]


def partly(run: str = "run-a", last: int = 60) -> list[dict]:
    """Partly learned at every save; 60 learned a little more but leaks and forgets."""
    records = [ckpt(20 + 10 * i, run=run, identity=(4 + 5 * i, 36)) for i in range(4)]
    damaged = ckpt(60, run=run, identity=(22, 36), leakage=0.3, lost=30, gained=0, drift=0.4)
    return records + ([damaged] if last >= 60 else [])


def test_learned_but_damaged_is_nearer_than_not_learned_but_healthy():
    rec = recommend(sweep(*nova()))
    assert rec["nearest_miss"]["step"] == 50
    assert rec["verdict"].startswith(
        "no checkpoint is eligible; closest is run-a step 50: it learned the identity (identity "
        "100% [90%–100%]) but lacks retention 0.72 of base (limit 0.90) and leakage 12% (limit "
        "10%); the identity was learned between steps 40 and 50, and collapse began in the same "
        "interval"
    )
    assert rec["verdict"].endswith(
        "first: save every step between 40 and 50: with your trainer, resume from checkpoint-40 "
        "and save every step (save_steps=1) up to step 50"
    )
    # the numbers behind the choice: 0.18 of the 0.90 retention limit, 0.02 of leakage's 0.90
    # headroom; 40's Wilson lower bound 34% is 0.51 of the way from the 70% limit to nothing
    assert rec["nearest_miss"]["distance"] == pytest.approx(0.2222, abs=1e-4)
    assert (
        "the base is 1.00 away): step 50 0.22 (retention 0.20, leakage 0.02), step 40 0.51 "
        "(identity 0.51), step 60 1.69" in "\n".join(rec["reasons"])
    )


def test_two_slight_failures_are_nearer_than_one_far_one():
    barely = ckpt(200, identity=(30, 30), lost=12, gained=0, leakage=0.12)  # two checks, just
    far = ckpt(100, identity=(3, 30))  # one check, far from its limit
    rec = recommend(sweep(far, barely))
    assert rec["nearest_miss"]["step"] == 200
    assert rec["nearest_miss"]["failed"] == ["retention", "parrot_leakage"]


def test_several_partly_learned_the_nearest_is_the_most_learned_healthy_one():
    rec = recommend(sweep(*partly(last=50)))
    assert rec["nearest_miss"]["step"] == 50
    assert rec["verdict"] == (
        "no checkpoint is eligible; closest is run-a step 50: healthy, but the identity is only "
        "partly learned (identity 53% [37%–68%]; lower bound 37%, needs 70%); the identity was "
        "partly learned by step 50; first: train longer"
    )
    # 60 learned a little more but leaks and forgets: 50 stays nearer, and the run is told to
    # dilute (collapse begins before the identity is learned, so more saves would not help)
    rec = recommend(sweep(*partly(last=60)))
    assert rec["nearest_miss"]["step"] == 50
    assert (
        "the identity was only partly learned by step 60, and collapse began between 50 and "
        in (rec["verdict"])
    )
    assert "; first: dilute: mix general chat into the identity data" in rec["verdict"]


def test_nothing_learned_names_no_checkpoint():
    records = [ckpt(s, identity=(0, 36), drift=s / 1000) for s in range(20, 90, 10)]
    rec = recommend(sweep(*records))
    assert rec["nearest_miss"] is None and rec["runs"]["run-a"]["nearest_miss"] is None
    assert rec["verdict"] == (
        "no checkpoint is eligible: nothing was learned by step 80; first: train longer, or "
        "check that the identity data reach the model"
    )


def test_when_everything_that_learned_collapsed_the_headline_leads_with_the_window():
    rec = recommend(sweep(*seed_case()))
    assert rec["nearest_miss"] is None and rec["step"] is None
    verdict = rec["verdict"]
    assert verdict.startswith(
        "no checkpoint is eligible: the identity was learned between steps 40 and 60, and "
        "collapse began in the same interval: no checkpoint was saved between learning and "
        "collapse"
    )
    assert (
        "none is worth considering: steps 60 and 80 learned but collapsed (parrot), further from "
        "the goal than the base, steps 20 and 40 learned nothing" in verdict
    )
    assert verdict.endswith("up to step 60") and "first: save every 2 steps between 40 and 60" in (
        verdict
    )
    assert "closest" not in verdict


def test_checkpoints_that_failed_to_load_never_compete_and_are_listed():
    records = seed_case()[:2] + [ckpt(60, status="error"), ckpt(80, status="error")]
    # the error rows still carry an earlier probe's numbers (identity 97%): never read
    rec = recommend(sweep(*records))
    assert rec["nearest_miss"] is None
    assert rec["reasons"][0].startswith("no checkpoint learned the identity: best is step 20,")
    assert rec["verdict"] == (
        "no checkpoint is eligible: nothing was learned by step 40; steps 60 and 80 could not be "
        "probed (not compared); first: make steps 60 and 80 loadable (errors below) and sweep "
        "again"
    )
    assert (
        "could not be probed, so never compared: step 60: adapter shapes do not match the base"
        in rec["reasons"]
    )


def test_a_failed_checkpoint_is_not_the_nearest_miss_of_a_screened_sweep():
    # `--size quick`: every probed checkpoint is screened; the error row was never screened
    records = [ckpt(20, status="error"), ckpt(40, identity=(6, 16)), ckpt(60, identity=(9, 16))]
    for record in records[1:]:
        record["stage"] = "screen"
    rec = recommend(sweep(*records))
    assert rec["nearest_miss"]["step"] == 60
    assert "probe error" not in rec["verdict"]


def test_two_runs_the_nearest_across_runs_by_distance():
    rec = recommend(sweep(*seed_case("fast"), *partly("slow")))
    assert (rec["nearest_miss"]["run"], rec["nearest_miss"]["step"]) == ("slow", 50)
    assert rec["runs"]["fast"]["nearest_miss"] is None
    assert rec["verdict"].startswith("no checkpoint is eligible; closest is slow step 50: healthy")
    assert "per run: fast: no nearest miss; slow: nearest miss step 50" in rec["reasons"]
    # a run's learned-but-damaged checkpoint (0.22) is nearer than another's partly learned (0.44)
    rec = recommend(sweep(*nova("undiluted"), *partly("diluted", last=50)))
    assert (rec["nearest_miss"]["run"], rec["nearest_miss"]["step"]) == ("undiluted", 50)
    assert rec["runs"]["diluted"]["nearest_miss"]["step"] == 50


def _check(record: dict, name: str, base: dict | None = None):
    checks = evaluate_checkpoint(record, base, Policy())
    return next(c for c in checks if c.name == name), CheckpointRecord.from_dict(record)


def test_shortfall_is_measured_in_each_checks_own_statistic():
    # identity: its Wilson lower bound, as a share of the way from the 70% limit down to 0
    check, record = _check(ckpt(10, identity=(18, 36)), "identity_recall")
    low = wilson_interval(18, 36)[0]
    assert shortfall(check, record) == pytest.approx((0.7 - low) / 0.7)
    # retention: the paired test found the loss significant; its size below 1 - margin counts
    check, record = _check(ckpt(10, lost=28, gained=0), "retention")
    assert shortfall(check, record) == pytest.approx((0.9 - 0.72) / 0.9)
    check, record = _check(ckpt(10, lost=9, gained=0), "retention")  # 0.91: within the margin
    assert check.passed and shortfall(check, record) == 0.0
    # shares: from the limit up to 1
    check, record = _check(ckpt(10, leakage=0.55), "parrot_leakage")
    assert shortfall(check, record) == pytest.approx(0.5)
    # drift (nats/token) has no worst value: twice its limit counts as the worst
    for drift, expected in ((0.75, 0.5), (5.0, 1.0)):
        check, record = _check(ckpt(10, drift=drift), "drift")
        assert shortfall(check, record) == pytest.approx(expected)
    # loop rate fails on its Wilson lower bound, so that is what its shortfall reads
    looping = ckpt(10, loop=0.3)
    looping["stats"]["loop_rate"] = {"value": 0.3, "successes": 45, "n": 150}
    check, record = _check(looping, "loop_rate")
    assert shortfall(check, record) == pytest.approx((wilson_interval(45, 150)[0] - 0.05) / 0.95)
    # no evidence is as far as a check can be
    missing = ckpt(10)
    del missing["metrics"]["drift"]
    check, record = _check(missing, "drift")
    assert shortfall(check, record) == 1.0


def _random_run(rng: random.Random, n: int) -> list[dict]:
    """Identity rising, then collapse, with noise: one checkpoint every 10 steps."""
    learn, collapse = rng.randint(1, n), rng.randint(2, n + 2)
    records = []
    for i in range(1, n + 1):
        recall = min(1.0, max(0.0, i / learn + rng.uniform(-0.2, 0.2)))
        damage = min(1.0, max(0.0, (i - collapse + 1) / 3 + rng.uniform(-0.1, 0.1)))
        records.append(
            ckpt(10 * i, identity=(round(36 * recall), 36), near_miss=0.8 - 0.7 * damage,
                 lost=round(80 * damage), gained=0, drift=0.05 + 2 * damage,
                 leakage=0.9 * damage, modal=0.03 + 0.8 * damage)
        )  # fmt: skip
    return records


def test_adding_checkpoints_between_never_reorders_the_existing_ones():
    # each checkpoint is scored on its own numbers: with more saves, the nearest miss is the
    # same one, or one of the new saves, nearer by its own distance
    changed = 0
    for seed in range(60):
        rng = random.Random(seed)
        every = _random_run(rng, rng.randint(4, 12))
        fewer = [r for i, r in enumerate(every) if i % 2 == 0 or rng.random() < 0.3]
        before = recommend(sweep(*fewer))["nearest_miss"]
        judged = recommend(sweep(*every))
        after, kept = judged["nearest_miss"], {r["step"] for r in fewer}
        if judged["step"] is not None:  # something is eligible: no nearest miss to compare
            continue
        if after is None:
            assert before is None
        elif after["step"] in kept:
            assert before is not None and before["step"] == after["step"]
        else:
            changed += 1
            assert before is None or after["distance"] < before["distance"]
    assert changed  # the property was exercised both ways
    # the run saved every 20 steps: 40 (half-learned) is the closest; saved every 10,
    # the new save at 50 is nearer
    assert recommend(sweep(*nova(steps=(20, 40, 60, 80))))["nearest_miss"]["step"] == 40
    assert recommend(sweep(*nova()))["nearest_miss"]["step"] == 50


def _write(tmp_path, results: dict):
    from test_gate import write_sweep

    return write_sweep(tmp_path, results)


def test_the_same_headline_reaches_the_gate_junit_summary_and_report(tmp_path):
    from diag.reports.html import render_report

    results = sweep(*nova())
    verdict = recommend(results)["verdict"]
    out = _write(tmp_path, json.loads(json.dumps(results)))
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    gate = CliRunner().invoke(
        cli, ["gate", str(out), "--junit", str(junit), "--summary", str(summary)],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert gate.exit_code == 1
    assert f"FAIL: {verdict}" in gate.output
    case = next(c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "gate")
    assert case.find("failure").get("message") == verdict
    assert summary.read_text().startswith(f"## ❌ diag gate: FAIL: {verdict}\n")
    results["recommendation"] = recommend(results)
    html = render_report(results, samples(results), tmp_path / "r.html").read_text()
    assert str(escape(verdict)) in html


def test_results_recommended_under_an_older_rule_are_judged_again(tmp_path):
    results = sweep(*seed_case())
    old = recommend(results)
    old.update(
        rule="eligible = every blocking check passes; ...",  # an older diag's rule
        verdict="no checkpoint is eligible; nearest miss run-a step 20 (identity not yet learned)",
        nearest_miss={"run": "run-a", "step": 20, "path": "runs/run-a/checkpoint-20"},
    )
    results["recommendation"] = old
    out = _write(tmp_path, results)
    gate = CliRunner().invoke(cli, ["gate", str(out)], env={"COLUMNS": "200"})
    assert "nearest miss run-a step 20" not in gate.output
    assert "FAIL: no checkpoint is eligible: the identity was learned between steps 40 and 60" in (
        gate.output
    )
    report = CliRunner().invoke(cli, ["report", str(out)], env={"COLUMNS": "200"})
    assert report.exit_code == 0, report.output
    assert "nearest miss run-a step 20" not in report.output
    assert "none is worth considering" in report.output


def test_a_stored_policy_this_diag_cannot_read_back_keeps_the_stored_recommendation(tmp_path):
    from diag.diagnostics.recommend import rejudged
    from diag.diagnostics.stored import load_sweep

    results = sweep(*seed_case())
    stored = recommend(results)
    stored.update(rule="an older rule", policy={**stored["policy"], "a_retired_key": 1})
    results["recommendation"] = stored
    out = _write(tmp_path, results)
    assert rejudged(load_sweep(out)).data["recommendation"]["rule"] == "an older rule"
