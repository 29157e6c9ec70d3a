"""Evaluation of trained tiny runs: stored side by side, consistent with training, stoppable."""

from __future__ import annotations

import json

import pytest
from train_support import single_thread

from kdstudio.collect.store import iter_examples
from kdstudio.distill import checkpoint as ckpt
from kdstudio.distill import runs
from kdstudio.distill.config import TrainConfig
from kdstudio.errors import Cancelled, NotFound, UserError
from kdstudio.evaluate import (
    METRICS,
    EvalConfig,
    eval_items,
    evaluate,
    get_evaluation,
    latest_evaluation,
    list_evaluations,
    text_scores,
)
from kdstudio.events import CancelToken, ListSink, Progress, RowDone


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()  # tiny tensors: intra-op threads only add overhead


def _eval(demo, sink=None, cancel=None, **kwargs):
    kwargs.setdefault("max_new_tokens", 10)
    kwargs.setdefault("batch_size", 4)
    config = EvalConfig(run=kwargs.pop("run", "demo"), **kwargs)
    return evaluate(config, demo.ws, sink or ListSink(), cancel or CancelToken())


@pytest.fixture(scope="module")
def first(trained_runs):
    """One full evaluation of `demo`, with the events it reported."""
    sink = ListSink()
    return _eval(trained_runs, sink), sink


def test_after_loglik_is_minus_the_trainers_eval_loss_and_beats_before(trained_runs, first):
    result, _ = first
    meta = json.loads((ckpt.resolve_checkpoint(trained_runs.ws, "demo") / "meta.json").read_text())
    m = result.summary["metrics"]
    # the same tokens, the same mask: evaluation and training agree on the held-out loss
    assert m["loglik"]["after"] == pytest.approx(-meta["eval_loss"], rel=1e-4)
    assert m["loglik"]["before"] < m["loglik"]["after"] - 1.0
    assert m["rouge_l"]["after"] > m["rouge_l"]["before"]
    assert m["f1"]["after"] > m["f1"]["before"]
    assert {m[k]["teacher"] for k in ("exact_match", "f1", "rouge_l")} == {1.0}
    assert m["loglik"]["teacher"] is None


def test_every_held_out_prompt_is_stored_with_three_answers_side_by_side(trained_runs, first):
    result, _ = first
    run = runs.get_run(trained_runs.ws, "demo")
    teacher = {ex.row_id: ex.response for ex in iter_examples(trained_runs.ws, run.collection)}
    items = eval_items(trained_runs.ws, result.id)
    # stored in dataset order, whatever order the length-sorted batches ran in
    assert [it.row_id for it in items] == sorted(run.eval_rows)
    assert [it.idx for it in items] == list(range(len(items)))
    assert result.status == "finished" and result.step == 20 and result.summary["n"] == len(items)
    for it in items:
        assert it.teacher == teacher[it.row_id]
        assert "what is " in it.prompt
        assert it.student_before != it.student_after
        # stored scores are those of the stored texts
        for model, text in (("before", it.student_before), ("after", it.student_after)):
            assert {k: it.metrics[model][k] for k in ("exact_match", "f1", "rouge_l")} == (
                text_scores(text, it.teacher)
            )


def test_progress_is_reported_once_per_prompt(first):
    result, sink = first
    progress = sink.of(Progress)
    n = result.summary["n"]
    assert [p.done for p in progress] == list(range(0, n + 1))  # 0: before the first batch
    assert {(p.total, p.unit) for p in progress} == {(n, "prompt")}
    assert len([e for e in sink.of(RowDone) if e.status == "done"]) == n


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(trained_runs, first):
    result, _ = first
    one = _eval(trained_runs, batch_size=1, limit=4)
    batched = eval_items(trained_runs.ws, result.id)[:4]
    single = eval_items(trained_runs.ws, one.id)
    assert len({len(it.prompt) for it in batched}) > 1  # so the batch was padded
    assert [it.student_after for it in single] == [it.student_after for it in batched]
    assert [it.student_before for it in single] == [it.student_before for it in batched]
    for a, b in zip(single, batched, strict=True):
        assert a.metrics["after"]["loglik"] == pytest.approx(b.metrics["after"]["loglik"], abs=1e-5)


