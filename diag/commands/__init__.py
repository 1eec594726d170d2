"""One module per CLI sub-command; each imports only click and light diag modules at top level."""

from pathlib import Path

import click


def probe_set_options(command):
    """--identity, --probes, --probe-file, --size, --languages: what a command asks (probe, sweep)."""
    options = [
        click.option(
            "--identity",
            default="en",
            show_default=True,
            help="Identity spec YAML, or 'en'/'zh' for the shipped examples.",
        ),
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
        click.option(
            "--languages",
            help="Ask only prompts in these languages, e.g. 'en' (default: en,zh). The identity's "
            "own language(s) should stay in: that is where a parrot shows first.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def policy_options(purpose: str):
    """--policy FILE and repeatable --set KEY=VALUE (gate, merge, report, sweep).

    ``purpose`` ends the --policy help, e.g. "default: the built-in policy".
    """

    def decorate(command):
        command = click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override one policy value, e.g. --set drift_max=0.3 --set checks.near_miss=warning.",
        )(command)
        return click.option(
            "--policy",
            "policy_file",
            type=click.Path(path_type=Path),
            help=f"Policy YAML: thresholds, blocking|warning|off per check ({purpose}).",
        )(command)

    return decorate
