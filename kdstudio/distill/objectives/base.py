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

from kdstudio.distill.hf import final_hidden, lm_head, supports_fusion

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
        self.fused: bool | None = None  # decided on the first batch (`supports_fusion`)
        self.chunk_size = config.distill.chunk_size

    def setup(self, ctx: ObjectiveContext) -> None:
        """Pre-flight before any step; raise UserError to refuse the run."""

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        raise NotImplementedError

    def close(self) -> None:
        """Free what setup() loaded (a teacher)."""

    @staticmethod
    def logits(model: Any, batch: Batch) -> torch.Tensor:
        """Student logits [B, T, V] (the model's dtype; upcast per use)."""
        return model(**batch.model_inputs(), use_cache=False).logits

    def student_rows(
        self, model: Any, batch: Batch, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(x, head weight, head bias) of the target rows for `fused_head_loss`: the final
        hidden states [N, H] and the LM head when the model allows (no [B, T, V] logits ever
        exist), else the full logits' rows [N, V] and None."""
        if self.fused is None:
            self.fused = supports_fusion(model, batch.input_ids)
        if self.fused:
            hidden = final_hidden(model, batch.model_inputs())
            weight, bias = lm_head(model)
            return pick_rows(hidden, rows), weight, bias
        return pick_rows(self.logits(model, batch), rows), None, None


def target_rows(batch: Batch) -> torch.Tensor:
    """Flat indexes of positions (of logits[:, :-1]) whose next token carries loss (made on
    the CPU with the batch: no device sync)."""
    return batch.target_index


def pick_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`x[:, :-1]` flattened, rows selected: [N, D]."""
    return x[:, :-1].reshape(-1, x.shape[-1]).index_select(0, rows)


def target_labels(batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """The next-token targets of `rows` (the shifted labels, rows selected): [N]."""
    return batch.labels[:, 1:].reshape(-1).index_select(0, rows)
