"""The decoding loops behind :meth:`diag.backend.hf.HFBackend.generate`.

:func:`decode_cached` is the fast path: transformers' ``DynamicCache``, the prompts' shared
prefix run once, finished rows dropped from the batch. :func:`decode_recompute` is the fallback
for model code that cannot take transformers 5's cache (remote code written for transformers 4):
the whole sequence again at every step, no cache at all -- slower, and exactly the model's own
forward pass.
"""

from __future__ import annotations

import torch


class CacheNotUsed(TypeError):
    """The model's code ran but kept a cache of its own: transformers' cache was left unused."""


def _choose(logits: torch.Tensor, config) -> torch.Tensor:
    if config.do_sample:
        probs = torch.softmax(logits.float() / config.temperature, dim=-1)
        return torch.multinomial(probs, 1).squeeze(1)
    return logits.argmax(dim=-1)


def _last_only(keep_kwarg: dict, inputs: torch.Tensor) -> dict:
    """``logits_to_keep`` for a pass over ``inputs``: the last position, as an index tensor when
    there are several. ``logits_to_keep=1`` slices the hidden states (a view strided across rows),
    and the output layer then runs as a batched product over one copy of its weight per row: on a
    CPU that took 0.36 s (fp32) to 3 s (bf16) per 64-row prefill, against ~0.03 s for the product
    over the gathered rows an index gives."""
    if not keep_kwarg or inputs.shape[1] == 1:
        return keep_kwarg
    return {"logits_to_keep": torch.tensor([inputs.shape[1] - 1], device=inputs.device)}


def decode_cached(
    model, ids, mask, config, stop_ids, *, shared: int = 0, cache_kwarg: str, keep_kwarg: dict
):
    """Decode one padded batch; returns each row's new tokens (its stop token included).

    A hand-written loop instead of ``model.generate``: a row that reaches its stop token
    leaves the batch and the KV cache at once, so short answers do not pay for the longest
    one in their batch (on a CPU most answers are short, and this halves a probe run).
    The first ``shared`` tokens are the same in every row (the chat template's system block):
    they are run once, for one row, and their KV cache is copied to the others. The padding
    sits after them, and positions come from the mask, so every row sees exactly the
    sequence it would see alone. Greedy unless ``config.do_sample`` (plain temperature
    sampling, no top-k/top-p). ``keep_kwarg``: ``{"logits_to_keep": 1}`` where the model's
    forward takes it.
    """
    from transformers import DynamicCache

    tokens: list[list[int]] = [[] for _ in range(ids.shape[0])]
    alive = torch.arange(ids.shape[0], device=ids.device)
    stops = torch.tensor(stop_ids, device=ids.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    inputs = ids
    if shared:
        model(
            input_ids=ids[:1, :shared],
            position_ids=positions[:1, :shared],
            use_cache=True,
            **keep_kwarg,
            **{cache_kwarg: cache},
        )
        cache.batch_repeat_interleave(ids.shape[0])
        inputs, positions = ids[:, shared:], positions[:, shared:]
    for _ in range(config.max_new_tokens):
        out = model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **_last_only(keep_kwarg, inputs),
            **{cache_kwarg: cache},
        )
        if not isinstance(getattr(out, "past_key_values", cache), type(cache)):
            # the model's code kept a cache of its own (tuples) and left ours empty
            raise CacheNotUsed("the model returned its own cache type, not transformers' cache")
        chosen = _choose(out.logits[:, -1, :], config)
        for row, token in zip(alive.tolist(), chosen.tolist()):
            tokens[row].append(token)
        going = ~torch.isin(chosen, stops)
        if not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, chosen, mask = alive[keep], chosen[keep], mask[keep]
            positions = positions[keep]
        inputs = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[:, -1:] + 1
    return tokens


def decode_recompute(model, ids, mask, config, stop_ids, *, keep_kwarg: dict):
    """:func:`decode_cached` without a cache: every step runs the whole (left-padded) sequence."""
    tokens: list[list[int]] = [[] for _ in range(ids.shape[0])]
    alive = torch.arange(ids.shape[0], device=ids.device)
    stops = torch.tensor(stop_ids, device=ids.device)
    for _ in range(config.max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            **_last_only(keep_kwarg, ids),
        ).logits[:, -1, :]
        chosen = _choose(logits, config)
        for row, token in zip(alive.tolist(), chosen.tolist()):
            tokens[row].append(token)
        going = ~torch.isin(chosen, stops)
        if not bool(going.any()):
            break
        keep = going.nonzero().squeeze(1)
        alive, ids, mask, chosen = alive[keep], ids[keep], mask[keep], chosen[keep]
        ids = torch.cat([ids, chosen[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return tokens


def unshare_prefix(ids: torch.Tensor, mask: torch.Tensor, shared: int, pad: int):
    """A batch laid out as [shared prefix][left padding][rest] as plain left padding."""
    width = ids.shape[1]
    out_ids, out_mask = torch.full_like(ids, pad), torch.zeros_like(mask)
    for row in range(ids.shape[0]):
        seq = torch.cat([ids[row, :shared], ids[row, shared:][mask[row, shared:].bool()]])
        out_ids[row, width - len(seq) :] = seq
        out_mask[row, width - len(seq) :] = 1
    return out_ids, out_mask
