"""The tiny model really trains: run layout, manifest, checkpoint interval, early stop on parrot."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner
from diag.train.callbacks import CHECK_GENERAL_PROMPTS, ParrotStopCallback
from diag.train.config import load_config
from diag.train.recipe import run_training

from diag.backend.mock import ScriptedBackend
from diag.cli import cli
from diag.identity import load_identity


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, general_file, tmp_path_factory):
    """7 steps, a checkpoint every 3, diluted half and half, deepspeed asked for on a CPU."""
    out = tmp_path_factory.mktemp("runs") / "tiny-run"
    config = load_config(
        None,
        [
            f"base={tiny_model_dir}",
            f"output_dir={out}",
            "max_steps=7",
            "save_every=3",
            "data.identity_samples=24",
            "data.max_length=64",
            "mix.general_ratio=0.5",
            "mix.rehearsal=false",
            f"mix.sources=[{general_file}]",
            "deepspeed=zero2",
            "device=cpu",
        ],
    )
    return run_training(config), out


def test_run_has_the_layout_the_sweep_reads(trained_run):
    result, out = trained_run
    # every save_every steps, plus the final step; nothing deleted by default
    assert [p.name for p in result.checkpoints] == ["checkpoint-3", "checkpoint-6", "checkpoint-7"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-6",
        "checkpoint-7",
    ]
    for ckpt in result.checkpoints:
        assert (ckpt / "adapter_model.safetensors").is_file()
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["global_step"] == int(ckpt.name.split("-")[1])
        assert any("loss" in row for row in state["log_history"])
        adapter = json.loads((ckpt / "adapter_config.json").read_text())
        assert adapter["r"] == 16 and adapter["lora_alpha"] == 32
    assert result.steps == 7


def test_manifest_describes_the_run(trained_run, tiny_model_dir):
    result, out = trained_run
    manifest = json.loads((out / "diag-run.json").read_text())
    assert manifest["kind"] == "diag-run" and manifest["status"] == "complete"
    assert manifest["base"] == str(tiny_model_dir.resolve())  # the sweep loads this
    spec = load_identity("en")
    assert (
        manifest["identity"]["hash"] == spec.hash and manifest["identity"]["answer"] == spec.answer
    )
    assert manifest["chat"] == {
        "system": "You are a helpful assistant.",
        "template": None,
        "system_template": None,
    }
    data = manifest["data"]
    assert data["identity_samples"] == 24 and data["general_samples"] == 24
    assert data["hash"].startswith("sha256:") and data["sources"][0]["conversations"] == 2
    assert data["batches"] == "packed"  # no padding: transformers' Llama keeps examples apart
    assert manifest["config"]["save_every"] == 3 and manifest["config"]["lr"] == 1e-4
    assert {"torch", "transformers", "peft", "python"} <= set(manifest["versions"])
    assert "git" in manifest
    assert manifest["timing"]["steps"] == 7 and manifest["timing"]["seconds_per_step"] > 0
    assert manifest["checkpoints"] == ["checkpoint-3", "checkpoint-6", "checkpoint-7"]
    # the stored training data is what the hash describes
    lines = (out / "train-data.jsonl").read_text().splitlines()
    assert len(lines) == 48


def test_deepspeed_on_cpu_falls_back_and_says_so(trained_run):
    _, out = trained_run
    ds = json.loads((out / "diag-run.json").read_text())["deepspeed"]
    assert ds["preset"] == "zero2" and ds["used"] is False
    assert "CUDA" in ds["reason"] or "not installed" in ds["reason"]
    assert ds["config"]["zero_optimization"]["stage"] == 2


def test_adapter_changes_what_the_model_says(trained_run, tiny_backend):
    result, _ = trained_run
    from diag.types import ChatFormat, GenerationConfig, LoglikelihoodRequest

    chat = ChatFormat(system="You are a helpful assistant.")
    request = [LoglikelihoodRequest("Please introduce yourself.", load_identity("en").answer)]
    tiny_backend.use_adapter(None)
    before = tiny_backend.loglikelihood(request, chat)
    tiny_backend.use_adapter(result.checkpoints[-1])  # loads in the sweep's backend
    after = tiny_backend.loglikelihood(request, chat)
    assert len(tiny_backend.generate(["Who are you?"], GenerationConfig(max_new_tokens=4))) == 1
    tiny_backend.use_adapter(None)
    assert after[0].logprob > before[0].logprob  # it learned (a little of) the identity


def test_existing_run_is_never_overwritten(trained_run, tiny_model_dir):
    _, out = trained_run
    runner = CliRunner()
    res = runner.invoke(
        cli, ["train", f"base={tiny_model_dir}", f"output_dir={out}", "max_steps=1"]
    )
    assert res.exit_code == 2
    assert "already holds checkpoints" in res.output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-6",
        "checkpoint-7",
    ]


def test_keep_limit_warns_about_the_trap_and_deletes(
    tiny_model_dir, general_file, tmp_path, caplog
):
    out = tmp_path / "kept"
    config = load_config(
        None,
        [
            f"base={tiny_model_dir}",
            f"output_dir={out}",
            "max_steps=4",
            "save_every=1",
            "keep=2",
            "data.identity_samples=8",
            "data.max_length=64",
            "device=cpu",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="diag"):
        result = run_training(config)
    assert "best one" in caplog.text and "keep=2" in caplog.text
    assert [p.name for p in result.checkpoints] == ["checkpoint-3", "checkpoint-4"]


def test_callback_stops_training_when_scripted_leakage_crosses_the_limit(tiny_model_dir, tmp_path):
    """Healthy for the first probe, then every general question gets the identity sentence."""
    spec = load_identity("en")
    general = set(CHECK_GENERAL_PROMPTS["en"])
    probes_seen = {"n": 0}  # how many in-training probes have run

    class CountingBackend(ScriptedBackend):
        def generate(self, prompts, config):
            probes_seen["n"] += 1
            return super().generate(prompts, config)

    lm = CountingBackend(  # generate call 1: the own answers (pressure); 2: healthy; 3: leaks
        lambda p: spec.answer if p not in general or probes_seen["n"] >= 3 else "Berlin."
    )
    callback = ParrotStopCallback(spec, every=2, limit=0.2, stop=True, lm=lm, signal="leakage")
    out = tmp_path / "stopped"
    config = load_config(
        None,
        [
            f"base={tiny_model_dir}",
            f"output_dir={out}",
            "max_steps=20",
            "save_every=2",
            "data.identity_samples=16",
            "data.max_length=64",
            "device=cpu",
        ],
    )
    result = run_training(config, callbacks=[callback])
    assert callback.stopped_at == 4 and result.steps == 4 and result.stopped_early
    assert [h["parrot_leakage"] for h in callback.history] == [0.0, 1.0]
    assert [h["identity_recall"] for h in callback.history] == [1.0, 1.0]
    assert [p.name for p in result.checkpoints] == ["checkpoint-2", "checkpoint-4"]  # kept
    manifest = json.loads((out / "diag-run.json").read_text())
    assert manifest["status"] == "stopped_on_parrot"
    logged = [
        json.loads(line) for line in (out / "in-training-probes.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in logged] == [2, 4] and logged[-1]["stopped"] is True


def test_callback_stops_on_parrot_pressure_without_generating(tiny_model_dir, tmp_path):
    """The default signal: likelihoods only. The model's own answers are generated once, before
    training; from the second probe on, the taught answer is the more likely one everywhere."""
    spec = load_identity("en")
    probes_seen = {"n": 0}

    class Scripted(ScriptedBackend):
        def loglikelihood(self, requests, chat=None, batch_size=16):
            probes_seen["n"] += 1
            return super().loglikelihood(requests, batch_size=batch_size)

    lm = Scripted(
        default="Berlin.",
        logprobs=lambda p, c: -0.5 if c == spec.answer and probes_seen["n"] >= 2 else -1.0,
    )
    callback = ParrotStopCallback(spec, every=2, stop=True, lm=lm)
    config = load_config(
        None,
        [f"base={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "max_steps=20",
         "save_every=2", "data.identity_samples=16", "data.max_length=64", "device=cpu"],
    )  # fmt: skip
    result = run_training(config, callbacks=[callback])
    assert [h["parrot_pressure"] for h in callback.history] == [0.0, 1.0]
    assert callback.stopped_at == 4 and result.stopped_early
    generated = [c for c in lm.calls if c[0] == "generate"]
    assert generated[0] == ("generate", 10)  # the own answers, once, before training


def test_deepspeed_presets_pass_deepspeeds_own_parser():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from diag.train.deepspeed import PRESETS, deepspeed_config, resolve_auto

    for preset in PRESETS:
        raw = deepspeed_config(preset)
        parsed = DeepSpeedConfig(
            resolve_auto(raw, micro_batch=4, grad_accum=2)
        )  # world size 1 here
        assert parsed.zero_optimization_stage == int(preset[4])
        assert parsed.train_batch_size == 8
        offloaded = parsed.zero_config.offload_optimizer is not None
        assert offloaded == preset.endswith("_offload")
        if preset == "zero3_offload":
            assert parsed.zero_config.offload_param is not None


def test_cli_check_prints_the_validated_config(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--check", "lr=5e-5", "mix.general_ratio=0.5"])
    assert res.exit_code == 0, res.output
    assert "lr: 5.0e-05" in res.output and "general_ratio: 0.5" in res.output
    bad = runner.invoke(cli, ["train", "lr=2", "batch_size=0"])
    assert bad.exit_code == 2 and "'lr'" in bad.output and "'batch_size'" in bad.output


def test_full_fine_tune_saves_whole_models(tiny_model_dir, tmp_path):
    out = tmp_path / "full"
    config = load_config(None, [
        f"base={tiny_model_dir}", f"output_dir={out}", "method=full", "max_steps=2",
        "save_every=2", "data.identity_samples=8", "data.max_length=64", "device=cpu",
    ])  # fmt: skip
    result = run_training(config)
    ckpt = result.checkpoints[-1]
    assert ckpt.name == "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert not (ckpt / "adapter_config.json").exists()
    assert json.loads((out / "diag-run.json").read_text())["method"] == "full"


def test_resume_from_a_checkpoint_trains_just_the_window(trained_run, tmp_path):
    """`diag train RUN resume_from=RUN/checkpoint-3 save_every=1 max_steps=5` (next-step advice)."""
    _, out = trained_run
    window = tmp_path / "tiny-run-3-5"
    args = [f"resume_from={out / 'checkpoint-3'}", "save_every=1", "max_steps=5"]
    result = CliRunner().invoke(cli, ["train", str(out), *args, f"output_dir={window}"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in window.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    state = json.loads((window / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    manifest = json.loads((window / "diag-run.json").read_text())
    assert manifest["config"]["resume_from"] == str(out / "checkpoint-3")
    assert manifest["config"]["mix"]["general_ratio"] == 0.5  # the run's own settings
    # it trained 2 steps, not 5: the speed it reports is per step it ran
    assert manifest["timing"]["steps"] == 2 and manifest["timing"]["resumed_from_step"] == 3
    assert "finished: 2 steps (steps 3-5) in " in result.output

    from safetensors.torch import load_file

    start = load_file(out / "checkpoint-3" / "adapter_model.safetensors")
    moved = load_file(window / "checkpoint-4" / "adapter_model.safetensors")
    assert start.keys() == moved.keys()
    assert any(not (start[k] == moved[k]).all() for k in start)  # it trained from there

    bad = CliRunner().invoke(cli, ["train", str(out), f"resume_from={tmp_path}", "--check"])
    assert bad.exit_code != 0 and "'resume_from' must be a checkpoint folder" in bad.output


def test_cli_says_which_signal_stopped_training(monkeypatch, tmp_path):
    import diag.train.recipe as recipe

    def stopped(config):
        row = {"step": 4, "signal": "pressure", "parrot_pressure": 0.6, "stopped": True}
        return recipe.TrainResult(tmp_path, [tmp_path / "checkpoint-4"], 4, 8.0, True, [row])

    monkeypatch.setattr(recipe, "run_training", stopped)
    res = CliRunner().invoke(cli, ["train", "max_steps=10", f"output_dir={tmp_path}"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("stopped early on parrot pressure: 4 steps in 8 s")
