"""The decision in the terminal: a ``rich`` table of checkpoints and a short verdict.

``print_summary(results)`` is what ``diag sweep`` and ``diag report`` show; other commands may call
it with their own ``rich`` console (e.g. one writing to a string in tests).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.display import literal
from diag.records import CheckpointRecord, JudgedCheckpoint, SweepRecord


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


# (title, metric): each shown when some checkpoint measured it
COLUMNS = (("identity [95% CI]", "identity_recall"), ("task facts", "task_facts"),
           ("retention", "retention"), ("drift", "drift"), ("leakage", "parrot_leakage"),
           ("regurg.", "regurgitation"), ("pressure", "parrot_pressure"),
           ("modal", "modal_share"))  # fmt: skip


def checkpoint_table(results: SweepRecord | dict) -> Table:
    """One row per checkpoint: headline metrics, eligibility and the failed checks in red."""
    sweep = SweepRecord.coerce(results)
    rec = sweep.recommendation
    judged = {(str(c.run), c.step): c for c in rec.checks}
    picked = (str(rec.run), rec.step) if rec.step is not None else None
    records = sorted(sweep.checkpoints, key=lambda r: (r.step != 0, str(r.run), r.step or 0))
    shown = [(t, m) for t, m in COLUMNS if any(r.metric(m) is not None for r in records)]
    shown = shown or list(COLUMNS[:1])
    table = Table(title="checkpoints", show_lines=False, header_style="bold")
    table.add_column("run", justify="left")
    table.add_column("step", justify="right")
    for title, _ in shown:
        table.add_column(title, justify="right")
    table.add_column("verdict", justify="left")
    seen_base = False
    for r in records:
        if r.step == 0:
            if seen_base:
                continue  # one base row is enough when every run shares it
            seen_base = True
        table.add_row(
            "base" if r.step == 0 else Text(literal(r.run)),  # never markup
            str(r.step),
            *[_cell(r, metric) for _, metric in shown],
            _verdict_cell(r, judged.get((str(r.run), r.step)), (str(r.run), r.step) == picked),
            style="dim" if r.screened_only else None,
        )
    return table


def _cell(record: CheckpointRecord, metric: str) -> str:
    value = record.metric(metric)
    if metric == "retention":
        return "–" if value is None else f"{value:.2f}"
    if metric == "drift":
        return "–" if value is None else f"{value:.3g}"
    text = _pct(value)
    st = record.stat(metric)
    if metric == "identity_recall" and st.low is not None and st.high is not None:
        text += f" [{_pct(st.low)}–{_pct(st.high)}]"
    return text


def _verdict_cell(record: CheckpointRecord, entry: JudgedCheckpoint | None, picked: bool) -> Text:
    if record.step == 0:
        return Text("base model", style="dim")
    if not record.ok:
        return Text(f"error: {literal(record.error)}", style="bold red")
    if entry is None:
        return Text("not judged", style="dim")
    if entry.eligible:
        return Text(
            "★ recommended" if picked else "eligible" + _screen(record),
            style="bold green" if picked else "green",
        )
    failed = [c.name for c in entry.checks if c.blocking and not c.passed]
    return Text("fails " + ", ".join(failed) + _screen(record), style="red")


def _screen(record: CheckpointRecord) -> str:
    return " (screen only)" if record.screened_only else ""


def verdict_lines(results: SweepRecord | dict) -> list[str]:
    """The short verdict: the decision, then its reasons (plain text, numbers included)."""
    if isinstance(results, dict) and not results.get("recommendation"):
        return ["no recommendation in these results (re-render with `diag report RESULTS_DIR`)"]
    rec = SweepRecord.coerce(results).recommendation
    lines = [rec.verdict or "no verdict", *(f"  - {r}" for r in rec.reasons)]
    steps = rec.next_steps
    return lines + (["next steps:", *(f"  - {step}" for step in steps)] if steps else [])


def print_summary(results: SweepRecord | dict, console: Console | None = None) -> None:
    """Print the checkpoint table and the verdict to ``console`` (stdout by default)."""
    console = console or Console()
    sweep = SweepRecord.coerce(results)
    console.print(checkpoint_table(sweep))
    lines = verdict_lines(results)
    style = "bold green" if sweep.recommendation.step is not None else "bold red"
    console.print(Text(literal(lines[0]), style=style))
    for line in lines[1:]:
        console.print(Text(literal(line)))
