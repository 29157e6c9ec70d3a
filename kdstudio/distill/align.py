"""A teacher's tokens and logprobs onto the student's tokens: the targets of sparse KD (and of
dense KD across tokenizers).

    mode, why = choose_mode(examples, vocab, "auto")     # once per collection
    targets = align_example(encoded, response, token_logprobs, vocab, mode=mode)
    targets.pos / .ids / .logprobs / .kinds  completion positions using KD, their target
                                              student ids with the teacher's log-mass, and how
                                              each target was made (KINDS)
    targets.fallback                          {reason: positions} that train with plain CE
    targets.encoded                           the example as the teacher's own token sequence
                                              (mode "exact", when it is known in student ids)
    totals = summarize_targets(all_targets); describe_targets(totals, collection)

What a teacher gives, per generated position: the token it chose (bytes, or an id) with its
logprob and its top-k alternatives. Servers render tokens as text pieces (a special token
as "", a cut UTF-8 character as "" or U+FFFD), often without the stop token's logprob, and
in their own tokenizer. Everything meets on the bytes of the response:

1. The teacher's tokens are laid on the response's bytes (`_layout`): each chosen token
   spans the bytes it spells, read literally or, when a server sent raw vocabulary pieces,
   as byte-level (`Ġthe`) or SentencePiece (`▁the`) pieces, whichever spells the response.
   A run of unreadable tokens ("" or U+FFFD) takes the bytes up to the next readable one
   when that is unambiguous (one token, or one byte each). The token right after the
   response is the stop token when it is unreadable or the last one.
2. Each student response token j covers bytes [a, b). The teacher token k holding byte a
   starts at A <= a; w = response[A:a] is the part of k the student has already spelled.
   The student's target at j is the teacher's distribution over what comes next, moved
   onto student tokens by bytes ("projection", mode "bytes"):
   - a candidate c of position k that agrees with w (c starts with w) and continues with
     r = c[len(w):] puts its probability on the student token that spells r exactly, else on
     the longest student token that starts r (the token the student would begin r with);
   - the chosen token continues with the response itself, so its probability goes to the
     student's own token at j; when that token reaches past k (the student merges teacher
     tokens), it is multiplied by the teacher's probability of the rest of the student token
     along the response (the chain of its next positions, summing the candidates that start
     with what is left), and the mass of "k, then something else" goes to the tail;
   - a candidate equal to w (it ends where the student's token begins) continues unseen: its
     mass goes to the tail; so does any mass that lands on no student token;
   - when w is not empty only candidates that start with w are possible: their mass is
     renormalised (the teacher's unseen tail is taken to hold none of them);
   - a student token that starts before the response (SentencePiece's dummy space) is mapped
     with those leading bytes prepended.
   One student id collecting several candidates gets their summed mass. The sparse loss adds
   one tail bucket for the rest (`losses.sparse_topk_kl_per_token`), so nothing is ever
   renormalised away. Where the tokenizers coincide every position is 1:1 with every
   candidate exactly one student token, and the targets are the teacher's top-k unchanged.
3. Mode "exact" (same tokenizer): only 1:1 positions use KD, candidates map by id or by exact
   bytes (one that does not goes to the tail), and when the teacher's chosen tokens are all
   student tokens (by id, or pieces that are one student token each) the example is re-encoded
   as that token sequence (`targets.encoded`): the student trains on what the teacher wrote,
   not on a re-tokenisation that may split it otherwise. Mode "uld": every position paired
   with the teacher token holding its first byte is trained by Universal Logit Distillation's
   sorted-probability distance (Boizard et al. 2024), for vocabularies that share no pieces.
   Mode "auto" picks "exact" when the teacher's ids are the student's, else whichever of
   "exact" and "bytes" reaches more response tokens on a sample (`choose_mode`).
4. The student's end-of-turn token takes the teacher's stop-token distribution; a teacher
   that sent none (llama.cpp) costs that one position, never the example.

Compared with TRL's GOLD (byte-offset groups, a group's first distribution times the chosen
chain as unnormalised mass, identical vocabulary strings compared directly and the rest by
sorted probabilities) and NVIDIA NeMo RL's projection matrices, this works from an API's
top-k alone, never assigns a counterfactual candidate a continuation it did not have, keeps
probabilities normalised through the tail bucket, and compares by bytes, not strings.

Every position that falls back to CE is counted by reason and every KD position by kind,
so a run reports which share of the response tokens got which signal.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kdstudio.distill.batches import IGNORE, Encoded
from kdstudio.distill.config import ALIGNS as ALIGN_MODES

if TYPE_CHECKING:
    from kdstudio.logprobs import TokenLogprobs
    from kdstudio.teachers.vocab import VocabBytes

#: How a KD position's target was made; a position's kind code is its index here + 1 (0: CE).
KINDS = ("exact", "mapped", "split", "merged", "uld")
KIND_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
KIND_WORDS = {
    "exact": "1:1, every candidate a student token",
    "mapped": "1:1, candidates mapped by bytes",
    "split": "inside a teacher token",
    "merged": "across teacher tokens",
    "uld": "sorted-probability distance",
}
FALLBACK_WORDS = {
    "no_logprobs": "no logprobs",
    "unaligned": "text the teacher's tokens do not spell",
    "boundary": "token boundaries differ",
    "no_stop": "no stop-token logprob",
    "sampled_unmapped": "sampled token not a student token",
}
READINGS = ("text", "byte_level", "sentencepiece")
_REPLACEMENT = "\ufffd".encode()
# A candidate spelled like a special token (`<|im_end|>`, `</s>`, `<eos>`) is no text to map by
# prefix: only a student token of exactly that text takes it.
_SPECIAL_LIKE = re.compile(rb"<\|?[A-Za-z0-9_./\-]+\|?>")


@dataclass
class Targets:
    """KD targets of one example: completion positions `pos` (token j of the completion, i.e.
    input position prompt_len + j) with student ids `[n, K]` (-1 = none) and the teacher's
    log-mass on each `[n, K]` (-inf = none; the rest of its mass is the tail bucket), and the
    kind code of each position (`KIND_CODE`). A "uld" position has no ids: its logprobs are the
    teacher's probabilities in descending order."""

    pos: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray
    kinds: np.ndarray
    n_target: int
    fallback: Counter = field(default_factory=Counter)
    by_ids: bool = False
    encoded: Encoded | None = None

    @property
    def n_kd(self) -> int:
        return len(self.pos)

    def kind_counts(self) -> Counter:
        return Counter(KINDS[int(c) - 1] for c in self.kinds)


