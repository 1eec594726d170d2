"""Loading models on this machine: weights on local disk (the embedded GGUF converted once), the
device to run on, transformers kept quiet, and the non-finite-weights check.

Like :mod:`diag.backend.hf`, a module that imports torch and transformers (here lazily, except
torch for the tensor check).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import torch

from diag.errors import DiagError
from diag.models import ModelSource

log = logging.getLogger("diag")


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft 0.21 calls an API transformers 5 deprecates; the user can do nothing about it
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    # remote configs written for transformers 4 set ``rope_scaling``, which 5 deprecates
    warnings.filterwarnings(
        "ignore", message="`rope_scaling` is deprecated", category=FutureWarning
    )


def clear_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded (already dequantised) model saveable.

    transformers 5 refuses ``save_pretrained`` on a model "quantized with gguf" although the
    weights in memory are plain float tensors; dropping the quantizer state is enough, and the
    saved weights reproduce the logits exactly (tests/test_backend.py checks it).
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        with contextlib.suppress(AttributeError, TypeError):
            setattr(model, attr, False if attr == "is_quantized" else None)


def ensure_local_weights(source: ModelSource) -> Path:
    """Folder with safetensors + tokenizer for ``source``; converts the embedded GGUF once."""
    if source.gguf_file is None:
        return source.path
    cache = source.cache_dir
    assert cache is not None
    if (cache / "config.json").is_file():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    log.warning(
        "converting the embedded %s GGUF to safetensors once (about 40 s) into %s",
        source.name,
        cache,
    )
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source.path, gguf_file=source.gguf_file, dtype=torch.float32
    )
    clear_gguf_quantizer(model)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "diag-conversion.json").write_text(
        json.dumps(
            {
                "source": str(source.path / source.gguf_file),
                "seconds": round(time.perf_counter() - started, 1),
                "transformers": __import__("transformers").__version__,
            },
            indent=2,
        )
    )
    try:
        os.replace(tmp, cache)  # atomic: a half-written cache never looks complete
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> torch.dtype:
    """The dtype diag loads a model in on ``device``: bf16 on a GPU that computes it, else fp32.

    >>> default_dtype("cpu")
    torch.float32
    """
    cuda = device.partition(":")[0] == "cuda"
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def dtype_key(device: str) -> dict:
    """What the cache key says of the weights' dtype on ``device``: nothing for fp32 (keys from
    before it was recorded stay valid), ``{"dtype": "bfloat16"}`` where the model runs in bf16
    (its LoRA adapters are no longer folded into the weights: answers differ from earlier ones).

    >>> dtype_key("cpu")
    {}
    """
    if device.partition(":")[0] == "cuda" and not torch.cuda.is_available():
        return {"dtype": "bfloat16"}  # a Ray driver without a GPU: its GPU actors (bf16 on any
        # GPU since Ampere; an older one runs fp32 under this key, which only costs a re-probe)
    dtype = default_dtype(device)
    return {} if dtype == torch.float32 else {"dtype": str(dtype).removeprefix("torch.")}


def check_device(device: str | None) -> str:
    """``device`` (or the best one here) if this machine has it; a one-line DiagError if not.

    >>> check_device("cpu")
    'cpu'
    """
    if device is None:
        return default_device()
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise DiagError(
            f"--device {device!r} is not a device diag knows", fix="use cpu, cuda, cuda:N or mps"
        )
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (index and int(index) >= count):
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise DiagError(
                f"--device {device}: this machine has {have}",
                fix="use --device cpu, or leave it out",
            )
    if kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DiagError(
            f"--device {device}: MPS is not available here", fix="use --device cpu, or leave it out"
        )
    return device


def auto_batch_size(device: str, base, max_new_tokens: int, memory: int | None = None) -> int:
    """``--batch-size auto`` for ``base`` on ``device``: 64 on a CPU or MPS; on CUDA, what the
    device's memory (``memory``: its total bytes, default: read here) holds beside the weights
    (:func:`diag.backend.sizing.fit_batch_size`).

    >>> auto_batch_size("cpu", None, 48)
    64
    """
    from diag.backend.sizing import CPU_BATCH, model_footprint
    from diag.models import resolve_base

    if device.partition(":")[0] != "cuda":
        return CPU_BATCH
    source = resolve_base(base)
    folder = source.cache_dir if source.gguf_file and source.cache_dir else source.path
    weights, config = model_footprint(folder)
    dtype_bytes = default_dtype(device).itemsize  # what HFBackend.load will load
    return fitting_batch_size(
        device, weights * dtype_bytes // 2, config, max_new_tokens, memory, dtype_bytes
    )


def fitting_batch_size(
    device: str,
    weight_bytes: int,
    config: dict,
    max_new_tokens: int,
    memory: int | None = None,
    dtype_bytes: int = 2,
) -> int:
    """How many answers of up to ``max_new_tokens`` have a KV cache that fits the memory of
    ``device`` beside ``weight_bytes`` of weights: a CUDA device's own memory, else the machine's
    RAM (:func:`diag.backend.sizing.fit_batch_size`)."""
    from diag.backend.sizing import fit_batch_size

    if memory is None:
        if device.partition(":")[0] == "cuda":
            index = device.partition(":")[2]
            memory = torch.cuda.get_device_properties(int(index or 0)).total_memory
        else:
            memory = _physical_memory()
    return fit_batch_size(memory, weight_bytes, config, max_new_tokens, dtype_bytes)


def _physical_memory() -> int:
    """This machine's RAM in bytes (8 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return 8 * 2**30


