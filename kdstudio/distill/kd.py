"""Knowledge-distillation objectives: `[distill] method = "sparse_kd"` and `"dense_kd"`.

Both return, per micro-batch, the sum over target tokens of

    (1 - kd_weight) * CE + kd_weight * tau^2 * KD(tau)     at positions that use KD
    CE                                                     at positions that fall back to CE

and report `ce` (per target token), `kd` (per KD position), `kd_share` (KD positions / target
tokens), `top1_agree` (student argmax == teacher's top candidate, per KD position) and
`student_entropy` (nats, per target token).

Memory. The student's final hidden states are taken from the model with no logits computed
(`logits_to_keep` = no position, `output_hidden_states`); the LM head runs fused with the loss
over chunks of `distill.chunk_size` target positions (`fused_head_loss`): each chunk's logits,
loss and gradient are computed in the forward pass and only the gradients of the hidden
states and of the head weight are kept, so no `[B, T, V]` logits (fp32 or otherwise) of either
model exist. A local teacher goes the same way under no_grad. When the model cannot be run
that way (FSDP, a LoRA-adapted or soft-capped LM head: checked on the first batch), the full
logits are computed and the same chunked loss runs on them.

Sparse KD (`SparseKD`). The teacher's stored top-k logprobs (`Example.logprobs`) are aligned
to the student's tokens of the response once, before training (`align_example`):

- Positions are matched by byte span: student token j covers bytes [a, b) of the response
  (from the bytes of its vocabulary entry), teacher token i covers [a', b') (its stored
  bytes); j uses teacher position i when the spans are equal and the teacher's bytes agree
  with the response up to b. When the two tokenizations differ, only the positions whose
  boundaries coincide are aligned; the others get CE. The student's end-of-turn token is
  matched with a teacher token that starts right after the response (a local teacher's eos).
- Candidates (the top-k plus the sampled token) are mapped to student ids: by id when the
  teacher gave ids for the student's tokenizer (checked per example: the ids' bytes must spell
  the teacher's tokens), else by exact byte match of the candidate onto one student token.
- A position uses KD only when it aligns, its sampled token maps onto the student's token
  there, and every candidate maps; otherwise it falls back to plain CE (weight 1).

Dense KD (`DenseKD`). A local teacher (`[distill] teacher`) runs forward in eval mode under
no_grad on the same batch; `kdstudio.distill.preflight` checks the tokenizers (same
vocabulary, or padding rows that are truncated to the shared size) before any step. With
forward KL (the default) the chunk's gradient is written in closed form; the other
divergences go through autograd per chunk. `distill.on_policy` (GKD's lambda) is the share
of micro-batches where the student samples responses to the batch's prompts and the
teacher scores them: those train on the divergence alone (CE of the student's own samples
teaches nothing) and count as much as the batch they replace.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdstudio.distill import losses as L
from kdstudio.distill.objectives import Objective, ObjectiveContext, ObjectiveOutput, register
from kdstudio.errors import UserError
from kdstudio.events import Log, Warning

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch, Encoded
    from kdstudio.logprobs import TokenLogprobs

IGNORE = -100
SKEW_ALPHA = 0.1  # DistiLLM's default for skl / srkl

# -- the student vocabulary as bytes --------------------------------------------------------


class VocabBytes:
    """Each student token id's bytes, and the reverse map for exact byte matches.

    Byte-level BPE pieces are decoded through GPT-2's byte table, SentencePiece pieces
    (`▁`, `<0xNN>`) by their rules, anything else with `decode`. Special tokens are their
    text. A byte string shared by several ids maps to the first non-special one.
    """

    def __init__(self, tok: Any) -> None:
        from kdstudio.teachers.local import _byte_decoder

        n = len(tok)
        pieces = tok.convert_ids_to_tokens(list(range(n)))
        specials = set(tok.all_special_ids)
        specials |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special}
        self.specials = specials
        decoder = _byte_decoder()
        sample = [p for p in pieces[:: max(1, n // 2000)] if p]
        byte_level = sum(all(c in decoder for c in p) for p in sample) > 0.9 * len(sample)
        self.bytes: list[bytes | None] = []
        for i, piece in enumerate(pieces):
            self.bytes.append(_piece_bytes(tok, i, piece, i in specials, byte_level, decoder))
        self.index: dict[bytes, int] = {}
        for i, b in enumerate(self.bytes):
            if not b:
                continue
            old = self.index.get(b)
            if old is None or (old in specials and i not in specials):
                self.index[b] = i

    def __len__(self) -> int:
        return len(self.bytes)

    def of(self, token_id: int) -> bytes | None:
        return self.bytes[token_id] if 0 <= token_id < len(self.bytes) else None


def _piece_bytes(
    tok: Any, i: int, piece: str | None, special: bool, byte_level: bool, decoder: dict[str, int]
) -> bytes | None:
    if piece is None:
        return None
    if special:
        return piece.encode("utf-8")
    if byte_level and all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    if "▁" in piece:
        return piece.replace("▁", " ").encode("utf-8")
    text = tok.decode([i])
    return text.encode("utf-8") if text else None


# -- aligning stored teacher logprobs to the student's tokens ----------------------------------


@dataclass
class Targets:
    """Sparse-KD targets of one example: completion positions `pos` (token j of the
    completion, i.e. input position prompt_len + j) with their candidate student ids and
    teacher logprobs `[n, K + 1]` (column 0: the sampled token; -1 / -inf = no candidate)."""

    pos: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray
    n_target: int
    fallback: Counter = field(default_factory=Counter)
    by_ids: bool = False

    @property
    def n_kd(self) -> int:
        return len(self.pos)


def _spans(pieces: list[bytes]) -> list[tuple[int, int]]:
    out, at = [], 0
    for b in pieces:
        out.append((at, at + len(b)))
        at += len(b)
    return out


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the first difference
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _teacher_pieces(tl: TokenLogprobs, vocab: VocabBytes, resp: bytes) -> tuple[list[bytes], bool]:
    """(teacher token bytes, ids usable as student ids). Ids count as the student's when every
    sampled id's student bytes equal the stored bytes (vLLM's id-only tokens have none: they
    get the student's bytes, which the byte-span alignment then checks against the text)."""
    pieces = list(tl.tokens)
    if tl.token_ids is None or len(tl.token_ids) != len(pieces):
        return pieces, False
    filled = []
    for stored, tid in zip(pieces, tl.token_ids, strict=True):
        mine = vocab.of(int(tid))
        if mine is None or (stored and stored != mine):
            return pieces, False
        filled.append(mine)
    if not all(tl.tokens) and not b"".join(filled).startswith(resp):
        return pieces, False  # id-only tokens that do not spell the text: another tokenizer
    return filled, True


