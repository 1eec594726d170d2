"""Shapes of what diag writes to disk, shared by probes, sweep, recommendation, report and gate.

Every file diag writes is self-describing: it carries ``schema_version`` and a ``tool`` block.

A **probe summary** (``diag probe --out DIR`` writes it as ``summary.json``; a sweep stores one per
checkpoint) is a dict::

    {
      "schema_version": 1,
      "tool": {"name": "diag", "version": "0.1.0"},
      "model": {"base": "...", "adapter": "... or null"},
      "probe_sets": {"identity_recall": "sha256:...", ...},     # content hashes of the data
      "generation": {...GenerationConfig...},
      "identity": {"name": ..., "hash": ...},
      "metrics":   {"identity_recall": 0.97, "near_miss": 0.8, "general_accuracy": 0.62,
                    "retention": 0.98, "drift": 0.05, "seq_rep_4": 0.02, "loop_rate": 0.0,
                    "parrot_leakage": 0.0, "modal_share": 0.03},      # diag.metrics.METRICS, None if not run
      "stats": {<metric>: MetricStats.to_dict()},                 # intervals, counts, paired data
      "by_language": {"en": {<metric>: value}, "zh": {...}},
      "probes": {<probe>: {"version": 1, "direction": "higher"|"lower"}},
    }

A **sweep result** (``results.json``) has ``schema_version``, ``tool``, ``created``, ``base``,
``runs`` ({run: {"path", "base", "train_loss": [[step, loss]], "eval_loss": [...]}}),
``checkpoints`` (list of checkpoint records: ``run``, ``step`` (0 for the base), ``path``,
``format``, ``fingerprint``, ``status`` ("ok"/"error"), ``error``, ``metrics``, ``stats``,
``by_language``) and ``recommendation`` (``run``, ``step``, ``path``, ``reasons``, ``onset_step``;
fields null when there is none).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class MetricStats:
    """Everything the policy and the report need to judge one metric, beyond its point value.

    value: the point estimate (same as ``metrics[name]``).
    low/high: confidence interval (95 % Wilson for proportions), when one applies.
    successes/n: for proportions (identity recall, accuracy, leakage, ...).
    base_value: the same metric on the base model, when the probe compares with it.
    paired: for retention: {"both", "base_only", "ckpt_only", "neither"} counts over general items
        ("base_only" = base right, checkpoint wrong), and "newly_wrong": [item ids].
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    successes: int | None = None
    n: int | None = None
    base_value: float | None = None
    paired: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}

    @classmethod
    def from_dict(cls, data: dict) -> MetricStats:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def tool_block() -> dict:
    from diag import __version__

    return {"name": "diag", "version": __version__}


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
