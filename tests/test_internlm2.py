"""InternLM2, the seed's own model family, end to end on tiny models built from its published
code (both generations, tests/internlm2.py): answers and log-likelihoods equal the remote code's
own forward pass, tokenizers are checked, and probe / sweep (XTuner and HF layouts) / merge /
train all work."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from internlm2 import (
    LORA_TARGETS,
    build_tiny_internlm2,
    lora_model,
    reference_generate,
    reference_loglikelihood,
    reference_model,
    reference_prompt_ids,
    reference_tokenizer,
    write_peft_checkpoint,
    write_xtuner_run,
)
from tiny import identity_sweep, settle

from diag.errors import DiagError
from diag.formats.xtuner import PROMPT_TEMPLATES
from diag.types import ChatFormat, GenerationConfig, LoglikelihoodRequest

DYNAMIC = {"type": "dynamic", "factor": 2.0}  # as internlm2 / internlm2.5 hub configs set it
VARIANTS = {
    "early-null": ("early-2024", None),
    "early-dynamic": ("early-2024", DYNAMIC),
    "mid-null": ("mid-2024", None),
    "mid-dynamic": ("mid-2024", DYNAMIC),
}
PROMPTS = [
    "Who are you?",
    "你是谁？",
    "What is the capital of France?",
    "Please introduce yourself.",
]
SYSTEM = "You are Nova, a helpful assistant made by Jianfeng."  # a long shared prefix
XTUNER = ChatFormat(
    system="",
    template=PROMPT_TEMPLATES["internlm2_chat"]["INSTRUCTION"],
    system_template=PROMPT_TEMPLATES["internlm2_chat"]["SYSTEM"],
)
NEW_TOKENS = 10


@pytest.fixture(scope="module", autouse=True)
def diag_home(tmp_path_factory):
    """The converted copies go to a throwaway $DIAG_HOME."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIAG_HOME", str(tmp_path_factory.mktemp("diag-home")))
        yield


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory):
    """variant -> a built tiny InternLM2 folder (built on first use)."""
    built = {}

    def get(variant: str):
        if variant not in built:
            generation, rope = VARIANTS[variant]
            folder = tmp_path_factory.mktemp(f"internlm2-{variant}")
            built[variant] = build_tiny_internlm2(folder, generation, rope_scaling=rope)
        return built[variant]

    return get


