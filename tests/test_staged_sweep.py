"""The staged sweep (screen everything, full suite where the decision is made) decides exactly as
the exhaustive full sweep, on simulated runs of every shape: real discovery, caching, probing,
grading, policy and onset; only the model is scripted (tests/simulated_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diag.diagnostics.sweeper import sweep
from simulated_runs import RUNS, SimulatedModel, learned_then_parrot, random_run, write_run


def _sweep(root, base, out, size, model=None):
    model = model or SimulatedModel
    return sweep(
        root,
        base=base,
        identity="en",
        out=out,
        size=size,
        progress="quiet",
        load_model=lambda name: model(name),
    )


def sweep_record(out) -> list[dict]:
    return json.loads((Path(out) / "results.json").read_text())["checkpoints"]


def _decision(data: dict) -> dict:
    """What a user reads off a sweep: the pick (or nearest miss) and each run's pick and onset."""
    rec = data["recommendation"]
    out = {"overall": (rec["run"], rec["step"], (rec.get("nearest_miss") or {}).get("step"))}
    for run, pick in rec["runs"].items():
        onset = pick.get("onset") or {}
        out[run] = (
            pick["step"],
            (pick.get("nearest_miss") or {}).get("step"),
            onset.get("healthy_until"),
            onset.get("collapsing_from"),
            onset.get("method"),
            tuple(onset.get("failed") or ()),
        )
    return out


