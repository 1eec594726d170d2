"""Recommendation and onset on synthetic sweeps: the decisions a user reads in the report."""

from __future__ import annotations

import random

from diag.diagnostics.checks import evaluate_checkpoint
from diag.diagnostics.onset import locate_onset
from diag.diagnostics.policy import Policy, load_policy
from diag.diagnostics.recommend import recommend
from synthetic_sweep import ckpt, learned_then_parrot, sweep


def test_learned_then_parrot_recommends_last_healthy_step_and_locates_onset():
    rec = recommend(sweep(*learned_then_parrot()))
    assert (rec["run"], rec["step"]) == ("run-a", 300)
    assert rec["path"] == "runs/run-a/checkpoint-300"
    assert rec["onset_step"] == 400
    assert rec["onset"]["healthy_until"] == 300
    text = "\n".join(rec["reasons"])
    assert "step 300: identity 100% [89%–100%]" in text
    assert "later, step 400: identity 100%" in text and "leakage 83%" in text and "parrot" in text
    assert "earlier, step 200: identity 70% [52%–83%]" in text and "not yet learned" in text
    assert "healthy up to step 300, collapsing from step 400" in text
    assert rec["verdict"].startswith("recommend run-a step 300")
    # every checkpoint's checks are stored, the same objects the gate uses
    assert [c["step"] for c in rec["checks"]] == [100, 200, 300, 400, 500, 600]
    assert [c["eligible"] for c in rec["checks"]] == [False, False, True, False, False, False]


def test_all_parrot_run_recommends_nothing_and_names_no_parrot_as_the_nearest_miss():
    records = [
        ckpt(
            s,
            identity=(30, 30),
            near_miss=0.1,
            lost=60 + s // 50,
            gained=0,
            drift=1.0 + s / 500,
            leakage=0.6 + s / 2000,
            modal=0.7,
        )
        for s in (100, 200, 300)
    ]
    rec = recommend(sweep(*records))
    assert rec["step"] is None and rec["run"] is None and rec["path"] is None
    # every checkpoint that learned is a parrot, further from the goal than the base: the headline
    # leads with the window where learning and collapse happened and names none to consider
    assert rec["verdict"].startswith(
        "no checkpoint is eligible: the identity was learned between steps 0 and 100, and "
        "collapse began in the same interval"
    )
    assert (
        "none is worth considering: steps 100, 200 and 300 learned but collapsed"
        in (rec["verdict"])
    )
    assert rec["nearest_miss"] is None
    assert "all 3 that learned the identity fail other checks" in rec["reasons"][0]
    # collapsed from the first checkpoint on: onset right after the base
    assert rec["onset"]["healthy_until"] == 0 and rec["onset_step"] == 100


