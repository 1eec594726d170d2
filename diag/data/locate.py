"""Find the data a run names on this machine, and say where it looked when it is not there.

Trainers record paths relative to the folder they were launched from, or absolute paths on the
machine that trained. A run folder is often copied elsewhere with its data beside it, so a name
is looked for, in order: as recorded; relative to the run folder and each folder above it, then
the current folder; and, when the recorded path is absolute and missing, its last parts
(``xt-run/data.json``, then ``data.json``) in those same folders. Hub datasets are read from the
local Hugging Face or ModelScope cache only: diag never downloads data.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from diag.data.conversations import Columns
from diag.formats.recorded_data import DataRef

ABOVE = 5  # folders above the run folder searched for relative paths


@dataclass
class Located:
    """Where a :class:`DataRef` was found (``files``), read as ``format`` with ``columns``.

    how: one line a user can check ("found as recorded", "recorded '/tmp/x.json' is not here;
    found 'x.json' at ..."); looked: every place tried, for the message when nothing was found.
    """

    ref: DataRef
    files: list[Path] = field(default_factory=list)
    format: str | None = None
    columns: Columns = field(default_factory=Columns)
    how: str = ""
    looked: list[str] = field(default_factory=list)
    hub: bool = False  # a hub dataset name (found in a local cache, or not at all)

    @property
    def found(self) -> bool:
        return bool(self.files)


def _search_folders(run_dir: Path) -> list[Path]:
    folders = [run_dir, *list(run_dir.resolve().parents)[:ABOVE]]
    cwd = Path.cwd()
    return folders + ([cwd] if cwd not in folders else [])


def find_path(recorded: str, run_dir: Path) -> tuple[Path | None, str, list[str]]:
    """(the file or folder, how it was found, where it was looked for) for a recorded path."""
    path = Path(os.path.expanduser(recorded))
    looked: list[str] = []
    if path.is_absolute():
        looked.append(str(path))
        if path.exists():
            return path, f"'{path}' as recorded", looked
        tails = [Path(*path.parts[-k:]) for k in range(len(path.parts) - 1, 0, -1)][-3:]
    else:
        tails = [path]
    folders = _search_folders(run_dir)
    for tail in tails:
        for folder in folders:
            candidate = folder / tail
            looked.append(str(candidate))
            if candidate.exists():
                where = "the current folder" if folder == Path.cwd() else f"'{folder}'"
                if tail == path:
                    return candidate, f"'{recorded}' relative to {where}", looked
                return (
                    candidate,
                    f"'{recorded}' is not on this machine; found '{tail}' in {where}",
                    looked,
                )
    return None, "", looked


def locate(ref: DataRef, run_dir: Path) -> Located:
    """Find ``ref`` for the run in ``run_dir``."""
    if ref.folder is not None:  # LLaMA-Factory: a name in dataset_info.json
        return _llamafactory(ref, run_dir)
    columns = Columns.from_dataset_info(ref.columns or {})
    name = re.sub(r"#\d+$", "", ref.name)  # ms-swift's "name#500": a sample of 500 rows
    path, how, looked = find_path(name, run_dir)
    if path is not None:
        return Located(ref, [path], ref.format, columns, how, looked)
    if _looks_like_hub_id(name):
        return _hub(ref, name, columns, looked)
    return Located(ref, [], ref.format, columns, "", looked)


def _looks_like_hub_id(name: str) -> bool:
    return (
        name.count("/") == 1
        and not name.startswith((".", "/", "~"))
        and not Path(name).suffix
        and ":" not in name
    )


def hub_cache_folder(repo_id: str) -> Path | None:
    """A dataset's folder in the local Hugging Face or ModelScope cache, or None."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except (ImportError, LocalEntryNotFoundError, OSError, ValueError):
        pass
    cache = Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope")
    for folder in (cache / "hub" / "datasets" / repo_id, cache / "datasets" / repo_id):
        if folder.is_dir():
            return folder
    return None


def _hub(ref: DataRef, name: str, columns: Columns, looked: list[str]) -> Located:
    candidates = [name]
    if name == "swift/self-cognition":  # the same rows on the Hugging Face hub
        candidates.append("modelscope/self-cognition")
    for repo_id in candidates:
        folder = hub_cache_folder(repo_id)
        looked.append(f"hub cache for dataset '{repo_id}'")
        if folder is not None:
            how = f"hub dataset '{repo_id}' from the local cache '{folder}'"
            return Located(ref, [folder], ref.format, columns, how, looked, hub=True)
    return Located(ref, [], ref.format, columns, "", looked, hub=True)


def _llamafactory(ref: DataRef, run_dir: Path) -> Located:
    """A LLaMA-Factory dataset name: its entry in ``<dataset_dir>/dataset_info.json``."""
    info_path, _, looked = find_path(str(Path(ref.folder or "data") / "dataset_info.json"), run_dir)
    located = Located(ref, looked=looked)
    if info_path is None:
        return located
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        located.looked.append(f"{info_path} (not readable JSON)")
        return located
    entry = info.get(ref.name) if isinstance(info, dict) else None
    if not isinstance(entry, dict):
        located.looked.append(f"{info_path} (no entry '{ref.name}')")
        return located
    located.columns = Columns.from_dataset_info(entry)
    located.format = "sharegpt" if entry.get("formatting") == "sharegpt" else "alpaca"
    if isinstance(entry.get("file_name"), str):
        path = info_path.parent / entry["file_name"]
        located.looked.append(str(path))
        if path.exists():
            located.files = [path]
            located.how = f"'{ref.name}' in '{info_path}': '{path}'"
        return located
    for key in ("hf_hub_url", "ms_hub_url", "om_hub_url"):
        if isinstance(entry.get(key), str):
            hub = _hub(ref, entry[key], located.columns, located.looked)
            hub.format = located.format
            return hub
    return located
