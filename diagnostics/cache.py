"""Content fingerprints and the per-checkpoint result cache that makes re-sweeps cheap.

A checkpoint's cache key is a hash of: the content of its weight files (not path or mtime), the
prompts of every probe set, the identity, the base model's weights, the prompt format and the
generation settings. Change any of them and the checkpoint is probed again; change nothing and its
stored generations are read back and re-scored (scoring needs no model).

Hashing a multi-GB file on every sweep would be slow, so per-file hashes are memoised by
(path, size, mtime, inode) like git's index: an unchanged file is not re-read, a changed one is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from diag.files import write_json_atomic

log = logging.getLogger("diag")

CACHE_VERSION = 1
_CHUNK = 1 << 22


def file_hash(path: Path) -> str:
    """blake2b of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Fingerprinter:
    """Fingerprints of weight files, memoised on disk in ``memo_path``."""

    def __init__(self, memo_path: Path | None):
        self.memo_path = memo_path
        self.memo: dict[str, str] = {}
        self.hashed_bytes = 0  # how much was actually read (tests and logs use it)
        if memo_path and memo_path.is_file():
            try:
                self.memo = json.loads(memo_path.read_text())
            except ValueError:
                log.warning("ignoring unreadable fingerprint memo %s", memo_path)

    def _file(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        if key not in self.memo:
            self.memo[key] = file_hash(path)
            self.hashed_bytes += st.st_size
        return self.memo[key]

    def fingerprint(self, files, root: Path | None = None) -> str:
        """One hash over the contents of ``files`` (names relative to ``root`` included)."""
        digest = hashlib.blake2b(digest_size=16)
        for f in sorted(Path(p) for p in files):
            name = f.relative_to(root).as_posix() if root and f.is_relative_to(root) else f.name
            digest.update(f"{name}\0{self._file(f)}\n".encode())
        return "blake2b:" + digest.hexdigest()

    def save(self) -> None:
        if self.memo_path:
            write_json_atomic(self.memo_path, self.memo)


def cache_key(**parts) -> str:
    """A stable key from JSON-able parts."""
    payload = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ResultCache:
    """One JSON file per key under ``folder``; written atomically, unreadable entries ignored."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, kind: str, key: str) -> Path:
        return self.folder / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring unreadable cache entry %s (it will be recomputed)", path)
            return None

    def put(self, kind: str, key: str, data: dict) -> None:
        write_json_atomic(self.path(kind, key), data)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return self.path(*item).is_file()
