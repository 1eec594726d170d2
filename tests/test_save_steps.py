"""`save_steps`: checkpoints at listed steps (sparse early, dense where the window is expected),
as a real training run on the tiny model writes them; and the advice that re-trains a window."""

from __future__ import annotations

import json

from diag.train.config import load_config
from diag.train.recipe import run_training


def test_a_run_saves_at_the_listed_steps_and_the_last(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = load_config(
        None,
        [
            f"base={tiny_model_dir}",
            "identity=en",
            f"output_dir={out}",
            "max_steps=5",
            "save_every=1",  # listed steps win: no save at 2 or 4
            "save_steps=[1, 3]",
            "data.identity_samples=16",
            "data.max_length=64",
            "mix.rehearsal=false",
            "mix.general_ratio=0",
            "device=cpu",
        ],
    )
    run_training(config)
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved == [1, 3, 5]  # the final step is always saved
    manifest = json.loads((out / "diag-run.json").read_text())
    assert manifest["config"]["save_steps"] == [1, 3]

    from diag.diagnostics.discover import discover

    [run] = discover(out.parent, settle_seconds=0).runs.values()
    assert run.training()["save_steps"] == [1, 3]