def _empty(n_target: int) -> Targets:
    return Targets(
        np.zeros(0, np.int32),
        np.zeros((0, 1), np.int32),
        np.zeros((0, 1), np.float32),
        np.zeros(0, np.uint8),
        n_target,
    )


# -- the teacher's tokens on the response's bytes ----------------------------------------------


def reading(piece: bytes, how: str) -> bytes:
    """What a token a server sent as `piece` spells when read as `how` (READINGS): the text
    itself, a byte-level BPE piece (`Ġthe`) or a SentencePiece piece (`▁the`, `<0x0A>`)."""
    if how == "text" or not piece:
        return piece
    from kdstudio.teachers.vocab import SPACE_MARK, byte_decoder

    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return piece
    if how == "byte_level":
        table = byte_decoder()
        return bytes(table[c] for c in text) if all(c in table for c in text) else piece
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return bytes([int(text[3:5], 16)])
        except ValueError:
            return piece
    return text.replace(SPACE_MARK, " ").encode("utf-8")


def _opaque(piece: bytes) -> bool:
    """A piece that does not say which bytes it spells: a special token or a cut character."""
    return not piece or _REPLACEMENT in piece


@dataclass
class _Candidate:
    spelled: bytes
    p: float
    sid: int  # the student id when the teacher gave ids of the student's tokenizer, else -1


@dataclass
class _Layout:
    """The teacher's tokens laid on the response (see the module docstring, step 1)."""

    pieces: list[bytes]
    spans: list[tuple[int, int] | None]
    owner: list[int]  # per response byte: the teacher token spelling it, -1 unknown
    starts: dict[int, int]  # byte offset -> the teacher token starting there
    stop: int | None
    cands: list[list[_Candidate]]
    chosen: list[int]  # index of the chosen token in cands[i]
    by_ids: bool
    how: str


