"""Stored teacher logprobs onto the student's tokens: the targets of sparse KD.

    targets = align_example(encoded, response, token_logprobs, VocabBytes(student_tokenizer))
    targets.pos / .ids / .logprobs      completion positions using KD, candidates, logprobs
    targets.fallback                    {reason: positions} that fall back to plain CE
    totals = summarize_targets(all_targets); describe_targets(totals, collection)

The rules (run once per example, before training):

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

Every fallback is counted by reason, so a run reports which share of the response tokens got
the teacher's logprobs (a method that silently falls back to CE is SFT by another name).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kdstudio.distill.batches import IGNORE, common_prefix

if TYPE_CHECKING:
    from kdstudio.distill.batches import Encoded
    from kdstudio.logprobs import TokenLogprobs
    from kdstudio.teachers.vocab import VocabBytes


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
    agree = common_prefix(t_bytes, resp)
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


# -- reporting ---------------------------------------------------------------------------------


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


def describe_fallback(fallback: dict[str, int]) -> str:
    """The CE fallback reasons with their counts, in words."""
    names = {
        "no_logprobs": "no logprobs",
        "unaligned": "token boundaries differ",
        "sampled_unmapped": "sampled token not a student token",
        "candidate_unmapped": "a top-k candidate not a student token",
    }
    parts = [f"{names.get(k, k)}: {v:,}" for k, v in sorted(fallback.items()) if v]
    return ", ".join(parts) or "none"


def describe_targets(totals: dict[str, Any], collection: str) -> str:
    """The one-line report of a run's sparse-KD coverage (logged at setup, shown in pre-flight)."""
    return (
        f"sparse_kd: {totals['kd_positions']:,} of {totals['target_tokens']:,} response tokens "
        f"({totals['kd_share']:.1%}) of collection {collection!r} use the teacher's logprobs "
        f"({totals['by_ids']} of {totals['examples']} examples mapped by token id, the rest by "
        f"bytes); CE fallback — {describe_fallback(totals['fallback'])}"
    )
