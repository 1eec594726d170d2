"""A stored sweep: read ``results.json``/``samples.jsonl`` back and view the scores as a DataFrame.

No model and no torch needed: ``diag.load_sweep("runs/diag").scores()`` works on any machine that
has the result folder. The schema is documented in ``docs/results-schema.md``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from diag.errors import DiagError
from diag.metrics import METRICS
from diag.records import SCHEMA_VERSION, SweepRecord

SCORE_COLUMNS = [
    "run",
    "step",
    "path",
    "format",
    "status",
    "metric",
    "value",
    "low",
    "high",
    "n",
    "base_value",
    "higher_is_better",
    "stage",
]


def score_rows(data: SweepRecord | dict) -> list[dict]:
    """Long format: one row per checkpoint x metric (metrics not run are left out)."""
    rows = []
    for ckpt in SweepRecord.coerce(data).checkpoints:
        for metric, value in ckpt.metrics.items():
            if value is None:
                continue
            s = ckpt.stat(metric)
            known = METRICS.get(metric)
            rows.append(
                {
                    "run": ckpt.run,
                    "step": ckpt.step,
                    "path": ckpt.path,
                    "format": ckpt.format,
                    "status": ckpt.status,
                    "metric": metric,
                    "value": value,
                    "low": s.low,
                    "high": s.high,
                    "n": s.n,
                    "base_value": s.base_value,
                    "higher_is_better": known.higher_is_better if known else None,
                    "stage": ckpt.stage,
                }
            )
    return rows


def scores_frame(data: SweepRecord | dict):
    """The long-format scores as a pandas DataFrame (columns: :data:`SCORE_COLUMNS`)."""
    import pandas as pd

    rows = score_rows(data)
    columns = {}
    for name in SCORE_COLUMNS:
        values = [row.get(name) for row in rows]
        # text stays Python str: pandas' Arrow strings refuse a run name with undecodable bytes
        # (kept as surrogate escapes), which every other file diag writes shows literally
        text = any(isinstance(v, str) for v in values)
        columns[name] = pd.Series(values, dtype=object if text else None)
    return pd.DataFrame(columns, columns=SCORE_COLUMNS)


@dataclass
class SweepResult:
    """A sweep's results: ``data`` is the results.json dict, ``record`` the same as typed
    records (:class:`~diag.records.SweepRecord`); ``out`` the folder it lives in."""

    data: dict
    out: Path | None = None

    @functools.cached_property
    def record(self) -> SweepRecord:
        return SweepRecord.from_dict(self.data)

    @property
    def checkpoints(self) -> list[dict]:
        return self.data.get("checkpoints") or []

    @property
    def recommendation(self) -> dict | None:
        return self.data.get("recommendation")

    @property
    def runs(self) -> dict:
        return self.data.get("runs") or {}

    def scores(self):
        """One row per checkpoint x metric, as a pandas DataFrame."""
        return scores_frame(self.data)

    def samples(self) -> list[dict]:
        """Every probe prompt/answer/score of the sweep (from ``samples.jsonl``)."""
        if self.out is None or not (self.out / "samples.jsonl").is_file():
            return []
        return read_jsonl(self.out / "samples.jsonl")

    def checkpoint(self, run: str, step: int) -> dict | None:
        return next((c for c in self.checkpoints if c["run"] == run and c["step"] == step), None)

    def __repr__(self) -> str:
        record = self.record
        ok = sum(c.ok for c in record.checkpoints)
        rec = record.recommendation
        return (
            f"SweepResult({ok}/{len(record.checkpoints)} checkpoints ok, "
            f"recommended: {rec.run} step {rec.step}, out={self.out})"
        )


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def load_sweep(folder: str | Path) -> SweepResult:
    """Read a stored sweep (the ``--out`` folder of ``diag sweep``, or its results.json).

    >>> result = load_sweep("runs/diag")                               # doctest: +SKIP
    >>> result.scores().query("metric == 'identity_recall'")  # doctest: +SKIP
    """
    path = Path(folder)
    results = path if path.suffix == ".json" else path / "results.json"
    if not results.is_file():
        raise DiagError(
            f"no sweep results at '{results}'",
            fix="run `diag sweep RUNS_DIR` first, or pass its --out folder",
        )
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DiagError(f"'{results}' is not valid JSON: {exc}") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise DiagError(
            f"'{results}' has schema_version {version!r}; this diag reads {SCHEMA_VERSION}",
            fix="re-run `diag sweep` with this version of diag (cached probes are reused)",
        )
    problem = _shape_problem(data)
    if problem:
        raise DiagError(
            f"'{results}' is not a diag sweep result: {problem}",
            fix="re-run `diag sweep` to write it again (cached probes are reused)",
        )
    return SweepResult(data, results.parent)


def _shape_problem(data: dict) -> str | None:
    """What is wrong with the structure every reader of results.json relies on, or None."""
    records = data.get("checkpoints")
    if not isinstance(records, list):
        return f"'checkpoints' is {type(records).__name__}, not a list"
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            return f"checkpoints[{i}] is {type(record).__name__}, not an object"
        if not isinstance(record.get("step"), int) or isinstance(record.get("step"), bool):
            return f"checkpoints[{i}] has no integer 'step'"
        if not isinstance(record.get("metrics", {}), dict):
            return f"checkpoints[{i}].metrics is not an object"
    for key, kind in (("runs", dict), ("skipped", list), ("recommendation", dict)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"'{key}' is {type(data[key]).__name__}, not {kind.__name__}"
    return None
