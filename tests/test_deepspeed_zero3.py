"""ZeRO-3 checkpoints of a tied-embedding model (full and LoRA, 1 and 2 ranks) are read by
DeepSpeed's own consolidation and answer exactly like the engine's ``save_16bit_model`` weights.

The engine runs in a subprocess (tests/deepspeed_zero3_runs.py). DeepSpeed 0.19.8 writes each
``param_shapes`` value as a ``torch.Size``; checkpoints in users' hands also hold them as plain
tuples (``('model.embed_tokens.weight', (1024, 64))``, issue 25), on which DeepSpeed's own ZeRO-3
merge fails ("'tuple' object has no attribute 'numel'"). The ``tuples`` copies below are the
engine's files with only that container type changed, so both forms are checked.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from deepspeed_runs import build  # noqa: E402
from deepspeed_zero3_runs import KINDS, RANKS, STEPS, run_name  # noqa: E402
from tiny import identity_sweep, settle  # noqa: E402

RUNS = [run_name(kind, ranks) for kind in KINDS for ranks in RANKS]


@pytest.fixture(scope="module")
def zero3_root(tiny_model_dir, tmp_path_factory) -> Path:
    return build("deepspeed_zero3_runs.py", tiny_model_dir, tmp_path_factory.mktemp("zero3"))


def _with_tuple_shapes(run: Path, dest: Path) -> Path:
    """A copy of ``run`` whose model-states files hold ``param_shapes`` (and
    ``frozen_param_shapes``) values as plain tuples; everything else as the engine wrote it."""
    import torch

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("live.pt"))
    for states in dest.glob("global_step*/*_model_states.pt"):
        data = torch.load(states, weights_only=False)  # written by this test's own engine run
        data["param_shapes"] = [{k: tuple(v) for k, v in g.items()} for g in data["param_shapes"]]
        if data.get("frozen_param_shapes"):
            frozen = data["frozen_param_shapes"]
            data["frozen_param_shapes"] = {k: tuple(v) for k, v in frozen.items()}
        torch.save(data, states)
    return dest


@pytest.fixture(scope="module")
def tuple_runs(zero3_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zero3-tuples")
    for run in RUNS:
        _with_tuple_shapes(zero3_root / run, root / run)
    settle(root)
    return root


def test_tuple_shapes_are_what_deepspeed_alone_cannot_merge(tuple_runs):
    """The copies really hold tuples, and DeepSpeed's own function fails on them unaided."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = tuple_runs / run_name("full", 2)
    data = torch.load(
        run / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False
    )
    shape = data["param_shapes"][0]["model.embed_tokens.weight"]
    assert type(shape) is tuple and data["shared_params"] == {
        "lm_head.weight": "model.embed_tokens.weight"
    }
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'numel'"):
        get_fp32_state_dict_from_zero_checkpoint(str(run), tag="global_step1")


@pytest.mark.parametrize("run", RUNS)
def test_zero3_with_tuple_shapes_reads_as_the_engine_saved_it(zero3_root, tuple_runs, run):
    """Every step of every run: the consolidated weights equal, bit for bit, what the engine's
    save_16bit_model wrote and what the live engine held at that step."""
    import torch
    from diag.diagnostics.discover import discover

    from diag.backend.checkpoints import read_state_dict

    live = torch.load(zero3_root / run / "live.pt")
    found = discover(tuple_runs / run)
    assert [(c.step, c.format) for c in found.checkpoints] == [(s, "deepspeed-zero") for s in STEPS]
    for ckpt in found.checkpoints:
        state = read_state_dict(ckpt.path, ckpt.format, ckpt.files)
        saved = torch.load(zero3_root / "16bit" / run / ckpt.path.name / "pytorch_model.bin")
        assert state and set(state) <= set(saved)
        for name, tensor in state.items():
            assert torch.equal(tensor, saved[name].float()), name
        assert live[ckpt.step] and set(live[ckpt.step]) <= set(state)
        for name, tensor in live[ckpt.step].items():
            assert torch.equal(state[name], tensor), name
        if run.startswith("z3-full"):  # the tied head: the embedding, as DeepSpeed shares it
            assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])