def test_limit_and_checkpoint_choose_what_is_evaluated(trained_runs):
    result = _eval(trained_runs, limit=2, checkpoint="10")
    assert result.step == 10 and result.checkpoint == "step-0000010"
    assert len(eval_items(trained_runs.ws, result.id)) == 2
    assert latest_evaluation(trained_runs.ws, "demo", step=10).id == result.id
    assert get_evaluation(trained_runs.ws, result.id).config["limit"] == 2


def test_stop_finishes_the_batch_stores_it_and_raises_cancelled(trained_runs):
    cancel = CancelToken()

    class StopAfterFirstRow(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, RowDone):
                cancel.cancel()

    with pytest.raises(Cancelled, match="stopped after 2 of 6 prompts"):
        _eval(trained_runs, StopAfterFirstRow(), cancel, batch_size=2)
    stopped = list_evaluations(trained_runs.ws, "demo")[-1]
    assert stopped.status == "stopped" and stopped.summary["n"] == 2
    assert len(eval_items(trained_runs.ws, stopped.id)) == 2
    assert stopped.summary["metrics"]["rouge_l"]["after"] is not None


def test_a_lora_run_is_compared_with_its_base_weights(trained_runs):
    from kdstudio.distill.batches import encode_example
    from kdstudio.evaluate import response_logliks

    result = _eval(trained_runs, run="lo", limit=3)
    items = eval_items(trained_runs.ws, result.id)
    base, tok = ckpt.load_student(trained_runs.ws, "lo", "base")
    encoded = [
        encode_example(tok, [{"role": "user", "content": it.prompt}], it.teacher, 64)
        for it in items
    ]
    # "before" ran with the adapter disabled: the same numbers as the base model alone
    expected = response_logliks(base, encoded, tok.pad_token_id, base.device)
    assert [it.metrics["before"]["loglik"] for it in items] == pytest.approx(expected, abs=1e-5)
    m = result.summary["metrics"]["loglik"]
    assert m["after"] > m["before"]


def _new_run(ws, name, eval_rows=None):
    demo = runs.get_run(ws, "demo")
    data = json.loads(json.dumps(demo.config))
    data["run"]["name"] = name
    run = runs.create_run(ws, TrainConfig.from_dict(data))
    if eval_rows is not None:
        runs.update_run(ws, run.id, eval_rows=eval_rows)
    return run


def test_clear_errors_for_runs_that_cannot_be_evaluated(trained_runs):
    ws = trained_runs.ws
    with pytest.raises(NotFound, match="no run named 'nope'.*demo"):
        _eval(trained_runs, run="nope")
    _new_run(ws, "never-started")
    with pytest.raises(UserError, match="has not started yet"):
        _eval(trained_runs, run="never-started")
    _new_run(ws, "no-holdout", eval_rows=[])
    with pytest.raises(UserError, match="held out no prompts.*eval_fraction"):
        _eval(trained_runs, run="no-holdout")
    _new_run(ws, "no-checkpoint", eval_rows=runs.get_run(ws, "demo").eval_rows)
    with pytest.raises(UserError, match="no checkpoint yet"):
        _eval(trained_runs, run="no-checkpoint")
    with pytest.raises(NotFound, match="step.*'999'"):
        _eval(trained_runs, checkpoint="999")
    assert not [e for e in list_evaluations(ws) if e.run != "demo" and e.run != "lo"]


