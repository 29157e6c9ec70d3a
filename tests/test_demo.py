"""`kdstudio demo`: the offline pipeline end to end (shrunken), its task, resume and reuse."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdstudio.demo import (
    REFERENCE_COLLECTION,
    SAMPLED,
    SFT_STUDENT,
    STUDENT,
    STUDENT_BEST,
    STUDENT_UNFILTERED,
    TEACHER,
    TEST_DATASET,
    TRAIN_DATASET,
    UNFILTERED,
    DemoPlan,
    is_correct,
    make_problems,
    solve,
)
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import CancelToken, Progress

ROOT = Path(__file__).resolve().parents[1]

# -- the task (no torch) -------------------------------------------------------------------------


def test_answers_are_computed_from_the_prompt_and_checked_without_spacing():
    assert solve("Reverse the letters: a b c d") == "d c b a"
    assert solve("Sort the digits: 3 1 2 1") == "1 1 2 3"
    assert is_correct("Sort the digits: 3 1 2 1", " 1  1 2 3 ")
    assert not is_correct("Sort the digits: 3 1 2 1", "1 2 3")
    assert not is_correct("Reverse the letters: a b c", "a b c")
    assert solve("What is 2 + 3?") is None
    assert not is_correct("What is 2 + 3?", "5")


def test_held_out_prompts_never_appear_in_training_and_generation_is_deterministic():
    train, test = make_problems(500, 100, seed=3)
    assert len(train) == 500 and len(test) == 100
    train_prompts = {p.prompt for p in train}
    assert len(train_prompts) == 500
    assert not train_prompts & {p.prompt for p in test}
    assert {p.kind for p in test} == {"reverse", "sort"}
    assert all(is_correct(p.prompt, p.answer) for p in train + test)
    assert make_problems(500, 100, seed=3) == (train, test)
    assert make_problems(500, 100, seed=4) != (train, test)


def test_a_plan_with_an_unknown_method_is_refused():
    with pytest.raises(UserError, match="sft"):
        DemoPlan.quick(method="sft")


# -- the pipeline ----------------------------------------------------------------------------


class StopDuring:
    """Cancels the demo in step `step` once a job there reports `after` units done."""

    def __init__(self, cancel: CancelToken, step: str, unit: str, after: int) -> None:
        self.cancel, self.step, self.unit, self.after = cancel, step, unit, after
        self.inside = False

    def emit(self, event) -> None:
        text = getattr(event, "message", "") or ""
        if text.startswith("["):
            self.inside = self.step in text
        hit = isinstance(event, Progress) and event.unit == self.unit and event.done >= self.after
        if self.inside and hit:
            self.cancel.cancel("test stop")


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The quick demo stopped while collecting, then while distilling, then run to the end,
    then once more."""
    from kdstudio.collect.store import collection_status_counts
    from kdstudio.demo import Demo, demo_status
    from kdstudio.workspace import Workspace

    root = tmp_path_factory.mktemp("demo")
    ws = Workspace.open(root / "ws")
    plan = DemoPlan.quick()
    cancel = CancelToken()
    with pytest.raises(Cancelled, match="resume"):
        Demo(ws, plan, StopDuring(cancel, "collecting", "request", 1), cancel).run()
    status_stopped = demo_status(ws.root)
    collected = collection_status_counts(ws, f"{TRAIN_DATASET}.{TEACHER}")
    cancel = CancelToken()
    stopping = Demo(ws, plan, StopDuring(cancel, "distilling", "step", 50), cancel)
    with pytest.raises(Cancelled, match="again to resume"):
        stopping.run()
    stopped_at = _run(ws, STUDENT)
    first = Demo(ws, plan).run()
    again = Demo(ws, plan).run()
    yield {
        "ws": ws,
        "collected": collected,
        "resumed": stopping.reused,
        "stopped_at": stopped_at,
        "first": first,
        "again": again,
        "status_stopped": status_stopped,
    }
    ws.close()


