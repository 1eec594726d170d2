"""Merge a LoRA adapter into its base and save a plain Hugging Face model folder.

The output loads with nothing but transformers (``AutoModelForCausalLM.from_pretrained(out)``):
safetensors weights, config, tokenizer with its chat template, and a generation config whose
end-of-sequence ids include the chat end-of-turn token, so ``generate`` stops where diag's probes
stopped. A ``diag-merge.json`` provenance file records where the weights came from.

Like :mod:`diag.backend.hf`, this is one of the few modules allowed to import torch and peft.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diag.backend.loading import (
    ensure_local_weights,
    mismatch_error,
    non_finite,
    quiet_transformers,
)
from diag.errors import DiagError
from diag.files import loads_json, write_json_atomic
from diag.models import resolve_base
from diag.records import tool_block

log = logging.getLogger("diag")

PROVENANCE_FILE = "diag-merge.json"
# Tokens that end an assistant turn in common chat templates (ChatML, Llama 3, Phi).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>")


@dataclass
class AdapterSource:
    """A LoRA adapter to merge: a peft folder, or weights already in memory.

    key: how provenance names it (the checkpoint path as the user knows it).
    adapter_dir: a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
    lora_config / state_dict: a converted adapter (e.g. from an XTuner ``.pth``), with peft's
        saved-adapter key names, as :meth:`diag.backend.hf.HFBackend.use_adapter_weights` takes.
    """

    key: str
    adapter_dir: Path | None = None
    lora_config: dict | None = None
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.adapter_dir is None) == (self.state_dict is None):
            raise ValueError("give exactly one of adapter_dir or lora_config + state_dict")
        if self.state_dict is not None and self.lora_config is None:
            raise ValueError("state_dict needs its lora_config")


def adapter_base(adapter_dir: str | os.PathLike) -> str | None:
    """The base model an adapter folder says it was trained on (``base_model_name_or_path``)."""
    config = Path(adapter_dir) / "adapter_config.json"
    try:
        return loads_json(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None


def merge_adapter(
    source: AdapterSource,
    out: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    provenance: dict[str, Any] | None = None,
    chat: dict | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Merge ``source`` into ``base`` (peft ``merge_and_unload``) and save it to ``out``.

    The merge runs in float32 and the result is saved in the base's own dtype, so a bf16 base stays
    bf16. ``out`` must not exist or be empty: diag never overwrites a model folder. The folder is
    written under a temporary name and renamed at the end, so a crash never leaves a half model.
    ``provenance`` is merged into ``diag-merge.json`` next to the weights. ``chat`` is the prompt
    format the checkpoint was trained and probed with (:class:`diag.types.ChatFormat` as a dict):
    its system prompt becomes the chat template's default, so the merged model answers plain chat
    requests the way diag measured it.

    >>> merge_adapter(AdapterSource("runs/a/checkpoint-300", Path("runs/a/checkpoint-300")),
    ...               "merged/", base="smollm2-135m-instruct")    # doctest: +SKIP
    """
    from transformers import GenerationConfig

    from diag.backend.families import family_of, load_model
    from diag.backend.tokenizer_check import load_tokenizer

    out = Path(out)
    _refuse_nonempty(out)
    quiet_transformers()
    started = time.perf_counter()
    model_source = resolve_base(base)
    folder = ensure_local_weights(model_source)
    family = family_of(folder)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    # a converting family merges on its native copy (what diag probed) and is saved back in
    # the family's own layout
    model = load_model(family, dtype=torch.float32, trust_remote_code=trust_remote_code)
    saved_dtype = _stored_dtype(folder)
    template_info = set_default_system(tokenizer, chat)

    merged = _merge(model, _native_source(source, family), model_source.name, saved_dtype)
    merged.generation_config = _generation_config(merged, tokenizer, GenerationConfig)

    record = lambda: _provenance_record(  # noqa: E731
        source, model_source.name, saved_dtype, template_info, started, provenance
    )
    if family.converts:
        _save_folder(out, lambda tmp: _write_family_folder(tmp, merged, family, tokenizer), record)
    else:
        _save_folder(out, lambda tmp: _write_transformers_folder(tmp, merged, tokenizer), record)
    log.info("merged %s into %s -> %s", source.key, model_source.name, out)
    return out


def _refuse_nonempty(out: Path) -> None:
    """Raise unless ``out`` is absent or an empty folder: diag never overwrites a model."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DiagError(
            f"output '{out}' already exists and is not empty",
            fix="pass a new --out folder (diag never overwrites a model)",
        )


def _merge(model, source: AdapterSource, base_name: str, saved_dtype: torch.dtype | None):
    """Attach ``source``, merge it into ``model`` and cast the result to the base's stored dtype."""
    peft_model = _attach(model, source, base_name)
    bad = non_finite((n, p) for n, p in peft_model.named_parameters() if "lora_" in n)
    if bad:  # peft's safe_merge would only find it after merging, as a traceback
        raise DiagError(
            f"adapter '{source.key}': {bad}; non-finite weights cannot be merged, not even "
            "with --force",
            fix="merge an earlier checkpoint (the sweep's report lists the ones that load)",
        )
    merged = peft_model.merge_and_unload(safe_merge=True)  # safe_merge: a last check
    if saved_dtype is not None and saved_dtype != torch.float32:
        merged = merged.to(saved_dtype)
    return merged


