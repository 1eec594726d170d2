"""`diag taught RUNS_DIR`: what each run was taught, as the identity YAML a user would write."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option(
    "--data",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Training data for runs whose trainer records none (HF Trainer, TRL, unsloth). Repeatable.",
)
@click.option(
    "--eval-data",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Rows the runs did not train on, to score a task on. Repeatable.",
)
@click.option(
    "--settle-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="Leave out checkpoints modified more recently than this.",
)
def taught(runs_dir, data, eval_data, settle_seconds):
    """Print what each run under RUNS_DIR was taught and where that came from.

    The identity is read from diag's own manifest, or derived from the training data the run's
    trainer records (ms-swift args.json, XTuner config, axolotl/LLaMA-Factory model card,
    torchtune config) or that --data names. The output is the YAML `diag sweep --identity`
    takes: check it, edit it, pass it back. A narrow task the rest of the data teaches (the
    questions it is scored on, held out or seen) is described in the comments.
    """
    from diag.data.teaching import identity_yaml
    from diag.diagnostics.discover import discover
    from diag.diagnostics.targets import resolve_targets
    from diag.display import literal

    found = discover(runs_dir, settle_seconds=settle_seconds)
    if not found.runs:
        from diag.errors import DiagError

        raise DiagError(
            found.describe_nothing_found(runs_dir), fix="point at the folder holding the runs"
        )
    targets = resolve_targets(found, None, data, eval_data, announce=False)
    for i, (name, what) in enumerate(targets.items()):
        if i:
            click.echo("---")
        for line in identity_yaml(what, name).splitlines():
            click.echo(literal(line))
