"""One module per CLI sub-command; each imports only click and light diag modules at top level."""

import functools
from pathlib import Path

import click

from diag.types import DEFAULT_GENERATION, GenerationConfig


def probe_set_options(command, sizes=("full", "quick"), size_help=None):
    """--identity, --data, --probes, --probe-file, --size, --languages: what a command asks
    (probe, sweep)."""
    options = [
        click.option(
            "--identity",
            help="Identity spec YAML (or 'en'/'zh', the shipped examples) for every run. Default: "
            "what each run was taught, read from its trainer's records (`diag taught RUNS_DIR`).",
        ),
        click.option(
            "--data",
            multiple=True,
            type=click.Path(path_type=Path),
            help="Training data (json, jsonl, parquet) for runs whose trainer records none "
            "(HF Trainer, TRL, unsloth scripts). Repeatable.",
        ),
        click.option(
            "--eval-data",
            multiple=True,
            type=click.Path(path_type=Path),
            help="Rows the runs did not train on, to score a task on (default: the validation "
            "data a trainer records, else a fixed sample of training rows: fit, not "
            "generalisation). Repeatable.",
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
            "--size",
            type=click.Choice(list(sizes)),
            default=sizes[0],
            show_default=True,
            help=size_help,
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


def sweep_set_options(command):
    """probe_set_options with the sweep's sizes: staged (the default), full, quick."""
    return probe_set_options(
        command,
        sizes=("staged", "full", "quick"),
        size_help="staged: screen every checkpoint, then the full suite where the decision is "
        "made; full: the full suite on every checkpoint; quick: the screen only.",
    )


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


class BatchSize(click.ParamType):
    """A positive number of prompts, or "auto" (None)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        if (isinstance(value, int) or str(value).isdigit()) and int(value) >= 1:
            return int(value)
        self.fail(f"{value!r} is not a number of prompts >= 1, or auto", param, ctx)


def generation_options(command):
    """--max-new-tokens, --batch-size (defaults: the suite's DEFAULT_GENERATION), --device and
    --trust-remote-code: how a command runs the model (probe, sweep).

    The command receives ``generation`` (a GenerationConfig), ``device`` and
    ``trust_remote_code``; the two numbers are validated here, once.
    """

    @functools.wraps(command)
    def with_generation(*args, max_new_tokens, batch_size, **kwargs):
        # batch_size None: "auto", sized to the device once it is known
        generation = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
        return command(*args, generation=generation, **kwargs)

    options = [
        click.option(
            "--max-new-tokens",
            type=click.IntRange(min=1),
            default=DEFAULT_GENERATION.max_new_tokens,
            show_default=True,
            help="Answer length limit (tokens).",
        ),
        click.option(
            "--batch-size",
            type=BatchSize(),
            default="auto",
            show_default=True,
            help="Prompts per generation batch; auto: 64 on a CPU, what the memory holds on a GPU.",
        ),
        click.option("--device", help="cpu, cuda or mps (default: the best available)."),
        click.option(
            "--trust-remote-code",
            is_flag=True,
            help="Allow a base model that ships its own Python code.",
        ),
    ]
    for option in reversed(options):
        with_generation = option(with_generation)
    return with_generation