def _save_folder(out: Path, write: Callable[[Path], None], record: Callable[[], dict]) -> None:
    """``write(tmp)`` the model files, add the provenance, then rename the folder to ``out``.

    ``record`` is called after the weights are written, so its timings include the save.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        write_json_atomic(tmp / PROVENANCE_FILE, record())
        if out.exists():  # an empty folder the user made
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_transformers_folder(tmp: Path, merged, tokenizer) -> None:
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def _native_source(source: AdapterSource, family) -> AdapterSource:
    """``source`` renamed (and split) for the family's native copy, where it converts."""
    if not family.converts:
        return source
    if source.adapter_dir is not None:
        from diag.backend.checkpoints import read_peft_adapter

        config, state = read_peft_adapter(Path(source.adapter_dir))
    else:
        config, state = source.lora_config, source.state_dict
    state, config = family.adapter_to_native(state, config)
    return AdapterSource(source.key, lora_config=config, state_dict=state)


def _write_family_folder(tmp: Path, merged, family, tokenizer) -> None:
    """The family's own layout: the base folder's files (config, model code, tokenizer) copied
    as they are, the merged weights under the family's names."""
    from safetensors.torch import save_file

    from diag.formats.layouts import shards

    weights, _ = shards(family.folder)
    skip = {f.name for f in weights}
    shutil.copytree(family.folder, tmp, ignore=lambda _d, names: [n for n in names if n in skip])
    state = family.weights_from_native(merged.state_dict())
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(tmp / "model.safetensors"),
        metadata={"format": "pt"},
    )
    merged.generation_config.to_json_file(str(tmp / "generation_config.json"))
    template = getattr(tokenizer, "chat_template", None)
    config_path = tmp / "tokenizer_config.json"
    if isinstance(template, str) and config_path.is_file():  # with the default system prompt
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _provenance_record(
    source: AdapterSource,
    base_name: str,
    saved_dtype: torch.dtype | None,
    template_info: dict,
    started: float,
    provenance: dict[str, Any] | None,
) -> dict:
    """The ``diag-merge.json`` contents: where the weights came from, plus ``provenance``."""
    record = {
        "schema_version": 1,
        "tool": tool_block(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": base_name,
        "source": {"checkpoint": source.key, "adapter_dir": _str(source.adapter_dir)},
        "dtype": str(saved_dtype or torch.float32).replace("torch.", ""),
        "chat_template": template_info,
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for key, value in (provenance or {}).items():  # nested blocks are merged, not replaced
        both = isinstance(value, dict) and isinstance(record.get(key), dict)
        record[key] = {**record[key], **value} if both else value
    return record


def set_default_system(tokenizer, chat: dict | None) -> dict:
    """Make the training system prompt the chat template's default (when no system is sent).

    Only for tokenizer chat templates: a Jinja prefix prepends ``{"role": "system", ...}`` when the
    conversation has none, which is exactly what diag's backend sends when probing with
    ``ChatFormat(system=...)``. Format-string templates (XTuner style) are left alone and noted.
    """
    chat = chat or {}
    template = getattr(tokenizer, "chat_template", None)
    info: dict[str, Any] = {"present": bool(template), "default_system": None}
    system = chat.get("system")
    if chat.get("template"):
        info["note"] = (
            "trained with a format-string prompt template (see 'chat'); the saved chat template "
            "is the base tokenizer's, so format prompts the same way when serving"
        )
        return info
    if system is None or not isinstance(template, str):
        return info
    literal = json.dumps(system, ensure_ascii=False)  # a valid Jinja string literal
    tokenizer.chat_template = (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif -%}" + template
    )
    info["default_system"] = system
    return info


def _attach(model, source: AdapterSource, base_name: str):
    """Wrap ``model`` in a PeftModel holding ``source``; a mismatch is a one-line DiagError."""
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    try:
        if source.adapter_dir is not None:
            if not (Path(source.adapter_dir) / "adapter_config.json").is_file():
                raise DiagError(
                    f"'{source.adapter_dir}' is not a LoRA adapter folder (no adapter_config.json)",
                    fix="point at a peft checkpoint folder or an XTuner .pth the sweep found",
                )
            return PeftModel.from_pretrained(model, str(source.adapter_dir), is_trainable=False)
        peft_model = get_peft_model(model, LoraConfig(**source.lora_config))
        result = set_peft_model_state_dict(peft_model, source.state_dict)
    except (RuntimeError, ValueError, KeyError) as exc:
        named = adapter_base(source.adapter_dir) if source.adapter_dir is not None else None
        raise mismatch_error(source.key, base_name, exc, named) from exc
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise DiagError(
            f"adapter '{source.key}' lacks {len(missing)} LoRA weights, e.g. {missing[0]}"
        )
    return peft_model


def _stored_dtype(folder: Path) -> torch.dtype | None:
    """The dtype the base's config.json says its weights are stored in."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) else None


def _generation_config(model, tokenizer, config_cls):
    """The base's generation config, with end-of-turn tokens added to ``eos_token_id``.

    Base models often list only ``<|endoftext|>``; a chat model merged from diag's checkpoints
    must stop at the end of its turn, as it did when diag probed it.
    """
    config = getattr(model, "generation_config", None) or config_cls.from_model_config(model.config)
    eos = config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    for token in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    if ids:
        config.eos_token_id = ids[0] if len(ids) == 1 else ids
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def _str(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None
