"""Write the HTML report of a stored sweep: a pure function of its results and samples."""

from __future__ import annotations

from pathlib import Path

from diag.errors import DiagError

# what a sweep keeps before its report is written
KEPT = ("results.json", "samples.jsonl", "scores.csv", "cache")


def write_report(sweep, out: str | Path | None = None) -> Path:
    """Render ``report.html`` (or ``out``) for a stored sweep and return its path.

    ``sweep``: what :func:`diag.load_sweep` returns (``.data``, ``.out``, ``.samples()``); the
    report shows exactly the recommendation its data holds.
    """
    from diag.reports.html import render_report

    path = Path(out) if out else sweep.out / "report.html"
    try:
        return render_report(sweep.data, sweep.samples(), path, results_dir=sweep.out)
    except OSError as exc:  # a full disk, a read-only folder: the results are already safe
        kept = ", ".join(n for n in KEPT if (sweep.out / n).exists())
        raise DiagError(
            f"cannot write the report '{path}': {exc.strerror or exc}; the results are kept "
            f"in '{sweep.out}' ({kept}), and no partial report was left",
            fix=f"free disk space, then `diag report {sweep.out}` writes it (no model needed)",
        ) from exc
