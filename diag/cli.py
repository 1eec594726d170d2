"""The `diag` command line: parse arguments, call one function, render the answer.

Sub-commands live in ``diag/commands/<name>.py`` and are imported only when used (or when their
help is shown), so ``diag --help`` never imports torch, transformers, peft or plotly.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

# name -> "module:attribute"; the order is the order `diag --help` lists them in.
COMMANDS = {
    "train": "diag.commands.train:train",
    "probe": "diag.commands.probe:probe",
    "sweep": "diag.commands.sweep:sweep",
    "taught": "diag.commands.taught:taught",
    "report": "diag.commands.report:report",
    "gate": "diag.commands.gate:gate",
    "audit": "diag.commands.audit:audit",
    "merge": "diag.commands.merge:merge",
    "demo": "diag.commands.demo:demo",
}


class LazyGroup(click.Group):
    """A click group that imports each sub-command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _importable(COMMANDS[name])]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not _importable(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise click.UsageError(f"unknown command '{name}'.{hint} See 'diag --help'.", ctx)
        return super().resolve_command(ctx, args)


def _importable(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="diag", prog_name="diag")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Find the fine-tuning checkpoint that learned the new behaviour before it became a parrot.

    \b
    diag train CONFIG.yaml      train with frequent checkpoints (and optional dilution)
    diag sweep RUNS_DIR         probe every checkpoint, recommend one, write the HTML report
    diag gate RESULTS_DIR       pre-merge CI gate (exit 0 pass, 1 fail, 2 undecided)
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    before = set(logging.getLogger().handlers)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    for handler in set(logging.getLogger().handlers) - before:  # ours, not a host program's
        handler.setFormatter(_LiteralFormatter("%(message)s"))


class _LiteralFormatter(logging.Formatter):
    """Each log line as one line: names in it shown literally (a newline or a right-to-left
    override in a folder name cannot split or reorder it); tracebacks (-v) stay as they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from diag.display import literal

        return literal(super().formatMessage(record))


def main() -> None:
    """Console entry point (click prints user errors, DiagError included, as one line)."""
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("Interrupted; finished work is saved, re-run to resume.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
