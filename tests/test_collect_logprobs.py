"""Compact per-token logprobs: conversion from the OpenAI wire format and the binary codec."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdstudio import logprobs as lp


def _entry(token, logprob, top=(), raw_bytes="auto"):
    b = list(token.encode()) if raw_bytes == "auto" else raw_bytes
    return {
        "token": token,
        "bytes": b,
        "logprob": logprob,
        "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": v} for t, v in top],
    }


def test_from_openai_maps_sentinel_to_minus_inf_and_null_bytes_to_the_token_text():
    content = [
        _entry("Hi", -0.1, [("Hi", -0.1), ("Hello", -9999.0)]),
        _entry("é", -2.5, [("é", -2.5)], raw_bytes=None),
    ]
    tl = lp.from_openai(content)
    assert tl.tokens == [b"Hi", "é".encode()]
    assert tl.token_ids is None and tl.top_ids is None
    assert tl.top_tokens == [[b"Hi", b"Hello"], ["é".encode()]]
    assert tl.top_logprobs.shape == (2, 2)
    assert tl.top_logprobs[0, 1] == -np.inf  # the -9999 sentinel
    assert tl.top_logprobs[1, 1] == -np.inf  # padding of a shorter row
    assert tl.logprobs.dtype == np.float32 and tl.top_logprobs.dtype == np.float32


def test_bytes_field_wins_over_token_text_for_partial_utf8():
    # A multi-byte character split over two tokens: the text is a replacement char, the
    # bytes are the truth.
    content = [
        _entry("\ufffd", -1.0, raw_bytes=[0xF0, 0x9F]),
        _entry("\ufffd", -1.0, raw_bytes=[0x99, 0x82]),
    ]
    tl = lp.from_openai(content)
    assert b"".join(tl.tokens).decode() == "🙂"


def test_vllm_token_id_strings_become_ids():
    content = [
        {
            "token": "token_id:5",
            "bytes": list(b"token_id:5"),
            "logprob": -0.5,
            "top_logprobs": [
                {"token": "token_id:5", "logprob": -0.5},
                {"token": "token_id:9", "logprob": -1.5},
            ],
        }
    ]
    tl = lp.from_openai(content)
    assert tl.token_ids == [5]
    assert tl.top_ids.tolist() == [[5, 9]]
    assert tl.tokens == [b""]


def test_encode_decode_round_trip_keeps_everything_within_fp16():
    rng = np.random.default_rng(0)
    t, k = 50, 5
    tokens = [f" w{i % 17}".encode() for i in range(t)]
    top_tokens = [
        [f" w{(i + j) % 23}".encode() for j in range(k if i % 3 else k - 2)] for i in range(t)
    ]
    top_lps = [sorted(rng.uniform(-8, 0, len(row)).tolist(), reverse=True) for row in top_tokens]
    top_ids = [[(i + j) % 23 for j in range(len(row))] for i, row in enumerate(top_tokens)]
    tl = lp.make(
        tokens,
        rng.uniform(-5, 0, t),
        top_tokens,
        top_lps,
        token_ids=list(range(t)),
        top_ids=top_ids,
    )
    back = lp.decode(lp.encode(tl))
    assert back.tokens == tl.tokens and back.top_tokens == tl.top_tokens
    assert back.token_ids == tl.token_ids
    assert np.array_equal(back.top_ids, tl.top_ids)
    assert np.allclose(back.logprobs, tl.logprobs, atol=5e-3)
    finite = np.isfinite(tl.top_logprobs)
    assert np.array_equal(np.isfinite(back.top_logprobs), finite)
    assert np.allclose(back.top_logprobs[finite], tl.top_logprobs[finite], atol=5e-3)


def test_encoding_costs_about_six_bytes_per_candidate():
    t, k = 1000, 20
    vocab = [f"t{i}".encode() for i in range(500)]
    top_tokens = [[vocab[(i * 7 + j) % 500] for j in range(k)] for i in range(t)]
    tl = lp.make(
        [row[0] for row in top_tokens],
        np.full(t, -0.5),
        top_tokens,
        [list(np.linspace(-0.5, -9, k)) for _ in range(t)],
        token_ids=list(range(t)),
        top_ids=[[(i * 7 + j) % 500 for j in range(k)] for i in range(t)],
    )
    per_candidate = len(lp.encode(tl)) / (t * (k + 1))
    # ids int32 + fp16 logprob = 6 bytes, plus a 2-byte string index and the string table
    assert per_candidate < 9.0


def test_wide_string_tables_use_32_bit_indexes():
    n = 70_000
    tl = lp.make(
        [f"s{i}".encode() for i in range(n)],
        np.zeros(n),
        [[] for _ in range(n)],
        [[] for _ in range(n)],
    )
    back = lp.decode(lp.encode(tl))
    assert back.tokens[-1] == f"s{n - 1}".encode() and len(back) == n


def test_empty_and_text_only_answers_round_trip():
    empty = lp.from_openai([])
    assert len(lp.decode(lp.encode(empty))) == 0
    no_top = lp.from_openai([_entry("a", -1.0)])
    back = lp.decode(lp.encode(no_top))
    assert back.k == 0 and back.tokens == [b"a"]


def test_decode_rejects_a_truncated_blob():
    blob = lp.encode(lp.from_openai([_entry("a", -1.0, [("a", -1.0), ("b", -2.0)])]))
    with pytest.raises(ValueError, match="truncated"):
        lp.decode(blob[:-3])
    with pytest.raises(ValueError):
        lp.decode(b"nope" + blob[4:])


def test_confidence_is_the_geometric_mean_probability_of_the_sampled_tokens():
    tl = lp.from_openai([_entry("a", math.log(0.5)), _entry("b", math.log(0.125))])
    assert tl.confidence() == pytest.approx(0.25, rel=1e-5)
