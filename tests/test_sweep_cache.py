"""Re-sweeps: cache hits need no model, new or changed checkpoints are probed, resume, CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from diag.diagnostics.sweeper import sweep
from tiny import build_lora_adapter

from diag.cli import cli
from diag.types import GenerationConfig

GEN = GenerationConfig(max_new_tokens=8, batch_size=32)
FAST = dict(identity="en", size="quick", probes="identity_recall,general_accuracy", generation=GEN)


def _settle(root: Path) -> None:
    when = time.time() - 600
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (when, when))


def _run_dir(tmp_path: Path, adapters: list[Path], steps=(10, 20)) -> Path:
    root = tmp_path / "runs"
    for adapter, step in zip(adapters, steps):
        shutil.copytree(adapter, root / "lora" / f"checkpoint-{step}")
    _settle(root)
    return root


def _probed(result) -> list[tuple[str, int]]:
    return [(c["run"], c["step"]) for c in result.checkpoints if not c.get("cached")]


def _no_model(name):
    raise AssertionError("a warm sweep must not load the model")


def test_warm_sweep_reads_cache_without_a_model(tiny_model_dir, tiny_adapters, tmp_path):
    root = _run_dir(tmp_path, tiny_adapters)
    cold = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(cold) == [("base", 0), ("lora", 10), ("lora", 20)]
    warm = sweep(root, base=tiny_model_dir, progress="quiet", load_model=_no_model, **FAST)
    assert _probed(warm) == []
    assert warm.data["timing"]["cached"] == 3
    for a, b in zip(cold.checkpoints, warm.checkpoints):
        assert a["metrics"] == b["metrics"] and a["fingerprint"] == b["fingerprint"]

    # a copy of a probed checkpoint is the same content: read from the cache
    shutil.copytree(tiny_adapters[0], root / "lora" / "checkpoint-30")
    _settle(root)
    copied = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(copied) == []
    assert copied.checkpoint("lora", 30)["metrics"] == copied.checkpoint("lora", 10)["metrics"]

    # a new checkpoint appears: only it is probed
    build_lora_adapter(tiny_model_dir, root / "lora" / "checkpoint-40", seed=7)
    _settle(root)
    more = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(more) == [("lora", 40)]

    # a checkpoint's weights change in place: it is probed again
    shutil.rmtree(root / "lora" / "checkpoint-20")
    build_lora_adapter(tiny_model_dir, root / "lora" / "checkpoint-20", seed=8)
    _settle(root)
    changed = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(changed) == [("lora", 20)]


def test_interrupted_sweep_resumes(tiny_model_dir, tiny_adapters, tmp_path, monkeypatch):
    from diag.probes import suite

    root = _run_dir(tmp_path, tiny_adapters)
    real = suite.run_probes
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # base, checkpoint-10, then Ctrl-C during checkpoint-20
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "run_probes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    partial = json.loads((root / "diag" / "results.json").read_text())
    assert partial["complete"] is False
    assert [(c["run"], c["step"]) for c in partial["checkpoints"]] == [("base", 0), ("lora", 10)]

    monkeypatch.setattr(suite, "run_probes", real)
    resumed = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(resumed) == [("lora", 20)]
    assert resumed.data["complete"] is True


def test_sweep_recommends_and_the_report_renders_from_stored_results(
    tiny_model_dir, tiny_adapters, tmp_path
):
    from diag.diagnostics.stored import load_sweep
    from diag.reports.build import write_report

    root = _run_dir(tmp_path, tiny_adapters[:1], steps=(10,))
    result = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    rec = result.recommendation
    assert set(rec) >= {"run", "step", "path", "reasons", "onset_step", "verdict"}
    assert not (root / "diag" / "report.html").exists()  # rendering is the caller's step
    path = write_report(load_sweep(root / "diag"))
    assert path == root / "diag" / "report.html"
    from markupsafe import escape  # the report's template escapes as Jinja does

    assert str(escape(rec["verdict"])) in path.read_text(encoding="utf-8")


def test_cli_sweep_and_errors(tiny_model_dir, tiny_adapters, tmp_path):
    root = _run_dir(tmp_path, tiny_adapters[:1], steps=(10,))
    args = [
        "--base",
        str(tiny_model_dir),
        "--identity",
        "en",
        "--size",
        "quick",
        "--probes",
        "identity_recall",
    ]
    args += ["--max-new-tokens", "8", "--no-report", "--log-format", "plain"]
    runner = CliRunner()
    first = runner.invoke(cli, ["sweep", str(root), *args])
    assert first.exit_code == 0, first.output
    assert "2 checkpoints (2 probed, 0 from cache, 0 failed)" in first.output
    again = runner.invoke(cli, ["sweep", str(root), "--quiet", *args])
    assert again.exit_code == 0 and "(0 probed, 2 from cache" in again.output
    for name in ("results.json", "scores.csv", "samples.jsonl"):
        assert (root / "diag" / name).is_file()

    missing = runner.invoke(cli, ["sweep", str(tmp_path / "nope"), *args])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(cli, ["sweep", str(empty), *args])
    assert nothing.exit_code == 2 and "no checkpoints found" in nothing.output
    bad = runner.invoke(cli, ["sweep", str(root), *args, "--template", "{question}"])
    assert bad.exit_code == 2 and "--template" in bad.output

    # a checkpoint that cannot be swept is named in the summary, with the fix; results written
    # into the run folder itself keep that run in the sweep
    broken = root / "lora" / "checkpoint-20"
    broken.mkdir()
    shutil.copy(tiny_adapters[1] / "adapter_model.safetensors", broken)
    _settle(root)
    out = root / "lora"
    named = runner.invoke(cli, ["sweep", str(root), *args, "--out", str(out)])
    assert named.exit_code == 0, named.output
    assert (
        f"skipped {broken}: adapter_model.safetensors without adapter_config.json" in named.output
    )
    assert "(fix: copy the run's adapter_config.json" in named.output
    data = json.loads((out / "results.json").read_text())
    assert [(c["run"], c["step"]) for c in data["checkpoints"]] == [("base", 0), ("lora", 10)]
    assert data["skipped"][0]["path"] == str(broken)


KILLABLE = """
import sys, time
from diag.probes import suite
from diag.diagnostics.sweeper import sweep
from diag.types import GenerationConfig
real, calls = suite.run_probes, []
def slow(*a, **k):
    calls.append(1)
    if len(calls) == 3:  # base and checkpoint-10 are done: hang in checkpoint-20 until killed
        time.sleep(600)
    return real(*a, **k)
