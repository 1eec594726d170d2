"""Write the HTML report of a stored sweep: a pure function of its results and samples."""

from __future__ import annotations

from pathlib import Path


def write_report(sweep, out: str | Path | None = None) -> Path:
    """Render ``report.html`` (or ``out``) for a stored sweep and return its path.

    ``sweep``: what :func:`diag.load_sweep` returns (``.data``, ``.out``, ``.samples()``); the
    report shows exactly the recommendation its data holds.
    """
    from diag.reports.html import render_report

    path = Path(out) if out else sweep.out / "report.html"
    return render_report(sweep.data, sweep.samples(), path, results_dir=sweep.out)
