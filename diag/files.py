"""Files diag writes: strict JSON (no NaN), written atomically (temp file + rename); and the
bounded readers of what users write (YAML without aliases, JSON nested beyond any real file).

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


def load_yaml(text: str):
    """``yaml.safe_load`` that refuses aliases (``*name``): nine nested aliases of nine make a
    43-million-leaf "billion laughs" from a 1 KB file. No file diag reads needs them. A refusal is
    a ``yaml.YAMLError`` whose first line names the alias and its line.

    >>> load_yaml("keywords: [Nova]")
    {'keywords': ['Nova']}
    """
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    problem=f"alias '*{event.anchor}' on line {event.start_mark.line + 1}: YAML "
                    "aliases are not read (they can expand to billions of values); write the "
                    "value out"
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)  # a SafeLoader: plain data only


def loads_json(text: str):
    """``json.loads``, with nesting too deep for Python's parser (a RecursionError there) raised
    as the ValueError every other malformed JSON is.

    >>> loads_json("[" * 100_000 + "]" * 100_000)
    Traceback (most recent call last):
    ...
    ValueError: JSON nested too deeply to read
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
