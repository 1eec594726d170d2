"""Model families: everything one architecture needs beyond transformers' generic path.

A family is one small class registered by the architecture name in ``config.json``
(``"architectures": ["InternLM2ForCausalLM"]``), in the manner of llama.cpp's HF converter
(``@Model.register("InternLM2ForCausalLM") class InternLM2Model``). It holds the family's tensor
names, its remote-code quirks and its LoRA targets; the generic backend asks
the family and never tests a model type itself. An architecture with no class here is served by
:class:`Family` itself: transformers' own code, as loaded.

Two ways a family can run (docs/models.md says which each family takes, and why):

- **native**: :meth:`Family.native_folder` converts the base once (cached under ``$DIAG_HOME``)
  to an architecture transformers maintains, and :meth:`Family.adapter_to_native` renames (and
  splits) LoRA weights to match; every fast path of the backend then applies.
- **remote code**: the model's own code, with :meth:`Family.fix_config` / :meth:`Family.after_load`
  repairing what transformers 5 changed under it; the backend falls back to slower correct paths
  where that code cannot take a fast one (and says so once).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger("diag")

_REGISTRY: dict[str, type[Family]] = {}


def register(*architectures: str):
    """Class decorator: the family for these ``config.json`` architecture names."""

    def add(cls: type[Family]) -> type[Family]:
        for name in architectures:
            _REGISTRY[name] = cls
        cls.architectures = architectures
        return cls

    return add


def read_config(folder: Path) -> dict:
    """``config.json`` of a model folder as a dict ({} when unreadable)."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Family:
    """The generic family: transformers' own code for the architecture, nothing renamed."""

    architectures: tuple[str, ...] = ()
    # LoRA targets ``diag train`` uses for "all-linear" (None: peft's own "all-linear")
    lora_targets: tuple[str, ...] | None = None

    def __init__(self, folder: Path | None = None, config: dict | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.config = config or {}

    @property
    def name(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------------ running on native code
    @property
    def converts(self) -> bool:
        """True when probing runs on a converted copy (weights and adapters renamed)."""
        return False

    def native_folder(self) -> Path:
        """The folder transformers loads for probing: the model's own, unless converted."""
        return self.folder

    def adapter_to_native(self, state: dict, lora_config: dict) -> tuple[dict, dict]:
        """LoRA weights (peft saved-adapter names) and their LoraConfig dict, for the model
        :meth:`native_folder` holds."""
        return state, lora_config

    def weights_to_native(self, state: dict) -> dict:
        """Full weights under the family's names, for the model :meth:`native_folder` holds."""
        return state

    def weights_from_native(self, state: dict) -> dict:
        """The inverse of :meth:`weights_to_native` (a merged model is saved in the family's
        own layout)."""
        return state

    # ------------------------------------------------------------------ running on remote code
    def fix_config(self, config) -> None:
        """Repair a loaded config object before the model's own code reads it."""

    def after_load(self, model) -> None:
        """Repair a loaded model (e.g. buffers the model's code computes in ``__init__``)."""


def family_of(folder: Path) -> Family:
    """The family of the model in ``folder`` (by ``config.json``'s ``architectures``)."""
    from diag.backend.families import internlm2  # noqa: F401  (registers its classes)

    config = read_config(folder)
    names = config.get("architectures") or []
    for name in names if isinstance(names, list) else []:
        if name in _REGISTRY:
            return _REGISTRY[name](folder, config)
    return Family(folder, config)


def load_model(family: Family, *, dtype, trust_remote_code: bool = False, native: bool = True):
    """The causal LM of ``family``'s folder: its native copy (``native`` and the family converts),
    else the folder's own code, repaired by the family for transformers 5."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if native and family.converts:
        return AutoModelForCausalLM.from_pretrained(family.native_folder(), dtype=dtype)
    kwargs = {}
    with warnings.catch_warnings():
        # transformers 5 deprecates the ``rope_scaling`` the remote configs set: not the user's
        warnings.filterwarnings("ignore", message=".*rope_scaling", category=FutureWarning)
        if trust_remote_code and family.config.get("auto_map"):
            config = AutoConfig.from_pretrained(family.folder, trust_remote_code=True)
            family.fix_config(config)
            kwargs["config"] = config
        model = AutoModelForCausalLM.from_pretrained(
            family.folder, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    family.after_load(model)
    if getattr(model, "generation_config", None) is None:
        # transformers 5 gives one only to GenerationMixin models; remote code written for 4
        # is not one, and its end-of-turn ids live in generation_config.json
        from transformers import GenerationConfig

        try:
            model.generation_config = GenerationConfig.from_pretrained(family.folder)
        except OSError:
            model.generation_config = GenerationConfig.from_model_config(model.config)
    return model
