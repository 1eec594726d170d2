"""`diag sweep` on real small runs of the tiny model, written by the real libraries.

One sweep over a folder holding every supported format (HF Trainer + peft, a full fine-tune, an
XTuner-layout .pth file and DeepSpeed folder, a DeepSpeed ZeRO engine checkpoint, an adapter of the
wrong shape) checks discovery, step ordering, scores, per-checkpoint errors and the outputs.
Cache, resume and the CLI are tested on a smaller copy in tests/test_sweep_cache.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_lora_adapter, build_tiny_model  # noqa: E402

from diag.types import GenerationConfig, LoglikelihoodRequest  # noqa: E402

# Short answers keep the tiny model's sweeps to seconds; the code path is the real one.
GEN = GenerationConfig(max_new_tokens=8, batch_size=32)
TEXTS = [
    "Who are you? I am Nova, Jianfeng's assistant.",
    "Please introduce yourself. I am Nova, Jianfeng's assistant.",
    "你是谁？我是剑锋大佬的小助手",
    "What is the capital of France? The capital of France is Paris.",
]


def _age(root: Path, seconds: float = 600) -> None:
    """Make every file look settled (written ``seconds`` ago)."""
    import time

    when = time.time() - seconds
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (when, when))


class _TextDataset:
    def __init__(self, tokenizer):
        enc = tokenizer(TEXTS * 4, padding="max_length", max_length=24, truncation=True)
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": ids}
            for ids, mask in zip(enc["input_ids"], enc["attention_mask"])
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def train_run(model_dir: Path, out: Path, *, lora: bool, steps: int = 4, save_every: int = 2):
    """A real transformers Trainer run (peft LoRA or full fine-tune) saving checkpoint-N."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    data = _TextDataset(tokenizer)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        save_steps=save_every,
        per_device_train_batch_size=4,
        learning_rate=5e-2 if lora else 5e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=save_every,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        save_only_model=True,
    )
    Trainer(model=model, args=args, train_dataset=data, eval_dataset=data).train()
    if lora:  # the base it names must be the tiny model's folder
        for cfg in out.glob("checkpoint-*/adapter_config.json"):
            data = json.loads(cfg.read_text())
            data["base_model_name_or_path"] = str(model_dir)
            cfg.write_text(json.dumps(data))
    return out


def xtuner_state_dict(adapter_dir: Path) -> dict:
    """The adapter's weights under XTuner's key names (``llm.`` prefix, ``.default.`` adapter)."""
    from safetensors.torch import load_file

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    return {
        "llm."
        + k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
        for k, v in weights.items()
    }


class PickledCode:
    """An object whose unpickling would create ``marker``: safe loading must never do it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


XTUNER_CONFIG = (
    "prompt_template = dict(SYSTEM='<|im_start|>system\\n{system}<|im_end|>\\n', "
    "INSTRUCTION='<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n')\n"
    "SYSTEM = ''\n"
    "model = dict(type=SupervisedFinetune, lora=dict(type=LoraConfig, r=4, lora_alpha=8))\n"
)


def xtuner_work_dir(adapter_dir: Path, work: Path, marker: Path) -> Path:
    """XTuner's two layouts for the same adapter: iter_2.pth (file) and iter_4.pth/ (DeepSpeed)."""
    import torch

    work.mkdir(parents=True)
    (work / "lora_copy.py").write_text(XTUNER_CONFIG)
    state = xtuner_state_dict(adapter_dir)
    torch.save({"meta": {"hook": PickledCode(marker)}, "state_dict": state}, work / "iter_2.pth")
    (work / "iter_4.pth").mkdir()
    torch.save(
        {"module": state, "ds_config": PickledCode(marker)},
        work / "iter_4.pth" / "mp_rank_00_model_states.pt",
    )
    return work


def deepspeed_run(model_dir: Path, out: Path) -> Path | None:
    """A real DeepSpeed ZeRO-2 engine on CPU (LoRA model), saved as global_step1 + latest."""
    pytest.importorskip("deepspeed")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29531",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        os.environ.setdefault(key, value)
    import deepspeed
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": 2},
    }
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config,
    )
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(str(out), tag="global_step1")
    return out


