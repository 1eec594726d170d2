"""Discovery and a sweep on output folders written by the trainers themselves.

The fixtures under tests/fixtures/trainers/<trainer>/ are what each library wrote when it trained
the tiny seeded Llama of tests/tiny.py on CPU (its FIXTURE.md names the version and the command;
make.sh rebuilds it in a scratch venv). They are copied into a temporary folder and aged, as a
user's runs would be, then discovered and swept on the same tiny base.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "trainers"
sys.path.insert(0, str(Path(__file__).parent))
from tiny import identity_sweep, settle  # noqa: E402

# trainer fixture folder -> the output folder the trainer wrote, inside it
OUTPUTS = {
    "llamafactory": "saves",
    "ms-swift": "output",
    "torchtune": "tt-out",
    "axolotl": "outputs",
    "xtuner": "work_dirs",
}


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory) -> Path:
    """Every trainer's output folder, side by side as a user's runs/ folder would hold them."""
    root = tmp_path_factory.mktemp("trainer-runs")
    for trainer, output in OUTPUTS.items():
        if (FIXTURES / trainer / output).is_dir():
            shutil.copytree(FIXTURES / trainer / output, root / trainer, symlinks=True)
    settle(root)
    return root


@pytest.fixture(scope="module")
def found(trainer_runs):
    from diag.diagnostics.discover import discover

    return discover(trainer_runs)


def _rows(found, run: str):
    return [(c.step, c.label, c.path.name) for c in found.checkpoints if c.run == run]


def test_llamafactory_final_adapter_and_every_checkpoint(found, trainer_runs):
    """LLaMA-Factory 0.9.5 writes the final model into output_dir beside checkpoint-N/: every
    intermediate checkpoint is swept, and the final one is the checkpoint with its weights."""
    lora = "llamafactory/tiny-llama/lora/sft"
    assert _rows(found, lora) == [
        (2, None, "checkpoint-2"),
        (4, None, "checkpoint-4"),
        (6, "final", "checkpoint-6"),
    ]
    last = [c for c in found.checkpoints if c.run == lora][-1]
    assert last.aliases == [trainer_runs / lora]  # one row, both paths named
    full = "llamafactory/tiny-llama/full/sft"
    assert _rows(found, full) == [(2, None, "checkpoint-2"), (4, "final", "checkpoint-4")]
    run = found.runs[lora]
    assert (run.trainer, run.base, run.base_source) == (
        "llama-factory",
        "/tmp/tiny-llama",
        "README.md base_model",
    )
    # its chatml template, saved with the tokenizer: no system block before the user turn
    assert "<|im_start|>user" in run.chat.chat_template and "SmolLM" not in run.chat.chat_template
    assert [s for s, _ in run.train_loss] == [1, 2, 3, 4, 5, 6]


def test_swift_versioned_run_folder_and_last_checkpoint_link(found, trainer_runs):
    """ms-swift 4.6 writes output/vN-<date>-<time>/checkpoint-N and a last-checkpoint symlink."""
    runs = [r for r in found.runs if r.startswith("ms-swift/")]
    assert runs == ["ms-swift/v0-20261201-201943"]
    assert _rows(found, runs[0]) == [
        (2, None, "checkpoint-2"),
        (4, None, "checkpoint-4"),
        (6, None, "checkpoint-6"),
    ]
    last = [c for c in found.checkpoints if c.run == runs[0]][-1]
    assert last.aliases == [trainer_runs / runs[0] / "last-checkpoint"]  # one row, not two
    run = found.runs[runs[0]]
    assert (run.trainer, run.base, run.base_source) == (
        "ms-swift",
        "/tmp/tiny-llama",
        "args.json model",
    )
    # swift's chatml template, system None: no system block
    assert run.chat.system == "" and run.chat.template.startswith("<|im_start|>user\n{input}")


def test_torchtune_epochs_are_steps_never_the_base(found):
    """torchtune 0.6.1: epoch_0/ is saved after the first epoch (4 steps here, from its logs)."""
    assert _rows(found, "torchtune") == [(4, "epoch 1", "epoch_0"), (8, "epoch 2", "epoch_1")]
    run = found.runs["torchtune"]
    assert run.base == "/tmp/tiny-llama"
    assert run.base_source == "torchtune_config.yaml checkpointer"
    assert run.steps_per_epoch == 4
    # epoch_N holds the merged weights too; the adapter is what is probed (on the base)
    assert {c.format for c in found.checkpoints if c.run == "torchtune"} == {"peft-adapter"}


def test_axolotl_final_adapter_and_base_from_its_model_card(found, trainer_runs):
    """axolotl 0.19 writes the final model beside checkpoint-N/ too, but no trainer_state.json
    of its own: its step comes from the checkpoint with the same weights."""
    assert _rows(found, "axolotl/lora-out") == [
        (2, None, "checkpoint-2"),
        (4, None, "checkpoint-4"),
        (6, "final", "checkpoint-6"),
    ]
    assert _rows(found, "axolotl/full-out") == [
        (2, None, "checkpoint-2"),
        (4, "final", "checkpoint-4"),
    ]
    full = found.runs["axolotl/full-out"]
    # a full fine-tune names its base only in the training yaml its model card embeds
    assert (full.trainer, full.base) == ("axolotl", "/tmp/tiny-llama")
    assert full.base_source == "README.md axolotl config base_model"
    assert found.runs["axolotl/lora-out"].chat is None  # chat_template: tokenizer_default


def test_xtuner_work_dirs_with_and_without_deepspeed(found):
    """XTuner 0.2.0 (mmengine 0.10.6, DeepSpeed 0.16.2, 2 ranks on gloo): iter_N.pth/ folders
    without a 'latest' file, ZeRO-2 and ZeRO-3; plain iter_N.pth files without DeepSpeed; and
    the pth_to_hf output saved beside them, which is its own run, not a step of that one."""
    assert _rows(found, "xtuner/z2") == [(6, None, "iter_6.pth"), (8, None, "iter_8.pth")]
    assert _rows(found, "xtuner/z3") == [(6, None, "iter_6.pth"), (8, None, "iter_8.pth")]
    assert _rows(found, "xtuner/nods") == [(14, None, "iter_14.pth"), (16, None, "iter_16.pth")]
    assert _rows(found, "xtuner/z3/iter_8_hf") == [(1, None, "iter_8_hf")]
    z3 = [c for c in found.checkpoints if c.run == "xtuner/z3"]
    assert {c.format for c in z3} == {"xtuner-deepspeed"}
    assert sum(f.name.endswith("_optim_states.pt") for f in z3[0].files) == 2  # both ranks
    for ckpt in z3:
        assert ckpt.lora["lora_alpha"] == 8 and ckpt.base_hint == "/tmp/xt-run/tiny-llama"
        # mmengine's saved copy of the config names the template as a string
        assert ckpt.chat.template == "<|User|>:{input}\n<|Bot|>:"


def test_nothing_skipped(found):
    assert found.skipped == []


@pytest.fixture(scope="module")
def trainer_sweep(trainer_runs, tiny_model_dir, tmp_path_factory):
    return identity_sweep(trainer_runs, tiny_model_dir, tmp_path_factory.mktemp("trainer-results"))


def _logprobs(result, run: str, step: int) -> list[float]:
    rows = [s for s in result.samples() if (s["run"], s["step"]) == (run, step)]
    return [s["answer_logprob"] for s in sorted(rows, key=lambda s: s["item_id"])]


def test_sweep_scores_every_trainer_checkpoint_in_step_order(trainer_sweep, found):
    rows = [(c["run"], c["step"]) for c in trainer_sweep.checkpoints if c["format"] != "base"]
    assert rows == [(c.run, c.step) for c in found.checkpoints]
    bad = [
        (c["run"], c["step"], c["error"]) for c in trainer_sweep.checkpoints if c["status"] != "ok"
    ]
    assert bad == []
    final = next(
        c for c in trainer_sweep.checkpoints if c["label"] == "final" and "lora" in c["run"]
    )
    assert final["also"] and final["path"].endswith("checkpoint-6")
    # probed with the trainer's own prompt format: a base row per format, asked the same way
    swift = next(
        c for c in trainer_sweep.checkpoints if c["run"].startswith("ms-swift") and c["step"] == 6
    )
    assert swift["chat"]["template"].startswith("<|im_start|>user")


def test_xtuner_zero3_reads_as_xtuners_own_conversion(trainer_sweep):
    """iter_8.pth/ under ZeRO-3 (weights only in the optimizer partitions of 2 ranks), read with
    DeepSpeed's zero_to_fp32, answers exactly like `xtuner convert pth_to_hf` of the same folder."""
    ours = _logprobs(trainer_sweep, "xtuner/z3", 8)
    assert ours == pytest.approx(_logprobs(trainer_sweep, "xtuner/z3/iter_8_hf", 1), abs=1e-5)
    assert ours != pytest.approx(_logprobs(trainer_sweep, "xtuner/z3", 6), abs=1e-4)


