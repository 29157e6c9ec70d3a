"""Resume after a real process death: kill -9 between checkpoints, kill -9 while saving, and
Ctrl-C through the CLI (exit 130 after a checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from train_support import (
    ROOT,
    config_dict,
    env,
    losses,
    make_config,
    python,
    single_thread,
    student,
    train,
    workspace_with_collection,
    write_toml,
)

pytestmark = pytest.mark.slow  # training processes killed and resumed

DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from train_support import make_config, train
from kdstudio.distill.trainer import Trainer
from kdstudio.events import Metrics
from kdstudio.workspace import Workspace

ws_path, student, mode = sys.argv[1:4]
import kdstudio.distill.runs
kdstudio.distill.runs.HEARTBEAT_EVERY_S = 0  # the run's row says every step it reaches

class KillAtStep6:
    def emit(self, event):
        if isinstance(event, Metrics) and event.step == 6 and "loss" in event.values:
            os.kill(os.getpid(), signal.SIGKILL)

original = Trainer._write_files
def dying_write(self, model_state, state, folder):
    if self.step == 8:  # the second checkpoint: half written, then the process dies
        self._unwrapped().save_pretrained(folder / "model")
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, model_state, state, folder)
if mode == "during-save":
    Trainer._write_files = dying_write

config = make_config(student, **{config!r})
train(Workspace.open(ws_path), config, KillAtStep6() if mode == "between" else None)
"""
KW = {"optim": {"max_steps": 10}, "run": {"name": "victim", "checkpoint_every": 4}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    path = student(root)
    ws = workspace_with_collection(root / "ref-ws")
    train(ws, make_config(path, **{**KW, "run": {**KW["run"], "name": "ref"}}))
    curve = losses(ws, "ref")
    ws.close()
    return path, curve


@pytest.mark.parametrize("mode", ["between", "during-save"])
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_loss(reference, tmp_path, mode):
    from kdstudio.distill.checkpoint import list_checkpoints
    from kdstudio.distill.runs import get_run

    path, ref = reference
    ws = workspace_with_collection(tmp_path / "ws")
    code = DRIVER.format(tests=str(ROOT / "tests"), config=KW)
    proc = python(code, str(tmp_path / "ws"), str(path), mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = get_run(ws, "victim")
    assert killed.status == "interrupted"
    assert [c.step for c in list_checkpoints(ws, "victim")] == [4]
    assert killed.step == 4  # where a resume continues, not the step it died at (`runs list`)
    if mode == "during-save":
        assert any(p.name.startswith(".tmp-") for p in (ws.checkpoints_dir / "victim").iterdir())
    before = losses(ws, "victim")
    assert 4 <= max(before) <= (6 if mode == "between" else 8)  # metrics are stored each second

    result = train(ws, make_config(path, **KW), resume=True)
    assert result.status == "finished" and result.step == 10
    after = losses(ws, "victim")
    assert after[10] == pytest.approx(ref[10], rel=1e-5)
    for step in range(5, 11):  # the lost steps were repeated, to the same values
        assert after[step] == pytest.approx(ref[step], rel=1e-5)
    assert not any(p.name.startswith(".tmp-") for p in (ws.checkpoints_dir / "victim").iterdir())
    ws.close()


def test_ctrl_c_checkpoints_exits_130_and_the_run_reads_stopped(reference, tmp_path, capsys):
    from kdstudio.cli import main
    from kdstudio.distill.checkpoint import list_checkpoints

    path, _ = reference
    ws = workspace_with_collection(tmp_path / "ws")
    data = config_dict(path, optim={"max_steps": 400}, run={"name": "cc", "checkpoint_every": 0})
    conf = write_toml(tmp_path / "c.toml", data)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdstudio",
            "--workspace",
            str(tmp_path / "ws"),
            "train",
            "--config",
            str(conf),
        ],
        env=env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if line.startswith("step 2 "):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped" in err
    steps = [c.step for c in list_checkpoints(ws, "cc")]
    assert len(steps) == 1 and 2 <= steps[0] < 400

    capsys.readouterr()
    assert main(["--workspace", str(tmp_path / "ws"), "runs", "show", "cc", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "stopped" and doc["step"] == steps[0]
    assert doc["config"]["optim"]["max_steps"] == 400
    assert [c["step"] for c in doc["checkpoints"]] == steps
    assert main(["--workspace", str(tmp_path / "ws"), "runs", "list", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["cc"]
    ws.close()


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_temporary_folder(reference, tmp_path):
    """The checkpoints on a small tmpfs (one checkpoint fits, two do not; where this machine
    can mount one, else a save that fails with ENOSPC half-way): the failed save removes
    its temporary folder at once, so the space is free again, the run records the failure
    in one line, and `train --resume` works once there is room."""
    from support.small_disk import mount_namespace, run_on_tmpfs

    from kdstudio.distill.runs import get_run

    path, _ = reference
    ws = workspace_with_collection(tmp_path / "ws")
    data = config_dict(path, optim={"max_steps": 6}, run={"name": "full", "checkpoint_every": 2})
    conf = write_toml(tmp_path / "c.toml", data)
    folder = ws.checkpoints_dir / "full"
    cli = f"{sys.executable} -m kdstudio --workspace {ws.root}"
    prefix = mount_namespace()
    if prefix is not None:
        out = tmp_path / "out"
        out.mkdir()
        script = (
            f"{cli} train --config {conf} --quiet 2> {out}/err1\n"
            f"echo $? > {out}/rc1\n"
            f"ls -a {folder} > {out}/left\n"
            f"mount -o remount,size=40m tmpfs {ws.checkpoints_dir}\n"  # room again
            f"{cli} train --resume full --quiet 2> {out}/err2\n"
            f"echo $? > {out}/rc2\n"
        )
        result = run_on_tmpfs(prefix, ws.checkpoints_dir, "3500k", script, env=env())
        assert result.returncode == 0, result.stderr
        rc1, rc2 = (int((out / f"rc{i}").read_text()) for i in (1, 2))
        err1, err2 = (out / "err1").read_text(), (out / "err2").read_text()
        left = (out / "left").read_text().split()
    else:
        code = DRIVER_ENOSPC.format(tests=str(ROOT / "tests"))
        failed = python(code, str(ws.root), str(conf))
        rc1, err1 = failed.returncode, failed.stderr
        left = [p.name for p in folder.iterdir()]
        resumed = python(RESUME, str(ws.root))
        rc2, err2 = resumed.returncode, resumed.stderr
    assert rc1 == 1, err1
    lines = err1.strip().splitlines()
    assert sum("the disk is full" in line for line in lines) == 1, err1  # said once
    assert any(line.startswith("error: the disk is full") for line in lines), err1
    assert lines[-1].startswith("kdstudio: failed: run full failed at step "), err1
    assert "`kdstudio train --resume full` continues it" in lines[-1]
    assert "Traceback" not in err1
    assert not [name for name in left if name.startswith(".tmp-")], left
    assert "step-0000002" in left
    run = get_run(ws, "full")
    assert run.status in ("failed", "finished")
    assert rc2 == 0, err2
    assert get_run(ws, "full").status == "finished"
    ws.close()


DRIVER_ENOSPC = """
import errno, sys
sys.path.insert(0, {tests!r})
from kdstudio.cli import main
from kdstudio.distill.trainer import Trainer

original = Trainer._write_files
def full_disk(self, model_state, state, folder):
    if self.step == 4:  # the second checkpoint: the disk fills up half-way through it
        self._unwrapped().save_pretrained(folder / "model")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "trainer_state.pt"))
    original(self, model_state, state, folder)
Trainer._write_files = full_disk
ws_path, conf = sys.argv[1:3]
sys.exit(main(["--workspace", ws_path, "train", "--config", conf, "--quiet"]))
"""
RESUME = """
import sys
from kdstudio.cli import main
sys.exit(main(["--workspace", sys.argv[1], "train", "--resume", "full", "--quiet"]))
"""
