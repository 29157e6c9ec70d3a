"""A prepared workspace and one screenshot per panel (`scripts/screenshots OUT_DIR`).

Everything is real and offline: prompts imported by the data core, a loopback
OpenAI-protocol teacher probed and collected from (with logprobs and a few failures),
a tiny Llama student trained by the real Trainer (so the run has curves) and evaluated,
then exported as a local teacher and distilled into a fresh student with dense_kd (so the
loss plot has total, CE and KD curves, and Runs overlays two runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

KEY_ENV = "KDSTUDIO_SHOWCASE_KEY"


def build_workspace(root: Path, *, steps: int = 150, log=print) -> dict:
    """Fill a workspace at root/ws; returns names of what it made. Takes ~1 minute on a CPU."""
    from support.gui import tiny_student, write_prompts

    from kdstudio.config import TeacherConfig
    from kdstudio.data import import_dataset
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.trainer import Trainer, run_training
    from kdstudio.evaluate import EvalConfig, evaluate
    from kdstudio.events import CancelToken, NullSink
    from kdstudio.export import ExportConfig, export
    from kdstudio.workspace import Workspace

    ws = Workspace.open(root / "ws")
    log("importing prompts")
    prompts = write_prompts(root / "arithmetic-prompts.jsonl", 240)
    import_dataset(ws, prompts, name="arithmetic", as_collection="arithmetic-reference")
    log("building a tiny student")
    student = tiny_student(root / "models")
    log(f"training it for {steps} steps")
    config = TrainConfig.from_dict(
        {
            "student": {"path": str(student)},
            "data": {"collection": "arithmetic-reference", "eval_fraction": 0.1},
            "optim": {"max_steps": steps, "batch_size": 8, "lr": 3e-3, "warmup": 10},
            "run": {"name": "tiny-sft", "log_every": 1, "eval_every": 25, "checkpoint_every": 50},
        }
    )
    run_training(Trainer(config, ws, NullSink(), CancelToken()))
    log("evaluating it")
    evaluate(EvalConfig(run="tiny-sft", limit=12, max_new_tokens=16), ws, NullSink(), CancelToken())
    log("exporting it as a local teacher and distilling a fresh student from it (dense_kd)")
    teacher_dir = root / "models" / "tiny-sft-teacher"
    export(ExportConfig(run="tiny-sft", out=teacher_dir), ws, NullSink(), CancelToken())
    ws.add_teacher(
        TeacherConfig(name="tiny-sft-teacher", kind="local", path=str(teacher_dir)), replace=True
    )
    data = config.to_dict()
    data["distill"] = {"method": "dense_kd", "teacher": "tiny-sft-teacher", "kd_weight": 0.5}
    data["run"].update({"name": "tiny-kd", "checkpoint_every": 0})
    run_training(Trainer(TrainConfig.from_dict(data), ws, NullSink(), CancelToken()))
    ws.close()
    return {"workspace": root / "ws", "run": "tiny-sft", "dataset": "arithmetic"}


def _settle(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def _wait(app, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.02)
    return False


def take_screenshots(out: Path, root: Path, *, log=print) -> list[Path]:
    from support.gui import prepare_app
    from support.openai_server import OpenAIServer

    from kdstudio.config import TeacherConfig
    from kdstudio.gui.main_window import MainWindow
    from kdstudio.workspace import Workspace

    app = prepare_app(root / "settings")
    os.environ[KEY_ENV] = "sk-showcase-fake-key-for-screenshots"
    server = OpenAIServer(latency=0.03, api_key=os.environ[KEY_ENV]).start()
    ws = Workspace.open(root / "ws")
    ws.add_teacher(
        TeacherConfig(
            name="loopback-teacher",
            base_url=server.url,
            model="teacher-1",
            key_source="env",
            key_env=KEY_ENV,
            price_in=0.15,
            price_out=0.6,
        ),
        replace=True,
    )
    ws.add_teacher(
        TeacherConfig(
            name="gpt-4o-mini",
            base_url="https://api.openai.com/v1",
            model="gpt-4o-mini",
            key_source="env",
            key_env="OPENAI_API_KEY",
            price_in=0.15,
            price_out=0.6,
        ),
        replace=True,
    )
    window = MainWindow(ws)
    window.resize(1440, 900)
    window.show()
    _settle(app)
    shots: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)

    def grab(name: str) -> None:
        _settle(app, 0.4)
        window.update_jobs_label()  # the status bar polls every 500 ms; show the current state
        path = out / f"{len(shots) + 1:02d}-{name}.png"
        window.grab().save(str(path))
        shots.append(path)
        log(f"saved {path}")

    teachers = window.show_panel("teachers")
    teachers.refresh()
    teachers.select_teacher("loopback-teacher")
    teachers.probe_selected()
    _wait(app, lambda: not teachers.running_jobs(), 30)
    grab("teachers")

    datasets = window.show_panel("datasets")
    datasets.refresh()
    datasets.select_dataset("arithmetic")
    datasets.table.selectRow(2)
    grab("datasets")

    collect = window.show_panel("collect")
    collect.refresh()
    collect.teacher_box.setCurrentText("loopback-teacher")
    collect.dataset_box.setCurrentText("arithmetic")
    collect.main_form.set_values(
        {"top_logprobs": 5, "concurrency": 16, "budget": 0.05, "max_tokens": 24}
    )
    server.add_fault("400", times=3, message="This model's maximum context length is 8 tokens")
    server.add_fault("500", times=4)
    collect.start()  # estimates first, then offers to start
    _wait(app, lambda: not collect.running_jobs(), 30)
    collect.on_message_action()
    _wait(app, lambda: not collect.running(), 60)
    grab("collect")

    outputs = window.show_panel("outputs")
    outputs.show_collection("arithmetic.loopback-teacher")
    outputs.table.selectRow(5)
    grab("outputs")

    train = window.show_panel("train")
    train.refresh()
    train.show_run("tiny-kd")
    train.example_index.setValue(2)
    train.preview()
    _wait(app, lambda: not train.running_jobs(), 60)
    grab("train")

    runs = window.show_panel("runs")
    runs.refresh()
    runs.table.selectAll()  # both runs: their curves overlay
    runs.tabs.setCurrentIndex(0)
    grab("runs")
    runs.table.clearSelection()
    runs.select_run("tiny-sft")  # the evaluated one
    runs.tabs.setCurrentIndex(1)
    runs.items_table.selectRow(1)
    grab("runs-evaluation")

    window.close()
    server.stop()
    ws.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a prepared workspace and save one PNG per panel."
    )
    parser.add_argument("out", type=Path, help="folder for the PNG files")
    parser.add_argument("--keep", type=Path, default=None, help="build the workspace here (kept)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of the tiny run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    def log(msg: str) -> None:
        print(f"screenshots: {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="kdstudio-shots-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "ws" / "kdstudio.sqlite").exists():
            build_workspace(root, steps=args.steps, log=log)
        shots = take_screenshots(args.out, root, log=log)
    print("\n".join(str(p) for p in shots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
