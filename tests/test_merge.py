"""`diag merge`: merges what the gate passes, refuses what it fails (unless --force), says why,
finds the sweep's evidence from a run folder, and merges XTuner .pth checkpoints directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from diag.diagnostics.verdict import current_fingerprint
from synthetic_sweep import ckpt, learned_then_parrot, sweep

from diag.cli import cli


@pytest.fixture
def gated_runs(tmp_path, tiny_model_dir, tiny_adapters) -> Path:
    """runs/run-a/checkpoint-{100,200} (real tiny adapters) and a sweep where 100 is healthy
    and 200 parrots, written as the sweep would (absolute paths, content fingerprints)."""
    run = tmp_path / "runs" / "run-a"
    healthy = ckpt(100, identity=(30, 30))
    parrot = learned_then_parrot()[-1]
    parrot["step"] = 200
    for record, adapter in zip((healthy, parrot), tiny_adapters):
        folder = run / f"checkpoint-{record['step']}"
        shutil.copytree(adapter, folder)
        record.update(
            path=str(folder), base=str(tiny_model_dir), fingerprint=current_fingerprint(folder)
        )
    data = sweep(healthy, parrot)
    data["root"] = str(tmp_path / "runs")
    out = tmp_path / "runs" / "diag"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(data))
    return tmp_path / "runs"


def run_merge(*args: str):
    return CliRunner().invoke(cli, ["merge", *args])


def provenance(folder: Path) -> dict:
    return json.loads((folder / "diag-merge.json").read_text())


def test_merges_the_recommended_checkpoint_with_provenance(gated_runs, tmp_path):
    out = tmp_path / "merged"
    result = run_merge(str(gated_runs / "diag"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "merged run-a step 100" in result.output and "gate: pass" in result.output
    record = provenance(out)
    assert record["source"]["step"] == 100
    assert record["source"]["fingerprint"] == record["source"]["probed_fingerprint"]
    assert record["source"]["fingerprint"].startswith("blake2b:")
    assert record["gate"]["verdict"] == "pass" and record["forced"] is False
    assert record["gate"]["policy"]["hash"].startswith("sha256:")
    assert record["tool"]["version"] and (out / "model.safetensors").is_file()


def test_refuses_a_failing_checkpoint_and_names_the_checks(gated_runs, tmp_path):
    out = tmp_path / "parrot"
    result = run_merge(str(gated_runs / "diag"), "--checkpoint", "200", "--out", str(out))
    assert result.exit_code == 2
    assert "refusing to merge: the gate fails run-a step 200" in result.output
    assert "parrot_leakage: leakage 100%" in result.output and "--force" in result.output
    assert not out.exists()

    forced = run_merge(
        str(gated_runs / "diag"), "--checkpoint", "200", "--out", str(out), "--force"
    )
    assert forced.exit_code == 0, forced.output
    assert "gate: fail (forced)" in forced.output
    record = provenance(out)
    assert record["forced"] is True and record["gate"]["verdict"] == "fail"
    assert "parrot_leakage" in record["gate"]["failed"]


def test_run_folder_finds_the_sweep_evidence_above_it(gated_runs, tmp_path):
    run = gated_runs / "run-a"
    refused = run_merge(str(run), "--checkpoint", "200", "--out", str(tmp_path / "a"))
    assert refused.exit_code == 2 and "the gate fails run-a step 200" in refused.output
    merged = run_merge(str(run), "--out", str(tmp_path / "b"))  # best = the recommendation
    assert merged.exit_code == 0, merged.output
    assert provenance(tmp_path / "b")["source"]["step"] == 100


def test_checkpoint_changed_since_the_sweep_is_refused(gated_runs, tmp_path):
    weights = gated_runs / "run-a" / "checkpoint-100" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    result = run_merge(
        str(gated_runs / "diag"), "--checkpoint", "100", "--out", str(tmp_path / "m")
    )
    assert result.exit_code == 2
    assert "could not decide" in result.output and "changed after it was probed" in result.output


def test_ungated_run_needs_force(tmp_path, tiny_model_dir, tiny_adapters):
    run = tmp_path / "lonely-run"
    shutil.copytree(tiny_adapters[0], run / "checkpoint-50")
    manifest = {"kind": "diag-run", "chat": {"system": "You are Nova.", "template": None}}
    (run / "diag-run.json").write_text(json.dumps(manifest))
    refused = run_merge(str(run), "--checkpoint", "50", "--out", str(tmp_path / "m"))
    assert refused.exit_code == 2 and "no sweep results cover lonely-run step 50" in refused.output
    assert "run `diag sweep` over its run first" in refused.output
    forced = run_merge(str(run), "--checkpoint", "50", "--out", str(tmp_path / "m"), "--force")
    assert forced.exit_code == 0, forced.output
    record = provenance(tmp_path / "m")
    assert record["gate"]["verdict"] == "ungated" and record["forced"] is True
    assert record["base"] == str(tiny_model_dir.resolve())  # from the adapter's own config
    # the checkpoint given directly still gets its run's prompt format (from diag-run.json)
    direct = run_merge(str(run / "checkpoint-50"), "--out", str(tmp_path / "d"), "--force")
    assert direct.exit_code == 0, direct.output
    assert provenance(tmp_path / "d")["chat_template"]["default_system"] == "You are Nova."


def test_xtuner_pth_merges_like_the_peft_adapter(tmp_path, tiny_model_dir, tiny_adapters):
    """XTuner users skip pth_to_hf + merge: iter_N.pth -> merged model, same weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    state = load_file(tiny_adapters[0] / "adapter_model.safetensors")
    xtuner_state = {
        "llm."
        + k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
        for k, v in state.items()
    }
    work_dir = tmp_path / "work_dirs" / "identity"
    work_dir.mkdir(parents=True)
    torch.save({"state_dict": xtuner_state, "meta": {"iter": 300}}, work_dir / "iter_300.pth")

    no_alpha = run_merge(
        str(work_dir), "--checkpoint", "300", "--out", str(tmp_path / "x"), "--force"
    )
    assert no_alpha.exit_code == 2 and "--lora-alpha" in no_alpha.output

    args = ["--checkpoint", "300", "--out", str(tmp_path / "x"), "--force", "--lora-alpha", "8"]
    result = run_merge(str(work_dir), *args, "--base", str(tiny_model_dir))
    assert result.exit_code == 0, result.output
    assert provenance(tmp_path / "x")["source"]["format"] == "xtuner-pth"

    peft_out = tmp_path / "peft"
    assert run_merge(str(tiny_adapters[0]), "--out", str(peft_out), "--force").exit_code == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "x").state_dict()
    b = AutoModelForCausalLM.from_pretrained(peft_out).state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.allclose(a[k], base[k]) for k in a)  # the merge changed the weights


