"""What every objective is: the `Objective` lifecycle, what it gets at setup, what it returns.

The loop owns everything else (accumulation, normalisation, precision, parallelism,
metrics, checkpoints). An objective gets the (possibly DDP/FSDP-wrapped) student and a
`Batch`, runs the forward pass itself (so a KD objective can also run a teacher, or compute
its loss from hidden states in chunks), and returns *sums over the batch's target tokens*:

    out = objective.loss(model, batch)
    out.loss_sum      scalar tensor, summed over target tokens; the loop divides by the
                      target-token count of the whole accumulation window (all ranks)
    out.sums          {"ce": ..., "kd": ...}: detached tensors summed over target tokens,
                      reported as per-token means next to `loss`
    out.counts        optional {"kd_share": (numerator, denominator)} tensors for ratios
                      that are not per target token

`setup(ctx)` runs once before the first step (pre-flight checks: load a teacher, compare
tokenizers, estimate memory) and may raise UserError to refuse a run before any step. It gets
the training examples as `ctx.extra["train"]` (the trainer's own list, before the data stream
is built) and may replace an example by another encoding of the same text in place: sparse KD
trains on the teacher's own token sequence where it is known in the student's ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from kdstudio.distill.batches import Batch
    from kdstudio.distill.config import TrainConfig
    from kdstudio.events import Sink
    from kdstudio.workspace import Workspace


@dataclass
class ObjectiveContext:
    """What an objective may need at setup: the run's config and the student's side."""

    config: TrainConfig
    ws: Workspace
    tokenizer: Any
    device: torch.device
    autocast_dtype: torch.dtype | None
    sink: Sink
    student_config: Any = None  # the student's transformers config
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveOutput:
    loss_sum: torch.Tensor
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Objective:
    """Base class of the `[distill] method`s (see the module docstring)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def setup(self, ctx: ObjectiveContext) -> None:
        """Pre-flight before any step; raise UserError to refuse the run."""

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        raise NotImplementedError

    def close(self) -> None:
        """Free what setup() loaded (a teacher)."""

    @staticmethod
    def logits(model: Any, batch: Batch) -> torch.Tensor:
        """Student logits [B, T, V] (the model's dtype; upcast per use)."""
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
