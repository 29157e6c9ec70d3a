"""Helpers for the training tests: one tiny student and collection per session, configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_STUDENT: dict[str, Path] = {}


def single_thread():
    """Fixture body: torch on one thread for a module (steady and fast on a busy machine;
    subprocesses get OMP_NUM_THREADS=1 too, so results compare across processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def student(tmp_root: Path) -> Path:
    """A 2-layer, hidden-64 Llama with a tokenizer trained on the memorisable pairs (cached)."""
    from support.train_data import make_student, memorisable_pairs, texts_of

    if "path" not in _STUDENT:
        _STUDENT["path"] = make_student(tmp_root / "student", texts_of(memorisable_pairs(24)))
    return _STUDENT["path"]


def workspace_with_collection(path: Path, name: str = "tiny", n: int = 24, **kw: Any):
    from support.train_data import make_collection, memorisable_pairs

    from kdstudio.workspace import Workspace

    ws = Workspace.open(path)
    make_collection(ws, name, memorisable_pairs(n), **kw)
    return ws


def config_dict(student_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    base = {
        "student": {"path": str(student_path)},
        "data": {"collection": "tiny", "eval_fraction": 0.2, "max_length": 48},
        "optim": {"max_steps": 8, "batch_size": 4, "lr": 3e-3, "warmup": 1},
        "run": {"name": "t", "log_every": 1, "eval_every": 0, "checkpoint_every": 0},
    }
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return base


def make_config(student_path: Path, **sections: dict[str, Any]):
    from kdstudio.distill.config import TrainConfig

    return TrainConfig.from_dict(config_dict(student_path, **sections))


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    from kdstudio.config import dumps_toml

    path.write_text(dumps_toml(data), encoding="utf-8")
    return path


def train(ws, config, sink=None, cancel=None, *, resume: bool = False):
    from kdstudio.distill.trainer import Trainer, run_training

    if resume:
        return run_training(Trainer.for_resume(ws, config.run.name, sink, cancel))
    return run_training(Trainer(config, ws, sink, cancel))


def losses(ws, run_name: str) -> dict[int, float]:
    """{step: loss} as reported to the store."""
    from kdstudio.distill.runs import get_run

    run = get_run(ws, run_name)
    rows = ws.query(
        "SELECT step, value FROM run_metrics WHERE run_id=? AND name='loss' ORDER BY step",
        (run.id,),
    )
    return {r["step"]: r["value"] for r in rows}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
