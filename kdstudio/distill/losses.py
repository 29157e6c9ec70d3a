"""Distillation losses: small pure functions over student and teacher logits.

Conventions shared by every function here:

- ``p`` is the teacher's distribution, ``q`` the student's. Logits are ``[..., V]``
  (typically ``[B, T, V]`` or ``[N, V]``); a mask is bool ``[...]`` with the same leading
  shape, True where the position counts (completion tokens), or None for all positions.
- Softmax and log-softmax run in float32 (float64 inputs stay float64, so gradcheck works);
  bf16/fp16 inputs are upcast per call, never kept upcast for longer than the call.
- Each loss comes as ``<name>_per_token`` returning ``[...]`` per-position values, and as a
  wrapper returning the mean over masked-in positions (``reduction="sum"`` gives the sum,
  for normalising by the token count of a whole gradient-accumulation window). With no
  position masked in, the result is 0 and still carries a (zero) gradient, never NaN.
- ``temperature`` divides both logits before the softmax. The ``tau**2`` factor is NOT
  applied here; the KD objectives combine the terms as :func:`kd_total` writes them.
- Logits are assumed finite (-inf logits would give ``0 * inf`` terms).

Production sums these per-token losses over chunks of positions with the LM head fused in
(`kdstudio.distill.fused_head`, called by the objectives); the masked-mean wrappers, the
divergence table and :func:`kd_total` are the plain references the tests hold it to.
:func:`cross_entropy` is the one cross-entropy of the code base (training, evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ABSENT_LOGPROB",
    "DIVERGENCES",
    "PER_TOKEN",
    "cross_entropy",
    "divergence",
    "forward_kl",
    "forward_kl_per_token",
    "generalized_jsd",
    "generalized_jsd_per_token",
    "kd_total",
    "masked_ce",
    "masked_reduce",
    "reverse_kl",
    "reverse_kl_per_token",
    "rowdot",
    "skew_kl",
    "skew_kl_per_token",
    "skew_reverse_kl",
    "skew_reverse_kl_per_token",
    "sparse_divergence_per_token",
    "sparse_topk_kl",
    "sparse_topk_kl_per_token",
    "total_variation",
    "total_variation_per_token",
    "uld_topk_per_token",
]

#: Teacher logprobs at or below this mean "not in the top-k" (OpenAI sends -9999.0).
ABSENT_LOGPROB = -9999.0

PerTokenLoss = Callable[..., Tensor]


# --------------------------------------------------------------------------- helpers


def _fp32(x: Tensor) -> Tensor:
    """``x`` as float32, or unchanged if it is float64 (keeps gradcheck exact)."""
    return x if x.dtype == torch.float64 else x.float()


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """fp32 ``logits / temperature`` (no copy for fp32 logits at temperature 1)."""
    x = _fp32(logits)
    return x if temperature == 1.0 else x / temperature


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """fp32 ``log_softmax(logits / temperature)`` over the last dim."""
    return torch.log_softmax(_scaled(logits, temperature), dim=-1)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` as a batched matmul, without the ``[..., V]`` product."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``KL(a || b) = sum a (log a - log b)`` over the last dim, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """``log(w a + (1 - w) b)`` via logaddexp; exact ``log_a``/``log_b`` at w = 1/0."""
    if weight_a == 1.0:
        return log_a
    if weight_a == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; same-family models with padded "
            "vocabularies must be truncated to the shared vocab size first"
        )
    _check_positive("temperature", temperature)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_mask(mask: Tensor, leading: torch.Size) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != leading:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits' leading shape {tuple(leading)}"
        )


def masked_reduce(values: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Mean (or sum) of per-position ``values [...]`` over ``mask [...]``.

    The mean divides by the number of masked-in positions; with none it is 0 (with grad).
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    _check_mask(mask, values.shape)
    total = values.masked_fill(~mask, 0.0).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


# --------------------------------------------------------------------------- dense divergences


def forward_kl_per_token(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """Forward KL ``KL(p || q) = sum p (log p - log q)`` per position.

    Shapes: logits ``[..., V]`` -> ``[...]``.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    p = log_p.exp()
    neg_entropy = rowdot(p, log_p)
    del log_p
    z = _scaled(student_logits, temperature)
    # sum p log q = p.z - logsumexp(z) because sum p = 1: no [..., V] log q, log p - log q
    # or product stays alive, which is the bulk of this default loss's memory.
    return (neg_entropy - rowdot(p, z) + torch.logsumexp(z, dim=-1)).clamp_min(0.0)