def test_torchtune_lora_counts_once(trainer_sweep, trainer_runs, tiny_model_dir):
    """Probing epoch_N as an adapter on the base answers like torchtune's own merged weights
    beside it (loading the folder as a full model with transformers 5 would add the LoRA twice)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from diag.backend.hf import HFBackend
    from diag.types import LoglikelihoodRequest

    requests = [LoglikelihoodRequest("Who are you?", "I am Nova, Jianfeng's assistant.")]
    epoch = trainer_runs / "torchtune" / "epoch_1"
    merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    missing, unexpected = merged.load_state_dict(
        load_file(epoch / "model-00001-of-00001.safetensors"), strict=False
    )
    assert not unexpected
    lm = HFBackend.load(tiny_model_dir, device="cpu")
    merged_lm = HFBackend(merged.eval(), lm.tokenizer, "merged", "cpu")
    lm.use_adapter(epoch)
    assert lm.loglikelihood(requests)[0].logprob == pytest.approx(
        merged_lm.loglikelihood(requests)[0].logprob, abs=1e-4
    )
    lm.use_adapter(None)
    assert lm.loglikelihood(requests)[0].logprob != pytest.approx(
        merged_lm.loglikelihood(requests)[0].logprob, abs=1e-3
    )


def test_torchtune_adapter_pt_alone(trainer_runs, tiny_model_dir, tmp_path):
    """When torchtune's own adapter_model.pt (torchtune key names) is all there is, it is
    converted as torchtune converts it and answers exactly like the peft copy."""
    from diag.diagnostics.discover import discover

    from diag.backend.checkpoints import apply_checkpoint
    from diag.backend.hf import HFBackend
    from diag.types import LoglikelihoodRequest

    run = tmp_path / "tt"
    shutil.copytree(trainer_runs / "torchtune", run)
    keep = {"adapter_model.pt"}
    for epoch in run.glob("epoch_*"):
        for f in epoch.iterdir():
            if f.name not in keep:
                f.unlink()
    settle(run)
    found = discover(run)
    assert [(c.step, c.format) for c in found.checkpoints] == [
        (4, "torchtune-adapter"),
        (8, "torchtune-adapter"),
    ]
    lm = HFBackend.load(tiny_model_dir, device="cpu")
    requests = [LoglikelihoodRequest("Who are you?", "I am Nova, Jianfeng's assistant.")]
    apply_checkpoint(lm, found.checkpoints[1])
    converted = lm.loglikelihood(requests)[0].logprob
    lm.use_adapter(trainer_runs / "torchtune" / "epoch_1")
    assert converted == pytest.approx(lm.loglikelihood(requests)[0].logprob, abs=1e-6)


def test_bin_weights_and_sharded_full_fine_tunes(tiny_model_dir, tiny_adapters, tmp_path):
    """What HF Trainer writes with transformers 4's ``save_safetensors=False`` (peft's
    ``save_pretrained(safe_serialization=False)`` -> adapter_model.bin; transformers 4
    ``save_pretrained(safe_serialization=False)`` -> ``torch.save`` of the state dict as
    pytorch_model.bin), and a full fine-tune sharded by transformers' own ``max_shard_size``."""
    import torch
    from diag.diagnostics.discover import discover
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    runs = tmp_path / "runs"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, tiny_adapters[0]).save_pretrained(
        runs / "lora-bin" / "checkpoint-3", safe_serialization=False
    )
    torch.manual_seed(0)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        full.model.norm.weight.mul_(1.5)
    full.config.save_pretrained(runs / "full-bin" / "checkpoint-3")
    torch.save(full.state_dict(), runs / "full-bin" / "checkpoint-3" / "pytorch_model.bin")
    full.save_pretrained(runs / "full-sharded" / "checkpoint-3", max_shard_size="50KB")
    shards = sorted((runs / "full-sharded" / "checkpoint-3").glob("model-*.safetensors"))
    assert len(shards) > 1
    settle(runs)
    found = discover(runs)
    assert [(c.run, c.format, len(c.files)) for c in found.checkpoints] == [
        ("full-bin", "full-model", 1),
        ("full-sharded", "full-model", len(shards) + 1),  # the index and every shard
        ("lora-bin", "peft-adapter", 2),
    ]
    result = identity_sweep(runs, tiny_model_dir)
    assert [(c["run"], c["status"]) for c in result.checkpoints if c["step"]] == [
        ("full-bin", "ok"),
        ("full-sharded", "ok"),
        ("lora-bin", "ok"),
    ]
    # the two full copies hold the same weights: they answer the same
    assert _logprobs(result, "full-bin", 3) == pytest.approx(_logprobs(result, "full-sharded", 3))
    assert _logprobs(result, "full-bin", 3) != pytest.approx(_logprobs(result, "base", 0))


