"""ZeRO-3 checkpoints of a model with tied embeddings, written by DeepSpeed's own engine on CPU
(gloo) with 1 and 2 ranks, beside the same weights saved by the engine's ``save_16bit_model``.

Run as a script (a subprocess: DeepSpeed's process group and ZeRO-3 hooks never touch the test
process)::

    python tests/deepspeed_zero3_runs.py MODEL_DIR OUT

For ``kind`` in (full, lora) and ``ranks`` in (1, 2) it writes ``OUT/z3-<kind>-<ranks>rank/``:

- ``global_step1/``, ``global_step2/`` as a training script writes them:
  ``engine.save_checkpoint(run_dir, tag=f"global_step{N}", client_state={"step": N})``;
- ``OUT/16bit/<run>/global_stepN/pytorch_model.bin``: ``engine.save_16bit_model`` at the same moment (the
  weights gathered from every rank, with ``stage3_gather_16bit_weights_on_model_save``);
- ``live.pt``: the weights read from the live engine at each step (rank 0), ``{N: {name: tensor}}``.

The model is the test suite's tiny Llama (``tie_word_embeddings=True``: ``lm_head.weight`` is
``model.embed_tokens.weight``), trained in full or with a peft LoRA on q/v (r=4, alpha=8).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KINDS = ("full", "lora")
RANKS = (1, 2)
STEPS = (1, 2)


def run_name(kind: str, ranks: int) -> str:
    return f"z3-{kind}-{ranks}rank"


def _train(rank: int, ranks: int, model_dir: str, out: str, kind: str, port: int) -> None:
    os.environ.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(ranks),
        LOCAL_RANK=str(rank),
    )
    import deepspeed
    import deepspeed.ops
    import torch
    from deepspeed_runs import seeded_model  # the same seeded model, full or LoRA (r=4, alpha=8)

    # gloo on CPU needs no shared-memory all-reduce; skipping it saves a C++ build
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    model = seeded_model(Path(model_dir), kind, xtuner=False)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    }
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config,
    )
    run_dir = Path(out) / run_name(kind, ranks)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]) + rank  # each rank its own batch
    live = {}
    for step in STEPS:
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        tag = f"global_step{step}"
        engine.save_checkpoint(str(run_dir), tag=tag, client_state={"step": step})
        engine.save_16bit_model(str(Path(out) / "16bit" / run_dir.name / tag))
        live[step] = _live_weights(engine, kind)  # collective: every rank gathers
    if rank == 0:
        torch.save(live, run_dir / "live.pt")
    # every rank leaves together and stops gloo's threads before the interpreter exits: a rank
    # left to exit with them running can abort ("terminate called without an active exception")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _live_weights(engine, kind: str) -> dict:
    """The engine's current trainable weights, gathered from every rank (ZeRO-3)."""
    import deepspeed

    out = {}
    for name, param in engine.module.named_parameters():
        if kind == "lora" and "lora_" not in name:
            continue
        with deepspeed.zero.GatheredParameters([param]):
            out[name] = param.detach().clone().float()
    return out


def _free_port() -> int:
    """A port no one listens on now: other test runs on this machine use fixed ones."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(model_dir: str, out: str) -> None:
    import torch.multiprocessing as mp

    for kind in KINDS:
        for ranks in RANKS:  # a fresh rendezvous per run: the last one's port may linger
            args = (ranks, model_dir, out, kind, _free_port())
            mp.spawn(_train, args=args, nprocs=ranks, join=True)
    (Path(out) / "done").write_text("ok")


if __name__ == "__main__":
    main(*sys.argv[1:3])
