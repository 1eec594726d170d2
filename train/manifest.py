"""``diag-run.json``: what a run folder is, so ``diag sweep RUN`` needs no flags.

Keys: ``schema_version``, ``tool``, ``kind`` ("diag-run"), ``status`` (running | complete |
stopped_on_parrot), ``created``, ``base`` (the model name or folder the sweep loads), ``base_path``, ``identity`` (the spec, its
``hash`` and ``source``), ``chat`` (:meth:`diag.types.ChatFormat.to_dict`: the format used for
training; probe with the same one), ``data`` (hash, identity/general counts, mix, sources),
``config`` (the full training config), ``deepspeed``, ``versions``, ``git``, and once finished
``timing``, ``checkpoints`` and ``in_training_probes``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path

from diag.files import write_json_atomic
from diag.records import SCHEMA_VERSION, tool_block

MANIFEST = "diag-run.json"


def read_manifest(run_dir: str | Path) -> dict | None:
    """The manifest of ``run_dir``, or None when it has none."""
    path = Path(run_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("diag", "torch", "transformers", "peft", "accelerate", "deepspeed"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def git_hash() -> str | None:
    """The commit of the diag source tree, with ``-dirty`` when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(
    run_dir: Path, *, status: str, config, source, identity, chat, data, deepspeed, **finished
) -> dict:
    """Write (or rewrite) the run's manifest atomically; returns it."""
    previous = read_manifest(run_dir) or {}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_block(),
        "kind": "diag-run",
        "status": status,
        "created": previous.get("created")
        or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": source.name,  # what `diag sweep` loads: a name resolve_base() knows, or a folder
        "base_path": str(source.cache_dir or source.path),
        "identity": (
            {**identity.to_dict(), "hash": identity.hash, "source": identity.source}
            if identity is not None
            else None
        ),
        "chat": chat.to_dict(),
        "data": data,
        "config": config.to_dict(),
        "method": config.method,
        "deepspeed": None if deepspeed is None else {k: v for k, v in deepspeed.items()},
        "versions": library_versions(),
        "git": git_hash(),
        **finished,
    }
    write_json_atomic(Path(run_dir) / MANIFEST, manifest)
    return manifest