def reverse_kl_per_token(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """Reverse KL ``KL(q || p) = sum q (log q - log p)`` per position, directly in fp32.

    Shapes: logits ``[..., V]`` -> ``[...]``.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    return _kl(log_q, log_p).clamp_min(0.0)


def generalized_jsd_per_token(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Tensor:
    """Generalized JSD per position: ``beta KL(p || m) + (1 - beta) KL(q || m)``.

    ``m = beta p + (1 - beta) q``, ``log m`` via logaddexp. The formula tends to 0 at both
    ends, so ``beta = 0`` is defined as forward KL and ``beta = 1`` as reverse KL (as in GKD);
    values just inside (0, 1) are therefore small, not close to either KL.

    Shapes: logits ``[..., V]`` -> ``[...]``.
    """
    _check_unit("beta", beta)
    if beta == 0.0:
        return forward_kl_per_token(student_logits, teacher_logits, temperature=temperature)
    if beta == 1.0:
        return reverse_kl_per_token(student_logits, teacher_logits, temperature=temperature)
    _check_pair(student_logits, teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    log_m = _log_mixture(log_p, log_q, beta)
    jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return jsd.clamp_min(0.0)


def skew_kl_per_token(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 0.1,
) -> Tensor:
    """Skew KL ``KL(p || alpha p + (1 - alpha) q)`` per position (DistiLLM).

    ``alpha = 0`` is exactly forward KL. Shapes: logits ``[..., V]`` -> ``[...]``.
    """
    _check_unit("alpha", alpha)
    _check_pair(student_logits, teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    return _kl(log_p, _log_mixture(log_p, log_q, alpha)).clamp_min(0.0)


def skew_reverse_kl_per_token(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 0.1,
) -> Tensor:
    """Skew reverse KL ``KL(q || alpha q + (1 - alpha) p)`` per position (DistiLLM).

    ``alpha = 0`` is exactly reverse KL. Shapes: logits ``[..., V]`` -> ``[...]``.
    """
    _check_unit("alpha", alpha)
    _check_pair(student_logits, teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    return _kl(log_q, _log_mixture(log_q, log_p, alpha)).clamp_min(0.0)


def total_variation_per_token(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """Total variation distance ``0.5 sum |p - q|`` per position, in [0, 1].

    Shapes: logits ``[..., V]`` -> ``[...]``.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    q = _log_probs(student_logits, temperature).exp()
    p = _log_probs(teacher_logits, temperature).exp()
    return 0.5 * (p - q).abs().sum(-1)


def _masked_mean(per_token: PerTokenLoss, n_teacher: int = 1) -> Callable[..., Tensor]:
    """The masked-mean form of a per-token loss (see the module docstring):
    ``loss(student_logits, *teacher, mask=None, *, reduction="mean", **options)`` with
    ``n_teacher`` teacher tensors, the mask ``[...]`` after them (or as ``mask=``)."""

    def loss(
        student_logits: Tensor, *args: Tensor | None, reduction: str = "mean", **options: Any
    ) -> Tensor:
        if len(args) not in (n_teacher, n_teacher + 1):
            raise TypeError(f"{loss.__name__} takes {n_teacher} teacher tensor(s) and a mask")
        mask = args[n_teacher] if len(args) > n_teacher else options.pop("mask", None)
        values = per_token(student_logits, *args[:n_teacher], **options)
        return masked_reduce(values, mask, reduction)

    loss.__name__ = loss.__qualname__ = per_token.__name__.removesuffix("_per_token")
    loss.__doc__ = f"Masked mean (or sum) of :func:`{per_token.__name__}` over ``mask [...]``."
    return loss


forward_kl = _masked_mean(forward_kl_per_token)
reverse_kl = _masked_mean(reverse_kl_per_token)
generalized_jsd = _masked_mean(generalized_jsd_per_token)  # beta=0: forward KL, 1: reverse
skew_kl = _masked_mean(skew_kl_per_token)
skew_reverse_kl = _masked_mean(skew_reverse_kl_per_token)
total_variation = _masked_mean(total_variation_per_token)


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "jsd": generalized_jsd,
    "skl": skew_kl,
    "srkl": skew_reverse_kl,
    "tvd": total_variation,
}

