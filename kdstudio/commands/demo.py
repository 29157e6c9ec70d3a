"""`kdstudio demo [--headless]`: the whole distillation job offline, on a task it generates.

Without `--headless`, the studio opens on the demo workspace at once; while the demo is not
finished, the pipeline runs beside it as `kdstudio demo --headless` in a child process (its
progress in this terminal, its runs, collection and curves in the window as they appear).
Closing the window stops the child cleanly (after the current step, with a checkpoint); the
next `kdstudio demo` continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdstudio.errors import Cancelled, UserError

CHILD_STOP_TIMEOUT_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a ready demo workspace that works offline (trains a teacher, distils a student)",
        description="Build (or reopen) a demo workspace: a task with checkable answers, a "
        "local teacher trained on it, a collection of its answers with logprobs and a smaller "
        "student distilled from them; then open the studio on it. Needs no key and no network.",
    )
    p.add_argument(
        "--workspace",
        dest="demo_workspace",
        metavar="DIR",
        type=Path,
        help="the demo workspace (default: a `demo` folder beside the default workspace)",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="run the demo in the terminal and print the result table (no window)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a shrunken demo (seconds instead of minutes; for trying things out and tests)",
    )
    p.add_argument(
        "--method",
        choices=("sparse_kd", "dense_kd"),
        default="sparse_kd",
        help="how the student learns from the teacher: its stored top-k logprobs (sparse_kd, "
        "default) or its full distribution, run alongside (dense_kd)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default 1: the models are tiny, and extra threads slow "
        "down on a busy machine); 0 leaves torch's own choice",
    )
    p.add_argument("--json", action="store_true", help="--headless: print one JSON document")
    p.set_defaults(func=cmd_demo)


def demo_workspace(args: argparse.Namespace, ctx: Any) -> Path:
    """`demo --workspace`, else the global `--workspace`, else `demo` beside the default."""
    from kdstudio.demo import default_workspace

    path = args.demo_workspace or ctx.workspace_path or default_workspace()
    return Path(path).expanduser().resolve()


def make_plan(args: argparse.Namespace) -> Any:
    from kdstudio.demo import DemoPlan

    preset = DemoPlan.quick if args.quick else DemoPlan.full
    return preset(method=args.method)


def cmd_demo(args: argparse.Namespace, ctx: Any) -> int:
    if args.threads < 0:
        raise UserError("--threads must be 0 (torch's choice) or a positive number")
    path = demo_workspace(args, ctx)
    if args.headless:
        return run_headless(args, ctx, path)
    return open_studio(args, path)


def run_headless(args: argparse.Namespace, ctx: Any, path: Path) -> int:
    # Before torch loads: idle OpenMP threads sleep instead of spinning on a busy machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from kdstudio.cli import stop_on_signals
    from kdstudio.demo import Demo
    from kdstudio.events import CancelToken, ConsoleSink
    from kdstudio.workspace import Workspace

    ctx._ws = ws = Workspace.open(path)  # the context closes it
    cancel = CancelToken()
    sink = ConsoleSink(quiet=args.json)
    print(f"kdstudio demo: workspace {path}", file=sys.stderr)
    demo = Demo(ws, make_plan(args), sink, cancel, threads=args.threads or None)
    with stop_on_signals(cancel, "after the current step (what is done is kept)"):
        try:
            result = demo.run()
        except Cancelled as exc:
            raise Cancelled(f"{exc} (run `kdstudio demo` again to continue)") from None
    if args.json:
        ctx.print_json(result.to_dict())
        return 0
    print()
    print(
        f"Task accuracy on {result.score('teacher').n} held-out prompts (answers checked by "
        "a program; neither model saw these prompts):"
    )
    ctx.print_table(result.HEADERS, result.rows())
    if result.curation:
        print(result.curation_line()[:1].upper() + result.curation_line()[1:] + ".")
    print()
    print(result.timing_line())
    print(f"Open it in the studio: kdstudio demo --workspace {path}")
    return 0


def child_command(args: argparse.Namespace, path: Path) -> list[str]:
    """The command line of the headless demo that runs beside the window."""
    if getattr(sys, "frozen", False):  # a bundled app: the executable is kdstudio itself
        cmd = [sys.executable]
    else:
        cmd = [sys.executable, "-m", "kdstudio"]
    cmd += ["demo", "--headless", "--workspace", str(path), "--method", args.method]
    cmd += ["--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    return cmd


def check_display() -> None:
    """On Linux without a display, Qt would abort: say so before starting anything."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError(
            "no display to open the studio on (neither DISPLAY nor WAYLAND_DISPLAY is set): "
            "run `kdstudio demo --headless` for the terminal version"
        )


def open_studio(args: argparse.Namespace, path: Path) -> int:
    """Open the window on the demo workspace; finish the demo beside it when needed."""
    check_display()
    from kdstudio.demo import is_complete, stored_result
    from kdstudio.workspace import Workspace

    ws = Workspace.open(path)
    try:
        stored = stored_result(ws) if is_complete(ws) else None
    finally:
        ws.close()
    child = None
    if stored:
        acc = {s["model"]: s["accuracy"] for s in stored["scores"]}
        sft = f", {acc['sft']:.0%} with SFT alone" if "sft" in acc else ""
        print(
            f"kdstudio demo: opening {path} (held-out accuracy: teacher {acc['teacher']:.0%}, "
            f"student {acc['before']:.0%} before and {acc['after']:.0%} after distillation"
            f"{sft})",
            file=sys.stderr,
        )
    else:
        print(
            "kdstudio demo: building the demo in this terminal while the studio opens on "
            f"{path}; its runs and collection appear in the window as they are made.",
            file=sys.stderr,
        )
        child = subprocess.Popen(child_command(args, path))
    try:
        code = _run_app(path)
    finally:
        if child is not None:
            stop_child(child)
    return code


def _run_app(path: Path) -> int:
    from kdstudio.demo import STUDENT
    from kdstudio.gui.app import run_app

    return run_app(path, start_panel="runs", select_run=STUDENT)


def stop_child(child: subprocess.Popen, timeout: float = CHILD_STOP_TIMEOUT_S) -> int | None:
    """Ask a running headless demo to stop after its current step (it saves a checkpoint),
    and wait for it; returns its exit code (None if it had to be killed)."""
    if child.poll() is not None:
        return child.returncode
    print(
        "kdstudio demo: stopping the demo (run `kdstudio demo` again to continue)", file=sys.stderr
    )
    child.send_signal(signal.SIGINT)
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return None
