"""`diag report RESULTS_DIR`: re-render the HTML report and the verdict from stored results."""

from __future__ import annotations

from pathlib import Path

import click

from diag.commands import policy_options


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@policy_options("re-judges for this report; default: keep the stored recommendation")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Where to write the HTML (default: RESULTS_DIR/report.html).",
)
@click.option("--quiet", is_flag=True, help="Print only the report's path.")
def report(results_dir, policy_file, overrides, out, quiet):
    """Re-render RESULTS_DIR/report.html (no model needed) and print the verdict.

    With --policy/--set the checkpoints are re-judged for this report only; results.json is not
    changed (the gate reads it).
    """
    from diag.diagnostics.recommend import rejudged
    from diag.diagnostics.stored import load_sweep
    from diag.reports.build import write_report

    sweep = rejudged(load_sweep(results_dir), policy_file, overrides)
    path = write_report(sweep, out)
    if not quiet:
        from diag.reports.terminal import print_summary

        print_summary(sweep.data)
    click.echo(f"report: {path}")
