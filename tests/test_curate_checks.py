"""Checks: a program decides each answer, in worker processes, never crashing kdstudio; its
decisions keep their history, respect a person's, and a stopped check continues."""

from __future__ import annotations

import json
import os

import pytest
from support.curation import answered, write_checks

from kdstudio.collect import store
from kdstudio.curate.builtins import check_exact, check_json_schema, check_numeric, last_number
from kdstudio.curate.checks import parse_check, run_check
from kdstudio.curate.config import CheckConfig
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import CancelToken, ListSink, Progress

MISBEHAVING = ["good 1", "bad", "raise", "hang", "garbage", "nan", "crash", "exit", "good 2"]


def items(ws, collection):
    return {i.idx: i for i in store.list_items(ws, collection, limit=1000)}


def test_a_check_that_raises_hangs_crashes_or_returns_garbage_costs_only_that_answer(
    tmp_path, run_cli, ws
):
    name = answered(ws, tmp_path, MISBEHAVING)
    checks = write_checks(tmp_path)
    result = run_cli(
        "outputs", "check", name, "--check", f"{checks}:flaky", "--timeout", "1",
        "--workers", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"] | {"kept": 0} == {
        "accepted": 2, "rejected": 1, "pending": 6, "kept": 0, "skipped": 0, "errors": 6,
    }  # fmt: skip
    assert summary["extra"]["processes_replaced"] == 2  # after the hang and the crash
    got = items(ws, name)
    assert [got[i].review for i in range(9)] == [
        "accepted", "rejected", *["pending"] * 6, "accepted",
    ]  # fmt: skip
    assert got[0].score == 1.0 and got[1].score == 0.0 and got[2].score is None
    assert got[0].decider == "check:checks.py:flaky" and got[0].reason == "passed"
    reasons = {i: got[i].reason for i in range(2, 8)}
    assert reasons[2] == "raised ValueError: boom (checks.py, line 6)"
    assert reasons[3] == "timed out after 1 s"
    assert reasons[4] == "returned 'yes' (a str): a check returns a bool or a number from 0 to 1"
    assert reasons[5] == "returned nan: a score must be a number from 0 to 1"
    assert reasons[6] == "the check's process died (exit code 3)"
    assert reasons[7] == "the check called exit(4) (checks.py, line 16)"
    # every answer is still there, with its text
    assert [got[i].response for i in range(9)] == MISBEHAVING

    listed = run_cli("outputs", "list", name, "--decider", "check", "--min-score", "0.5")
    assert listed.returncode == 0 and "good 1" in listed.stdout and "bad" not in listed.stdout
    assert "(1-2 of 2 matching" in listed.stdout


def test_on_error_reject_and_a_float_check_with_its_own_reasons(tmp_path, ws):
    name = answered(ws, tmp_path, ["raise", "a" * 5, "b" * 30])
    checks = write_checks(tmp_path)
    run_check(CheckConfig(collection=name, check_spec=f"{checks}:flaky", on_error="reject"), ws)
    assert items(ws, name)[0].review == "rejected"
    run_check(CheckConfig(collection=name, check_spec=f"{checks}:length", threshold=0.6), ws)
    got = items(ws, name)
    assert (got[1].review, got[1].score, got[1].reason) == ("rejected", 0.25, "5 characters")
    assert (got[2].review, got[2].score) == ("accepted", 1.0)
    assert got[2].decider == "check:checks.py:length"


def test_a_check_runs_again_only_on_what_changed_and_a_person_stands(tmp_path, ws):
    name = answered(ws, tmp_path, ["good", "bad", "raise", "bad too"])
    checks = write_checks(tmp_path)
    config = CheckConfig(collection=name, check_spec=f"{checks}:flaky", workers=1)
    rows = {i.idx: i.row_id for i in store.list_items(ws, name)}
    store.set_review(ws, name, rows[3], 0, "accepted", reason="fine by me")
    first = run_check(config, ws)
    assert first.counts["kept"] == 1 and items(ws, name)[3].review == "accepted"
    again = run_check(config, ws)
    assert again.counts["skipped"] == 4 and again.counts["accepted"] == 0
    # a person fixes the answer that made the check raise: only it is checked again
    store.set_review(ws, name, rows[2], 0, "pending", "good now")
    third = run_check(config, ws)
    assert third.counts["skipped"] == 3 and third.counts["accepted"] == 1
    history = store.get_item(ws, name, rows[3]).history
    assert [(h.decider, h.review, h.applied) for h in history] == [
        ("person", "accepted", True),
        ("check:checks.py:flaky", "rejected", False),
    ]
    fixed = store.get_item(ws, name, rows[2])
    assert [h.review for h in fixed.history] == ["pending", "pending", "accepted"]
    assert fixed.original == "raise" and fixed.item.response == "good now"


