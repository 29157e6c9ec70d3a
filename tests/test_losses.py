"""Distillation losses against independent references, hand-made cases and gradcheck; the
production chunk engine (kdstudio.distill.fused_head) against the unchunked references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_support import single_thread

from kdstudio.distill import losses as L
from kdstudio.distill.fused_head import fused_head_loss

NAMES = sorted(L.DIVERGENCES)
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()  # tiny tensors: intra-op threads only add overhead


def _logits(*shape: int, seed: int = 0, scale: float = 2.0, dtype=F64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=F64) * scale).to(dtype)


def _mask(*shape: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=gen) > 0.35
    mask.view(-1)[0] = True
    mask.view(-1)[-1] = False
    return mask


# --------------------------------------------------------------------------- references


def _np_softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def _np_kl(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum(ai * math.log(ai / bi) for ai, bi in zip(a, b, strict=True) if ai > 0))


def _np_divergence(name: str, p: np.ndarray, q: np.ndarray, mix: float) -> float:
    """Textbook definitions, one position at a time, p = teacher, q = student."""
    if name == "fkl":
        return _np_kl(p, q)
    if name == "rkl":
        return _np_kl(q, p)
    if name == "jsd":
        m = mix * p + (1 - mix) * q
        return mix * _np_kl(p, m) + (1 - mix) * _np_kl(q, m)
    if name == "skl":
        return _np_kl(p, mix * p + (1 - mix) * q)
    if name == "srkl":
        return _np_kl(q, mix * q + (1 - mix) * p)
    return 0.5 * float(np.abs(p - q).sum())


def _options(name: str, mix: float) -> dict:
    return {"jsd": {"beta": mix}, "skl": {"alpha": mix}, "srkl": {"alpha": mix}}.get(name, {})


def _reference_mean(name, student, teacher, mask, temperature=1.0, mix=0.3) -> float:
    s = student.detach().numpy().reshape(-1, student.shape[-1]) / temperature
    t = teacher.detach().numpy().reshape(-1, teacher.shape[-1]) / temperature
    keep = mask.numpy().reshape(-1)
    values = [
        _np_divergence(name, _np_softmax(t[i]), _np_softmax(s[i]), mix)
        for i in range(len(keep))
        if keep[i]
    ]
    return sum(values) / len(values)


def _np_sparse_kl(student_row, ids, logprobs, tail: bool) -> float:
    """Sparse KL by hand: distinct valid candidates (first wins), plus a tail bucket."""
    q = _np_softmax(student_row)
    support: dict[int, float] = {}
    for i, lp in zip(ids, logprobs, strict=True):
        if i >= 0 and lp > -9999 and i not in support:
            support[int(i)] = math.exp(lp)
    p = np.array(list(support.values()))
    qk = np.array([q[i] for i in support])
    if not tail:
        return _np_kl(p / p.sum(), qk / qk.sum())
    p_tail, q_tail = 1 - p.sum(), 1 - qk.sum()
    return _np_kl(np.append(p, p_tail), np.append(qk, q_tail))


def _engine(per_token, x, *teacher, mask=None, weight=None, bias=None, chunk_size=1024, **options):
    """Masked mean of a per-token loss computed by the trainer's engine (`fused_head_loss`):
    the rows of `x [..., D]` where `mask` holds (logits, or hidden states when a head `weight
    [V, D]` is given), `chunk_size` rows at a time; teacher tensors share x's leading shape."""
    leading = x.shape[:-1]
    keep = torch.ones(leading, dtype=torch.bool) if mask is None else mask
    rows = keep.reshape(-1).nonzero().squeeze(-1)
    flat = x.reshape(-1, x.shape[-1]).index_select(0, rows)
    picked = [t.reshape(leading.numel(), *t.shape[len(leading) :]) for t in teacher]
    picked = [t.index_select(0, rows) for t in picked]

    def chunk_loss(logits, r):
        return per_token(logits, *(t[r] for t in picked), **options).sum(), torch.zeros(0)

    total, _ = fused_head_loss(chunk_loss, flat, weight, bias, chunk_size=chunk_size)
    return total / max(rows.numel(), 1)


def _sparse_case(n: int = 6, vocab: int = 9, k: int = 4, seed: int = 0):
    """Student logits [n, V]; teacher top-k ids [n, K] and logprobs from a full distribution."""
    gen = torch.Generator().manual_seed(seed)
    student = _logits(n, vocab, seed=seed)
    teacher_lp = torch.log_softmax(_logits(n, vocab, seed=seed + 1), -1)
    ids = torch.stack([torch.randperm(vocab, generator=gen)[:k] for _ in range(n)])
    return student, ids, teacher_lp.gather(-1, ids)