def _run(ws, name):
    from kdstudio.distill import runs

    return runs.get_run(ws, name)


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_quick_demo_ranks_teacher_and_distilled_student_above_the_untrained_student(demo_runs):
    result = demo_runs["first"]
    teacher, before, after = (result.score(k) for k in ("teacher", "before", "after"))
    sft = result.score("sft")  # the same student, data, steps and seed without the logprobs
    assert teacher.n == after.n == before.n == sft.n == DemoPlan.quick().n_test
    assert sft.accuracy >= before.accuracy + 0.1
    labels = [row[0] for row in result.rows()]
    assert labels[3].startswith("student after sft") and "best of 3" in labels[-1]
    assert before.accuracy < 0.05  # random weights do not solve the task
    assert teacher.accuracy >= 0.3
    assert after.accuracy >= before.accuracy + 0.15
    assert after.agree_with_teacher > before.agree_with_teacher
    assert after.params < teacher.params
    # Every step is timed for the closing line (how long it took is the machine's business).
    assert list(result.timings) == [
        "task", "models", "teacher", "collect", "student", "best-of-n", "score",
    ]  # fmt: skip
    assert all(t > 0 for t in result.timings.values()) and result.seconds > 0
    assert result.timing_line().startswith("took ")


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_demo_workspace_holds_datasets_runs_collection_and_local_teacher(demo_runs):
    from kdstudio.collect.store import collection_status_counts, get_collection, iter_examples
    from kdstudio.data import store
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.evaluate import list_evaluations

    ws = demo_runs["ws"]
    assert store.exists(ws, TRAIN_DATASET) and store.exists(ws, TEST_DATASET)
    teacher_run, student_run = _run(ws, TEACHER), _run(ws, STUDENT)
    assert (teacher_run.status, teacher_run.method) == ("finished", "sft")
    assert teacher_run.collection == REFERENCE_COLLECTION
    assert (student_run.status, student_run.method) == ("finished", "sparse_kd")
    assert student_run.step == DemoPlan.quick().student_steps
    assert ckpt.list_checkpoints(ws, STUDENT)
    sft_run = _run(ws, SFT_STUDENT)  # the comparison: same collection, steps and seed
    assert (sft_run.status, sft_run.method) == ("finished", "sft")
    assert sft_run.step == student_run.step and sft_run.collection == student_run.collection
    assert sft_run.config["run"]["seed"] == student_run.config["run"]["seed"]
    # the teacher's curves are stored like any run's
    names = {
        r[0] for r in ws.query("SELECT name FROM run_metrics WHERE run_id=?", (teacher_run.id,))
    }
    assert {"loss", "eval_loss"} <= names

    teacher = ws.get_teacher(TEACHER)
    assert teacher.kind == "local" and (Path(teacher.path) / "config.json").exists()
    info = get_collection(ws, student_run.collection)
    assert info.teacher_name == TEACHER
    counts = collection_status_counts(ws, student_run.collection)
    assert counts["done"] == counts["total"] == DemoPlan.quick().n_train
    example = next(iter_examples(ws, student_run.collection))
    assert example.logprobs is not None and example.logprobs.token_ids  # local teacher ids
    # the held-out prompts of the result table are not in the collection the student saw
    seen = {json.dumps(ex.messages) for ex in iter_examples(ws, student_run.collection)}
    held_out = ws.query(
        "SELECT r.messages FROM dataset_rows r JOIN datasets d ON d.id = r.dataset_id "
        "WHERE d.name=?",
        (TEST_DATASET,),
    )
    assert held_out and not seen & {json.dumps(json.loads(r[0])) for r in held_out}
    assert [e.status for e in list_evaluations(ws, STUDENT)] == ["finished"]


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_best_of_n_by_the_check_against_unfiltered_answers_with_the_same_steps(demo_runs):
    """The teacher samples at temperature 1, the task's check decides, best-of-n keeps one
    right answer per prompt; two students train with the same steps and seed, one on those
    and one on the unfiltered first samples (whichever way the comparison comes out)."""
    from kdstudio.collect.store import collection_status_counts, iter_examples
    from kdstudio.demo import is_correct

    ws, plan, result = demo_runs["ws"], DemoPlan.quick(), demo_runs["first"]
    assert collection_status_counts(ws, SAMPLED)["done"] == plan.n_train * plan.samples
    unfiltered = list(iter_examples(ws, UNFILTERED))
    assert len(unfiltered) == plan.n_train and {e.sample for e in unfiltered} == {0}
    assert collection_status_counts(ws, UNFILTERED)["done"] == plan.n_train
    cached = ws.query_one(
        "SELECT COUNT(*) FROM collection_items ci JOIN collections c ON c.id=ci.collection_id"
        " WHERE c.name=? AND ci.cached=1",
        (UNFILTERED,),
    )[0]
    assert cached == plan.n_train  # the first samples came from the cache, not generated again
    chosen = [e for e in iter_examples(ws, SAMPLED) if e.review == "accepted"]
    assert chosen and all(is_correct(e.messages[-1]["content"], e.response) for e in chosen)
    assert len({e.row_id for e in chosen}) == len(chosen)  # one answer a prompt
    assert {e.decider for e in chosen} == {"best:check"}
    c = result.curation
    assert c["samples"] == plan.n_train * plan.samples and c["prompts"] == plan.n_train
    assert c["kept"] == len(chosen) and 0 < c["correct_share"] < 1
    best, plain = _run(ws, STUDENT_BEST), _run(ws, STUDENT_UNFILTERED)
    assert best.step == plain.step == plan.student_steps
    assert best.config["run"]["seed"] == plain.config["run"]["seed"]
    assert best.summary["train_examples"] < plain.summary["train_examples"]
    for key in ("unfiltered", "best"):
        assert result.score(key).n == plan.n_test
    assert "the check kept one right answer for" in result.curation_line()
    assert (ws.folder("demo") / "task_check.py").read_text().startswith('"""The demo task')


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_stopped_collection_keeps_its_answers_and_the_next_run_completes_it(demo_runs):
    collected = demo_runs["collected"]
    assert 0 < collected["done"] < collected["total"] == DemoPlan.quick().n_train
    assert demo_runs["resumed"] == ["task", "models", "teacher"]  # collect ran again


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_stopped_demo_resumes_the_student_run_from_its_checkpoint(demo_runs):
    stopped = demo_runs["stopped_at"]
    assert stopped.status == "stopped"
    assert 50 <= stopped.step < DemoPlan.quick().student_steps
    assert demo_runs["first"].reused == ["task", "models", "teacher", "collect"]


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_running_the_demo_again_reuses_everything_and_scores_the_same(demo_runs):
    first, again = demo_runs["first"], demo_runs["again"]
    assert again.reused == ["task", "models", "teacher", "collect", "student", "best-of-n"]
    assert [s.to_dict() for s in again.scores] == [s.to_dict() for s in first.scores]
    assert again.curation == first.curation
    ws = demo_runs["ws"]
    # the teacher; the KD and SFT students; the students on unfiltered and best-of-n answers
    assert ws.query_one("SELECT COUNT(*) FROM runs")[0] == 5
    stored = json.loads((ws.folder("demo") / "results.json").read_text())
    assert stored["scores"][2]["accuracy"] == first.score("after").accuracy


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_another_plan_in_the_same_demo_workspace_is_refused(demo_runs):
    from kdstudio.demo import Demo

    with pytest.raises(UserError, match="another plan.*student_steps"):
        Demo(demo_runs["ws"], DemoPlan.quick(student_steps=7)).run()


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_headless_command_prints_the_result_table(demo_runs, capsys):
    from kdstudio.cli import main

    assert main(["demo", "--headless", "--quick", "--workspace", str(demo_runs["ws"].root)]) == 0
    out = capsys.readouterr().out
    assert "teacher (trained on the references)" in out
    assert "student after (sparse_kd)" in out
    assert f"{demo_runs['first'].score('after').accuracy:.1%}" in out
    assert "student on sampled answers, best of 3 by the check" in out
    assert "Best of 3 at temperature 1:" in out


