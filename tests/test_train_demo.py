"""`diag demo` end to end on the tiny model: two runs, one sweep, a recommendation, re-runnable."""

from __future__ import annotations

import json

from click.testing import CliRunner
from diag.train.beside import lanes

from diag.cli import cli


def test_demo_trains_both_runs_sweeps_and_resumes(tiny_model_dir, general_file, tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo", "--out", str(out),
        f"base={tiny_model_dir}", "max_steps=4", "save_every=2", "data.identity_samples=16",
        "data.max_length=64", "mix.rehearsal=false", f"mix.sources=[{general_file}]", "device=cpu",
    ]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    for run, ratio in (("undiluted", 0.0), ("diluted", 0.5)):
        manifest = json.loads((out / "runs" / run / "diag-run.json").read_text())
        assert manifest["status"] == "complete" and manifest["data"]["general_ratio"] == ratio
        assert sorted(p.name for p in (out / "runs" / run).glob("checkpoint-*")) == [
            "checkpoint-2",
            "checkpoint-4",
        ]
    results = json.loads((out / "results" / "results.json").read_text())
    probed = {(c["run"], c["step"]) for c in results["checkpoints"] if c["step"]}
    assert probed == {(r, s) for r in ("undiluted", "diluted") for s in (2, 4)}
    assert all(c["status"] == "ok" for c in results["checkpoints"])
    if lanes() is not None:  # 2 cores or more: the base and the undiluted run were screened
        # beside the diluted run's training, and the sweep read them from the cache
        side = (out / "logs" / "beside.log").read_text()
        assert "undiluted step 2" in side and "undiluted step 4" in side
        # once from the first checkpoint on, while that run still trained; then the rest
        first, rest = side.split("taught: undiluted")[1:]
        assert "base" in first and "cached" not in first and "base" in rest
        rows = {(c["run"], c["step"]): c for c in results["checkpoints"]}
        assert rows[("base", 0)]["cached"]
        assert not rows[("diluted", 2)]["cached"] and not rows[("diluted", 4)]["cached"]
    assert "recommended:" in res.output and "parrot onset" in res.output
    assert "next: diag gate" in res.output
    timing = json.loads((out / "demo-timing.json").read_text())
    assert timing["undiluted"]["steps"] == 4 and timing["sweep_seconds"] > 0

    again = runner.invoke(cli, args)  # finished runs and probed checkpoints are reused
    assert again.exit_code == 0, again.output
    timing = json.loads((out / "demo-timing.json").read_text())
    assert timing["undiluted"]["reused"] and timing["diluted"]["reused"]


def test_demo_rejects_bad_overrides_before_loading_anything(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d"), "lr=7", "max_steps=0"])
    assert res.exit_code == 2
    assert "'lr'" in res.output and "'max_steps'" in res.output
    assert not (tmp_path / "d").exists()
