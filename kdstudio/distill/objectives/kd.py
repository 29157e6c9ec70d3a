"""What sparse and dense KD share: the student's side (fused with the LM head when the model
allows), the per-chunk loss and metrics, and the memory report at setup.

Both objectives return, per micro-batch, the sum over target tokens of

    (1 - kd_weight) * CE + kd_weight * tau^2 * KD(tau)     at positions that use KD
    CE                                                     at positions that fall back to CE

and report `ce` (per target token), `kd` (per KD position), `kd_share` (KD positions / target
tokens), `top1_agree` (student argmax == teacher's top candidate, per KD position) and
`student_entropy` (nats, per target token).

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

from kdstudio.distill.losses import cross_entropy
from kdstudio.distill.objectives.base import Objective, ObjectiveContext, ObjectiveOutput
from kdstudio.distill.plan import describe_memory, memory_estimate
from kdstudio.events import Log, Warning

if TYPE_CHECKING:
    pass


class KDObjective(Objective):
    """Base of sparse and dense KD: the student's side (fused or not) and the reported figures
    (see the module docstring)."""

    N_STATS = 5  # ce, kd, n_kd, top1 agree, entropy

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
