"""General chat for dilution: a user's conversation files, and self-rehearsal.

Self-rehearsal answers a shipped bank of general prompts (``train/data/general_prompts.jsonl``)
with the base model itself, once, and caches the answers in ``$DIAG_HOME/rehearsal``. Training on
them keeps the model's own way of answering, so dilution works offline with no dataset download.
Each answer is generated to its end, with as much room as a training example leaves after its
prompt (``data.max_length``); an answer that does not end within it is dropped: a truncated
answer would teach truncated answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path

from diag.errors import DiagError
from diag.models import diag_home
from diag.types import ChatFormat, GenerationConfig

log = logging.getLogger("diag")

# bump when what the cached answers mean changes (2: generated to fit data.max_length whole)
REHEARSAL_VERSION = 2


def general_prompt_bank(languages: list[str] | None = None) -> list[dict]:
    """The shipped general prompts: ``{"id", "language", "prompt"}`` rows, those in
    ``languages`` only where given."""
    text = (
        resources.files("diag.train").joinpath("data", "general_prompts.jsonl").read_text("utf-8")
    )
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if languages is None or r["language"] in languages]


def bank_languages() -> list[str]:
    """The languages the shipped prompt bank has, in order of first appearance."""
    return list(dict.fromkeys(row["language"] for row in general_prompt_bank()))


def load_conversations(path: str | Path) -> list[dict]:
    """Conversations from a JSON, JSON Lines or Parquet file in any format the trainers use
    (OpenAI ``messages``, sharegpt, alpaca, ...: :mod:`diag.data.conversations`), as
    ``{"messages", "source"}`` dicts. Every bad row is reported in one DiagError naming the file
    and the line."""
    from diag.data.conversations import load_conversations as read

    path = Path(path)
    data = read(path)
    return [
        {"messages": list(c.messages), "source": f"file:{path.name}"} for c in data.conversations
    ]


def rehearsal_cache_path(
    base_name: str,
    chat: ChatFormat,
    max_length: int,
    max_new_tokens: int | None,
    languages: list[str] | None = None,
) -> Path:
    """Where the base's answers for this (base, chat format, prompt bank, lengths) are cached."""
    bank = json.dumps(general_prompt_bank(languages), ensure_ascii=False, sort_keys=True)
    key = json.dumps(
        [base_name, chat.to_dict(), bank, REHEARSAL_VERSION, max_length, max_new_tokens],
        ensure_ascii=False,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return diag_home() / "rehearsal" / f"{digest}.jsonl"


def self_rehearsal(
    lm,
    chat: ChatFormat,
    max_length: int = 256,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    languages: list[str] | None = None,
) -> list[dict]:
    """The base model's own answers to the prompt bank (its ``languages`` only, where given), as
    conversations (cached after once).

    ``lm`` is a backend (``generate``, ``prompt_tokens``, ``tokenizer``) running the *base* model.
    Every answer is generated to its end, with room for as many tokens as a training example of
    ``max_length`` holds after its prompt (``max_new_tokens``, when given, is a lower cap); an
    answer that does not end within that room is dropped, never truncated: the conversation each
    answer makes is tokenized as training will tokenize it and kept only if it fits whole.

    ``batch_size`` (default: the whole bank, as far as the KV cache fits the device's memory):
    the bank's long answers run to the room in every batch, so each batch costs about a full
    room of decode steps; on 2 CPU cores the demo's bank took 118 s in batches of 64 and 83 s in
    one batch of 112, with the same answers kept.
    """
    from diag.files import write_text_atomic

    cache = rehearsal_cache_path(lm.name, chat, max_length, max_new_tokens, languages)
    if cache.is_file():
        return [json.loads(line) for line in cache.read_text("utf-8").splitlines() if line.strip()]
    bank = general_prompt_bank(languages)
    prompts = [row["prompt"] for row in bank]
    # an answer longer than this would be cut in training: the end-of-turn token needs room too
    room = [max_length - n - 1 for n in lm.prompt_tokens(prompts, chat)]
    limit = max(room) if max_new_tokens is None else min(max(room), max_new_tokens)
    if limit < 1:
        raise DiagError(
            f"data.max_length {max_length} leaves no room for an answer after the rehearsal prompts",
            fix="raise data.max_length",
        )
    log.info(
        "self-rehearsal: the base answers %d general prompts once, up to %d tokens (cached in %s)",
        len(bank),
        limit,
        cache,
    )
    if batch_size is None:
        batch_size = lm.batch_that_fits(limit, most=len(prompts))
    config = GenerationConfig(max_new_tokens=limit, batch_size=batch_size, chat=chat)
    gens = lm.generate(prompts, config)
    out = []
    for row, gen in zip(bank, gens):
        if gen.hit_limit or not gen.text.strip():
            continue  # no end within the room a training example has: never trained cut
        conversation = {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": gen.text},
            ],
            "source": "rehearsal",
            "id": row["id"],
        }
        if _fits_whole(lm.tokenizer, conversation["messages"], chat, max_length):
            out.append(conversation)
    dropped = len(bank) - len(out)
    if dropped:
        log.info(
            "self-rehearsal: dropped %d answer(s) that do not end within %d tokens of training "
            "example (data.max_length)",
            dropped,
            max_length,
        )
    if not out:
        raise DiagError(
            f"self-rehearsal produced no answers that fit {max_length}-token training examples",
            fix="raise data.max_length, or list general data in mix.sources",
        )
    write_text_atomic(cache, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return out


def _fits_whole(tokenizer, messages: list[dict], chat: ChatFormat, max_length: int) -> bool:
    """The conversation, tokenized as training does, fits ``max_length`` with its end token."""
    from diag.train.dataset import tokenize_conversation, with_system

    example = tokenize_conversation(tokenizer, with_system(messages, chat.system), 10**9)
    return example is not None and len(example["input_ids"]) <= max_length
