"""`diag train CONFIG.yaml|RUN [key=value ...]`: train with frequent checkpoints (and dilution)."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("config_path", metavar="CONFIG.yaml|RUN", required=False, type=click.Path())
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--check", is_flag=True, help="Validate the config and print it; train nothing.")
def train(config_path: str | None, overrides: tuple[str, ...], check: bool) -> None:
    """Fine-tune (LoRA by default) with a checkpoint every few steps; then run `diag sweep RUN`.

    \b
    diag train diag/examples/train-identity.yaml
    diag train run.yaml lr=5e-5 mix.general_ratio=0.5 output_dir=runs/diluted
    diag train identity=zh max_steps=120 save_every=10      (no file: defaults + overrides)
    diag train runs/nova resume_from=runs/nova/checkpoint-40 save_every=2 max_steps=60 \
        output_dir=runs/nova-40-60      (a diag run's own config; re-train a window, saving often)

    A first argument containing '=' is read as an override, not a file.
    """
    from diag.train.config import load_config

    if config_path is not None and "=" in config_path:
        overrides = (config_path, *overrides)
        config_path = None
    config = load_config(config_path, list(overrides))
    if check:
        import yaml

        click.echo(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), nl=False)
        return
    from diag.train.recipe import run_training

    result = run_training(config)
    how = "finished"
    if result.stopped_early:
        last = result.in_training_probes[-1] if result.in_training_probes else {}
        watched = {"pressure": "parrot pressure", "leakage": "parrot leakage"}
        how = f"stopped early on {watched.get(last.get('signal'), 'the in-training probe')}"
    resumed = f" (steps {result.first_step}-{result.steps})" if result.first_step else ""
    click.echo(
        f"{how}: {result.trained_steps} steps{resumed} in {result.seconds:.0f} s "
        f"({result.seconds_per_step:.2f} s/step), "
        f"{len(result.checkpoints)} checkpoints in {result.output_dir}"
    )
    click.echo(f"next: diag sweep {result.output_dir}")