def _ids_are_students(tl: TokenLogprobs, vocab: VocabBytes, resp: bytes) -> bool:
    """Whether the teacher's ids are the student's: every sampled id's student bytes equal the
    stored bytes (vLLM's id-only tokens have none: their bytes must then spell the text)."""
    if tl.token_ids is None or len(tl.token_ids) != len(tl.tokens):
        return False
    spelled = []
    for stored, tid in zip(tl.tokens, tl.token_ids, strict=True):
        mine = vocab.of(int(tid))
        if mine is None or (stored and stored != mine):
            return False
        spelled.append(mine)
    return all(tl.tokens) or b"".join(spelled).startswith(resp)


def _best_reading(tokens: Sequence[bytes], resp: bytes) -> str:
    """The reading of the pieces that spells the longest stretch of the response."""
    from kdstudio.distill.batches import common_prefix

    best, best_len = "text", -1
    for how in READINGS:
        joined = b"".join(reading(p, how) for p in tokens if not _opaque(p))
        n = common_prefix(joined, resp)
        if n > best_len:
            best, best_len = how, n
        if n == len(resp):
            break
    return best


def _layout(tl: TokenLogprobs, vocab: VocabBytes, resp: bytes) -> _Layout:
    by_ids = _ids_are_students(tl, vocab, resp)
    if by_ids:
        assert tl.token_ids is not None
        pieces = [vocab.of(int(t)) or b"" for t in tl.token_ids]
        how = "text"
    else:
        how = _best_reading(tl.tokens, resp)
        pieces = [reading(p, how) for p in tl.tokens]
    cands, chosen = _candidates(tl, pieces, how, by_ids, vocab)
    _drop_dummy_space(pieces, cands, resp)
    n = len(pieces)
    spans: list[tuple[int, int] | None] = [None] * n
    stop = None
    cursor, run = 0, []
    for i, p in enumerate(pieces):
        if cursor >= len(resp) and not run:
            if _opaque(p) or i == n - 1 or (by_ids and tl.token_ids[i] in vocab.specials):
                stop = i
            break
        if _opaque(p):
            run.append(i)
            continue
        at = _next_at(resp, p, cursor, len(run))
        if at < 0:
            break  # the text differs from here on (an edited answer, a stop string)
        if run:
            _place_run(run, pieces, spans, cursor, at)
            run = []
        spans[i] = (at, at + len(p))
        cursor = at + len(p)
    else:
        if run:  # unreadable tokens up to the end: the response's last bytes, maybe a stop token
            if _ends_with_stop(run, pieces, len(resp) - cursor):
                stop = run.pop()
            _place_run(run, pieces, spans, cursor, len(resp))
    owner = [-1] * len(resp)
    starts: dict[int, int] = {}
    for i, span in enumerate(spans):
        if span and span[1] > span[0]:
            if _opaque(pieces[i]):  # placed: what it spells is the response's bytes there
                pieces[i] = cands[i][chosen[i]].spelled = resp[span[0] : span[1]]
            starts[span[0]] = i
            owner[span[0] : span[1]] = [i] * (span[1] - span[0])
    return _Layout(pieces, spans, owner, starts, stop, cands, chosen, by_ids, how)


def _drop_dummy_space(pieces: list[bytes], cands: list[list[_Candidate]], resp: bytes) -> None:
    """A SentencePiece teacher spells its first word with the space its tokenizer put in front
    ("▁The" for "The"): read its first readable token, and the alternatives there, without it."""
    first = next((i for i, p in enumerate(pieces) if not _opaque(p)), None)
    if first is None or resp.startswith(b" "):
        return
    piece = pieces[first]
    if len(piece) > 1 and piece.startswith(b" ") and resp.startswith(piece[1:]):
        pieces[first] = piece[1:]
        for c in cands[first]:
            if c.spelled.startswith(b" "):
                c.spelled = c.spelled[1:]


def _next_at(resp: bytes, piece: bytes, cursor: int, unread: int) -> int:
    """Where a readable piece sits: at the cursor, or after `unread` unreadable tokens of at
    most 4 bytes each (the longest UTF-8 character)."""
    if not unread:
        return cursor if resp.startswith(piece, cursor) else -1
    return resp.find(piece, cursor, cursor + 4 * unread + len(piece))


def _ends_with_stop(run: list[int], pieces: list[bytes], remaining: int) -> bool:
    """Whether the last of a trailing run of unreadable tokens is the stop token: a "" after
    cut characters (U+FFFD), or one "" more than the remaining bytes can hold (a "" that is
    not special is a cut character's piece, at least one byte, never a whole character)."""
    if pieces[run[-1]]:
        return False
    if any(pieces[i] for i in run):
        return True
    return len(run) > remaining