@pytest.fixture(scope="module")
def both_sweeps(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("simulated") / "runs"
    for name, behaviours in RUNS.items():
        write_run(root, name, behaviours)
    for seed in range(4):
        write_run(root, f"random-{seed}", random_run(seed))
    write_run(root, "long", learned_then_parrot(50, learn_by=12, parrot_from=35, noise=7))
    full = _sweep(root, tiny_model_dir, root.parent / "full", "full")
    staged = _sweep(root, tiny_model_dir, root.parent / "staged", "staged")
    return full.data, staged.data


def test_staged_sweep_gives_the_full_sweeps_recommendation_and_onsets(both_sweeps):
    full, staged = both_sweeps
    expected = _decision(full)
    # the runs cover every shape: picks, nothing eligible, onsets and none
    assert {v[0] is None for k, v in expected.items() if k != "overall"} == {True, False}
    assert {v[3] is None for k, v in expected.items() if k != "overall"} == {True, False}
    assert _decision(staged) == expected


def test_the_full_suite_measures_few_checkpoints_and_every_one_a_verdict_names(both_sweeps):
    _, staged = both_sweeps
    records = [c for c in staged["checkpoints"] if c["step"]]
    stage = {(c["run"], c["step"]): c["stage"] for c in records}
    rec = staged["recommendation"]
    named = {(rec["run"], rec["step"])}
    for run, pick in rec["runs"].items():
        named.add((run, pick["step"] if pick["step"] is not None else pick["nearest_miss"]["step"]))
        if pick.get("onset"):
            named.add((run, pick["onset"]["collapsing_from"]))
    assert {stage[n] for n in named if n in stage} == {"full"}
    per_run = {}
    for c in records:
        per_run.setdefault(c["run"], []).append(c["stage"])
    assert len(per_run["long"]) == 50 and per_run["long"].count("full") <= 8
    assert all(stages.count("full") <= 8 for stages in per_run.values())
    assert sum(s == "screen" for s in stage.values()) > len(stage) / 2
    # a screened checkpoint rests on fewer prompts, and says so
    screened = next(c for c in records if c["stage"] == "screen")
    promoted = next(c for c in records if c["stage"] == "full")
    assert screened["prompts"]["general"] < promoted["prompts"]["general"]
    assert screened["stats"]["parrot_leakage"]["n"] < promoted["stats"]["parrot_leakage"]["n"]


class CountingModel(SimulatedModel):
    asked: list[str] = []

    def generate(self, prompts, config):
        CountingModel.asked.extend(prompts)
        return super().generate(prompts, config)


def test_the_full_suite_asks_only_what_the_screen_did_not_and_a_full_sweep_reuses_it(
    tiny_model_dir, tmp_path
):
    root = tmp_path / "runs"
    write_run(root, "run", learned_then_parrot(6))
    CountingModel.asked = []
    staged = _sweep(root, tiny_model_dir, tmp_path / "out", "staged", CountingModel)
    records = [c for c in staged.data["checkpoints"] if c["step"]]
    promoted = [c for c in records if c["stage"] == "full"]
    assert 0 < len(promoted) < len(records)
    base = next(c for c in staged.data["checkpoints"] if c["step"] == 0)
    full_prompts = sum(base["prompts"].values())
    screen_prompts = sum(records[0]["prompts"].values()) if records[0]["stage"] == "screen" else 0
    assert screen_prompts and full_prompts > screen_prompts
    # the base once in full, every checkpoint screened, the promoted ones only the rest (of what
    # they were asked: one that parrots stops asking general prompts once its checks settle)
    expected = full_prompts + len(records) * screen_prompts
    expected += sum(sum(c["prompts"].values()) - screen_prompts for c in promoted)
    assert len(CountingModel.asked) == expected
    stopped = [c for c in promoted if c.get("stopped")]
    assert stopped and all(c["stopped"]["general"]["asked"] < 182 for c in stopped)
    assert all(set(c["stopped"]["general"]["settled"]) >= {"parrot_leakage"} for c in stopped)
    assert all(c["step"] != staged.data["recommendation"]["step"] for c in stopped)
    from diag.reports.build import write_report

    html = write_report(staged).read_text(encoding="utf-8")
    assert html.count("general: stopped after 64 of 182 prompts") == len(stopped)

    CountingModel.asked = []
    again = _sweep(root, tiny_model_dir, tmp_path / "out", "full", CountingModel)
    cached = {c["step"] for c in again.data["checkpoints"] if c["step"] and c["cached"]}
    # the exhaustive sweep reuses every full suite that asked everything, nothing stopped early
    assert cached == {c["step"] for c in promoted if not c.get("stopped")}
    assert len(CountingModel.asked) == (len(records) - len(cached)) * full_prompts


def _judged(metric: str, successes: int, n: int, **extra):
    """A record measuring one proportion metric, and the policy's check of it (no base)."""
    from diag.diagnostics.checks import evaluate_checkpoint
    from diag.diagnostics.policy import Policy

    from diag.records import CheckpointRecord
    from diag.stats import wilson_interval

    low, high = wilson_interval(successes, n)
    stats = {"value": successes / n, "low": low, "high": high, "successes": successes, "n": n}
    record = CheckpointRecord.from_dict(
        {"metrics": {metric: successes / n}, "stats": {metric: {**stats, "extra": extra}}}
    )
    check = next(c for c in evaluate_checkpoint(record, None, Policy()) if c.name == metric)
    return check, record


def test_settled_means_the_prompts_not_asked_cannot_overturn_the_check():
    from diag.diagnostics.policy import Policy
    from diag.diagnostics.staging import settled

    policy = Policy()
    # identity: 16 of the 16 screened prompts; the full suite asks 18. Its lower bound is 67 % if
    # the two others fail and 82 % if they pass: the 70 % limit lies between, so not settled.
    check, record = _judged("identity_recall", 16, 16, design_effect=1.0)
    assert not settled(check, record, policy, {"identity_recall": 18})
    assert settled(
        *_judged("identity_recall", 2, 16, design_effect=1.0), policy, {"identity_recall": 18}
    )
    # loop rate 0 of 64 answers: even if the other 118 looped at the interval's top (5.7 %), the
    # lower bound over 182 stays below the 5 % limit, so the pass stands; without that count the
    # interval [0 %, 5.7 %] straddles the limit
    check, record = _judged("loop_rate", 0, 64)
    assert check.passed and settled(check, record, policy, {"loop_rate": 182})
    assert not settled(check, record, policy)
    # leakage 60 of 64: the interval lies wholly above the 10 % limit
    check, record = _judged("parrot_leakage", 60, 64)
    assert not check.passed and settled(check, record, policy)
    check, record = _judged("parrot_leakage", 5, 64)  # 7.8 % [3.4 %, 17 %] straddles 10 %
    assert check.passed and not settled(check, record, policy)


def test_a_staged_sweep_reads_full_suites_already_cached_instead_of_screening(
    tiny_model_dir, tmp_path
):
    """Re-sweeping with the default --size staged where a --size full sweep (or an earlier staged
    one) measured checkpoints fully: their full numbers are read from the cache, nothing is
    probed again and no checkpoint falls back to its screen."""
    root = tmp_path / "runs"
    for name in ("learned-then-parrot", "diluted"):
        write_run(root, name, RUNS[name])
    out = tmp_path / "results"
    full = _sweep(root, tiny_model_dir, out, "full")

    def no_model(name):
        raise AssertionError("everything was cached: no model should load")

    staged = _sweep(root, tiny_model_dir, out, "staged", model=no_model)
    assert {c["stage"] for c in staged.data["checkpoints"]} == {"full"}
    assert _decision(staged.data) == _decision(full.data)


def test_a_screen_that_shows_nothing_learned_yet_asks_nothing_else(tiny_model_dir, tmp_path):
    """The screen asks the identity prompts first; a checkpoint that has learned nothing yet (every
    identity prompt missed, no more than the base) is asked none of its near-miss and general
    prompts, and is judged on identity alone. A checkpoint that learned, then unlearned, is
    measured in full: what it lost decides the onset."""
    from diag.reports.terminal import checkpoint_table
    from rich.console import Console
    from simulated_runs import Behaviour

    root = tmp_path / "runs"
    early = {10 * i: Behaviour(drift=0.01 * i) for i in range(1, 4)}  # nothing learned yet
    learned = {10 * i: Behaviour(recall=1.0, drift=0.05 * i) for i in range(4, 7)}
    lost = {70: Behaviour(forget=0.9, drift=2.5), 80: Behaviour(forget=0.9, drift=3.0)}
    write_run(root, "slow", {**early, **learned})
    write_run(root, "unlearns", {**early, **learned, **lost})
    result = _sweep(root, tiny_model_dir, tmp_path / "staged", "staged")
    staged = result.data
    full = _sweep(root, tiny_model_dir, tmp_path / "full", "full").data
    assert _decision(staged) == _decision(full)
    assert staged["recommendation"]["runs"]["unlearns"]["onset"]["collapsing_from"] == 70

    records = {(c["run"], c["step"]): c for c in staged["checkpoints"] if c["step"]}
    for run in ("slow", "unlearns"):
        for step in (10, 20):
            record = records[(run, step)]
            assert record["stage"] == "screen"
            assert record["prompts"] == {"identity": 16}  # nothing else asked
            assert {s: i["asked"] for s, i in record["stopped"].items()} == {
                "near_miss": 0,
                "general": 0,
            }
            assert record["metrics"]["parrot_leakage"] is None
    # the pick's neighbour before it learned nothing for certain: its screen is all its reason
    # needs, and the reason says so
    assert records[("slow", 40)]["stage"] == "full" and records[("slow", 30)]["stage"] == "screen"
    reasons = staged["recommendation"]["runs"]["slow"]["reasons"]
    assert any(r.startswith("earlier, step 30 (screen only): identity 0%") for r in reasons)
    # the lost ones are measured in full, whatever their screen said
    assert records[("unlearns", 70)]["stage"] == records[("unlearns", 80)]["stage"] == "full"
    # judged on what it was asked: no check fails for want of prompts it was never asked
    console = Console(record=True, width=300)
    console.print(checkpoint_table(staged))
    rows = [line for line in console.export_text().splitlines() if "│ slow" in line]
    assert "fails identity_recall (screen only)" in rows[0]
    assert "near_miss" not in rows[0] and "retention" not in rows[0]
    from diag.reports.build import write_report

    html = write_report(result).read_text(encoding="utf-8")
    said = "general: not asked (nothing learned yet: identity_recall fails for certain)"
    assert html.count(said) >= 4


def test_runs_screened_already_get_their_full_suites_beside_the_other_screens(
    tiny_model_dir, tmp_path, caplog
):
    """The demo screens its first run while the second trains; the sweep of both then finds that
    run's screens in the cache. Its full suites start at once, ahead of the second run's screens
    (on two workers they run side by side), and the result is a fresh staged sweep's."""
    root = tmp_path / "runs"
    for name in ("learned-then-parrot", "diluted"):
        write_run(root, name, RUNS[name])
    out = tmp_path / "results"
    sweep(root / "learned-then-parrot", base=tiny_model_dir, identity="en", out=out,
          progress="quiet", load_model=SimulatedModel, full_suites=False)  # fmt: skip
    screened = [c for c in sweep_record(out) if c["step"]]
    assert screened and {c["stage"] for c in screened} == {"screen"}

    order = []

    class Recorded(SimulatedModel):
        def use_adapter(self, path) -> None:
            if path is not None:
                order.append(Path(path).parent.name)
            super().use_adapter(path)

    caplog.set_level("INFO", logger="diag")
    both = sweep(root, base=tiny_model_dir, identity="en", out=out, progress="plain",
                 load_model=Recorded)  # fmt: skip
    assert "of runs already screened, beside the other screens" in caplog.text
    first_diluted = order.index("diluted")
    assert order[:first_diluted] and set(order[:first_diluted]) == {"learned-then-parrot"}
    fresh = _sweep(root, tiny_model_dir, tmp_path / "fresh", "staged")
    assert _decision(both.data) == _decision(fresh.data)

    def measured(data):
        return {(c["run"], c["step"], c["stage"]) for c in data["checkpoints"]}

    assert measured(both.data) == measured(fresh.data)
