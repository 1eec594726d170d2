"""General chat for dilution: a user's conversation files, and self-rehearsal.

Self-rehearsal answers a shipped bank of general prompts (``train/data/general_prompts.jsonl``)
with the base model itself, once, and caches the answers in ``$DIAG_HOME/rehearsal``. Training on
them keeps the model's own way of answering, so dilution works offline with no dataset download.
Answers that hit the token limit are dropped: truncated answers would teach truncated answers.
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


def general_prompt_bank() -> list[dict]:
    """The shipped general prompts: ``{"id", "language", "prompt"}`` rows."""
    text = (
        resources.files("diag.train").joinpath("data", "general_prompts.jsonl").read_text("utf-8")
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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


def rehearsal_cache_path(base_name: str, chat: ChatFormat, max_new_tokens: int) -> Path:
    """Where the base's answers for this (base, chat format, prompt bank, limit) are cached."""
    bank = json.dumps(general_prompt_bank(), ensure_ascii=False, sort_keys=True)
    key = json.dumps([base_name, chat.to_dict(), bank, max_new_tokens], ensure_ascii=False)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return diag_home() / "rehearsal" / f"{digest}.jsonl"


def self_rehearsal(
    lm, chat: ChatFormat, max_new_tokens: int = 192, batch_size: int = 64
) -> list[dict]:
    """The base model's own answers to the prompt bank, as conversations (cached after once).

    ``lm`` is a backend (``generate(prompts, config)``) running the *base* model.
    """
    from diag.files import write_text_atomic

    cache = rehearsal_cache_path(lm.name, chat, max_new_tokens)
    if cache.is_file():
        return [json.loads(line) for line in cache.read_text("utf-8").splitlines() if line.strip()]
    bank = general_prompt_bank()
    log.info(
        "self-rehearsal: the base answers %d general prompts once (cached in %s)", len(bank), cache
    )
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat)
    gens = lm.generate([row["prompt"] for row in bank], config)
    out = []
    for row, gen in zip(bank, gens):
        if gen.hit_limit or not gen.text.strip():
            continue  # a truncated answer would teach the model to stop mid-sentence
        out.append(
            {
                "messages": [
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": gen.text},
                ],
                "source": "rehearsal",
                "id": row["id"],
            }
        )
    dropped = len(bank) - len(out)
    if dropped:
        log.info(
            "self-rehearsal: dropped %d answer(s) that hit the %d-token limit",
            dropped,
            max_new_tokens,
        )
    if not out:
        raise DiagError(
            f"self-rehearsal produced no complete answers within {max_new_tokens} tokens",
            fix="raise mix.rehearsal_max_new_tokens or list general data in mix.sources",
        )
    write_text_atomic(cache, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return out