def _place_run(
    run: list[int], pieces: list[bytes], spans: list[tuple[int, int] | None], a: int, b: int
) -> None:
    """Give a run of unreadable tokens the bytes [a, b) when that is unambiguous."""
    cut = [i for i in run if pieces[i]]  # U+FFFD: certainly part of the text
    holders = cut or run  # without any, the "" tokens are the cut character's pieces
    if b == a:
        return
    if len(holders) == 1:
        spans[holders[0]] = (a, b)
    elif len(holders) == b - a:
        for k, i in enumerate(holders):
            spans[i] = (a + k, a + k + 1)


def _candidates(
    tl: TokenLogprobs, pieces: list[bytes], how: str, by_ids: bool, vocab: VocabBytes
) -> tuple[list[list[_Candidate]], list[int]]:
    """Per teacher position: its distinct candidates (the top-k and the chosen token, whose
    duplicate in the top-k is dropped) as probabilities, and which one was chosen."""
    out, chosen = [], []
    n_vocab = len(vocab)
    for i, piece in enumerate(pieces):
        sid = int(tl.token_ids[i]) if by_ids and tl.token_ids is not None else -1
        row: list[_Candidate] = []
        at = -1
        for j, raw in enumerate(tl.top_tokens[i]):
            lp = float(tl.top_logprobs[i, j])
            if not math.isfinite(lp):
                continue
            cid = -1
            if by_ids and tl.top_ids is not None and 0 <= int(tl.top_ids[i, j]) < n_vocab:
                cid = int(tl.top_ids[i, j])
            spelled = (vocab.of(cid) or b"") if cid >= 0 else reading(raw, how)
            same = cid == sid if cid >= 0 and sid >= 0 else spelled == piece
            if at < 0 and same:
                at = len(row)
                cid = sid if sid >= 0 else cid
                spelled = piece
            row.append(_Candidate(spelled, math.exp(lp), cid))
        if at < 0:
            lp = float(tl.logprobs[i])
            at = len(row)
            row.append(_Candidate(piece, math.exp(lp) if math.isfinite(lp) else 0.0, sid))
        total = sum(c.p for c in row)
        if total > 1.0:  # fp16 storage can round a top-k past 1
            for c in row:
                c.p /= total
        out.append(row)
        chosen.append(at)
    return out, chosen


# -- one example -------------------------------------------------------------------------------


def token_offsets(enc: Encoded, vocab: VocabBytes, resp: bytes) -> tuple[list[int], int]:
    """(byte offset of each completion token's start, plus the end; the byte offset where the
    response starts in the completion, -1 when its tokens do not spell it)."""
    completion = enc.input_ids[enc.prompt_len :]
    offsets = [0]
    for i in completion:
        offsets.append(offsets[-1] + len(vocab.of(i) or b""))
    joined = b"".join(vocab.of(i) or b"" for i in completion)
    return offsets, joined.find(resp) if resp else -1


def align_example(
    enc: Encoded,
    response: str,
    tl: TokenLogprobs | None,
    vocab: VocabBytes,
    *,
    mode: str = "bytes",
    max_length: int | None = None,
) -> Targets:
    """KD targets of one encoded example (see the module docstring for the rules). With mode
    "exact" and the teacher's token sequence known in student ids, the example is re-encoded
    as that sequence (`Targets.encoded`, at most `max_length` tokens) and aligned as such."""
    if mode not in ("exact", "bytes", "uld"):
        raise ValueError(f"align mode must be exact, bytes or uld here, got {mode!r}")
    if tl is None or len(tl) == 0:
        n_target = len(_wanted(enc))
        out = _empty(n_target)
        out.fallback["no_logprobs"] = n_target
        return out
    resp = response.encode("utf-8")
    lay = _layout(tl, vocab, resp)
    if mode == "exact":
        seq = _teacher_sequence(lay, vocab, resp)
        again = _reencode(enc, seq, vocab, resp, max_length) if seq is not None else None
        if again is not None:
            out = _align(again, resp, lay, vocab, mode)
            out.encoded = again
            return out
    return _align(enc, resp, lay, vocab, mode)


