"""Run records: status, and `interrupted` for a run whose process is gone."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from train_support import make_config

from kdstudio.distill import runs
from kdstudio.errors import NotFound, UserError


def test_a_running_run_whose_process_died_reads_interrupted(ws, tmp_path):
    config = make_config(tmp_path).resolved()
    run = runs.create_run(ws, config)
    assert run.status == "created" and run.config["optim"]["lr"] == config.optim.lr
    runs.set_status(ws, run.id, "running")
    assert runs.get_run(ws, "t").status == "running"  # this process is alive
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    ws.db.execute("UPDATE runs SET pid=? WHERE id=?", (int(dead), run.id))
    assert runs.get_run(ws, "t").status == "interrupted"
    ws.db.execute(
        "UPDATE runs SET host='elsewhere', heartbeat=? WHERE id=?", (time.time() - 3600, run.id)
    )
    assert runs.get_run(ws, "t").status == "interrupted"
    ws.db.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), run.id))
    assert runs.get_run(ws, "t").status == "running"
    assert socket.gethostname() != "elsewhere"


def test_names_are_unique_and_lookups_name_the_known_runs(ws, tmp_path):
    config = make_config(tmp_path).resolved()
    runs.create_run(ws, config)
    with pytest.raises(UserError, match="--resume t"):
        runs.create_run(ws, config)
    with pytest.raises(NotFound, match=r"known: t"):
        runs.get_run(ws, "nope")
    with pytest.raises(ValueError):
        runs.set_status(ws, 1, "interrupted")  # derived, never stored


def test_latest_metrics_are_each_metrics_value_at_its_highest_step(ws, tmp_path):
    run = runs.create_run(ws, make_config(tmp_path).resolved())
    assert runs.latest_metrics(ws, run.id) == {}
    ws.add_metrics(run.id, 10, {"loss": 2.0, "lr": 1e-3}, time.time())
    ws.add_metrics(run.id, 20, {"loss": 1.5}, time.time())
    ws.add_metrics(run.id, 15, {"eval_loss": 1.8, "loss": 9.0}, time.time())  # a late write
    other = runs.create_run(ws, make_config(tmp_path, run={"name": "u"}).resolved())
    ws.add_metrics(other.id, 99, {"loss": 0.1}, time.time())
    assert runs.latest_metrics(ws, run.id) == {
        "loss": (20, 1.5),
        "lr": (10, 1e-3),
        "eval_loss": (15, 1.8),
    }
