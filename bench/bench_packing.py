"""`data.packing`: the same SFT run with and without packing short examples into full rows.

    python bench/bench_packing.py [--steps 60] [--batch 8] [--max-length 256] [--json OUT]

A tiny Llama (built offline) on chat examples whose lengths spread from a few tokens to
`max_length` (prompts of 3-25 words, answers of 1-60 words, most short), fp32 on CPU (bf16 on a CUDA
GPU). Reported for each: real (non-padding) tokens per second of the training loop, the
padded share of what the model processes, and the examples one optimizer step holds.
Packed batches count `batch_size` rows of `max_length` tokens, so a step holds more
examples; tokens/s is the fair comparison. The two runs alternate `--repeats` times and the
best of each is kept.

The GPU figures (a 0.5B Qwen2-shaped student at sequence 1,024) come from
`scripts/gpu-check`; on a CPU the matrix work grows with the tokens either way, so packing's
gain here is the padding it removes, minus attention over full rows.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "sun",
    "moon",
    "tree",
    "fish",
    "bird",
    "star",
    "rain",
    "stone",
    "river",
    "cloud",
]


def pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    from support.train_data import WORDS

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))
        answer = " ".join(rng.choice(WORDS) for _ in range(int(rng.expovariate(1 / 12)) % 60 + 1))
        out.append((f"Echo: {prompt}", answer))
    return out


def build(root: Path, n: int, hidden: int, layers: int):
    from support.train_data import make_collection, make_student, texts_of

    from kdstudio.workspace import Workspace

    data = pairs(n)
    ws = Workspace.open(root / "ws")
    make_collection(ws, "bench", data)
    student = make_student(
        root / "student", texts_of(data), hidden=hidden, layers=layers, vocab_size=512
    )
    return ws, student


def run(ws, student, args, *, packing: bool, name: str) -> dict:
    from kdstudio.distill import plan
    from kdstudio.distill.batches import load_student_tokenizer
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.trainer import Trainer, run_training
    from kdstudio.events import ListSink, Metrics

    config = TrainConfig.from_dict(
        {
            "student": {"path": str(student)},
            "data": {
                "collection": "bench",
                "eval_fraction": 0.0,
                "max_length": args.max_length,
                "packing": packing,
            },
            "optim": {"max_steps": args.steps, "batch_size": args.batch, "lr": 1e-3},
            "run": {"name": name, "log_every": 10, "eval_every": 0, "checkpoint_every": 0},
        }
    )
    sink = ListSink()
    run_training(Trainer(config, ws, sink))
    m = [e.values for e in sink.of(Metrics) if "tokens_per_s" in e.values][1:]  # warm-up out
    tok, _ = load_student_tokenizer(str(student))
    data = plan.load_dataset(config, ws, tok)
    stream = plan.data_stream(config, data.train)
    lengths = [len(e) for e in data.train]
    batches = [stream.next() for _ in range(stream.batches_per_epoch)]
    width = sum(max(sum(lengths[i] for i in row) for row in b) * len(b) for b in batches)
    return {
        "tokens_per_s": sum(v["tokens_per_s"] for v in m) / len(m),
        "padded": 1 - sum(lengths) / width,
        "examples_per_step": len(lengths) / len(batches),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--examples", type=int, default=1200)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # steady on a busy machine; both runs alike
    with tempfile.TemporaryDirectory() as tmp:
        ws, student = build(Path(tmp), args.examples, args.hidden, args.layers)
        best: dict[bool, dict] = {}
        for i in range(args.repeats):
            for packing in (False, True):
                res = run(ws, student, args, packing=packing, name=f"{packing}-{i}")
                if packing not in best or res["tokens_per_s"] > best[packing]["tokens_per_s"]:
                    best[packing] = res
        ws.close()
    plain, packed = best[False], best[True]
    ratio = packed["tokens_per_s"] / plain["tokens_per_s"]
    print(
        f"SFT, tiny Llama H{args.hidden}x{args.layers}, batch {args.batch}, max_length "
        f"{args.max_length}, {args.steps} steps, best of {args.repeats}, torch 1 thread"
    )
    print(f"{'':<28}{'unpacked':>12}{'packed':>12}{'ratio':>8}")
    print(
        f"{'real tokens/s':<28}{plain['tokens_per_s']:>12,.0f}{packed['tokens_per_s']:>12,.0f}"
        f"{ratio:>7.2f}x"
    )
    print(f"{'padded share':<28}{plain['padded']:>12.1%}{packed['padded']:>12.1%}")
    print(
        f"{'examples per step':<28}{plain['examples_per_step']:>12.1f}"
        f"{packed['examples_per_step']:>12.1f}"
        f"{packed['examples_per_step'] / plain['examples_per_step']:>7.2f}x"
    )
    if args.json:
        from _results import Row, write_results

        write_results(
            args.json,
            "packing",
            f"data.packing: SFT with and without packing (tiny Llama H{args.hidden}x"
            f"{args.layers}, batch {args.batch}, max_length {args.max_length})",
            [
                Row(
                    "real tokens/s",
                    f"{packed['tokens_per_s']:,.0f}",
                    f"{plain['tokens_per_s']:,.0f} (unpacked)",
                    f"{ratio:.2f}x",
                ),
                Row(
                    "padded share of what the model processes",
                    f"{packed['padded']:.1%}",
                    f"{plain['padded']:.1%} (unpacked, length-grouped)",
                ),
                Row(
                    "examples per optimizer step",
                    f"{packed['examples_per_step']:.1f}",
                    f"{plain['examples_per_step']:.1f} (unpacked)",
                    f"{packed['examples_per_step'] / plain['examples_per_step']:.2f}x",
                ),
            ],
            reference="the same run unpacked (length-grouped batches), alternating, best of each",
            notes=["GPU figures: scripts/gpu-check (0.5B student, sequence 1,024)"],
        )


if __name__ == "__main__":
    main()
