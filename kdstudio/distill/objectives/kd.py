"""What sparse and dense KD share: the student's side (fused with the LM head when the model
allows), the per-chunk loss and metrics, and the memory report at setup.

Both objectives return, per micro-batch, the sum over target tokens of

    (1 - kd_weight) * CE + kd_weight * tau^2 * KD(tau)     at positions that use KD
    CE                                                     at positions that fall back to CE

and report `ce` (per target token), `kd` (per KD position), `kd_share` (KD positions / target
tokens), `top1_agree` (student argmax == teacher's top candidate, per KD position) and
`student_entropy` (nats, per target token). Objectives whose targets come from
`kdstudio.distill.align` (sparse KD, dense KD across tokenizers) also report `kd_<kind>`:
the share of target tokens whose KD target is of each kind (`align.KINDS`).

Memory. The student's final hidden states are taken from the model with no logits computed
(`kdstudio.distill.hf.final_hidden`); the LM head runs fused with the loss over chunks of
`distill.chunk_size` target positions (`kdstudio.distill.fused_head`), so no `[B, T, V]`
logits of either model exist. When the model cannot be run that way (FSDP, a LoRA-adapted or
soft-capped LM head: checked on the first batch), the full logits are computed and the same
chunked loss runs on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kdstudio.distill.align import KIND_CODE, KINDS
from kdstudio.distill.fused_head import fused_head_loss
from kdstudio.distill.losses import cross_entropy, uld_topk_per_token
from kdstudio.distill.objectives.base import (
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    target_labels,
    target_rows,
)
from kdstudio.distill.plan import describe_memory, memory_estimate
from kdstudio.events import Log, Warning

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch


class KDObjective(Objective):
    """Base of sparse and dense KD: the student's side (fused or not) and the reported figures
    (see the module docstring)."""

    N_STATS = 5  # ce, kd, n_kd, top1 agree, entropy

    def _targets_loss(
        self,
        model: Any,
        batch: Batch,
        targets: tuple[Tensor, Tensor, Tensor],
        kd_weight: float,
        divergence: Any,
    ) -> ObjectiveOutput:
        """The loss of a batch against per-position teacher targets `(ids, logprobs, kinds)`
        `[B, T-1, K]`, `[B, T-1, K]`, `[B, T-1]` (`align.KIND_CODE`, 0 = CE): `divergence(logits,
        ids, logprobs)` per KD row, Universal Logit Distillation's distance at "uld" rows.
        Besides the usual figures it reports the share of each kind of KD position."""
        tau = self.config.distill.temperature
        rows = target_rows(batch)
        ids, lps, kinds = targets
        k = ids.shape[-1]
        ids = ids.reshape(-1, k).index_select(0, rows)
        lps = lps.reshape(-1, k).index_select(0, rows)
        kinds = kinds.reshape(-1).index_select(0, rows)
        is_kd = kinds > 0
        is_uld = kinds == KIND_CODE["uld"]
        any_uld = bool(is_uld.any())
        labels = target_labels(batch, rows)
        teacher_top1 = ids[:, 0]  # a position's targets are ordered by mass
        x, weight, bias = self.student_rows(model, batch, rows)

        def chunk_loss(logits: Tensor, r: slice) -> tuple[Tensor, Tensor]:
            kd = divergence(logits, ids[r], lps[r])
            if any_uld:
                kd = torch.where(is_uld[r], uld_topk_per_token(logits, lps[r]), kd)
            return chunk_terms(logits, labels[r], kd, is_kd[r], teacher_top1[r], kd_weight, tau)

        total, stats = fused_head_loss(
            chunk_loss, x, weight, bias, chunk_size=self.chunk_size, n_stats=self.N_STATS
        )
        out = self._output(total, stats, batch.n_target)
        counts = torch.bincount(kinds, minlength=len(KINDS) + 1).float()
        n = torch.tensor(float(batch.n_target), device=kinds.device)
        for kind, code in KIND_CODE.items():
            out.counts[f"kd_{kind}"] = (counts[code], n)
        return out

    def _output(self, total: Tensor, stats: Tensor, n_target: int) -> ObjectiveOutput:
        ce, kd, n_kd, agree, entropy = stats.unbind()
        n = torch.tensor(float(n_target), device=total.device)
        return ObjectiveOutput(
            total,
            {"ce": ce},
            {
                "kd": (kd, n_kd),
                "kd_share": (n_kd, n),
                "top1_agree": (agree, n_kd),
                "student_entropy": (entropy, n),
            },
        )


def place_targets(batch: Batch, found: list[Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example `align.Targets` of a batch as `(ids [B, T-1, K] long, logprobs [B, T-1, K]
    float, kinds [B, T-1] long)` tensors on its device, aligned with logits[:, :-1]; kind 0
    is a CE position, else `align.KIND_CODE` of how its target was made."""
    import numpy as np

    b, t = batch.input_ids.shape
    k = max((x.ids.shape[1] for x in found if x.n_kd), default=1)
    ids = np.full((b, t - 1, k), -1, np.int64)
    lps = np.full((b, t - 1, k), -np.inf, np.float32)
    kinds = np.zeros((b, t - 1), np.int64)
    for (row, start), enc, tg in zip(batch.offsets, batch.items, found, strict=True):
        if not tg.n_kd:
            continue
        pos = enc.prompt_len + tg.pos.astype(np.int64) - 1
        keep = pos < len(enc) - 1  # a packed row holds other examples after this one
        pos = start + pos[keep]
        ids[row, pos, : tg.ids.shape[1]] = tg.ids[keep]
        lps[row, pos, : tg.ids.shape[1]] = tg.logprobs[keep]
        kinds[row, pos] = tg.kinds[keep]
    dev = batch.input_ids.device
    return (
        torch.from_numpy(ids).to(dev),
        torch.from_numpy(lps).to(dev),
        torch.from_numpy(kinds).to(dev),
    )


