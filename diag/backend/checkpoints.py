"""Read checkpoint weights safely and put them on a loaded base model (torch lives here).

Loading never executes pickled code by default:

- ``.pt/.pth/.bin`` go through ``torch.load(weights_only=True)``;
- XTuner and DeepSpeed files also pickle mmengine/DeepSpeed objects next to the tensors. They are
  read with :func:`restricted_load`: torch's own allow-list of tensor-rebuilding functions, and every
  other class replaced by an inert placeholder that only stores its arguments -- no constructor,
  no ``__reduce__`` callable ever runs. Nothing needs mmengine or xtuner installed.
- Anything else is refused with a message naming the ``--allow-pickle`` opt-in.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import importlib
import logging
import pickle
import types
from pathlib import Path

import torch

from diag.backend.pickle_scan import check_allocations
from diag.errors import DiagError
from diag.files import loads_json
from diag.formats import xtuner

log = logging.getLogger("diag")

PICKLE_FIX = "re-run with --allow-pickle if you trust where the file came from"


# ------------------------------------------------------------------------ restricted unpickling
class Inert:
    """Stand-in for a pickled object of an unknown class: keeps its data, runs none of its code."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("items", []).extend(items)

    def __setitem__(self, key, value):
        self.__dict__.setdefault("mapping", {})[key] = value

    def __repr__(self) -> str:
        return f"<inert {type(self).__qualname__}>"


@functools.cache
def _inert_class(module: str, name: str) -> type:
    return type(name, (Inert,), {"__module__": f"inert:{module}"})


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict:
    from torch._weights_only_unpickler import _get_allowed_globals

    return dict(_get_allowed_globals())


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only torch's weights-only allow-list (plus DeepSpeed enums); the rest is inert."""

    def find_class(self, module: str, name: str):
        allowed = _allowed_globals().get(f"{module}.{name}")
        if allowed is not None:
            return allowed
        if module.startswith("deepspeed."):
            # DeepSpeed stores e.g. ZeroStageEnum.gradients; calling an Enum class with a value
            # only looks the member up, and zero_to_fp32 compares it with integers.
            with contextlib.suppress(ImportError, AttributeError):
                obj = getattr(importlib.import_module(module), name)
                if isinstance(obj, type) and issubclass(obj, enum.Enum):
                    return obj
        return _inert_class(module, name)