def non_finite(named_tensors) -> str | None:
    """ "12 NaN values in lora_B of layers.3.self_attn.q_proj" for the first bad tensor, or None."""
    total, first = 0, None
    for name, tensor in named_tensors:
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        count = int((~finite).sum())
        total += count
        if first is None:
            kind = "NaN" if nan == count else ("inf" if nan == 0 else "NaN/inf")
            first = (kind, count, _short_name(name))
    if first is None:
        return None
    kind, count, where = first
    more = f" ({total} non-finite values in all)" if total > count else ""
    return f"{count} {kind} value{'s' if count > 1 else ''} in {where}{more}"


def _short_name(name: str) -> str:
    """``base_model.model.model.layers.3.self_attn.q_proj.lora_B.adapter_1.weight`` ->
    ``lora_B of layers.3.self_attn.q_proj``."""
    parts = [p for p in name.split(".") if p not in ("base_model", "model", "weight", "default")]
    parts = [p for p in parts if not p.startswith("adapter_")]
    lora = next((p for p in parts if p.startswith("lora_")), None)
    if lora:
        parts.remove(lora)
        return f"{lora} of {'.'.join(parts)}"
    return ".".join(parts)


def read_weight_files(files) -> dict[str, torch.Tensor]:
    """Every tensor in a model's weight files (safetensors, or ``.bin`` read weights-only);
    index files among them are skipped."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        name = Path(f).name
        if name.endswith(".index.json"):
            continue
        if name.endswith(".safetensors"):
            state.update(load_file(str(f)))
        else:
            state.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return state


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)


def mismatch_error(key: str, base_name: str, exc: Exception, named_base: str | None) -> DiagError:
    """The one line for weights that do not fit the base, from torch's load_state_dict error:
    the first tensor that differs, its shape in the checkpoint and in the base, and the fix that
    fits -- another base (a layer's width differs) or a broken adapter (only the LoRA rank
    differs: its weights and its adapter_config.json come from different saves).

    named_base: the base the adapter's own config names (None if it names none).
    """
    text = str(exc)
    found = _SIZE_MISMATCH.findall(text)
    if not found:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next((line for line in lines if not line.endswith(":")), type(exc).__name__)
        return DiagError(
            f"adapter '{key}' does not fit base model '{base_name}': {detail[:300]}",
            fix="pass --base with the model the adapter was trained on",
        )
    name, theirs, ours = found[0]
    theirs, ours = [int(n) for n in theirs.split(",")], [int(n) for n in ours.split(",")]
    where = f"{_short_name(name)} is {theirs} in the adapter, {ours} in the base"
    more = f" ({len(found)} tensors differ)" if len(found) > 1 else ""
    rank_axis = 0 if ".lora_A" in name else 1 if ".lora_B" in name else None
    only_rank = rank_axis is not None and [
        a == b for i, (a, b) in enumerate(zip(theirs, ours)) if i != rank_axis
    ] == [True] * (len(ours) - 1)
    if only_rank:
        return DiagError(
            f"adapter '{key}' is broken: {_short_name(name)} has rank {theirs[rank_axis]} "
            f"({theirs}) but its adapter_config.json says r={ours[rank_axis]}{more}; the layer "
            "widths fit the base",
            fix="copy the adapter again (adapter_config.json and the weights of the same save)",
        )
    hint = (
        f" (its adapter_config.json names '{named_base}')"
        if named_base and str(named_base) != str(base_name)
        else ""
    )
    return DiagError(
        f"adapter '{key}' does not fit base model '{base_name}': {where}{more}, so it was "
        "trained on another base",
        fix=f"pass --base with the model it was trained on{hint}",
    )
