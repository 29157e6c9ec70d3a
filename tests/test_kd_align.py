"""Stored teacher logprobs onto the student's tokens: byte-span alignment, candidate mapping
by id or exact bytes, and CE fallback with its reasons counted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdstudio.distill.align import align_example, summarize_targets
from kdstudio.distill.batches import encode_example, load_student_tokenizer
from kdstudio.logprobs import make
from kdstudio.teachers.vocab import VocabBytes

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
RESPONSE = "The answer is 5. Reverse the string abc: cba."


@pytest.fixture(scope="module")
def tok(kd_models):
    return load_student_tokenizer(str(kd_models.student))[0]


@pytest.fixture(scope="module")
def vocab(tok):
    return VocabBytes(tok)


def _encode(tok, response=RESPONSE):
    return encode_example(tok, MESSAGES, response, 256)


def _student_pieces(tok, vocab, enc, response):
    """The student's response tokens as bytes (its completion minus the end token)."""
    ids = enc.input_ids[enc.prompt_len :]
    pieces = [vocab.of(i) for i in ids]
    assert b"".join(pieces).startswith(response.encode())
    n, total = 0, 0
    while total < len(response.encode()):
        total += len(pieces[n])
        n += 1
    return ids[:n], pieces[:n]


def _teacher(pieces, *, alt=None, ids=None, top_ids=None):
    """TokenLogprobs for `pieces`: each position's top-3 = the token plus two alternatives."""
    alt = alt or [b" the", b" is"]
    top = [[p, *alt] for p in pieces]
    lps = [[-0.1, -2.5, -3.0] for _ in pieces]
    return make(pieces, [-0.1] * len(pieces), top, lps, token_ids=ids, top_ids=top_ids)


def test_identical_tokenization_uses_kd_at_every_response_token(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(tok, vocab, enc, RESPONSE)
    tg = align_example(enc, RESPONSE, _teacher(pieces), vocab)
    assert tg.n_kd == len(pieces) and list(tg.pos) == list(range(len(pieces)))
    assert tg.fallback == {"unaligned": 1}  # the end token: this teacher sent no eos
    assert tg.n_target == len(pieces) + 1
    assert list(tg.ids[:, 0]) == ids  # column 0: the sampled token = the student's token
    the, is_ = vocab.index[b" the"], vocab.index[b" is"]
    assert all(list(row[2:]) == [the, is_] for row in tg.ids)
    assert np.allclose(tg.logprobs[0], [-0.1, -0.1, -2.5, -3.0])


def test_positions_whose_token_boundaries_differ_fall_back_to_ce(tok, vocab):
    enc = _encode(tok)
    _, pieces = _student_pieces(tok, vocab, enc, RESPONSE)
    j = next(i for i, p in enumerate(pieces) if len(p) >= 4)  # split this one in two
    k = j + 2  # and merge these two into one teacher token
    teacher = pieces[:j] + [pieces[j][:2], pieces[j][2:]] + [pieces[j + 1]]
    teacher += [pieces[k] + pieces[k + 1]] + pieces[k + 2 :]
    tg = align_example(enc, RESPONSE, _teacher(teacher), vocab)
    expected = [i for i in range(len(pieces)) if i not in (j, k, k + 1)]
    assert list(tg.pos) == expected
    assert tg.fallback["unaligned"] == 3 + 1  # split, merged pair, end token


def test_a_candidate_that_is_no_student_token_sends_its_position_to_ce(tok, vocab):
    enc = _encode(tok)
    _, pieces = _student_pieces(tok, vocab, enc, RESPONSE)
    tl = _teacher(pieces)
    tl.top_tokens[2][1] = b" zqxjv"  # not one student token
    tl.top_tokens[4][2] = b" zqxjv"
    tl.top_logprobs[4][2] = -math.inf  # an absent candidate does not count
    tg = align_example(enc, RESPONSE, tl, vocab)
    assert 2 not in tg.pos and 4 in tg.pos
    assert tg.fallback["candidate_unmapped"] == 1
    row = list(tg.pos).index(4)
    assert tg.ids[row, 3] == -1 and tg.logprobs[row, 3] == -np.inf


def test_a_sampled_token_that_is_not_the_students_token_there_falls_back(tok, vocab):
    enc = _encode(tok)
    _, pieces = _student_pieces(tok, vocab, enc, RESPONSE)
    tl = _teacher(pieces)
    tl.tokens[1] = b"\xff" * len(pieces[1])  # same length, other bytes: text disagrees
    tg = align_example(enc, RESPONSE, tl, vocab)
    # the teacher's text no longer matches the response from position 1 on
    assert list(tg.pos) == [0]


def test_teacher_ids_of_the_same_tokenizer_are_used_directly_including_the_eos(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(tok, vocab, enc, RESPONSE)
    eos = tok.convert_tokens_to_ids("<|end|>")
    all_ids = [*ids, eos]
    top_ids = [[i, 7, 8] for i in all_ids]
    pieces_eos = [*pieces, b"<|end|>"]
    tl = _teacher(pieces_eos, ids=all_ids, top_ids=top_ids)
    tl.top_tokens = [[p, b"", b""] for p in pieces_eos]  # bytes unknown: ids must carry it
    tg = align_example(enc, RESPONSE, tl, vocab)
    assert tg.by_ids and tg.n_kd == tg.n_target == len(ids) + 1
    assert list(tg.ids[-1]) == [eos, eos, 7, 8]


def test_id_only_tokens_of_another_tokenizer_never_train_as_kd(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(tok, vocab, enc, RESPONSE)
    other = [(i * 7 + 3) % len(vocab) for i in ids]  # vLLM-style ids of another vocabulary
    tl = _teacher([b""] * len(ids), ids=other, top_ids=[[i, 1, 2] for i in other])
    tg = align_example(enc, RESPONSE, tl, vocab)
    assert tg.n_kd == 0 and not tg.by_ids
    same = _teacher([b""] * len(ids), ids=ids, top_ids=[[i, 1, 2] for i in ids])
    tg = align_example(enc, RESPONSE, same, vocab)
    assert tg.by_ids and tg.n_kd == len(ids)


def test_an_example_without_logprobs_is_all_ce(tok, vocab):
    enc = _encode(tok)
    tg = align_example(enc, RESPONSE, None, vocab)
    assert tg.n_kd == 0 and tg.fallback == {"no_logprobs": tg.n_target}
    totals = summarize_targets([tg])
    assert totals["kd_share"] == 0 and totals["with_logprobs"] == 0


def test_a_character_the_student_splits_into_byte_tokens_aligns_only_whole_tokens(tok, vocab):
    response = "abc жщ cba"
    enc = _encode(tok, response)
    ids, pieces = _student_pieces(tok, vocab, enc, response)
    emoji_parts = [i for i, p in enumerate(pieces) if any(b >= 0x80 for b in p)]
    assert len(emoji_parts) >= 2  # the tiny tokenizer has no token for it
    merged = b"".join(pieces[i] for i in emoji_parts)
    first = emoji_parts[0]
    teacher = pieces[:first] + [merged] + pieces[emoji_parts[-1] + 1 :]
    tg = align_example(enc, response, _teacher(teacher), vocab)
    assert set(tg.pos) == set(range(len(pieces))) - set(emoji_parts)
