"""What the base model contributes to every comparison, computed once per base (and identity).

A :class:`Reference` holds the base's greedy answers used by ``drift`` (with their base
log-likelihoods), the base's per-item outcomes (paired retention, near-miss) and the base's own
metric values (so parrot/loop numbers are read relative to the base). It is built from the
records of a probe run *on the base itself*, so it can be rebuilt from a stored run without a model.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field

from diag.errors import DiagError

REFERENCE_VERSION = 2  # 2: drift texts include answers cut at the token limit


@dataclass
class Reference:
    """Base-model data shared by every checkpoint of that base.

    drift: [{"id", "language", "prompt", "answer", "logprob", "tokens"}] -- the base's complete
        greedy answers and their summed base log-probabilities.
    outcomes: {probe set: {item id: passed}} on the base (general, near_miss, custom sets).
    metrics / by_language: the base's summary values, the ``base_value`` of each metric.
    """

    base: str
    chat: dict
    generation: dict
    identity_hash: str | None
    probe_sets: dict[str, str]
    drift: list[dict] = field(default_factory=list)
    outcomes: dict[str, dict[str, bool]] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    by_language: dict[str, dict[str, float | None]] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    version: int = REFERENCE_VERSION

    def to_dict(self) -> dict:
        """JSON-ready dict (the sweep caches it per base)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Reference:
        """Inverse of :meth:`to_dict`; refuses a cache written by an incompatible version."""
        if not isinstance(data, dict) or data.get("version") != REFERENCE_VERSION:
            raise DiagError(
                "cached base reference has an unknown format "
                f"(version {data.get('version') if isinstance(data, dict) else None!r})",
                fix="delete the cached reference file; it is rebuilt from the base model",
            )
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def drift_by_id(self) -> dict[str, dict]:
        return {d["id"]: d for d in self.drift}

    def base_value(self, metric: str, language: str | None = None) -> float | None:
        if language is None:
            return self.metrics.get(metric)
        return self.by_language.get(language, {}).get(metric)
