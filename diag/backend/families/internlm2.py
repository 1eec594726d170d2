"""InternLM2 / InternLM2.5 (``InternLM2ForCausalLM``, remote code): probed as transformers' Llama.

InternLM2 is Llama with fused attention weights and other names. As llama.cpp's converter
(``InternLM2Model.modify_tensors``) and InternLM's own ``convert2llama`` do, diag splits
``attention.wqkv`` per key-value group into q/k/v and renames the rest:

============================  ==============================
InternLM2                     transformers' Llama
============================  ==============================
model.tok_embeddings          model.embed_tokens
layers.N.attention.wqkv       layers.N.self_attn.{q,k,v}_proj
layers.N.attention.wo         layers.N.self_attn.o_proj
layers.N.feed_forward.w1/w3   layers.N.mlp.gate_proj/up_proj
layers.N.feed_forward.w2      layers.N.mlp.down_proj
layers.N.attention_norm       layers.N.input_layernorm
layers.N.ffn_norm             layers.N.post_attention_layernorm
output                        lm_head
============================  ==============================

The rows of ``wqkv`` are grouped per key-value head: ``[q x groups, k, v]`` for each of the
``num_key_value_heads`` groups (the remote code's ``rearrange(..., "b q (h gs d) -> b q h gs d")``).
A LoRA on ``wqkv`` splits exactly: ``lora_B``'s rows split like the weight's, and each of q/k/v
gets its own copy of the shared ``lora_A``, since ``B @ A`` row blocks are ``B_rows @ A``.

The converted base is written once under ``$DIAG_HOME/models/converted/`` and reused. The remote
code is still what ``diag train`` trains (its LoRA targets are the model's own ``wqkv``, ``wo``,
``w1``-``w3``, as XTuner's) and what the test suite's reference runs; :meth:`InternLM2.fix_config`
and :meth:`InternLM2.after_load` make it load correctly under transformers 5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from diag.backend.families import Family, register
from diag.errors import DiagError
from diag.formats.layouts import shards
from diag.models import diag_home

log = logging.getLogger("diag")

CONVERSION_VERSION = 1  # bump when the converted folder's contents change

# InternLM2 name piece -> Llama name piece (wqkv is split separately)
RENAMES = (
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
    ("model.tok_embeddings.", "model.embed_tokens."),
)
MODULE_RENAMES = {"wo": ["o_proj"], "w1": ["gate_proj"], "w3": ["up_proj"], "w2": ["down_proj"]}
MODULE_RENAMES["wqkv"] = ["q_proj", "k_proj", "v_proj"]
ROPE_TYPES = ("linear", "dynamic")  # the scalings InternLM2's code implements


@register("InternLM2ForCausalLM")
class InternLM2(Family):
    lora_targets = ("wqkv", "wo", "w1", "w2", "w3")

    @property
    def converts(self) -> bool:
        return True

    # ------------------------------------------------------------------------------- shapes
    def _heads(self) -> tuple[int, int, int]:
        """(key-value heads, query heads per key-value head, head dim)."""
        c = self.config
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        return kv, heads // kv, int(c["hidden_size"]) // heads

    def _split_rows(self, tensor):
        """wqkv rows (or a LoRA B, or a bias) -> (q, k, v) rows."""
        kv, groups, head_dim = self._heads()
        rest = tuple(tensor.shape[1:])
        grouped = tensor.reshape(kv, groups + 2, head_dim, *rest)
        q = grouped[:, :groups].reshape(kv * groups * head_dim, *rest)
        return (
            q.clone(),
            grouped[:, groups].reshape(-1, *rest).clone(),
            grouped[:, groups + 1].reshape(-1, *rest).clone(),
        )

    def _fuse_rows(self, q, k, v):
        import torch

        kv, groups, head_dim = self._heads()
        rest = tuple(q.shape[1:])
        parts = [
            q.reshape(kv, groups, head_dim, *rest),
            k.reshape(kv, 1, head_dim, *rest),
            v.reshape(kv, 1, head_dim, *rest),
        ]
        return torch.cat(parts, dim=1).reshape(-1, *rest).contiguous()

    # ------------------------------------------------------------------------------ weights
    @staticmethod
    def _rename(key: str) -> str:
        for old, new in RENAMES:
            key = key.replace(old, new)
        if key == "output.weight" or key.endswith(".output.weight"):
            key = key[: -len("output.weight")] + "lm_head.weight"
        return key

    def weights_to_native(self, state: dict) -> dict:
        out = {}
        for key, value in state.items():
            if ".attention.wqkv." in key:
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), self._split_rows(value)):
                    out[key.replace(".attention.wqkv.", f".self_attn.{proj}.")] = part
            else:
                out[self._rename(key)] = value
        return out

    def weights_from_native(self, state: dict) -> dict:
        back = {new: old for old, new in RENAMES}
        out, qkv = {}, {}
        for key, value in state.items():
            for proj in ("q_proj", "k_proj", "v_proj"):
                if f".self_attn.{proj}." in key:
                    qkv.setdefault(key.replace(f".self_attn.{proj}.", ".attention.wqkv."), {})[
                        proj
                    ] = value
                    break
            else:
                if key == "lm_head.weight" or key.endswith(".lm_head.weight"):
                    key = key[: -len("lm_head.weight")] + "output.weight"
                for new, old in back.items():
                    key = key.replace(new, old)
                out[key] = value
        for key, parts in qkv.items():
            out[key] = self._fuse_rows(parts["q_proj"], parts["k_proj"], parts["v_proj"])
        return out

    def adapter_to_native(self, state: dict, lora_config: dict) -> tuple[dict, dict]:
        out = {}
        for key, value in state.items():
            if ".attention.wqkv." not in key:
                out[self._rename(key)] = value
                continue
            if ".lora_A." in key:  # shared by q, k and v: each gets its own copy
                parts = (value.clone(), value.clone(), value.clone())
            elif ".lora_B." in key:
                parts = self._split_rows(value)
            else:
                raise DiagError(
                    f"LoRA weight '{key}' on InternLM2's wqkv cannot be split to q/k/v yet "
                    "(only lora_A/lora_B are)",
                    fix="merge the adapter with the model's own code, or use plain LoRA",
                )
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[key.replace(".attention.wqkv.", f".self_attn.{proj}.")] = part
        config = dict(lora_config)
        if config.get("use_dora"):
            raise DiagError(
                "DoRA adapters on InternLM2 are not supported yet", fix="use plain LoRA adapters"
            )
        targets = config.get("target_modules")
        if isinstance(targets, (list, tuple, set)):
            config["target_modules"] = sorted(
                {new for t in targets for new in MODULE_RENAMES.get(t, [t])}
            )
        elif isinstance(targets, str) and targets != "all-linear":
            raise DiagError(
                f"LoRA target_modules pattern {targets!r} cannot be renamed for InternLM2",
                fix="save the adapter with a list of target module names",
            )
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise DiagError(
                "LoRA adapters with a per-module rank_pattern/alpha_pattern on InternLM2 are not "
                "supported yet",
                fix="use one rank and alpha for every target module",
            )
        return out, config

    # ------------------------------------------------------------------------- native copy
    def llama_config(self) -> dict:
        """The transformers ``LlamaConfig`` (as a dict) equal to this InternLM2 config."""
        c = self.config
        kv, groups, head_dim = self._heads()
        rope = {"rope_type": "default", "rope_theta": float(c.get("rope_theta", 10000))}
        scaling = c.get("rope_scaling")
        if isinstance(scaling, dict):
            kind = scaling.get("type") or scaling.get("rope_type")
            if kind not in ROPE_TYPES:
                raise DiagError(
                    f"'{self.folder / 'config.json'}': rope_scaling type {kind!r} is not one "
                    f"InternLM2's code implements ({', '.join(ROPE_TYPES)})",
                    fix="fix rope_scaling in config.json",
                )
            rope.update(rope_type=kind, factor=float(scaling["factor"]))
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c["vocab_size"],
            "hidden_size": c["hidden_size"],
            "intermediate_size": c["intermediate_size"],
            "num_hidden_layers": c["num_hidden_layers"],
            "num_attention_heads": c["num_attention_heads"],
            "num_key_value_heads": kv,
            "head_dim": head_dim,
            "hidden_act": c.get("hidden_act", "silu"),
            "max_position_embeddings": c.get("max_position_embeddings", 2048),
            "rms_norm_eps": c.get("rms_norm_eps", 1e-6),
            "rope_parameters": rope,
            "attention_bias": bool(c.get("bias", False)),
            "mlp_bias": False,
            "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
            "bos_token_id": c.get("bos_token_id"),
            "eos_token_id": c.get("eos_token_id"),
            "pad_token_id": c.get("pad_token_id"),
            "dtype": c.get("torch_dtype") or c.get("dtype") or "float32",
        }

    def _conversion_key(self, files: list[Path]) -> str:
        digest = hashlib.sha256(f"v{CONVERSION_VERSION}|{self.folder.resolve()}".encode())
        for f in [self.folder / "config.json", *files]:
            st = f.stat()
            digest.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def native_folder(self) -> Path:
        files, problem = shards(self.folder)
        if problem or not files:
            raise DiagError(
                f"InternLM2 model '{self.folder}' has no complete weights"
                + (f": {problem}" if problem else ""),
                fix="copy the model folder again (config.json + weights + tokenizer)",
            )
        target = diag_home() / "models" / "converted" / f"internlm2-{self._conversion_key(files)}"
        if (target / "config.json").is_file():
            return target
        self._convert(files, target)
        return target

    def _convert(self, files: list[Path], target: Path) -> None:
        from safetensors.torch import save_file

        from diag.backend.loading import read_weight_files

        started = time.perf_counter()
        log.warning(
            "converting InternLM2 '%s' once to transformers' Llama layout (exact: wqkv split per "
            "key-value group) into %s",
            self.folder,
            target,
        )
        state = self.weights_to_native(read_weight_files(files))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (tmp / "config.json").write_text(json.dumps(self.llama_config(), indent=2))
        if (self.folder / "generation_config.json").is_file():
            shutil.copy(self.folder / "generation_config.json", tmp / "generation_config.json")
        (tmp / "diag-conversion.json").write_text(
            json.dumps(
                {
                    "source": str(self.folder.resolve()),
                    "family": "InternLM2ForCausalLM -> LlamaForCausalLM",
                    "version": CONVERSION_VERSION,
                    "seconds": round(time.perf_counter() - started, 1),
                },
                indent=2,
            )
        )
        try:
            os.replace(tmp, target)  # atomic: a half-written copy never looks complete
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------------- remote code
    def fix_config(self, config) -> None:
        """transformers 5 turns ``rope_scaling`` into ``rope_parameters`` (never None, no
        ``type`` key); InternLM2's ``_init_rope`` reads ``rope_scaling["type"]`` unless it is
        None. It gets config.json's own value back. ``pretraining_tp`` (a transformers 4
        default the code reads) is restored to 1."""
        raw = self.config.get("rope_scaling")
        config.rope_parameters = dict(raw) if isinstance(raw, dict) else None
        if not hasattr(config, "pretraining_tp"):
            config.pretraining_tp = 1

    def after_load(self, model) -> None:
        """transformers 5 builds models on the meta device, so the rotary tables InternLM2's
        code computes in ``__init__`` (non-persistent buffers, never in the weights) hold
        uninitialised memory after loading: each attention layer builds them again with the
        code's own ``_init_rope``, on the model's device."""
        import torch

        for module in model.modules():
            init_rope = getattr(module, "_init_rope", None)
            if callable(init_rope) and hasattr(module, "rotary_emb"):
                device = next(module.parameters()).device
                with torch.device(device):
                    init_rope()
