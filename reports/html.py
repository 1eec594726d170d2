"""The HTML report: one self-contained offline file rendered from stored sweep results.

``render_report(results, samples, out_path)`` needs no model: it reads the results.json dict (with
its ``recommendation`` block) and the samples.jsonl rows. plotly.js is inlined once from the
installed ``plotly`` package; every piece of model text goes through Jinja2 autoescaping.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from diag.reports.answers import answers_table
from diag.reports.figures import run_curves, tradeoff

from diag.display import literal
from diag.files import write_text_atomic
from diag.metrics import METRICS
from diag.records import CheckpointRecord, MetricStats, RunPick, RunRecord, SweepRecord


def render_report(
    results: dict, samples: list[dict], out_path: str | Path, results_dir: str | Path | None = None
) -> Path:
    """Write the report to ``out_path`` (atomically) and return the path.

    ``results_dir`` (default: the report's folder) only appears in the suggested merge command.
    """
    out_path = Path(out_path)
    html = render_html(results, samples, results_dir or out_path.parent)
    write_text_atomic(out_path, html)
    return out_path


def render_html(results: dict, samples: list[dict], results_dir: str | Path = ".") -> str:
    """The report as a string (see ``render_report``)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("diag.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown_literally,
    )
    env.filters["metric"] = format_metric
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.0f}%"
    env.filters["lines"] = _multiline
    context = build_context(results, samples, results_dir)
    context["plotly_js"] = _plotly_js()
    return env.get_template("report.html.j2").render(**context)


def _shown_literally(value):
    """Names and answers reach the page as typed: control characters written as escapes (Jinja
    escapes the markup); the report's own trusted fragments (Markup) pass untouched."""
    import markupsafe

    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return literal(value)
    return value


def _multiline(value):
    """A model's answer or a prompt: shown literally, keeping its line breaks (the answers table
    wraps them); names and everything else go through ``finalize``, newlines escaped."""
    import markupsafe

    return markupsafe.escape(literal(value, lines=True))


def format_metric(value, name: str = "") -> str:
    if value is None:
        return "–"
    if name in METRICS and METRICS[name].is_fraction:
        return f"{100 * value:.1f}%"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def build_context(
    results: SweepRecord | dict, samples: list[dict], results_dir: str | Path = "."
) -> dict:
    """Everything the template shows, as plain data (tests may inspect it directly)."""
    sweep = SweepRecord.coerce(results)
    rec = sweep.recommendation
    records = sorted(sweep.checkpoints, key=lambda r: (r.step != 0, str(r.run), r.step or 0))
    judged = {(str(c.run), c.step): c for c in rec.checks}
    run_names = sorted({str(r.run) for r in records if r.step} | set(sweep.runs))
    eligible = {key: bool(entry.eligible) for key, entry in judged.items()}
    recommended = (str(rec.run), rec.step) if rec.step is not None else None
    check_names = list(dict.fromkeys(c.name for entry in judged.values() for c in entry.checks))
    return {
        "results": sweep,
        "title": f"diag report: {', '.join(run_names) or 'no runs'}",
        "headline": _headline(sweep, results_dir),
        "figures": [_run_figure(i, run, sweep, records) for i, run in enumerate(run_names)],
        "pareto": {"id": "tradeoff", "spec": tradeoff(records, eligible, recommended)},
        "check_names": check_names,
        "check_rows": _check_rows(records, judged, check_names, recommended),
        "stages": _stages(records),
        "metric_tables": _metric_tables(records, judged),
        "probe_versions": _probe_versions(records),
        "answers": answers_table(_known(samples, records), _identities(sweep)),
        "taught": _taught(sweep),
        "copied": _copied(samples),
        "errors": [r for r in records if not r.ok],
        "unchanged": [r for r in records if r.no_change],
        "skipped": sweep.skipped,  # folders that look like checkpoints but were not swept
    }


