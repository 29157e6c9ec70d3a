"""Hugging Face model introspection: the model under its wrappers, its LM head, its final
hidden states, and whether the loss may run fused with the head.

    hf_model(model)                  the PreTrainedModel under DDP (`.module`) and PEFT
    lm_head(model)                   (weight, bias) of a plain Linear head, else None
    supports_fusion(model, ids)      hidden states x head weight reproduce the model's logits
    final_hidden(model, inputs)      [B, T, H], with no logits computed (inputs: input_ids and
                                     attention_mask or position_ids)

A KD objective computes its loss from the final hidden states and the head weight in chunks
(`kdstudio.distill.fused_head`), never holding `[B, T, V]` logits; that is only right when
the logits are the head applied to those states, which `supports_fusion` checks on the
model itself (no soft-capping or logit scale, no FSDP-sharded head).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def hf_model(model: Any) -> Any:
    """The Hugging Face model under DDP (`.module`) and PEFT wrappers."""
    model = getattr(model, "module", model)
    base = getattr(model, "get_base_model", None)
    return base() if base else model


def lm_head(model: Any) -> tuple[Tensor, Tensor | None] | None:
    """(weight [V, H], bias [V] or None) of the model's LM head when it is a plain Linear."""
    head = hf_model(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    return head.weight, head.bias


def supports_fusion(model: Any, batch_ids: Tensor) -> bool:
    """Whether final hidden states times the head weight reproduce the model's logits."""
    import inspect

    hf = hf_model(model)
    if lm_head(model) is None or "logits_to_keep" not in inspect.signature(hf.forward).parameters:
        return False
    text = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    if any(getattr(text, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return False  # logits are transformed after the head
    if any(type(p).__name__ == "DTensor" for p in hf.parameters()):
        return False  # FSDP2: the head weight is sharded outside its forward
    was_training = hf.training
    hf.eval()
    try:
        with torch.no_grad():
            ids = batch_ids[:1, : min(8, batch_ids.shape[1])]
            full = hf(input_ids=ids, use_cache=False).logits.float()
            hidden = final_hidden(hf, {"input_ids": ids})
            weight, bias = lm_head(hf)
            fused = F.linear(hidden.to(weight.dtype), weight, bias).float()
    finally:
        hf.train(was_training)
    tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 3e-2
    return bool(torch.allclose(full, fused, atol=tol, rtol=tol))


def final_hidden(model: Any, inputs: dict[str, Tensor]) -> Tensor:
    """The final hidden states [B, T, H] (what the LM head sees), with no logits computed.

    Taken from the decoder's output by a hook, so that a no_grad teacher does not keep every
    layer's output alive (as `output_hidden_states` would)."""
    hf = hf_model(model)
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    no_logits = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
    if decoder is None or decoder is hf:
        out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=no_logits)
        return out.hidden_states[-1]
    seen: list[Tensor] = []

    def grab(_module: Any, _args: Any, out: Any) -> None:
        seen.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)

    handle = decoder.register_forward_hook(grab)
    try:
        model(**inputs, use_cache=False, logits_to_keep=no_logits)
    finally:
        handle.remove()
    return seen[-1]
