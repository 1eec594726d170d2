"""`diag sweep RUNS_DIR`: probe every checkpoint under a folder, recommend one, write the report."""

from __future__ import annotations

from pathlib import Path

import click

from diag.commands import generation_options, policy_options, sweep_set_options


@click.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--base", help="Base model for every checkpoint (default: what each one names).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Result folder (default: RUNS_DIR/diag): results.json, scores.csv, samples.jsonl, report.",
)
@sweep_set_options
@click.option("--system", help="System prompt for every checkpoint (default: as trained).")
@click.option(
    "--template",
    help="Prompt template for every checkpoint: a format string with {input}, or an XTuner "
    "template name such as internlm2_chat (default: as trained).",
)
@generation_options
@click.option("--lora-alpha", type=float, help="LoRA alpha for XTuner/DeepSpeed weights.")
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Allow full unpickling of .bin/.pt files that need it (runs code from the file).",
)
@click.option(
    "--settle-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Skip checkpoints modified more recently than this (still being written).",
)
@click.option(
    "--full",
    "full_for",
    multiple=True,
    metavar="STEP|PATH",
    help="Measure this checkpoint with the full suite even if the decision does not rest on it "
    "(staged sweep; repeatable), e.g. before `diag gate --checkpoint STEP`.",
)
@click.option(
    "--ray",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[auto|local|ADDRESS]",
    help="Probe on a Ray cluster, one model replica per actor (per GPU where there are GPUs): "
    "a running cluster or a new local one (auto, the default for a bare --ray), always a new "
    "local one (local), or a cluster address (HOST:6379, ray://HOST:10001). Runs must be at "
    "the same path on every node (docs/scale.md). Needs pip install 'diag[ray]'.",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    help="Model replicas on Ray (default: one per GPU, or one per 4 CPUs without GPUs).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Probe in this many processes on this machine's CPU, each with its own copy of the "
    "model and an equal share of the cores: faster for small models, whose decoding does not "
    "use several cores well (2 on 2 cores: docs/scale.md). Memory: one model per worker.",
)
@policy_options("for the recommendation; default: the built-in policy")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--quiet", is_flag=True, help="No progress display; print only the verdict.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "rich", "plain"]),
    default="auto",
    show_default=True,
    help="Progress as a rich display or one plain line per checkpoint (CI logs).",
)
def sweep(
    runs_dir, trust_remote_code, policy_file, overrides, no_report, quiet, log_format, **options
):
    """Probe every checkpoint under RUNS_DIR against its base model; cached and resumable.

    Finds checkpoint-N folders (HF Trainer/TRL, LLaMA-Factory, axolotl, ms-swift, unsloth; LoRA
    or full) and the final model beside them, torchtune epoch_N, XTuner iter_N.pth, DeepSpeed
    ZeRO-1/2/3 global_stepN, and plain adapter folders (docs/formats.md). Folders that look like
    checkpoints but cannot be swept are listed with the fix. Re-running only probes new or
    changed checkpoints; an interrupted sweep resumes where it stopped.
    """
    from diag.diagnostics.sweeper import sweep as run_sweep

    result = run_sweep(
        runs_dir,
        trust_remote_code=trust_remote_code,
        policy=_policy(policy_file, overrides),
        progress="quiet" if quiet else log_format,
        **options,
    )
    report_failed = None
    if not no_report:
        from diag.display import literal
        from diag.errors import DiagError
        from diag.reports.build import write_report

        try:
            click.echo(f"report: {literal(write_report(result))}", err=True)
        except DiagError as exc:  # the results are written: show them, then say what failed
            report_failed = exc
    if not quiet:
        from diag.reports.terminal import print_summary

        print_summary(result.data)
    _print_outcome(result)
    if report_failed is not None:
        raise report_failed


def _print_outcome(result) -> None:
    """What was not swept and why, the failed checkpoints, then one line of totals."""
    from diag.display import literal

    data = result.data
    for skipped in data.get("skipped", []):
        fix = f" (fix: {skipped['fix']})" if skipped.get("fix") else ""
        click.echo(literal(f"skipped {skipped['path']}: {skipped['reason']}{fix}"), err=True)
    errors = [c for c in data["checkpoints"] if c["status"] == "error"]
    for c in errors:
        click.echo(literal(f"error {c['run']} step {c['step']}: {c['error']}"), err=True)
    timing = data["timing"]
    click.echo(
        f"{len(data['checkpoints'])} checkpoints ({timing['probed']} probed, {timing['cached']} "
        f"from cache, {len(errors)} failed) in {timing['seconds']:.1f} s -> {literal(result.out)}"
    )


def _policy(policy_file, overrides):
    """A Policy from --policy/--set, or None for the default (loaded by the sweep)."""
    if policy_file is None and not overrides:
        return None
    from diag.diagnostics.policy import load_policy

    return load_policy(policy_file, overrides)