def test_unsloth_outputs_and_saved_lora_model(tiny_model_dir, tiny_adapters, tmp_path):
    """unsloth (no CPU run possible; laid out from its source, tests/fixtures/trainers/unsloth/
    LAYOUT.md): TRL's outputs/checkpoint-N/ plus outputs/README.md, then
    model.save_pretrained("lora_model") beside outputs/ (peft's own writer), and the
    unsloth_compiled_cache/ it leaves in the working directory. lora_model holds the last
    checkpoint's weights: one row, both paths."""
    from diag.diagnostics.discover import discover
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    project = tmp_path / "project"
    for step, adapter in zip((2, 4), tiny_adapters):
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter
        )
        model.save_pretrained(project / "outputs" / f"checkpoint-{step}")
        (project / "outputs" / f"checkpoint-{step}" / "trainer_state.json").write_text(
            f'{{"global_step": {step}, "log_history": [{{"loss": 1.0, "step": {step}}}]}}'
        )
    model.save_pretrained(project / "lora_model")  # after trainer.train(): the last weights
    (project / "outputs" / "README.md").write_text("---\ntags:\n- trl\n- sft\n- unsloth\n---\n")
    (project / "unsloth_compiled_cache").mkdir()
    (project / "unsloth_compiled_cache" / "UnslothSFTTrainer.py").write_text("# generated\n")
    settle(project)
    found = discover(project)
    assert [(c.run, c.step, c.path.name) for c in found.checkpoints] == [
        ("outputs", 2, "checkpoint-2"),
        ("outputs", 4, "checkpoint-4"),
    ]
    assert found.checkpoints[1].aliases == [project / "lora_model"]
    assert found.skipped == []
