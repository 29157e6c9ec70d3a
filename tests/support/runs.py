"""A small trained run in a workspace, offline, for tests and demos of evaluate and export.

    run = make_trained_run(ws, tmp / "build", name="demo")              # full fine-tune
    run = make_trained_run(ws, tmp / "build", name="lo", lora=True)     # a LoRA adapter

The prompts are sums ("Quickly, what is 2 + 3?" -> "The answer is 5."); a teacher answers them over
an OpenAI-compatible endpoint whose record is stored exactly as `collect` stores it (the
endpoint URL in `responses.endpoint`, the model name), without any network. The student is
a tiny Llama trained by the real `Trainer`, so checkpoints have the real layout.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdstudio.config import TeacherConfig
from kdstudio.workspace import Workspace

#: Prompts of different lengths (so batches need padding) with one-line answers.
SUMS = [
    (f"{'Quickly, ' * ((a + b) % 3)}what is {a} + {b}?", f"The answer is {a + b}.")
    for a in range(6)
    for b in range(4)
]


def import_prompts(ws: Workspace, folder: Path, name: str, pairs: list[tuple[str, str]]) -> int:
    """Import (prompt, reference) pairs as a dataset; returns its id."""
    from kdstudio.data.importer import import_dataset

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for prompt, response in pairs:
            fh.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    return import_dataset(ws, path, name=name).dataset_id


def add_teacher_answers(
    ws: Workspace,
    *,
    collection: str,
    dataset_id: int,
    teacher: TeacherConfig,
    answers: list[str],
    params: dict[str, Any] | None = None,
) -> int:
    """A done collection of `teacher`'s answers (row i of the dataset gets answers[i])."""
    from kdstudio.collect.store import content_hash, create_collection, insert_response
    from kdstudio.teachers import Response

    if teacher.name not in ws.teacher_names():
        ws.add_teacher(teacher)
    params = params if params is not None else {"max_tokens": 64, "temperature": 0.0}
    cid = create_collection(
        ws, collection, dataset_id=dataset_id, teacher_name=teacher.name, params=params
    )
    rows = ws.query(
        "SELECT id, idx FROM dataset_rows WHERE dataset_id=? ORDER BY idx", (dataset_id,)
    )
    with ws.tx() as con:
        for (row_id, idx), text in zip(rows, answers, strict=True):
            hash_ = content_hash(["test", teacher.base_url, teacher.model, row_id, idx])
            resp = Response(text=text, endpoint=teacher.base_url, model=teacher.model)
            insert_response(con, hash_, resp)
            con.execute(
                "INSERT INTO collection_items(collection_id, row_id, sample, hash, status,"
                " updated_at) VALUES (?,?,0,?,'done',?)",
                (cid, row_id, hash_, time.time()),
            )
        con.execute("UPDATE collections SET status='done' WHERE id=?", (cid,))
    return cid