restricted_pickle = types.ModuleType("diag_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = lambda fh, **kw: RestrictedUnpickler(fh, **kw).load()
restricted_pickle.__name__ = "diag_restricted_pickle"


def restricted_load(path: str | Path):
    """torch.load that materialises tensors and turns every unknown class into :class:`Inert`."""
    check_allocations(path)
    return original_torch_load(
        str(path), map_location="cpu", weights_only=False, pickle_module=restricted_pickle
    )


original_torch_load = torch.load


def safe_load(path: str | Path, *, allow_pickle: bool = False, restricted: bool = False):
    """Load a torch-pickled file without executing code unless ``allow_pickle`` says so.

    restricted: fall back to :func:`restricted_load` (for formats known to pickle harmless
    framework objects, such as XTuner and DeepSpeed checkpoints) instead of refusing.
    """
    check_allocations(path)  # before torch's allow-list lets a bytearray(4e9) through
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            log.warning("loading %s with full unpickling (--allow-pickle)", path)
            return torch.load(str(path), map_location="cpu", weights_only=False)
        if restricted:
            return restricted_load(path)
        raise DiagError(
            f"'{path}' needs full unpickling, which can run code: "
            f"{str(exc).strip().splitlines()[0][:160]}",
            fix=PICKLE_FIX,
        ) from exc


# ------------------------------------------------------------------------------ weight readers
def read_state_dict(
    path: Path, fmt: str, files: tuple[Path, ...] = (), *, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of an XTuner ``.pth`` file or a DeepSpeed checkpoint folder.

    files: the checkpoint's weight files as discovery found them. A DeepSpeed folder whose files
    include optimizer partitions (``*_optim_states.pt``: every native ZeRO checkpoint, and XTuner's
    under ZeRO-3, whose model states hold only placeholders) is consolidated by DeepSpeed's own
    ``zero_to_fp32``; an XTuner ZeRO-1/2 folder is read from ``mp_rank_00_model_states.pt``.
    """
    if fmt == "xtuner-pth":
        data = safe_load(path, allow_pickle=allow_pickle, restricted=True)
        weights = data.get("state_dict", data) if isinstance(data, dict) else None
    elif fmt in ("xtuner-deepspeed", "deepspeed-zero"):
        names = [f.name for f in files] or [p.name for p in path.iterdir()]
        if any(n.endswith("_optim_states.pt") for n in names):
            from diag.backend.deepspeed_zero import zero_to_fp32

            weights = zero_to_fp32(path)
        else:
            data = safe_load(
                path / "mp_rank_00_model_states.pt", allow_pickle=allow_pickle, restricted=True
            )
            weights = data.get("module") if isinstance(data, dict) else None
    else:
        raise ValueError(fmt)
    if not isinstance(weights, dict) or not weights:
        raise DiagError(f"'{path}' holds no weights where {fmt} keeps them")
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def split_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """peft-saved-format LoRA weights if ``state`` is an adapter, else None (full weights)."""
    lora = {}
    for key, value in state.items():
        new = xtuner.peft_key(key)
        if new is not None:
            lora[new if new.startswith("base_model.") else f"base_model.model.{new}"] = value
    return lora or None


def _check_adapter_config(path: Path) -> None:

    try:
        config = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DiagError(
            f"'{path}' is not a readable adapter config: {str(exc).splitlines()[0][:200]}",
            fix="copy it again from the training run (peft's save_pretrained writes it)",
        ) from exc
    if not isinstance(config, dict):
        raise DiagError(f"'{path}' is not a JSON object", fix="copy it again from the training run")


def _attention_shape(lm) -> list[int]:
    """[heads, kv heads, head dim] of the loaded base model."""
    config = lm.model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return [heads, getattr(config, "num_key_value_heads", None) or heads, head_dim]


def torchtune_lora(state: dict, heads: list[int], where: Path) -> dict[str, torch.Tensor]:
    """torchtune's ``adapter_model.pt`` as peft saved-adapter weights.

    As torchtune's own ``tune_to_peft_adapter_weights`` (torchtune/models/convert_weights.py,
    0.6.1): keys renamed, and q/k ``lora_B`` rows permuted from torchtune's rotary layout to HF's.
    """
    from diag.formats.trainers import torchtune_peft_key

    n_heads, n_kv_heads, head_dim = heads
    lora = {}
    for key, value in state.items() if isinstance(state, dict) else []:
        new = torchtune_peft_key(key) if isinstance(value, torch.Tensor) else None
        if new is None:
            continue
        if new.endswith("lora_B.weight") and (".q_proj." in new or ".k_proj." in new):
            n = n_heads if ".q_proj." in new else n_kv_heads
            rank = value.shape[-1]
            value = (
                value.view(n, head_dim // 2, 2, rank).transpose(1, 2).reshape(n * head_dim, rank)
            )
        lora[new] = value
    if not lora:
        raise DiagError(
            f"'{where / 'adapter_model.pt'}' holds no torchtune LoRA weights",
            fix="sweep the peft adapter_model.safetensors torchtune writes beside it",
        )
    return lora


# ------------------------------------------------------------------------- applying to a model
def apply_checkpoint(lm, ckpt, *, allow_pickle: bool = False, lora_alpha: float | None = None):
    """Make ``lm`` (an HFBackend on the base) answer as checkpoint ``ckpt``; return the model to
    probe: ``lm`` itself with an adapter swapped in, or a new backend for full weights."""
    if ckpt.format == "peft-adapter":
        _check_adapter_config(ckpt.path / "adapter_config.json")
        if ckpt.files[-1].suffix in (".bin", ".pt"):
            safe_load(ckpt.files[-1], allow_pickle=allow_pickle)  # refuse pickles before peft does
        lm.use_adapter(ckpt.path)
        return lm
    if ckpt.format == "full-model":
        return _full_model_backend(lm, ckpt, allow_pickle=allow_pickle)
    if ckpt.format == "torchtune-adapter":
        state = safe_load(ckpt.files[0], allow_pickle=allow_pickle)
        lora = torchtune_lora(state, ckpt.lora.get("heads") or _attention_shape(lm), ckpt.path)
    else:
        state = read_state_dict(ckpt.path, ckpt.format, ckpt.files, allow_pickle=allow_pickle)
        lora = split_lora(state)
    if lora is None:
        full = {xtuner.full_model_key(k): v for k, v in state.items()}
        return _full_model_backend(lm, ckpt, state=full)
    settings = dict(ckpt.lora)
    if lora_alpha is not None:
        settings["lora_alpha"] = lora_alpha
    try:
        config = xtuner.lora_settings({k: tuple(v.shape) for k, v in lora.items()}, settings)
    except KeyError:
        raise DiagError(
            f"LoRA alpha of '{ckpt.path}' is unknown (no XTuner config with lora=dict(...) or "
            f"torchtune_config.yaml with lora_alpha found in '{ckpt.run_dir}')",
            fix="pass --lora-alpha N (the lora_alpha used in training)",
        ) from None
    lm.use_adapter_weights(f"{ckpt.path}", config, lora)
    return lm


def _full_model_backend(lm, ckpt, *, state=None, allow_pickle: bool = False):
    """A second model for full weights (base tokenizer, same device); freed by the caller."""
    from transformers import AutoModelForCausalLM

    from diag.backend.hf import HFBackend
    from diag.backend.loading import ensure_local_weights
    from diag.models import resolve_base

    dtype = next(lm.model.parameters()).dtype
    if lm.family.converts:  # the family's names: renamed onto the converted base
        from diag.backend.loading import read_weight_files
        from diag.formats.layouts import shards

        if state is None:
            state = read_weight_files(shards(ckpt.path)[0])
        state = lm.family.weights_to_native(state)
    try:
        if state is None:
            if ckpt.files[-1].suffix == ".bin":
                safe_load(ckpt.files[-1], allow_pickle=allow_pickle)
            model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=dtype)
        else:
            folder = ensure_local_weights(resolve_base(lm.name))
            if lm.family.converts:
                folder = lm.family.native_folder()
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise RuntimeError(f"unexpected weights, e.g. {result.unexpected_keys[0]}")
            if len(result.missing_keys) >= len(model.state_dict()):
                raise RuntimeError("none of its weights match the base model's names")
    except (RuntimeError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DiagError(
            f"full weights '{ckpt.path}' do not fit base model '{lm.name}': {first}",
            fix="pass --base with the model the checkpoint was trained from",
        ) from exc
    from diag.backend.loading import non_finite

    bad = non_finite(model.named_parameters())
    if bad:
        raise DiagError(
            f"'{ckpt.path}': {bad} (the weights diverged in training)",
            fix="pick an earlier checkpoint; check the learning rate and the loss curve",
        )
    model.to(lm.device).eval()
    return HFBackend(model, lm.tokenizer, f"{lm.name}+{ckpt.path.name}", lm.device, lm.family)


def read_peft_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A peft adapter folder as (LoraConfig keyword arguments, saved-adapter weights)."""
    import dataclasses
    import json

    from peft import LoraConfig

    _check_adapter_config(folder / "adapter_config.json")
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise DiagError(
            f"'{folder}' is a {config.get('peft_type')} adapter; diag reads LoRA adapters",
            fix="sweep LoRA checkpoints, or merge this one with peft first",
        )
    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    # the base it names is where it was trained, not necessarily the (converted) model it joins
    drop = ("peft_type", "base_model_name_or_path", "revision")
    settings = {k: v for k, v in config.items() if k in fields and k not in drop}
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return settings, load_file(str(path))
            return settings, safe_load(path)
    raise DiagError(
        f"'{folder}' has no adapter_model.safetensors or adapter_model.bin",
        fix="copy the checkpoint folder again",
    )
