"""`[distill] method = "sparse_kd"`: KD from the teacher logprobs stored with the collection.

At setup the stored top-k logprobs of every training example are aligned to the student's
tokens once (`kdstudio.distill.align`), and the share of response tokens that can use them is
reported (a run refuses to start when none can). Each step, a position's loss is CE mixed
with the sparse KL over the teacher's candidates plus a tail bucket holding the rest of its
mass (`losses.sparse_topk_kl_per_token`); positions whose candidates do not map onto the
student's tokens train with plain CE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from kdstudio.distill.align import (
    Targets,
    align_example,
    describe_fallback,
    describe_targets,
    summarize_targets,
)
from kdstudio.distill.fused_head import fused_head_loss
from kdstudio.distill.losses import sparse_topk_kl_per_token
from kdstudio.distill.objectives.base import (
    ObjectiveContext,
    ObjectiveOutput,
    target_labels,
    target_rows,
)
from kdstudio.distill.objectives.kd import KDObjective, chunk_terms, log_memory
from kdstudio.errors import UserError
from kdstudio.events import Log, Warning
from kdstudio.teachers.vocab import VocabBytes

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch, Encoded


class SparseKD(KDObjective):
    """KD from the teacher logprobs stored with the collection (top-k + sampled + tail)."""

    def setup(self, ctx: ObjectiveContext) -> None:
        self.vocab = VocabBytes(ctx.tokenizer)
        # by (collection, row, sample): two teachers' answers to one prompt are two examples
        self.targets: dict[tuple[str, int, int], Targets] = {}
        train = ctx.extra.get("train")
        if train is None:
            return
        for enc in train:
            self._targets(enc)
        totals = summarize_targets(self.targets.values())
        collection = ", ".join(self.config.data.names())
        if totals["kd_positions"] == 0:
            why = (
                "its outputs carry no teacher logprobs (collect with --top-logprobs)"
                if totals["with_logprobs"] == 0
                else "no teacher token maps onto the student's tokenizer "
                f"({describe_fallback(totals['fallback'])})"
            )
            raise UserError(
                f"sparse_kd cannot use {self.config.data.label()}: {why}; "
                'train with method = "sft" instead'
            )
        ctx.sink.emit(Log(describe_targets(totals, collection)))
        if totals["kd_share"] < 0.5:
            ctx.sink.emit(
                Warning(
                    f"only {totals['kd_share']:.0%} of the response tokens can use the teacher's "
                    "logprobs; the rest train with plain CE",
                    where="distill.method",
                )
            )
        self.memory = log_memory(ctx, self.config)

    def _targets(self, enc: Encoded) -> Targets:
        ex = enc.example
        key = (getattr(ex, "collection", ""), ex.row_id, ex.sample)
        got = self.targets.get(key)
        if got is None:
            got = self.targets[key] = align_example(enc, ex.response, ex.logprobs, self.vocab)
        return got

    def batch_targets(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(ids [B, T-1, K1] long, logprobs [B, T-1, K1] float, is_kd [B, T-1] bool) on the
        batch's device, aligned with logits[:, :-1]."""
        b, t = batch.input_ids.shape
        found = [self._targets(enc) for enc in batch.items]
        k1 = max((x.ids.shape[1] for x in found if x.n_kd), default=1)
        ids = np.full((b, t - 1, k1), -1, np.int64)
        lps = np.full((b, t - 1, k1), -np.inf, np.float32)
        is_kd = np.zeros((b, t - 1), bool)
        for (row, start), enc, tg in zip(batch.offsets, batch.items, found, strict=True):
            if not tg.n_kd:
                continue
            pos = enc.prompt_len + tg.pos.astype(np.int64) - 1
            keep = pos < len(enc) - 1
            pos = start + pos[keep]
            ids[row, pos, : tg.ids.shape[1]] = tg.ids[keep]
            lps[row, pos, : tg.ids.shape[1]] = tg.logprobs[keep]
            is_kd[row, pos] = True
        dev = batch.input_ids.device
        return (
            torch.from_numpy(ids).to(dev),
            torch.from_numpy(lps).to(dev),
            torch.from_numpy(is_kd).to(dev),
        )

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        d = self.config.distill
        rows = target_rows(batch)
        ids, lps, is_kd = self.batch_targets(batch)
        k1 = ids.shape[-1]
        ids = ids.reshape(-1, k1).index_select(0, rows)
        lps = lps.reshape(-1, k1).index_select(0, rows)
        is_kd = is_kd.reshape(-1).index_select(0, rows)
        labels = target_labels(batch, rows)
        best = lps.argmax(-1, keepdim=True)
        teacher_top1 = ids.gather(-1, best).squeeze(-1)
        x, weight, bias = self.student_rows(model, batch, rows)

        def chunk_loss(logits: Tensor, r: slice) -> tuple[Tensor, Tensor]:
            kd = sparse_topk_kl_per_token(
                logits, ids[r], lps[r], tail=d.tail, temperature=d.temperature
            )
            return chunk_terms(
                logits, labels[r], kd, is_kd[r], teacher_top1[r], d.kd_weight, d.temperature
            )

        total, stats = fused_head_loss(
            chunk_loss, x, weight, bias, chunk_size=self.chunk_size, n_stats=self.N_STATS
        )
        return self._output(total, stats, batch.n_target)
