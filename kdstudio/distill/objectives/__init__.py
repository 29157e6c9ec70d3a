"""Training objectives: what the loss of a micro-batch is, one module per `[distill] method`.

    base.py     Objective (setup / loss / close), ObjectiveContext, ObjectiveOutput
    sft.py      sft: cross-entropy on the teacher's text
    kd.py       what the two KD methods share (fused student side, chunk loss, metrics)
    sparse.py   sparse_kd: the teacher's stored top-k logprobs
    dense.py    dense_kd: a local teacher's full distribution (+ its tokenizer check)
    cross.py    dense_kd's teacher side when its tokenizer is another one (byte alignment)

A new method is a module here with an `Objective` subclass, an entry in `OBJECTIVES`, and
its name in `kdstudio.distill.config.METHODS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdstudio.distill.objectives.base import Objective, ObjectiveContext, ObjectiveOutput
from kdstudio.distill.objectives.dense import DenseKD
from kdstudio.distill.objectives.sft import SFT
from kdstudio.distill.objectives.sparse import SparseKD
from kdstudio.errors import UserError

if TYPE_CHECKING:
    from kdstudio.distill.config import TrainConfig

__all__ = [
    "OBJECTIVES",
    "DenseKD",
    "Objective",
    "ObjectiveContext",
    "ObjectiveOutput",
    "SFT",
    "SparseKD",
    "make_objective",
]

OBJECTIVES: dict[str, type[Objective]] = {"sft": SFT, "sparse_kd": SparseKD, "dense_kd": DenseKD}


def make_objective(config: TrainConfig) -> Objective:
    """The objective for `config.distill.method`."""
    method = config.distill.method
    cls = OBJECTIVES.get(method)
    if cls is None:
        raise UserError(
            f"distill.method {method!r} is not a method kdstudio knows; use one of "
            f"{', '.join(OBJECTIVES)}"
        )
    return cls(config)
