"""A teacher's tokens and top-k onto the student's tokens (kdstudio.distill.align): the byte
layout of what servers send, the projection of candidates, chains across teacher tokens and
conditionals inside them, the teacher's own token sequence, and the counts of what fell back
to CE and why. Probabilities are checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdstudio.distill.align import (
    KIND_CODE,
    align_example,
    choose_mode,
    summarize_targets,
)
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


@pytest.fixture(scope="module")
def sp_tok(kd_models):
    return load_student_tokenizer(str(kd_models.sp))[0]


def _encode(tok, response=RESPONSE):
    return encode_example(tok, MESSAGES, response, 256)


def _student_pieces(vocab, enc, response):
    """The student's response tokens (ids, bytes): its completion minus the end token."""
    ids = enc.input_ids[enc.prompt_len :]
    pieces = [vocab.of(i) for i in ids]
    assert b"".join(pieces).startswith(response.encode())
    n, total = 0, 0
    while total < len(response.encode()):
        total += len(pieces[n])
        n += 1
    return ids[:n], pieces[:n]


def _teacher(pieces, *, alt=(b"!", b"?"), lps=(-0.2, -2.5, -3.0), **ids):
    """TokenLogprobs for `pieces`: each position's top-3 = the token and two alternatives."""
    top = [[p, *alt] for p in pieces]
    return make(pieces, [lps[0]] * len(pieces), top, [list(lps)] * len(pieces), **ids)


def _row(tg, j):
    """{student id: probability} of completion position j."""
    r = list(tg.pos).index(j)
    return {
        int(i): math.exp(lp)
        for i, lp in zip(tg.ids[r], tg.logprobs[r], strict=True)
        if i >= 0 and lp > -np.inf
    }


def _kind(tg, j):
    return int(tg.kinds[list(tg.pos).index(j)])