def align_example(
    enc: Encoded, response: str, tl: TokenLogprobs | None, vocab: VocabBytes
) -> Targets:
    """Sparse-KD targets of one encoded example (see the module docstring for the rules)."""
    completion = enc.input_ids[enc.prompt_len :]
    labels = enc.labels[enc.prompt_len :]
    wanted = [j for j, lab in enumerate(labels) if lab != IGNORE and enc.prompt_len + j > 0]
    n_target = len(wanted)
    empty = Targets(
        np.zeros(0, np.int32), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32), n_target
    )
    if tl is None or len(tl) == 0:
        empty.fallback["no_logprobs"] = n_target
        return empty
    resp = response.encode("utf-8")
    pieces, by_ids = _teacher_pieces(tl, vocab, resp)
    t_bytes = b"".join(pieces)
    agree = _common_prefix(t_bytes, resp)
    t_index: dict[tuple[int, int], int] = {}
    t_end: int | None = None
    for i, (a, b) in enumerate(_spans(pieces)):
        if a < b <= agree:
            t_index[(a, b)] = i
        elif a == len(resp) and agree == len(resp) and b > a and t_end is None:
            t_end = i
    # student byte spans from the bytes of its tokens, placed where the response starts
    s_pieces = [vocab.of(i) or b"" for i in completion]
    s_bytes = b"".join(s_pieces)
    r0 = s_bytes.find(resp) if resp else -1
    k1 = tl.k + 1
    rows_pos, rows_ids, rows_lp = [], [], []
    fallback: Counter = Counter()
    spans = _spans(s_pieces)
    end_seen = False
    for j in wanted:
        a, b = spans[j]
        i = None
        if r0 >= 0 and vocab.of(completion[j]) is not None:
            a, b = a - r0, b - r0
            if 0 <= a < b <= len(resp):
                i = t_index.get((a, b))
            elif a == len(resp) and completion[j] in vocab.specials and not end_seen:
                end_seen = True
                i = t_end
        if i is None:
            fallback["unaligned"] += 1
            continue
        ids, lps, reason = _candidates(tl, i, vocab, by_ids, completion[j])
        if reason:
            fallback[reason] += 1
            continue
        rows_pos.append(j)
        rows_ids.append(ids[:k1])
        rows_lp.append(lps[:k1])
    if not rows_pos:
        empty.fallback = fallback
        empty.by_ids = by_ids
        return empty
    return Targets(
        np.asarray(rows_pos, np.int32),
        np.asarray(rows_ids, np.int32),
        np.asarray(rows_lp, np.float32),
        n_target,
        fallback,
        by_ids,
    )


