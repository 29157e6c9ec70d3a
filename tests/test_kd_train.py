"""End to end: sparse_kd from a collection the real collection job gathered from the loopback
teacher, dense_kd with a tiny local teacher; both lower the KD term and report their metrics."""

from __future__ import annotations

import re
import statistics

import pytest
from kd_support import add_local_teacher, collect_from_loopback, config, metric_series, train
from support.openai_server import OpenAIServer

from kdstudio.collect.store import iter_examples
from kdstudio.events import ListSink, Log

KD_METRICS = ("loss", "ce", "kd", "kd_share", "top1_agree", "student_entropy")


@pytest.fixture
def server():
    with OpenAIServer() as s:
        yield s


def _lowered(values: list[float]) -> bool:
    return statistics.mean(values[-3:]) < 0.85 * statistics.mean(values[:3])


def _kd_log(sink) -> tuple[int, int]:
    for e in sink.events:
        if isinstance(e, Log) and e.message.startswith("sparse_kd:"):
            m = re.match(r"sparse_kd: ([\d,]+) of ([\d,]+) response tokens", e.message)
            return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
    raise AssertionError("no sparse_kd summary logged")


def test_sparse_kd_from_loopback_logprobs_lowers_the_kd_term(ws, kd_models, server):
    name = collect_from_loopback(ws, server, n=24)
    examples = list(iter_examples(ws, name))
    assert all(e.logprobs is not None and e.logprobs.k == 5 for e in examples)
    cfg = config(
        kd_models.student,
        name,
        distill={"method": "sparse_kd", "kd_weight": 0.8},
        data={"eval_fraction": 0.0},
        optim={"max_steps": 10, "lr": 8e-3},
    )
    sink = ListSink()
    result = train(ws, cfg, sink)
    assert result.status == "finished"
    series = {k: metric_series(ws, "kd", k) for k in KD_METRICS}
    assert all(len(v) == 10 for v in series.values())
    assert _lowered(series["kd"]), series["kd"]
    # the student's tokenizer covers every teacher token: each response token uses KD; only
    # the end-of-turn token (the API teacher sent no eos) trains with CE
    n_kd, n_target = _kd_log(sink)
    assert n_kd == sum(len(e.logprobs) for e in examples)
    assert n_target == n_kd + len(examples)
    assert all(0.7 < s < 1.0 for s in series["kd_share"])
    assert all(0.0 <= a <= 1.0 for a in series["top1_agree"])
    # loss = (1 - w) CE + w KD at KD positions, CE elsewhere: between the two per-token terms
    assert series["loss"][-1] < series["ce"][-1]


def test_a_student_lacking_some_teacher_tokens_still_uses_kd_where_they_occur(
    ws, kd_models, server
):
    """A student whose tokenizer lacks two of the teacher's tokens: a candidate it lacks goes
    to the student token that starts it, and where the teacher wrote one of them the student's
    smaller tokens take the teacher's conditionals; every response token but the end (this
    teacher sends no stop token) uses KD, and the kinds are reported."""
    from kd_support import MISSING
    from transformers import AutoTokenizer

    name = collect_from_loopback(ws, server, n=16)
    tok = AutoTokenizer.from_pretrained(kd_models.partial)
    assert all(len(tok.encode(w, add_special_tokens=False)) > 1 for w in MISSING)
    examples = list(iter_examples(ws, name))
    written = sum(MISSING[0] in e.response or MISSING[1] in e.response for e in examples)
    assert written > 0
    cfg = config(
        kd_models.partial,
        name,
        distill={"method": "sparse_kd"},
        data={"eval_fraction": 0.0},
        optim={"max_steps": 2},
    )
    sink = ListSink()
    train(ws, cfg, sink)
    n_kd, n_target = _kd_log(sink)
    assert n_kd == n_target - len(examples)
    assert any(isinstance(e, Log) and e.message.startswith("align bytes:") for e in sink.events)
    split = metric_series(ws, "kd", "kd_split")
    mapped = metric_series(ws, "kd", "kd_mapped")
    assert sum(split) > 0 and sum(mapped) > 0


def test_dense_kd_with_a_local_teacher_lowers_the_kd_term(ws, kd_models):
    from support.train_data import make_collection, memorisable_pairs

    make_collection(ws, "tiny", memorisable_pairs(24))
    add_local_teacher(ws, "local", kd_models.teacher)
    cfg = config(
        kd_models.student,
        "tiny",
        distill={"method": "dense_kd", "teacher": "local", "kd_weight": 0.9, "temperature": 2.0},
        optim={"max_steps": 20, "lr": 8e-3},
    )
    result = train(ws, cfg)
    assert result.status == "finished"
    series = {k: metric_series(ws, "kd", k) for k in KD_METRICS}
    assert _lowered(series["kd"]), series["kd"]
    assert all(s == 1.0 for s in series["kd_share"])
    assert statistics.mean(series["top1_agree"][-3:]) > statistics.mean(series["top1_agree"][:3])


