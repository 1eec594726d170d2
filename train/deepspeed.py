"""DeepSpeed presets: ``deepspeed: zero1|zero2|zero3|zero2_offload|zero3_offload``.

Each preset becomes a config dict for transformers' Trainer. Batch sizes, learning rate and
precision are ``"auto"``, so the Trainer fills them from the training config (one source of
truth). On a machine without CUDA the run says so and trains without DeepSpeed.
"""

from __future__ import annotations

import logging

from diag.errors import DiagError

log = logging.getLogger("diag")

PRESETS = ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")


def deepspeed_config(preset: str) -> dict:
    """The DeepSpeed config dict for ``preset`` (``"auto"`` where the Trainer fills values in)."""
    if preset not in PRESETS:
        raise DiagError(f"unknown deepspeed preset '{preset}'", fix=f"use one of {list(PRESETS)}")
    stage = int(preset[4])
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage >= 2:
        zero.update(reduce_scatter=True, reduce_bucket_size="auto", allgather_bucket_size=5e8)
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            # save a usable 16-bit model (and peft adapters) instead of only sharded states
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if preset.endswith("_offload"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the Trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


def resolve_auto(config: dict, *, micro_batch: int, grad_accum: int, world_size: int = 1) -> dict:
    """A copy with ``"auto"`` replaced by concrete values, as the Trainer would (for validation)."""
    import copy

    out = copy.deepcopy(config)
    out["train_micro_batch_size_per_gpu"] = micro_batch
    out["gradient_accumulation_steps"] = grad_accum
    out["train_batch_size"] = micro_batch * grad_accum * world_size
    out["gradient_clipping"] = 1.0
    out["bf16"] = {"enabled": False}
    out["fp16"] = {"enabled": False}
    zero = out["zero_optimization"]
    for key in (
        "reduce_bucket_size",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
    ):
        if zero.get(key) == "auto":
            zero[key] = 5e8 if key != "stage3_param_persistence_threshold" else 1e4
    return out


def deepspeed_usable() -> tuple[bool, str]:
    """Whether this process can train under DeepSpeed, and why not."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return False, "deepspeed is not installed (pip install 'diag[deepspeed]')"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device: DeepSpeed ZeRO needs GPUs"
    return True, ""


def deepspeed_settings(config) -> dict | None:
    """The DeepSpeed config for ``config`` (a TrainConfig), validated with DeepSpeed's own
    parser when it is installed, and whether it is used or why the run falls back."""
    if config.deepspeed is None:
        return None
    import importlib.util

    ds = deepspeed_config(config.deepspeed)
    validated = False
    if importlib.util.find_spec("deepspeed") is not None:
        from deepspeed.runtime.config import DeepSpeedConfig

        try:
            DeepSpeedConfig(
                resolve_auto(ds, micro_batch=config.batch_size, grad_accum=config.grad_accum)
            )
        except Exception as exc:  # pydantic's errors name the bad key
            raise DiagError(
                f"deepspeed preset '{config.deepspeed}' does not validate: {str(exc).splitlines()[0]}"
            ) from exc
        validated = True
    usable, why = deepspeed_usable()
    if not usable:
        log.warning(
            "deepspeed=%s: %s -- falling back to plain training (config %s)",
            config.deepspeed,
            why,
            "validated" if validated else "not validated",
        )
    return {
        "preset": config.deepspeed,
        "config": ds,
        "used": usable,
        "validated": validated,
        "reason": why or None,
    }