def test_identical_tokenization_keeps_the_teachers_top_k_at_every_response_token(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    tg = align_example(enc, RESPONSE, _teacher(pieces), vocab, mode="bytes")
    assert list(tg.pos) == list(range(len(pieces)))
    assert tg.fallback == {"no_stop": 1}  # the end token: this teacher sent no stop token
    assert tg.n_target == len(pieces) + 1
    bang, ask = vocab.find(b"!"), vocab.find(b"?")
    for j, sid in enumerate(ids):
        assert tg.ids[j, 0] == sid  # ordered by mass: the chosen token first
        assert _kind(tg, j) == KIND_CODE["exact"]
        expected = {sid: math.exp(-0.2), bang: math.exp(-2.5), ask: math.exp(-3.0)}
        assert _row(tg, j) == pytest.approx(expected, rel=1e-6)


def test_a_candidate_that_is_no_student_token_goes_to_the_tail_and_the_position_keeps_kd(
    tok, vocab
):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    tl = _teacher(pieces)
    tl.top_tokens[2][1] = b"\xff\xfe"  # spells nothing the student has (no token starts it)
    tg = align_example(enc, RESPONSE, tl, vocab, mode="exact")
    assert 2 in tg.pos and _kind(tg, 2) == KIND_CODE["mapped"]
    assert set(_row(tg, 2)) == {ids[2], vocab.find(b"?")}  # its mass is the tail's
    assert sum(_row(tg, 2).values()) == pytest.approx(math.exp(-0.2) + math.exp(-3.0))
    assert _kind(tg, 3) == KIND_CODE["exact"]


def test_a_longer_candidate_goes_to_the_longest_student_token_that_starts_it(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    tl = _teacher(pieces, alt=(b" thezqx", b"?"))
    tg = align_example(enc, RESPONSE, tl, vocab, mode="bytes")
    start = vocab.longest_prefix(b" thezqx")
    assert vocab.of(start) == b" the"
    assert _row(tg, 0)[start] == pytest.approx(math.exp(-2.5))
    assert _kind(tg, 0) == KIND_CODE["mapped"]
    exact = align_example(enc, RESPONSE, tl, vocab, mode="exact")
    assert start not in _row(exact, 0)  # exact mode: only exact bytes


def test_a_student_token_across_two_teacher_tokens_takes_the_chained_probability(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    j = next(i for i, p in enumerate(pieces) if len(p) >= 4)
    head, rest = pieces[j][:2], pieces[j][2:]
    teacher = [*pieces[:j], head, rest, *pieces[j + 1 :]]
    tl = _teacher(teacher)
    # at the second half, one more candidate also starts with what is left
    tl.top_tokens[j + 1][2] = rest + b"zz"
    tg = align_example(enc, RESPONSE, tl, vocab, mode="bytes")
    assert _kind(tg, j) == KIND_CODE["merged"]
    p_head, p_rest = math.exp(-0.2), math.exp(-0.2) + math.exp(-3.0)
    assert _row(tg, j)[ids[j]] == pytest.approx(p_head * p_rest, rel=1e-6)
    assert tg.n_kd == len(pieces)  # every response token still uses KD
    exact = align_example(enc, RESPONSE, tl, vocab, mode="exact")
    assert j not in exact.pos and exact.fallback["boundary"] == 1


def test_student_tokens_inside_one_teacher_token_take_its_conditional(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    j = next(i for i in range(len(pieces) - 1) if len(pieces[i]) + len(pieces[i + 1]) >= 4)
    merged = pieces[j] + pieces[j + 1]
    teacher = [*pieces[:j], merged, *pieces[j + 2 :]]
    # position j's alternatives: one that agrees with the student's first token, one that not
    alt = pieces[j] + b"q"
    tl = _teacher(teacher)
    tl.top_tokens[j] = [merged, alt, b"\n"]
    tg = align_example(enc, RESPONSE, tl, vocab, mode="bytes")
    assert _kind(tg, j) == KIND_CODE["split"] and _kind(tg, j + 1) == KIND_CODE["split"]
    first = _row(tg, j)
    # both the chosen token and `alt` begin with the student's token j
    assert first[ids[j]] == pytest.approx(math.exp(-0.2) + math.exp(-2.5))
    # the second student token: among candidates starting with the first one's bytes
    p_chosen, p_alt = math.exp(-0.2), math.exp(-2.5)
    second = _row(tg, j + 1)
    assert second[ids[j + 1]] == pytest.approx(p_chosen / (p_chosen + p_alt), rel=1e-6)
    assert second[vocab.find(b"q")] == pytest.approx(p_alt / (p_chosen + p_alt), rel=1e-6)


def test_server_text_pieces_with_empty_specials_and_cut_characters_are_placed(tok, vocab):
    response = "abc жщ cba"
    enc = _encode(tok, response)
    ids, pieces = _student_pieces(vocab, enc, response)
    cut = [i for i, p in enumerate(pieces) if len(p) == 1 and p[0] >= 0x80]
    assert len(cut) == 4  # the tiny tokenizer spells both letters with byte tokens
    # llama.cpp: a byte token of a cut character is "", a special token too, no `bytes`
    shown = [b"" if i in cut else p for i, p in enumerate(pieces)]
    tl = _teacher([*shown, b""], alt=(b"", b"?"))  # and here its stop token is sent, as ""
    tg = align_example(enc, response, tl, vocab, mode="bytes")
    assert tg.n_kd == tg.n_target and not tg.fallback
    assert set(cut) <= set(tg.pos)
    end = len(pieces)
    eos = enc.input_ids[enc.prompt_len + end]
    expected = {eos: math.exp(-0.2), vocab.find(b"?"): math.exp(-3.0)}
    assert _row(tg, end) == pytest.approx(expected)  # the other "" special: the tail's


def test_a_missing_stop_token_costs_one_position_not_the_example(tok, vocab):
    enc = _encode(tok)
    _, pieces = _student_pieces(vocab, enc, RESPONSE)
    tg = align_example(enc, RESPONSE, _teacher(pieces), vocab, mode="exact")
    assert tg.n_kd == tg.n_target - 1 and tg.fallback == {"no_stop": 1}


def test_raw_vocabulary_pieces_are_read_as_byte_level_bpe(tok, vocab):
    enc = _encode(tok)
    ids, _ = _student_pieces(vocab, enc, RESPONSE)
    raw = tok.convert_ids_to_tokens(ids)  # "Ġanswer": what some servers send
    assert any(p.startswith("Ġ") for p in raw)
    tl = _teacher([p.encode() for p in raw], alt=("Ġthe".encode(), b"!"))
    tg = align_example(enc, RESPONSE, tl, vocab, mode="exact")
    assert tg.n_kd == len(ids)
    assert vocab.find(b" the") in _row(tg, 0)


def test_the_teachers_own_token_sequence_replaces_the_retokenised_text(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    j, cut = next(
        (i, c)
        for i, p in enumerate(pieces)
        for c in range(1, len(p))
        if vocab.find(p[:c]) >= 0 and vocab.find(p[c:]) >= 0
    )
    # a sampling teacher wrote that token as two: a non-canonical sequence of the same text
    teacher = [*pieces[:j], pieces[j][:cut], pieces[j][cut:], *pieces[j + 1 :]]
    eos = tok.convert_tokens_to_ids("<|end|>")
    tl = _teacher([*teacher, b"<|end|>"])
    tg = align_example(enc, RESPONSE, tl, vocab, mode="exact", max_length=256)
    assert tg.encoded is not None
    seq = tg.encoded.input_ids[tg.encoded.prompt_len :]
    assert seq[: len(teacher)] == [vocab.find(p) for p in teacher]
    assert seq[len(teacher)] == eos
    assert tg.n_kd == tg.n_target == len(teacher) + 1  # every position, the stop token too
    assert all(k == KIND_CODE["exact"] for k in tg.kinds)
    canonical = align_example(enc, RESPONSE, tl, vocab, mode="exact", max_length=len(enc))
    assert canonical.encoded is None  # too long to re-encode: the text's own tokens, 1:1 only


def test_teacher_token_ids_of_the_students_tokenizer_map_by_id_including_the_eos(tok, vocab):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    eos = tok.convert_tokens_to_ids("<|end|>")
    all_ids = [*ids, eos]
    top_ids = [[i, 7, 8] for i in all_ids]
    tl = _teacher([*pieces, b"<|end|>"], token_ids=all_ids, top_ids=top_ids)
    tl.top_tokens = [[p, b"", b""] for p in [*pieces, b"<|end|>"]]  # bytes unknown: ids carry
    tg = align_example(enc, RESPONSE, tl, vocab, mode="exact")
    assert tg.by_ids and tg.n_kd == tg.n_target == len(ids) + 1
    assert set(_row(tg, len(ids))) == {eos, 7, 8}


def test_id_only_tokens_of_another_tokenizer_never_train_as_kd(tok, vocab):
    enc = _encode(tok)
    ids, _ = _student_pieces(vocab, enc, RESPONSE)
    other = [(i * 7 + 3) % len(vocab) for i in ids]  # vLLM-style ids of another vocabulary
    tl = _teacher([b""] * len(ids), token_ids=other, top_ids=[[i, 1, 2] for i in other])
    tg = align_example(enc, RESPONSE, tl, vocab, mode="bytes")
    assert tg.n_kd == 0 and not tg.by_ids


def test_an_example_without_logprobs_is_all_ce(tok, vocab):
    enc = _encode(tok)
    tg = align_example(enc, RESPONSE, None, vocab)
    assert tg.n_kd == 0 and tg.fallback == {"no_logprobs": tg.n_target}
    totals = summarize_targets([tg])
    assert totals["kd_share"] == 0 and totals["with_logprobs"] == 0


def test_a_sentencepiece_student_reads_a_byte_level_teacher_through_its_dummy_space(
    tok, vocab, sp_tok
):
    sp_vocab = VocabBytes(sp_tok)
    assert sp_vocab.scheme == "sentencepiece"
    enc = _encode(sp_tok)
    first = sp_vocab.of(enc.input_ids[enc.prompt_len])
    assert first.startswith(b" ") and not RESPONSE.startswith(" ")  # "▁The"
    _, pieces = _student_pieces(vocab, _encode(tok), RESPONSE)
    tl = _teacher(pieces, alt=(b"A", b"Reverse"))
    tg = align_example(enc, RESPONSE, tl, sp_vocab, mode="bytes")
    assert 0 in tg.pos  # the first token, spelled " The", takes the teacher's "The"
    # the alternatives are read with the same space in front: " A", " Reverse"
    a, rev = sp_vocab.longest_prefix(b" A"), sp_vocab.longest_prefix(b" Reverse")
    assert a != rev and sp_vocab.of(rev).startswith(b" Re")
    assert _row(tg, 0)[a] == pytest.approx(math.exp(-2.5))
    assert _row(tg, 0)[rev] == pytest.approx(math.exp(-3.0))
    assert tg.n_kd >= 0.9 * (tg.n_target - 1)
    summary = summarize_targets([tg])
    assert summary["kinds"]["exact"] + summary["kinds"]["mapped"] > 0


def test_uld_pairs_each_student_token_with_the_teachers_sorted_probabilities(tok, vocab, sp_tok):
    sp_vocab = VocabBytes(sp_tok)
    enc = _encode(sp_tok)
    _, pieces = _student_pieces(vocab, _encode(tok), RESPONSE)
    tg = align_example(enc, RESPONSE, _teacher(pieces), sp_vocab, mode="uld")
    assert tg.n_kd == tg.n_target - 1  # all but the end token (no stop token was sent)
    assert all(k == KIND_CODE["uld"] for k in tg.kinds)
    assert (tg.ids == -1).all()
    probs = np.exp(tg.logprobs[0])
    assert probs == pytest.approx([math.exp(-0.2), math.exp(-2.5), math.exp(-3.0)], rel=1e-6)


def test_auto_mode_names_the_same_tokenizer_or_another_one(tok, vocab, sp_tok):
    enc = _encode(tok)
    ids, pieces = _student_pieces(vocab, enc, RESPONSE)
    same = [(enc, RESPONSE, _teacher(pieces, alt=(b" the", b" a")))] * 3
    assert choose_mode(same, vocab, "auto")[0] == "exact"
    by_id = [(enc, RESPONSE, _teacher(pieces, token_ids=ids))] * 3
    mode, why = choose_mode(by_id, vocab, "auto")
    assert mode == "exact" and "token ids" in why
    sp_vocab = VocabBytes(sp_tok)
    sp_enc = _encode(sp_tok)
    # the student spells the first word with a space in front: exact loses that position
    mode, why = choose_mode([(sp_enc, RESPONSE, same[0][2])] * 3, sp_vocab, "auto")
    assert mode == "bytes" and "another tokenizer" in why
    assert choose_mode(same, vocab, "uld") == ("uld", "distill.align = 'uld'")
