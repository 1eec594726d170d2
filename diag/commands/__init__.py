"""One module per CLI sub-command; each imports only click and light diag modules at top level."""

from pathlib import Path

import click


def probe_set_options(command):
    """--probes, --probe-file and --size: which probes and prompts a command asks (probe, sweep)."""
    options = [
        click.option("--probes", help="Comma-separated probe names (default: all)."),
        click.option(
            "--probe-file",
            "probe_files",
            multiple=True,
            type=click.Path(path_type=Path),
            help="Extra probe set (JSONL: id, language, prompt, accept). Repeatable.",
        ),
        click.option(
            "--size", type=click.Choice(["full", "quick"]), default="full", show_default=True
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