suite.run_probes = slow
sweep(sys.argv[1], base=sys.argv[2], identity="en", size="quick", probes="identity_recall,general_accuracy",
      generation=GenerationConfig(max_new_tokens=8, batch_size=32), progress="quiet")
"""


def test_kill_9_mid_sweep_then_resume(tiny_model_dir, tiny_adapters, tmp_path):
    import signal
    import subprocess
    import sys

    root = _run_dir(tmp_path, tiny_adapters)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(root), str(tiny_model_dir)])
    results = root / "diag" / "results.json"
    deadline = time.time() + 300
    try:
        while not results.is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = json.loads(results.read_text())  # never half-written
    assert [(c["run"], c["step"]) for c in partial["checkpoints"]] == [("base", 0), ("lora", 10)]
    resumed = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(resumed) == [("lora", 20)]


def test_changed_grading_rescores_stored_answers_without_a_model(
    tiny_model_dir, tiny_adapters, tmp_path, monkeypatch
):
    from dataclasses import replace

    from diag.probes import items

    root = _run_dir(tmp_path, tiny_adapters)
    cold = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert all(
        c["set_versions"]["general"] == items.SET_VERSIONS["general"] for c in cold.checkpoints
    )
    assert all("rescored" not in c for c in cold.checkpoints)

    real = items.load_builtin

    def regraded(name):  # a new version of the general set: every answer is right
        loaded = real(name)
        if name != "general":
            return loaded
        graded = tuple(replace(i, accept=(".",), reject=()) for i in loaded.items)
        return replace(loaded, items=graded, version=99)

    monkeypatch.setattr(items, "load_builtin", regraded)
    warm = sweep(root, base=tiny_model_dir, progress="quiet", load_model=_no_model, **FAST)
    assert _probed(warm) == []  # same prompts: the stored answers, no model
    generated = items.SET_VERSIONS["general"]
    for before, after in zip(cold.checkpoints, warm.checkpoints):
        assert before["metrics"]["general_accuracy"] < 1.0
        assert after["metrics"]["general_accuracy"] == 1.0
        assert after["set_versions"]["general"] == 99
        assert after["rescored"] == {"general": {"generated": generated, "scored": 99}}
        assert after["metrics"]["identity_recall"] == before["metrics"]["identity_recall"]


def test_a_copy_in_the_same_sweep_is_probed_once(tiny_model_dir, tiny_adapters, tmp_path):
    """Checkpoints with the same weights (a copied folder, a final model saved twice) are one
    probe: the copy is read from the cache its original just wrote."""
    root = _run_dir(tmp_path, tiny_adapters)
    shutil.copytree(tiny_adapters[0], root / "lora" / "checkpoint-30")
    _settle(root)
    cold = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(cold) == [("base", 0), ("lora", 10), ("lora", 20)]
    rows = {c["step"]: c for c in cold.checkpoints}
    assert rows[30]["status"] == "ok" and rows[30]["cached"]
    assert rows[30]["metrics"] == rows[10]["metrics"]


def test_the_tokenizer_is_part_of_the_key_and_old_entries_say_why_they_are_redone(
    tiny_model_dir, tiny_adapters, tmp_path, monkeypatch, caplog
):
    import logging

    root = _run_dir(tmp_path, tiny_adapters[:1])
    # a cache written before the tokenizer was part of the key
    with monkeypatch.context() as old:
        old.setattr("diag.diagnostics.runner.base_tokenizer_key", lambda *a: None)
        sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    with caplog.at_level(logging.WARNING, logger="diag"):
        again = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(again) == [("base", 0), ("lora", 10)]
    said = [r for r in caplog.records if "predate diag's tokenizer check" in r.getMessage()]
    assert len(said) == 1
    warm = sweep(root, base=tiny_model_dir, progress="quiet", load_model=_no_model, **FAST)
    assert _probed(warm) == []


def test_bf16_weights_are_in_the_key_and_old_entries_say_why_they_are_redone(
    tiny_model_dir, tiny_adapters, tmp_path, monkeypatch, caplog
):
    """On a GPU that computes bf16, LoRA adapters now stay beside the weights (folded in, a small
    one was rounded away): entries probed before, keyed without a dtype, are probed again, once
    said why. Here the bf16 device is this CPU running the tiny model in bf16."""
    import logging

    import torch

    root = _run_dir(tmp_path, tiny_adapters[:1])
    sweep(root, base=tiny_model_dir, progress="quiet", **FAST)  # keyed as before: no dtype
    for where in ("diag.backend.loading", "diag.backend.hf"):
        monkeypatch.setattr(f"{where}.default_dtype", lambda device: torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="diag"):
        again = sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    assert _probed(again) == [("base", 0), ("lora", 10)]
    said = [r.getMessage() for r in caplog.records if "folded into bfloat16" in r.getMessage()]
    assert len(said) == 1 and "probing again" in said[0]
    assert again.record.settings.dtype == "bfloat16"  # results.json says what the models ran in
    warm = sweep(root, base=tiny_model_dir, progress="quiet", load_model=_no_model, **FAST)
    assert _probed(warm) == []