def _taught(sweep: SweepRecord) -> list[dict]:
    """Per run: what it was judged against and where that came from (results before per-run
    targets have none)."""
    rows = []
    for name, run in sorted(sweep.runs.items()):
        taught = run.taught
        if taught is None:
            continue
        identity = taught.identity or None
        task = taught.task or None
        terms = next(
            (r.task.get("terms") for r in sweep.checkpoints if str(r.run) == name and r.task),
            None,
        ) or next((r.task.get("terms") for r in sweep.checkpoints if r.step == 0 and r.task), [])
        rows.append(
            {
                "run": name,
                "identity": identity,
                "keywords": ", ".join(" / ".join(g) for g in (identity or {}).get("keywords", [])),
                "match": (identity or {}).get("match"),
                "source": taught.source,
                "parts": taught.parts,
                "files": taught.files,
                "warnings": taught.warnings,
                "why_none": taught.why_none,
                "task": task,
                "task_parts": taught.task_parts,
                "why_no_task": taught.why_no_task,
                "terms": terms or [],
            }
        )
    return rows


def _copied(samples: list[dict], limit: int = 20) -> list[dict]:
    """Unrelated answers that copy a passage of a training answer, with the training question
    it comes from (the strongest sign of regurgitation), latest checkpoints first."""
    rows = [s for s in samples if s.get("probe") == "regurgitation" and s.get("copied")]
    rows.sort(key=lambda s: (str(s.get("run")), -(s.get("step") or 0), str(s.get("item_id"))))
    return [
        {k: s.get(k) for k in ("run", "step", "prompt", "answer", "span", "copied_from")}
        for s in rows[:limit]
    ]


def _identities(sweep: SweepRecord) -> dict | None:
    """The identity to highlight in answers: the sweep's, or every run's keywords together."""
    if sweep.identity:
        return sweep.identity
    taught = [r.taught.identity for r in sweep.runs.values() if r.taught and r.taught.identity]
    if not taught:
        return None
    keywords = [group for spec in taught for group in spec.get("keywords", [])]
    return {"answer": taught[0].get("answer"), "keywords": keywords}


def _run_figure(index: int, run: str, sweep: SweepRecord, records: list) -> dict:
    """One run's curves (its own base, or the shared one, at step 0), with its onset marked."""
    mine = [r for r in records if str(r.run) == run and r.step]
    bases = [r for r in records if r.step == 0]
    own_base = [r for r in bases if str(r.run) == run] or bases[:1]
    per_run = sweep.recommendation.runs.get(run) or RunPick()
    marks = {
        "recommended": per_run.step,
        "onset": per_run.onset_step,
        "healthy_until": per_run.onset.healthy_until if per_run.onset else None,
    }
    info = sweep.runs.get(run) or RunRecord()
    return {
        "id": f"curves-{index}",
        "run": run,
        "onset": per_run.onset.sentence() if per_run.onset else None,
        "next_steps": per_run.next_steps or [],
        "spec": run_curves(run, own_base + mine, info, marks),
    }


def _check_rows(records, judged: dict, check_names: list[str], recommended) -> list[dict]:
    rows = []
    for r in records:
        if not r.step:
            continue
        entry = judged.get((str(r.run), r.step))
        by_name = {c.name: c for c in entry.checks} if entry else {}
        rows.append(
            {
                "run": r.run,
                "step": r.step,
                "label": r.label,
                "also": r.also,
                "eligible": entry.eligible if entry else None,
                "recommended": recommended == (str(r.run), r.step),
                "screened": r.screened_only,
                "prompts": sum((r.prompts or {}).values()),
                "stopped": [_stopped(name, info) for name, info in (r.stopped or {}).items()],
                "cells": [by_name.get(n) for n in check_names],
            }
        )
    return rows


def _stopped(name: str, info: dict) -> str:
    """'general: stopped after 64 of 116 prompts, parrot_leakage settled'; a set the screen never
    asked: 'general: not asked (nothing learned yet: identity_recall fails for certain)'."""
    settled = ", ".join(info.get("settled") or [])
    if info.get("asked") == 0:
        return f"{name}: not asked (nothing learned yet: {settled} fails for certain)"
    return (
        f"{name}: stopped after {info.get('asked')} of {info.get('of')} prompts, {settled} settled"
    )


