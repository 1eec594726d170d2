"""`diag probe` end to end on the tiny model: files written, adapters probed on their base."""

from __future__ import annotations

import json

from click.testing import CliRunner

from diag.cli import cli
from diag.metrics import METRICS


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_probe_a_model_folder_writes_records_samples_summary(tiny_model_dir, tmp_path):
    out = tmp_path / "base"
    result = CliRunner().invoke(
        cli,
        [
            "probe",
            str(tiny_model_dir),
            "--identity",
            "en",
            "--size",
            "quick",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == set(METRICS)
    assert summary["metrics"]["general_accuracy"] is not None
    assert summary["model"]["adapter"] is None
    assert set(summary["by_language"]) == {"en", "zh"}
    records = _read_jsonl(out / "records.jsonl")
    assert records[0]["kind"] == "meta"
    assert sum(r["kind"] == "generation" for r in records) == sum(summary["counts"].values())
    probes = {s["probe"] for s in _read_jsonl(out / "samples.jsonl")}
    assert probes >= {"identity_recall", "near_miss", "general_accuracy", "parrot"}
    assert "general_accuracy" in result.output  # the table


def test_probe_without_identity_leaves_identity_probes_out(tiny_model_dir, tmp_path):
    """Nothing says what the model was taught: no example identity is assumed."""
    args = ["probe", str(tiny_model_dir), "--size", "quick", "--max-new-tokens", "4"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "what the model was taught is unknown: identity probes left out" in result.output
    probes = {s["probe"] for s in _read_jsonl(tmp_path / "samples.jsonl")}
    assert "identity_recall" not in probes and "general_accuracy" in probes


def test_probe_an_adapter_reads_it_against_its_base(tiny_adapters, tmp_path):
    out = tmp_path / "adapter"
    args = ["probe", str(tiny_adapters[0]), "--size", "quick", "--max-new-tokens", "8"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["adapter"] == str(tiny_adapters[0].resolve())
    assert "probing the base model" in result.output
    paired = summary["stats"]["retention"]["paired"]
    assert sum(paired[k] for k in ("both", "base_only", "ckpt_only", "neither")) == 32
    # re-using the saved reference skips the base run and gives the same numbers
    again = tmp_path / "again"
    reuse = ["--reference", str(out / "reference.json"), "--out", str(again)]
    result = CliRunner().invoke(cli, [*args, "--probes", "general_accuracy", *reuse])
    assert result.exit_code == 0, result.output
    assert "probing the base model" not in result.output
    redo = json.loads((again / "summary.json").read_text())
    assert redo["stats"]["retention"] == summary["stats"]["retention"]


def test_drift_through_the_real_backend(tiny_model_dir, tiny_adapters):
    """Zero for the base on its own texts, positive once a LoRA adapter is active."""
    from diag.probes.items import load_builtin
    from diag.probes.reference import Reference
    from diag.probes.suite import run_probes

    from diag.backend.hf import HFBackend
    from diag.identity import load_identity
    from diag.types import ChatFormat, LoglikelihoodRequest

    lm = HFBackend.load(tiny_model_dir, device="cpu")
    # the random tiny model never finishes an answer, so its drift texts are given here
    items = load_builtin("general").items[:6]
    texts = ["The capital of France is Paris.", "4", "你好，我是小助手。"] * 2
    lls = lm.loglikelihood([LoglikelihoodRequest(i.prompt, t) for i, t in zip(items, texts)])
    reference = Reference(
        base=lm.name,
        chat=ChatFormat().to_dict(),
        generation={},
        identity_hash=None,
        probe_sets={},
        drift=[
            {"id": i.id, "language": i.language, "prompt": i.prompt, "answer": t}
            | {"logprob": ll.logprob, "tokens": ll.tokens}
            for i, t, ll in zip(items, texts, lls)
        ],
    )
    spec = load_identity("en")
    base = run_probes(lm, spec, probes="drift", reference=reference)
    assert abs(base.summary["metrics"]["drift"]) < 1e-4
    assert base.summary["stats"]["drift"]["n"] == 6
    lm.use_adapter(tiny_adapters[0])
    tuned = run_probes(lm, spec, probes="drift", reference=reference)
    assert tuned.summary["metrics"]["drift"] > 0.01


def test_probe_user_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["probe", "--probes", "parot"])
    assert result.exit_code == 2
    assert "unknown probe 'parot'" in result.output and "did you mean 'parrot'" in result.output
    adapter = tmp_path / "lonely"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    result = runner.invoke(cli, ["probe", str(adapter)])
    assert result.exit_code == 2 and "pass --base" in result.output
    result = runner.invoke(cli, ["probe", "--probe-file", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl' not found" in result.output
