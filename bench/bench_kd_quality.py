"""Does KD help here? Task accuracy of one student trained by each method from one teacher.

The demo's task (reverse letters, sort digits: every answer checked by a program), its
teacher (0.87M parameters, trained on the reference answers) and its collection (the
teacher's greedy answers to 2,000 prompts with top-20 logprobs and token ids). Then the
demo's 0.11M student, from a fresh random init per seed, trained with each method on the
same collection, steps, learning rate and data order:

    sft         cross-entropy on the teacher's text
    sparse_kd   + the teacher's stored top-20 (kd_weight 0.5)
    dense_kd    + the local teacher's full distribution, generalized JSD (beta 0.5)
    on_policy   dense_kd (JSD) where half the batches are written by the student (GKD)

and scored on the 200 held-out prompts. Printed side by side: mean, min and max accuracy over
the seeds, each seed's figure, and the teacher's. A difference inside the seeds' range is no
difference.

    python bench/bench_kd_quality.py [--seeds 0 1 2] [--steps 600] [--methods ...]
                                     [--workdir DIR] [--json OUT]

With --workdir the teacher, the collection and finished runs are reused by a later call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

METHODS = {
    "sft": {"method": "sft"},
    "sparse_kd": {"method": "sparse_kd", "kd_weight": 0.5},
    "dense_kd": {"method": "dense_kd", "divergence": "jsd", "kd_weight": 0.5},
    "on_policy": {"method": "dense_kd", "divergence": "jsd", "kd_weight": 0.5, "on_policy": 0.5},
}


def prepare(workdir: Path, steps: int):
    """The demo's task, teacher and collection in `workdir` (reused when there)."""
    from kdstudio.demo import Demo, DemoPlan
    from kdstudio.events import ConsoleSink
    from kdstudio.workspace import Workspace

    ws = Workspace.open(workdir / "ws")
    demo = Demo(ws, DemoPlan.full(student_steps=steps), ConsoleSink(quiet=True))
    for step in (demo.make_task, demo.make_models, demo.train_teacher, demo.collect):
        step()
    return demo


def student_init(demo, seed: int) -> Path:
    """The demo's student architecture, initialised from `seed`."""
    from kdstudio.demo.tiny import make_model

    path = demo.folder / f"student-init-seed{seed}"
    if not (path / "config.json").exists():
        p = demo.plan
        make_model(
            path,
            demo.tokenizer_dir,
            layers=p.student_layers,
            hidden=p.student_hidden,
            seed=seed,
            max_positions=128,
        )
    return path


def train_and_score(demo, method: str, seed: int) -> tuple[float, float]:
    """(held-out accuracy, seconds) of the student trained with `method` from `seed`."""
    from kdstudio.demo import TEACHER
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.distill.plan import pick_device

    distill = dict(METHODS[method])
    if distill["method"] == "dense_kd":
        distill["teacher"] = TEACHER
    name = f"quality-{method}-seed{seed}"
    config = demo.train_config(
        name, student_init(demo, seed), demo.collection, seed=seed, **distill
    )
    t0 = time.perf_counter()
    demo.train(config)
    seconds = time.perf_counter() - t0
    device = pick_device("auto")
    model, tok = ckpt.load_student(demo.ws, name, "last", str(device))
    score, _ = demo.score_model(method, model, tok, device)
    return score.accuracy, seconds


def teacher_accuracy(demo) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdstudio.distill.plan import pick_device

    device = pick_device("auto")
    model = AutoModelForCausalLM.from_pretrained(demo.teacher_dir).to(device).eval()
    tok = AutoTokenizer.from_pretrained(demo.teacher_dir)
    return demo.score_model("teacher", model, tok, device)[0].accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per student")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the workspace here")
    parser.add_argument("--json", help="write the results document here (bench/_results.py)")
    args = parser.parse_args(argv)

    import torch
    from _results import Row, write_results

    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kd-quality-"))
    t0 = time.perf_counter()
    demo = prepare(workdir, args.steps)
    teacher = teacher_accuracy(demo)
    print(f"teacher: {teacher:.1%} on {demo.plan.n_test} held-out prompts ({workdir})")
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for method in args.methods:
        for seed in args.seeds:
            acc, took = train_and_score(demo, method, seed)
            results.setdefault(method, []).append(acc)
            seconds.setdefault(method, []).append(took)
            print(f"  {method:<10} seed {seed}: {acc:.1%} ({took:.0f} s)", flush=True)
    header = ["METHOD", "MEAN", "MIN", "MAX", "SEEDS", "SECONDS / RUN"]
    rows = []
    for method, accs in results.items():
        rows.append(
            [
                method,
                f"{statistics.mean(accs):.1%}",
                f"{min(accs):.1%}",
                f"{max(accs):.1%}",
                " ".join(f"{a:.1%}" for a in accs),
                f"{statistics.mean(seconds[method]):.0f}",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"\nstudent {args.steps} steps x batch {demo.plan.batch_size}, seeds {args.seeds}; "
        f"teacher {teacher:.1%}; took {time.perf_counter() - t0:.0f} s"
    )
    write_results(
        args.json,
        "kd_quality",
        "Task accuracy by method (demo task, 3 seeds)",
        [
            Row(f"{m} accuracy (mean, min-max over seeds)", f"{r[1]} ({r[2]}-{r[3]})")
            for m, r in zip(results, rows, strict=True)
        ],
        reference=f"teacher {teacher:.1%}",
        notes=[f"{args.steps} student steps, seeds {args.seeds}"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
