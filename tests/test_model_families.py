"""Model families (diag/backend/families): native architectures keep transformers' own code and
every fast path; InternLM2's mapping onto Llama is exact and invertible."""

from __future__ import annotations

import pytest
from internlm2 import build_tiny_internlm2
from tiny import build_tiny_model, build_tiny_qwen2

from diag.types import ChatFormat, GenerationConfig

PROMPTS = ["Who are you?", "你是谁？", "What is the capital of France?"]


@pytest.mark.parametrize("build", [build_tiny_model, build_tiny_qwen2], ids=["llama", "qwen2"])
def test_native_families_answer_as_their_own_forward_pass_with_the_kv_cache(build, tmp_path):
    import torch

    from diag.backend.hf import HFBackend

    folder = build(tmp_path / "model")
    lm = HFBackend.load(folder, device="cpu")
    assert lm.family.converts is False and lm.family.name == "Family"
    from transformers import AutoTokenizer

    # its own tokenizer passes the round trip: no fallback
    assert type(lm.tokenizer) is type(AutoTokenizer.from_pretrained(folder))
    chat = ChatFormat()
    got = lm.generate(PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=4, chat=chat))
    assert lm._cache_works is True  # the fast path, no fallback
    for prompt, generation in zip(PROMPTS, got):
        ids = lm.tokenizer(lm.render(prompt, chat), add_special_tokens=False)["input_ids"]
        new = []
        with torch.no_grad():
            for _ in range(8):
                logits = lm.model(input_ids=torch.tensor([ids + new]), use_cache=False).logits
                token = int(logits[0, -1].argmax())
                if token in lm.stop_ids:
                    break
                new.append(token)
        assert generation.new_tokens == len(new)
        assert generation.text == lm.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_internlm2_weights_map_onto_llama_and_back_exactly(tmp_path):
    from safetensors.torch import load_file

    from diag.backend.families import family_of

    folder = build_tiny_internlm2(tmp_path / "m", "mid-2024")
    family = family_of(folder)
    assert family.name == "InternLM2" and family.converts
    assert family.lora_targets == ("wqkv", "wo", "w1", "w2", "w3")
    state = load_file(str(folder / "model.safetensors"))
    native = family.weights_to_native(state)
    assert "model.layers.0.self_attn.k_proj.weight" in native and "lm_head.weight" in native
    assert native["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)  # 4 heads x 16
    assert native["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # 2 kv heads x 16
    back = family.weights_from_native(native)
    assert set(back) == set(state)
    assert all(bool((back[k] == state[k]).all()) for k in state)


def test_a_lora_on_wqkv_splits_into_q_k_v_with_the_same_product(tmp_path):
    import torch

    from diag.backend.families import family_of

    family = family_of(build_tiny_internlm2(tmp_path / "m", "early-2024"))
    torch.manual_seed(0)
    key = "base_model.model.model.layers.1.attention.wqkv.lora_{}.weight"
    a, b = torch.randn(4, 64), torch.randn(128, 4)  # (4 + 2 * 2) heads x 16 rows
    state, config = family.adapter_to_native(
        {key.format("A"): a, key.format("B"): b}, {"r": 4, "target_modules": ["wqkv", "w2"]}
    )
    assert config["target_modules"] == ["down_proj", "k_proj", "q_proj", "v_proj"]
    products = {}  # each projection's LoRA product, as weights of the converted model
    for proj in ("q_proj", "k_proj", "v_proj"):
        prefix = f"base_model.model.model.layers.1.self_attn.{proj}.lora_"
        products[f"model.layers.1.self_attn.{proj}.weight"] = (
            state[prefix + "B.weight"] @ state[prefix + "A.weight"]
        )
    fused = family.weights_from_native(products)["model.layers.1.attention.wqkv.weight"]
    torch.testing.assert_close(fused, b @ a, rtol=0, atol=0)
