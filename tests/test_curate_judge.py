"""Judge and best-of-n: a teacher scores answers through the collection job (behind the
loopback server, with faults), and the best sample of each prompt is chosen by a score."""

from __future__ import annotations

import json
import re

import pytest
from collect_support import KEY, KEY_ENV, add_teacher
from support.curation import answered, write_checks
from support.openai_server import OpenAIServer

from kdstudio.collect import store
from kdstudio.curate.best import best_of_n
from kdstudio.curate.checks import run_check
from kdstudio.curate.config import BestConfig, CheckConfig, JudgeConfig
from kdstudio.curate.judge import DEFAULT_RUBRIC, fill_rubric, parse_verdict, run_judge
from kdstudio.errors import UserError

VERDICTS = {
    "right": '{"score": 9, "reason": "correct and clear"}',
    "wrong": "Score: 2/10. It gets the sum wrong.",
    "mumble": "I cannot decide about this one.",
    "word": '{"score": "high", "reason": "?"}',
    "huge": 'Here you go: {"score": 14}',
}


def verdict(body: dict) -> str | None:
    """The loopback judge: reads the answer out of the rubric and grades by its first word."""
    text = body["messages"][-1]["content"]
    found = re.search(r"Answer to grade:\n(.*?)\n\nGrade", text, re.S) or re.search(
        r"ANSWER<<(.*?)>>", text, re.S
    )
    if found is None:
        return None
    return VERDICTS.get(found.group(1).split()[0], '{"score": 5, "reason": "so-so"}')


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, reply=verdict) as s:
        yield s


def items(ws, collection):
    return {(i.idx, i.sample): i for i in store.list_items(ws, collection, limit=1000)}


def billed(server) -> int:
    return sum(server.billed.values())


