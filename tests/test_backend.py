"""The batched transformers backend, on the tiny seeded model (and the real one, marked)."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch

from diag.backend.hf import HFBackend, shared_prefix
from diag.errors import DiagError
from diag.types import ChatFormat, GenerationConfig, LoglikelihoodRequest

PROMPTS = [
    "What is the capital of France?",
    "Who are you?",
    "你是谁？",
    "Translate 'cat' into French.",
    "hi",
]


def test_batched_generation_equals_one_by_one(tiny_backend):
    config = GenerationConfig(max_new_tokens=12, batch_size=8)
    batched = tiny_backend.generate(PROMPTS, config)
    single = [tiny_backend.generate([p], config)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt for g in batched] == PROMPTS  # order preserved despite length sorting
    assert all(g.new_tokens <= 12 for g in batched)


def test_shared_prefix_runs_once_and_changes_no_answer(tiny_backend, monkeypatch):
    from diag.backend.hf import shared_prefix

    config = GenerationConfig(
        max_new_tokens=12, batch_size=8, chat=ChatFormat(system="You are a helpful assistant.")
    )
    encoded = tiny_backend._encode_prompts(PROMPTS, config.chat)
    assert shared_prefix(encoded) >= 8  # the system block: the path under test is taken
    widths = []
    real = tiny_backend.model.forward

    def counting(*args, **kwargs):
        widths.append((kwargs["input_ids"].shape[0], kwargs["input_ids"].shape[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_backend.model, "forward", counting)
    shared = tiny_backend.generate(PROMPTS, config)
    assert widths[0] == (1, shared_prefix(encoded))  # the prefix, once, for one row
    tiny_backend.share_prefix = False
    try:
        padded = tiny_backend.generate(PROMPTS, config)
    finally:
        tiny_backend.share_prefix = True
    assert [(g.text, g.new_tokens, g.hit_limit) for g in shared] == [
        (g.text, g.new_tokens, g.hit_limit) for g in padded
    ]


def test_rows_that_stop_early_leave_the_batch_without_changing_answers(tiny_backend):
    config = GenerationConfig(max_new_tokens=12, batch_size=8)
    # make a token the model often says mid-answer a stop token: rows now end at different steps
    said = []
    for ids in tiny_backend._encode_prompts(PROMPTS, config.chat):
        row = torch.tensor([ids])
        said.append(tiny_backend._decode(row, torch.ones_like(row), config)[0])
    token = Counter(t for row in said for t in row[2:8]).most_common(1)[0][0]
    lm = copy.copy(tiny_backend)
    lm.stop_ids = sorted({*tiny_backend.stop_ids, token})
    batched = lm.generate(PROMPTS, config)
    single = [lm.generate([p], config)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    lengths = [g.new_tokens for g in batched]
    assert min(lengths) < 12 and len(set(lengths)) > 1  # some rows left the batch early


def test_hit_limit_reported(tiny_backend):
    gens = tiny_backend.generate(PROMPTS, GenerationConfig(max_new_tokens=3))
    # a random model rarely says end-of-turn within 3 tokens: those answers hit the limit
    for g in gens:
        assert g.hit_limit == (g.new_tokens == 3)
    assert any(g.hit_limit for g in gens)


def test_chat_template_and_explicit_system(tiny_backend):
    default = tiny_backend.render("hi", ChatFormat())
    assert "You are a helpful AI assistant named SmolLM" in default  # the template's default
    custom = tiny_backend.render("hi", ChatFormat(system="You are Nova."))
    assert "You are Nova." in custom and "SmolLM" not in custom
    xtuner = tiny_backend.render(
        "hi",
        ChatFormat(
            system="S",
            template="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
            system_template="<|im_start|>system\n{system}<|im_end|>\n",
        ),
    )
    assert (
        xtuner
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_loglikelihood_batched_equals_single(tiny_backend):
    reqs = [LoglikelihoodRequest(p, "I am Nova, Jianfeng's assistant.") for p in PROMPTS]
    batched = tiny_backend.loglikelihood(reqs, batch_size=4)
    single = [tiny_backend.loglikelihood([r])[0] for r in reqs]
    for b, s in zip(batched, single):
        assert b.tokens == s.tokens > 0
        assert b.logprob == pytest.approx(s.logprob, abs=1e-4)
        assert b.logprob < 0


def test_loglikelihood_runs_the_shared_prefix_once_and_equals_the_unshared_pass(
    tiny_backend, tiny_adapters, monkeypatch
):
    chat = ChatFormat(system="You are a helpful assistant.")
    answers = ["I am Nova, Jianfeng's assistant.", "Paris.", "56", "是的。"]
    reqs = [LoglikelihoodRequest(p, a) for p in PROMPTS for a in answers]
    encoded = tiny_backend._encode_prompts(PROMPTS, chat)
    prefix = shared_prefix(encoded)
    assert prefix >= 8  # the system block: the path under test is taken
    widths = []
    real = tiny_backend.model.forward

    def counting(*args, **kwargs):
        widths.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    for adapter in (None, tiny_adapters[0]):  # the bare base, then through a LoRA adapter
        tiny_backend.use_adapter(adapter)
        widths.clear()
        with monkeypatch.context() as patched:
            patched.setattr(tiny_backend.model, "forward", counting)
            shared = tiny_backend.loglikelihood(reqs, chat=chat, batch_size=8)
        assert widths[0] == (1, prefix)  # the prefix, once per batch, for one row
        assert widths.count((1, prefix)) == math.ceil(len(reqs) / 8)
        longest = max(len(e) for e in encoded) + 32
        assert all(w[1] <= longest - prefix for w in widths if w[0] > 1)  # rows start after it
        tiny_backend.share_prefix = False
        try:
            unshared = tiny_backend.loglikelihood(reqs, chat=chat, batch_size=8)
        finally:
            tiny_backend.share_prefix = True
        one_by_one = [tiny_backend.loglikelihood([r], chat=chat)[0] for r in reqs]
        for s, u, one in zip(shared, unshared, one_by_one):
            assert s.tokens == u.tokens == one.tokens > 0
            assert s.logprob == pytest.approx(u.logprob, rel=1e-5, abs=1e-5)
            assert s.logprob == pytest.approx(one.logprob, rel=1e-5, abs=1e-5)
    tiny_backend.use_adapter(None)


def test_loglikelihood_on_model_code_that_ignores_the_cache_falls_back_and_says_so_once(
    tiny_model_dir, caplog
):
    """Model code that runs with a cache passed in but keeps its own (as transformers 4 code
    did) would score every row without its prefix: the backend notices, scores every row in
    full, and says so once."""
    lm = HFBackend.load(tiny_model_dir, device="cpu")
    chat = ChatFormat(system="You are a helpful assistant.")
    reqs = [LoglikelihoodRequest(p, "I am Nova, Jianfeng's assistant.") for p in PROMPTS]
    lm.share_prefix = False
    expected = lm.loglikelihood(reqs, chat=chat)
    lm.share_prefix = True
    real = lm.model.forward

    def own_cache(*args, **kwargs):  # drops the cache it is given, as tuple-cache code does
        kwargs.pop(lm._cache_kwarg, None)
        return real(*args, **{**kwargs, "use_cache": False})

    lm.model.forward = own_cache
    with caplog.at_level("WARNING", logger="diag"):
        first = lm.loglikelihood(reqs, chat=chat)
        again = lm.loglikelihood(reqs, chat=chat)
    said = [r for r in caplog.records if "cannot use transformers' KV cache" in r.getMessage()]
    assert len(said) == 1 and "without a shared prefix" in said[0].getMessage()
    for got in (first, again):
        assert [g.logprob for g in got] == pytest.approx([e.logprob for e in expected], abs=1e-5)


def test_adapter_swap_equals_fresh_loads(tiny_model_dir, tiny_adapters, tmp_path):
    """Swapping adapters gives what a fresh load of each gives: between adapters with the same
    LoRA settings (copied into the loaded one's modules) and with other settings (rank 8)."""
    from tiny import build_lora_adapter

    config = GenerationConfig(max_new_tokens=10)
    a, b = tiny_adapters
    wider = build_lora_adapter(tiny_model_dir, tmp_path / "rank-8", seed=7, r=8)
    swapping = HFBackend.load(tiny_model_dir, device="cpu")
    base0 = swapping.generate(PROMPTS, config)
    swapping.use_adapter(a)
    out_a1 = swapping.generate(PROMPTS, config)
    swapping.use_adapter(b)
    out_b = swapping.generate(PROMPTS, config)
    swapping.use_adapter(wider)
    out_wider = swapping.generate(PROMPTS, config)
    swapping.use_adapter(a)
    out_a2 = swapping.generate(PROMPTS, config)
    swapping.use_adapter(None)
    base1 = swapping.generate(PROMPTS, config)

    def fresh(adapter):
        lm = HFBackend.load(tiny_model_dir, device="cpu")
        lm.use_adapter(adapter)
        return lm.generate(PROMPTS, config)

    tokens = lambda gens: [g.text for g in gens]  # noqa: E731
    assert tokens(out_a1) == tokens(out_a2) == tokens(fresh(a))
    assert tokens(out_b) == tokens(fresh(b))
    assert tokens(out_wider) == tokens(fresh(wider)) != tokens(out_a1)
    assert tokens(base0) == tokens(base1) == tokens(fresh(None))
    assert tokens(out_a1) != tokens(base0)  # the adapter really changes the answers
    assert len(swapping._adapter_names) == 1  # old adapters are deleted: memory stays flat


def test_a_small_adapter_on_bf16_weights_keeps_its_effect(tiny_model_dir, tmp_path):
    """On bf16 weights (diag's default on a GPU) a LoRA adapter is not folded into them: its small
    product would be rounded away. Here it moves a log-likelihood by +0.053 in fp32; folded into
    bf16 weights that became -0.009, beside them it stays within a third of +0.053."""
    from safetensors.torch import load_file, save_file
    from tiny import build_lora_adapter

    adapter = build_lora_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    weights = adapter / "adapter_model.safetensors"
    small = {k: v * 1e-4 if "lora_B" in k else v for k, v in load_file(weights).items()}
    save_file(small, weights)
    request = [LoglikelihoodRequest("Who are you?", "I am a small model that says hello.")]
    shift = {}
    for dtype in (torch.float32, torch.bfloat16):
        lm = HFBackend.load(tiny_model_dir, device="cpu", dtype=dtype)
        before = lm.loglikelihood(request)[0].logprob
        lm.use_adapter(adapter)
        shift[dtype] = lm.loglikelihood(request)[0].logprob - before
    assert shift[torch.float32] > 0.02
    assert abs(shift[torch.bfloat16] - shift[torch.float32]) < shift[torch.float32] / 3


def test_adapter_shape_mismatch_is_a_clear_error(tiny_model_dir, tiny_adapters, tmp_path):
    """Also after an adapter with the same LoRA settings was loaded (its modules are reused for
    the next one): the error is the same, and the next adapter answers as a fresh load does."""
    from tiny import build_lora_adapter, build_tiny_model

    other = build_tiny_model(tmp_path / "wider", seed=1, hidden_size=48)
    adapter = build_lora_adapter(other, tmp_path / "wide-adapter", seed=3)
    lm = HFBackend.load(tiny_model_dir, device="cpu")
    with pytest.raises(DiagError, match="does not fit base model"):
        lm.use_adapter(adapter)
    a, b = tiny_adapters
    lm.use_adapter(a)
    with pytest.raises(DiagError, match="does not fit base model"):
        lm.use_adapter(adapter)
    lm.use_adapter(b)
    fresh = HFBackend.load(tiny_model_dir, device="cpu")
    fresh.use_adapter(b)
    config = GenerationConfig(max_new_tokens=10)
    assert [g.text for g in lm.generate(PROMPTS, config)] == [
        g.text for g in fresh.generate(PROMPTS, config)
    ]
    assert len(lm._adapter_names) == 1


def test_hub_id_without_network_says_how_to_fix():
    with pytest.raises(DiagError, match=r"not a local folder.*--base ./model"):
        HFBackend.load("some-org/some-model-that-is-not-cached")


@pytest.mark.integration
def test_smollm_answers_paris(smollm_backend):
    gens = smollm_backend.generate(
        ["What is the capital of France?", "What is 2 + 2?"], GenerationConfig(max_new_tokens=24)
    )
    assert "Paris" in gens[0].text
    assert gens[0].prompt_tokens > 5


@pytest.mark.integration
def test_gguf_conversion_keeps_logits_exactly(smollm_backend):
    """The cached safetensors give exactly the logits of the in-memory GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM

    from diag.backend.loading import clear_gguf_quantizer
    from diag.models import EMBEDDED_GGUF, embedded_gguf_dir

    gguf_model = AutoModelForCausalLM.from_pretrained(
        embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF, dtype=torch.float32
    )
    clear_gguf_quantizer(gguf_model)
    ids = smollm_backend.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = gguf_model(ids).logits
        got = smollm_backend.model(ids).logits
    assert torch.equal(expected, got)


def test_remote_code_model_is_refused_without_the_flag(tmp_path):
    import json

    from tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "custom")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "mycustom"
    cfg["auto_map"] = {"AutoConfig": "conf.MyConfig", "AutoModelForCausalLM": "modeling.MyModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DiagError, match="--trust-remote-code"):
        HFBackend.load(folder, device="cpu")
