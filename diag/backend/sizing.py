"""How many prompts to generate at once on a device: ``--batch-size auto``.

On a CPU (and Apple's MPS) the suite's default of 64 is the measured sweet spot (more only waits
longer for the longest answer in the batch). On a CUDA device the batch is sized to the memory:
what is left after the weights, halved for activations and the allocator, divided by the KV cache
one answer needs (prompt and answer tokens, every layer, keys and values). Pure arithmetic on
``config.json`` and file sizes, so the batch size (part of the cache key) is known before any
model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from diag.formats.layouts import shards

CPU_BATCH = 64  # DEFAULT_GENERATION.batch_size: the measured CPU optimum
MOST = 256  # beyond this the suite's sets (<= 182 prompts a language) gain nothing
PROMPT_TOKENS = 256  # a generous bound on a probe prompt with its system block


def fit_batch_size(
    memory: int, weight_bytes: int, config: dict, max_new_tokens: int, dtype_bytes: int = 2
) -> int:
    """The largest power of two (1..256) whose KV cache fits half the memory the weights leave.

    >>> cfg = {"num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16,
    ...        "num_key_value_heads": 8}
    >>> fit_batch_size(80 * 2**30, 4 * 2**30, cfg, 48)       # InternLM2-1.8B-sized, an 80 GB GPU
    256
    >>> fit_batch_size(6 * 2**30, 4 * 2**30, cfg, 48)        # 2 GB left after the weights
    32
    """
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 32)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 4096)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 32)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    per_token = 2 * layers * kv_heads * head_dim * dtype_bytes  # keys and values
    per_answer = per_token * (PROMPT_TOKENS + max_new_tokens)
    budget = (memory - weight_bytes) // 2
    if budget < per_answer:
        return 1
    fits = min(MOST, budget // per_answer)
    return 1 << (int(fits).bit_length() - 1)


def model_footprint(folder: Path) -> tuple[int, dict]:
    """(bytes of weights on disk, config.json) of a model folder; (0, {}) where unknown."""
    folder = Path(folder)
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except (OSError, ValueError):
        return 0, {}
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    files, _ = shards(folder)
    return sum(p.stat().st_size for p in files if p.suffix != ".json"), config