def test_cli_eval_prints_the_table_and_json(trained_runs, run_cli, capsys):
    from kdstudio.cli import main

    root = str(trained_runs.ws.root)
    # in process: the heavy imports are paid once per session
    assert main(["--workspace", root, "eval", "demo", "--limit", "2", "--max-new-tokens", "8"]) == 0
    table = capsys.readouterr().out
    assert "METRIC" in table and "GAP CLOSED" in table and "1 by definition" in table
    assert "[0] " in table and "what is " in table and "  teacher: The answer is" in table
    assert main(["--workspace", root, "eval", "demo", "--limit", "2", "--max-new-tokens", "8",
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "finished" and len(doc["items"]) == 2
    assert set(doc["summary"]["metrics"]) == set(METRICS)
    assert {"teacher", "student_before", "student_after"} <= set(doc["items"][0])

    # the real entry point; bad input is refused before torch is even imported
    proc = run_cli("eval", "missing-run", workspace=trained_runs.ws.root)
    assert proc.returncode == 2 and "no run named 'missing-run'" in proc.stderr
    proc = run_cli("eval", "demo", "--max-new-tokens", "0", workspace=trained_runs.ws.root)
    assert proc.returncode == 2 and "--max-new-tokens must be >= 1" in proc.stderr


def test_answers_are_scored_against_the_datasets_references_the_teachers_too(trained_runs, first):
    from kdstudio.evaluate import TEXT_METRICS

    result, _ = first
    ref = result.summary["reference"]
    assert ref is not None and ref["n"] == result.summary["n"]
    # this teacher answered with the reference answers themselves
    assert {ref["metrics"][k]["teacher"] for k in TEXT_METRICS} == {1.0}
    assert ref["metrics"]["rouge_l"]["after"] > ref["metrics"]["rouge_l"]["before"]
    item = eval_items(trained_runs.ws, result.id)[0]
    assert item.metrics["reference"]["text"] == item.teacher
    # an API teacher, no stored logprobs: no KL to it and no teacher NLL
    assert result.summary["metrics"]["kl_to_teacher"]["after"] is None
    assert result.summary["metrics"]["teacher_nll"]["after"] is None


def test_kl_to_the_teacher_and_its_nll_of_the_answers_where_the_data_allows(ws, kd_models):
    """A local teacher's collection with logprobs: each model's KL from the teacher's top-k at
    the teacher's answer (as sparse KD aligns it, checked here against a direct computation)
    and the teacher's NLL of each model's own answer (its own answers: the least surprising)."""
    import torch
    from kd_support import collect_from_local, config, train
    from transformers import AutoModelForCausalLM

    from kdstudio.distill.align import align_example
    from kdstudio.distill.batches import encode_example, load_student_tokenizer
    from kdstudio.distill.losses import sparse_topk_kl_per_token
    from kdstudio.teachers.vocab import VocabBytes

    # sampled: this random teacher's greedy answers are bytes that are no UTF-8 text
    name = collect_from_local(ws, kd_models.teacher, n=16, top_logprobs=5, temperature=1.0)
    cfg = config(
        kd_models.student,
        name,
        distill={"method": "sparse_kd"},
        data={"eval_fraction": 0.25},
        optim={"max_steps": 2},
        run={"checkpoint_every": 2},
    )
    assert train(ws, cfg).status == "finished"
    result = evaluate(EvalConfig(run="kd", max_new_tokens=8), ws, ListSink(), CancelToken())
    kl, nll = result.summary["metrics"]["kl_to_teacher"], result.summary["metrics"]["teacher_nll"]
    assert kl["teacher"] == 0.0 and kl["before"] > 0 and kl["after"] > 0
    assert all(nll[m] is not None for m in ("before", "after", "teacher"))
    assert nll["teacher"] < nll["before"]  # it finds its own answers likelier than noise
    assert result.summary["reference"] is None  # these prompts have no reference answers
    # one item's KL of the starting weights, computed directly
    item = next(it for it in eval_items(ws, result.id) if "n_kd" in it.metrics["before"])
    example = next(e for e in iter_examples(ws, name) if e.row_id == item.row_id)
    tok, _ = load_student_tokenizer(str(kd_models.student))
    enc = encode_example(tok, example.messages, example.response, 64)
    tg = align_example(enc, example.response, example.logprobs, VocabBytes(tok), mode="bytes")
    base = AutoModelForCausalLM.from_pretrained(kd_models.student).eval()
    with torch.no_grad():
        logits = base(torch.tensor([enc.input_ids])).logits[0]
    rows = torch.as_tensor(enc.prompt_len + tg.pos.astype("int64") - 1)
    want = sparse_topk_kl_per_token(
        logits[rows], torch.as_tensor(tg.ids).long(), torch.as_tensor(tg.logprobs)
    ).mean()
    got = item.metrics["before"]
    assert got["n_kd"] == tg.n_kd > 0
    assert got["kl_to_teacher"] == pytest.approx(want.item(), rel=1e-4)