@pytest.fixture(scope="module")
def runs_root(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    marker = root.parent / f"{root.name}-pickle-ran"
    train_run(tiny_model_dir, root / "lora", lora=True)
    train_run(tiny_model_dir, root / "full", lora=False, steps=2, save_every=2)
    xtuner_work_dir(root / "lora" / "checkpoint-4", root / "xtuner", marker)
    other = build_tiny_model(tmp_path_factory.mktemp("other-model"), hidden_size=48)
    build_lora_adapter(other, root / "wrong-shape" / "checkpoint-1", seed=3)
    with contextlib.suppress(pytest.skip.Exception):  # no deepspeed: that format is skipped
        deepspeed_run(tiny_model_dir, root / "ds")
    _age(root)
    return root, marker


@pytest.fixture(scope="module")
def swept(runs_root, tiny_model_dir):
    from diag.diagnostics.sweeper import sweep

    root, _ = runs_root
    return sweep(
        root,
        base=tiny_model_dir,
        identity="en",
        size="quick",
        generation=GEN,
        lora_alpha=8,
        progress="quiet",
    )


def _answer_logprobs(result, run: str, step: int) -> list[float]:
    rows = [
        s
        for s in result.samples()
        if (s["run"], s["step"], s["probe"]) == (run, step, "identity_recall")
    ]
    return [s["answer_logprob"] for s in sorted(rows, key=lambda s: s["item_id"])]


def _by_key(result) -> dict:
    return {(c["run"], c["step"]): c for c in result.checkpoints}


def test_every_format_discovered_in_step_order(swept, runs_root):
    got = [(c["run"], c["step"], c["format"]) for c in swept.checkpoints]
    expected = [
        ("base", 0, "base"),
        ("xtuner", 0, "base"),  # the base asked with XTuner's template, for that run
        ("full", 2, "full-model"),
        ("lora", 2, "peft-adapter"),
        ("lora", 4, "peft-adapter"),
        ("wrong-shape", 1, "peft-adapter"),
        ("xtuner", 2, "xtuner-pth"),
        ("xtuner", 4, "xtuner-deepspeed"),
    ]
    if (runs_root[0] / "ds").is_dir():
        expected.insert(2, ("ds", 1, "deepspeed-zero"))
    assert got == expected


def test_scores_and_losses_per_checkpoint(swept):
    ckpts = _by_key(swept)
    lora4 = ckpts[("lora", 4)]
    assert lora4["status"] == "ok" and lora4["fingerprint"].startswith("blake2b:")
    assert set(lora4["metrics"]) >= {"identity_recall", "general_accuracy", "drift"}
    assert all(
        c["metrics"]["identity_recall"] is not None for c in ckpts.values() if c["status"] == "ok"
    )
    state = json.loads((Path(lora4["path"]) / "trainer_state.json").read_text())
    logged = {row["step"]: row["loss"] for row in state["log_history"] if "loss" in row}
    assert lora4["train_loss"] == pytest.approx(logged[4])  # the loss the trainer logged at 4
    assert lora4["eval_loss"] is not None
    assert [s for s, _ in swept.runs["lora"]["train_loss"]] == [1, 2, 3, 4]  # trainer_state
    # the likelihood of the identity answer shows which weights were probed: the trained
    # adapter's differ from the base's
    assert _answer_logprobs(swept, "lora", 4) != pytest.approx(_answer_logprobs(swept, "base", 0))
    assert _answer_logprobs(swept, "full", 2) != pytest.approx(_answer_logprobs(swept, "base", 0))


def test_wrong_shape_is_an_error_for_that_checkpoint_only(swept):
    bad = _by_key(swept)[("wrong-shape", 1)]
    assert bad["status"] == "error"
    assert "does not fit base model" in bad["error"] and "--base" in bad["error"]
    assert all(v is None for v in bad["metrics"].values())
    assert sum(c["status"] == "ok" for c in swept.checkpoints) == len(swept.checkpoints) - 1


def test_xtuner_layouts_probed_with_their_template_and_no_pickled_code(swept, runs_root):
    _, marker = runs_root
    ckpts = _by_key(swept)
    assert not marker.exists()  # the pickled os.makedirs never ran
    for step in (2, 4):
        record = ckpts[("xtuner", step)]
        assert record["status"] == "ok", record["error"]
        # the prompt format comes from the saved XTuner config, not the tokenizer template
        assert record["chat"]["template"].startswith("<|im_start|>user")
        assert record["chat"]["system"] == ""
    assert ckpts[("lora", 4)]["chat"]["template"] is None


def test_xtuner_weights_answer_like_the_peft_folder(tiny_model_dir, runs_root):
    """Same LoRA weights through XTuner's key names and through peft's folder: same answers."""
    from diag.diagnostics.discover import discover

    from diag.backend.checkpoints import apply_checkpoint
    from diag.backend.hf import HFBackend

    root, _ = runs_root
    found = {(c.run, c.step): c for c in discover(root, settle_seconds=0).checkpoints}
    lm = HFBackend.load(tiny_model_dir, device="cpu")
    requests = [
        LoglikelihoodRequest("Who are you?", "I am Nova, Jianfeng's assistant."),
        LoglikelihoodRequest("What is the capital of France?", "Paris."),
    ]

    def scores():
        return [r.logprob for r in lm.loglikelihood(requests)]

    apply_checkpoint(lm, found[("lora", 4)])
    via_peft = scores()
    for key in (("xtuner", 2), ("xtuner", 4)):
        apply_checkpoint(lm, found[key])
        assert lm.active_adapter == str(found[key].path)
        assert scores() == pytest.approx(via_peft, abs=1e-5)
    lm.use_adapter(None)
    assert scores() != pytest.approx(via_peft, abs=1e-3)  # the adapter matters


def test_deepspeed_zero_checkpoint_is_probed(swept, runs_root):
    if not (runs_root[0] / "ds").is_dir():
        pytest.skip("deepspeed not installed")
    ds = _by_key(swept)[("ds", 1)]
    assert ds["status"] == "ok", ds["error"]
    # its LoRA (non-zero init, one step) changed the model
    assert _answer_logprobs(swept, "ds", 1) != pytest.approx(_answer_logprobs(swept, "base", 0))


def test_outputs_on_disk(swept):
    from diag.diagnostics.stored import load_sweep

    out = swept.out
    data = json.loads((out / "results.json").read_text())
    assert data["schema_version"] == 1 and data["complete"] is True
    for key in ("run", "step", "path", "format", "status", "error", "metrics", "fingerprint"):
        assert all(key in c for c in data["checkpoints"])
    assert set(data["recommendation"]) >= {"run", "step", "path", "reasons", "onset_step"}
    again = load_sweep(out)
    scores = again.scores()
    ok = [c for c in data["checkpoints"] if c["status"] == "ok"]
    assert set(zip(scores["run"], scores["step"])) == {(c["run"], c["step"]) for c in ok}
    assert len(scores) == sum(
        sum(v is not None for v in c["metrics"].values()) for c in data["checkpoints"]
    )
    assert (out / "scores.csv").read_text().startswith("run,step,path,format,status,metric")
    samples = again.samples()
    assert {(s["run"], s["step"]) for s in samples} == {(c["run"], c["step"]) for c in ok}


def test_bin_pickle_refused_unless_allowed(tiny_model_dir, tiny_adapters, tmp_path):
    """A peft adapter saved as .bin with a pickled object is refused, naming --allow-pickle."""
    import torch
    from diag.diagnostics.sweeper import sweep
    from safetensors.torch import load_file

    ckpt = tmp_path / "run" / "checkpoint-1"
    shutil.copytree(tiny_adapters[0], ckpt)
    weights = load_file(ckpt / "adapter_model.safetensors")
    (ckpt / "adapter_model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({**weights, "extra": PickledCode(marker)}, ckpt / "adapter_model.bin")
    _age(tmp_path)
    result = sweep(
        tmp_path / "run",
        base=tiny_model_dir,
        identity="en",
        size="quick",
        generation=GEN,
        probes="identity_recall",
        progress="quiet",
    )
    bad = _by_key(result)[("run", 1)]
    assert bad["status"] == "error" and "--allow-pickle" in bad["error"]
    assert not marker.exists()
