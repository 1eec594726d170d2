"""How the gate's verdict is shown to CI: Markdown (``$GITHUB_STEP_SUMMARY``) and JUnit XML.

Pure text from a :class:`~diag.diagnostics.verdict.GateResult`; the terminal table lives in the CLI.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from diag.diagnostics.verdict import GateResult, checkpoint_name

from diag.records import Check

ICONS = {"pass": "✅", "fail": "❌", "undecided": "❔", "warning": "⚠️"}


def check_state(check: Check) -> str:
    """'pass' | 'fail' | 'warning' (a failed non-blocking check) | 'undecided' (no evidence)."""
    if check.passed:
        return "pass"
    if not check.blocking:
        return "warning"
    return "undecided" if check.no_evidence else "fail"


def fmt_number(value: Any) -> str:
    """3 significant digits; '—' for None."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def to_markdown(result: GateResult) -> str:
    """A GitHub-flavoured Markdown summary: verdict line, checkpoint, one table row per check."""
    lines = [f"## {ICONS[result.verdict]} diag gate: {result.headline}", ""]
    if result.checkpoint:
        ck = result.checkpoint
        lines.append(
            f"Checkpoint `{ck.get('path')}` ({checkpoint_name(ck)}, {result.selected_by}); "
            f"policy {result.policy_hash} ({result.policy_source}); results `{result.results_dir}`."
        )
        lines.append("")
    if result.nearest_miss and result.miss_checks:
        miss = result.nearest_miss
        lines += [f"Nearest miss `{miss.get('path')}` ({checkpoint_name(miss)}), not eligible:", ""]
    for c_list in (result.checks, result.miss_checks):
        if not c_list:
            continue
        lines += [
            "| | Check | Value | Threshold | Severity | Detail |",
            "|---|---|---|---|---|---|",
        ]
        for c in c_list:
            detail = c.detail.replace("|", "\\|")
            severity = "blocking" if c.blocking else "warning"
            lines.append(
                f"| {ICONS[check_state(c)]} | {c.name} | {fmt_number(c.value)} | "
                f"{fmt_number(c.threshold)} | {severity} | {detail} |"
            )
        lines.append("")
    if result.measured:
        lines += ["| Measured | Value | 95% interval | Base |", "|---|---|---|---|"]
        for m in result.measured:
            interval = (
                "—" if m["low"] is None else f"{fmt_number(m['low'])}–{fmt_number(m['high'])}"
            )
            lines.append(
                f"| {m['label']} | {fmt_number(m['value'])} | {interval} | {fmt_number(m['base'])} |"
            )
        lines.append("")
    for title, items in (("Why", result.problems), ("Notes", result.notes)):
        if items:
            lines.append(f"**{title}:**")
            lines += [f"- {item}" for item in items]
            lines.append("")
    lines.append(f"Exit code {result.exit_code} (0 pass, 1 fail, 2 undecided).")
    return "\n".join(lines) + "\n"


def to_junit(result: GateResult) -> str:
    """JUnit XML: one testcase per check (failure = blocking check failed, error = no evidence).

    Warnings pass, with the detail in ``system-out``. With no checkpoint to judge there is one
    testcase, ``gate``, failing (nothing eligible) or in error (no evidence); when nothing is
    eligible, the nearest miss's checks follow as testcases of class ``diag.gate.nearest_miss``,
    so a CI page shows which check kept it from shipping.
    """
    import xml.etree.ElementTree as ET

    cases = _check_cases(result) + _verdict_case(result)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", name="diag gate", **counts)
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"diag gate: {checkpoint_name(result.checkpoint)}"
        if result.checkpoint
        else "diag gate",
        skipped="0",
        timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        **counts,
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("verdict", result.verdict),
        ("exit_code", str(result.exit_code)),
        ("checkpoint", (result.checkpoint or {}).get("path") or ""),
        ("nearest_miss", (result.nearest_miss or {}).get("path") or ""),
        ("policy_hash", result.policy_hash or ""),
    ):
        ET.SubElement(props, "property", name=name, value=str(value))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _check_cases(result: GateResult) -> list:
    """One testcase per check of the judged checkpoint, then per check of the nearest miss."""
    import xml.etree.ElementTree as ET

    cases = []
    judged = [("diag.gate", c) for c in result.checks]
    judged += [("diag.gate.nearest_miss", c) for c in result.miss_checks]
    for classname, c in judged:
        name = (
            c.name
            if classname == "diag.gate"
            else f"{c.name} ({checkpoint_name(result.nearest_miss)})"
        )
        case = ET.Element("testcase", classname=classname, name=name, time="0")
        state = check_state(c)
        text = f"value={fmt_number(c.value)} threshold={fmt_number(c.threshold)}: {c.detail}"
        if state == "fail":
            ET.SubElement(case, "failure", message=c.detail, type="blocking").text = text
        elif state == "undecided":
            ET.SubElement(case, "error", message=c.detail, type="no-evidence").text = text
        else:
            ET.SubElement(case, "system-out").text = (
                "WARNING " if state == "warning" else ""
            ) + text
        cases.append(case)
    return cases


def _verdict_case(result: GateResult) -> list:
    """The ``gate`` (nothing judged) or ``evidence`` (undecided) testcase, when there is one."""
    import xml.etree.ElementTree as ET

    evidence = [
        p for p in result.problems if not any(p.startswith(f"{c.name}: ") for c in result.checks)
    ]
    if result.checks and not (result.verdict == "undecided" and evidence):
        return []
    case = ET.Element(
        "testcase", classname="diag.gate", name="evidence" if result.checks else "gate", time="0"
    )
    kind = "failure" if result.verdict == "fail" else "error"
    if result.verdict == "fail" and result.problems:  # nothing eligible: its headline, whole
        message = result.problems[0]
    else:
        message = ("; ".join(evidence or result.problems) or result.headline)[:500]
    ET.SubElement(case, kind, message=message, type=result.verdict).text = "\n".join(
        result.problems
    )
    return [case]
