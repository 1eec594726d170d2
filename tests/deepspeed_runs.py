"""Checkpoints written by DeepSpeed's own engine on CPU (gloo), ZeRO stage 1, 2 and 3, LoRA and full.

Run as a script (a subprocess, so DeepSpeed's process group and ZeRO-3 hooks never touch the test
process)::

    python tests/deepspeed_runs.py MODEL_DIR OUT

It writes, for each stage S and kind K (``lora`` | ``full``):

- ``OUT/native-zS-K/``: the plain engine layout, ``global_step1/`` and ``global_step2/`` plus
  ``latest`` and ``zero_to_fp32.py``, as ``engine.save_checkpoint(OUT, tag=None)`` writes them;
- ``OUT/xtuner-zS-K/``: XTuner's layout, ``iter_1.pth/`` and ``iter_2.pth/`` folders in the work dir.
  mmengine's ``DeepSpeedStrategy.save_checkpoint`` calls ``engine.save_checkpoint(work_dir,
  tag='iter_N.pth')`` on a ``SupervisedFinetune`` whose LLM sits under ``.llm``, so parameter names
  start with ``llm.``; the work dir also holds XTuner's saved config (LoRA alpha, template).

and ``OUT/weights.pt``: the live weights after each step, ``{"native-z3-lora/2": {name: tensor}}``
(trainable LoRA tensors, or every parameter for full runs), to check what is read back.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

XTUNER_CONFIG = (
    "prompt_template = dict(SYSTEM='<|im_start|>system\\n{system}<|im_end|>\\n', "
    "INSTRUCTION='<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n')\n"
    "SYSTEM = ''\n"
    "model = dict(type=SupervisedFinetune, lora=dict(type=LoraConfig, r=4, lora_alpha=8))\n"
)
STAGES = (1, 2, 3)
KINDS = ("lora", "full")


def build(script: str, model_dir: Path, out: Path, **env: str) -> Path:
    """Run a builder script of this folder (``python tests/SCRIPT MODEL_DIR OUT``) in a
    subprocess, one thread per process; ``env`` is added to the environment. Returns ``out``."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / script), str(model_dir), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _environment() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # its own port, not an inherited MASTER_PORT: the parent test process may hold that one
    # (tests/test_sweep.py runs a DeepSpeed engine in-process on 29531)
    os.environ["MASTER_PORT"] = os.environ.get("DIAG_TEST_DS_PORT", "29533")
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        os.environ.setdefault(key, value)


def seeded_model(model_dir: Path, kind: str, xtuner: bool):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        model = get_peft_model(model, config)
    if xtuner:

        class SupervisedFinetune(torch.nn.Module):  # XTuner's wrapper: the LLM under ``.llm``
            def __init__(self, llm):
                super().__init__()
                self.llm = llm

            def forward(self, **kwargs):
                return self.llm(**kwargs)

        model = SupervisedFinetune(model)
    return model


def _live_weights(engine, kind: str) -> dict:
    """The engine's current weights (gathered under ZeRO-3), keyed like the model's state_dict."""
    import deepspeed

    out = {}
    for name, param in engine.module.named_parameters():
        if kind == "lora" and "lora_" not in name:
            continue
        with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
            out[name] = param.detach().clone().float()
    return out


def write_run(model_dir: Path, out: Path, stage: int, kind: str, xtuner: bool, live: dict) -> None:
    import deepspeed
    import torch

    model = seeded_model(model_dir, kind, xtuner)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config,
    )
    name = f"{'xtuner' if xtuner else 'native'}-z{stage}-{kind}"
    run_dir = out / name
    run_dir.mkdir(parents=True)
    if xtuner:
        (run_dir / "lora_copy.py").write_text(XTUNER_CONFIG)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    for step in (1, 2):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        tag = f"iter_{step}.pth" if xtuner else None  # the engine names it global_step{step}
        engine.save_checkpoint(str(run_dir), tag=tag)
        live[f"{name}/{step}"] = _live_weights(engine, kind)
    if xtuner:  # mmengine's CheckpointHook writes the path of the newest checkpoint here
        (run_dir / "last_checkpoint").write_text(str(run_dir / "iter_2.pth"))


def main(model_dir: str, out: str) -> None:
    _environment()
    import deepspeed.ops
    import torch

    # One process needs no shared-memory all-reduce; skipping it saves a C++ build on a new machine.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    live: dict = {}
    for stage in STAGES:
        for kind in KINDS:
            for xtuner in (False, True):
                write_run(Path(model_dir), out_path, stage, kind, xtuner, live)
    torch.save(live, out_path / "weights.pt")
    (out_path / "done.json").write_text(json.dumps(sorted(live)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