def test_run_that_never_learns_recommends_nothing_and_says_why():
    records = [ckpt(s, identity=(s // 100, 30)) for s in (100, 200, 300, 400)]
    rec = recommend(sweep(*records))
    assert rec["step"] is None
    assert rec["reasons"][0].startswith(
        "no checkpoint learned the identity: best is step 400, identity 13% [5%–30%]"
    )
    assert rec["nearest_miss"]["failed"] == ["identity_recall"]
    assert rec["onset_step"] is None  # healthy all along: no collapse to report


def test_earliest_checkpoint_on_the_identity_plateau_wins_within_a_run():
    records = [
        ckpt(100, identity=(27, 30)),  # 90 %: eligible, but below the plateau (97-100 %)
        ckpt(200, identity=(29, 30), drift=0.2),
        ckpt(300, identity=(30, 30), drift=0.1),
    ]
    assert recommend(sweep(*records))["step"] == 200
    wide = load_policy(overrides={"plateau_tolerance": 0.15})
    assert recommend(sweep(*records), wide)["step"] == 100


def test_ties_are_deterministic_across_runs_and_input_order():
    records = [ckpt(s, run=run) for run in ("run-b", "run-a", "run-c") for s in (100, 200)]
    results = sweep(*records)
    first = recommend(results)
    assert (first["run"], first["step"]) == ("run-a", 100)
    for seed in range(5):
        shuffled = dict(results, checkpoints=list(results["checkpoints"]))
        random.Random(seed).shuffle(shuffled["checkpoints"])
        again = recommend(shuffled)
        assert (again["run"], again["step"], again["reasons"]) == (
            first["run"],
            first["step"],
            first["reasons"],
        )


def test_best_per_run_and_across_runs_prefers_lowest_drift():
    records = learned_then_parrot("run-a") + [
        ckpt(50, run="diluted", identity=(29, 30), drift=0.02),
        ckpt(100, run="diluted", identity=(30, 30), drift=0.03),
    ]
    rec = recommend(sweep(*records))
    assert rec["runs"]["run-a"]["step"] == 300
    assert rec["runs"]["diluted"]["step"] == 50
    assert (rec["run"], rec["step"]) == ("diluted", 50)
    assert rec["runs"]["diluted"]["onset"] is None
    assert any("best across 2 runs" in r for r in rec["reasons"])


def test_errored_checkpoints_are_never_recommended_and_base_only_sweeps_say_so():
    records = learned_then_parrot()
    records[2] = ckpt(300, status="error")
    rec = recommend(sweep(*records))
    assert rec["step"] is None
    assert rec["nearest_miss"]["step"] != 300
    errored = [c for c in rec["checks"] if c["step"] == 300][0]
    assert errored["checks"][0]["name"] == "status" and not errored["checks"][0]["passed"]
    only_base = sweep(ckpt(100))
    only_base["checkpoints"] = only_base["checkpoints"][:1]
    assert recommend(only_base)["verdict"] == "no checkpoint to judge"


def test_onset_needs_a_material_jump():
    results = sweep(*learned_then_parrot())
    base = results["checkpoints"][0]
    healthy = [ckpt(s, drift=0.05 + s / 10000) for s in (100, 200, 300)]
    assert locate_onset(healthy, base, Policy()) is None
    onset = locate_onset(results["checkpoints"], base, Policy())
    assert (onset.healthy_until, onset.collapsing_from) == (300, 400)
    assert onset.changes["parrot_leakage"] == (0.0, 0.83)


def test_onset_is_the_first_persistent_policy_failure_not_the_biggest_jump():
    # The real undiluted demo run: near-miss collapses at 35 and leakage is 19 % at 40, while
    # the big jump in the curves comes only at 50. "healthy up to 40" would contradict the
    # checks shown next to it, so the onset is where the run starts failing and never recovers.
    records = [
        ckpt(20, identity=(0, 30), near_miss=0.8),
        ckpt(30, identity=(10, 30), near_miss=0.75),
        ckpt(35, identity=(30, 30), near_miss=0.25, leakage=0.03),
        ckpt(40, identity=(30, 30), near_miss=0.25, leakage=0.19),
        ckpt(45, identity=(30, 30), near_miss=0.0, leakage=0.25, lost=20, gained=0),
        ckpt(50, identity=(30, 30), near_miss=0.0, leakage=0.44, lost=50, gained=0, modal=0.5),
        ckpt(60, identity=(30, 30), near_miss=0.0, leakage=0.66, lost=70, gained=0, modal=0.7),
    ]
    results = sweep(*records)
    onset = locate_onset(results["checkpoints"], results["checkpoints"][0], Policy())
    assert (onset.healthy_until, onset.collapsing_from) == (30, 35)
    assert onset.method == "policy" and onset.failed == ("near_miss",)
    assert onset.sentence().startswith("healthy up to step 30, collapsing from step 35")
    rec = recommend(results)
    assert rec["step"] is None  # nothing healthy has learned the identity yet
    # near-miss as a warning only: the onset moves to where leakage crosses its limit
    lenient = load_policy(overrides={"checks.near_miss": "warning"})
    onset = locate_onset(results["checkpoints"], results["checkpoints"][0], lenient)
    assert (onset.collapsing_from, onset.failed) == (40, ("parrot_leakage",))
    assert recommend(results, lenient)["step"] == 35


def test_a_failure_that_recovers_is_not_the_onset_but_is_reported():
    records = learned_then_parrot()
    records[1] = ckpt(200, identity=(21, 30), leakage=0.2)  # one noisy failure, then healthy
    results = sweep(*records)
    onset = locate_onset(results["checkpoints"], results["checkpoints"][0], Policy())
    assert (onset.healthy_until, onset.collapsing_from, onset.first_failure) == (300, 400, 200)
    assert "step 200 already failed a check once, then recovered" in onset.sentence()


def test_unmeasured_metrics_do_not_make_an_onset():
    records = [ckpt(s) for s in (100, 200, 300)]
    for r in records:
        del r["metrics"]["drift"]
    results = sweep(*records)
    assert locate_onset(results["checkpoints"], results["checkpoints"][0], Policy()) is None


def test_identity_interval_counts_paraphrase_groups_as_clusters():
    # 12/16 right, but whole paraphrase groups pass or fail together: 4 groups of evidence
    clustered = ckpt(100, identity=(12, 16))
    clustered["stats"]["identity_recall"]["extra"] = {"clusters": 4, "design_effect": 4.0}
    independent = ckpt(100, identity=(12, 16))
    checks = {
        name: {c.name: c for c in evaluate_checkpoint(r, None, Policy())}["identity_recall"]
        for name, r in (("clustered", clustered), ("independent", independent))
    }
    assert checks["clustered"].value < checks["independent"].value  # a lower lower bound
    assert "in 4 paraphrase groups (design effect 4.0)" in checks["clustered"].detail
    assert "paraphrase groups" not in checks["independent"].detail


def test_onset_sentence_quotes_only_the_curves_that_got_worse():
    records = [
        ckpt(30, identity=(0, 30), lost=8, gained=0),  # retention 0.92: within the margin
        ckpt(35, identity=(30, 30), near_miss=0.2),  # retention back to 1.0, near-miss falls
        ckpt(40, identity=(30, 30), near_miss=0.1, leakage=0.3),
    ]
    results = sweep(*records)
    onset = locate_onset(results["checkpoints"], results["checkpoints"][0], Policy())
    assert onset.collapsing_from == 35 and "near-miss 80% → 20%" in onset.sentence()
    assert "retention" not in onset.changes


def test_onset_with_a_metric_missing_on_one_side():
    records = learned_then_parrot()
    results = sweep(*records)
    del results["checkpoints"][3]["metrics"]["retention"]  # step 300: retention not measured
    onset = locate_onset(results["checkpoints"], results["checkpoints"][0], Policy())
    assert onset.collapsing_from == 400 and "retention" not in onset.changes