def test_a_stopped_check_keeps_its_decisions_and_continues(tmp_path, ws):
    name = answered(ws, tmp_path, [f"answer {i}" for i in range(10)])
    checks = write_checks(tmp_path)
    config = CheckConfig(collection=name, check_spec=f"{checks}:slow", workers=1)
    cancel = CancelToken()

    class StopAfterTwo(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, Progress) and event.done >= 2:
                cancel.cancel("test stop")

    with pytest.raises(Cancelled, match="run the same check again to continue"):
        run_check(config, ws, StopAfterTwo(), cancel)
    decided = [i for i in items(ws, name).values() if i.decider]
    assert 2 <= len(decided) < 10
    rest = run_check(config, ws)
    assert rest.counts["skipped"] == len(decided)
    assert rest.counts["accepted"] == 10 - len(decided)
    assert all(i.review == "accepted" for i in items(ws, name).values())
    status = ws.query_one("SELECT status, pid FROM curations")
    assert status["status"] == "done" and status["pid"] is None


def test_a_check_already_running_elsewhere_is_refused(tmp_path, ws):
    name = answered(ws, tmp_path, ["good"])
    checks = write_checks(tmp_path)
    config = CheckConfig(collection=name, check_spec=f"{checks}:flaky")
    run_check(config, ws)
    ws.db.execute(
        "UPDATE curations SET status='running', pid=?, host=?", (os.getppid(), os.uname().nodename)
    )
    with pytest.raises(UserError, match="check:checks.py:flaky is already running on collection"):
        run_check(config, ws)


def test_a_check_that_cannot_load_is_bad_input(tmp_path, run_cli, ws):
    name = answered(ws, tmp_path, ["good"])
    broken = tmp_path / "broken.py"
    broken.write_text("def f(p, a, r):\n    return (\n\nx = 1\n")
    write_checks(tmp_path)
    cases = [
        (f"{broken}:f", "broken.py, line 2: '(' was never closed"),
        (f"{tmp_path / 'checks.py'}:nope", "has no function 'nope' (it has: flaky, length, slow)"),
        (f"{tmp_path / 'absent.py'}:f", "there is no file"),
        ("checks", "is not a check: give FILE.py:FUNCTION or module:FUNCTION"),
        ("regex:(", "not a valid regular expression"),
    ]
    for spec, message in cases:
        result = run_cli("outputs", "check", name, "--check", spec)
        assert result.returncode == 2, (spec, result.stderr)
        assert message in result.stderr, (spec, result.stderr)
    assert items(ws, name)[0].decider is None  # nothing was decided


def test_the_built_in_checks(tmp_path, ws):
    assert check_exact(" c  b a ", "c b a")[0] and not check_exact("c b", "c b a")[0]
    assert check_numeric("so it is 1,234.50 dollars", "1234.5", 1e-6) == (
        True, "1234.5 equals the reference 1234.5",
    )  # fmt: skip
    assert check_numeric("about 3", "3.2", 0.1)[0] and not check_numeric("none", "3", 0)[0]
    assert last_number("from -2 to 5e3.") == 5000.0 and last_number("no digits") is None
    import jsonschema

    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    validator = jsonschema.Draft202012Validator(schema)
    assert check_json_schema('```json\n{"n": 3}\n```', validator)[0]
    assert check_json_schema('{"n": "3"}', validator) == (False, "n: '3' is not of type 'integer'")
    assert check_json_schema("{n: 3", validator)[1].startswith("not JSON: Expecting property name")
    with pytest.raises(UserError, match="not a valid JSON Schema"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"type": 12}')
        parse_check(f"json-schema:{bad}")

    name = answered(
        ws, tmp_path, ["Paris", "paris", "Lyon"], references=["Paris", "Paris", None], name="cap"
    )
    summary = run_check(CheckConfig(collection=name, check_spec="exact"), ws)
    got = items(ws, name)
    assert [got[i].review for i in range(3)] == ["accepted", "rejected", "pending"]
    assert got[2].reason == "this row has no reference answer to compare with"
    assert summary.counts["errors"] == 1

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    name = answered(ws, tmp_path, ['{"n": 1}', '{"n": 1.5}', "{}"], name="js")
    run_check(CheckConfig(collection=name, check_spec=f"json-schema:{schema_file}"), ws)
    got = items(ws, name)
    assert [got[i].review for i in range(3)] == ["accepted", "rejected", "rejected"]
    assert got[2].reason == "the document: 'n' is a required property"
    assert got[0].decider == "check:json-schema:schema.json"


def test_answers_with_the_same_text_are_each_checked(tmp_path, ws):
    name = answered(ws, tmp_path, [["good", "good"], ["good", "bad"]])
    checks = write_checks(tmp_path)
    summary = run_check(CheckConfig(collection=name, check_spec=f"{checks}:flaky"), ws)
    assert summary.counts == {
        "accepted": 3, "rejected": 1, "pending": 0, "kept": 0, "skipped": 0, "errors": 0,
    }  # fmt: skip
    assert all(i.decider for i in store.list_items(ws, name)) and summary.counts["accepted"]