def _reference_answers(model, tokenizer, chat: ChatFormat) -> list[str]:
    answers = []
    for prompt in PROMPTS:
        if chat.template is None:
            text = tokenizer.apply_chat_template(
                [{"role": "system", "content": chat.system}, {"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = reference_prompt_ids(tokenizer, prompt, chat)
        new = reference_generate(model, ids, NEW_TOKENS)
        answers.append((tokenizer.decode(new, skip_special_tokens=True).strip(), len(new)))
    return answers


@pytest.mark.parametrize("native", [True, False], ids=["converted", "remote-code"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_answers_and_loglikelihoods_equal_the_remote_code_reference(internlm2, variant, native):
    from diag.backend.hf import HFBackend

    folder = internlm2(variant)
    model, tokenizer = reference_model(folder), reference_tokenizer(folder)
    lm = HFBackend.load(folder, trust_remote_code=True, device="cpu", native=native)
    assert type(lm.tokenizer).__name__ == "InternLM2Tokenizer"  # the garbling fast one is not used
    for chat in (ChatFormat(system=SYSTEM), XTUNER):
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=4, chat=chat)
        got = [(g.text, g.new_tokens) for g in lm.generate(PROMPTS, config)]
        assert got == _reference_answers(model, tokenizer, chat)
    answers = ["I am Nova.", "我是剑锋大佬的小助手", "Paris"]
    requests = [LoglikelihoodRequest(p, a) for p in PROMPTS[:2] for a in answers]
    got = lm.loglikelihood(requests, chat=XTUNER)
    for request, result in zip(requests, got):
        ids = reference_prompt_ids(tokenizer, request.prompt, XTUNER)
        cont = tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
        assert result.tokens == len(cont)
        assert result.logprob == pytest.approx(reference_loglikelihood(model, ids, cont), abs=1e-4)


@pytest.mark.parametrize("native", [True, False], ids=["converted", "remote-code"])
@pytest.mark.parametrize("variant", ["early-null", "mid-null"])
def test_loglikelihoods_after_a_shared_system_prompt_equal_the_reference(
    internlm2, variant, native, caplog
):
    """The system block every prompt shares runs once per batch where the code takes
    transformers' cache (the converted copy, the mid-2024 code); the early-2024 code keeps tuple
    caches, so every row is scored in full and that is said once. Same numbers either way."""
    from diag.backend.hf import HFBackend, shared_prefix

    folder = internlm2(variant)
    model, tokenizer = reference_model(folder), reference_tokenizer(folder)
    lm = HFBackend.load(folder, trust_remote_code=True, device="cpu", native=native)
    chat = ChatFormat(system=SYSTEM)
    assert shared_prefix(lm._encode_prompts(PROMPTS, chat)) >= 8  # the shared path is tried
    answers = ["I am Nova.", "我是剑锋大佬的小助手", "Paris"]
    requests = [LoglikelihoodRequest(p, a) for p in PROMPTS for a in answers]
    with caplog.at_level(logging.WARNING, logger="diag"):
        got = lm.loglikelihood(requests, chat=chat, batch_size=4)
        again = lm.loglikelihood(requests, chat=chat, batch_size=4)
    fast = native or variant.startswith("mid")
    assert lm._cache_works is fast
    said = [r for r in caplog.records if "cannot use transformers' KV cache" in r.getMessage()]
    assert len(said) == (0 if fast else 1)
    for request, result, repeated in zip(requests, got, again):
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request.prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cont = tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
        expected = reference_loglikelihood(model, ids, cont)
        assert result.tokens == len(cont)
        assert result.logprob == pytest.approx(expected, abs=1e-5, rel=1e-5)
        assert repeated.logprob == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_a_garbling_fast_tokenizer_is_replaced_by_the_slow_one_and_said_once(
    internlm2, caplog, tmp_path
):
    from transformers import AutoTokenizer

    from diag.backend.tokenizer_check import ROUND_TRIP_SAMPLE, load_tokenizer

    folder = shutil.copytree(internlm2("mid-null"), tmp_path / "model")  # not loaded before
    fast = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ids = fast(ROUND_TRIP_SAMPLE, add_special_tokens=False)["input_ids"]
    assert fast.decode(ids) != ROUND_TRIP_SAMPLE  # what transformers 5 hands out garbles

    with caplog.at_level(logging.WARNING, logger="diag"):
        first = load_tokenizer(folder, trust_remote_code=True)
        second = load_tokenizer(folder, trust_remote_code=True)
    assert type(first).__name__ == type(second).__name__ == "InternLM2Tokenizer"
    assert first.decode(first("I am Nova")["input_ids"], skip_special_tokens=True) == "I am Nova"
    said = [r for r in caplog.records if "does not give text back" in r.getMessage()]
    assert len(said) == 1 and "InternLM2TokenizerFast" in said[0].getMessage()


def test_a_tokenizer_nothing_can_round_trip_is_a_one_line_error(internlm2, tmp_path):
    from diag.backend.tokenizer_check import load_tokenizer

    folder = shutil.copytree(internlm2("mid-null"), tmp_path / "no-slow-class")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"]["AutoTokenizer"][0] = None  # only the fast class, as some repos ship
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DiagError) as err:
        load_tokenizer(folder, trust_remote_code=True)
    message = str(err.value)
    assert str(folder) in message and "does not give text back" in message
    assert "\n" not in message.split(" Fix: ")[0] and err.value.fix


def test_without_trust_remote_code_the_message_is_diags_own(internlm2, monkeypatch):
    from diag.backend.hf import HFBackend

    # transformers is not asked: depending on what is installed it prompts on stdin, falls back
    # to another tokenizer reader (tiktoken's "ValueError: tiktoken is required") or converts
    # the sentencepiece file itself
    def asked(*args, **kwargs):
        pytest.fail("transformers was asked to load a model that ships code")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", asked)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", asked)
    with pytest.raises(DiagError, match="ships its own code") as err:
        HFBackend.load(internlm2("early-null"), device="cpu")
    assert "--trust-remote-code" in err.value.fix


def _answers(result, run: str, step: int) -> dict[str, str]:
    rows = [json.loads(line) for line in (result.out / "samples.jsonl").read_text().splitlines()]
    return {r["prompt"]: r["answer"] for r in rows if r["run"] == run and r["step"] == step}


@pytest.mark.parametrize("variant", ["early-null", "mid-dynamic"])
def test_sweep_of_an_xtuner_run_scores_every_checkpoint_as_the_lora_model_answers(
    internlm2, variant, tmp_path
):
    from click.testing import CliRunner
    from diag.diagnostics.stored import load_sweep

    from diag.cli import cli

    folder = internlm2(variant)
    work_dir = write_xtuner_run(folder, tmp_path / "work_dirs" / "internlm2_lora")
    settle(tmp_path)
    out = tmp_path / "results"
    args = ["sweep", str(tmp_path / "work_dirs"), "--trust-remote-code", "--identity", "en"]
    args += ["--size", "quick", "--probes", "identity_recall", "--max-new-tokens", "6"]
    args += ["--out", str(out), "--quiet", "--no-report"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    sweep = load_sweep(out)
    rows = sweep.data["checkpoints"]
    assert sorted((r["step"], r["status"]) for r in rows) == [(0, "ok"), (2, "ok"), (4, "ok")]
    assert all(r["format"] in ("base", "xtuner-pth") for r in rows)
    assert rows[0]["chat"]["template"] == XTUNER.template  # the run's internlm2_chat template

    # the answers at iter_4 are the LoRA model's own (remote code, peft, no cache)
    answers = _answers(sweep, "internlm2_lora", 4)
    model, tokenizer = lora_model(folder, seed=201), reference_tokenizer(folder)
    for prompt, answer in list(answers.items())[:3]:
        new = reference_generate(model, reference_prompt_ids(tokenizer, prompt, XTUNER), 6)
        assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()
    assert work_dir.is_dir()


def test_hf_layout_adapters_sweep_merge_and_load_back(internlm2, tmp_path):
    import torch

    from diag.backend.merge_weights import AdapterSource, merge_adapter

    folder = internlm2("mid-null")
    run = tmp_path / "runs" / "lora"
    for i, step in enumerate((2, 4)):
        write_peft_checkpoint(folder, run / f"checkpoint-{step}", seed=300 + i)
    settle(tmp_path / "runs")
    result = identity_sweep(tmp_path / "runs", folder, trust_remote_code=True)
    rows = result.data["checkpoints"]
    assert [(r["step"], r["status"]) for r in rows] == [(0, "ok"), (2, "ok"), (4, "ok")]
    model, tokenizer = lora_model(folder, seed=301), reference_tokenizer(folder)
    for prompt, answer in list(_answers(result, "lora", 4).items())[:3]:
        # the sweep's default prompt format for an HF run: the tokenizer's chat template
        new = reference_generate(model, reference_prompt_ids(tokenizer, prompt), 4)
        assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()

    merged = merge_adapter(
        AdapterSource("checkpoint-4", adapter_dir=run / "checkpoint-4"),
        tmp_path / "merged",
        base=folder,
        trust_remote_code=True,
    )
    # the merged folder is an InternLM2 folder (its code, config, tokenizer) holding base + LoRA
    assert json.loads((merged / "config.json").read_text())["architectures"] == [
        "InternLM2ForCausalLM"
    ]
    assert (merged / "modeling_internlm2.py").read_bytes() == (
        folder / "modeling_internlm2.py"
    ).read_bytes()
    expected = model.merge_and_unload().state_dict()
    got = reference_model(merged).state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_xtuner_pth_merges_through_the_cli(internlm2, tmp_path):
    import torch
    from click.testing import CliRunner

    from diag.cli import cli

    folder = internlm2("early-dynamic")
    work_dir = write_xtuner_run(folder, tmp_path / "work", steps=(2,))
    out = tmp_path / "merged"
    args = ["merge", str(work_dir / "iter_2.pth"), "--out", str(out), "--base", str(folder)]
    result = CliRunner().invoke(cli, [*args, "--force", "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    expected = lora_model(folder, seed=200)
    # XTuner's lora_alpha (8, from its config) over r=4, as the peft model built with alpha 2r
    expected = expected.merge_and_unload().state_dict()
    got = reference_model(out).state_dict()
    for name in ("model.layers.0.attention.wqkv.weight", "model.layers.1.feed_forward.w2.weight"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_train_puts_lora_on_internlm2s_own_modules_and_the_sweep_reads_it(
    internlm2, tmp_path, caplog
):
    from diag.train.config import load_config
    from diag.train.recipe import run_training

    folder = internlm2("early-null")
    out = tmp_path / "run"
    overrides = [f"base={folder}", "trust_remote_code=true", f"output_dir={out}", "max_steps=2"]
    overrides += ["save_every=1", "batch_size=2", "data.identity_samples=8", "lora.r=4"]
    with caplog.at_level(logging.WARNING, logger="diag"):
        result = run_training(load_config(None, overrides + ["cpu_threads=1"]))
    assert [c.name for c in result.checkpoints] == ["checkpoint-1", "checkpoint-2"]
    # InternLM2's own code makes one causal mask over a packed row: the batches are padded
    batches = json.loads((out / "diag-run.json").read_text())["data"]["batches"]
    said = [r.getMessage() for r in caplog.records if "packed examples apart" in r.getMessage()]
    assert batches == "padded" and len(said) == 1
    config = json.loads((out / "checkpoint-2" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(LORA_TARGETS)
    settle(out)
    swept = identity_sweep(out, folder, trust_remote_code=True)
    assert [r["status"] for r in swept.data["checkpoints"]] == ["ok", "ok", "ok"]


def test_diag_probe_on_an_internlm2_adapter(internlm2, tmp_path):
    from click.testing import CliRunner

    from diag.cli import cli

    folder = internlm2("early-dynamic")
    adapter = write_peft_checkpoint(folder, tmp_path / "run" / "checkpoint-3", seed=7)
    out = tmp_path / "probe"
    args = [
        "probe",
        str(adapter),
        "--identity",
        "en",
        "--size",
        "quick",
        "--probes",
        "identity_recall",
    ]
    args += ["--max-new-tokens", "4", "--trust-remote-code", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["adapter"] == str(adapter.resolve())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(s["answer"], str) for s in samples)
