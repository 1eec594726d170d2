"""Training batches packed in one row: no padding, and the padded batch's loss and gradients."""

from __future__ import annotations

import logging

import pytest
import torch
from diag.train.dataset import IGNORE, PadCollator, tokenize_conversation, with_system
from diag.train.packing import PackCollator, choose_collator

CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Nova."}],
    [
        {"role": "user", "content": "What is the capital of France? Please answer in full."},
        {
            "role": "assistant",
            "content": "The capital of France is Paris. There are 100 centimeters in a meter.",
        },
    ],
    [
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "我是剑锋大佬的小助手"},
    ],
    [
        {"role": "user", "content": "Translate 'cat' into French."},
        {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "What is 7 times 8?"},
        {"role": "assistant", "content": "56"},
    ],
]


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    """The tiny Llama with a LoRA adapter whose B is not zero (so the adapter matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    return model, tokenizer


def _examples(tokenizer) -> list[dict]:
    out = [
        tokenize_conversation(tokenizer, with_system(c, "You are a helpful assistant."), 512)
        for c in CONVERSATIONS
    ]
    assert len({len(ex["input_ids"]) for ex in out}) == len(out)  # different lengths
    return out


def _loss_and_grads(model, batch: dict) -> tuple[float, dict]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return float(loss.detach()), grads


def test_a_packed_batch_has_no_padding_and_the_padded_batchs_loss_and_gradients(lora_model):
    model, tokenizer = lora_model
    model.eval()  # no dropout: both layouts must be the same computation
    examples = _examples(tokenizer)
    padded = PadCollator(tokenizer.pad_token_id)(examples)
    packed = PackCollator()(examples)
    # one row holding every example's tokens, nothing else: no padding to the longest one
    assert packed["input_ids"].shape == (1, sum(len(ex["input_ids"]) for ex in examples))
    assert padded["input_ids"].numel() > packed["input_ids"].numel()
    # the same tokens are trained: one logit row per trained token, none for the prompts
    trained = sum(label != IGNORE for ex in examples for label in ex["labels"])
    assert packed["logits_to_keep"].numel() == packed["shift_labels"].numel() == trained
    want_loss, want_grads = _loss_and_grads(model, padded)
    got_loss, got_grads = _loss_and_grads(model, packed)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_packed_examples_do_not_see_each_other(lora_model):
    """Each example's loss in a packed row is its loss alone: nothing leaks across examples."""
    model, tokenizer = lora_model
    model.eval()
    examples = _examples(tokenizer)
    alone = [_loss_and_grads(model, PackCollator()([ex]))[0] for ex in examples]
    counts = [sum(label != IGNORE for label in ex["labels"]) for ex in examples]
    together = _loss_and_grads(model, PackCollator()(examples))[0]
    assert together == pytest.approx(
        sum(a * n for a, n in zip(alone, counts)) / sum(counts), rel=1e-5
    )


def test_model_code_that_mixes_packed_examples_trains_padded_and_says_so(lora_model, caplog):
    """Code that builds one causal mask over the whole row (it ignores the position ids' restarts)
    would train each example on the ones before it: the check sees it and pads instead."""
    model, tokenizer = lora_model
    examples = _examples(tokenizer)
    assert isinstance(choose_collator(model, examples, tokenizer.pad_token_id, 4), PackCollator)
    real = model.forward

    def one_sequence(*args, **kwargs):  # positions 0..n over the row: no packed-sequence mask
        ids = kwargs.get("input_ids")
        if "position_ids" in kwargs and ids is not None:
            kwargs["position_ids"] = torch.arange(ids.shape[1])[None]
        return real(*args, **kwargs)

    model.forward = one_sequence
    try:
        with caplog.at_level(logging.WARNING, logger="diag"):
            chosen = choose_collator(model, examples, tokenizer.pad_token_id, 4)
    finally:
        del model.forward
    assert isinstance(chosen, PadCollator)
    said = [r.getMessage() for r in caplog.records if "packed examples apart" in r.getMessage()]
    assert len(said) == 1 and "padded batches" in said[0]