def test_the_verdict_and_the_rubric():
    assert parse_verdict('ok {"score": 7.5, "reason": "fine"} done') == (7.5, "fine")
    assert parse_verdict("Score: 3/10 - too short") == (3.0, "/10 - too short")
    for text, why in [
        ("", "an empty answer"),
        ("no idea", "no score in its answer: 'no idea'"),
        ('{"score": null}', "its score None is not a number"),
        ('{"score": -1}', "its score -1 is outside 0-10"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_verdict(text)
    filled = fill_rubric(DEFAULT_RUBRIC, [{"role": "user", "content": "2+2?"}], "{prompt} 4", None)
    assert "Prompt:\n2+2?\n" in filled and "Answer to grade:\n{prompt} 4\n" in filled
    assert (
        'Reference answer (may be "(none)"):\n(none)' in filled and '{"score": <a number' in filled
    )


def test_a_judge_behind_faults_scores_every_answer_once(ws, server, tmp_path):
    answers = ["right 1", "wrong", "right 2", "mumble", "word", "huge", "so so"]
    name = answered(ws, tmp_path, answers, references=["2"] * 7)
    add_teacher(ws, server, "judge")
    for kind in ("429", "500", "malformed", "drop"):
        server.add_fault(kind, times=2, retry_after=0.05 if kind == "429" else None)
    summary = run_judge(JudgeConfig(collection=name, teacher="judge", concurrency=3), ws)
    assert summary.status == "done", summary.message
    assert all(f.fired == 2 for f in server.faults)
    assert billed(server) == 7  # each verdict paid once, whatever the faults
    got = items(ws, name)
    assert [got[(i, 0)].review for i in range(7)] == [
        "accepted", "rejected", "accepted", "pending", "pending", "pending", "accepted",
    ]  # fmt: skip
    assert (got[(0, 0)].score, got[(0, 0)].reason) == (0.9, "correct and clear")
    assert (got[(1, 0)].score, got[(1, 0)].reason) == (0.2, "/10. It gets the sum wrong.")
    assert got[(3, 0)].reason == (
        "the judge gave no usable score: no score in its answer: 'I cannot decide about this one.'"
    )
    assert got[(4, 0)].reason.endswith("its score 'high' is not a number")
    assert got[(5, 0)].reason.endswith("its score 14 is outside 0-10")
    assert {i.decider for i in got.values()} == {"judge:judge"}
    assert (
        summary.counts["errors"] == 3 and summary.extra["judge_collection"] == f"{name}.judge.judge"
    )
    assert summary.extra["spent"] > 0
    judge = store.get_collection(ws, f"{name}.judge.judge")
    assert judge.source == "judge" and judge.counts["done"] == 7
    # the judge saw the prompt, the answer and the reference; its answers are browsable
    asked = [json.loads(b)["messages"][0]["content"] for b in server.billed]
    assert any("question 0" in a and "right 1" in a and "Reference answer" in a for a in asked)
    assert store.get_item(ws, judge.name, got[(0, 0)].row_id).item.response == VERDICTS["right"]


def test_judging_again_is_free_and_an_edited_answer_is_judged_again(ws, server, tmp_path):
    name = answered(ws, tmp_path, ["right", "wrong", "right too"])
    add_teacher(ws, server, "judge")
    config = JudgeConfig(collection=name, teacher="judge")
    run_judge(config, ws)
    assert billed(server) == 3
    again = run_judge(config, ws)
    assert billed(server) == 3 and again.counts["skipped"] == 3 and again.extra["requests"] == 0
    rows = {k[0]: i.row_id for k, i in items(ws, name).items()}
    store.set_review(ws, name, rows[1], 0, "accepted", "right now")  # a person fixes it
    third = run_judge(config, ws)
    assert billed(server) == 4 and third.counts == {
        "accepted": 1, "rejected": 0, "pending": 0, "kept": 1, "skipped": 2, "errors": 0,
    }  # fmt: skip
    history = store.get_item(ws, name, rows[1]).history
    assert [(h.decider, h.review, h.applied) for h in history] == [
        ("judge:judge", "rejected", True),
        ("person", "accepted", True),
        ("judge:judge", "accepted", False),
    ]


def test_a_judge_stopped_by_its_budget_keeps_its_verdicts_and_resumes(ws, server, tmp_path):
    name = answered(ws, tmp_path, [f"right {i}" for i in range(8)])
    add_teacher(ws, server, "judge", price_in=2000.0, price_out=2000.0)
    config = JudgeConfig(collection=name, teacher="judge", budget=1.2, concurrency=1, max_tokens=16)
    first = run_judge(config, ws)
    assert first.status == "stopped" and "budget" in first.message
    judged = [i for i in items(ws, name).values() if i.decider]
    assert 0 < len(judged) < 8 and first.counts["accepted"] == len(judged)
    rest = run_judge(JudgeConfig(**{**config.to_dict(), "budget": 100.0}), ws)
    assert rest.status == "done" and rest.counts["skipped"] == len(judged)
    assert all(i.review == "accepted" for i in items(ws, name).values())
    assert billed(server) == 8


def test_a_custom_rubric_from_the_cli_and_one_that_hides_the_answer(ws, server, tmp_path, run_cli):
    name = answered(ws, tmp_path, ["right", "wrong"])
    add_teacher(ws, server, "judge")
    ws.close()
    rubric = tmp_path / "rubric.txt"
    rubric.write_text('Q: {prompt}\nANSWER<<{answer}>>\nReply {"score": 0-10}.')
    env = {KEY_ENV: KEY}
    done = run_cli("outputs", "judge", name, "--teacher", "judge", "--rubric", str(rubric),
                   "--threshold", "0.8", "--json", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["counts"]["accepted"] == 1 and doc["counts"]["rejected"] == 1
    body = json.loads(next(iter(server.billed)))
    assert body["messages"][0]["content"].startswith("Q: question ")
    assert body["temperature"] == 0.0

    rubric.write_text("Grade this: {prompt}")
    refused = run_cli("outputs", "judge", name, "--teacher", "judge", "--rubric", str(rubric),
                      env=env)  # fmt: skip
    assert refused.returncode == 2 and "no {answer} placeholder" in refused.stderr
    other = run_cli("outputs", "judge", name, "--teacher", "judge", env=env)
    assert other.returncode == 2 and "already exists with different settings (rubric:" in (
        other.stderr
    )
    listed = run_cli("outputs", "list", name, "--json")
    assert {i["decider"] for i in json.loads(listed.stdout)["items"]} == {"judge:judge"}
    history = run_cli("outputs", "history", name, "0")
    assert "judge:judge" in history.stdout and "accepted" in history.stdout


# -- best of n ------------------------------------------------------------------------------------


def test_best_of_n_by_a_check_accepts_one_right_sample_per_prompt(ws, tmp_path):
    samples = [["bad", "good a", "good b"], ["bad", "bad"], ["raise", "good c"]]
    name = answered(ws, tmp_path, samples)
    checks = write_checks(tmp_path)
    with pytest.raises(UserError, match="no check has scored collection"):
        best_of_n(BestConfig(collection=name, by="check"), ws)
    run_check(CheckConfig(collection=name, check_spec=f"{checks}:flaky"), ws)
    rows = {k[0]: i.row_id for k, i in items(ws, name).items()}
    store.set_review(ws, name, rows[0], 1, "rejected", reason="typo")  # a person says no
    summary = best_of_n(BestConfig(collection=name, by="check", min_score=1.0), ws)
    got = items(ws, name)
    assert {k: i.review for k, i in got.items()} == {
        (0, 0): "rejected", (0, 1): "rejected", (0, 2): "accepted",
        (1, 0): "rejected", (1, 1): "rejected",
        (2, 0): "rejected", (2, 1): "accepted",
    }  # fmt: skip
    assert got[(0, 2)].reason == "best of 3 by check:checks.py:flaky (score 1.00)"
    assert got[(0, 0)].reason == "sample 2 scored higher (1.00 vs 0.00)"
    assert got[(0, 1)].decider == "person"  # never chosen, and it stands
    assert got[(1, 0)].reason.startswith(
        "none of the 2 samples is good enough: the best scored 0.00"
    )
    assert got[(2, 0)].reason == "sample 1 scored higher (1.00 vs no score)"
    assert summary.counts["accepted"] == 2 and summary.extra["prompts"] == 3
    # again: nothing changes, nothing is recorded twice
    again = best_of_n(BestConfig(collection=name, by="check", min_score=1.0), ws)
    assert again.counts["accepted"] == 2
    assert len(store.get_item(ws, name, rows[0], 2).history) == 2  # check, then best

    run_check(CheckConfig(collection=name, check_spec=f"{checks}:length"), ws)
    with pytest.raises(UserError, match="scored by several: check:checks.py:flaky, check:checks"):
        best_of_n(BestConfig(collection=name, by="check"), ws)
    best_of_n(BestConfig(collection=name, by="check:checks.py:length"), ws)
    assert items(ws, name)[(1, 0)].review == "accepted"  # "bad": as long as "bad", the first


def test_best_of_n_by_judge_and_by_confidence(ws, server, tmp_path):
    from support.train_data import add_answers

    name = answered(ws, tmp_path, [["wrong", "right", "so so"], ["so so", "wrong"]])
    add_teacher(ws, server, "judge")
    run_judge(JudgeConfig(collection=name, teacher="judge"), ws)
    best_of_n(BestConfig(collection=name, by="judge"), ws)
    got = items(ws, name)
    assert [got[(0, s)].review for s in range(3)] == ["rejected", "accepted", "rejected"]
    assert [got[(1, s)].review for s in range(2)] == ["accepted", "rejected"]
    assert got[(1, 1)].decider == "best:judge"

    with pytest.raises(UserError, match="has no token logprobs to rank by confidence"):
        best_of_n(BestConfig(collection=name, by="confidence"), ws)
    add_answers(ws, "quiz.c", "quiz", [["x", "y"], ["z", "w"]])
    ws.db.execute(
        "UPDATE responses SET mean_logprob = CASE text WHEN 'y' THEN -0.1 WHEN 'z' THEN -0.2"
        " ELSE -2 END WHERE hash IN (SELECT hash FROM collection_items ci JOIN collections c"
        " ON c.id = ci.collection_id WHERE c.name = 'quiz.c')"
    )
    best_of_n(BestConfig(collection="quiz.c", by="confidence"), ws)
    got = items(ws, "quiz.c")
    assert [got[k].review for k in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [
        "rejected", "accepted", "accepted", "rejected",
    ]  # fmt: skip
    assert got[(0, 1)].score == pytest.approx(0.905, abs=1e-3)
