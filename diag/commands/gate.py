"""`diag gate RESULTS_DIR`: the pre-merge CI gate (exit 0 pass, 1 fail, 2 undecided)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from diag.commands import policy_options

STATE_STYLE = {"pass": "green", "fail": "red", "warning": "yellow", "undecided": "magenta"}


@click.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@policy_options("default: the built-in policy")
@click.option(
    "--checkpoint",
    default="best",
    show_default=True,
    help="Which checkpoint to judge: best (the policy's recommendation), a STEP, or a PATH.",
)
@click.option(
    "--junit", type=click.Path(path_type=Path), help="Write JUnit XML: one testcase per check."
)
@click.option(
    "--summary",
    type=click.Path(path_type=Path),
    help="Write the Markdown summary here (default: append to $GITHUB_STEP_SUMMARY when set).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the verdict as JSON instead of a table."
)
def gate(results_dir, policy_file, overrides, checkpoint, junit, summary, as_json):
    """Gate a checkpoint before merge: exit 0 pass, 1 fail or nothing eligible, 2 undecided.

    Undecided (fail closed): results missing, unreadable or of another schema version, the probe
    errored or a blocking metric is missing, or the checkpoint changed after it was probed.
    """

    from diag.diagnostics.policy import load_policy
    from diag.diagnostics.verdict import gate as run_gate
    from diag.diagnostics.verdict_output import to_junit, to_markdown
    from diag.files import write_text_atomic

    policy = load_policy(policy_file, overrides)
    source = f"policy file '{policy_file}'" if policy_file else "defaults"
    result = run_gate(results_dir, policy=policy, checkpoint=checkpoint)
    result.policy_source = source + (f" + --set {' '.join(overrides)}" if overrides else "")
    if junit:
        write_text_atomic(junit, to_junit(result))
    markdown = to_markdown(result)
    if summary:
        write_text_atomic(summary, markdown)
    elif os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write(markdown)
    if as_json:
        from diag.files import strict_json

        click.echo(strict_json(result.to_dict(), indent=2))
    else:
        render_table(result)
    click.get_current_context().exit(result.exit_code)


def render_table(result) -> None:
    """A short rich table: one row per check, then the verdict and why."""
    from rich.console import Console
    from rich.table import Table

    from diag.diagnostics.verdict_output import check_state, fmt_number

    console = Console(stderr=False, highlight=False)
    if result.checkpoint:
        ck = result.checkpoint
        console.print(
            f"[bold]diag gate[/] {ck.get('run')} step {ck.get('step')} ({result.selected_by}): "
            f"{ck.get('path')}"
        )
    if result.checks:
        table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        for column in ("", "check", "value", "threshold", "detail"):
            table.add_column(column, overflow="fold")
        for c in result.checks:
            state = check_state(c)
            mark = {"pass": "ok", "fail": "FAIL", "warning": "warn", "undecided": "??"}[state]
            table.add_row(
                f"[{STATE_STYLE[state]}]{mark}[/]",
                c.name + ("" if c.blocking else " (warning)"),
                fmt_number(c.value),
                fmt_number(c.threshold),
                c.detail,
            )
        console.print(table)
    shown_in_headline = (
        result.problems[:1] if result.verdict != "pass" and not result.failed else []
    )
    for problem in result.problems[len(shown_in_headline) :]:
        console.print(f"  - {problem}", markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"  note: {note}", markup=False, style="dim", soft_wrap=True)
    style = {"pass": "bold green", "fail": "bold red", "undecided": "bold magenta"}[result.verdict]
    console.print(result.headline, style=style, markup=False, soft_wrap=True)