def _wanted(enc: Encoded) -> list[int]:
    """Completion positions whose token carries loss (and has a position before it)."""
    labels = enc.labels[enc.prompt_len :]
    return [j for j, lab in enumerate(labels) if lab != IGNORE and enc.prompt_len + j > 0]


def _align(enc: Encoded, resp: bytes, lay: _Layout, vocab: VocabBytes, mode: str) -> Targets:
    completion = enc.input_ids[enc.prompt_len :]
    wanted = _wanted(enc)
    offsets, r0 = token_offsets(enc, vocab, resp)
    rows: list[tuple[int, dict[int, float], str]] = []
    fallback: Counter = Counter()
    end_seen = False
    for j in wanted:
        tid = completion[j]
        a, b = offsets[j] - r0, offsets[j + 1] - r0
        if r0 < 0 or vocab.of(tid) is None:
            fallback["unaligned"] += 1
            continue
        if a >= len(resp) and tid in vocab.specials and not end_seen:
            end_seen = True
            got = _end_target(lay, tid, vocab, mode)
        elif a < 0 < b <= len(resp) or 0 <= a < b <= len(resp):
            pre = (vocab.of(tid) or b"")[:-a] if a < 0 else b""
            got = _target(lay, resp, max(a, 0), b, pre, tid, vocab, mode)
        else:
            got = "unaligned"  # template text around the response
        if isinstance(got, str):
            fallback[got] += 1
        else:
            rows.append((j, *got))
    return _pack(rows, len(wanted), fallback, lay.by_ids)


def _end_target(
    lay: _Layout, end_id: int, vocab: VocabBytes, mode: str
) -> tuple[dict[int, float], str] | str:
    """The student's end-of-turn token: the teacher's distribution at its stop token."""
    k = lay.stop
    if k is None:
        return "no_stop"
    if mode == "uld":
        return _uld(lay, k)
    mass: dict[int, float] = defaultdict(float)
    exact = True
    for idx, c in enumerate(lay.cands[k]):
        if idx == lay.chosen[k]:
            mass[end_id] += c.p
            continue
        u = c.sid if c.sid >= 0 else _map(c.spelled, vocab, mode)
        exact &= u >= 0 and (c.sid >= 0 or vocab.find(c.spelled) == u)
        if u >= 0:
            mass[u] += c.p
    return mass, "exact" if exact else "mapped"


def _target(
    lay: _Layout,
    resp: bytes,
    a: int,
    b: int,
    pre: bytes,
    student_id: int,
    vocab: VocabBytes,
    mode: str,
) -> tuple[dict[int, float], str] | str:
    """The target of the student token spelling `pre + resp[a:b]` (module docstring, step 2)."""
    k = lay.owner[a]
    if k < 0:
        return "unaligned"
    if mode == "uld":
        return _uld(lay, k)
    start, end = lay.spans[k]  # type: ignore[misc]
    if mode == "exact" and (pre or a != start or b != end):
        return "boundary"
    w = resp[start:a]
    x = resp[a:b]
    rest = lay.pieces[k][len(w) :]
    cands = [c for c in lay.cands[k] if c.spelled.startswith(w)] if w else lay.cands[k]
    norm = sum(c.p for c in cands) if w else 1.0
    if norm <= 0:
        return "unaligned"
    chosen = lay.cands[k][lay.chosen[k]]
    mass: dict[int, float] = defaultdict(float)
    kind = "split" if (w or len(x) < len(rest)) else "exact"
    for c in cands:
        if c is chosen:
            p = c.p
            if len(x) > len(rest):
                follow = _chain(lay, end, x[len(rest) :])
                if follow is None:
                    return "unaligned"
                p *= follow
                kind = "merged"
            mass[student_id] += p / norm
            continue
        r = c.spelled[len(w) :]
        if not r:  # it ends where the student's token begins (or is a special token spelled
            if kind == "exact":  # ""): what follows it is unseen, its mass is the tail's
                kind = "mapped"
            continue
        u = c.sid if c.sid >= 0 and not w and not pre else _map(pre + r, vocab, mode)
        if u >= 0:
            mass[u] += c.p / norm
        if kind == "exact" and (u < 0 or (c.sid < 0 and vocab.find(pre + r) != u)):
            kind = "mapped"
    if kind == "exact" and pre:
        kind = "mapped"
    return mass, kind