def _candidates(
    tl: TokenLogprobs, i: int, vocab: VocabBytes, by_ids: bool, student_id: int
) -> tuple[list[int], list[float], str | None]:
    """(ids, logprobs, fallback reason or None) of teacher position i: sampled token first."""
    k = tl.k
    lp_row = (
        [float(tl.logprobs[i])] + [float(x) for x in tl.top_logprobs[i]]
        if k
        else [float(tl.logprobs[i])]
    )
    if by_ids:
        sampled = int(tl.token_ids[i])
        if tl.top_ids is not None:
            top = [int(x) for x in tl.top_ids[i]]
        else:
            top = [vocab.index.get(b, -1) for b in tl.top_tokens[i]]
    else:
        sampled = vocab.index.get(tl.tokens[i], -1) if tl.tokens[i] else -1
        top = [vocab.index.get(b, -1) if b else -1 for b in tl.top_tokens[i]]
    top = top + [-1] * (k - len(top))
    ids = [sampled, *top]
    if sampled != student_id:
        return ids, lp_row, "sampled_unmapped"
    for cid, lp in zip(ids, lp_row, strict=True):
        if math.isfinite(lp) and not 0 <= cid < len(vocab):
            return ids, lp_row, "candidate_unmapped"
    ids = [cid if math.isfinite(lp) else -1 for cid, lp in zip(ids, lp_row, strict=True)]
    return ids, lp_row, None


# -- the fused LM head + loss ---------------------------------------------------------------


