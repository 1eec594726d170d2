"""`diag gate`: every exit code, fail-closed cases, and the CI renderings (JUnit, Markdown, JSON)."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from diag.diagnostics.cache import Fingerprinter
from diag.diagnostics.checks import TASK_CHECKS
from diag.diagnostics.policy import CHECKS as ALL_CHECKS
from diag.diagnostics.verdict import gate
from diag.diagnostics.verdict_output import to_junit, to_markdown
from synthetic_sweep import ckpt, learned_then_parrot, sweep

from diag.cli import cli
from diag.errors import DiagError

# the checks of an identity run (these results predate judged_on: no task checks)
CHECKS = [c for c in ALL_CHECKS if c not in TASK_CHECKS]


def write_sweep(tmp_path: Path, data: dict, fingerprints: bool = True) -> Path:
    """Checkpoint folders on disk (so freshness can be checked), then results.json after them.

    fingerprints: store content fingerprints as the sweep does; False keeps the synthetic ones,
    which leaves the gate only file times to judge freshness by.
    """
    for record in data["checkpoints"]:
        if record["step"] == 0:
            continue
        folder = tmp_path / record["path"]
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
        files[0].write_text('{"r": 4}')
        files[1].write_bytes(f"weights {record['step']}".encode())
        record["path"] = str(folder)
        if fingerprints:
            record["fingerprint"] = Fingerprinter(None).fingerprint(files, root=folder)
    out = tmp_path / "runs" / "diag"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data))
    return out


def run_gate(*args: str, env: dict | None = None):
    wide = {"COLUMNS": "200", **(env or {})}  # rich wraps at the terminal width
    return CliRunner().invoke(cli, ["gate", *args], env=wide)


@pytest.fixture
def parrot_sweep(tmp_path) -> Path:
    return write_sweep(tmp_path, sweep(*learned_then_parrot()))


def test_recommended_checkpoint_passes_exit_0(parrot_sweep, tmp_path):
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    result = run_gate(str(parrot_sweep), "--junit", str(junit), "--summary", str(summary))
    assert result.exit_code == 0, result.output
    assert "PASS: run-a step 300 passes every blocking check" in result.output
    assert "lower bound reaches 70%" in result.output  # statistics, not only point values
    assert "McNemar p=" in result.output

    suite = ET.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    assert [c.get("name") for c in cases] == list(CHECKS)  # one testcase per check
    assert suite.get("failures") == "0" and suite.get("errors") == "0"

    md = summary.read_text()
    assert md.startswith("## ✅ diag gate: PASS: run-a step 300")
    assert "| | Check | Value | Threshold | Severity | Detail |" in md
    assert md.count("\n| ✅ | ") == len(CHECKS)


def test_last_checkpoint_fails_exit_1_and_says_which_checks(parrot_sweep, tmp_path):
    junit = tmp_path / "gate.xml"
    result = run_gate(str(parrot_sweep), "--checkpoint", "600", "--junit", str(junit))
    assert result.exit_code == 1, result.output
    failed = ["near_miss", "retention", "drift", "parrot_leakage", "modal_share", "loop_rate"]
    assert f"FAIL: run-a step 600 fails {', '.join(failed)}" in result.output
    assert "significantly below 0.90" in result.output

    root = ET.parse(junit).getroot()
    failures = {c.get("name") for c in root.iter("testcase") if c.find("failure") is not None}
    assert failures == set(failed)
    assert root.get("tests") == str(len(CHECKS)) and root.get("failures") == str(len(failed))


def test_nothing_eligible_is_a_fail_with_the_nearest_miss(tmp_path):
    parrots = [r for r in learned_then_parrot() if r["step"] >= 400]
    damaged = ckpt(200, identity=(30, 30), leakage=0.15)  # learned; leaks a little
    results = write_sweep(tmp_path, sweep(damaged, *parrots))
    junit = tmp_path / "gate.xml"
    summary = tmp_path / "summary.md"
    result = run_gate(str(results), "--junit", str(junit), "--summary", str(summary))
    assert result.exit_code == 1, result.output
    assert "no checkpoint is eligible" in result.output
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    gate_case = [c for c in cases if c.get("classname") == "diag.gate"]
    assert [c.get("name") for c in gate_case] == ["gate"]
    assert gate_case[0].find("failure") is not None
    # the nearest miss, check by check, so a CI page shows which check kept it from shipping
    miss = [c for c in cases if c.get("classname") == "diag.gate.nearest_miss"]
    assert [c.get("name") for c in miss] == [f"{name} (run-a step 200)" for name in CHECKS]
    failing = {c.get("name").split()[0] for c in miss if c.find("failure") is not None}
    assert failing and "status" not in failing and "identity_recall" not in failing
    md = summary.read_text()
    assert "Nearest miss" in md and md.count("\n| ❌ | ") == len(failing)
    data = json.loads(run_gate(str(results), "--json").output)
    assert data["checkpoint"] is None  # the miss is not what merge would take
    assert data["nearest_miss"]["step"] == 200 and len(data["nearest_miss"]["checks"]) == len(
        CHECKS
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no sweep results"),
        ("{not json", "is not valid JSON"),
        (json.dumps({"schema_version": 99, "checkpoints": []}), "schema_version 99"),
        (json.dumps({"schema_version": 1}), "not a diag sweep result"),
    ],
)
def test_missing_or_bad_results_are_undecided_exit_2(tmp_path, content, expected):
    folder = tmp_path / "results"
    folder.mkdir()
    if content is not None:
        (folder / "results.json").write_text(content)
    junit = tmp_path / "gate.xml"
    result = run_gate(str(folder), "--junit", str(junit))
    assert result.exit_code == 2, result.output
    assert "UNDECIDED" in result.output and expected in result.output
    errors = [c for c in ET.parse(junit).getroot().iter("testcase") if c.find("error") is not None]
    assert len(errors) == 1  # CI still shows why


def test_probe_error_on_the_chosen_checkpoint_is_undecided(tmp_path):
    records = learned_then_parrot()
    records[2] = ckpt(300, identity=(30, 30), status="error")
    results = write_sweep(tmp_path, sweep(*records))
    result = run_gate(str(results), "--checkpoint", "300")
    assert result.exit_code == 2, result.output
    assert "probing failed: adapter shapes do not match the base" in result.output


def test_missing_blocking_metric_is_undecided_but_a_clear_failure_still_fails(tmp_path):
    healthy, parrot = ckpt(300), learned_then_parrot()[-1]
    healthy["metrics"]["drift"] = None
    parrot["metrics"]["drift"] = None
    results = write_sweep(tmp_path, sweep(healthy, parrot))
    undecided = gate(results, checkpoint=str(healthy["path"]))
    assert undecided.verdict == "undecided" and undecided.exit_code == 2
    assert any("drift not measured" in p for p in undecided.problems)
    decided = gate(results, checkpoint="600")
    assert decided.verdict == "fail"  # leakage etc. failed on evidence; missing drift can't save it


def test_checkpoint_rewritten_after_the_sweep_is_undecided_even_with_the_old_mtime(parrot_sweep):
    record = json.loads((parrot_sweep / "results.json").read_text())["checkpoints"][3]
    weights = Path(record["path"]) / "adapter_model.safetensors"
    assert run_gate(str(parrot_sweep)).exit_code == 0
    before = weights.stat()
    weights.write_bytes(b"weights 999")  # same size, then the old timestamps back
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = run_gate(str(parrot_sweep))
    assert result.exit_code == 2, result.output
    assert "changed after it was probed (fingerprint" in result.output


def test_without_fingerprints_file_times_still_catch_a_newer_checkpoint(tmp_path):
    results = write_sweep(tmp_path, sweep(*learned_then_parrot()), fingerprints=False)
    record = json.loads((results / "results.json").read_text())["checkpoints"][3]
    weights = Path(record["path"]) / "adapter_model.safetensors"
    assert run_gate(str(results)).exit_code == 0
    later = time.time() + 60
    os.utime(weights, (later, later))
    result = run_gate(str(results))
    assert result.exit_code == 2, result.output
    assert "after the results were written" in result.output


def test_unfinished_sweep_is_undecided(parrot_sweep):
    data = json.loads((parrot_sweep / "results.json").read_text())
    data["complete"] = False  # what results.json says while the sweep is still running
    (parrot_sweep / "results.json").write_text(json.dumps(data))
    result = run_gate(str(parrot_sweep))
    assert result.exit_code == 2 and "did not finish" in result.output
    # nothing eligible *so far* is not a fail either: the rest may not be probed yet
    nothing_yet = run_gate(str(parrot_sweep), "--set", "identity_min_low=0.95")
    assert nothing_yet.exit_code == 2, nothing_yet.output
    assert "UNDECIDED: no checkpoint: the sweep" in nothing_yet.output


def test_relative_checkpoint_paths_are_found_from_elsewhere(tmp_path, monkeypatch):
    results = write_sweep(tmp_path, sweep(*learned_then_parrot()))
    data = json.loads((results / "results.json").read_text())
    for record in data["checkpoints"]:  # as a sweep of `runs/` run from tmp_path stores them
        if record["step"]:
            record["path"] = str(Path(record["path"]).relative_to(tmp_path))
    data["root"] = str(tmp_path / "runs")
    (results / "results.json").write_text(json.dumps(data))
    elsewhere = tmp_path / "ci-workspace"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert gate(results).verdict == "pass"


def test_checkpoint_files_gone_is_undecided(parrot_sweep):
    record = json.loads((parrot_sweep / "results.json").read_text())["checkpoints"][3]
    for f in Path(record["path"]).iterdir():
        f.unlink()
    Path(record["path"]).rmdir()
    result = run_gate(str(parrot_sweep))
    assert result.exit_code == 2 and "not found" in result.output


def test_policy_file_tightens_and_chooses_warnings(parrot_sweep, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("identity_min_low: 0.95\n")  # 30/30 has a Wilson lower bound of 0.886
    result = run_gate(str(parrot_sweep), "--policy", str(strict))
    assert result.exit_code == 1 and "no checkpoint is eligible" in result.output

    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(
        "checks:\n  near_miss: warning\n  retention: warning\n  drift: warning\n"
        "  parrot_leakage: warning\n  modal_share: 'off'\n  loop_rate: warning\n"
    )
    outcome = gate(parrot_sweep, policy=lenient, checkpoint="600")
    assert outcome.verdict == "pass"  # everything that fails is only a warning now
    assert {c.name for c in outcome.warnings} == {
        "near_miss",
        "retention",
        "drift",
        "parrot_leakage",
        "loop_rate",
    }
    assert "modal_share" not in {c.name for c in outcome.checks}
    assert "| ⚠️ | drift |" in to_markdown(outcome)
    root = ET.fromstring(to_junit(outcome).split("\n", 1)[1])
    assert root.get("failures") == "0"
    assert "WARNING" in "".join(c.findtext("system-out") or "" for c in root.iter("testcase"))


def test_checkpoint_by_path_and_bad_choices(parrot_sweep, tmp_path):
    path = json.loads((parrot_sweep / "results.json").read_text())["checkpoints"][4]["path"]
    result = run_gate(str(parrot_sweep), "--checkpoint", path)
    assert result.exit_code == 1 and "run-a step 400" in result.output

    unknown = run_gate(str(parrot_sweep), "--checkpoint", "350")
    assert unknown.exit_code == 2
    assert "checkpoint '350' is not in the sweep results" in unknown.output
    assert "Traceback" not in unknown.output

    two_runs = write_sweep(tmp_path / "two", sweep(ckpt(300, run="a"), ckpt(300, run="b")))
    with pytest.raises(DiagError, match=r"step 300 exists in several runs \(a, b\)"):
        gate(two_runs, checkpoint="300")


def test_json_output_and_github_step_summary(parrot_sweep, tmp_path):
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step output\n")
    result = run_gate(str(parrot_sweep), "--json", env={"GITHUB_STEP_SUMMARY": str(step_summary)})
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["verdict"] == "pass" and data["exit_code"] == 0
    assert data["checkpoint"]["step"] == 300 and data["failed"] == []
    assert data["policy"]["hash"].startswith("sha256:")
    text = step_summary.read_text()
    assert text.startswith("earlier step output\n")  # appended, like GitHub expects
    assert "diag gate: PASS" in text


def test_set_overrides_the_policy_like_a_file(parrot_sweep):
    result = run_gate(str(parrot_sweep), "--set", "identity_min_low=0.95", "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert "--set identity_min_low=0.95" in data["policy"]["source"]
    bad = run_gate(str(parrot_sweep), "--set", "identity_min_lo=0.9")
    assert bad.exit_code == 2 and "did you mean 'identity_min_low'" in bad.output


def test_example_workflow_runs_real_diag_commands():
    """The GitHub Actions example only uses options the CLI really has."""
    import shlex

    import yaml

    workflow = Path(__file__).parents[1] / "examples" / "github-actions-gate.yml"
    steps = yaml.safe_load(workflow.read_text())["jobs"]["gate"]["steps"]
    lines = [
        line.strip()
        for step in steps
        for line in str(step.get("run", "")).splitlines()
        if line.strip().startswith("diag ")
    ]
    used = {shlex.split(line)[1] for line in lines}
    assert {"train", "sweep", "gate", "merge"} <= used
    for line in lines:
        name, *args = shlex.split(line.split(">")[0])[1:]
        command = cli.get_command(None, name)
        if command is None:  # a sibling command not in this checkout yet
            continue
        command.make_context(name, list(args))  # raises on an unknown option
