"""`[distill] method = "sft"`: sequence-level distillation (Kim & Rush 2016), cross-entropy on
the teacher's response tokens only (the prompt and padding carry label -100).

The loss runs on the fused LM head (`kdstudio.distill.fused_head`) like the KD objectives:
the head is applied only to the positions that carry loss (not to the prompt's), one chunk
at a time, with the gradient in closed form, so no [B, T, V] logits exist; a model whose
logits are not its head applied to its final hidden states takes the full logits instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdstudio.distill.fused_head import cross_entropy_chunk, fused_head_loss
from kdstudio.distill.objectives.base import (
    Objective,
    ObjectiveOutput,
    target_labels,
    target_rows,
)

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch


class SFT(Objective):
    """Sequence-level distillation: cross-entropy on the teacher's response tokens."""

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        rows = target_rows(batch)
        x, weight, bias = self.student_rows(model, batch, rows)
        chunk = cross_entropy_chunk(target_labels(batch, rows))
        ce, _ = fused_head_loss(chunk, x, weight, bias, chunk_size=self.chunk_size, n_stats=1)
        return ObjectiveOutput(ce, {"ce": ce.detach()})
