"""The nearest miss on swept runs (issue 26): real discovery, probing, grading, policy and staging;
only the model is scripted (tests/simulated_runs.py). Each case is its own sweep, staged and full,
and both must name the same checkpoint with the same headline."""

from __future__ import annotations

import pytest
from diag.diagnostics.sweeper import sweep
from simulated_runs import NEAREST_MISS_CASES, SimulatedModel, write_run

# case: (run, step) a reader would name (None: none), and what the headline must say
EXPECTED = {
    "damaged-vs-unlearned": (
        ("nova", 50),
        "closest is nova step 50: it learned the identity (identity 100% [82%–100%]) but lacks "
        "retention 0.70 of base (limit 0.90) and leakage 13% (limit 10%); the identity was "
        "learned between steps 40 and 50",
    ),
    "partly-learned": (
        ("slow", 60),
        "closest is slow step 60: healthy, but the identity is only partly learned",
    ),
    "nothing-learned": (None, "no checkpoint is eligible: nothing was learned by step 80"),
    "all-collapsed": (
        None,
        "no checkpoint is eligible: the identity was learned between steps 40 and 60",
    ),
    "learned-leaking": (("leaky", 40), "closest is leaky step 40: it learned the identity"),
    "learned-failed-to-load": (
        None,
        "nothing was learned by step 40 ('Nova' 0%, 'Jianfeng' 0%); steps 60 and 80 could not "
        "be probed (not compared); first: make steps 60 and 80 loadable",
    ),
    "two-runs": (("slow", 60), "closest is slow step 60"),
    "saved-every-20": (("nova", 40), "closest is nova step 40: healthy, but the identity is only"),
}


@pytest.fixture(scope="module")
def case_sweeps(tiny_model_dir, tmp_path_factory) -> dict[str, dict[str, dict]]:
    """{case: {"full": results, "staged": results}}."""
    out = {}
    for case, runs in NEAREST_MISS_CASES.items():
        root = tmp_path_factory.mktemp(case) / "runs"
        for name, behaviours in runs.items():
            write_run(root, name, behaviours)
        out[case] = {
            size: sweep(
                root,
                base=tiny_model_dir,
                identity="en",
                out=root.parent / size,
                size=size,
                progress="quiet",
                load_model=lambda name: SimulatedModel(name),
            ).data
            for size in ("full", "staged")
        }
    return out


def _named(results: dict):
    miss = results["recommendation"]["nearest_miss"]
    return None if miss is None else (miss["run"], miss["step"])


@pytest.mark.parametrize("case", list(EXPECTED))
def test_the_nearest_miss_is_the_checkpoint_a_reader_would_name(case_sweeps, case):
    full, staged = case_sweeps[case]["full"], case_sweeps[case]["staged"]
    named, says = EXPECTED[case]
    for results in (full, staged):
        assert results["recommendation"]["step"] is None
        assert _named(results) == named
        assert says in results["recommendation"]["verdict"]
    # the staged sweep decides as the exhaustive one, word for word, on fully measured numbers
    assert staged["recommendation"]["verdict"] == full["recommendation"]["verdict"]
    assert staged["recommendation"]["nearest_miss"] == full["recommendation"]["nearest_miss"]
    if named is not None:
        record = next(c for c in staged["checkpoints"] if (c["run"], c["step"]) == named)
        assert record["stage"] == "full" and not record.get("stopped")


def test_a_staged_sweep_asks_a_nearest_miss_that_stopped_early_everything(case_sweeps):
    # 40 leaks into 30% of other answers: its failed checks settle early and its general prompts
    # stop; as the nearest miss it is asked all of them, so its numbers are the exhaustive ones
    full, staged = case_sweeps["learned-leaking"]["full"], case_sweeps["learned-leaking"]["staged"]
    mine = [
        next(c for c in results["checkpoints"] if c["step"] == 40) for results in (full, staged)
    ]
    assert mine[1]["metrics"] == mine[0]["metrics"]
    assert mine[1]["prompts"] == mine[0]["prompts"]


def test_more_saves_between_keep_the_choice_or_find_a_nearer_one(case_sweeps):
    # the run saved every 20 steps names 40; saved every 10, the new save at 50 is nearer,
    # and 40 keeps its own distance (it is scored on its own numbers only)
    sparse = case_sweeps["saved-every-20"]["full"]["recommendation"]
    dense = case_sweeps["damaged-vs-unlearned"]["full"]["recommendation"]
    assert (sparse["nearest_miss"]["step"], dense["nearest_miss"]["step"]) == (40, 50)
    assert dense["nearest_miss"]["distance"] < sparse["nearest_miss"]["distance"]
    ranked = next(r for r in dense["reasons"] if r.startswith("distance from eligible"))
    assert f"step 40 {sparse['nearest_miss']['distance']:.2f} (identity" in ranked
