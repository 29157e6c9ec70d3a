"""Peak memory of the KD loss, forward + backward: naive full logits vs the trainer's chunk
engine (`kdstudio.distill.fused_head`) given full logits vs the same engine fused with the
LM head (what the KD objectives run).

Setting: V = 32000, 2 x 1024 positions, student hidden H = 256 with its LM head, teacher
logits given. Each variant runs in a fresh subprocess. On CPU the peak is the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs once the inputs exist, so
the figure is what the loss itself adds; ru_maxrss delta where that is unavailable). With
CUDA it is ``torch.cuda.max_memory_allocated`` over the inputs' allocation.

    python bench/bench_loss_memory.py [--device cuda] [--dtype bf16] [--chunk-sizes 1024 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 0.35
ROOT = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _cpu_peak_mb(run) -> float:
    if _reset_peak():
        before = _status_kb("VmRSS")
        run()
        return (_status_kb("VmHWM") - before) / 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _cuda_peak_mb(run, torch) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _inputs(torch, args, positions: int):
    gen = torch.Generator().manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    def make(*shape, scale=1.0, grad=False):
        x = (torch.randn(*shape, generator=gen) * scale).to(args.device, dtype)
        return x.requires_grad_(grad)

    hidden = make(positions, args.hidden, grad=True)
    weight = make(args.vocab, args.hidden, scale=args.hidden**-0.5, grad=True)
    teacher = make(positions, args.vocab, scale=2.0)
    return hidden, weight, teacher


def _step(variant: str, chunk_size: int, hidden, weight, teacher) -> float:
    """One forward + backward of the forward-KL loss (mean over positions); returns its value."""
    import torch
    import torch.nn.functional as F

    from kdstudio.distill.fused_head import fused_head_loss
    from kdstudio.distill.losses import forward_kl, forward_kl_per_token

    def chunk_loss(logits, rows):
        return forward_kl_per_token(logits, teacher[rows]).sum(), torch.zeros(0)

    if variant == "naive":
        loss = forward_kl(F.linear(hidden, weight), teacher)
    else:
        x, w = (F.linear(hidden, weight), None) if variant == "chunked" else (hidden, weight)
        total, _ = fused_head_loss(chunk_loss, x, w, chunk_size=chunk_size)
        loss = total / hidden.shape[0]
    loss.backward()
    return float(loss)


def child(args) -> None:
    """Measure one variant in this (fresh) process and print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    # Warm-up on a few positions loads kernels and thread pools outside the measurement.
    _step(args.variant, args.chunk_size, *_inputs(torch, args, 8))
    hidden, weight, teacher = _inputs(torch, args, args.positions)
    result = {}

    def run():
        start = time.perf_counter()
        result["loss"] = _step(args.variant, args.chunk_size, hidden, weight, teacher)
        result["seconds"] = time.perf_counter() - start

    result["peak_mb"] = _cuda_peak_mb(run, torch) if cuda else _cpu_peak_mb(run)
    print(json.dumps(result))


def _measure(args, variant: str, chunk_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant]
    cmd += ["--chunk-size", str(chunk_size), "--device", args.device, "--dtype", args.dtype]
    cmd += ["--positions", str(args.positions), "--vocab", str(args.vocab)]
    cmd += ["--hidden", str(args.hidden), "--threads", str(args.threads)]
    env = {"PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--positions", type=int, default=2 * 1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 512, 256])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="naive", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    naive = _measure(args, "naive", 0)
    rows = [("naive (full logits)", "-", naive)]
    for size in args.chunk_sizes:
        rows.append(("chunked (logits given)", str(size), _measure(args, "chunked", size)))
        rows.append(("fused LM head + loss", str(size), _measure(args, "fused", size)))

    print(
        f"forward KL, fwd+bwd, N={args.positions} V={args.vocab} H={args.hidden} "
        f"{args.dtype} on {args.device}; target fused <= {TARGET_RATIO:.2f}x naive"
    )
    print(f"{'variant':<24}{'chunk':>7}{'peak MB':>10}{'ratio':>8}{'time s':>8}{'loss':>12}")
    for name, size, res in rows:
        ratio = res["peak_mb"] / naive["peak_mb"]
        mark = "  ok" if name.startswith("fused") and ratio <= TARGET_RATIO else ""
        print(
            f"{name:<24}{size:>7}{res['peak_mb']:>10.0f}{ratio:>7.2f}x"
            f"{res['seconds']:>8.2f}{res['loss']:>12.6f}{mark}"
        )
    if args.json:
        from _results import Row, write_results

        write_results(
            args.json, "loss_memory",
            f"KD loss peak memory, forward KL fwd+bwd, N={args.positions} V={args.vocab} "
            f"H={args.hidden} {args.dtype} on {args.device}",
            [
                Row(f"{name}, chunk {size}", f"{res['peak_mb']:.0f} MB",
                    f"{naive['peak_mb']:.0f} MB (naive full logits)",
                    f"{res['peak_mb'] / naive['peak_mb']:.2f}x",
                    f"<= {TARGET_RATIO:.2f}x" if name.startswith("fused") and size == "512" else "")
                for name, size, res in rows[1:]
            ],
            reference="the naive loss over full fp32 logits, measured in the same run",
            notes=["the target is for the trainer's default chunk (distill.chunk_size = 512); "
                   "the other chunk sizes are shown for comparison"],
        )  # fmt: skip


if __name__ == "__main__":
    main()