def make_trained_run(
    ws: Workspace,
    folder: Path,
    *,
    name: str = "demo",
    teacher: TeacherConfig | None = None,
    pairs: list[tuple[str, str]] | None = None,
    lora: bool = False,
    max_steps: int = 20,
    eval_fraction: float = 0.25,
    lr: float = 3e-3,
) -> Any:
    """Import prompts, store a teacher's answers, build a tiny student and train it.

    Checkpoints at `max_steps // 2` and `max_steps`. Returns the run (`runs.get_run`).
    """
    from kdstudio.demo.tiny import make_model, make_tokenizer
    from kdstudio.distill import runs
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.trainer import Trainer, run_training

    folder = Path(folder)
    pairs = pairs or SUMS
    teacher = teacher or TeacherConfig(
        name="big-teacher", base_url="https://api.example.com/v1", model="big-model-1"
    )
    dataset = f"{name}-prompts"
    dataset_id = import_prompts(ws, folder, dataset, pairs)
    collection = f"{dataset}.{teacher.name}"[:64]
    add_teacher_answers(
        ws,
        collection=collection,
        dataset_id=dataset_id,
        teacher=teacher,
        answers=[r for _, r in pairs],
    )
    tok = make_tokenizer(folder / "tok", [f"{p} {r}" for p, r in pairs], vocab_size=384)
    student = make_model(folder / "student", tok, layers=2, hidden=64)
    data: dict[str, Any] = {
        "student": {"path": str(student)},
        "data": {"collection": collection, "eval_fraction": eval_fraction, "max_length": 64},
        "optim": {"max_steps": max_steps, "batch_size": 4, "lr": lr, "warmup": 0},
        "run": {
            "name": name,
            "checkpoint_every": max(max_steps // 2, 1),
            "eval_every": max(max_steps // 2, 1),
            "log_every": max(max_steps // 2, 1),
            "device": "cpu",
        },
    }
    if lora:
        data["lora"] = {"r": 4, "alpha": 8.0, "dropout": 0.0}
    run_training(Trainer(TrainConfig.from_dict(data).resolved(), ws))
    return runs.get_run(ws, name)


#: A fake API key planted in the demo teacher's URL, query and headers (and environment):
#: no export may contain it.
PLANTED_SECRET = "sk-kdstudio-planted-7f3a9c1e5b2d4680"


@dataclass
class DemoWorkspace:
    """A workspace with trained runs `demo` (full fine-tune) and, optionally, `lo` (LoRA)."""

    root: Path
    ws: Workspace
    teacher: TeacherConfig
    runs: dict[str, Any] = field(default_factory=dict)
    secret: str = PLANTED_SECRET


def planted_teacher() -> TeacherConfig:
    """An OpenAI-compatible teacher whose URL, query and headers carry `PLANTED_SECRET`."""
    return TeacherConfig(
        name="big-teacher",
        base_url=f"https://kd-user:{PLANTED_SECRET}@api.example.com:8443/v1?api-key={PLANTED_SECRET}",
        model="big-model-1",
        headers={"Authorization": f"Bearer {PLANTED_SECRET}", "X-Api-Key": PLANTED_SECRET},
        key_source="env",
        key_env="KD_PLANTED_KEY",
    )


def make_demo_workspace(root: Path, *, lora: bool = True) -> DemoWorkspace:
    """Train `demo` (20 steps) and, with `lora`, `lo` (10 steps) on the planted teacher's
    answers to `SUMS`, in a new workspace under `root`."""
    root = Path(root)
    ws = Workspace.open(root / "ws")
    demo = DemoWorkspace(root, ws, planted_teacher())
    demo.runs["demo"] = make_trained_run(ws, root / "build-demo", name="demo", teacher=demo.teacher)
    if lora:
        demo.runs["lo"] = make_trained_run(
            ws, root / "build-lo", name="lo", teacher=demo.teacher, lora=True, max_steps=10, lr=1e-2
        )
    return demo


def make_curve_run(
    ws: Workspace,
    name: str,
    *,
    steps: int = 10_000,
    seed: int = 0,
    status: str = "finished",
    diverge_at: int | None = None,
    eval_every: int = 100,
) -> Any:
    """A run with stored curves only (no model): `steps` points of loss, CE, KD, LR, grad
    norm and tokens/s, an eval point every `eval_every` steps. From `diverge_at` on, the loss
    explodes towards 2e7 (LR 1000 without clipping did that). For plot tests and benchmarks."""
    import numpy as np

    from kdstudio.distill import runs
    from kdstudio.distill.config import TrainConfig

    config = TrainConfig.from_dict(
        {
            "student": {"path": "/synthetic"},
            "data": {"collection": "synthetic"},
            "distill": {"method": "sparse_kd"},
            "optim": {"max_steps": steps},
            "run": {"name": name},
        }
    )
    run = runs.create_run(ws, config)
    rng = np.random.default_rng(seed)
    x = np.arange(1, steps + 1, dtype=float)
    loss = 0.8 + (2.5 + 0.2 * seed) * np.exp(-x / (steps / 8)) + rng.normal(0, 0.05, steps)
    if diverge_at is not None:
        grow = np.clip((x - diverge_at) / max(steps / 50, 1), 0, None)
        loss = np.where(x >= diverge_at, loss * np.exp(np.minimum(grow, 16.8)), loss)
    lr = 1e-3 * np.minimum(1.0, x / (steps / 20)) * (1 - x / (steps + 1))
    columns = {
        "loss": loss,
        "ce": loss * 1.1,
        "kd": loss * 0.9,
        "lr": lr,
        "grad_norm": 1.0 + np.abs(rng.normal(0, 0.3, steps)),
        "tokens_per_s": 20_000 + rng.normal(0, 500, steps),
    }
    t = time.time()
    with ws.tx() as con:
        con.executemany(
            "INSERT INTO run_metrics(run_id, step, name, value, t) VALUES (?,?,?,?,?)",
            [
                (run.id, int(step), metric, float(values[i]), t)
                for metric, values in columns.items()
                for i, step in enumerate(x)
            ]
            + [
                (run.id, int(step), "eval_loss", float(loss[int(step) - 1] + 0.1), t)
                for step in x[eval_every - 1 :: eval_every]
            ],
        )
    runs.update_run(
        ws,
        run.id,
        step=steps,
        summary={"loss": float(loss[-1]), "total_steps": steps, "steps": steps},
    )
    if status != "created":
        runs.set_status(ws, run.id, status)
    return runs.get_run(ws, name)
