"""The decision in the terminal: a ``rich`` table of checkpoints and a short verdict.

``print_summary(results)`` is what ``diag sweep`` and ``diag report`` show; other commands may call
it with their own ``rich`` console (e.g. one writing to a string in tests).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.display import literal


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def checkpoint_table(results: dict) -> Table:
    """One row per checkpoint: headline metrics, eligibility and the failed checks in red."""
    rec = results.get("recommendation") or {}
    judged = {(str(c.get("run")), c.get("step")): c for c in rec.get("checks") or []}
    picked = (str(rec.get("run")), rec.get("step")) if rec.get("step") is not None else None
    table = Table(title="checkpoints", show_lines=False, header_style="bold")
    for name, justify in (
        ("run", "left"),
        ("step", "right"),
        ("identity [95% CI]", "right"),
        ("retention", "right"),
        ("drift", "right"),
        ("leakage", "right"),
        ("modal", "right"),
        ("verdict", "left"),
    ):
        table.add_column(name, justify=justify)
    records = sorted(
        results.get("checkpoints") or [],
        key=lambda r: (r.get("step") != 0, str(r.get("run")), r.get("step") or 0),
    )
    seen_base = False
    for r in records:
        if r.get("step") == 0:
            if seen_base:
                continue  # one base row is enough when every run shares it
            seen_base = True
        m = r.get("metrics") or {}
        st = (r.get("stats") or {}).get("identity_recall") or {}
        identity = _pct(m.get("identity_recall"))
        if st.get("low") is not None and st.get("high") is not None:
            identity += f" [{_pct(st['low'])}–{_pct(st['high'])}]"
        key = (str(r.get("run")), r.get("step"))
        verdict = _verdict_cell(r, judged.get(key), key == picked)
        table.add_row(
            "base" if r.get("step") == 0 else Text(literal(r.get("run"))),  # never markup
            str(r.get("step")),
            identity,
            "–" if m.get("retention") is None else f"{m['retention']:.2f}",
            "–" if m.get("drift") is None else f"{m['drift']:.3g}",
            _pct(m.get("parrot_leakage")),
            _pct(m.get("modal_share")),
            verdict,
        )
    return table


def _verdict_cell(record: dict, entry: dict | None, picked: bool) -> Text:
    if record.get("step") == 0:
        return Text("base model", style="dim")
    if record.get("status", "ok") != "ok":
        return Text(f"error: {literal(record.get('error'))}", style="bold red")
    if entry is None:
        return Text("not judged", style="dim")
    if entry.get("eligible"):
        return Text(
            "★ recommended" if picked else "eligible", style="bold green" if picked else "green"
        )
    failed = [c["name"] for c in entry.get("checks") or [] if c["blocking"] and not c["passed"]]
    return Text("fails " + ", ".join(failed), style="red")


def verdict_lines(results: dict) -> list[str]:
    """The short verdict: the decision, then its reasons (plain text, numbers included)."""
    rec = results.get("recommendation")
    if not rec:
        return ["no recommendation in these results (re-render with `diag report RESULTS_DIR`)"]
    lines = [rec.get("verdict") or "no verdict", *(f"  - {r}" for r in rec.get("reasons") or [])]
    steps = rec.get("next_steps") or []
    return lines + (["next steps:", *(f"  - {step}" for step in steps)] if steps else [])


def print_summary(results: dict, console: Console | None = None) -> None:
    """Print the checkpoint table and the verdict to ``console`` (stdout by default)."""
    console = console or Console()
    console.print(checkpoint_table(results))
    lines = verdict_lines(results)
    rec = results.get("recommendation") or {}
    style = "bold green" if rec.get("step") is not None else "bold red"
    console.print(Text(literal(lines[0]), style=style))
    for line in lines[1:]:
        console.print(Text(literal(line)))