def test_bad_sources(tmp_path):
    missing = run_merge(str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_merge(str(empty), "--out", str(tmp_path / "m"))
    assert nothing.exit_code == 2 and "no checkpoints found" in nothing.output


def test_run_folder_finds_the_demo_layout_results(gated_runs, tmp_path):
    (gated_runs / "diag").rename(gated_runs / "results")  # where `diag demo` writes them
    refused = run_merge(
        str(gated_runs / "run-a"), "--checkpoint", "200", "--out", str(tmp_path / "a")
    )
    assert refused.exit_code == 2 and "the gate fails run-a step 200" in refused.output


def test_full_weights_are_not_merged(tmp_path, tiny_model_dir):
    import torch

    work_dir = tmp_path / "work_dirs" / "full"
    work_dir.mkdir(parents=True)
    torch.save({"state_dict": {"llm.lm_head.weight": torch.zeros(2, 2)}}, work_dir / "iter_10.pth")
    xtuner_full = run_merge(str(work_dir), "--out", str(tmp_path / "x"), "--force")
    assert xtuner_full.exit_code == 2, xtuner_full.output
    assert "holds full weights, not LoRA weights: nothing to merge" in xtuner_full.output

    hf_full = run_merge(str(tiny_model_dir), "--out", str(tmp_path / "y"), "--force")
    assert hf_full.exit_code == 2 and "is a full model, not a LoRA adapter" in hf_full.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