PER_TOKEN: dict[str, PerTokenLoss] = {
    "fkl": forward_kl_per_token,
    "rkl": reverse_kl_per_token,
    "jsd": generalized_jsd_per_token,
    "skl": skew_kl_per_token,
    "srkl": skew_reverse_kl_per_token,
    "tvd": total_variation_per_token,
}


def _lookup(table: dict[str, PerTokenLoss], name: str) -> PerTokenLoss:
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(sorted(table))
        raise ValueError(f"unknown divergence {name!r}; valid names: {valid}") from None


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    **options: float | str,
) -> Tensor:
    """The masked-mean divergence ``DIVERGENCES[name]`` of student and teacher logits.

    E.g. ``divergence("jsd", s, t, mask, beta=0.5)``. An unknown name raises ValueError
    listing the valid ones.
    """
    return _lookup(DIVERGENCES, name)(student_logits, teacher_logits, mask, **options)


def kd_total(ce: Tensor, kd: Tensor, kd_weight: float, temperature: float) -> Tensor:
    """Trainer's objective ``(1 - w) CE + w tau^2 KD(tau)``.

    The ``tau^2`` keeps the KD gradient scale independent of the temperature (Hinton et al.).
    """
    _check_unit("kd_weight", kd_weight)
    _check_positive("temperature", temperature)
    return (1.0 - kd_weight) * ce + kd_weight * temperature**2 * kd


# --------------------------------------------------------------------------- sparse top-k


def _first_occurrences(ids: Tensor, valid: Tensor) -> Tensor:
    """``valid`` with every repeat of an id within the last dim switched off (first wins).

    Shapes: ``ids, valid [..., K]`` -> ``[..., K]``; costs ``[..., K, K]`` bools (K <= ~21).
    """
    k = ids.shape[-1]
    same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & valid.unsqueeze(-2)
    earlier = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril(-1)
    return valid & ~(same & earlier).any(-1)


def _masked_logsumexp(x: Tensor, valid: Tensor) -> Tensor:
    """logsumexp over the valid entries of the last dim; a huge negative number if none.

    A finite fill (not -inf) keeps the backward free of NaN for all-invalid rows.
    """
    fill = torch.finfo(x.dtype).min
    return torch.logsumexp(x.masked_fill(~valid, fill), dim=-1)


def _student_tail_log_mass(logits: Tensor, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Student log-probs on the support and log-mass of everything else, in fp32.

    Shapes: logits ``[N, V]``, ids/valid ``[N, K]`` -> ``([N, K], [N])``. The tail is a
    logsumexp over the non-support tokens (exact, unlike ``log(1 - sum q_k)``), floored
    at ``log(tiny)`` when the support covers the whole vocabulary.
    """
    z = _fp32(logits)
    vocab = z.shape[-1]
    fill = torch.finfo(z.dtype).min
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    support = z.gather(-1, ids.clamp_min(0)) - log_norm
    # One spare column takes the writes of padding ids, so they blank no real token.
    blanked = F.pad(z, (0, 1), value=fill).scatter_(-1, torch.where(valid, ids, vocab), fill)
    tail = torch.logsumexp(blanked, dim=-1) - log_norm.squeeze(-1)
    return support, tail.clamp_min(math.log(torch.finfo(z.dtype).tiny))


def _sparse_inputs(
    student_logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``(ids long, teacher logprobs fp32, valid)``, duplicates switched off."""
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs "
            f"{tuple(teacher_logprobs.shape)} must have the same shape"
        )
    if teacher_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher candidates {tuple(teacher_ids.shape)} must share the leading shape of "
            f"student logits {tuple(student_logits.shape)}"
        )
    if teacher_ids.is_floating_point():
        raise ValueError(f"teacher_ids must be an integer tensor, got {teacher_ids.dtype}")
    ids = teacher_ids.long()
    vocab = student_logits.shape[-1]
    if ids.numel() and int(ids.max()) >= vocab:
        raise ValueError(
            f"teacher id {int(ids.max())} is outside the student vocabulary ({vocab}); "
            "map unmappable candidates to -1"
        )
    logprobs = _fp32(teacher_logprobs)
    valid = (ids >= 0) & (logprobs > ABSENT_LOGPROB)  # also drops -inf and NaN
    return ids, logprobs, _first_occurrences(ids, valid)


