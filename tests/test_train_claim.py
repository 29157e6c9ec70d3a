"""One process at a time trains a run: the run is claimed (lease + heartbeat) before its
setup, a second `train --resume` is refused naming the holder, a dead holder's claim is
taken over, and a run that has ended gives its claim up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_support import (
    env,
    losses,
    make_config,
    single_thread,
    student,
    train,
    workspace_with_collection,
)

from kdstudio.distill import runs
from kdstudio.errors import UserError
from kdstudio.events import CancelToken, Metrics


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


@pytest.fixture
def stopped_run(tmp_path):
    """Run `r` stopped by its user at step 2 of 12 (a checkpoint there)."""
    path = student(tmp_path)
    ws = workspace_with_collection(tmp_path / "ws")
    cancel = CancelToken()

    class StopAtStep2:
        def emit(self, event):
            if isinstance(event, Metrics) and event.step == 2:
                cancel.cancel()

    config = make_config(path, optim={"max_steps": 12}, run={"name": "r"})
    assert train(ws, config, StopAtStep2(), cancel).status == "stopped"
    yield ws, config
    ws.close()


def test_a_run_that_ended_holds_no_claim(stopped_run):
    """A stopped run used to keep its trainer's pid: while that process (the window) lived,
    `train --resume` elsewhere was refused."""
    ws, _ = stopped_run
    run = runs.get_run(ws, "r")
    assert run.status == "stopped" and run.pid is None


def test_a_second_resume_is_refused_naming_the_holder_before_it_loads_anything(
    stopped_run, tmp_path
):
    ws, _ = stopped_run
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the first `train --resume r` is setting up: it holds the claim, status still stopped
        ws.db.execute(
            "UPDATE runs SET pid=?, host=?, heartbeat=strftime('%s','now') WHERE name='r'",
            (holder.pid, os.uname().nodename),
        )
        before = dict(ws.query_one("SELECT eval_rows, step, updated_at FROM runs"))
        second = subprocess.run(
            [sys.executable, "-m", "kdstudio", "--workspace", str(ws.root)]
            + ["train", "--resume", "r", "--quiet"],
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr
    assert f"process {holder.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert dict(ws.query_one("SELECT eval_rows, step, updated_at FROM runs")) == before


def test_a_resume_that_started_before_another_finished_the_run_does_not_train_it_again(
    stopped_run,
):
    """Both passed the early status check; the first trained the run to its end. The second
    used to claim it afterwards and train it again, rewriting its checkpoints and metrics."""
    from kdstudio.distill.trainer import Trainer, run_training

    ws, config = stopped_run
    late = Trainer.for_resume(ws, "r")
    assert train(ws, config, resume=True).status == "finished"
    curve = losses(ws, "r")
    with pytest.raises(UserError, match="run 'r' has finished"):
        run_training(late)
    assert losses(ws, "r") == curve
    assert runs.get_run(ws, "r").status == "finished"


def test_a_claim_whose_holder_died_is_taken_over(stopped_run):
    ws, config = stopped_run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ws.db.execute(
        "UPDATE runs SET status='running', pid=?, host=? WHERE name='r'",
        (dead.pid, os.uname().nodename),
    )
    assert runs.get_run(ws, "r").status == "interrupted"
    result = train(ws, config, resume=True)
    assert result.status == "finished" and result.step == 12
    assert runs.get_run(ws, "r").pid is None