def _stages(records: list[CheckpointRecord]) -> dict | None:
    """How many checkpoints only the screen measured, and the prompts each stage asks (None when
    every checkpoint had the full suite)."""
    screened = [r for r in records if r.screened_only]
    if not screened:
        return None
    full = [r for r in records if r.step and not r.screened_only]
    return {
        "screened": len(screened),
        "full": len(full),
        "screen_prompts": sum((screened[0].prompts or {}).values()),
        "full_prompts": sum((full[0].prompts or {}).values()) if full else None,
    }


def _probe_versions(records: list[CheckpointRecord]) -> dict:
    """Which probe-set versions scored these results, and which records were re-scored."""
    scored: dict = {}
    rescored: dict = {}
    count = 0
    for r in records:
        scored.update(r.set_versions or {})
        if r.rescored:
            count += 1
            rescored.update(r.rescored)
    return {
        "scored": dict(sorted(scored.items())),
        "rescored": rescored,
        "rescored_count": count,
        "total": len(records),
    }


def _known(samples: list[dict], records: list[CheckpointRecord]) -> list[dict]:
    """Only the samples of checkpoints in the results (samples.jsonl may hold stale ones)."""
    known = {(str(r.run), r.step) for r in records}
    has_base = any(r.step == 0 for r in records)
    return [
        s
        for s in samples
        if (str(s.get("run")), s.get("step")) in known or (s.get("step") == 0 and has_base)
    ]


def _headline(sweep: SweepRecord, results_dir) -> dict:
    rec = sweep.recommendation
    onset = rec.onset.sentence() if rec.onset else None  # shown on its own line, not twice
    head = {
        "has_recommendation": rec.step is not None,
        "run": rec.run,
        "step": rec.step,
        "path": rec.path,
        "verdict": rec.verdict or "no recommendation stored in these results",
        "reasons": [r for r in rec.reasons if r != onset],
        "onset": onset,
        "nearest_miss": rec.nearest_miss,
        "next_steps": list(rec.next_steps),
        "rule": rec.rule or None,
        "merge_command": None,
    }
    if head["has_recommendation"]:
        same_step = [r for r in sweep.checkpoints if r.step == rec.step and r.ok]
        # A step names the checkpoint unless several runs share it; then the gate needs its path.
        which = str(rec.step) if len(same_step) <= 1 else shlex.quote(str(rec.path))
        out = f"merged-{rec.run}-step{rec.step}"
        head["merge_command"] = (
            f"diag merge {shlex.quote(str(results_dir))} --checkpoint {which} "
            f"--out {shlex.quote(out)}"
        )
    return head


def _metric_tables(records: list[CheckpointRecord], judged: dict) -> list[dict]:
    tables = []
    languages = sorted({lang for r in records for lang in (r.by_language or {})})
    for name, metric in METRICS.items():
        rows = []
        for r in records:
            value = r.metric(name)
            if value is None:
                continue
            entry = judged.get((str(r.run), r.step))
            st = r.stat(name)
            rows.append(
                {
                    "label": "base" if r.step == 0 else f"{r.run} · {r.step}",
                    "screened": r.screened_only,
                    "value": value,
                    "low": st.low,
                    "high": st.high,
                    "count": _count(st),
                    "by_language": [((r.by_language or {}).get(lang) or {}).get(name) for lang in languages],
                    "check": next((c for c in entry.checks if c.name == name), None) if entry else None,
                }
            )  # fmt: skip
        if rows:
            tables.append(
                {
                    "metric": name,
                    "label": metric.label,
                    "higher_is_better": metric.higher_is_better,
                    "languages": languages,
                    "rows": rows,
                }
            )
    return tables


def _count(st: MetricStats) -> str:
    if st.n is None:
        return ""
    return f"{st.successes}/{st.n}" if st.successes is not None else f"n={st.n}"


def _plotly_js() -> str:
    """The plotly.js bundle shipped inside the installed plotly package (no network)."""
    from importlib import resources

    js = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text("utf-8")
    return js.replace("</script", "<\\/script")
