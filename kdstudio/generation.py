"""Batched generation with a Hugging Face causal LM from prompts of token ids, left padded.

The one way kdstudio generates: a local teacher answering a collection, evaluation's
students, and the student's own samples in on-policy distillation.

    got = generate_batch(model, prompts, pad_id=tok.pad_token_id, device=dev,
                         max_new_tokens=64, pad_token_id=tok.pad_token_id, ...)
    got.new_ids[i]              tokens generated after prompt i (padding after an early stop)
    got.output                  what `model.generate` returned (`.logits` when asked for)
    stop_at(ids, stops, keep=True)   ids up to the first stop token

The generate options are the caller's (sampling, stop ids, `output_logits`, ...). A neutral
module: teachers/, distill/ and evaluation all import it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Generated:
    """What one batched `generate` call gave."""

    new_ids: list[list[int]]  # per prompt, the tokens after the (padded) prompt
    output: Any  # model.generate's own result


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(input_ids, attention_mask) `[B, W]` long tensors of the prompts padded on the left, so
    that every prompt ends where generation starts."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def generate_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: Any,
    inference_mode: bool = True,
    **options: Any,
) -> Generated:
    """Generate continuations of `prompts` (token ids) as one left-padded batch.

    The model runs in eval mode for the call and gets its previous mode back. `options` go
    to `model.generate`. `inference_mode=False` generates under no_grad instead, for a model
    that trains afterwards (an inference tensor cached in a module would break its backward).
    """
    import torch

    input_ids, attention_mask = left_padded(prompts, pad_id, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode() if inference_mode else torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    finally:
        model.train(was_training)
    sequences = getattr(out, "sequences", out)  # return_dict_in_generate gives an object
    return Generated(sequences[:, input_ids.shape[1] :].tolist(), out)


def stop_at(ids: Sequence[int], stops: Collection[int], *, keep: bool) -> list[int]:
    """`ids` up to the first token in `stops`, that token included when `keep`; all of them
    when none is there."""
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    if end is None:
        return list(ids)
    return list(ids[: end + 1 if keep else end])