def sparse_topk_kl_per_token(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    tail: bool = True,
    temperature: float = 1.0,
) -> Tensor:
    """KL(teacher || student) from the teacher's stored top-k logprobs, per position.

    Shapes: ``student_logits [..., V]``, ``teacher_ids`` integer ``[..., K]``,
    ``teacher_logprobs`` float ``[..., K]`` -> ``[...]``.

    Candidates with id ``-1`` (padding or unmappable) or logprob ``<= -9999`` / ``-inf``
    (absent) are ignored; a repeated id counts once (its first occurrence). With
    ``tail=True`` the support is the candidates plus one bucket holding the remaining mass,
    ``t_tail = log(-expm1(logsumexp(t_k)))`` (zero contribution when the top-k mass is ~1;
    a top-k mass above 1 from fp16 storage is renormalised to 1). With ``tail=False``
    teacher and student are both renormalised over the candidates.

    ``temperature`` scales the stored teacher logprobs and the student logits before the
    renormalisation, so it needs ``tail=False``: the teacher's full distribution at another
    temperature cannot be recovered from its top-k logprobs.
    """
    _check_positive("temperature", temperature)
    if tail and temperature != 1.0:
        raise ValueError(
            "sparse_topk_kl with tail=True needs temperature=1.0 (the teacher's tail mass at "
            "another temperature is unknown); use tail=False to distil at a temperature"
        )
    ids, t, valid = _sparse_inputs(student_logits, teacher_ids, teacher_logprobs)
    leading, k = ids.shape[:-1], ids.shape[-1]
    logits = student_logits.reshape(-1, student_logits.shape[-1])
    ids, t, valid = ids.reshape(-1, k), t.reshape(-1, k), valid.reshape(-1, k)
    if tail:
        values = _sparse_kl_with_tail(logits, ids, t, valid)
    else:
        values = _sparse_kl_renormalised(logits, ids, t, valid, temperature)
    return values.clamp_min(0.0).reshape(leading)


def _sparse_kl_with_tail(logits: Tensor, ids: Tensor, t: Tensor, valid: Tensor) -> Tensor:
    """Shapes: logits ``[N, V]``, ids/t/valid ``[N, K]`` -> ``[N]``."""
    s, s_tail = _student_tail_log_mass(logits, ids, valid)
    lse = _masked_logsumexp(t, valid)
    excess = lse.clamp_min(0.0)  # top-k mass > 1 (rounding): renormalise it to 1
    t = torch.where(valid, t - excess.unsqueeze(-1), 0.0)
    tail_mass = -torch.expm1(lse - excess)
    t_tail = torch.log(tail_mass.clamp_min(torch.finfo(t.dtype).tiny))
    support = torch.where(valid, t.exp() * (t - s), 0.0).sum(-1)
    return support + tail_mass * (t_tail - s_tail)


def _sparse_kl_renormalised(
    logits: Tensor, ids: Tensor, t: Tensor, valid: Tensor, temperature: float
) -> Tensor:
    """Shapes: logits ``[N, V]``, ids/t/valid ``[N, K]`` -> ``[N]``."""
    s = _fp32(logits.gather(-1, ids.clamp_min(0))) / temperature
    t = t / temperature
    s = s - _masked_logsumexp(s, valid).unsqueeze(-1)
    t = torch.where(valid, t - _masked_logsumexp(t, valid).unsqueeze(-1), 0.0)
    return torch.where(valid, t.exp() * (t - s), 0.0).sum(-1)


sparse_topk_kl = _masked_mean(sparse_topk_kl_per_token, n_teacher=2)  # ids, logprobs


