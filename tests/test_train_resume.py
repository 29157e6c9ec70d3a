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
    assert get_run(ws, "victim").status == "interrupted"
    assert [c.step for c in list_checkpoints(ws, "victim")] == [4]
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
