"""Text metrics of the evaluation, against hand-computed values (no models)."""

from __future__ import annotations

import random

import pytest

from kdstudio.errors import ConfigError
from kdstudio.evaluate import (
    EvalConfig,
    EvalItem,
    exact_match,
    lcs_length,
    normalize_text,
    rouge_l,
    summarize,
    text_scores,
    token_f1,
    words,
)


def lcs_dp(a, b) -> int:
    """Textbook O(n*m) dynamic programme, the reference for the bit-parallel version."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_normalize_lowercases_drops_punctuation_and_collapses_spaces():
    assert normalize_text("  The Answer,  is: 5!\n") == "the answer is 5"
    assert normalize_text("ＡＢＣ") == "abc"  # NFKC folds full-width letters
    assert words("Don't stop.") == ["dont", "stop"]
    assert words("我爱你") == ["我", "爱", "你"]  # CJK characters are words of their own


def test_exact_match_ignores_case_punctuation_and_spacing_only():
    assert exact_match("The answer is 5.", "the answer is 5") == 1.0
    assert exact_match("The answer is 5.", "The answer is 6.") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_counts_overlap_with_multiplicity():
    # 6 words each, overlap {the: 2, cat, on, mat} = 5 -> P = R = 5/6
    assert token_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # "a a a" vs "a": overlap 1, P = 1/3, R = 1 -> F1 = 2 * (1/3) / (4/3) = 0.5
    assert token_f1("a a a", "a") == pytest.approx(0.5)
    # order does not matter to F1
    assert token_f1("mat the on sat cat the", "the cat sat on the mat") == 1.0
    assert token_f1("x y", "z") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "something") == 0.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("ABCBDAB", "BDCABA", 4),  # CLRS: BCBA
        ("AGGTAB", "GXTXAYB", 4),  # GTAB
        ("abc", "abc", 3),
        ("abc", "def", 0),
        ("", "abc", 0),
        ("aaaa", "aa", 2),
    ],
)
def test_lcs_length_of_textbook_cases(a, b, expected):
    assert lcs_length(list(a), list(b)) == expected
    assert lcs_length(list(b), list(a)) == expected


def test_lcs_bit_parallel_equals_dynamic_programme_on_random_sequences():
    rng = random.Random(7)
    for _ in range(200):
        alphabet = rng.choice(["ab", "abc", "abcdefgh"])
        a = [rng.choice(alphabet) for _ in range(rng.randint(0, 150))]  # past 64 bits
        b = [rng.choice(alphabet) for _ in range(rng.randint(0, 150))]
        assert lcs_length(a, b) == lcs_dp(a, b)


def test_rouge_l_of_hand_computed_examples():
    # Lin (2004): LCS("police killed the gunman", "police kill the gunman") = 3 of 4 words
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    # "the gunman kill police": LCS = "the gunman" = 2 -> P = R = 1/2
    assert rouge_l("the gunman kill police", "police killed the gunman") == pytest.approx(0.5)
    # a subsequence: LCS 3, P = 3/3, R = 3/5 -> F = 2 * 0.6 / 1.6 = 0.75
    assert rouge_l("a c e", "a b c d e") == pytest.approx(0.75)
    # unlike F1, order matters: same bag of words, LCS 1 of 3
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert rouge_l("我爱你", "我爱他") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 1.0
    assert rouge_l("anything", "") == 0.0


def test_the_reference_scores_one_against_itself():
    text = "The answer is 5, because 2 + 3 = 5."
    assert text_scores(text, text) == {"exact_match": 1.0, "f1": 1.0, "rouge_l": 1.0}


def _item(idx, n_tokens, before, after):
    return EvalItem(
        idx=idx,
        row_id=idx,
        prompt="p",
        teacher="t",
        student_before="b",
        student_after="a",
        metrics={
            "n_tokens": n_tokens,
            "truncated": False,
            "before": {"loglik": before, "exact_match": 0.0, "f1": 0.5, "rouge_l": 0.25},
            "after": {"loglik": after, "exact_match": 1.0, "f1": 1.0, "rouge_l": 0.75},
        },
    )


def test_summary_pools_loglik_over_tokens_and_averages_text_metrics_over_prompts():
    items = [_item(0, 2, -4.0, -1.0), _item(1, 6, -2.0, -0.5)]
    s = summarize(items)
    # pooled: (2 * -4 + 6 * -2) / 8 = -2.5 ; (2 * -1 + 6 * -0.5) / 8 = -0.625
    assert s["metrics"]["loglik"]["before"] == -2.5
    assert s["metrics"]["loglik"]["after"] == -0.625
    assert s["metrics"]["loglik"]["teacher"] is None
    # gap closed: (0.75 - 0.25) / (1 - 0.25) = 2/3 of the way to the teacher
    assert s["metrics"]["rouge_l"] == {
        "before": 0.25,
        "after": 0.75,
        "teacher": 1.0,
        "gap_closed": pytest.approx(2 / 3),
    }
    assert s["metrics"]["loglik"]["gap_closed"] is None
    assert s["metrics"]["exact_match"]["teacher"] == 1.0
    assert s["n"] == 2 and s["n_tokens"] == 8
    assert "reference" in s["note"] and "1 by definition" in s["note"]


def test_summary_of_nothing_has_no_figures():
    s = summarize([])
    assert s["n"] == 0
    assert all(v is None for row in s["metrics"].values() for v in row.values())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"checkpoint": "latest"}, "eval.checkpoint"),
        ({"limit": 0}, "eval.limit"),
        ({"batch_size": 0}, "eval.batch_size"),
        ({"device": "tpu"}, "eval.device"),
    ],
)
def test_eval_config_names_the_bad_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        EvalConfig(run="demo", **kwargs)


def test_eval_config_accepts_a_step_number():
    assert EvalConfig(run="demo", checkpoint=" 120 ").checkpoint == "120"
