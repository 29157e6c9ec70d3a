"""Sparse KD from a teacher behind a real llama.cpp server, measured as a user would meet it.

llama-cpp-python's OpenAI-compatible server renders tokens as text pieces (no `bytes`, a
special token or a cut character as ""), and never reports the stop token's logprob. This
benchmark serves the demo's trained teacher with it and distils from what it sends:

1. the demo's task, tokenizer and teacher (0.87M parameters, trained on the references);
2. the teacher written as GGUF (`bench/gguf_export.py`, run by the llama venv's Python) and
   served by `python -m llama_cpp.server` on a free local port, added as a teacher;
3. the real collection job: the 2,000 training prompts, greedy, with top-20 logprobs;
4. students, each trained with sparse_kd (distill.align = "auto") and with sft on the same
   collection, steps and seed, and scored on the 200 held-out prompts (answers checked by the
   program):
   - the demo's student (the teacher's own tokenizer);
   - a student with another tokenizer: SentencePiece-style BPE (▁ words, a space put in
     front, byte fallback) with a ChatML template, same layers and width;
   - for reference, the demo's student distilled from the same teacher run locally (its
     collection stores token ids and the stop token).

Printed: per student and teacher, the KD share of the response tokens (the pre-flight's figure,
with the share of each kind of target) and the held-out accuracy of sparse_kd and sft.

Set-up, once, outside the repository (the build takes ~10 minutes on 2 cores):

    python3 -m venv ~/llamacpp-venv
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" ~/llamacpp-venv/bin/pip install \\
        'llama-cpp-python[server]==0.3.36' gguf

    python bench/bench_llamacpp.py --llama-python ~/llamacpp-venv/bin/python \\
        [--steps 1200] [--seeds 0] [--workdir DIR] [--json OUT]

Without a llama-cpp-python (`--llama-python` or $KDSTUDIO_LLAMACPP_PYTHON) it says so and
exits 0, so `scripts/bench` can run everything on a machine without one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
SERVED_AS = "demo-teacher-gguf"
SERVER_TEACHER = "llamacpp-teacher"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(python: str, gguf: Path, log: Path):
    """`python -m llama_cpp.server` serving `gguf` on a free port; yields its base URL."""
    port = free_port()
    command = [
        python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", SERVED_AS,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "128", "--n_threads", "1",
        "--logits_all", "True", "--verbose", "False",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start; see {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def sentencepiece_student(demo) -> Path:
    """The demo student's size with a SentencePiece-style tokenizer and a ChatML template."""
    from kdstudio.demo.tiny import make_model, make_tokenizer

    path = demo.folder / "student-sentencepiece"
    if (path / "config.json").exists():
        return path
    train, _ = demo.problems()
    tok = make_tokenizer(
        demo.folder / "tokenizer-sentencepiece",
        [f"{x.prompt}\n{x.answer}" for x in train],
        vocab_size=384,
        style="sentencepiece",
    )
    p = demo.plan
    make_model(
        path,
        tok,
        layers=p.student_layers,
        hidden=p.student_hidden,
        seed=p.seed + 1,
        max_positions=128,
    )
    return path


def collect_from_server(demo, url: str) -> str:
    """The training prompts answered by the served teacher (top-20 logprobs, greedy)."""
    from kdstudio.collect import CollectConfig, collect
    from kdstudio.config import TeacherConfig
    from kdstudio.demo import TRAIN_DATASET

    ws = demo.ws
    # a restarted server has another port: the teacher's URL is refreshed, answers reused
    ws.add_teacher(TeacherConfig(name=SERVER_TEACHER, base_url=url, model=SERVED_AS), replace=True)
    name = f"{TRAIN_DATASET}.{SERVER_TEACHER}"
    config = CollectConfig(
        teacher=SERVER_TEACHER,
        dataset=TRAIN_DATASET,
        name=name,
        max_tokens=demo.plan.max_new_tokens,
        temperature=0.0,
        top_logprobs=20,
        concurrency=2,
    )
    summary = collect(config, ws, demo.job_sink, demo.cancel)
    print(f"  {summary.message} in {summary.elapsed:.0f} s", flush=True)
    return name


def kd_share(demo, student: Path, collection: str) -> dict:
    """The pre-flight's sparse-KD figures for `student` on `collection`."""
    from kdstudio.distill.preflight import preflight

    config = demo.train_config("preflight", student, collection, method="sparse_kd")
    report = preflight(config, demo.ws)
    if not report.ok:
        raise RuntimeError("; ".join(report.errors))
    return report.kd