def _chain(lay: _Layout, at: int, rest: bytes) -> float | None:
    """The teacher's probability that its text goes on from byte `at` with `rest` (None when
    its token there is unknown)."""
    k = lay.starts.get(at)
    if k is None:
        return None
    p = sum(c.p for c in lay.cands[k] if c.spelled.startswith(rest))
    piece = lay.pieces[k]
    if 0 < len(piece) < len(rest):
        follow = _chain(lay, at + len(piece), rest[len(piece) :])
        if follow is None:
            return None
        p += lay.cands[k][lay.chosen[k]].p * follow
    return p


def _map(spelled: bytes, vocab: VocabBytes, mode: str) -> int:
    """The student token a teacher candidate's bytes begin with (-1: none)."""
    exact = vocab.find(spelled)
    if exact >= 0 or mode == "exact" or _SPECIAL_LIKE.fullmatch(spelled):
        return exact
    return vocab.longest_prefix(spelled)


def _uld(lay: _Layout, k: int) -> tuple[dict[int, float], str]:
    """The teacher's probabilities at k, keyed by rank (ULD compares sorted probabilities)."""
    ranked = sorted((c.p for c in lay.cands[k]), reverse=True)
    return {-(i + 1): p for i, p in enumerate(ranked)}, "uld"


def _pack(
    rows: list[tuple[int, dict[int, float], str]], n_target: int, fallback: Counter, by_ids: bool
) -> Targets:
    if not rows:
        out = _empty(n_target)
        out.fallback, out.by_ids = fallback, by_ids
        return out
    width = max(len(m) for _, m, _ in rows)
    ids = np.full((len(rows), width), -1, np.int32)
    lps = np.full((len(rows), width), -np.inf, np.float32)
    for r, (_, mass, kind) in enumerate(rows):
        ordered = sorted(mass.items(), key=lambda kv: -kv[1])
        for c, (sid, p) in enumerate(ordered):
            if p > 0:
                ids[r, c] = sid if kind != "uld" else -1
                lps[r, c] = math.log(p)
    return Targets(
        np.asarray([j for j, _, _ in rows], np.int32),
        ids,
        lps,
        np.asarray([KIND_CODE[k] for _, _, k in rows], np.uint8),
        n_target,
        fallback,
        by_ids,
    )


# -- the teacher's own token sequence ------------------------------------------------------------


def _teacher_sequence(lay: _Layout, vocab: VocabBytes, resp: bytes) -> list[int] | None:
    """The teacher's response tokens as student ids, when every one is known and together they
    spell the response exactly (the stop token is left out: the template writes the student's)."""
    end = lay.stop if lay.stop is not None else len(lay.pieces)
    ids = []
    for i in range(end):
        if lay.spans[i] is None:
            return None
        sid = lay.cands[i][lay.chosen[i]].sid
        if sid < 0:
            sid = vocab.find(lay.pieces[i])
        if sid < 0 or sid in vocab.specials:
            return None
        ids.append(sid)
    return ids if b"".join(lay.pieces[:end]) == resp else None


def _reencode(
    enc: Encoded, seq: list[int], vocab: VocabBytes, resp: bytes, max_length: int | None
) -> Encoded | None:
    """`enc` with its response tokens replaced by `seq` (None: same tokens already, or the
    response does not begin and end on token boundaries, or the result would be too long)."""
    completion = enc.input_ids[enc.prompt_len :]
    offsets, r0 = token_offsets(enc, vocab, resp)
    if r0 < 0 or enc.truncated or r0 not in offsets or r0 + len(resp) not in offsets:
        return None
    j0, j1 = offsets.index(r0), offsets.index(r0 + len(resp))
    if completion[j0:j1] == seq:
        return None
    labels = enc.labels[enc.prompt_len :]
    new_ids = enc.input_ids[: enc.prompt_len] + completion[:j0] + seq + completion[j1:]
    if max_length is not None and len(new_ids) > max_length:
        return None
    new_labels = enc.labels[: enc.prompt_len] + labels[:j0] + list(seq) + labels[j1:]
    return Encoded(new_ids, new_labels, enc.prompt_len, [], example=enc.example)


# -- the mode of a collection ---------------------------------------------------------------------


