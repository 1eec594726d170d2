"""The command line stays thin and fast: no heavy imports for --help, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from diag.cli import cli

HEAVY = ("torch", "transformers", "peft", "plotly", "ray")


def _modules_after(args: list[str]) -> tuple[int, str, list[str]]:
    code = (
        "import json, sys\n"
        "from diag.cli import cli\n"
        "try:\n"
        f"    cli({args!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, proc.stdout, json.loads(lines[-1]) if lines else []


def test_help_lists_commands_without_heavy_imports():
    rc, out, modules = _modules_after(["--help"])
    assert rc == 0
    for name in cli.list_commands(None):
        assert name in out
    assert not [m for m in HEAVY if m in modules]


def test_every_subcommand_help_is_light():
    runner = CliRunner()
    listed = runner.invoke(cli, ["--help"]).output
    for name in cli.list_commands(None):
        assert name in listed
        rc, out, modules = _modules_after([name, "--help"])
        assert rc == 0, out
        heavy = [m for m in HEAVY if m in modules]
        assert not heavy, f"`diag {name} --help` imports {heavy}"


def test_unknown_command_suggests_the_close_one():
    result = CliRunner().invoke(cli, ["sweeep"])
    assert result.exit_code == 2
    assert "Did you mean 'sweep'" in result.output


def test_install_claims_no_generic_top_level_names(tmp_path):
    """The repository's probes/, train/, ... install only as diag.probes, diag.train, ..."""
    code = (
        "import importlib.util\n"
        "print([n for n in ('probes', 'train', 'reports', 'diagnostics') if importlib.util.find_spec(n)])\n"
        "import diag.probes, diag.train, diag.reports, diag.diagnostics\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_cli_defaults_match_the_probe_suite():
    """--help promises the suite's generation settings (the CLI does not import them)."""
    from diag.probes.suite import DEFAULT_GENERATION

    from diag.backend.loading import auto_batch_size
    from diag.commands.probe import probe

    defaults = {p.name: p.default for p in probe.params}
    assert defaults["max_new_tokens"] == DEFAULT_GENERATION.max_new_tokens
    assert defaults["batch_size"] == "auto"  # on a CPU: the suite's own batch size
    assert auto_batch_size("cpu", None, 48) == DEFAULT_GENERATION.batch_size


def test_batch_size_is_a_number_or_auto(tmp_path):
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path), "--batch-size", "0"])
    assert result.exit_code == 2
    assert "'0' is not a number of prompts >= 1, or auto" in result.output