# --------------------------------------------------------------------------- dense divergences


@pytest.mark.parametrize("name", NAMES)
def test_divergence_matches_float64_reference_with_mask_and_temperature(name):
    student, teacher, mask = _logits(2, 4, 7), _logits(2, 4, 7, seed=5), _mask(2, 4)
    got = L.divergence(name, student, teacher, mask, temperature=1.5, **_options(name, 0.3))
    want = _reference_mean(name, student, teacher, mask, temperature=1.5, mix=0.3)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_forward_kl_matches_torch_kl_div():
    student, teacher = _logits(3, 5, 11), _logits(3, 5, 11, seed=3)
    want = F.kl_div(
        torch.log_softmax(student, -1),
        torch.log_softmax(teacher, -1),
        log_target=True,
        reduction="sum",
    ) / (3 * 5)
    assert L.forward_kl(student, teacher).item() == pytest.approx(want.item(), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_identical_distributions_give_zero(name):
    logits = _logits(4, 13, dtype=torch.float32)
    assert L.divergence(name, logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_two_token_case_matches_hand_computed_values():
    teacher = torch.tensor([[math.log(3.0), 0.0]], dtype=F64)  # p = (3/4, 1/4)
    student = torch.zeros(1, 2, dtype=F64)  # q = (1/2, 1/2)
    ln = math.log
    m = (0.625, 0.375)  # beta = 1/2
    want = {
        "fkl": 0.75 * ln(1.5) + 0.25 * ln(0.5),
        "rkl": 0.5 * ln(0.5 / 0.75) + 0.5 * ln(2.0),
        "jsd": 0.5 * (0.75 * ln(0.75 / m[0]) + 0.25 * ln(0.25 / m[1]))
        + 0.5 * (0.5 * ln(0.5 / m[0]) + 0.5 * ln(0.5 / m[1])),
        "tvd": 0.25,
    }
    for name, value in want.items():
        got = L.divergence(name, student, teacher, **_options(name, 0.5))
        assert got.item() == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64_for_student_and_teacher(name):
    student = _logits(2, 3, 5).requires_grad_()
    teacher = _logits(2, 3, 5, seed=7).requires_grad_()
    mask = _mask(2, 3)
    options = _options(name, 0.3)

    def loss(s, t):
        return L.divergence(name, s, t, mask, temperature=1.3, **options)

    assert torch.autograd.gradcheck(loss, (student, teacher))


@pytest.mark.parametrize("name", NAMES)
def test_masked_out_positions_change_nothing_and_get_no_gradient(name):
    student = _logits(2, 4, 6).requires_grad_()
    teacher, mask = _logits(2, 4, 6, seed=2), _mask(2, 4)
    value = L.divergence(name, student, teacher, mask)
    (grad,) = torch.autograd.grad(value, student)
    assert (grad[~mask] == 0).all()
    assert grad[mask].abs().sum() > 0
    scrambled = student.detach().clone()
    scrambled[~mask] = 40.0 * _logits(int((~mask).sum()), 6, seed=9)
    assert L.divergence(name, scrambled, teacher, mask).item() == value.item()
    kept = L.divergence(name, student[mask], teacher[mask])
    assert value.item() == pytest.approx(kept.item(), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_temperature_divides_both_logits(name):
    student, teacher = _logits(3, 8), _logits(3, 8, seed=4)
    scaled = L.divergence(name, student, teacher, temperature=2.5)
    by_hand = L.divergence(name, student / 2.5, teacher / 2.5)
    assert scaled.item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_jsd_beta_endpoints_are_forward_and_reverse_kl_exactly():
    student, teacher = _logits(3, 9), _logits(3, 9, seed=8)
    assert L.generalized_jsd(student, teacher, beta=0.0) == L.forward_kl(student, teacher)
    assert L.generalized_jsd(student, teacher, beta=1.0) == L.reverse_kl(student, teacher)


def test_jsd_formula_itself_tends_to_zero_near_both_endpoints():
    student, teacher = _logits(3, 9), _logits(3, 9, seed=8)
    for beta in (1e-7, 1 - 1e-7):
        assert L.generalized_jsd(student, teacher, beta=beta).item() < 1e-6


def test_skew_kls_with_alpha_zero_are_plain_kls_and_alpha_one_is_zero():
    student, teacher = _logits(3, 9), _logits(3, 9, seed=8)
    assert L.skew_kl(student, teacher, alpha=0.0) == L.forward_kl(student, teacher)
    assert L.skew_reverse_kl(student, teacher, alpha=0.0) == L.reverse_kl(student, teacher)
    assert L.skew_kl(student, teacher, alpha=1.0).item() == 0.0


def test_bf16_jsd_is_finite_and_non_negative_with_finite_gradient():
    base = _logits(64, 300, dtype=torch.float32)
    student = (base + 1e-3 * _logits(64, 300, seed=3, dtype=torch.float32)).bfloat16()
    student.requires_grad_()
    per_token = L.generalized_jsd_per_token(student, base.bfloat16())
    assert torch.isfinite(per_token).all() and (per_token >= 0).all()
    (grad,) = torch.autograd.grad(per_token.mean(), student)
    assert torch.isfinite(grad.float()).all()


def test_empty_mask_gives_zero_with_a_zero_gradient_not_nan():
    student, teacher = _logits(2, 3, 5).requires_grad_(), _logits(2, 3, 5, seed=1)
    hidden, weight = _logits(2, 3, 4).requires_grad_(), _logits(5, 4).requires_grad_()
    none = torch.zeros(2, 3, dtype=torch.bool)
    ids, lps = torch.zeros(2, 3, 2, dtype=torch.long), torch.full((2, 3, 2), -1.0, dtype=F64)
    values = [L.divergence(name, student, teacher, none) for name in NAMES]
    values += [
        L.sparse_topk_kl(student, ids, lps, none),
        _engine(L.forward_kl_per_token, student, teacher, mask=none),
        _engine(L.generalized_jsd_per_token, hidden, teacher, mask=none, weight=weight),
        L.masked_ce(student, torch.full((2, 3), -100)),
    ]
    for value in values:
        assert value.item() == 0.0
        grads = torch.autograd.grad(value, [student, hidden, weight], allow_unused=True)
        assert all(g is None or (g == 0).all() for g in grads)


def test_reduction_sum_lets_the_trainer_normalise_over_an_accumulation_window():
    student, teacher, mask = _logits(4, 3, 6), _logits(4, 3, 6, seed=1), _mask(4, 3)
    halves = [
        L.forward_kl(student[i : i + 2], teacher[i : i + 2], mask[i : i + 2], reduction="sum")
        for i in (0, 2)
    ]
    window = (halves[0] + halves[1]) / mask.sum()
    assert window.item() == pytest.approx(L.forward_kl(student, teacher, mask).item(), rel=1e-12)


def test_kd_total_mixes_ce_and_tau_squared_kd():
    ce, kd = torch.tensor(2.0), torch.tensor(0.5)
    assert L.kd_total(ce, kd, kd_weight=0.25, temperature=2.0).item() == 0.75 * 2.0 + 0.25 * 4 * 0.5
    with pytest.raises(ValueError, match="kd_weight"):
        L.kd_total(ce, kd, kd_weight=1.5, temperature=1.0)


def test_unknown_divergence_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="fkl, jsd, rkl, skl, srkl, tvd"):
        L.divergence("kl", _logits(2, 3), _logits(2, 3))


def test_mask_must_be_bool_with_the_leading_shape_and_vocab_sizes_must_match():
    student, teacher = _logits(2, 3, 5), _logits(2, 3, 5)
    with pytest.raises(ValueError, match="bool"):
        L.forward_kl(student, teacher, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="leading shape"):
        L.forward_kl(student, teacher, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="truncated"):
        L.forward_kl(student, _logits(2, 3, 6))


# --------------------------------------------------------------------------- sparse top-k


@pytest.mark.parametrize("tail", [True, False])
def test_sparse_topk_kl_matches_hand_computed_reference(tail):
    student, ids, lps = _sparse_case()
    got = L.sparse_topk_kl_per_token(student, ids, lps, tail=tail)
    for i in range(len(ids)):
        want = _np_sparse_kl(student[i].numpy(), ids[i].tolist(), lps[i].tolist(), tail)
        assert got[i].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("tail", [True, False])
def test_sparse_topk_kl_with_full_support_equals_forward_kl(tail):
    student, teacher = _logits(5, 8), _logits(5, 8, seed=6)
    ids = torch.stack(
        [torch.randperm(8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    )
    lps = torch.log_softmax(teacher, -1).gather(-1, ids)
    got = L.sparse_topk_kl(student, ids, lps, tail=tail)
    assert got.item() == pytest.approx(L.forward_kl(student, teacher).item(), rel=1e-9)


@pytest.mark.parametrize("tail", [True, False])
def test_sparse_gradcheck_float64_with_padding_duplicates_and_absent_candidates(tail):
    student, ids, lps = _sparse_case(n=4, vocab=7, k=4)
    ids[0, 1], ids[1, 2], ids[2, 3] = -1, ids[1, 0], 5
    lps[3, 0] = -1e4  # absent (<= -9999), clear of the threshold for finite differences
    lps = lps.clone().requires_grad_()
    mask = torch.tensor([True, True, False, True])

    def loss(s, t):
        return L.sparse_topk_kl(s, ids, t, mask, tail=tail, temperature=1.0 if tail else 1.7)

    assert torch.autograd.gradcheck(loss, (student.requires_grad_(), lps))


def test_sparse_ignores_padding_absent_and_repeated_candidates():
    student, ids, lps = _sparse_case(n=3, vocab=9, k=3)
    pad_ids = torch.cat([ids, torch.tensor([[-1, -1], [ids[1, 0], 7], [2, 3]])], -1)
    absent = torch.tensor([[-0.1, -2.0], [lps[1, 0], -9999.0], [-math.inf, -1e5]], dtype=F64)
    pad_lps = torch.cat([lps, absent], -1)
    for tail in (True, False):
        clean = L.sparse_topk_kl_per_token(student, ids, lps, tail=tail)
        padded = L.sparse_topk_kl_per_token(student, pad_ids, pad_lps, tail=tail)
        torch.testing.assert_close(padded, clean, rtol=1e-12, atol=0)


def test_sparse_with_top_k_mass_near_one_has_no_nan_in_value_or_gradient():
    student = _logits(4, 50, dtype=torch.float32).requires_grad_()
    ids = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])
    # top-k mass 1 - 1e-9, 1 + 4e-8, 1.003 (as after fp16 storage) and 1 + 4e-18.
    lps = torch.tensor(
        [
            [math.log(0.5), math.log(0.5 - 1e-9)],
            [math.log(0.6), math.log(0.4) + 1e-7],
            [-0.69, -0.69],
            [0.0, -40.0],
        ]
    )
    for stored in (lps, lps.half()):
        value = L.sparse_topk_kl_per_token(student, ids, stored)
        (grad,) = torch.autograd.grad(value.sum(), student)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # With no teacher tail, the tail bucket only adds -log(student mass on the support).
    value = L.sparse_topk_kl_per_token(student, ids, lps)
    tailless = L.sparse_topk_kl_per_token(student, ids, lps, tail=False)
    student_mass = torch.softmax(student.detach(), -1).gather(-1, ids).sum(-1)
    torch.testing.assert_close(value, tailless - torch.log(student_mass), rtol=1e-5, atol=1e-5)


def test_sparse_rejects_tail_with_temperature_and_ids_outside_the_vocab():
    student, ids, lps = _sparse_case()
    with pytest.raises(ValueError, match="tail=False"):
        L.sparse_topk_kl(student, ids, lps, temperature=2.0)
    with pytest.raises(ValueError, match="outside the student vocabulary"):
        L.sparse_topk_kl(student, ids + 9, lps)


# --------------------------------------------------------------------------- chunking
# The trainer's engine (fused_head_loss) over chunks of masked-in rows, against the losses
# computed unchunked on full logits.

CHUNKED_CASES = [
    pytest.param(L.PER_TOKEN[name], L.DIVERGENCES[name], _options(name, 0.3), id=name)
    for name in NAMES
] + [
    pytest.param(L.sparse_topk_kl_per_token, L.sparse_topk_kl, {"tail": True}, id="sparse-tail"),
    pytest.param(
        L.sparse_topk_kl_per_token,
        L.sparse_topk_kl,
        {"tail": False, "temperature": 1.4},
        id="sparse-renormalised",
    ),
]


def _teacher_for(full_fn, shape, seed=3):
    if full_fn is L.sparse_topk_kl:
        _, ids, lps = _sparse_case(n=shape[0] * shape[1], vocab=shape[2], k=3, seed=seed)
        return ids.reshape(*shape[:2], 3), lps.reshape(*shape[:2], 3)
    return (_logits(*shape, seed=seed),)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
@pytest.mark.parametrize(("per_token", "full_fn", "options"), CHUNKED_CASES)
def test_chunked_equals_unchunked_in_value_and_gradient(per_token, full_fn, options, chunk_size):
    student = _logits(3, 5, 9).requires_grad_()
    teacher, mask = _teacher_for(full_fn, (3, 5, 9)), _mask(3, 5)
    full = full_fn(student, *teacher, mask, **options)
    part = _engine(per_token, student, *teacher, mask=mask, chunk_size=chunk_size, **options)
    assert part.item() == pytest.approx(full.item(), rel=1e-12)
    grad_full, grad_part = (torch.autograd.grad(v, student)[0] for v in (full, part))
    torch.testing.assert_close(grad_part, grad_full, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("chunk_size", [1, 5, 6, 100])
@pytest.mark.parametrize("masked", [True, False])
def test_fused_lm_head_equals_full_logits_in_value_and_gradient(chunk_size, masked):
    hidden = _logits(2, 6, 4).requires_grad_()
    weight, bias = _logits(11, 4, seed=1).requires_grad_(), _logits(11, seed=2).requires_grad_()
    teacher = _logits(2, 6, 11, seed=3)
    mask = _mask(2, 6) if masked else None
    full = L.skew_kl(F.linear(hidden, weight, bias), teacher, mask)
    fused = _engine(
        L.skew_kl_per_token,
        hidden,
        teacher,
        mask=mask,
        weight=weight,
        bias=bias,
        chunk_size=chunk_size,
    )
    assert fused.item() == pytest.approx(full.item(), rel=1e-12)
    for a, b in zip(
        torch.autograd.grad(fused, [hidden, weight, bias]),
        torch.autograd.grad(full, [hidden, weight, bias]),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_fused_gradcheck_float64_through_the_chunks():
    hidden, weight = _logits(5, 3).requires_grad_(), _logits(7, 3, seed=1).requires_grad_()
    teacher, mask = _logits(5, 7, seed=2), torch.tensor([True, False, True, True, True])

    def loss(h, w):
        return _engine(L.forward_kl_per_token, h, teacher, mask=mask, weight=w, chunk_size=2)

    assert torch.autograd.gradcheck(loss, (hidden, weight))


def test_chunked_cross_entropy_equals_masked_ce():
    student, labels = _logits(2, 5, 7).requires_grad_(), torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    full = L.masked_ce(student, labels)
    part = _engine(L.cross_entropy, student, labels, mask=labels != -100, chunk_size=3)
    assert part.item() == pytest.approx(full.item(), rel=1e-12)


# --------------------------------------------------------------------------- cross-entropy


def test_masked_ce_matches_cross_entropy_over_non_ignored_labels():
    student, labels = _logits(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[1, 3:] = -100
    want = F.cross_entropy(student.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    assert L.masked_ce(student, labels).item() == pytest.approx(want.item(), rel=1e-12)
    total = L.masked_ce(student, labels, reduction="sum")
    assert total.item() == pytest.approx(want.item() * 8, rel=1e-12)
    summed = L.cross_entropy(student, labels, reduction="sum")  # the trainer's form
    assert summed.item() == pytest.approx(want.item() * 8, rel=1e-12)


# --------------------------------------------------------------------------- bucketed, ULD


def test_bucketed_forward_kl_is_sparse_kl_with_its_tail_and_every_divergence_is_a_proper_one():
    student, ids, lps = _sparse_case(n=4, vocab=9, k=3)
    got = L.sparse_divergence_per_token(student, ids, lps, divergence="fkl")
    want = L.sparse_topk_kl_per_token(student, ids, lps, tail=True)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for name in NAMES:
        value = L.sparse_divergence_per_token(student, ids, lps, divergence=name)
        assert (value >= 0).all() and torch.isfinite(value).all()
    # identical buckets: no divergence
    same = torch.log_softmax(student, -1).gather(-1, ids)
    for name in NAMES:
        zero = L.sparse_divergence_per_token(student, ids, same, divergence=name)
        assert zero.abs().max().item() < 1e-9
    with pytest.raises(ValueError, match="temperature 1"):
        L.sparse_divergence_per_token(student, ids, lps, temperature=2.0)


def test_uld_is_the_l1_distance_of_sorted_probabilities_and_the_rest():
    student = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=F64))
    teacher = torch.log(torch.tensor([[0.6, 0.25, -1.0]], dtype=F64).clamp_min(1e-300))
    teacher[0, 2] = -math.inf  # two candidates known
    got = L.uld_topk_per_token(student, teacher).item()
    # sorted: |0.6-0.5| + |0.25-0.3| + rest |0.15 - 0.2|
    assert got == pytest.approx(0.1 + 0.05 + 0.05, rel=1e-9)
    # ranks only: a permutation of the student's vocabulary changes nothing
    shuffled = student[:, [3, 1, 0, 2]]
    assert L.uld_topk_per_token(shuffled, teacher).item() == pytest.approx(got, rel=1e-12)