def sparse_divergence_per_token(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    divergence: str = "fkl",
    **options: float,
) -> Tensor:
    """Any divergence of `PER_TOKEN` between teacher and student over the teacher's
    candidates plus one tail bucket, per position.

    Both distributions are coarsened the same way: one bucket per valid candidate id (as in
    :func:`sparse_topk_kl_per_token`) and one for everything else, so each bucketed pair is a
    pair of proper distributions and every divergence applies (forward KL gives exactly
    ``sparse_topk_kl_per_token(..., tail=True)``). Shapes: ``student_logits [..., V]``,
    ``teacher_ids`` integer ``[..., K]``, ``teacher_logprobs [..., K]`` -> ``[...]``. The
    teacher's mass is known at temperature 1 only, so ``options`` take no temperature.
    """
    if options.get("temperature", 1.0) != 1.0:
        raise ValueError("sparse_divergence_per_token needs temperature 1 (see its docstring)")
    options.pop("temperature", None)
    per_token = _lookup(PER_TOKEN, divergence)
    ids, t, valid = _sparse_inputs(student_logits, teacher_ids, teacher_logprobs)
    leading, k = ids.shape[:-1], ids.shape[-1]
    logits = student_logits.reshape(-1, student_logits.shape[-1])
    ids, t, valid = ids.reshape(-1, k), t.reshape(-1, k), valid.reshape(-1, k)
    s, s_tail = _student_tail_log_mass(logits, ids, valid)
    lse = _masked_logsumexp(t, valid)
    excess = lse.clamp_min(0.0)
    tail_mass = -torch.expm1(lse - excess)
    t_tail = torch.log(tail_mass.clamp_min(torch.finfo(t.dtype).tiny))
    # an empty bucket holds exp(-1e4) = 0 on both sides: finite, so no 0 * inf anywhere
    teacher = torch.cat([torch.where(valid, t - excess.unsqueeze(-1), -1e4), t_tail[:, None]], -1)
    student = torch.cat([torch.where(valid, s, -1e4), s_tail[:, None]], -1)
    return per_token(student, teacher, **options).reshape(leading)


def uld_topk_per_token(student_logits: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Universal Logit Distillation (Boizard et al. 2024) from a teacher's top-k, per position:
    the L1 distance between the teacher's and the student's probabilities sorted in
    descending order, over the teacher's n valid candidates and one bucket for the rest:

        sum_i<n |p_(i) - q_(i)| + |(1 - sum_i<n p_(i)) - (1 - sum_i<n q_(i))|

    It needs no shared vocabulary (only ranks are compared), so it is the signal of last
    resort between tokenizers that share no pieces. Shapes: ``student_logits [..., V]``,
    ``teacher_logprobs [..., K]`` (invalid: ``<= -9999`` or ``-inf``) -> ``[...]``.
    """
    t = _fp32(teacher_logprobs)
    valid = t > ABSENT_LOGPROB
    p = torch.where(valid, t, -math.inf).exp().sort(dim=-1, descending=True).values
    n = valid.sum(-1, keepdim=True)
    k = min(t.shape[-1], student_logits.shape[-1])
    q = torch.softmax(_fp32(student_logits), dim=-1).topk(k, dim=-1).values
    if k < t.shape[-1]:
        q = F.pad(q, (0, t.shape[-1] - k))
    ranked = torch.arange(t.shape[-1], device=t.device) < n
    p, q = torch.where(ranked, p, 0.0), torch.where(ranked, q, 0.0)
    tail = ((1.0 - p.sum(-1)).clamp_min(0.0) - (1.0 - q.sum(-1)).clamp_min(0.0)).abs()
    return (p - q).abs().sum(-1) + tail


# --------------------------------------------------------------------------- cross-entropy


def cross_entropy(
    student_logits: Tensor, labels: Tensor, *, ignore_index: int = -100, reduction: str = "none"
) -> Tensor:
    """fp32 cross-entropy, the one kdstudio computes: per position (``reduction="none"``, 0
    where ``labels == ignore_index``) or summed over positions (``"sum"``).

    Shapes: ``student_logits [..., V]``, ``labels`` long ``[...]`` (already shifted so that
    ``labels[..., i]`` is the target of ``student_logits[..., i, :]``) -> ``[...]`` or scalar.
    The sum is torch's own reduction, so normalising it by the token count of a whole
    gradient-accumulation window gives that window's mean.
    """
    logits = _fp32(student_logits)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return flat.reshape(labels.shape) if reduction == "none" else flat


def masked_ce(
    student_logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy averaged (or summed) over positions whose label is not ignored.

    For a gradient-accumulation window use ``reduction="sum"`` and divide by the window's
    total ``(labels != ignore_index).sum()``. Shapes as in :func:`cross_entropy`.
    """
    values = cross_entropy(student_logits, labels, ignore_index=ignore_index)
    return masked_reduce(values, labels != ignore_index, reduction)