def _as_model_folder(saved: Path, model_dir: Path, dest: Path) -> Path:
    """The engine's save_16bit_model output as a model folder a user would sweep."""
    dest.mkdir(parents=True)
    shutil.copy(saved / "pytorch_model.bin", dest)
    shutil.copy(model_dir / "config.json", dest)
    return dest


def _as_adapter_folder(saved: Path, dest: Path) -> Path:
    """The LoRA tensors of the engine's save_16bit_model output as a peft adapter folder."""
    import json

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    state = torch.load(saved / "pytorch_model.bin")
    lora = {k.replace(".default", ""): v.contiguous() for k, v in state.items() if "lora_" in k}
    dest.mkdir(parents=True)
    save_file(lora, dest / "adapter_model.safetensors")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]).to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def test_zero3_checkpoints_answer_like_the_16bit_weights(
    zero3_root, tuple_runs, tiny_model_dir, tmp_path
):
    """One sweep over the tuple-shaped ZeRO-3 checkpoints and the same weights saved with
    save_16bit_model: no error row, and each pair gives the same answers and likelihoods."""
    root = tmp_path / "runs"
    for run in RUNS:
        shutil.copytree(tuple_runs / run, root / run)
        for step in STEPS:
            saved = zero3_root / "16bit" / run / f"global_step{step}"
            copy = root / f"16bit-{run}" / f"checkpoint-{step}"
            if run.startswith("z3-full"):
                _as_model_folder(saved, tiny_model_dir, copy)
            else:
                _as_adapter_folder(saved, copy)
    settle(root)
    result = identity_sweep(root, tiny_model_dir, tmp_path / "out", lora_alpha=8)
    rows = {(c["run"], c["step"]): c for c in result.checkpoints if c["step"] > 0}
    assert len(rows) == 2 * len(RUNS) * len(STEPS)
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]

    def answers(run, step):
        got = [s for s in result.samples() if (s["run"], s["step"]) == (run, step)]
        return sorted((s["item_id"], s["answer"], s["answer_logprob"]) for s in got)

    for run in RUNS:
        for step in STEPS:
            assert answers(run, step) == answers(f"16bit-{run}", step), (run, step)


def test_consolidation_errors_say_what_is_known(tuple_runs, tmp_path):
    """A rank's file cut short, a rank's file missing, or complete files DeepSpeed still cannot
    merge: each error counts the files it found and gives the fix that fits, no guess."""
    import torch

    from diag.backend.checkpoints import read_state_dict
    from diag.errors import DiagError

    def broken(name: str, damage) -> Path:
        step = shutil.copytree(tuple_runs / run_name("full", 2) / "global_step1", tmp_path / name)
        damage(step)
        return step

    def cut(step: Path) -> None:
        optim = step / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        optim.write_bytes(optim.read_bytes()[:1000])

    def drop(step: Path) -> None:
        (step / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()

    def wrong_shape(step: Path) -> None:  # complete files that disagree with each other
        for states in step.glob("*_model_states.pt"):
            data = torch.load(states, weights_only=False)
            data["param_shapes"][0]["model.norm.weight"] = (999,)
            torch.save(data, states)

    expected = {
        "cut": ("2 model-state and 2 optimizer-state files", "'zero_pp_rank_1_mp_rank_00_optim"),
        "drop": ("2 model-state and 1 optimizer-state files", "copy the missing ones"),
        "wrong_shape": ("2 model-state and 2 optimizer-state files", "the files are complete"),
    }
    for name, damage in (("cut", cut), ("drop", drop), ("wrong_shape", wrong_shape)):
        step = broken(name, damage)
        with pytest.raises(DiagError) as info:
            read_state_dict(step, "deepspeed-zero", tuple(step.iterdir()))
        counted, fix = expected[name]
        assert counted in info.value.problem and fix in info.value.fix, (name, str(info.value))
        assert "\n" not in str(info.value)
        if name != "cut":
            assert "copy it again" not in info.value.fix
