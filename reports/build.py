"""Re-render a stored sweep: read the results folder, (re-)judge if asked, write the report."""

from __future__ import annotations

from pathlib import Path


def rerender(
    results_dir: str | Path,
    policy_file: str | Path | None = None,
    overrides=None,
    out: str | Path | None = None,
) -> tuple[Path, dict]:
    """Write the HTML report for ``results_dir``; returns (report path, results dict shown).

    The stored recommendation is used unless a policy file or overrides (a dict or ``KEY=VALUE``
    strings) are given, or the results have none; then it is recomputed in memory (results.json is never rewritten here).
    """
    from diag.diagnostics.results import load_sweep
    from diag.reports.html import render_report

    sweep = load_sweep(results_dir)
    data = dict(sweep.data)
    stored = data.get("recommendation") or {}
    if policy_file is not None or overrides or "checks" not in stored:
        from diag.diagnostics.policy import load_policy
        from diag.diagnostics.recommend import recommend

        data["recommendation"] = recommend(data, load_policy(policy_file, overrides))
    path = Path(out) if out else sweep.out / "report.html"
    return render_report(data, sweep.samples(), path, results_dir=sweep.out), data
