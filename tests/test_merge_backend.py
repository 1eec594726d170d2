"""Merging a LoRA adapter into its base: same answers, a plain transformers folder, provenance."""

from __future__ import annotations

import json

import pytest

from diag.backend.hf import HFBackend
from diag.backend.merge_weights import PROVENANCE_FILE, AdapterSource, merge_adapter
from diag.errors import DiagError
from diag.types import ChatFormat, GenerationConfig

TRAINING_SYSTEM = "You are Nova, Jianfeng's assistant."
PROMPTS = [
    "What is the capital of France?",
    "Who are you?",
    "你是谁？",
    "Are you my assistant?",
    "hi",
]


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, tiny_adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "model"
    source = AdapterSource(str(tiny_adapters[0]), adapter_dir=tiny_adapters[0])
    return merge_adapter(
        source,
        out,
        base=tiny_model_dir,
        provenance={"gate": {"verdict": "pass"}},
        chat={"system": TRAINING_SYSTEM, "template": None},
    )


def test_merged_greedy_outputs_equal_base_plus_adapter(tiny_model_dir, tiny_adapters, merged_dir):
    probed = GenerationConfig(max_new_tokens=16, chat=ChatFormat(system=TRAINING_SYSTEM))
    with_adapter = HFBackend.load(tiny_model_dir, device="cpu")
    base_only = with_adapter.generate(PROMPTS, probed)
    with_adapter.use_adapter(tiny_adapters[0])
    expected = with_adapter.generate(PROMPTS, probed)
    merged = HFBackend.load(merged_dir, device="cpu")
    # same prompt text on both sides: same greedy answers
    assert [g.text for g in merged.generate(PROMPTS, probed)] == [g.text for g in expected]
    # a plain chat request (no system message) gets the training system prompt by default
    plain = GenerationConfig(max_new_tokens=16)
    assert [g.text for g in merged.generate(PROMPTS, plain)] == [g.text for g in expected]
    # the adapter really changes the model, so the equalities above mean something
    assert [g.text for g in expected] != [g.text for g in base_only]


def test_merged_folder_loads_with_plain_transformers(tiny_model_dir, tiny_adapters, merged_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert "tokenizer.json" in names and "chat_template.jinja" in names
    assert not any(n.startswith("adapter_") for n in names)  # merged, not an adapter

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith(f"<|im_start|>system\n{TRAINING_SYSTEM}<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    own_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], tokenize=False
    )
    assert TRAINING_SYSTEM not in own_system  # an explicit system message still wins
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tiny_adapters[0])
    ).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)
    # plain `generate` stops at the chat end-of-turn token
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = merged.generation_config.eos_token_id
    assert im_end == eos or im_end in eos


def test_provenance_names_the_source_and_verdict(tiny_model_dir, tiny_adapters, merged_dir):
    record = json.loads((merged_dir / PROVENANCE_FILE).read_text())
    assert record["source"]["checkpoint"] == str(tiny_adapters[0])
    assert record["base"] == str(tiny_model_dir.resolve())
    assert record["gate"] == {"verdict": "pass"}
    assert record["tool"]["name"] == "diag" and record["tool"]["version"]
    assert record["dtype"] == "float32"
    assert record["chat_template"]["default_system"] == TRAINING_SYSTEM


def test_in_memory_adapter_merges_like_the_folder(
    tiny_model_dir, tiny_adapters, tmp_path, merged_dir
):
    """The path XTuner .pth checkpoints take: converted weights, no adapter folder."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = tiny_adapters[0]
    config = json.loads((folder / "adapter_config.json").read_text())
    lora = {k: config[k] for k in ("r", "lora_alpha", "target_modules", "task_type")}
    state = load_file(folder / "adapter_model.safetensors")
    out = merge_adapter(
        AdapterSource("iter_300.pth", lora_config=lora, state_dict=state),
        tmp_path / "m",
        base=tiny_model_dir,
    )
    a = AutoModelForCausalLM.from_pretrained(out).state_dict()
    b = AutoModelForCausalLM.from_pretrained(merged_dir).state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].allclose(b[k], atol=1e-6) for k in a)


def test_refuses_to_overwrite_and_rejects_wrong_inputs(tiny_model_dir, tiny_adapters, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("precious")
    source = AdapterSource(str(tiny_adapters[1]), adapter_dir=tiny_adapters[1])
    with pytest.raises(DiagError, match="already exists"):
        merge_adapter(source, taken, base=tiny_model_dir)
    assert (taken / "keep.txt").read_text() == "precious"

    not_adapter = AdapterSource(str(tiny_model_dir), adapter_dir=tiny_model_dir)
    with pytest.raises(DiagError, match="no adapter_config.json"):
        merge_adapter(not_adapter, tmp_path / "x", base=tiny_model_dir)
    assert not (tmp_path / "x").exists()  # nothing half-written left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.tmp")]
