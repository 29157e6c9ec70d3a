"""`[distill] method = "sft"`: sequence-level distillation (Kim & Rush 2016), cross-entropy on
the teacher's response tokens only (the prompt and padding carry label -100)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdstudio.distill.losses import cross_entropy
from kdstudio.distill.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch


class SFT(Objective):
    """Sequence-level distillation: cross-entropy on the teacher's response tokens."""

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        logits = self.logits(model, batch)
        ce = cross_entropy(logits[:, :-1], batch.labels[:, 1:], reduction="sum")
        return ObjectiveOutput(ce, {"ce": ce.detach()})
