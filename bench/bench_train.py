"""Training throughput: kdstudio's loop beside a transformers `Trainer`, and logging overhead.

    python bench/bench_train.py [--steps 150] [--batch 8] [--hidden 128] [--layers 2] [--repeats 5]

Same tiny Llama (built offline), same encoded examples, same batch size, fp32 on CPU (bf16
on a CUDA GPU), AdamW with a cosine schedule and clipping for both; length-grouped batches
for both. Throughput = optimizer steps per second of the training loop (setup, model
loading and the final checkpoint excluded), also shown as tokens/s (steps/s x batch x mean
example length). Each configuration runs `--repeats` times, alternating; the best is kept.

Targets: kdstudio / transformers >= 1.0x; logging every step within 3% of every 50 steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # kdstudio, and the test support
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(root: Path, n: int, hidden: int, layers: int):
    from support.train_data import (
        make_collection,
        make_student,
        memorisable_pairs,
        texts_of,
    )

    from kdstudio.workspace import Workspace

    pairs = memorisable_pairs(n)
    ws = Workspace.open(root / "ws")
    make_collection(ws, "bench", pairs)
    student = make_student(
        root / "student", texts_of(pairs), hidden=hidden, layers=layers, vocab_size=512
    )
    return ws, student


def config(student: Path, args, *, name: str, log_every: int):
    from kdstudio.distill.config import TrainConfig

    return TrainConfig.from_dict(
        {
            "student": {"path": str(student)},
            "data": {"collection": "bench", "eval_fraction": 0.0, "max_length": 256},
            "optim": {
                "max_steps": args.steps,
                "batch_size": args.batch,
                "lr": 1e-3,
                "warmup": 10,
                "schedule": "cosine",
                "clip": 1.0,
            },
            "run": {"name": name, "log_every": log_every, "eval_every": 0, "checkpoint_every": 0},
        }
    )


def run_kdstudio(ws, student, args, name: str, log_every: int) -> float:
    """Seconds of the training loop (from the run's own `elapsed` at the last step)."""
    from kdstudio.distill.trainer import Trainer, run_training
    from kdstudio.events import ListSink, Metrics

    sink = ListSink()
    run_training(Trainer(config(student, args, name=name, log_every=log_every), ws, sink))
    last = [e for e in sink.of(Metrics) if "elapsed" in e.values][-1]
    return last.values["elapsed"]


def run_transformers(ws, student, args, out: Path) -> float:
    """Seconds of `Trainer.train()`'s loop (its own train_runtime)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from kdstudio.collect.store import iter_examples
    from kdstudio.distill.batches import build_dataset, load_student_tokenizer

    tok, _ = load_student_tokenizer(str(student))
    data = build_dataset(tok, iter_examples(ws, "bench"), max_length=256, eval_fraction=0.0)
    rows = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)}
        for e in data.train
    ]
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    cuda = torch.cuda.is_available()
    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        max_grad_norm=1.0,
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=cuda,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
    )
    return float(trainer.train().metrics["train_runtime"])


def mean_length(ws, student) -> float:
    from kdstudio.collect.store import iter_examples
    from kdstudio.distill.batches import build_dataset, load_student_tokenizer

    tok, _ = load_student_tokenizer(str(student))
    data = build_dataset(tok, iter_examples(ws, "bench"), max_length=256, eval_fraction=0.0)
    return sum(len(e) for e in data.train) / len(data.train)


LABELS = ("transformers Trainer", "kdstudio (log every 50)", "kdstudio (log every step)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (1 is steadiest on a shared machine)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, student = build(root, args.examples, args.hidden, args.layers)
        length = mean_length(ws, student)
        best: dict[str, float] = {}
        for rep in range(args.repeats):  # alternate, so load bursts hit every loop alike
            for label in LABELS:
                if label == LABELS[0]:
                    seconds = run_transformers(ws, student, args, root / f"hf{rep}")
                else:
                    every = 50 if label == LABELS[1] else 1
                    seconds = run_kdstudio(ws, student, args, f"k{every}-{rep}", every)
                best[label] = min(best.get(label, float("inf")), seconds)
        ws.close()

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"\ntiny Llama: {args.layers} layers, hidden {args.hidden}; batch {args.batch}; "
        f"{args.steps} steps; mean example {length:.0f} tokens; {device}; best of {args.repeats}\n"
    )
    print(f"{'loop':28} {'steps/s':>9} {'tokens/s':>10} {'seconds':>8}")
    for label, seconds in best.items():
        sps = args.steps / seconds
        print(f"{label:28} {sps:9.2f} {sps * args.batch * length:10.0f} {seconds:8.2f}")
    hf, k50, k1 = (
        best["transformers Trainer"],
        best["kdstudio (log every 50)"],
        best["kdstudio (log every step)"],
    )
    ratio = hf / k50
    overhead = k1 / k50 - 1
    print(f"\n{'check':44} {'measured':>10} {'target':>10}  ")
    print(
        f"{'kdstudio / transformers throughput':44} {ratio:9.2f}x {'>= 1.00x':>10}  "
        + ("ok" if ratio >= 1.0 else "MISSED")
    )
    print(
        f"{'logging every step vs every 50 (slowdown)':44} {overhead * 100:9.1f}% {'<= 3%':>10}  "
        + ("ok" if overhead <= 0.03 else "MISSED")
    )
    if args.json:
        from _results import Row, status, write_results

        sps = {label: args.steps / seconds for label, seconds in best.items()}
        write_results(
            args.json, "train",
            f"Training throughput: tiny Llama {args.layers}x{args.hidden}, batch {args.batch}, "
            f"{args.steps} steps, {device}, best of {args.repeats}",
            [
                Row("training steps/s (log every 50)", f"{sps[LABELS[1]]:.2f}",
                    f"{sps[LABELS[0]]:.2f} (transformers Trainer)", f"{ratio:.2f}x",
                    ">= 1.00x", status(ratio >= 1.0)),
                Row("training steps/s, logging every step", f"{sps[LABELS[2]]:.2f}",
                    f"{sps[LABELS[1]]:.2f} (log every 50)", f"{overhead * 100:+.1f}% time",
                    "<= 3% slower", status(overhead <= 0.03)),
            ],
            reference="transformers' Trainer on the same model, data and optimizer",
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
