"""Rows of a training-data file as the trainers read them: JSON, JSON Lines or Parquet.

A folder (a Hugging Face dataset snapshot, LLaMA-Factory's ``file_name`` pointing at a folder)
is read file by file in name order. Every problem names the file and the line or item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diag.errors import DiagError

SUFFIXES = (".json", ".jsonl", ".parquet")
# A row's number in its file is kept so errors (and the report) can point back at it.


@dataclass(frozen=True)
class Row:
    """One record of a data file: its content, the file and where in it (1-based)."""

    data: object
    file: Path
    number: int

    @property
    def place(self) -> str:
        """ "line 3" in a JSON Lines file, "row 3" elsewhere."""
        return f"{'line' if self.file.suffix == '.jsonl' else 'row'} {self.number}"


def read_rows(path: str | Path) -> list[Row]:
    """Every row of ``path`` (a file, or a folder of data files), in order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise DiagError(
                f"data folder '{path}' holds no .json, .jsonl or .parquet file",
                fix="point at the data file itself",
            )
        return [row for f in files for row in read_rows(f)]
    if not path.is_file():
        raise DiagError(f"data file '{path}' not found", fix="check the path")
    if path.suffix == ".parquet":
        return _parquet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiagError(f"data file '{path}' cannot be read as UTF-8 text: {exc}") from exc
    if path.suffix == ".jsonl" or not text.lstrip().startswith(("[", "{")):
        return _json_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{"):  # JSON Lines saved as .json (datasets reads both)
            return _json_lines(path, text)
        raise DiagError(
            f"data file '{path}' is not valid JSON: {exc}",
            fix="a JSON list of rows, or one JSON object per line (.jsonl)",
        ) from exc
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:  # datasets' `field=` layout: {"data": [...]}
            raise DiagError(
                f"data file '{path}' is one JSON object, not a list of rows",
                fix="a JSON list of rows, or one JSON object per line (.jsonl)",
            )
        data = lists[0]
    return [Row(item, path, n) for n, item in enumerate(data, 1)]


@dataclass(frozen=True)
class NotJSON:
    """A line of a JSON Lines file that does not parse (reported with the other bad rows)."""

    why: str


def _json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(Row(json.loads(line), path, n))
        except json.JSONDecodeError as exc:
            rows.append(Row(NotJSON(exc.msg), path, n))
    return rows


def _parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise DiagError(
            f"'{path}' is Parquet and pyarrow is not installed", fix="pip install pyarrow"
        ) from exc
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DiagError(f"data file '{path}' is not readable Parquet: {first}") from exc
    return [Row(item, path, n) for n, item in enumerate(table.to_pylist(), 1)]
