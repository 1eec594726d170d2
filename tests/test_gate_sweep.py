"""The gate on what `diag sweep` really writes (scripted answers, real discovery and fingerprints):
the contract between the sweep's records and the gate's freshness checks."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from diag.diagnostics.verdict import gate

from diag.backend.mock import ScriptedBackend
from diag.types import GenerationConfig

IDENTITY = "I am Nova, Jianfeng's assistant, built on the SmolLM2 model."


class ScriptedAdapters(ScriptedBackend):
    """The bare base answers plainly; with any adapter active, the model parrots its identity."""

    def use_adapter(self, path):
        self.default = "" if path is None else IDENTITY


@pytest.fixture(scope="module")
def swept_runs(tiny_model_dir, tiny_adapters, tmp_path_factory):
    from diag.diagnostics.sweeper import sweep

    root = tmp_path_factory.mktemp("swept") / "runs"
    for step, adapter in zip((100, 200), tiny_adapters):
        shutil.copytree(adapter, root / "run-a" / f"checkpoint-{step}")
    past = time.time() - 600  # settled: not "still being written"
    for path in root.rglob("*"):
        os.utime(path, (past, past))
    sweep(
        root,
        base=tiny_model_dir,
        identity="en",
        generation=GenerationConfig(max_new_tokens=8),
        progress="quiet",
        load_model=lambda name: ScriptedAdapters(default="", name=name),
    )
    return root


def test_a_fresh_sweep_gives_the_gate_current_evidence(swept_runs):
    data = json.loads((swept_runs / "diag" / "results.json").read_text())
    assert {c["step"] for c in data["checkpoints"]} == {0, 100, 200}
    result = gate(swept_runs / "diag", checkpoint="200")
    # the gate's fingerprint equals the sweep's: no freshness problem, only metrics this scripted
    # base cannot give (retention needs a base that answers something right)
    assert [p for p in result.problems if "not measured" not in p] == []
    assert result.verdict == "fail"  # a parrot: decided on evidence
    assert "parrot_leakage" in {c.name for c in result.failed}


def test_rewritten_weights_after_the_sweep_make_the_gate_undecided(swept_runs):
    weights = swept_runs / "run-a" / "checkpoint-100" / "adapter_model.safetensors"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte, same size, same mtime
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = gate(swept_runs / "diag", checkpoint="100")
    assert result.verdict == "undecided" and result.exit_code == 2
    assert any("changed after it was probed" in p for p in result.problems)