def chunk_terms(
    logits: Tensor,
    labels: Tensor,
    kd: Tensor,
    is_kd: Tensor,
    teacher_top1: Tensor,
    w: float,
    tau: float,
) -> tuple[Tensor, Tensor]:
    """(loss sum, stats) of one chunk given per-row KD values (already 0 where not KD)."""
    z = logits.float()
    ce = cross_entropy(z, labels)
    loss = torch.where(is_kd, (1.0 - w) * ce + w * tau**2 * kd, ce).sum()
    with torch.no_grad():
        log_q = torch.log_softmax(z, dim=-1)
        entropy = -(log_q.exp() * log_q).sum(-1)
        agree = (z.argmax(-1) == teacher_top1) & is_kd
        stats = torch.stack(
            [ce.sum(), torch.where(is_kd, kd, 0.0).sum(), is_kd.sum(), agree.sum(), entropy.sum()]
        ).float()
    return loss, stats


def log_memory(ctx: ObjectiveContext, config: Any) -> dict[str, Any] | None:
    """Estimate the run's memory, log it, and warn when it nears what the device has."""
    try:
        est = memory_estimate(config, ctx.ws, device=ctx.device)
    except (OSError, ValueError) as exc:  # an estimate must never block a run
        ctx.sink.emit(Log(f"memory estimate unavailable: {exc}", level="warning"))
        return None
    ctx.sink.emit(Log(describe_memory(est)))
    if est.get("available") and est["total"] > 0.9 * est["available"]:
        ctx.sink.emit(
            Warning(
                f"estimated memory {est['total'] / 2**30:.1f} GiB exceeds 90% of the "
                f"{est['available'] / 2**30:.1f} GiB available on {est['device']}: lower "
                "optim.batch_size or data.max_length, or turn on run.gradient_checkpointing",
                where="memory",
            )
        )
    return est
