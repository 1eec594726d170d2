"""DeepSpeed checkpoints written by DeepSpeed's own engine (CPU, gloo): ZeRO-1/2/3, LoRA and full,
in the native ``global_stepN/`` layout and in XTuner's ``iter_N.pth/`` folders.

The engine runs in a subprocess (tests/deepspeed_runs.py), which also records the live weights
after every step, so each test can check that what diag reads back is exactly what was trained.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from deepspeed_runs import KINDS, STAGES, build  # noqa: E402
from tiny import identity_sweep, settle  # noqa: E402

RUNS = [
    f"{layout}-z{stage}-{kind}"
    for layout in ("native", "xtuner")
    for stage in STAGES
    for kind in KINDS
]


@pytest.fixture(scope="module")
def ds_root(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepspeed")
    build("deepspeed_runs.py", tiny_model_dir, out, DIAG_TEST_DS_PORT="29541")
    settle(out)
    return out


@pytest.fixture(scope="module")
def live_weights(ds_root):
    import torch

    return torch.load(ds_root / "weights.pt")


@pytest.mark.parametrize("run", RUNS)
def test_every_stage_found_and_read_exactly(ds_root, live_weights, run):
    """Both saves of every run are found in step order and read back bit for bit."""
    import torch
    from diag.diagnostics.discover import discover

    from diag.backend.checkpoints import read_state_dict

    found = discover(ds_root / run)
    fmt = "xtuner-deepspeed" if run.startswith("xtuner") else "deepspeed-zero"
    assert [(c.step, c.format) for c in found.checkpoints] == [(1, fmt), (2, fmt)]
    assert found.skipped == []
    for ckpt in found.checkpoints:
        state = read_state_dict(ckpt.path, ckpt.format, ckpt.files)
        live = live_weights[f"{run}/{ckpt.step}"]
        assert live and set(live) <= set(state)
        for name, tensor in live.items():
            assert torch.equal(state[name].float(), tensor), name


def test_zero3_fingerprint_covers_the_optimizer_partitions(ds_root):
    """Under ZeRO-3 the weights are in *_optim_states.pt, so those files are the fingerprint."""
    from diag.diagnostics.discover import discover

    for run in ("native-z3-lora", "xtuner-z3-full"):
        names = {f.name for f in discover(ds_root / run).checkpoints[0].files}
        assert any(n.endswith("_optim_states.pt") for n in names), names
        assert any(n.startswith("zero_pp_rank_0") and "model_states" in n for n in names)


def test_latest_is_not_needed_and_broken_folders_are_named(ds_root, tmp_path):
    from diag.diagnostics.discover import discover

    run = tmp_path / "run"
    shutil.copytree(ds_root / "native-z3-lora", run)
    (run / "latest").unlink()
    (run / "global_step3").mkdir()  # an empty step folder
    (run / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    settle(run)
    found = discover(tmp_path)
    assert [(c.run, c.step) for c in found.checkpoints] == [("run", 1)]
    reasons = {Path(s.path).name: s for s in found.skipped}
    assert "optim_states" in reasons["global_step2"].reason and reasons["global_step2"].fix
    assert "no *_model_states.pt" in reasons["global_step3"].reason


def test_nothing_found_says_what_was_seen(tmp_path):
    from diag.diagnostics.sweeper import sweep

    from diag.errors import DiagError

    for step in (10, 20, 30):
        (tmp_path / "run" / f"global_step{step}").mkdir(parents=True)
    with pytest.raises(DiagError) as info:
        sweep(tmp_path, identity="en", progress="quiet")
    assert "3 folders: named like a DeepSpeed checkpoint" in str(info.value)


def test_hf_trainer_with_deepspeed_is_one_row(ds_root, tiny_adapters, tmp_path):
    """HF Trainer + DeepSpeed saves the adapter and the engine state (global_stepN/, latest) in
    the same checkpoint-N (transformers Trainer._save_checkpoint -> save_model, then
    model_wrapped.save_checkpoint(output_dir)): one checkpoint, probed as the adapter."""
    from diag.diagnostics.discover import discover

    ckpt = tmp_path / "out" / "checkpoint-5"
    shutil.copytree(tiny_adapters[0], ckpt)
    shutil.copytree(ds_root / "native-z2-lora" / "global_step1", ckpt / "global_step5")
    (ckpt / "latest").write_text("global_step5")
    settle(tmp_path)
    found = discover(tmp_path)
    assert [(c.run, c.step, c.format) for c in found.checkpoints] == [("out", 5, "peft-adapter")]
    assert found.skipped == []


@pytest.fixture(scope="module")
def ds_swept(ds_root, tiny_model_dir, tmp_path_factory):
    return identity_sweep(
        ds_root, tiny_model_dir, tmp_path_factory.mktemp("ds-results"), lora_alpha=8
    )


def _logprobs(result, run: str, step: int) -> list[float]:
    rows = [s for s in result.samples() if (s["run"], s["step"]) == (run, step)]
    return [s["answer_logprob"] for s in sorted(rows, key=lambda s: s["item_id"])]


def test_sweep_probes_every_stage_and_the_stages_agree(ds_swept):
    """24 checkpoints probed without error; the same training under ZeRO-1, 2 and 3 gives the
    same answers (the stages only partition the work), and training changed the model."""
    rows = {(c["run"], c["step"]): c for c in ds_swept.checkpoints if c["step"] > 0}
    assert sorted(rows) == sorted((run, step) for run in RUNS for step in (1, 2))
    assert all(r["status"] == "ok" for r in rows.values()), [
        r["error"] for r in rows.values() if r["error"]
    ]
    for layout in ("native", "xtuner"):
        for kind in KINDS:
            z1, z2, z3 = (_logprobs(ds_swept, f"{layout}-z{s}-{kind}", 2) for s in STAGES)
            assert z1 == pytest.approx(z2, abs=1e-3) and z1 == pytest.approx(z3, abs=1e-3)
    base = [r for r in ds_swept.checkpoints if r["step"] == 0 and r["run"] == "base"][0]
    assert _logprobs(ds_swept, "native-z3-full", 2) != pytest.approx(
        _logprobs(ds_swept, base["run"], 0), abs=1e-3
    )