def choose_mode(
    examples: Iterable[tuple[Encoded, str, TokenLogprobs | None]],
    vocab: VocabBytes,
    mode: str,
    *,
    sample: int = 256,
) -> tuple[str, str]:
    """(the mode to align a collection with, why). `auto` is "exact" when the teacher's ids
    are the student's (in 90% of the examples), else whichever of "exact" and "bytes" gives
    the teacher's signal to more response tokens on the first `sample` examples with
    logprobs, "exact" when it reaches 98% of what "bytes" does (its targets are the
    teacher's own, where "bytes" approximates across token boundaries). Vocabularies alone
    do not tell: a tokenizer trained on the same text may hold every piece of the teacher's
    and still split the text otherwise (a SentencePiece space in front of the first word)."""
    if mode not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode, f"distill.align = {mode!r}"
    chosen = []
    for enc, response, tl in examples:
        if tl is not None and len(tl):
            chosen.append((enc, response, tl))
            if len(chosen) == sample:
                break
    if not chosen:
        return "bytes", "no example has logprobs"
    by_ids = sum(_ids_are_students(tl, vocab, r.encode("utf-8")) for _, r, tl in chosen)
    if by_ids >= 0.9 * len(chosen):
        n = len(chosen)
        return "exact", f"the teacher's token ids are the student's ({by_ids:,} of {n:,} examples)"
    share = {
        m: summarize_targets(align_example(e, r, tl, vocab, mode=m) for e, r, tl in chosen)[
            "kd_share"
        ]
        for m in ("exact", "bytes")
    }
    figures = (
        f"on {len(chosen):,} examples exact gives the teacher's signal to {share['exact']:.1%} "
        f"of the response tokens, bytes to {share['bytes']:.1%}"
    )
    if share["exact"] >= 0.98 * share["bytes"]:
        return "exact", f"{figures}: the same tokenizer"
    return "bytes", f"{figures}: another tokenizer, aligned by bytes"


# -- reporting ---------------------------------------------------------------------------------


def summarize_targets(targets: Any) -> dict[str, Any]:
    """Totals over examples' Targets: positions, KD positions and share, the share of each
    kind of KD position, CE fallback reasons."""
    fallback: Counter = Counter()
    kinds: Counter = Counter()
    n_target = n_kd = with_lp = by_ids = n = resequenced = 0
    for tg in targets:
        n += 1
        n_target += tg.n_target
        n_kd += tg.n_kd
        fallback.update(tg.fallback)
        kinds.update(tg.kind_counts())
        with_lp += tg.fallback.get("no_logprobs", 0) == 0
        by_ids += tg.by_ids
        resequenced += tg.encoded is not None
    return {
        "examples": n,
        "with_logprobs": with_lp,
        "by_ids": by_ids,
        "teacher_sequence": resequenced,
        "target_tokens": n_target,
        "kd_positions": n_kd,
        "kd_share": n_kd / max(n_target, 1),
        "kinds": {k: kinds.get(k, 0) for k in KINDS},
        "kind_shares": {k: kinds.get(k, 0) / max(n_target, 1) for k in KINDS},
        "fallback": dict(fallback),
    }


def describe_fallback(fallback: dict[str, int]) -> str:
    """The CE fallback reasons with their counts, in words."""
    parts = [f"{FALLBACK_WORDS.get(k, k)}: {v:,}" for k, v in sorted(fallback.items()) if v]
    return ", ".join(parts) or "none"


def describe_kinds(totals: dict[str, Any]) -> str:
    """The share of each kind of KD position, in words."""
    shares = totals["kind_shares"]
    parts = [f"{KIND_WORDS[k]} {shares[k]:.1%}" for k in KINDS if totals["kinds"][k]]
    return ", ".join(parts) or "none"


def describe_targets(totals: dict[str, Any], collection: str, mode: str = "") -> str:
    """The one-line report of a run's KD coverage (logged at setup, shown in pre-flight)."""
    how = f" (align {mode})" if mode else ""
    seq = (
        f"; {totals['teacher_sequence']:,} trained on the teacher's own token sequence"
        if totals.get("teacher_sequence")
        else ""
    )
    return (
        f"sparse_kd: {totals['kd_positions']:,} of {totals['target_tokens']:,} response tokens "
        f"({totals['kd_share']:.1%}) of collection {collection!r} use the teacher's logprobs"
        f"{how}: {describe_kinds(totals)} ({totals['by_ids']} of {totals['examples']} examples "
        f"mapped by token id, the rest by bytes{seq}); CE fallback — "
        f"{describe_fallback(totals['fallback'])}"
    )
