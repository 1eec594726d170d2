"""The sweep's result folder: one sweep at a time, no half-written files, writable before work.

Everything written here goes through temp file + rename (:mod:`diag.files`); this module holds
the folder-level guarantees around it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from diag.errors import DiagError

log = logging.getLogger("diag")


@contextlib.contextmanager
def exclusive(out: Path):
    """One sweep at a time per result folder: a second one waits, says so, then reuses the cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (two sweeps would only repeat work, atomically)
        yield
        return
    with open(out / ".diag-sweep.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another diag sweep is writing to '%s'; waiting for it to finish", out)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temp_files(out: Path) -> None:
    """Temp files a killed sweep left mid-write (``.results.json.x1y2.tmp``); only called under
    the lock, when no other sweep can be writing them. Never read back: the real files are
    replaced atomically."""
    for folder in (out, out / "cache", out / "cache" / "base", out / "cache" / "checkpoint"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(out: Path):
    """A failed write of results (full disk, folder removed) as one line that says what is kept."""
    try:
        yield
    except OSError as exc:
        raise DiagError(
            f"cannot write results to '{out}': {exc.strerror or exc}",
            fix="free disk space or pass another --out; checkpoints already probed are cached "
            "and are not probed again",
        ) from exc


def check_writable(out: Path) -> None:
    """The result folder can be written, before minutes of probing depend on it."""
    if out.exists() and not out.is_dir():
        raise DiagError(f"--out '{out}' is a file", fix="pass a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".diag-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DiagError(
            f"cannot write results to '{out}': {exc.strerror or exc}",
            fix="pass a writable --out folder",
        ) from exc
