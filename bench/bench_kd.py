"""Dense KD: step time against (student SFT step + teacher forward), and the loss's memory.

Step time (one process, interleaved rounds, medians). A Llama-style student (H=256, 4 layers)
and teacher (H=512, 4 layers) with V = 32,000 rows share a tokenizer; batches of B=4 chat
examples (~60 prompt + ~190 response tokens) go through the trainer's own objectives:

    sft       SFT objective: forward (full logits) + CE + backward + AdamW step
    teacher   the teacher's plain forward (eval, no_grad, full logits)
    dense_kd  DenseKD objective (teacher forward + fused chunked LM head, chunk 512) +
              backward + AdamW step

target: dense_kd <= 1.15 x (sft + teacher).

Memory (fresh subprocess per variant, as bench/bench_loss_memory.py measures it: peak RSS
growth on CPU, torch.cuda.max_memory_allocated on a GPU): the loss of dense KD for 2 x 1,024
positions at V = 32,000 from final hidden states (student H=256 with grad, teacher H=256)
to the gradients, naive (both models' full fp32 logits, CE + forward KL) vs the trainer's
fused path (kdstudio.distill.fused_head.fused_head_loss at chunk 512, teacher logits per chunk);
target <= 0.35x.

    python bench/bench_kd.py [--rounds 5] [--device cpu|cuda] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
TIME_TARGET = 1.15
MEMORY_TARGET = 0.35


# -- step time --------------------------------------------------------------------------------


def _pairs(n: int) -> list[tuple[str, str]]:
    from support.train_data import WORDS

    out = []
    for i in range(n):
        prompt = " ".join(WORDS[(i * 7 + j) % 12] for j in range(50))
        response = " ".join(WORDS[(i * 5 + 3 * j) % 12] for j in range(170))
        out.append((f"Summarise: {prompt}", response))
    return out


def _build(root: Path, device: str):
    import torch
    from support.train_data import make_collection
    from transformers import AutoModelForCausalLM

    from kdstudio.config import TeacherConfig
    from kdstudio.demo.tiny import make_model, make_tokenizer
    from kdstudio.distill.batches import build_dataset, collate, load_student_tokenizer
    from kdstudio.distill.config import TrainConfig
    from kdstudio.workspace import Workspace

    pairs = _pairs(16)
    tok_dir = make_tokenizer(root / "tok", [p + " " + r for p, r in pairs], vocab_size=400)
    student = make_model(root / "student", tok_dir, hidden=256, layers=4, vocab_size=32000)
    teacher = make_model(root / "teacher", tok_dir, hidden=512, layers=4, vocab_size=32000, seed=1)
    ws = Workspace.open(root / "ws")
    make_collection(ws, "bench", pairs)
    ws.add_teacher(TeacherConfig(name="t", kind="local", path=str(teacher)))
    tok, _ = load_student_tokenizer(str(student))
    from kdstudio.collect.store import iter_examples

    data = build_dataset(tok, iter_examples(ws, "bench"), max_length=512, eval_fraction=0.0)
    batches = [collate(data.train[i : i + 4], tok.pad_token_id).to(device) for i in range(0, 16, 4)]

    def cfg(method: str) -> TrainConfig:
        return TrainConfig.from_dict(
            {
                "student": {"path": str(student)},
                "data": {"collection": "bench"},
                "distill": {"method": method, "teacher": "t", "chunk_size": 512},
                "run": {"device": device},
            }
        )

    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).to(device)
    model.train()
    return ws, tok, model, batches, cfg


def _objective(method: str, ws, tok, model, cfg, device: str):
    import torch

    from kdstudio.distill.objectives import ObjectiveContext, make_objective
    from kdstudio.events import NullSink

    obj = make_objective(cfg(method))
    ctx = ObjectiveContext(
        cfg(method), ws, tok, torch.device(device), None, NullSink(), model.config, {}
    )
    obj.setup(ctx)
    return obj


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_time(rounds: int, device: str) -> dict[str, float]:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        ws, tok, model, batches, cfg = _build(Path(tmp), device)
        sft = _objective("sft", ws, tok, model, cfg, device)
        dense = _objective("dense_kd", ws, tok, model, cfg, device)
        teacher = dense.teacher
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(obj, batch):
            out = obj.loss(model, batch)
            (out.loss_sum / batch.n_target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def teacher_forward(batch):
            with torch.no_grad():
                _ = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

        runs = {
            "sft": lambda b: step(sft, b),
            "teacher": teacher_forward,
            "dense_kd": lambda b: step(dense, b),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(rounds + 1):  # round 0 warms up
            for name, fn in runs.items():
                for batch in batches:
                    _sync(device)
                    t0 = time.perf_counter()
                    fn(batch)
                    _sync(device)
                    if r:
                        times[name].append(time.perf_counter() - t0)
        tokens = statistics.mean(b.n_tokens for b in batches)
        ws.close()
    out = {k: statistics.median(v) for k, v in times.items()}
    out["tokens"] = tokens
    return out


# -- memory -----------------------------------------------------------------------------------


def _loss(variant: str, hs, ws_, ht, wt, labels, chunk: int):
    import torch
    import torch.nn.functional as F

    from kdstudio.distill import losses as L
    from kdstudio.distill.fused_head import fused_head_loss
    from kdstudio.distill.objectives.kd import chunk_terms

    if variant == "naive":
        s = F.linear(hs, ws_)
        with torch.no_grad():
            t = F.linear(ht, wt)
        ce = F.cross_entropy(s.float(), labels, reduction="sum")
        kd = L.forward_kl(s, t, reduction="sum")
        loss = 0.5 * ce + 0.5 * kd
    else:
        ones = torch.ones_like(labels, dtype=torch.bool)

        def chunk_loss(logits, r):
            with torch.no_grad():
                t = F.linear(ht[r], wt)
            kd = L.forward_kl_per_token(logits, t)
            return chunk_terms(logits, labels[r], kd, ones[r], t.argmax(-1), 0.5, 1.0)

        loss, _ = fused_head_loss(chunk_loss, hs, ws_, None, chunk_size=chunk, n_stats=5)
    loss.backward()
    return float(loss)


def memory_child(args) -> None:
    import torch
    from bench_loss_memory import _cpu_peak_mb, _cuda_peak_mb

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)

    def make(*shape, scale=1.0, grad=False, n=None):
        x = (torch.randn(*shape, generator=gen) * scale).to(args.device)
        return x.requires_grad_(grad)

    def inputs(n):
        v, h = args.vocab, 256
        return (
            make(n, h, grad=True),
            make(v, h, scale=h**-0.5, grad=True),
            make(n, h),
            make(v, h, scale=4 * h**-0.5),
            torch.randint(0, v, (n,), generator=gen).to(args.device),
        )

    _loss(args.variant, *inputs(8), 512)  # warm-up outside the measurement
    tensors = inputs(args.positions)
    result = {}

    def run():
        t0 = time.perf_counter()
        result["loss"] = _loss(args.variant, *tensors, 512)
        result["seconds"] = time.perf_counter() - t0

    cuda = args.device.startswith("cuda")
    result["peak_mb"] = _cuda_peak_mb(run, torch) if cuda else _cpu_peak_mb(run)
    print(json.dumps(result))


def bench_memory(args) -> dict[str, dict]:
    out = {}
    for variant in ("naive", "fused"):
        cmd = [sys.executable, __file__, "--memory-child", "--variant", variant]
        cmd += ["--device", args.device, "--positions", "2048", "--vocab", "32000"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=ROOT)
        out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="naive", help=argparse.SUPPRESS)
    parser.add_argument("--positions", type=int, default=2048, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=32000, help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        memory_child(args)
        return
    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    t = bench_time(args.rounds, args.device)
    base = t["sft"] + t["teacher"]
    ratio = t["dense_kd"] / base
    print(
        f"dense KD step time on {args.device}, B=4 x ~{t['tokens'] / 4:.0f} tokens, V=32000, "
        f"student H256x4, teacher H512x4, {args.rounds} rounds x 4 batches (medians)"
    )
    print(f"{'measure':<34}{'seconds':>10}{'ratio':>9}{'target':>9}")
    print(f"{'student SFT step':<34}{t['sft']:>10.3f}")
    print(f"{'teacher forward':<34}{t['teacher']:>10.3f}")
    print(f"{'SFT step + teacher forward':<34}{base:>10.3f}{1.0:>8.2f}x")
    mark = "ok" if ratio <= TIME_TARGET else "MISSED"
    print(f"{'dense KD step':<34}{t['dense_kd']:>10.3f}{ratio:>8.2f}x{TIME_TARGET:>8.2f}x  {mark}")
    from _results import Row, write_results

    results = [
        Row("dense KD step (s)", f"{t['dense_kd']:.3f} s",
            f"{base:.3f} s (SFT step {t['sft']:.3f} + teacher forward {t['teacher']:.3f})",
            f"{ratio:.2f}x", f"<= {TIME_TARGET:.2f}x", mark)
    ]  # fmt: skip
    what = "Dense KD: step time and loss memory (student H256x4, teacher H512x4, V=32000)"
    reference = "the student's plain SFT step plus the teacher's forward; naive full logits"
    if args.skip_memory:
        write_results(args.json, "kd", what, results, reference=reference)
        return
    m = bench_memory(args)
    naive = m["naive"]["peak_mb"]
    print()
    print(
        "dense KD loss memory (fwd+bwd, fkl + CE, N=2x1024, V=32000, H=256, fp32, "
        f"{args.device}; peak growth)"
    )
    print(f"{'variant':<44}{'peak MB':>9}{'ratio':>9}{'target':>9}{'loss':>14}")
    print(
        f"{'naive: full logits of both models':<44}{naive:>9.0f}{1.0:>8.2f}x{'':>9}"
        f"{m['naive']['loss']:>14.3f}"
    )
    fused = m["fused"]["peak_mb"]
    r = fused / naive
    mark = "ok" if r <= MEMORY_TARGET else "MISSED"
    print(
        f"{'trainer: fused head + loss, chunk 512':<44}{fused:>9.0f}{r:>8.2f}x"
        f"{MEMORY_TARGET:>8.2f}x{m['fused']['loss']:>14.3f}  {mark}"
    )
    results.append(
        Row("dense KD loss peak memory, fwd+bwd, N=2x1024", f"{fused:.0f} MB",
            f"{naive:.0f} MB (naive: full logits of both models)", f"{r:.2f}x",
            f"<= {MEMORY_TARGET:.2f}x", mark)
    )  # fmt: skip
    write_results(args.json, "kd", what, results, reference=reference)


if __name__ == "__main__":
    main()
