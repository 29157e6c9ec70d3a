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
    over the [n, V] logits); any other is differentiated by autograd with respect to the
    chunk's logits. Either way the gradients of x, weight and bias follow from d loss / d
    logits by two matrix products per chunk.

    Speed under autocast: the head is cast to the autocast dtype once, not for every chunk (a
    matmul under autocast casts its fp32 weight each call: twice a chunk, [V, H] each time),
    and the chunks run outside autocast on those copies. The head's gradient is accumulated
    in fp32 (a bf16 product added to an fp32 sum; on CUDA with fp32 output straight from the
    matrix unit where torch offers it).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, chunk_loss, chunk_size, n_stats):  # noqa: ANN001
        grads = [
            torch.zeros_like(t) if t is not None and t.requires_grad else None
            for t in (x, weight, bias)
        ]
        gx, gw, gb = grads
        device = x.device.type
        amp = torch.is_autocast_enabled(device)
        # the dtype the chunks compute in: autocast's, else the inputs' own
        if amp:
            compute = torch.get_autocast_dtype(device)
        else:
            compute = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
        w = weight.detach().to(compute) if weight is not None else None
        b = bias.detach().to(compute) if bias is not None else None
        # fp32 (float64 inputs keep float64, so the engine itself passes gradcheck)
        acc = torch.promote_types(torch.float32, x.dtype)
        total = torch.zeros((), dtype=acc, device=x.device)
        stats = torch.zeros(n_stats, dtype=torch.float32, device=x.device)
        analytic = getattr(chunk_loss, "analytic", False)
        with torch.autocast(device, enabled=False):
            for start in range(0, x.shape[0], chunk_size):
                rows = slice(start, min(start + chunk_size, x.shape[0]))
                xc = x[rows].detach().to(compute)
                logits = xc if w is None else F.linear(xc, w, b)
                if analytic:
                    loss, chunk_stats, g = chunk_loss(logits, rows)
                else:
                    logits = logits.requires_grad_()
                    with torch.enable_grad():
                        loss, chunk_stats = chunk_loss(logits, rows)
                    (g,) = torch.autograd.grad(loss, [logits])
                g = g.to(compute)
                if w is None:
                    if gx is not None:
                        gx[rows] = g.to(gx.dtype)
                else:
                    if gx is not None:
                        gx[rows] = (g @ w).to(gx.dtype)
                    if gw is not None:
                        _add_product(gw, g.t(), xc)
                    if gb is not None:
                        gb += g.sum(0, dtype=gb.dtype)
                total += loss.detach().to(acc)
                stats += chunk_stats.detach().float()
        ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in grads])
        ctx.has = [t is not None for t in grads]
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, g_total, _g_stats):  # noqa: ANN001
        saved = ctx.saved_tensors
        out = [
            s * g_total.to(s.dtype) if has else None for s, has in zip(saved, ctx.has, strict=True)
        ]
        return (*out, None, None, None)


def _add_product(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """`acc += a @ b`, with `a @ b` summed in acc's (higher) precision where it can be."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if acc.is_cuda:
        try:  # torch >= 2.8 on CUDA: bf16/fp16 inputs, fp32 accumulate and output, in place
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    acc += (a @ b).to(acc.dtype)


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


def cross_entropy_chunk(labels: Tensor) -> Any:
    """The chunk function of plain next-token cross-entropy, gradient in closed form:
    d CE / d z = softmax(z) - onehot(y). `labels [N]` are the targets of x's rows. Stats:
    the CE sum (as the loss). One log-softmax in fp32, then its exp in place: four passes
    over the chunk's logits in all."""

    def chunk(logits: Tensor, rows: slice) -> tuple[Tensor, Tensor, Tensor]:
        y = labels[rows].unsqueeze(-1)
        dtype = torch.promote_types(torch.float32, logits.dtype)  # fp32, or float64's own
        log_q = torch.log_softmax(logits, dim=-1, dtype=dtype)
        ce = -log_q.gather(-1, y).squeeze(-1).sum()
        grad = log_q.exp_()
        grad.scatter_add_(-1, y, torch.full(y.shape, -1.0, dtype=dtype, device=grad.device))
        return ce, ce.detach().reshape(1), grad

    chunk.analytic = True
    return chunk
