"""`[distill] method = "sparse_kd"`: KD from the teacher logprobs stored with the collection.

At setup the stored top-k logprobs of every training example are aligned to the student's
tokens once (`kdstudio.distill.align`, in the mode `distill.align` names or `auto` picks), an
example whose teacher token sequence is known in student ids is re-encoded as that sequence
(mode exact), and the share of response tokens that get each kind of signal is reported (a
run refuses to start when none can). Each step, a position's loss is CE mixed with the KL
from the teacher's projected top-k plus a tail bucket holding the rest of its mass
(`losses.sparse_topk_kl_per_token`), or with Universal Logit Distillation's sorted distance
at "uld" positions (`losses.uld_topk_per_token`); positions with no teacher signal train
with plain CE. Besides `kd_share`, the share of each kind of KD position (`kd_exact`,
`kd_mapped`, `kd_split`, `kd_merged`, `kd_uld`) is reported.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from torch import Tensor

from kdstudio.distill.align import (
    Targets,
    align_example,
    choose_mode,
    describe_fallback,
    describe_targets,
    summarize_targets,
)
from kdstudio.distill.losses import sparse_topk_kl_per_token
from kdstudio.distill.objectives.base import ObjectiveContext, ObjectiveOutput
from kdstudio.distill.objectives.kd import KDObjective, log_memory, place_targets
from kdstudio.errors import UserError
from kdstudio.events import Log, Warning
from kdstudio.teachers.vocab import VocabBytes

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch, Encoded


class SparseKD(KDObjective):
    """KD from the teacher logprobs stored with the collection (projected top-k + tail)."""

    mode = "bytes"
    mode_reason = ""

    def setup(self, ctx: ObjectiveContext) -> None:
        self.vocab = VocabBytes(ctx.tokenizer)
        self.max_length = self.config.data.max_length
        # by (collection, row, sample): two teachers' answers to one prompt are two examples
        self.targets: dict[tuple[str, int, int], Targets] = {}
        train = ctx.extra.get("train")
        if train is None:
            return
        self.mode, self.mode_reason = choose_mode(
            ((e, e.example.response, e.example.logprobs) for e in train),
            self.vocab,
            self.config.distill.align,
        )
        # the teacher's own token sequence replaces a re-tokenisation of its text (mode exact)
        for i, enc in enumerate(train):
            got = self._targets(enc)
            if got.encoded is not None:
                train[i] = got.encoded
        totals = summarize_targets(self.targets.values())
        collection = ", ".join(self.config.data.names())
        if totals["kd_positions"] == 0:
            why = (
                "its outputs carry no teacher logprobs (collect with --top-logprobs)"
                if totals["with_logprobs"] == 0
                else "no teacher token can be placed on the student's tokens "
                f"({describe_fallback(totals['fallback'])})"
            )
            raise UserError(
                f"sparse_kd cannot use {self.config.data.label()}: {why}; "
                'train with method = "sft" instead'
            )
        ctx.sink.emit(Log(f"align {self.mode}: {self.mode_reason}"))
        ctx.sink.emit(Log(describe_targets(totals, collection, self.mode)))
        if totals["kd_share"] < 0.5:
            ctx.sink.emit(
                Warning(
                    f"only {totals['kd_share']:.0%} of the response tokens can use the teacher's "
                    "logprobs; the rest train with plain CE",
                    where="distill.align",
                )
            )
        self.memory = log_memory(ctx, self.config)

    def _targets(self, enc: Encoded) -> Targets:
        ex = enc.example
        key = (getattr(ex, "collection", ""), ex.row_id, ex.sample)
        got = self.targets.get(key)
        if got is None:
            got = self.targets[key] = align_example(
                enc,
                ex.response,
                ex.logprobs,
                self.vocab,
                mode=self.mode,
                max_length=self.max_length,
            )
        return got

    def batch_targets(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(ids [B, T-1, K] long, logprobs [B, T-1, K] float, kinds [B, T-1] long) on the
        batch's device, aligned with logits[:, :-1]; kind 0 is a CE position, else
        `align.KIND_CODE` of how its target was made (`kd.place_targets`)."""
        return place_targets(batch, [self._targets(enc) for enc in batch.items])

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        d = self.config.distill
        divergence = partial(sparse_topk_kl_per_token, tail=d.tail, temperature=d.temperature)
        return self._targets_loss(model, batch, self.batch_targets(batch), d.kd_weight, divergence)
