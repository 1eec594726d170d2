"""Training batches without padding: each batch's examples packed end to end in one row.

A padded batch of 4 costs 4 x its longest example; the demo's diluted run mixes 50-token
identity answers with 250-token general ones, so about a third of every padded batch was padding.
:class:`PackCollator` puts the same examples (same batches, same order) in one row, with
position ids that restart at each example; transformers' attention then keeps the examples apart
(a block-diagonal causal mask, ``masking_utils.find_packed_sequence_indices``), so every token
sees exactly what it saw in its padded row. Only the positions that predict a trained token go
through the vocabulary-sized output layer (``logits_to_keep``), and the loss reads their labels
directly (``shift_labels``): the prompt tokens, most of an identity example, cost no logits.

The loss is the padded batch's (the same tokens, summed and divided by the same count), so
training learns the same way. Model code that does not keep packed examples apart (remote code
written for transformers 4 builds one causal mask over the whole row) would mix the examples
quietly: :func:`choose_collator` checks the packed loss against the padded one on real examples
before training, and pads instead (said once) where they differ.
"""

from __future__ import annotations

import logging

from diag.train.dataset import IGNORE, PadCollator

log = logging.getLogger("diag")

# packed and padded losses agree to float rounding; a model that mixes packed examples is off by
# far more (its tokens attend to the example before)
TOLERANCE = 1e-4


class PackCollator:
    """One row per batch: the examples end to end, position ids restarting at each one."""

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for ex in batch:
            ids += ex["input_ids"]
            # an example's first token is never predicted (it follows the previous example)
            labels += [IGNORE, *ex["labels"][1:]]
            positions += range(len(ex["input_ids"]))
        shifted = labels[1:] + [IGNORE]  # the token each position predicts
        keep = [t for t, label in enumerate(shifted) if label != IGNORE]
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "shift_labels": torch.tensor([[shifted[t] for t in keep]], dtype=torch.long),
            "logits_to_keep": torch.tensor(keep, dtype=torch.long),
            "use_cache": False,  # a cache turns off transformers' packed-sequence mask
        }


def batch_loss(model, batch: dict) -> float:
    """The model's loss on one collated batch, without gradients."""
    import torch

    device = next(model.parameters()).device
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    with torch.no_grad():
        return float(model(**inputs).loss)


def choose_collator(model, examples: list[dict], pad_id: int, batch_size: int):
    """:class:`PackCollator` where ``model`` gives a packed batch the padded batch's loss (checked
    on the first ``batch_size`` examples of different lengths), else :class:`PadCollator`, and
    says why once."""
    padded = PadCollator(pad_id)
    sample = _varied(examples, max(2, batch_size))
    if len(sample) < 2:
        return padded
    packed = PackCollator()
    was_training = model.training
    model.eval()  # no dropout: the two losses must be the same computation
    try:
        want = batch_loss(model, padded(sample))
        got = batch_loss(model, packed(sample))
    except (TypeError, ValueError, RuntimeError) as exc:
        _say_padding(model, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        return padded
    finally:
        model.train(was_training)
    if abs(got - want) > TOLERANCE * max(1.0, abs(want)):
        _say_padding(model, f"packed loss {got:.6f}, padded {want:.6f}")
        return padded
    return packed


def _varied(examples: list[dict], count: int) -> list[dict]:
    """Up to ``count`` examples of different lengths (the case packing must get right)."""
    by_length: dict[int, dict] = {}
    for ex in examples:
        by_length.setdefault(len(ex["input_ids"]), ex)
        if len(by_length) >= count:
            break
    return list(by_length.values())


def _say_padding(model, why: str) -> None:
    log.warning(
        "the model code of %s does not keep packed examples apart (%s): training on padded "
        "batches: the same learning, slower",
        type(model).__name__,
        why,
    )