def test_on_policy_batches_score_what_the_student_writes(ws, kd_models):
    from support.train_data import make_collection, memorisable_pairs

    make_collection(ws, "tiny", memorisable_pairs(16))
    add_local_teacher(ws, "local", kd_models.teacher)
    cfg = config(
        kd_models.student,
        "tiny",
        distill={"method": "dense_kd", "teacher": "local", "on_policy": 1.0},
        optim={"max_steps": 2},
    )
    assert train(ws, cfg).status == "finished"
    series = {k: metric_series(ws, "kd", k) for k in ("loss", "kd", "on_policy", "ce")}
    assert series["on_policy"] == [1.0, 1.0]
    assert series["ce"] == [0.0, 0.0]  # no collected response was trained on
    # divergence alone (kd_weight does not apply), weighed like the replaced batch
    assert series["loss"] == pytest.approx(series["kd"], rel=1e-4)

    mixed = config(
        kd_models.student,
        "tiny",
        distill={"method": "dense_kd", "teacher": "local", "on_policy": 0.5},
        optim={"max_steps": 5},
        run={"name": "mixed"},
    )
    assert train(ws, mixed).status == "finished"
    shares = metric_series(ws, "mixed", "on_policy")
    assert set(shares) == {0.0, 1.0}
    ce = metric_series(ws, "mixed", "ce")
    assert all((c == 0.0) == (s == 1.0) for c, s in zip(ce, shares, strict=True))


def test_generated_batches_keep_the_prompt_and_mask_only_the_new_tokens(ws, kd_models):
    import torch
    from support.train_data import make_collection, memorisable_pairs
    from transformers import AutoModelForCausalLM

    from kdstudio.distill.batches import build_dataset, collate, load_student_tokenizer
    from kdstudio.distill.objectives import DenseKD, ObjectiveContext
    from kdstudio.events import NullSink

    make_collection(ws, "tiny", memorisable_pairs(4))
    add_local_teacher(ws, "local", kd_models.teacher)
    cfg = config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "local"})
    tok, _ = load_student_tokenizer(str(kd_models.student))
    data = build_dataset(tok, iter_examples(ws, "tiny"), max_length=64, eval_fraction=0.0)
    model = AutoModelForCausalLM.from_pretrained(kd_models.student)
    obj = DenseKD(cfg)
    obj.setup(ObjectiveContext(cfg, ws, tok, torch.device("cpu"), None, NullSink(), model.config))
    batch = collate(data.train, tok.pad_token_id)
    model.train()
    torch.manual_seed(0)
    gen = obj._generate(model, batch)
    assert model.training  # restored after sampling
    budget = max(e.n_target for e in batch.items)
    for old, new in zip(batch.items, gen.items, strict=True):
        p = old.prompt_len
        assert new.input_ids[:p] == old.input_ids[:p] and new.prompt_len == p
        assert new.labels[:p] == [-100] * p and new.labels[p:] == new.input_ids[p:]
        assert 1 <= len(new) - p <= budget
    assert [e.input_ids for e in gen.items] != [e.input_ids for e in batch.items]


def test_sparse_kd_from_a_local_teacher_of_the_same_tokenizer_maps_by_token_id(ws, kd_models):
    import torch
    from kd_support import collect_from_local
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdstudio.distill.batches import load_student_tokenizer
    from kdstudio.teachers.vocab import VocabBytes

    # a random teacher would write bytes that are not UTF-8 (decoded to U+FFFD, so its text
    # no longer spells its tokens, and nothing aligns): keep its answers to ASCII tokens
    tok = load_student_tokenizer(str(kd_models.student))[0]
    vocab = VocabBytes(tok)
    teacher = AutoModelForCausalLM.from_pretrained(kd_models.teacher)
    with torch.no_grad():  # logit 0 for these; the peaked head scores some token far above
        for i, b in enumerate(vocab.bytes):
            if i in vocab.specials or not b or not b.isascii():
                teacher.lm_head.weight[i] = 0.0
    folder = ws.folder("ascii-teacher")
    teacher.save_pretrained(folder)
    AutoTokenizer.from_pretrained(kd_models.teacher).save_pretrained(folder)
    name = collect_from_local(ws, folder, n=8, top_logprobs=4)
    cfg = config(
        kd_models.student,
        name,
        distill={"method": "sparse_kd"},
        data={"eval_fraction": 0.0},
        optim={"max_steps": 2},
    )
    sink = ListSink()
    assert train(ws, cfg, sink).status == "finished"
    summary = next(
        e.message for e in sink.events if isinstance(e, Log) and "sparse_kd:" in e.message
    )
    mapped, examples = map(
        int, re.search(r"(\d+) of (\d+) examples mapped by token id", summary).groups()
    )
    assert mapped == examples > 0
    # the teacher's ids are the student's own: every response token aligns; only the
    # end-of-turn token falls back (it stopped at max_tokens, not on its eos)
    n_kd, n_target = _kd_log(sink)
    assert n_kd == n_target - examples > 0
