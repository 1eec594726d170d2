"""Per-sample rows -> the probe summary (metrics, intervals, per-language values).

Kept apart from scoring (inspect_ai style): scoring decides each sample, this only counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from diag.probes.reference import Reference
from diag.probes.text import modal_groups

from diag.identity import IdentitySpec
from diag.metrics import METRICS
from diag.records import MetricStats
from diag.stats import clustered_wilson, wilson_interval


def proportion(flags: list[bool], base_value: float | None = None, **extra) -> MetricStats | None:
    """Share of True with its 95 % Wilson interval; None when there are no samples."""
    if not flags:
        return None
    k, n = sum(bool(f) for f in flags), len(flags)
    low, high = wilson_interval(k, n)
    return MetricStats(k / n, low, high, k, n, base_value, extra=extra)


def mean_stats(values: list[float], base_value: float | None = None, **extra) -> MetricStats | None:
    """Mean with a normal-approximation 95 % interval (for continuous per-sample scores)."""
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.959963984540054 * sd / math.sqrt(n)
    return MetricStats(mean, mean - half, mean + half, n=n, base_value=base_value, extra=extra)


def retention_stats(rows: list[dict]) -> MetricStats | None:
    """acc(model) / acc(base) over items both were graded on, with McNemar's paired counts."""
    paired = [r for r in rows if r.get("base_passed") is not None]
    if not paired:
        return None
    counts = {"both": 0, "base_only": 0, "ckpt_only": 0, "neither": 0}
    newly_wrong = []
    for r in paired:
        b, c = bool(r["base_passed"]), bool(r["passed"])
        key = "both" if b and c else "base_only" if b else "ckpt_only" if c else "neither"
        counts[key] += 1
        if key == "base_only":
            newly_wrong.append(r["item_id"])
    base_right = counts["both"] + counts["base_only"]
    model_right = counts["both"] + counts["ckpt_only"]
    value = model_right / base_right if base_right else None
    return MetricStats(
        value,
        n=len(paired),
        successes=model_right,
        paired={**counts, "newly_wrong": newly_wrong},
        extra={"base_correct": base_right},
    )


def clustered_proportion(rows: list[dict], field: str, base_value: float | None) -> MetricStats:
    """Identity recall: paraphrases of one question in one language form a cluster, so the
    interval is the clustered Wilson one; the answer's mean log-probability rides along."""
    logps = [s["answer_logprob"] for s in rows if s.get("answer_logprob") is not None]
    clusters: dict[tuple, list[bool]] = {}
    for s in rows:
        clusters.setdefault((s["language"], s.get("group") or s["item_id"]), []).append(
            bool(s[field])
        )
    low, high, deff = clustered_wilson(list(clusters.values()))
    stats = proportion(
        [s[field] for s in rows],
        base_value,
        answer_logprob=sum(logps) / len(logps) if logps else None,
        clusters=len(clusters),
        design_effect=round(deff, 4),
    )
    return replace(stats, low=low, high=high)


def modal_share_stats(rows: list[dict], field: str, base_value: float | None) -> MetricStats:
    """Share of answers in the largest near-identical group, grouped within this slice (so the
    overall value and the per-language ones differ)."""
    largest = max(modal_groups([s[field] for s in rows]))
    low, high = wilson_interval(largest, len(rows))
    return MetricStats(largest / len(rows), low, high, largest, len(rows), base_value)


def loop_proportion(rows: list[dict], field: str, base_value: float | None) -> MetricStats:
    """Loop rate, with how many answers ran into the token limit (a loop usually does)."""
    hits = sum(bool(s["hit_limit"]) for s in rows)
    return proportion(
        [s[field] for s in rows], base_value, hit_max_rate=hits / len(rows), hit_max=hits
    )


# Metric.aggregate -> (rows of its probe, its field, the base's value) -> MetricStats | None
AGGREGATORS: dict[str, Callable[[list[dict], str, float | None], MetricStats | None]] = {
    "proportion": lambda rows, field, base: proportion([s[field] for s in rows], base),
    "loop_proportion": loop_proportion,
    "clustered_proportion": clustered_proportion,
    "mean": lambda rows, field, base: mean_stats([s[field] for s in rows], base),
    "paired_ratio": lambda rows, field, base: retention_stats(rows),
    "modal_share": modal_share_stats,
}


def _metric_stats(
    samples: list[dict], base: Callable[[str], float | None]
) -> dict[str, MetricStats | None]:
    """Every metric in the table computed from one slice of samples (None when not run)."""
    by_probe: dict[str, list[dict]] = {}
    for s in samples:
        by_probe.setdefault(s["probe"], []).append(s)
    out: dict[str, MetricStats | None] = {}
    for name, metric in METRICS.items():
        # a row without the metric's field did not measure it (no leakage without an identity)
        rows = [s for s in by_probe.get(metric.probe, []) if metric.field in s]
        out[name] = AGGREGATORS[metric.aggregate](rows, metric.field, base(name)) if rows else None
    return out


def keyword_stats(samples: list[dict]) -> dict[str, dict]:
    """Per-keyword recall: for each keyword group, the share of identity prompts that say it.

    Same prompts and the same clustered interval as ``identity_recall``, so a name learned before
    an owner shows as one curve reaching 100 % while the other still climbs.
    """
    ident = [s for s in samples if s["probe"] == "identity_recall" and "keywords" in s]
    out = {}
    for keyword in dict.fromkeys(k for s in ident for k in s["keywords"]):
        flags = [bool(s["keywords"].get(keyword)) for s in ident]
        clusters: dict[tuple, list[bool]] = {}
        for s, flag in zip(ident, flags):
            clusters.setdefault((s["language"], s.get("group") or s["item_id"]), []).append(flag)
        low, high, _ = clustered_wilson(list(clusters.values()))
        stats = proportion(flags)
        out[keyword] = replace(stats, low=low, high=high).to_dict()
    return out


def summarize(
    samples: list[dict], identity: IdentitySpec | None, reference: Reference | None
) -> tuple[dict, dict, dict]:
    """(metrics, stats, by_language) for the summary; values are None for probes not run.

    ``identity_recall`` (overall) counts only prompts in the identity's own language(s): a model
    taught a Chinese sentence is not expected to answer English prompts with it; every language
    is still listed in ``by_language``.
    """

    def base_overall(metric: str) -> float | None:
        return reference.base_value(metric) if reference else None

    languages = identity.languages if identity is not None else ()
    in_identity_lang = [
        s for s in samples if s["probe"] != "identity_recall" or s["language"] in languages
    ]
    if not any(s["probe"] == "identity_recall" for s in in_identity_lang):
        in_identity_lang = samples  # no prompt in the identity's language: use them all
    overall = _metric_stats(in_identity_lang, base_overall)
    stats = {m: s.to_dict() for m, s in overall.items() if s is not None}
    if "identity_recall" in stats:
        stats["identity_recall"]["extra"]["languages"] = list(languages)
    metrics = {m: (s.value if s is not None else None) for m, s in overall.items()}

    by_language = {}
    for lang in sorted({s["language"] for s in samples}):
        per = _metric_stats(
            [s for s in samples if s["language"] == lang],
            lambda m, lang=lang: reference.base_value(m, lang) if reference else None,
        )
        by_language[lang] = {m: (s.value if s is not None else None) for m, s in per.items()}
    return metrics, stats, by_language
