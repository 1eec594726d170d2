"""Mixing, tokenising and label masking: loss on assistant tokens only.

Label masks come from segment lengths, never from the pad id: on SmolLM2 pad = eos = <|im_end|>,
and masking by pad id would hide the end-of-turn token so the model never learns to stop.
The prompt and the answer are tokenised separately, exactly as the backend scores and generates.
"""

from __future__ import annotations

import hashlib
import json
import random

IGNORE = -100


def mix_general(
    identity: list[dict], general: list[dict], ratio: float, seed: int = 0
) -> list[dict]:
    """Identity conversations plus general ones so general makes up ``ratio`` of the result.

    ``ratio`` 0.8 with 2,000 identity samples adds 8,000 general ones (the seed's remedy: 2,000
    inside 10,000). A small pool is cycled through in shuffled rounds. The result is shuffled.
    """
    rng = random.Random(seed)
    out = list(identity)
    if ratio > 0:
        if not general:
            raise ValueError("dilution asked for, but there is no general data")
        want = round(len(identity) * ratio / (1 - ratio))
        while want > 0:
            pool = general[:]
            rng.shuffle(pool)
            out += pool[:want]
            want -= len(pool[:want])
    rng.shuffle(out)
    return out


def data_hash(conversations: list[dict]) -> str:
    """Content hash of the training conversations, in order."""
    payload = json.dumps([c["messages"] for c in conversations], ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Prepend the training system prompt unless the conversation brings its own."""
    if system is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int) -> dict | None:
    """``input_ids`` and ``labels`` (-100 outside assistant turns) for one conversation.

    Each assistant turn learns its text and the template's end-of-turn token. Returns ``None`` when
    truncation to ``max_length`` leaves no assistant token to learn.
    """
    template = tokenizer.apply_chat_template
    ids: list[int] = []
    labels: list[int] = []
    consumed = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        context = template(messages[:i], tokenize=False, add_generation_prompt=True)
        if not context.startswith(consumed):  # a template that rewrites earlier turns
            ids, labels = [], []
            piece = context
        else:
            piece = context[len(consumed) :]
        full = template(messages[: i + 1], tokenize=False)
        after = (
            full[len(context) + len(msg["content"]) :]
            if full.startswith(context + msg["content"])
            else ""
        )
        end = after.rstrip() or (tokenizer.eos_token or "")
        prompt_ids = _ids(tokenizer, piece)
        answer_ids = _ids(tokenizer, msg["content"]) + _ids(tokenizer, end)
        ids += prompt_ids + answer_ids
        labels += [IGNORE] * len(prompt_ids) + answer_ids
        consumed = context + msg["content"] + end
    ids, labels = ids[:max_length], labels[:max_length]
    if not any(label != IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize_all(tokenizer, conversations: list[dict], system: str | None, max_length: int):
    """Tokenise every conversation; returns (examples, dropped count)."""
    out, dropped = [], 0
    for conv in conversations:
        ex = tokenize_conversation(tokenizer, with_system(conv["messages"], system), max_length)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


class PadCollator:
    """Right-pads a batch: pad id for inputs (attention 0), -100 for labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.tensor(ex["input_ids"])
            labels[row, :n] = torch.tensor(ex["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
