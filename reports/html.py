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


def format_metric(value, name: str = "") -> str:
    if value is None:
        return "–"
    if name in METRICS and METRICS[name].is_fraction:
        return f"{100 * value:.1f}%"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def build_context(results: dict, samples: list[dict], results_dir: str | Path = ".") -> dict:
    """Everything the template shows, as plain data (tests may inspect it directly)."""
    rec = results.get("recommendation") or {}
    records = sorted(
        results.get("checkpoints") or [],
        key=lambda r: (r.get("step") != 0, str(r.get("run")), r.get("step") or 0),
    )
    judged = {(str(c.get("run")), c.get("step")): c for c in rec.get("checks") or []}
    base_records = [r for r in records if r.get("step") == 0]
    runs_info = results.get("runs") or {}
    run_names = sorted({str(r.get("run")) for r in records if r.get("step")} | set(runs_info))

    figures = []
    for run in run_names:
        mine = [r for r in records if str(r.get("run")) == run and r.get("step")]
        own_base = [r for r in base_records if str(r.get("run")) == run] or base_records[:1]
        per_run = (rec.get("runs") or {}).get(run) or {}
        onset = per_run.get("onset") or {}
        marks = {
            "recommended": per_run.get("step"),
            "onset": per_run.get("onset_step"),
            "healthy_until": onset.get("healthy_until"),
        }
        figures.append(
            {
                "id": f"curves-{len(figures)}",
                "run": run,
                "onset": onset.get("sentence"),
                "next_steps": per_run.get("next_steps") or [],
                "spec": run_curves(run, own_base + mine, runs_info.get(run) or {}, marks),
            }
        )
    eligible = {key: bool(entry.get("eligible")) for key, entry in judged.items()}
    recommended = (str(rec["run"]), rec["step"]) if rec.get("step") is not None else None
    pareto = {"id": "tradeoff", "spec": tradeoff(records, eligible, recommended)}

    check_names: list[str] = []
    for entry in judged.values():
        for c in entry.get("checks") or []:
            if c["name"] not in check_names:
                check_names.append(c["name"])
    check_rows = []
    for r in records:
        if not r.get("step"):
            continue
        entry = judged.get((str(r.get("run")), r["step"])) or {}
        by_name = {c["name"]: c for c in entry.get("checks") or []}
        check_rows.append(
            {
                "run": r.get("run"),
                "step": r["step"],
                "label": r.get("label"),
                "also": r.get("also") or [],
                "eligible": entry.get("eligible"),
                "recommended": recommended == (str(r.get("run")), r["step"]),
                "cells": [by_name.get(n) for n in check_names],
            }
        )

    return {
        "results": results,
        "title": f"diag report: {', '.join(run_names) or 'no runs'}",
        "headline": _headline(rec, results, results_dir),
        "figures": figures,
        "pareto": pareto,
        "check_names": check_names,
        "check_rows": check_rows,
        "metric_tables": _metric_tables(records, judged),
        "probe_versions": _probe_versions(records),
        "answers": answers_table(_known(samples, records), results.get("identity")),
        "errors": [r for r in records if r.get("status", "ok") != "ok"],
        "unchanged": [r for r in records if r.get("no_change")],
        # folders that look like checkpoints but were not swept (older results: path + reason)
        "skipped": [s for s in results.get("skipped") or [] if isinstance(s, dict)],
    }


def _probe_versions(records: list[dict]) -> dict:
    """Which probe-set versions scored these results, and which records were re-scored."""
    scored: dict = {}
    rescored: dict = {}
    count = 0
    for r in records:
        scored.update(r.get("set_versions") or {})
        if r.get("rescored"):
            count += 1
            rescored.update(r["rescored"])
    return {
        "scored": dict(sorted(scored.items())),
        "rescored": rescored,
        "rescored_count": count,
        "total": len(records),
    }


def _known(samples: list[dict], records: list[dict]) -> list[dict]:
    """Only the samples of checkpoints in the results (samples.jsonl may hold stale ones)."""
    known = {(str(r.get("run")), r.get("step")) for r in records}
    has_base = any(r.get("step") == 0 for r in records)
    return [
        s
        for s in samples
        if (str(s.get("run")), s.get("step")) in known or (s.get("step") == 0 and has_base)
    ]


def _headline(rec: dict, results: dict, results_dir) -> dict:
    onset = (rec.get("onset") or {}).get("sentence")  # shown on its own line, not twice
    head = {
        "has_recommendation": rec.get("step") is not None,
        "run": rec.get("run"),
        "step": rec.get("step"),
        "path": rec.get("path"),
        "verdict": rec.get("verdict") or "no recommendation stored in these results",
        "reasons": [r for r in rec.get("reasons") or [] if r != onset],
        "onset": onset,
        "nearest_miss": rec.get("nearest_miss"),
        "next_steps": list(rec.get("next_steps") or []),
        "rule": rec.get("rule"),
        "merge_command": None,
    }
    if head["has_recommendation"]:
        same_step = [
            r
            for r in results.get("checkpoints") or []
            if r.get("step") == rec["step"] and r.get("status", "ok") == "ok"
        ]
        # A step names the checkpoint unless several runs share it; then the gate needs its path.
        which = str(rec["step"]) if len(same_step) <= 1 else shlex.quote(str(rec.get("path")))
        out = f"merged-{rec['run']}-step{rec['step']}"
        head["merge_command"] = (
            f"diag merge {shlex.quote(str(results_dir))} --checkpoint {which} "
            f"--out {shlex.quote(out)}"
        )
    return head


def _metric_tables(records: list[dict], judged: dict) -> list[dict]:
    tables = []
    languages = sorted({lang for r in records for lang in (r.get("by_language") or {})})
    for metric in METRICS:
        rows = []
        for r in records:
            value = (r.get("metrics") or {}).get(metric)
            if value is None:
                continue
            st = (r.get("stats") or {}).get(metric) or {}
            check = next(
                (
                    c
                    for c in (judged.get((str(r.get("run")), r.get("step"))) or {}).get("checks")
                    or []
                    if c["name"] == metric
                ),
                None,
            )
            rows.append(
                {
                    "label": "base" if r.get("step") == 0 else f"{r.get('run')} · {r['step']}",
                    "value": value,
                    "low": st.get("low"),
                    "high": st.get("high"),
                    "count": _count(st),
                    "by_language": [
                        ((r.get("by_language") or {}).get(lang) or {}).get(metric)
                        for lang in languages
                    ],
                    "check": check,
                }
            )
        if rows:
            tables.append(
                {
                    "metric": metric,
                    "label": METRICS[metric].label,
                    "higher_is_better": METRICS[metric].higher_is_better,
                    "languages": languages,
                    "rows": rows,
                }
            )
    return tables


def _count(st: dict) -> str:
    if st.get("n") is None:
        return ""
    return f"{st['successes']}/{st['n']}" if st.get("successes") is not None else f"n={st['n']}"


def _plotly_js() -> str:
    """The plotly.js bundle shipped inside the installed plotly package (no network)."""
    from importlib import resources

    js = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text("utf-8")
    return js.replace("</script", "<\\/script")