# -- the window ------------------------------------------------------------------------------


def _args(**kw):
    base = {"quick": True, "method": "sparse_kd", "threads": 1, "demo_workspace": None}
    return argparse.Namespace(**{**base, **kw})


def test_demo_workspace_defaults_beside_the_default_workspace(monkeypatch, tmp_path):
    from kdstudio.cli import Context
    from kdstudio.commands.demo import demo_workspace

    monkeypatch.setenv("KDSTUDIO_WORKSPACE", str(tmp_path / "mine"))
    assert demo_workspace(_args(), Context(None)) == tmp_path / "demo"
    assert demo_workspace(_args(), Context(tmp_path / "g")) == tmp_path / "g"
    assert demo_workspace(_args(demo_workspace=tmp_path / "d"), Context(tmp_path / "g")) == (
        tmp_path / "d"
    )


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_a_finished_demo_opens_the_studio_without_running_anything(demo_runs, monkeypatch):
    from kdstudio.commands import demo as cmd

    opened = []
    monkeypatch.setattr(cmd, "_run_app", lambda path: opened.append(path) or 0)
    monkeypatch.setattr(subprocess, "Popen", None)  # would fail if a child were started
    assert cmd.open_studio(_args(), demo_runs["ws"].root) == 0
    assert opened == [demo_runs["ws"].root]


