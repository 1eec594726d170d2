"""The forward passes behind :meth:`diag.backend.hf.HFBackend.loglikelihood`.

:func:`continuation_logprobs` scores one batch of (context, continuation) token lists. With
``shared`` > 0 the contexts' common prefix (the chat template's system block) runs once, for one
row, and its KV cache is copied to every row, as generation does (:mod:`diag.backend.decoding`);
the rest of each row then runs on that cache. Without it, every row runs from its first token.
Both give the same numbers (to float rounding); the shared path needs model code that takes
transformers' ``DynamicCache``, and raises :class:`~diag.backend.decoding.CacheNotUsed` (a
``TypeError``) where the code ran but left the cache unused, so the caller can fall back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from diag.backend.decoding import CacheNotUsed

# A batch's logits (rows x positions x vocabulary) stay under this many elements (256 MiB in
# fp32), so a large batch size cannot run a long-answer or large-vocabulary model out of memory.
# Prefill is efficient well below this (a dozen 90-token rows are already ~1000 positions), and
# at 1 GiB the log-likelihood pass set the sweep's peak RSS (2.3 GiB vs 1.5 GiB at rest).
LOGITS_BUDGET = 2**26


def bounded_batches(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, vocab: int
) -> Iterator[list[int]]:
    """Consecutive slices of ``order`` (sorted by length) of at most ``batch_size`` rows whose
    padded logits fit :data:`LOGITS_BUDGET`; a single row always forms a batch. ``lengths``: the
    positions of each request whose logits are computed.

    >>> list(bounded_batches([0, 1, 2], [10, 10, 10], 8, LOGITS_BUDGET // 20))
    [[0, 1], [2]]
    """
    batch: list[int] = []
    for i in order:
        width = max([lengths[j] for j in batch] + [lengths[i]])
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width * vocab > LOGITS_BUDGET):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def continuation_logprobs(
    model,
    contexts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    pad: int,
    device,
    shared: int = 0,
    cache_kwarg: str = "past_key_values",
    keeps_logits: bool = True,
) -> list[float]:
    """Sum of log p(continuation | context) for each row of one batch.

    Rows are right-padded: each row's positions are those it has alone. Only the positions that
    predict some row's continuation go through the (vocabulary-sized) output layer.
    ``shared``: how many leading context tokens every row has in common (at most the shortest
    context less one, so every row's last context token, whose logits predict the continuation's
    first token, is its own). ``keeps_logits``: the model's forward takes ``logits_to_keep``.
    """
    seqs = [list(c) + list(k) for c, k in zip(contexts, continuations)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    ids, mask = ids.to(device), mask.to(device)
    # logits at position t predict token t+1: the first needed is the shortest context's last
    first = max(0, min(len(c) for c in contexts) - 1)
    if shared:
        logits = _shared_pass(model, ids, mask, first, shared, cache_kwarg, keeps_logits)
    else:
        logits = _plain_pass(model, ids, mask, first, keeps_logits)
    out = []
    for row, (context, continuation) in enumerate(zip(contexts, continuations)):
        n_ctx, n_cont = len(context), len(continuation)
        if n_cont == 0:
            out.append(0.0)
            continue
        step_logits = logits[row, n_ctx - 1 - first : n_ctx + n_cont - 1 - first].float()
        target = torch.tensor(continuation, device=step_logits.device)
        logprobs = torch.log_softmax(step_logits, dim=-1).gather(1, target[:, None]).squeeze(1)
        out.append(float(logprobs.sum()))
    return out


def _plain_pass(model, ids, mask, first: int, keeps_logits: bool) -> torch.Tensor:
    """Every row from its first token; logits from position ``first`` on."""
    if keeps_logits:
        keep = torch.arange(first, ids.shape[1], device=ids.device)
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, first:]


def _shared_pass(
    model, ids, mask, first: int, shared: int, cache_kwarg: str, keeps_logits: bool
) -> torch.Tensor:
    """The first ``shared`` tokens once for one row, their cache copied to every row, then the
    rest of each row on that cache; logits from position ``first`` on."""
    from transformers import DynamicCache

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    keep_one = {"logits_to_keep": 1} if keeps_logits else {}
    model(
        input_ids=ids[:1, :shared],
        position_ids=positions[:1, :shared],
        use_cache=True,
        **keep_one,
        **{cache_kwarg: cache},
    )
    if cache.get_seq_length() != shared:  # the model's code kept a cache of its own
        raise CacheNotUsed("the model did not fill transformers' cache with the shared prefix")
    cache.batch_repeat_interleave(ids.shape[0])
    rest = {}
    if keeps_logits:
        rest["logits_to_keep"] = torch.arange(
            first - shared, ids.shape[1] - shared, device=ids.device
        )
    out = model(
        input_ids=ids[:, shared:],
        attention_mask=mask,
        position_ids=positions[:, shared:],
        use_cache=True,
        **rest,
        **{cache_kwarg: cache},
    )
    if cache.get_seq_length() != ids.shape[1]:  # the rows ran without the prefix: wrong numbers
        raise CacheNotUsed("the model did not read the shared prefix from transformers' cache")
    return out.logits if keeps_logits else out.logits[:, first - shared :]
