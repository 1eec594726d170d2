"""`diag audit RESULTS_DIR`: the items whose verdict flips between the base and a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option(
    "--probes", help="Comma-separated probes (default: near_miss, general_accuracy, custom sets)."
)
@click.option("--run", "runs", multiple=True, help="Only this run (repeatable).")
@click.option("--width", default=100, show_default=True, help="Characters of each answer shown.")
def audit(results_dir: Path, probes: str | None, runs: tuple[str, ...], width: int) -> None:
    """Print every graded item whose verdict differs between the base and a checkpoint, with
    both answers side by side: a minute's reading tells whether a probe set grades right.

    After changing an item's patterns, `diag sweep` again re-scores the stored answers without
    the model; then audit again.
    """
    from diag.diagnostics.flips import format_flips, verdict_flips
    from diag.diagnostics.stored import load_sweep
    from diag.errors import DiagError

    result = load_sweep(results_dir)
    samples = result.samples()
    if not samples:
        raise DiagError(
            f"'{results_dir}' has no samples.jsonl to audit",
            fix="run `diag sweep` with this --out first",
        )
    if runs:
        samples = [s for s in samples if s.get("step") == 0 or s.get("run") in runs]
    wanted = tuple(p.strip() for p in probes.split(",") if p.strip()) if probes else None
    click.echo(format_flips(verdict_flips(samples, wanted), width))