class _FusedHead(torch.autograd.Function):
    """Sum over chunks of `chunk_loss(F.linear(x[rows], weight, bias), rows)`, with each chunk's
    gradient computed in the forward pass (no recomputation, no full logits kept).

    Returns (loss sum, stats [S]) where stats are no-grad sums the chunk function reports. With
    weight None, x already holds logits. A chunk function with `analytic = True` returns
    `(loss, stats, d loss / d logits)` itself (no autograd graph per chunk: fewer passes
    over the [n, V] logits); any other is differentiated by autograd.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, chunk_loss, chunk_size, n_stats):  # noqa: ANN001
        grads = [
            torch.zeros_like(t) if t is not None and t.requires_grad else None
            for t in (x, weight, bias)
        ]
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        stats = torch.zeros(n_stats, dtype=torch.float32, device=x.device)
        leaves = [
            t.detach().requires_grad_(t.requires_grad) if t is not None else None
            for t in (weight, bias)
        ]
        analytic = getattr(chunk_loss, "analytic", False)
        for start in range(0, x.shape[0], chunk_size):
            rows = slice(start, min(start + chunk_size, x.shape[0]))
            if analytic:
                xc = x[rows].detach()
                logits = xc if weight is None else F.linear(xc, weight, bias)
                loss, chunk_stats, g = chunk_loss(logits, rows)
                _accumulate_linear(grads, rows, xc, weight, g)
            else:
                xc = x[rows].detach().requires_grad_(x.requires_grad)
                with torch.enable_grad():
                    logits = xc if weight is None else F.linear(xc, leaves[0], leaves[1])
                    loss, chunk_stats = chunk_loss(logits, rows)
                inputs = [
                    (k, t) for k, t in enumerate((xc, *leaves)) if t is not None and t.requires_grad
                ]
                if inputs:
                    got = torch.autograd.grad(loss, [t for _, t in inputs])
                    for (k, _), g in zip(inputs, got, strict=True):
                        if k == 0:
                            grads[0][rows] = g
                        else:
                            grads[k] += g
            total += loss.detach().float()
            stats += chunk_stats
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has = [g is not None for g in grads]
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, g_total, _g_stats):  # noqa: ANN001
        saved = ctx.saved_tensors
        out = [
            s * g_total.to(s.dtype) if has else None for s, has in zip(saved, ctx.has, strict=True)
        ]
        return (*out, None, None, None)


def _accumulate_linear(
    grads: list[Tensor | None], rows: slice, x: Tensor, weight: Tensor | None, g: Tensor
) -> None:
    """Add the gradients of `F.linear(x, weight, bias)` given `g = d loss / d logits`."""
    gx, gw, gb = grads
    if weight is None:
        if gx is not None:
            gx[rows] = g.to(gx.dtype)
        return
    if gx is not None:
        gx[rows] = (g.to(weight.dtype) @ weight).to(gx.dtype)
    if gw is not None:
        gw += (g.t().to(x.dtype) @ x).to(gw.dtype)
    if gb is not None:
        gb += g.sum(0).to(gb.dtype)


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


# -- objectives ------------------------------------------------------------------------------


def _hf(model: Any) -> Any:
    """The Hugging Face model under DDP (`.module`) and PEFT wrappers."""
    model = getattr(model, "module", model)
    base = getattr(model, "get_base_model", None)
    return base() if base else model


def _head(model: Any) -> tuple[Tensor, Tensor | None] | None:
    head = _hf(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    return head.weight, head.bias


def _supports_fusion(model: Any, batch_ids: Tensor) -> bool:
    """Whether final hidden states times the head weight reproduce the model's logits."""
    import inspect

    hf = _hf(model)
    if _head(model) is None or "logits_to_keep" not in inspect.signature(hf.forward).parameters:
        return False
    text = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    if any(getattr(text, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return False  # logits are transformed after the head
    if any(type(p).__name__ == "DTensor" for p in hf.parameters()):
        return False  # FSDP2: the head weight is sharded outside its forward
    was_training = hf.training
    hf.eval()
    try:
        with torch.no_grad():
            ids = batch_ids[:1, : min(8, batch_ids.shape[1])]
            full = hf(input_ids=ids, use_cache=False).logits.float()
            hidden = _final_hidden(hf, ids, None)
            weight, bias = _head(hf)
            fused = F.linear(hidden.to(weight.dtype), weight, bias).float()
    finally:
        hf.train(was_training)
    tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 3e-2
    return bool(torch.allclose(full, fused, atol=tol, rtol=tol))


def _final_hidden(model: Any, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The final hidden states [B, T, H] (what the LM head sees), with no logits computed.

    Taken from the decoder's output by a hook, so that a no_grad teacher does not keep every
    layer's output alive (as `output_hidden_states` would)."""
    hf = _hf(model)
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    no_logits = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    if decoder is None or decoder is hf:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=no_logits,
        )
        return out.hidden_states[-1]
    seen: list[Tensor] = []

    def grab(_module: Any, _args: Any, out: Any) -> None:
        seen.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)

    handle = decoder.register_forward_hook(grab)
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=no_logits,
        )
    finally:
        handle.remove()
    return seen[-1]