@pytest.mark.slow  # runs the demo in a child process
def test_closing_the_studio_stops_the_demo_beside_it_cleanly(tmp_path, monkeypatch):
    """The window opens at once while the demo builds in a child; closing the window stops
    the child (Ctrl-C: it finishes its step and exits 130), leaving a resumable workspace."""
    from kdstudio.commands import demo as cmd
    from kdstudio.workspace import Workspace

    path = tmp_path / "demo"
    children = []
    real_popen = subprocess.Popen

    def popen(command, **kw):
        env = {"PYTHONPATH": str(ROOT), **__import__("os").environ}
        child = real_popen(command, env=env, stderr=subprocess.PIPE, text=True, **kw)
        children.append(child)
        return child

    def window(p):  # the user looks until the teacher has started training, then closes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and children[0].poll() is None:
            if list((p / "checkpoints").glob("demo-teacher*")) or _has_run(p, TEACHER):
                break
            time.sleep(0.3)
        return 0

    monkeypatch.setattr(cmd, "_run_app", window)
    monkeypatch.setattr(cmd.subprocess, "Popen", popen)
    assert cmd.open_studio(_args(), path) == 0
    (child,) = children
    assert child.args[:3] == [sys.executable, "-m", "kdstudio"]
    assert "--headless" in child.args and "--quick" in child.args
    err = child.stderr.read()
    assert child.returncode == 130, err
    assert "again to continue" in err
    ws = Workspace.open(path)
    try:
        assert _run(ws, TEACHER).status in ("stopped", "finished")
    finally:
        ws.close()


def _has_run(path: Path, name: str) -> bool:
    import sqlite3

    db = path / "kdstudio.sqlite"
    if not db.exists():
        return False
    con = sqlite3.connect(db, timeout=5)
    try:
        row = con.execute("SELECT status FROM runs WHERE name=?", (name,)).fetchone()
        return row is not None and row[0] == "running"
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def test_without_a_display_the_demo_says_to_use_headless(monkeypatch, tmp_path):
    from kdstudio.commands import demo as cmd

    monkeypatch.setattr(cmd.sys, "platform", "linux")
    for var in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="--headless"):
        cmd.open_studio(_args(), tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow  # runs the quick demo (trains two models)
def test_the_demo_keeps_its_step_progress_and_end_where_a_window_can_show_them(demo_runs):
    from kdstudio.demo import demo_status

    stopped = demo_runs["status_stopped"]
    assert stopped.state == "stopped" and "collecting" in stopped.step
    done, total, unit = stopped.progress
    assert unit == "request" and 1 <= done <= total
    final = demo_status(demo_runs["ws"].root)
    assert final.state == "complete" and final.progress is None
    after = demo_runs["again"].score("after").accuracy
    assert f"{after:.0%} after distillation" in final.accuracy_line()
