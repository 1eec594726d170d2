"""`diag demo`: train, sweep and report the seed's identity story end to end, offline."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo-runs"),
    show_default=True,
    help="Where runs, results and the report go.",
)
@click.option(
    "--size",
    type=click.Choice(["staged", "full", "quick"]),
    default="staged",
    show_default=True,
    help="Sweep size: staged (screen every checkpoint, full suite where the decision is made), "
    "full or quick (the screen only).",
)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def demo(out: Path, size: str, overrides: tuple[str, ...]) -> None:
    """Train an identity into SmolLM2 twice (undiluted, diluted), sweep both, recommend one.

    \b
    Runs offline on 2 CPU cores in about 7 minutes when the machine is otherwise idle. Overrides
    apply to both runs, e.g. `diag demo max_steps=80 save_every=10`. Re-running reuses finished
    runs and cached sweep results.
    """
    from diag.train.demo_pipeline import demo_config, run_demo

    demo_config(list(overrides))  # all config errors before anything loads
    result = run_demo(out, list(overrides), size=size)
    from diag.records import SweepRecord
    from diag.reports.terminal import print_summary

    sweep = SweepRecord.from_dict(result.results)
    print_summary(sweep)
    rec = sweep.recommendation
    t = result.timing
    for name in ("undiluted", "diluted"):
        run = t.get(name, {})
        if "seconds_per_step" in run:
            click.echo(f"{name}: {run.get('steps')} steps, {run['seconds_per_step']:.2f} s/step")
    click.echo(f"sweep {t.get('sweep_seconds', 0):.0f} s, total {t.get('total_seconds', 0):.0f} s")
    if rec.step is not None:
        click.echo(f"recommended: run '{rec.run}' step {rec.step} ({rec.path})")
    else:
        click.echo("recommended: none (see the reasons above)")
    for run, info in sorted(rec.runs.items()):
        pick = f"step {info.step}" if info.step is not None else "none"
        seen = f"from step {info.onset_step}" if info.onset_step is not None else "not detected"
        click.echo(f"  {run}: pick {pick}; parrot onset {seen}")
    report = result.out / "results" / "report.html"
    if report.is_file():
        click.echo(f"report: {report}")
    click.echo(f"next: diag gate {result.out / 'results'}")