class _KDObjective(Objective):
    """Shared: the student side (fused or not), target rows, metrics."""

    N_STATS = 5  # ce, kd, n_kd, top1 agree, entropy

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.fused: bool | None = None
        self.chunk_size = config.distill.chunk_size

    def _student_rows(
        self, model: Any, batch: Batch, rows: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(x [N, H] hidden states or [N, V] logits of the target rows, head weight, bias)."""
        if self.fused is None:
            self.fused = _supports_fusion(model, batch.input_ids)
        if self.fused:
            hidden = _final_hidden(model, batch.input_ids, batch.attention_mask)
            weight, bias = _head(model)
            return _pick(hidden, rows), weight, bias
        return _pick(self.logits(model, batch), rows), None, None

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


def _target_rows(labels: Tensor) -> Tensor:
    """Flat indexes of positions (of logits[:, :-1]) whose next token carries loss."""
    return (labels[:, 1:] != IGNORE).reshape(-1).nonzero().squeeze(-1)


def _pick(x: Tensor, rows: Tensor) -> Tensor:
    """`x[:, :-1]` flattened, rows selected: [N, D]."""
    return x[:, :-1].reshape(-1, x.shape[-1]).index_select(0, rows)


def _chunk_terms(
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
    ce = F.cross_entropy(z, labels, reduction="none")
    loss = torch.where(is_kd, (1.0 - w) * ce + w * tau**2 * kd, ce).sum()
    with torch.no_grad():
        log_q = torch.log_softmax(z, dim=-1)
        entropy = -(log_q.exp() * log_q).sum(-1)
        agree = (z.argmax(-1) == teacher_top1) & is_kd
        stats = torch.stack(
            [ce.sum(), torch.where(is_kd, kd, 0.0).sum(), is_kd.sum(), agree.sum(), entropy.sum()]
        ).float()
    return loss, stats


def _dense_fkl_chunk(labels: Tensor, teacher: Any, *, vocab: int, w: float, tau: float) -> Any:
    """Chunk function of CE + forward KL with its gradient in closed form:

        d/dz [(1 - w) CE + w tau^2 KL(p_tau || q_tau)] = (1 - w)(q - onehot) + w tau (q_tau - p_tau)

    over the first `vocab` logits for the KD term (padding rows beyond it get CE only).
    `teacher(rows)` gives the teacher's logits of those rows."""

    def chunk(logits: Tensor, rows: slice) -> tuple[Tensor, Tensor, Tensor]:
        z = logits.float()
        y = labels[rows]
        lse = torch.logsumexp(z, dim=-1)
        q = torch.exp(z - lse.unsqueeze(-1))
        ce = lse - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        entropy = lse - L._rowdot(q, z)
        t = teacher(rows)[:, :vocab].float()
        zk = z[:, :vocab]
        if tau != 1.0:
            zk, t = zk / tau, t / tau
        if tau == 1.0 and vocab == z.shape[-1]:
            lse_k, q_k = lse, q
        else:
            lse_k = torch.logsumexp(zk, dim=-1)
            q_k = torch.exp(zk - lse_k.unsqueeze(-1))
        log_p = torch.log_softmax(t, dim=-1)
        p = log_p.exp()
        kd = (L._rowdot(p, log_p) - L._rowdot(p, zk) + lse_k).clamp_min(0.0)
        grad = q.mul_(1.0 - w) if q is not q_k else q * (1.0 - w)
        grad.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(ce, -(1.0 - w)).unsqueeze(-1))
        grad[:, :vocab].add_(q_k - p, alpha=w * tau)
        loss = ((1.0 - w) * ce + w * tau**2 * kd).sum()
        agree = (z.argmax(-1) == t.argmax(-1)).sum()
        ones = torch.tensor(float(z.shape[0]), device=z.device)
        stats = torch.stack([ce.sum(), kd.sum(), ones, agree.float(), entropy.sum()])
        return loss, stats, grad

    chunk.analytic = True
    return chunk


