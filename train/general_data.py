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
ROLES = ("system", "user", "assistant")


def general_prompt_bank() -> list[dict]:
    """The shipped general prompts: ``{"id", "language", "prompt"}`` rows."""
    text = (
        resources.files("diag.train").joinpath("data", "general_prompts.jsonl").read_text("utf-8")
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_conversations(path: str | Path) -> list[dict]:
    """Read conversations from JSONL or JSON (a list): OpenAI ``messages`` or alpaca fields.

    Alpaca rows (``instruction``, optional ``input``, ``output``) become one user/assistant turn.
    Every bad row is reported in one :class:`DiagError` naming the file and line.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    problems: list[str] = []
    rows: list[tuple[int, object]] = []
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DiagError(f"'{path}' is not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise DiagError(f"'{path}' must hold a JSON list of conversations")
        rows = list(enumerate(data, 1))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError:
                problems.append(f"line {n}: not JSON")
    out: list[dict] = []
    for n, row in rows:
        conv, why = _to_conversation(row)
        if conv is None:
            problems.append(f"{'item' if path.suffix == '.json' else 'line'} {n}: {why}")
        else:
            out.append({"messages": conv, "source": f"file:{path.name}"})
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise DiagError(
            f"conversation file '{path}' has {len(problems)} bad row(s): {shown}",
            fix='use {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} '
            'or alpaca {"instruction", "input", "output"} rows',
        )
    if not out:
        raise DiagError(f"conversation file '{path}' is empty")
    return out


def _to_conversation(row) -> tuple[list[dict] | None, str]:
    if not isinstance(row, dict):
        return None, "not an object"
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None, "'messages' must be a non-empty list"
        for m in msgs:
            if (
                not isinstance(m, dict)
                or m.get("role") not in ROLES
                or not isinstance(m.get("content"), str)
            ):
                return None, f"message {m!r} needs role in {ROLES} and string content"
        if not any(m["role"] == "assistant" for m in msgs):
            return None, "no assistant message to learn from"
        return [{"role": m["role"], "content": m["content"]} for m in msgs], ""
    if "instruction" in row and "output" in row:
        prompt = str(row["instruction"])
        if row.get("input"):
            prompt += "\n\n" + str(row["input"])
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(row["output"])},
        ], ""
    return None, "needs 'messages' or alpaca 'instruction'/'output'"


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
