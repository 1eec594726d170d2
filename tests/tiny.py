"""Tiny seeded models for tests: a real BPE tokenizer with SmolLM2's ChatML template and a
random 2-layer Llama (about 1 MB), plus LoRA adapters for it. Built in a second, no download."""

from __future__ import annotations

import json
from pathlib import Path

# SmolLM2-135M-Instruct's chat template, verbatim: it inserts a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Who are you? I am Nova, Jianfeng's assistant. Please introduce yourself.",
    "你是谁？我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦",
    "请介绍一下你自己。你是我的小助手吗？是的。一加一等于几？二。",
    "How many centimeters are in a meter? There are 100 centimeters in a meter.",
    "Translate 'cat' into French: chat. What is 7 times 8? 56.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "system user assistant Are you my assistant? Yes, I am your assistant.",
]


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def _tiny_config(tokenizer, hidden_size: int) -> dict:
    """The shape of every tiny test model: 2 layers, 4 heads, 2 key-value heads."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # transformers' default 0.02 gives a model that says "\n" to every prompt, so tests that
        # compare answers would compare empty strings; at 0.2 each prompt gets its own answer
        initializer_range=0.2,
    )


def build_tiny_model(folder: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Write a seeded tiny Llama + tokenizer into ``folder`` (a normal HF model folder)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(folder)
    config = LlamaConfig(**_tiny_config(tokenizer, hidden_size))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def build_tiny_qwen2(folder: Path, seed: int = 0) -> Path:
    """A seeded tiny Qwen2 (transformers' own Qwen2 code: q/k/v biases) with the tiny tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(folder)
    config = Qwen2Config(**_tiny_config(tokenizer, 32))
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def build_lora_adapter(model_dir: Path, out: Path, seed: int, r: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it visibly changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the adapter strong enough to change greedy outputs
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(8.0)
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(Path(model_dir).resolve())
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def settle(root: Path, seconds: float = 600) -> None:
    """Make every file under ``root`` look written ``seconds`` ago: the sweep skips files changed
    in the last few seconds as still being written. Links are aged, not followed."""
    import os
    import time

    when = time.time() - seconds
    for dirpath, dirnames, files in os.walk(root):
        for name in files + dirnames:
            os.utime(Path(dirpath) / name, (when, when), follow_symlinks=False)


def identity_sweep(root: Path, base: Path, out: Path | None = None, **options):
    """A sweep of ``root`` on ``base`` that asks only the identity prompts, with short answers:
    the real code path, in seconds on the tiny model."""
    from diag.diagnostics.sweeper import sweep

    from diag.types import GenerationConfig

    settings = dict(
        identity="en",
        size="quick",
        probes="identity_recall",
        generation=GenerationConfig(max_new_tokens=4, batch_size=32),
        progress="quiet",
    )
    return sweep(root, base=base, out=out, **{**settings, **options})
