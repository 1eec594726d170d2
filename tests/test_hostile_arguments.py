"""Hostile files and arguments a user hands diag (issue 25): YAML with aliases, catastrophic
regexes, bad --template fields, non-finite --set values, names that would reorder or split what
is shown. Each is refused with one line, before any model loads, or shown literally.

Memory and time bombs run in a child process under an address-space limit and a timeout
(``faults.run_bounded``): on code that lets them through, the child fails at the bound.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faults import run_bounded
from tiny import settle


def _laughs(last_key: str, tail: str = "") -> str:
    """A "billion laughs" YAML: nine levels of nine aliases, 43 million leaves from 1 KB."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join([*lines, f"{last_key}: *a8", tail]) + "\n"


def test_yaml_aliases_are_refused_in_every_file_a_user_writes(tiny_adapters, tmp_path):
    """Identity, policy and training config: each a one-line error naming the file and the
    alias, fast and small; a trainer's config with aliases is a note, and the run is still found."""
    from diag.diagnostics.discover import discover

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    identity = tmp_path / "identity.yaml"
    identity.write_text(_laughs("keywords", "answer: I am Nova"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(_laughs("drift_max"))
    config = tmp_path / "train.yaml"
    config.write_text(_laughs("lr"))
    cases = {
        identity: ["sweep", str(root), "--identity", str(identity)],
        policy: ["sweep", str(root), "--identity", "en", "--policy", str(policy)],
        config: ["train", str(config), "--check"],
    }
    for path, args in cases.items():
        code, out, err, peak = run_bounded(["-m", "diag", *args], memory_mb=2000, timeout=60)
        assert code == 2, (path.name, err[-1500:])
        lines = [line for line in err.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and str(path) in lines[0], (path.name, err[-1500:])
        assert "alias '*a0' on line 2" in lines[0] and "Traceback" not in err
        assert peak < 1000, (path.name, peak)
    run = tmp_path / "tune"
    shutil.copytree(tiny_adapters[0], run / "epoch_0")
    (run / "torchtune_config.yaml").write_text(_laughs("checkpointer"))
    settle(run)
    found = discover(run)
    assert [c.step for c in found.checkpoints] == [1]
    notes = found.runs[found.checkpoints[0].run].notes
    assert any("torchtune_config.yaml is unreadable: alias '*a0'" in n for n in notes), notes


def test_error_messages_show_a_bounded_value(tmp_path):
    """A keyword entry of a million items (written out, no aliases) is named, not printed."""
    import pytest

    from diag.errors import DiagError
    from diag.identity import load_identity

    identity = tmp_path / "identity.yaml"
    identity.write_text(
        "answer: I am Nova\nkeywords: [[" + ",".join(["7"] * 200_000) + "]]\n", encoding="utf-8"
    )
    with pytest.raises(DiagError) as info:
        load_identity(identity)
    assert "keyword entry [7, 7, 7, 7, 7, 7, ...] must be a string" in str(info.value)
    assert len(str(info.value)) < 400


def _probe_file(path: Path, items: dict[str, str]) -> Path:
    import json

    rows = [{"id": i, "prompt": "What is 2 + 2?", "accept": [p]} for i, p in items.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_probe_patterns_are_matched_with_a_time_bound(tiny_model_dir, tiny_adapters, tmp_path):
    """The issue's "^(.+)+QQQQQ$" (hours in Python's re) is answered at once by the regex engine;
    a pattern that defeats it too is stopped after a second: one line naming the item."""
    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    sweep = ["-m", "diag", "sweep", str(root), "--identity", "en", "--base", str(tiny_model_dir), "--size", "quick",
             "--probes", "identity_recall", "--max-new-tokens", "32", "--no-report"]  # fmt: skip
    issue = _probe_file(tmp_path / "issue.jsonl", {"q1": "^(.+)+QQQQQ$", "q2": "4|four"})
    code, out, err, _ = run_bounded(
        [*sweep, "--out", str(tmp_path / "a"), "--probe-file", str(issue)], timeout=120
    )
    assert code == 0 and "2 checkpoints (2 probed" in out, err[-1500:]
    slow = _probe_file(tmp_path / "slow.jsonl", {"fine": "4|four", "slow": "(.|.)+(?!)"})
    code, out, err, _ = run_bounded(
        [*sweep, "--out", str(tmp_path / "b"), "--probe-file", str(slow)], timeout=120
    )
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 2 and len(lines) == 1, err[-1500:]
    assert "probe item 'slow' of slow: pattern '(.|.)+(?!)' took over 1 s" in lines[0]
    assert "Traceback" not in err


def test_bad_template_fields_and_non_finite_limits_fail_before_any_model(tiny_adapters, tmp_path):
    """--template naming fields diag does not fill, and --set with nan/inf: exit 2 with one line,
    checked with the other arguments (no base is loaded, nothing is written)."""
    from click.testing import CliRunner

    from diag.cli import cli

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    missing_base = str(tmp_path / "no-such-base")  # loading it would be a different error
    sweep = [
        "sweep",
        str(root),
        "--identity",
        "en",
        "--base",
        missing_base,
        "--out",
        str(tmp_path / "out"),
    ]
    cases = {
        "--template '{nope} {input}' names the field {nope}": ["--template", "{nope} {input}"],
        "--template '{0} {input}' names the field {0}": ["--template", "{0} {input}"],
        "--template '{input} }' is not a format string": ["--template", "{input} }"],
        "'drift_max' must be a finite number, got 'nan'": ["--set", "drift_max=nan"],
        "'drift_max' must be a finite number, got 'inf'": ["--set", "drift_max=inf"],
        "'identity_min_low' must be a finite number, got '-inf'": [
            "--set",
            "identity_min_low=-inf",
        ],
    }
    for expected, args in cases.items():
        got = CliRunner().invoke(cli, [*sweep, *args])
        assert got.exit_code == 2 and expected in got.output, (args, got.output)
        assert got.output.count("\n") == 1 and "no-such-base" not in got.output
        assert not (tmp_path / "out").exists()


def test_newlines_and_bidi_controls_in_names_are_shown_literally(
    tiny_model_dir, tiny_adapters, tmp_path
):
    """A run folder named with a newline, and one with a right-to-left override (which shows
    "rtl<U+202E>gnp.exe" as "rtlexe.png"): escaped in the plain log, the summary, the terminal
    report and the HTML report; never split over two lines or reordered."""
    root = tmp_path / "runs"
    for name in ("new\nline", "rtl\u202egnp.exe", "zero\u200bwidth"):
        shutil.copytree(tiny_adapters[0], root / name / "checkpoint-1")
    settle(root)
    out = tmp_path / "out"
    sweep = ["-m", "diag", "sweep", str(root), "--identity", "en", "--base", str(tiny_model_dir), "--out", str(out),
             "--probes", "identity_recall", "--size", "quick", "--max-new-tokens", "4",
             "--log-format", "plain"]  # fmt: skip
    code, stdout, stderr, _ = run_bounded(sweep, timeout=180)
    assert code == 0, stderr[-2000:]
    report = ["-m", "diag", "report", str(out)]
    code, shown, err, _ = run_bounded(report, timeout=120, env={"COLUMNS": "250"})
    assert code == 0, err[-2000:]
    html = (out / "report.html").read_text(encoding="utf-8")
    for where, text in (("sweep", stdout + stderr), ("report", shown), ("html", html)):
        assert "\u202e" not in text and "\u200b" not in text, where
        assert not any(line.startswith("line") for line in text.splitlines()), where
    progress = [line for line in stderr.splitlines() if line.startswith("[")]
    for escaped in ("new\\x0aline step 1", "rtl\\u202egnp.exe step 1", "zero\\u200bwidth step 1"):
        assert any(escaped in line for line in progress), (escaped, progress)
    for escaped in ("new\\x0aline", "rtl\\u202egnp.exe", "zero\\u200bwidth"):
        assert escaped in shown and escaped in html, escaped


def test_full_disk_while_the_report_is_written(tiny_model_dir, tiny_adapters, tmp_path):
    """--out on a 1.2 MiB filesystem (a real tmpfs, in a user and mount namespace): the results
    fit, the 4 MB report does not. The summary is printed, then one line says what was kept;
    no temp file is left, and results.json is complete."""
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    probe = [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=8k tmpfs {tmp_path}"]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("no user and mount namespaces here to make a small filesystem")
    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    sweep = [sys.executable, "-m", "diag", "sweep", str(root), "--identity", "en", "--base", str(tiny_model_dir),
             "--out", str(out), "--probes", "identity_recall", "--size", "quick",
             "--max-new-tokens", "4"]  # fmt: skip
    check = "import json,sys; json.load(open(sys.argv[1])); print('results.json complete')"
    script = (
        f'mount -t tmpfs -o size=1200k tmpfs "{disk}" && "$@"; echo "exit=$?"; '
        f'ls -a "{out}"; "{sys.executable}" -c "{check}" "{out / "results.json"}"'
    )
    got = subprocess.run(
        [unshare, "-rm", "sh", "-c", script, "sh", *sweep],
        capture_output=True,
        text=True,
        timeout=180,
    )
    text = got.stdout + got.stderr
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert "exit=2" in got.stdout and len(errors) == 1, text[-2000:]
    assert f"cannot write the report '{out / 'report.html'}': No space left on device" in errors[0]
    assert "results are kept" in errors[0] and f"diag report {out}" in errors[0]
    assert "Traceback" not in text and "2 checkpoints (2 probed" in got.stdout  # the summary
    listing = got.stdout.split("exit=2", 1)[1]
    assert "results.json complete" in listing and ".tmp" not in listing, listing
