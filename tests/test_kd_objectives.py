"""The KD objectives' loss and gradient against a reference computed from full logits with
the loss library (kdstudio.distill.losses), and the fused LM head (kdstudio.distill.fused_head)
against plain autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kd_support import add_local_teacher, config

from kdstudio.distill import losses as L
from kdstudio.distill.fused_head import fused_head_loss


def _chunk_ce_fkl(labels, teacher):
    def chunk_loss(logits, rows):
        ce = F.cross_entropy(logits.float(), labels[rows], reduction="none")
        kd = L.forward_kl_per_token(logits, teacher[rows])
        return (0.3 * ce + 0.7 * kd).sum(), torch.stack([ce.sum(), kd.sum()]).detach()

    return chunk_loss


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
@pytest.mark.parametrize("with_head", [True, False])
def test_fused_head_equals_full_autograd_in_value_gradient_and_stats(chunk_size, with_head):
    torch.manual_seed(0)
    n, h, v = 7, 5, 11
    x = torch.randn(n, h if with_head else v, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, h, dtype=torch.float64, requires_grad=True) if with_head else None
    b = torch.randn(v, dtype=torch.float64, requires_grad=True) if with_head else None
    labels = torch.randint(0, v, (n,))
    teacher = torch.randn(n, v, dtype=torch.float64)
    fn = _chunk_ce_fkl(labels, teacher)
    total, stats = fused_head_loss(fn, x, w, b, chunk_size=chunk_size, n_stats=2)
    (2.5 * total).backward()
    leaves = [t for t in (x, w, b) if t is not None]
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    logits = F.linear(x, w, b) if with_head else x
    ref, ref_stats = fn(logits, slice(0, n))
    (2.5 * ref).backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(stats.double(), ref_stats, rtol=1e-5)
    for g, t in zip(got, leaves, strict=True):
        assert torch.allclose(g, t.grad, rtol=1e-6, atol=1e-9)


def test_fused_head_leaves_frozen_weights_without_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(6, 3)  # frozen head (LoRA)
    total, _ = fused_head_loss(
        lambda z, r: (z.logsumexp(-1).sum(), torch.zeros(0)), x, w, None, chunk_size=2
    )
    total.backward()
    assert x.grad is not None and w.grad is None


def test_chunk_metrics_report_top1_agreement_and_student_entropy():
    import math

    from kdstudio.distill.objectives.kd import chunk_terms

    # the rows that carry loss: student argmax 0 and 1, the teacher's top candidate 0 for both
    student = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    labels, kd = torch.tensor([0, 1]), torch.zeros(2)
    both = torch.tensor([True, True])
    _, stats = chunk_terms(student, labels, kd, both, torch.tensor([0, 0]), 0.5, 1.0)
    ce, _, n_kd, agree, entropy = stats.tolist()
    q = 1 / (1 + math.exp(-5))
    want_entropy = math.log(2) - q * math.log(q) - (1 - q) * math.log(1 - q)
    assert (n_kd, agree) == (2, 1) and entropy == pytest.approx(want_entropy, rel=1e-6)
    assert ce == pytest.approx(math.log(2) + math.log1p(math.exp(-5)), rel=1e-6)
    _, stats = chunk_terms(student, labels, kd, both, torch.tensor([0, 1]), 0.5, 1.0)
    assert stats[3].item() == 2  # by ids: both agree
    _, stats = chunk_terms(student, labels, kd, ~both, torch.tensor([0, 1]), 0.5, 1.0)
    assert stats[2].item() == stats[3].item() == 0  # agreement counts KD positions only
    _, empty = chunk_terms(student[:0], labels[:0], kd[:0], both[:0], labels[:0], 0.5, 1.0)
    assert empty.tolist() == [0.0] * 5


# -- the objectives against full-logits references ------------------------------------------


def _setup(ws, kd_models, method, teacher_path=None, prepare=None, **distill):
    from support.train_data import make_collection, memorisable_pairs
    from transformers import AutoModelForCausalLM

    from kdstudio.collect.store import iter_examples
    from kdstudio.distill.batches import build_dataset, collate, load_student_tokenizer
    from kdstudio.distill.objectives import DenseKD, ObjectiveContext, SparseKD
    from kdstudio.events import ListSink

    make_collection(ws, "tiny", memorisable_pairs(8))
    if prepare is not None:
        prepare(ws, kd_models)
    if teacher_path is not None:
        add_local_teacher(ws, "local", teacher_path)
        distill = {"teacher": "local", **distill}
    cfg = config(kd_models.student, "tiny", distill={"method": method, **distill})
    tok, _ = load_student_tokenizer(str(kd_models.student))
    data = build_dataset(tok, iter_examples(ws, "tiny"), max_length=64, eval_fraction=0.0)
    model = AutoModelForCausalLM.from_pretrained(kd_models.student, dtype=torch.float32)
    obj = (DenseKD if method == "dense_kd" else SparseKD)(cfg)
    obj.setup(
        ObjectiveContext(
            cfg, ws, tok, torch.device("cpu"), None, ListSink(), model.config, {"train": data.train}
        )
    )
    batch = collate(data.train[:4], tok.pad_token_id)
    return cfg, obj, model, batch


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _run(obj, model, batch):
    model.zero_grad()
    out = obj.loss(model, batch)
    out.loss_sum.backward()
    return out, _grads(model)


@pytest.mark.parametrize(
    "divergence,temperature,fused",
    [
        ("fkl", 1.0, True),
        ("rkl", 2.0, True),
        ("jsd", 1.0, True),
        ("skl", 1.0, True),
        ("srkl", 1.0, True),
        ("tvd", 1.0, True),
        ("fkl", 2.0, False),
        ("fkl", 2.0, True),
    ],
)
def test_dense_kd_equals_full_logits_reference(ws, kd_models, divergence, temperature, fused):
    cfg, obj, model, batch = _setup(
        ws,
        kd_models,
        "dense_kd",
        kd_models.teacher,
        divergence=divergence,
        temperature=temperature,
        kd_weight=0.7,
        beta=0.3,
        chunk_size=5,
    )
    obj.fused = fused
    out, got = _run(obj, model, batch)
    model.zero_grad()
    s = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    with torch.no_grad():
        t = obj.teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[
            :, :-1
        ]
    labels = batch.labels[:, 1:]
    mask = labels != -100
    options = {"temperature": temperature}
    options.update(
        {"jsd": {"beta": 0.3}, "skl": {"alpha": 0.1}, "srkl": {"alpha": 0.1}}.get(divergence, {})
    )
    ce = L.masked_ce(s, labels, reduction="sum")
    kd = L.divergence(divergence, s, t, mask, reduction="sum", **options)
    ref = L.kd_total(ce, kd, 0.7, temperature)
    ref.backward()
    assert out.loss_sum.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.sums["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.counts["kd"][0].item() == pytest.approx(kd.item(), rel=1e-4, abs=1e-6)
    assert out.counts["kd_share"][0].item() == mask.sum().item() == batch.n_target
    agree = ((s.argmax(-1) == t.argmax(-1)) & mask).sum().item()
    assert out.counts["top1_agree"][0].item() == agree
    for g, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_dense_kd_over_padding_rows_uses_the_shared_vocabulary(ws, kd_models):
    cfg, obj, model, batch = _setup(ws, kd_models, "dense_kd", kd_models.padded, chunk_size=7)
    v = model.config.vocab_size
    assert obj.shared == v and obj.teacher.config.vocab_size == v + 16
    out, got = _run(obj, model, batch)
    model.zero_grad()
    s = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    with torch.no_grad():
        t = obj.teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    labels = batch.labels[:, 1:]
    ce = L.masked_ce(s, labels, reduction="sum")
    kd = L.forward_kl(s, t[:, :-1, :v], labels != -100, reduction="sum")
    ref = L.kd_total(ce, kd, 0.5, 1.0)
    ref.backward()
    assert out.loss_sum.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def _with_logprobs(ws, kd_models):
    """Give every response of collection `tiny` top-3 logprobs spelled by the student's
    tokens (as a teacher of the same family would), through the outputs store."""
    import numpy as np
    from transformers import AutoTokenizer

    from kdstudio.logprobs import encode, make

    tok = AutoTokenizer.from_pretrained(kd_models.student)
    rng = np.random.default_rng(0)
    rows = ws.query("SELECT hash, text FROM responses")
    for r in rows:
        ids = tok(r["text"], add_special_tokens=False)["input_ids"]
        pieces = [tok.decode([i]).encode() for i in ids]
        top = [
            [p, *[tok.decode([int(j)]).encode() for j in rng.integers(10, 200, 2)]] for p in pieces
        ]
        lps = [sorted(-rng.random(3) * 3, reverse=True) for _ in ids]
        tl = make(pieces, [lp[0] for lp in lps], top, lps)
        ws.db.execute("UPDATE responses SET logprobs=? WHERE hash=?", (encode(tl), r["hash"]))


@pytest.mark.parametrize("tail,fused", [(True, True), (False, True), (True, False)])
def test_sparse_kd_equals_full_logits_reference(ws, kd_models, tail, fused):
    cfg, obj2, model, batch = _setup(
        ws, kd_models, "sparse_kd", prepare=_with_logprobs, tail=tail, kd_weight=0.6, chunk_size=3
    )
    obj2.fused = fused
    out, got = _run(obj2, model, batch)
    ids, lps, kinds = obj2.batch_targets(batch)
    is_kd = kinds > 0
    assert is_kd.sum() > 0
    model.zero_grad()
    s = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.labels[:, 1:]
    mask = labels != -100
    ce = L.cross_entropy(s, labels)
    kd = L.sparse_topk_kl_per_token(s, ids, lps, tail=tail)
    per = torch.where(is_kd, 0.4 * ce + 0.6 * kd, ce)
    ref = per[mask].sum()
    ref.backward()
    assert out.loss_sum.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.counts["kd_share"][0].item() == (is_kd & mask).sum().item()
    assert out.counts["kd"][0].item() == pytest.approx(kd[is_kd & mask].sum().item(), rel=1e-5)
    for g, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_sparse_kd_on_a_packed_batch_equals_the_unpacked_loss(ws, kd_models):
    """Packed rows carry the teacher's targets at each example's own offset."""
    from kdstudio.distill.batches import collate_rows

    cfg, obj, model, batch = _setup(ws, kd_models, "sparse_kd", prepare=_with_logprobs)
    items = batch.items
    packed = collate_rows([items[:2], items[2:]], pad_id=0)  # pads carry no loss
    plain, got_plain = _run(obj, model, batch)
    both, got_packed = _run(obj, model, packed)
    assert both.counts["kd_share"][0].item() == plain.counts["kd_share"][0].item() > 0
    assert both.loss_sum.item() == pytest.approx(plain.loss_sum.item(), rel=1e-5)
    for a, b in zip(got_packed, got_plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("divergence", ["fkl", "jsd", "rkl"])
def test_dense_kd_aligned_by_bytes_equals_the_one_tokenizer_path_where_they_coincide(
    ws, kd_models, monkeypatch, tmp_path, divergence
):
    """The cross-tokenizer path (teacher tokens -> bytes -> student tokens, candidates and a
    tail bucket) on a teacher that happens to share the student's tokenizer, keeping its whole
    distribution: the same loss and gradient as comparing the two distributions id by id."""
    from kdstudio.distill.objectives import cross

    monkeypatch.setattr(cross, "TOP_K", 10**6)  # every token: nothing left for the tail
    options = {"divergence": divergence, "kd_weight": 0.7, "beta": 0.3, "chunk_size": 5}
    _, exact, model, batch = _setup(ws, kd_models, "dense_kd", kd_models.teacher, **options)
    want, want_grads = _run(exact, model, batch)
    assert exact.cross is None
    from kdstudio.workspace import Workspace

    other = Workspace.open(tmp_path / "other")
    _, aligned, _, _ = _setup(
        other, kd_models, "dense_kd", kd_models.teacher, align="bytes", **options
    )
    assert aligned.cross is not None
    got, grads = _run(aligned, model, batch)
    assert got.loss_sum.item() == pytest.approx(want.loss_sum.item(), rel=1e-4)
    assert got.counts["kd_share"][0].item() == batch.n_target
    assert got.counts["kd_exact"][0].item() == batch.n_target
    for g, w in zip(grads, want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-6)
    other.close()


def test_dense_kd_across_tokenizers_trains_a_sentencepiece_student(ws, kd_models):
    """A ChatML/SentencePiece student and a byte-level teacher: the teacher reads each example
    in its own template and tokens, and every student response token gets its distribution
    (the end of turn from the teacher's own end token)."""
    from kd_support import metric_series, train
    from support.train_data import make_collection, memorisable_pairs

    make_collection(ws, "pairs", memorisable_pairs(16))
    add_local_teacher(ws, "local", kd_models.teacher)
    cfg = config(
        kd_models.sp,
        "pairs",
        distill={"method": "dense_kd", "teacher": "local", "divergence": "jsd"},
        optim={"max_steps": 3},
    )
    assert train(ws, cfg).status == "finished"
    shares = metric_series(ws, "kd", "kd_share")
    assert all(s >= 0.9 for s in shares), shares
    assert all(v > 0 for v in metric_series(ws, "kd", "kd"))
    on_policy = config(
        kd_models.sp,
        "pairs",
        distill={"method": "dense_kd", "teacher": "local", "on_policy": 1.0},
        optim={"max_steps": 2},
        run={"name": "kd-on-policy"},
    )
    assert train(ws, on_policy).status == "finished"
    assert metric_series(ws, "kd-on-policy", "on_policy") == [1.0, 1.0]