@register("sparse_kd")
class SparseKD(_KDObjective):
    """KD from the teacher logprobs stored with the collection (top-k + sampled + tail)."""

    def setup(self, ctx: ObjectiveContext) -> None:
        self.vocab = VocabBytes(ctx.tokenizer)
        self.targets: dict[tuple[int, int], Targets] = {}
        train = ctx.extra.get("train")
        if train is None:
            return
        for enc in train:
            self._targets(enc)
        totals = summarize_targets(self.targets.values())
        collection = self.config.data.collection
        if totals["kd_positions"] == 0:
            why = (
                "its outputs carry no teacher logprobs (collect with --top-logprobs)"
                if totals["with_logprobs"] == 0
                else "no teacher token maps onto the student's tokenizer "
                f"({_reasons(totals['fallback'])})"
            )
            raise UserError(
                f"sparse_kd cannot use collection {collection!r}: {why}; "
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
        self.memory = _memory_log(ctx, self.config)

    def _targets(self, enc: Encoded) -> Targets:
        ex = enc.example
        key = (ex.row_id, ex.sample)
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
        for row, (enc, tg) in enumerate(zip(batch.items, found, strict=True)):
            if not tg.n_kd:
                continue
            pos = enc.prompt_len + tg.pos.astype(np.int64) - 1
            keep = pos < min(t - 1, len(enc) - 1)
            pos = pos[keep]
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
        rows = _target_rows(batch.labels)
        ids, lps, is_kd = self.batch_targets(batch)
        k1 = ids.shape[-1]
        ids = ids.reshape(-1, k1).index_select(0, rows)
        lps = lps.reshape(-1, k1).index_select(0, rows)
        is_kd = is_kd.reshape(-1).index_select(0, rows)
        labels = batch.labels[:, 1:].reshape(-1).index_select(0, rows)
        best = lps.argmax(-1, keepdim=True)
        teacher_top1 = ids.gather(-1, best).squeeze(-1)
        x, weight, bias = self._student_rows(model, batch, rows)

        def chunk_loss(logits: Tensor, r: slice) -> tuple[Tensor, Tensor]:
            kd = L.sparse_topk_kl_per_token(
                logits, ids[r], lps[r], tail=d.tail, temperature=d.temperature
            )
            return _chunk_terms(
                logits, labels[r], kd, is_kd[r], teacher_top1[r], d.kd_weight, d.temperature
            )

        total, stats = fused_head_loss(
            chunk_loss, x, weight, bias, chunk_size=self.chunk_size, n_stats=self.N_STATS
        )
        return self._output(total, stats, batch.n_target)


@register("dense_kd")
class DenseKD(_KDObjective):
    """KD from a local teacher's full distribution, run on the same batch."""

    teacher: Any = None

    def setup(self, ctx: ObjectiveContext) -> None:
        from transformers import AutoModelForCausalLM

        from kdstudio.distill import preflight

        d = self.config.distill
        check = preflight.check_teacher(self.config, ctx.ws, student_tokenizer=ctx.tokenizer)
        self.shared = check.shared_rows
        ctx.sink.emit(Log(check.message))
        for note in check.notes:
            ctx.sink.emit(Warning(note, where="distill.teacher"))
        self.memory = _memory_log(ctx, self.config)
        dtype = ctx.autocast_dtype or torch.float32
        try:
            teacher = AutoModelForCausalLM.from_pretrained(check.teacher_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load teacher {d.teacher!r} from {check.teacher_path}: {exc}"
            ) from None
        teacher.config.use_cache = False
        self.teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        probe = torch.tensor([[ctx.tokenizer.bos_token_id or 0] * 4], device=ctx.device)
        self.teacher_fused = _supports_fusion(self.teacher, probe)
        self.options: dict[str, float] = {"temperature": d.temperature}
        if d.divergence == "jsd":
            self.options["beta"] = d.beta
        elif d.divergence in ("skl", "srkl"):
            self.options["alpha"] = SKEW_ALPHA
        self.per_token = L.PER_TOKEN[d.divergence]
        self.tokenizer = ctx.tokenizer

    def _teacher_rows(
        self, batch: Batch, rows: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        with torch.no_grad():
            if self.teacher_fused:
                hidden = _final_hidden(self.teacher, batch.input_ids, batch.attention_mask)
                weight, bias = _head(self.teacher)
                return _pick(hidden, rows), weight, bias
            logits = self.teacher(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
            return _pick(logits, rows), None, None

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        d = self.config.distill
        # the trainer seeds and checkpoints Python's RNG, so a resumed run draws the same
        on_policy = d.on_policy > 0 and random.random() < d.on_policy
        scored = self._generate(model, batch) if on_policy else batch
        w = 1.0 if on_policy else d.kd_weight
        rows = _target_rows(scored.labels)
        labels = scored.labels[:, 1:].reshape(-1).index_select(0, rows)
        tx, tw, tb = self._teacher_rows(scored, rows)
        x, weight, bias = self._student_rows(model, scored, rows)
        v = self.shared
        per_token = partial(self.per_token, **self.options)

        def teacher_logits(r: slice) -> Tensor:
            with torch.no_grad():
                return tx[r] if tw is None else F.linear(tx[r], tw, tb)

        def chunk_loss(logits: Tensor, r: slice) -> tuple[Tensor, Tensor]:
            t = teacher_logits(r)[:, :v]
            kd = per_token(logits[:, :v], t)
            is_kd = torch.ones_like(labels[r], dtype=torch.bool)
            return _chunk_terms(logits, labels[r], kd, is_kd, t.argmax(-1), w, d.temperature)

        if d.divergence == "fkl":
            chunk_loss = _dense_fkl_chunk(labels, teacher_logits, vocab=v, w=w, tau=d.temperature)
        total, stats = fused_head_loss(
            chunk_loss, x, weight, bias, chunk_size=self.chunk_size, n_stats=self.N_STATS
        )
        out = self._output(total, stats, scored.n_target)
        if d.on_policy > 0:
            # CE of the student's own samples trains nothing: report CE of the collected
            # responses only, and weigh a generated batch like the batch it replaced
            ce = out.sums.pop("ce")
            n = torch.tensor(float(batch.n_target), device=total.device)
            out.counts["ce"] = (ce * 0, n * 0) if on_policy else (ce, n)
            out.counts["on_policy"] = (n * 0 + float(on_policy), n * 0 + 1)
            if on_policy:
                out.loss_sum = out.loss_sum * (batch.n_target / max(scored.n_target, 1))
        return out

    def _generate(self, model: Any, batch: Batch) -> Batch:
        """The batch's prompts with responses the student samples (temperature 1), masked
        for loss on the generated tokens, at most as long as the longest collected one."""
        from kdstudio.distill.batches import Encoded, collate, special_ids

        tok = self.tokenizer
        hf = _hf(model)
        specials = special_ids(tok)
        stops = {tok.eos_token_id}
        for enc in batch.items:
            last = next((x for x in reversed(enc.labels) if x != IGNORE), None)
            if last in specials:
                stops.add(last)  # the template's end-of-turn token
        prompts = [enc.input_ids[: enc.prompt_len] for enc in batch.items]
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        dev = batch.input_ids.device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        was_training = hf.training
        hf.eval()
        try:
            with torch.no_grad():
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max(enc.n_target for enc in batch.items),
                    pad_token_id=pad,
                    eos_token_id=sorted(stops),
                    use_cache=True,
                )
        finally:
            hf.train(was_training)
        items = []
        for enc, prompt, seq in zip(batch.items, prompts, out[:, width:].tolist(), strict=True):
            cut = next((i + 1 for i, t in enumerate(seq) if t in stops), len(seq))
            seq = seq[:cut]
            items.append(
                Encoded(
                    [*prompt, *seq],
                    [IGNORE] * len(prompt) + seq,
                    len(prompt),
                    [],
                    example=enc.example,
                )
            )
        return collate(items, pad).to(dev)

    def close(self) -> None:
        self.teacher = None


# -- reporting -------------------------------------------------------------------------------


def summarize_targets(targets: Any) -> dict[str, Any]:
    """Totals over examples' Targets: positions, KD positions and share, fallback reasons."""
    fallback: Counter = Counter()
    n_target = n_kd = with_lp = by_ids = n = 0
    for tg in targets:
        n += 1
        n_target += tg.n_target
        n_kd += tg.n_kd
        fallback.update(tg.fallback)
        with_lp += tg.fallback.get("no_logprobs", 0) == 0
        by_ids += tg.by_ids
    return {
        "examples": n,
        "with_logprobs": with_lp,
        "by_ids": by_ids,
        "target_tokens": n_target,
        "kd_positions": n_kd,
        "kd_share": n_kd / max(n_target, 1),
        "fallback": dict(fallback),
    }


def _reasons(fallback: dict[str, int]) -> str:
    names = {
        "no_logprobs": "no logprobs",
        "unaligned": "token boundaries differ",
        "sampled_unmapped": "sampled token not a student token",
        "candidate_unmapped": "a top-k candidate not a student token",
    }
    parts = [f"{names.get(k, k)}: {v:,}" for k, v in sorted(fallback.items()) if v]
    return ", ".join(parts) or "none"


def describe_targets(totals: dict[str, Any], collection: str) -> str:
    return (
        f"sparse_kd: {totals['kd_positions']:,} of {totals['target_tokens']:,} response tokens "
        f"({totals['kd_share']:.1%}) of collection {collection!r} use the teacher's logprobs "
        f"({totals['by_ids']} of {totals['examples']} examples mapped by token id, the rest by "
        f"bytes); CE fallback — {_reasons(totals['fallback'])}"
    )


def _memory_log(ctx: ObjectiveContext, config: Any) -> dict[str, Any] | None:
    from kdstudio.distill import preflight

    try:
        est = preflight.memory_estimate(config, ctx.ws, device=ctx.device)
    except (OSError, ValueError) as exc:  # an estimate must never block a run
        ctx.sink.emit(Log(f"memory estimate unavailable: {exc}", level="warning"))
        return None
    ctx.sink.emit(Log(preflight.describe_memory(est)))
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
