"""Files diag writes: strict JSON (no NaN), written atomically (temp file + rename).

A reader never sees a half-written file, and a strict JSON parser (jq, JavaScript, Go) reads
every file: a non-finite number becomes null and is listed beside the data.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def strict_json(data: Any, **kwargs) -> str:
    """JSON that strict parsers accept: a non-finite number becomes ``null``, and the path and
    value of each one are listed beside the data under ``non_finite`` (top-level dicts only).

    >>> strict_json({"metrics": {"drift": float("nan")}})
    '{"metrics": {"drift": null}, "non_finite": ["metrics.drift was nan"]}'
    """
    found: list[str] = []
    clean = _finite(data, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    return json.dumps(clean, ensure_ascii=False, allow_nan=False, default=str, **kwargs)


def _finite(value: Any, where: str, found: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found.append(f"{where or 'value'} was {value}")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write strict JSON so a reader never sees a half-written file (temp file + rename)."""
    write_text_atomic(path, strict_json(data, indent=2))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text via a temp file in the same folder, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # a file name's undecodable bytes (surrogates) are written as \udcff escapes, which a
        # JSON reader turns back into the same name
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
