"""`torchrun --nproc-per-node 2` on CPU (gloo): DDP and FSDP (`fully_shard`) give the same
losses as one process with the same global batch; stop and resume work across the same
world size; rank 0 alone writes metrics and checkpoints; the CLI runs unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from train_support import (
    ROOT,
    env,
    losses,
    make_config,
    single_thread,
    student,
    train,
    workspace_with_collection,
)

pytestmark = pytest.mark.slow  # torchrun with two processes

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from train_support import make_config, train
from kdstudio.events import CancelToken, Metrics
from kdstudio.workspace import Workspace

ws_path, student = sys.argv[1:3]
ws = Workspace.open(ws_path)

class StopAt2:
    def __init__(self, cancel):
        self.cancel = cancel
    def emit(self, event):
        if isinstance(event, Metrics) and event.step == 2 and "loss" in event.values:
            self.cancel.cancel("test")

dist.init_process_group("gloo")
for name, parallel in (("ddp", "ddp"), ("fsdp", "fsdp")):
    config = make_config(student, optim={{"max_steps": 4, "batch_size": 2}},
                         run={{"name": name, "parallel": parallel}})
    cancel = CancelToken()
    assert train(ws, config, StopAt2(cancel), cancel).status == "stopped"
    assert train(ws, config, resume=True).status == "finished"
dist.destroy_process_group()
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


def test_two_processes_match_one_and_resume(tmp_path):
    from train_support import config_dict, write_toml

    from kdstudio.distill.checkpoint import list_checkpoints
    from kdstudio.distill.runs import get_run

    path = student(tmp_path)
    ws = workspace_with_collection(tmp_path / "ws")
    train(ws, make_config(path, optim={"max_steps": 4, "batch_size": 4}, run={"name": "one"}))
    conf = write_toml(
        tmp_path / "c.toml",
        config_dict(
            path,
            optim={"max_steps": 2, "batch_size": 2},
            run={"name": "cli", "report_to": ["tensorboard"]},
        ),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(ROOT / "tests")))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    proc = subprocess.run(
        [*torchrun, str(driver), str(tmp_path / "ws"), str(path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = [
        *torchrun,
        "-m",
        "kdstudio",
        "--workspace",
        str(tmp_path / "ws"),
        "train",
        "--config",
        str(conf),
        "--quiet",
    ]
    proc = subprocess.run(cli, env=env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = losses(ws, "one")
    for name in ("ddp", "fsdp"):
        run = get_run(ws, name)
        assert run.status == "finished" and run.world_size == 2
        curve = losses(ws, name)
        assert curve.keys() == one.keys()
        for step in one:
            assert curve[step] == pytest.approx(one[step], rel=1e-5), (name, step)
        assert [c.step for c in list_checkpoints(ws, name)] == [2, 4]
        starts = [e for e in ws.events("train", str(run.id)) if "starting" in e.get("message", "")]
        assert len(starts) == 1  # rank 0 alone reports
    assert get_run(ws, "cli").status == "finished"
    assert losses(ws, "cli")[2] == pytest.approx(losses(ws, "ddp")[2], rel=1e-5)
    assert not any(p.name.startswith(".") for p in (ws.checkpoints_dir / "cli").iterdir())
    # the tracker is rank 0's alone: one event file, one point a step
    events = list((tmp_path / "ws" / "tensorboard" / "cli").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]
    ws.close()
    shutil.rmtree(tmp_path / "ws", ignore_errors=True)


def test_one_process_under_torchrun_runs_fsdp_and_a_ctrl_c_stops_it_after_a_checkpoint(tmp_path):
    """torchrun --nproc-per-node 1 joins a process group, so `run.parallel = "fsdp"` shards
    (refused before: "needs several processes"); the terminal's Ctrl-C reaches the worker twice
    (directly and relayed by torchrun) and still stops it cleanly, then --resume finishes it."""
    import signal
    import time

    from train_support import config_dict, write_toml

    from kdstudio.distill.checkpoint import list_checkpoints
    from kdstudio.distill.runs import get_run

    path = student(tmp_path)
    ws = workspace_with_collection(tmp_path / "ws")
    conf = write_toml(
        tmp_path / "c.toml",
        config_dict(
            path,
            optim={"max_steps": 120, "batch_size": 2},
            run={"name": "one", "parallel": "fsdp", "checkpoint_every": 2, "log_every": 10},
        ),
    )
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc-per-node", "1", "-m", "kdstudio", "--workspace", str(tmp_path / "ws")]
    proc = subprocess.Popen(
        [*launch, "train", "--config", str(conf), "--quiet"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    folder = tmp_path / "ws" / "checkpoints" / "one"
    deadline = time.monotonic() + 180
    while not (folder.exists() and any(folder.glob("step-*"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, _ = proc.communicate(timeout=120)
    run = get_run(ws, "one")
    assert run.status == "stopped", out[-3000:]
    stopped_at = run.step
    assert 2 <= stopped_at < 120
    assert list_checkpoints(ws, "one")[-1].step == stopped_at  # the stop's own checkpoint
    done = subprocess.run(
        [*launch, "train", "--resume", "one", "--quiet"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = get_run(ws, "one")
    assert (run.status, run.step, run.world_size) == ("finished", 120, 1)
    ws.close()
