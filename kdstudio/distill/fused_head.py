"""The LM head fused with the loss: logits, loss and gradient one chunk of rows at a time.

    loss_sum, stats = fused_head_loss(chunk_loss, x, weight, bias, chunk_size=512, n_stats=5)

`x [N, H]` are the final hidden states of the N positions that carry loss and `weight [V, H]`
(`bias [V]`) the LM head, or `x [N, V]` are logits already when weight is None. For each chunk
of rows, `chunk_loss(logits_chunk, rows)` returns `(loss sum, stats)`; its gradient is taken
right there, in the forward pass, and only the gradients of x, weight and bias are kept. So
no `[N, V]` logits (fp32 or otherwise) outlive their chunk, and the backward pass is one
multiplication by the incoming gradient: no recomputation.

A chunk function marked `analytic = True` returns `(loss, stats, d loss / d logits)` itself
(dense forward KL does: one pass fewer over the chunk's logits); any other is differentiated
by autograd per chunk. Value and gradient equal the unchunked sum's. Every KD objective
runs on this engine; `kdstudio.distill.losses` holds the per-token losses it sums.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class _FusedHead(torch.autograd.Function):
    """Sum over chunks of `chunk_loss(F.linear(x[rows], weight, bias), rows)`, with each chunk's
    gradient computed in the forward pass (no recomputation, no full logits kept).

    Returns (loss sum, stats [S]) where stats are no-grad sums the chunk function reports. With
    weight None, x already holds logits. A chunk function with `analytic = True` returns
    `(loss, stats, d loss / d logits)` itself (no autograd graph per chunk: fewer passes
    over the [n, V] logits); any other is differentiated by autograd.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, chunk_loss, chunk_size, n_stats):  # noqa: ANN001
        grads = [
            torch.zeros_like(t) if t is not None and t.requires_grad else None
            for t in (x, weight, bias)
        ]
        # fp32 (float64 inputs keep float64, so the engine itself passes gradcheck)
        acc = torch.promote_types(torch.float32, x.dtype)
        total = torch.zeros((), dtype=acc, device=x.device)
        stats = torch.zeros(n_stats, dtype=torch.float32, device=x.device)
        leaves = [
            t.detach().requires_grad_(t.requires_grad) if t is not None else None
            for t in (weight, bias)
        ]
        analytic = getattr(chunk_loss, "analytic", False)
        for start in range(0, x.shape[0], chunk_size):
            rows = slice(start, min(start + chunk_size, x.shape[0]))
            if analytic:
                xc = x[rows].detach()
                logits = xc if weight is None else F.linear(xc, weight, bias)
                loss, chunk_stats, g = chunk_loss(logits, rows)
                _accumulate_linear(grads, rows, xc, weight, g)
            else:
                xc = x[rows].detach().requires_grad_(x.requires_grad)
                with torch.enable_grad():
                    logits = xc if weight is None else F.linear(xc, leaves[0], leaves[1])
                    loss, chunk_stats = chunk_loss(logits, rows)
                inputs = [
                    (k, t) for k, t in enumerate((xc, *leaves)) if t is not None and t.requires_grad
                ]
                if inputs:
                    got = torch.autograd.grad(loss, [t for _, t in inputs])
                    for (k, _), g in zip(inputs, got, strict=True):
                        if k == 0:
                            grads[0][rows] = g
                        else:
                            grads[k] += g
            total += loss.detach().to(acc)
            stats += chunk_stats
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has = [g is not None for g in grads]
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, g_total, _g_stats):  # noqa: ANN001
        saved = ctx.saved_tensors
        out = [
            s * g_total.to(s.dtype) if has else None for s, has in zip(saved, ctx.has, strict=True)
        ]
        return (*out, None, None, None)


def _accumulate_linear(
    grads: list[Tensor | None], rows: slice, x: Tensor, weight: Tensor | None, g: Tensor
) -> None:
    """Add the gradients of `F.linear(x, weight, bias)` given `g = d loss / d logits`."""
    gx, gw, gb = grads
    if weight is None:
        if gx is not None:
            gx[rows] = g.to(gx.dtype)
        return
    if gx is not None:
        gx[rows] = (g.to(weight.dtype) @ weight).to(gx.dtype)
    if gw is not None:
        gw += (g.t().to(x.dtype) @ x).to(gw.dtype)
    if gb is not None:
        gb += g.sum(0).to(gb.dtype)


def fused_head_loss(
    chunk_loss: Any,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None = None,
    *,
    chunk_size: int = 512,
    n_stats: int = 0,
) -> tuple[Tensor, Tensor]:
    """`(loss_sum, stats)` of `chunk_loss(logits_chunk, rows) -> (scalar, stats [n_stats])`
    over chunks of the rows of `x [N, H]` (logits = `F.linear(x, weight, bias)`; `x [N, V]`
    are logits already when weight is None). Value and gradient equal the unchunked sum."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _FusedHead.apply(x, weight, bias, chunk_loss, chunk_size, n_stats)