def train_and_score(demo, name: str, student: Path, collection: str, method: str, seed: int):
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.distill.plan import pick_device

    config = demo.train_config(name, student, collection, seed=seed, method=method)
    demo.train(config)
    device = pick_device("auto")
    model, tok = ckpt.load_student(demo.ws, name, "last", str(device))
    return demo.score_model(name, model, tok, device)[0].accuracy


def seeds_figure(accs: list[float]) -> str:
    """The mean accuracy over seeds, then each seed's."""
    mean = sum(accs) / len(accs)
    return f"{mean:.1%}" + (f" ({' '.join(f'{a:.1%}' for a in accs)})" if len(accs) > 1 else "")


def describe_kinds(kd: dict) -> str:
    shares = kd["kind_shares"]
    return ", ".join(f"{k} {v:.0%}" for k, v in shares.items() if v) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-python", default=os.environ.get("KDSTUDIO_LLAMACPP_PYTHON"))
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps per student")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the workspace here")
    parser.add_argument("--json", help="write the results document here (bench/_results.py)")
    args = parser.parse_args(argv)
    from _results import Row, write_results

    if not args.llama_python or not Path(args.llama_python).exists():
        note = "skipped: no llama-cpp-python (give --llama-python or $KDSTUDIO_LLAMACPP_PYTHON)"
        print(note)
        write_results(args.json, "llamacpp", "Sparse KD from a llama.cpp server", [], notes=[note])
        return 0

    import torch
    from bench_kd_quality import prepare, teacher_accuracy

    torch.set_num_threads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kd-llamacpp-"))
    t0 = time.perf_counter()
    demo = prepare(workdir, args.steps)
    teacher_acc = teacher_accuracy(demo)
    print(f"teacher: {teacher_acc:.1%} on {demo.plan.n_test} held-out prompts ({workdir})")
    gguf = workdir / "teacher.gguf"
    if not gguf.exists():
        subprocess.run(
            [args.llama_python, str(ROOT / "bench" / "gguf_export.py"), str(demo.teacher_dir),
             str(gguf)],
            check=True,
        )  # fmt: skip
    with llama_server(args.llama_python, gguf, workdir / "llama-server.log") as url:
        print(f"llama.cpp server at {url}: collecting the teacher's answers", flush=True)
        served = collect_from_server(demo, url)
    students = {
        "same tokenizer": (demo.student_init, served, "llama.cpp server"),
        "SentencePiece + ChatML": (sentencepiece_student(demo), served, "llama.cpp server"),
        "same tokenizer (reference)": (demo.student_init, demo.collection, "local, token ids"),
    }
    table, rows = [], []
    for i, (label, (student, collection, via)) in enumerate(students.items()):
        kd = kd_share(demo, student, collection)
        accs = {}
        for method in ("sparse_kd", "sft"):
            if method == "sft" and via.startswith("local"):
                continue  # the same texts as the server's (greedy): the row above has it
            got = [
                train_and_score(
                    demo, f"llamacpp-{i}-{method}-seed{seed}", student, collection, method, seed
                )
                for seed in args.seeds
            ]
            accs[method] = got
        table.append(
            [
                label,
                via,
                f"{kd['kd_share']:.1%}",
                kd["align"],
                describe_kinds(kd),
                seeds_figure(accs["sparse_kd"]),
                seeds_figure(accs["sft"]) if "sft" in accs else "-",
            ]
        )
        rows.append(
            Row(f"{label}: KD share / sparse_kd accuracy", f"{table[-1][2]} / {table[-1][5]}")
        )
        print(f"  {label}: {table[-1]}", flush=True)
    header = ["STUDENT", "TEACHER", "KD SHARE", "ALIGN", "KINDS", "SPARSE_KD (SEEDS)", "SFT"]
    widths = [max(len(r[k]) for r in [header, *table]) for k in range(len(header))]
    print()
    for r in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"\nteacher {teacher_acc:.1%}; {args.steps} student steps, seeds {args.seeds}; the KD "
        f"share counts every response token, the end-of-turn token included (llama.cpp sends "
        f"no stop-token logprob); took {time.perf_counter() - t0:.0f} s"
    )
    write_results(
        args.json,
        "llamacpp",
        "Sparse KD from a llama.cpp server (llama-cpp-python 0.3.36)",
        rows,
        reference=f"teacher {teacher_acc:.1%}",
        notes=[f"{args.steps} student steps, seeds {args.seeds}"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
