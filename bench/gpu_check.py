"""One-shot check of the trainer's GPU path: what it costs, what it reaches, what breaks.

Run by `scripts/gpu-check` (which installs kdstudio over the machine's own torch and
transformers); `--dry-run` runs every section at tiny sizes on whatever device there is
(the CPU here), so the script itself is tested without a GPU.

Sections (each independent: one that fails is recorded with its error and the rest go on;
results are written after every section, so a run cut short keeps what it measured):

  peak        bf16 matmul 8192^3: the GPU's measured peak, the denominator of MFU
  sft         a Qwen2-shaped ~0.5B student (random weights, V = 151,936, sequence 1,024,
              bf16 autocast): tokens/s, MFU, padded share, GPU busy share, peak memory; the
              same model and data through transformers' Trainer as the reference
  packing     the same with data.packing (short examples packed into full rows)
  sparse_kd   step time from stored top-20 logprobs against SFT
  dense_kd    a ~1.5B teacher of the same family: step time against (student step +
              teacher forward); KD-loss peak memory, fused chunked head vs full logits
  checkpointing, compile   memory and speed against off
  resume      stop and resume on the GPU against an uninterrupted run
  thread      the trainer in a background thread while the main thread times a 10 ms timer
  torchrun    `torchrun --nproc-per-node 1` with run.parallel = ddp and fsdp: train and resume

    python bench/gpu_check.py --out DIR [--dry-run] [--only sft,packing] [--budget-s 420]

Writes DIR/gpu_check.json and DIR/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

# in the order they run: what matters most first (a run cut short keeps what it measured)
SECTIONS = [
    "peak",
    "sft",
    "packing",
    "dense_kd",
    "sparse_kd",
    "kd_memory",
    "torchrun",
    "resume",
    "checkpointing",
    "thread",
    "compile",
]


@dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


@dataclass
class Sizes:
    student: Shape
    teacher: Shape
    small: Shape  # resume / torchrun checks: same family, fewer layers, a small vocabulary
    small_vocab: int
    vocab: int
    seq: int
    batch: int
    examples: int
    steps: int  # measured steps per throughput run (after `warm` steps)
    warm: int
    matmul: int
    kd_positions: int


GPU = Sizes(
    student=Shape(896, 24, 14, 2, 4864),  # Qwen2-0.5B
    teacher=Shape(1536, 28, 12, 2, 8960),  # Qwen2-1.5B
    small=Shape(256, 2, 4, 2, 1024),
    small_vocab=2048,
    vocab=151_936,
    seq=1024,
    batch=16,
    examples=900,
    steps=18,
    warm=6,
    matmul=8192,
    kd_positions=8192,
)
DRY = Sizes(
    student=Shape(64, 2, 4, 2, 128),
    teacher=Shape(96, 2, 4, 2, 192),
    small=Shape(64, 1, 4, 2, 128),
    small_vocab=2048,
    vocab=2048,
    seq=128,
    batch=4,
    examples=96,
    steps=4,
    warm=2,
    matmul=256,
    kd_positions=256,
)

WORDS = [
    a + b
    for a in ("ka", "lo", "mi", "su", "te", "ra", "vo", "ne", "di", "po", "gu", "fe", "ji", "ho")
    for b in ("n", "r", "s", "l", "t", "m", "x", "", "ba", "do", "ki", "lu", "mo", "pi")
]


# -- results ------------------------------------------------------------------------------------


class Report:
    """Sections' results, written to JSON and Markdown after every section."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta = out, meta
        self.sections: dict[str, dict[str, Any]] = {}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, result: dict[str, Any]) -> None:
        self.sections[name] = result
        self.write()

    def write(self) -> None:
        doc = {"meta": self.meta, "sections": self.sections}
        (self.out / "gpu_check.json").write_text(json.dumps(doc, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(doc))


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = [
        "# GPU check",
        "",
        f"{meta.get('date')} on {meta.get('device')}; torch {meta.get('torch')}, "
        f"transformers {meta.get('transformers')}, Python {meta.get('python')}"
        f"{' (DRY RUN: tiny sizes)' if meta.get('dry_run') else ''}.",
        "",
        "| section | measure | kdstudio | reference | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in doc["sections"].items():
        if "error" in res:
            lines.append(f"| {name} | FAILED | {res['error'][:200]} | | | |")
            continue
        for row in res.get("rows", []):
            lines.append(
                f"| {name} | {row.get('measure', '')} | {row.get('value', '')} | "
                f"{row.get('reference', '')} | {row.get('ratio', '')} | {row.get('target', '')} |"
            )
    notes = [
        f"- {name}: {n}" for name, res in doc["sections"].items() for n in res.get("notes", [])
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def row(measure: str, value: Any, reference: Any = "", ratio: Any = "", target: str = "") -> dict:
    return {
        "measure": measure,
        "value": value,
        "reference": reference,
        "ratio": ratio,
        "target": target,
    }


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


# -- the check --------------------------------------------------------------------------------


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.torch = torch
        self.dry = args.dry_run
        self.sz = DRY if self.dry else GPU
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.device = "cuda" if self.cuda else "cpu"
        self.work = Path(args.work)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.deadline = time.monotonic() + args.budget_s
        self.peak_tflops: float | None = None
        self.sft_tps: float | None = None
        self.report = Report(Path(args.out), self._meta())

    def _meta(self) -> dict[str, Any]:
        import torch
        import transformers

        dev = torch.cuda.get_device_name(0) if self.cuda else platform.processor() or "cpu"
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": dev,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "dry_run": self.dry,
            "sizes": {k: str(v) for k, v in vars(self.sz).items()},
        }

    # -- plumbing -----------------------------------------------------------------------------
    def run(self, only: list[str]) -> None:
        self.setup()
        for name in only:
            left = self.deadline - time.monotonic()
            if left < 10:
                self.report.add(
                    name, {"error": f"skipped: the time budget ran out ({left:.0f} s left)"}
                )
                continue
            print(f"== {name} ({left:.0f} s of budget left)", flush=True)
            t0 = time.monotonic()
            try:
                result = getattr(self, f"s_{name}")()
            except Exception as exc:  # a section's failure is a result, not the end of the check
                result = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
                print(result["traceback"], flush=True)
            result["seconds"] = round(time.monotonic() - t0, 1)
            self.report.add(name, result)
            for r in result.get("rows", []):
                print(
                    f"   {r['measure']}: {r['value']}  ref {r['reference']}  {r['ratio']}",
                    flush=True,
                )
            self.free()

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def setup(self) -> None:
        """Tokenizer, student, teacher and the workspace's collections (timed, not reported)."""
        t0 = time.monotonic()
        texts = self._texts()
        self.tok_dir = make_tokenizer(self.work / "tok", texts[:400])
        self.student = self._model(self.work / "student", self.sz.student, seed=0)
        self.small = self._model(
            self.work / "small", self.sz.small, seed=0, vocab=self.sz.small_vocab
        )
        self.ws_path = self.work / "ws"
        self._collections(texts)
        print(f"set-up took {time.monotonic() - t0:.1f} s", flush=True)

    def _texts(self) -> list[tuple[str, str]]:
        """(prompt, response) pairs whose lengths spread from short to over max_length."""
        rng = random.Random(0)
        pairs = []
        for _ in range(self.sz.examples):
            scale = self.sz.seq / 1024
            n_prompt = max(4, int(rng.uniform(16, 300) * scale))
            n_resp = max(4, int(math.exp(rng.uniform(math.log(20), math.log(750))) * scale))
            prompt = " ".join(rng.choice(WORDS) for _ in range(n_prompt))
            resp = " ".join(rng.choice(WORDS) for _ in range(n_resp))
            pairs.append((prompt, resp))
        return pairs

    def _model(
        self, path: Path, shape: Shape, *, seed: int, dtype: str = "bfloat16", vocab: int = 0
    ) -> Path:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(
            vocab_size=vocab or self.sz.vocab,
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            max_position_embeddings=4096,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=self._tok().eos_token_id,
            pad_token_id=self._tok().pad_token_id,
        )
        torch.manual_seed(seed)
        with torch.device(self.device):
            model = Qwen2ForCausalLM(cfg)
        model.to(getattr(torch, dtype)).save_pretrained(path)
        self._tok().save_pretrained(path)
        del model
        return path

    def _tok(self) -> Any:
        if not hasattr(self, "_tokenizer"):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tok_dir)
        return self._tokenizer

    def _collections(self, pairs: list[tuple[str, str]]) -> None:
        """`sft` (answers imported with the prompts) and `topk` (the same answers with a
        teacher's top-20 logprobs and token ids, as a local or vLLM teacher stores them)."""
        data = self.work / "data.jsonl"
        with data.open("w") as f:
            for p, r in pairs:
                msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                f.write(json.dumps({"messages": msgs}) + "\n")
        self.kdstudio("data", "import", str(data), "--name", "sft", "--as-collection", "sft")
        self.pairs, self.data_file = pairs, data

    def _topk_collection(self) -> None:
        """Only as many examples as the sparse run reads (building logprobs takes time)."""
        if getattr(self, "_have_topk", False):
            return
        n = min(len(self.pairs), (self.sz.warm + self.sz.steps + 2) * self.sz.batch)
        lines = self.data_file.read_text().splitlines()[:n]
        part = self.work / "topk.jsonl"
        part.write_text("\n".join(lines) + "\n")
        self.kdstudio("data", "import", str(part), "--name", "topk")
        self._add_logprobs("topk", [r for _, r in self.pairs[:n]])
        self._have_topk = True

    def _add_logprobs(self, name: str, responses: list[str]) -> None:
        import numpy as np

        from kdstudio.logprobs import make
        from kdstudio.workspace import Workspace

        store = _store()
        ws = Workspace.open(self.ws_path)
        tok = self._tok()
        did = ws.db.execute("SELECT id FROM datasets WHERE name=?", (name,)).fetchone()[0]
        row_ids = [
            r[0]
            for r in ws.db.execute(
                "SELECT id FROM dataset_rows WHERE dataset_id=? ORDER BY idx", (did,)
            )
        ]
        store.create_collection(
            ws, name, dataset_id=did, teacher_name=None, params={}, source="import"
        )
        rng = np.random.default_rng(0)
        k = 20
        rows = []
        pieces = [tok.decode([i]).encode() for i in range(len(tok))]
        for idx, (row_id, text) in enumerate(zip(row_ids, responses, strict=True)):
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            t = len(ids)
            top = rng.integers(0, len(tok), size=(t, k))
            top[:, 0] = ids
            raw = rng.standard_normal((t, k)).astype(np.float32)
            raw[:, 0] += 3.0
            lp = raw - np.log(np.exp(raw).sum(-1, keepdims=True) / 0.97)  # 3% in the tail
            rows.append(
                (
                    row_id,
                    idx,
                    text,
                    0,
                    make(
                        [pieces[i] for i in ids],
                        lp[:, 0],
                        [[pieces[i] for i in r] for r in top],
                        lp,
                        token_ids=ids,
                        top_ids=top,
                    ),
                )
            )
        store.add_imported_responses(ws, name, dataset_name=name, rows=rows)
        ws.close()

    def kdstudio(self, *argv: str, check: bool = True, env: dict | None = None) -> Any:
        cmd = [sys.executable, "-m", "kdstudio", "--workspace", str(self.ws_path), *argv]
        return subprocess.run(
            cmd, check=check, capture_output=True, text=True, env={**os.environ, **(env or {})}
        )

    def config(self, name: str, student: Path | None = None, **sections: dict) -> Any:
        from kdstudio.distill.config import TrainConfig

        base: dict[str, dict[str, Any]] = {
            "student": {"path": str(student or self.student)},
            "data": {"collection": "sft", "eval_fraction": 0.0, "max_length": self.sz.seq},
            "optim": {
                "max_steps": self.sz.warm + self.sz.steps,
                "batch_size": self.sz.batch,
                "lr": 1e-4,
                "warmup": 2,
            },
            "run": {
                "name": name,
                "log_every": self.sz.warm,  # the first interval is the warm-up
                "eval_every": 0,
                "checkpoint_every": 0,
                "keep_last": 1,
                "device": self.device,
            },
        }
        for key, values in sections.items():
            base.setdefault(key, {}).update(values)
        if not self.cuda:
            base["run"]["precision"] = "fp32"
        return TrainConfig.from_dict(base)

    def train(
        self,
        config: Any,
        *,
        thread: bool = False,
        resume: bool = False,
        stop_at: int | None = None,
        on_metrics: Any = None,
        skip_intervals: tuple[int, ...] = (),
    ) -> dict:
        """Train `config` in this process; the measured interval excludes the warm-up steps
        and the final checkpoint. Returns throughput, memory and the loss curve."""
        import torch

        from kdstudio.distill.trainer import Trainer
        from kdstudio.events import CancelToken, Metrics
        from kdstudio.workspace import Workspace

        ws = Workspace.open(self.ws_path)
        cancel = CancelToken()
        sink = Recorder(cancel, stop_at, on_metrics)
        result: dict[str, Any] = {}

        def go() -> None:
            trainer = (
                Trainer.for_resume(ws, config.run.name, sink, cancel)
                if resume
                else Trainer(config, ws, sink, cancel)
            )
            try:
                trainer.setup()
                result["setup_s"] = time.monotonic() - sink.t_made
                out = trainer.train()
                result["status"] = out.status
                result["n_params"] = sum(p.numel() for p in trainer._unwrapped().parameters())
            finally:
                trainer.close()

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        lateness: list[float] = []
        if thread:
            worker = threading.Thread(target=go)
            worker.start()
            while worker.is_alive():  # the window's GUI thread: a 10 ms timer
                t = time.perf_counter()
                time.sleep(0.010)
                if sink.measuring():
                    lateness.append(time.perf_counter() - t - 0.010)
            worker.join()
            if "status" not in result:
                raise RuntimeError("the trainer thread failed (see the output above)")
        else:
            go()
        ws.close()
        metrics = [e for e in sink.events if isinstance(e, Metrics)]
        train_m = [m for m in metrics if "tokens_per_s" in m.values]
        measured = [m for i, m in enumerate(train_m) if i > 0 and i not in skip_intervals]
        measured = measured or train_m
        tps = statistics.fmean(m.values["tokens_per_s"] for m in measured) if measured else 0.0
        result.update(
            tokens_per_s=tps,
            losses=[(m.step, m.values["loss"]) for m in train_m],
            peak_gb=(torch.cuda.max_memory_allocated() / 2**30) if self.cuda else None,
            logs=[
                getattr(e, "message", "")
                for e in sink.events
                if type(e).__name__ in ("Log", "Warning")
            ],
        )
        if lateness:
            lateness.sort()
            result["lateness_p99_ms"] = 1000 * lateness[int(0.99 * (len(lateness) - 1))]
            result["lateness_max_ms"] = 1000 * lateness[-1]
        shutil.rmtree(self.ws_path / "checkpoints" / config.run.name, ignore_errors=True)
        return result

    def flops_per_token(self, shape: Shape, mean_len: float) -> float:
        """nanoGPT/PaLM: 6 N + 12 L H T, N = the parameters in matmuls (head included)."""
        h, f, v = shape.hidden, shape.intermediate, self.sz.vocab
        kv = shape.kv_heads * (h // shape.heads)
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * f
        n = shape.layers * per_layer + v * h
        return 6 * n + 12 * shape.layers * h * mean_len

    def mfu(self, tps: float, shape: Shape, mean_len: float) -> float | None:
        if not self.peak_tflops:
            return None
        return tps * self.flops_per_token(shape, mean_len) / (self.peak_tflops * 1e12)

    # -- sections --------------------------------------------------------------------------------
    def s_peak(self) -> dict:
        import torch

        n = self.sz.matmul
        dtype = torch.bfloat16 if self.cuda else torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        # ~3 s of matmuls first: an idle GPU's clocks ramp up under load, and the first
        # training run measured after this must not pay for that
        t = time.perf_counter()
        while time.perf_counter() - t < (3.0 if self.cuda else 0.1):
            a @ b
            self.sync()
        times = []
        for _ in range(10):
            self.sync()
            t = time.perf_counter()
            a @ b
            self.sync()
            times.append(time.perf_counter() - t)
        tflops = 2 * n**3 / statistics.median(times) / 1e12
        self.peak_tflops = tflops
        return {
            "tflops": tflops,
            "rows": [
                row(f"{'bf16' if self.cuda else 'fp32'} matmul {n}^3", f"{tflops:,.1f} TFLOP/s")
            ],
        }

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _data_stats(self) -> dict[str, float]:
        """Mean real length and padded share of this config's batches (the trainer's order)."""
        from kdstudio.distill.batches import build_dataset, epoch_batches, load_student_tokenizer
        from kdstudio.workspace import Workspace

        store = _store()
        ws = Workspace.open(self.ws_path)
        tok, _ = load_student_tokenizer(str(self.student))
        data = build_dataset(
            tok, store.iter_examples(ws, "sft"), max_length=self.sz.seq, eval_fraction=0.0
        )
        ws.close()
        from kdstudio.distill.batches import packed_epoch_batches

        lengths = [len(e) for e in data.train]
        batches = epoch_batches(lengths, self.sz.batch, 0, 0)
        real = sum(lengths)
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        packed = packed_epoch_batches(lengths, self.sz.batch, 0, 0, max_length=self.sz.seq)
        width = sum(max(sum(lengths[i] for i in r) for r in b) * len(b) for b in packed)
        return {
            "mean_len": real / len(lengths),
            "padded_share": 1 - real / padded,
            "packed_padded_share": 1 - real / width,
            "examples": len(lengths),
            "target_share": sum(e.n_target for e in data.train) / real
            if hasattr(data.train[0], "n_target")
            else None,
        }

    def s_sft(self) -> dict:
        stats = self._data_stats()
        profiler = IntervalProfiler(self.cuda, profile_interval=3)
        res = self.train(self.config("sft"), on_metrics=profiler.step, skip_intervals=(3,))
        self.sft_tps = res["tokens_per_s"]
        busy = profiler.result(Path(self.args.out) / "profile_sft.txt")
        ref = self._hf_trainer_tps()
        mfu = self.mfu(res["tokens_per_s"], self.sz.student, stats["mean_len"])
        ref_mfu = self.mfu(ref, self.sz.student, stats["mean_len"]) if ref else None
        rows = [
            row(
                f"SFT tokens/s (real tokens, bf16, batch {self.sz.batch} x <= {self.sz.seq})",
                fmt(res["tokens_per_s"]),
                f"{fmt(ref)} (transformers Trainer)" if ref else "",
                f"{res['tokens_per_s'] / ref:.2f}x" if ref else "",
                ">= 1.10x",
            ),
            row(
                "SFT MFU",
                f"{mfu:.1%}" if mfu is not None else "",
                f"{ref_mfu:.1%} (Trainer)" if ref_mfu is not None else "",
                "",
                ">= 45%",
            ),
            row("padded share of the batches (group_by_length)", f"{stats['padded_share']:.1%}"),
            row("GPU busy share during steps (profiler)", f"{busy['busy']:.1%}" if busy else ""),
            row("peak memory", f"{res['peak_gb']:.1f} GiB" if res["peak_gb"] else ""),
        ]
        return {
            "rows": rows,
            "kdstudio": res,
            "data": stats,
            "trainer_tps": ref,
            "profile": busy,
            "n_params": res.get("n_params"),
        }

    def _hf_trainer_tps(self) -> float | None:
        """The same model, data and batch through transformers' Trainer (bf16, fused AdamW)."""
        import torch
        from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

        from kdstudio.distill.batches import build_dataset, load_student_tokenizer
        from kdstudio.workspace import Workspace

        store = _store()
        ws = Workspace.open(self.ws_path)
        tok, _ = load_student_tokenizer(str(self.student))
        data = build_dataset(
            tok, store.iter_examples(ws, "sft"), max_length=self.sz.seq, eval_fraction=0.0
        )
        ws.close()
        rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in data.train]
        counts: list[int] = []

        def collate(items: list[dict]) -> dict:
            width = max(len(x["input_ids"]) for x in items)
            ids = torch.full((len(items), width), tok.pad_token_id)
            mask = torch.zeros((len(items), width), dtype=torch.long)
            labels = torch.full((len(items), width), -100)
            for i, x in enumerate(items):
                n = len(x["input_ids"])
                ids[i, :n] = torch.tensor(x["input_ids"])
                mask[i, :n] = 1
                labels[i, :n] = torch.tensor(x["labels"])
            counts.append(int(mask.sum()))
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}

        marks: dict[int, float] = {}
        warm, steps = self.sz.warm, self.sz.steps

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                if state.global_step in (warm, warm + steps):
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    marks[state.global_step] = time.perf_counter()

        model = AutoModelForCausalLM.from_pretrained(self.student, dtype=torch.float32)
        fields = TrainingArguments.__dataclass_fields__
        grouping = (  # transformers 5.x renamed group_by_length
            {"train_sampling_strategy": "group_by_length"}
            if "train_sampling_strategy" in fields
            else {"group_by_length": True}
        )
        args = TrainingArguments(
            **grouping,
            output_dir=str(self.work / "hf"),
            per_device_train_batch_size=self.sz.batch,
            max_steps=warm + steps,
            learning_rate=1e-4,
            warmup_steps=2,
            bf16=self.cuda,
            optim="adamw_torch_fused",
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            remove_unused_columns=False,
            use_cpu=not self.cuda,
            disable_tqdm=True,
        )
        Trainer(
            model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()]
        ).train()
        # the dataloader runs ahead by one batch: batch i is step i+1's
        tokens = sum(counts[warm : warm + steps])
        return tokens / (marks[warm + steps] - marks[warm])

    def s_packing(self) -> dict:
        from kdstudio.distill.config import DataConfig

        if "packing" not in DataConfig.__dataclass_fields__:
            return {"error": "data.packing is not in this build"}
        res = self.train(self.config("packed", data={"packing": True}))
        self.packed_res = res
        stats = self._data_stats()
        return {
            "rows": [
                *self._speed_rows("SFT with data.packing", res, self.sft_tps, "unpacked", stats),
                row(
                    "padded share of the rows, packed / unpacked",
                    f"{stats['packed_padded_share']:.1%} / {stats['padded_share']:.1%}",
                ),
                row(
                    "peak memory with packing",
                    f"{res['peak_gb']:.1f} GiB" if res["peak_gb"] else "",
                ),
            ],
            "kdstudio": res,
            "data": stats,
        }

    def _speed_rows(
        self, what: str, res: dict, base: float | None, base_what: str, stats: dict
    ) -> list[dict]:
        """Tokens/s against a reference run, and MFU (attention by the examples' mean length)."""
        tps = res["tokens_per_s"]
        mfu = self.mfu(tps, self.sz.student, stats["mean_len"])
        return [
            row(
                f"{what}: tokens/s",
                fmt(tps),
                f"{fmt(base)} ({base_what})" if base else "",
                f"{tps / base:.2f}x" if base else "",
            ),
            row(f"{what}: MFU", f"{mfu:.1%}" if mfu is not None else "", "", "", ">= 45%"),
        ]

    def s_sparse_kd(self) -> dict:
        self._topk_collection()
        res = self.train(
            self.config("sparse", data={"collection": "topk"}, distill={"method": "sparse_kd"})
        )
        base = self.sft_tps
        kd_share = next((line for line in res["logs"] if "KD" in line or "kd" in line), "")
        return {
            "rows": [
                row(
                    "sparse_kd tokens/s (top-20 stored)",
                    fmt(res["tokens_per_s"]),
                    f"{fmt(base)} (SFT)" if base else "",
                    f"{base / res['tokens_per_s']:.2f}x step time" if base else "",
                )
            ],
            "kdstudio": res,
            "notes": [kd_share[:300]] if kd_share else [],
        }

    def s_dense_kd(self) -> dict:
        from kdstudio.config import TeacherConfig
        from kdstudio.workspace import Workspace

        teacher = self._model(self.work / "teacher", self.sz.teacher, seed=1)
        ws = Workspace.open(self.ws_path)
        if "t" not in [t.name for t in ws.list_teachers()]:
            ws.add_teacher(TeacherConfig(name="t", kind="local", path=str(teacher)))
        ws.close()
        kd = self.train(self.config("dense", distill={"method": "dense_kd", "teacher": "t"}))
        fwd_tps = self._teacher_forward_tps(teacher)
        sft = self.sft_tps
        # time per real token: dense step vs (student step + teacher forward)
        combo = 1 / (1 / sft + 1 / fwd_tps) if sft and fwd_tps else None
        ratio = combo / kd["tokens_per_s"] if combo else None
        shutil.rmtree(teacher)
        return {
            "rows": [
                row(
                    "dense_kd tokens/s (teacher 1.5B)",
                    fmt(kd["tokens_per_s"]),
                    f"{fmt(combo)} (SFT step + teacher forward)" if combo else "",
                    f"{ratio:.2f}x step time" if ratio else "",
                    "<= 1.10x",
                ),
                row("teacher forward alone tokens/s", fmt(fwd_tps)),
                row("dense_kd peak memory", f"{kd['peak_gb']:.1f} GiB" if kd["peak_gb"] else ""),
            ],
            "kdstudio": kd,
            "teacher_forward_tps": fwd_tps,
        }

    def _teacher_forward_tps(self, teacher: Path) -> float:
        """The teacher's plain forward (bf16, no_grad, eval) over the trainer's batches."""
        import torch
        from transformers import AutoModelForCausalLM

        from kdstudio.distill.batches import (
            build_dataset,
            collate,
            epoch_batches,
            load_student_tokenizer,
        )
        from kdstudio.workspace import Workspace

        store = _store()
        dtype = torch.bfloat16 if self.cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype).to(self.device).eval()
        ws = Workspace.open(self.ws_path)
        tok, _ = load_student_tokenizer(str(self.student))
        data = build_dataset(
            tok, store.iter_examples(ws, "sft"), max_length=self.sz.seq, eval_fraction=0.0
        )
        ws.close()
        order = epoch_batches([len(e) for e in data.train], self.sz.batch, 0, 0)
        batches = [collate([data.train[i] for i in b], tok.pad_token_id) for b in order]
        n = self.sz.warm + self.sz.steps
        tokens, elapsed = 0, 0.0
        with torch.no_grad():
            for i, b in enumerate(batches[:n]):
                b = b.to(self.device)
                self.sync()
                t = time.perf_counter()
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
                self.sync()
                if i >= self.sz.warm:
                    elapsed += time.perf_counter() - t
                    tokens += b.n_tokens
        del model
        return tokens / elapsed

    def s_kd_memory(self) -> dict:
        """Peak memory and time of the KD loss (forward KL + CE, fwd + bwd) from final hidden
        states at V = 151,936: the trainer's fused chunked head vs full logits."""
        import torch
        import torch.nn.functional as F

        from kdstudio.distill.fused_head import cross_entropy_chunk, fused_head_loss
        from kdstudio.distill.objectives.dense import dense_fkl_chunk

        n, h, v = self.sz.kd_positions, self.sz.student.hidden, self.sz.vocab
        dtype = torch.bfloat16 if self.cuda else torch.float32
        g = torch.Generator(device=self.device).manual_seed(0)

        def inputs():
            x = torch.randn(n, h, device=self.device, dtype=dtype, generator=g).requires_grad_()
            w = (torch.randn(v, h, device=self.device, generator=g) * h**-0.5).requires_grad_()
            th = torch.randn(n, h, device=self.device, dtype=dtype, generator=g)
            tw = torch.randn(v, h, device=self.device, dtype=dtype, generator=g) * h**-0.5
            y = torch.randint(0, v, (n,), device=self.device, generator=g)
            return x, w, th, tw, y

        def full(x, w, th, tw, y):
            with torch.autocast(self.device, dtype=dtype, enabled=self.cuda):
                z = F.linear(x, w).float()
                t = F.linear(th, tw).float()
            ce = F.cross_entropy(z, y, reduction="sum")
            kl = F.kl_div(
                torch.log_softmax(z, -1), torch.log_softmax(t, -1), log_target=True, reduction="sum"
            )
            return 0.5 * ce + 0.5 * kl

        def fused(x, w, th, tw, y):
            teacher = lambda r: F.linear(th[r], tw)  # noqa: E731
            chunk = dense_fkl_chunk(y, teacher, vocab=v, w=0.5, tau=1.0)
            with torch.autocast(self.device, dtype=dtype, enabled=self.cuda):
                total, _ = fused_head_loss(chunk, x, w, None, chunk_size=512, n_stats=5)
            return total

        def full_ce(x, w, th, tw, y):
            with torch.autocast(self.device, dtype=dtype, enabled=self.cuda):
                z = F.linear(x, w).float()
            return F.cross_entropy(z, y, reduction="sum")

        def fused_ce(x, w, th, tw, y):  # what the SFT objective runs
            with torch.autocast(self.device, dtype=dtype, enabled=self.cuda):
                total, _ = fused_head_loss(
                    cross_entropy_chunk(y), x, w, None, chunk_size=512, n_stats=1
                )
            return total

        def fused_ce_2048(x, w, th, tw, y):
            with torch.autocast(self.device, dtype=dtype, enabled=self.cuda):
                total, _ = fused_head_loss(
                    cross_entropy_chunk(y), x, w, None, chunk_size=2048, n_stats=1
                )
            return total

        variants = (
            ("full", full),
            ("fused", fused),
            ("full_ce", full_ce),
            ("fused_ce", fused_ce),
            ("fused_ce_2048", fused_ce_2048),
        )
        out = {}
        for name, fn in variants:
            x, w, th, tw, y = inputs()
            fn(x, w, th, tw, y).backward()  # warm-up
            x.grad = w.grad = None
            self.free()
            self.sync()
            before = torch.cuda.memory_allocated() if self.cuda else 0
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn(x, w, th, tw, y).backward()
                self.sync()
                times.append(time.perf_counter() - t)
                x.grad = w.grad = None
            peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if self.cuda else None
            out[name] = {"peak_gb": peak, "seconds": statistics.median(times)}
            del x, w, th, tw, y
            self.free()
        f, u = out["fused"], out["full"]
        fc, uc, f2 = out["fused_ce"], out["full_ce"], out["fused_ce_2048"]
        return {
            "rows": [
                row(
                    "CE alone (SFT loss head) time / peak memory",
                    f"{fc['seconds'] * 1e3:.1f} ms / "
                    + (f"{fc['peak_gb']:.2f} GiB" if self.cuda else "-"),
                    f"{uc['seconds'] * 1e3:.1f} ms / "
                    + (f"{uc['peak_gb']:.2f} GiB" if self.cuda else "-")
                    + " (full logits)",
                    f"{fc['seconds'] / uc['seconds']:.2f}x time",
                    "< 1.00x",
                ),
                row(
                    "CE alone, fused at chunk 2048, time / peak memory",
                    f"{f2['seconds'] * 1e3:.1f} ms / "
                    + (f"{f2['peak_gb']:.2f} GiB" if self.cuda else "-"),
                    f"{uc['seconds'] * 1e3:.1f} ms (full logits)",
                    f"{f2['seconds'] / uc['seconds']:.2f}x time",
                ),
                row(
                    f"KD loss peak memory, N={n} V={v} (fwd+bwd)",
                    f"{f['peak_gb']:.2f} GiB" if f["peak_gb"] is not None else "",
                    f"{u['peak_gb']:.2f} GiB (full logits)" if u["peak_gb"] is not None else "",
                    f"{f['peak_gb'] / u['peak_gb']:.2f}x" if self.cuda else "",
                    "<= 0.35x",
                ),
                row(
                    "KD loss time (fwd+bwd)",
                    f"{f['seconds'] * 1e3:.1f} ms",
                    f"{u['seconds'] * 1e3:.1f} ms (full logits)",
                    f"{f['seconds'] / u['seconds']:.2f}x",
                    "< 1.00x",
                ),
            ],
            "measured": out,
        }

    def s_checkpointing(self) -> dict:
        res = self.train(self.config("gc", run={"gradient_checkpointing": True}))
        base = self.report.sections.get("sft", {}).get("kdstudio", {})
        return {
            "rows": [
                row(
                    "gradient checkpointing tokens/s",
                    fmt(res["tokens_per_s"]),
                    f"{fmt(base['tokens_per_s'])} (off)" if base else "",
                    f"{res['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "",
                ),
                row(
                    "gradient checkpointing peak memory",
                    f"{res['peak_gb']:.1f} GiB" if res["peak_gb"] else "",
                    f"{base['peak_gb']:.1f} GiB (off)" if base and base.get("peak_gb") else "",
                    f"{res['peak_gb'] / base['peak_gb']:.2f}x"
                    if base and base.get("peak_gb")
                    else "",
                ),
            ],
            "kdstudio": res,
        }

    def s_compile(self) -> dict:
        """torch.compile (each transformer block) on packed rows: one shape, one compile."""
        t = time.monotonic()
        res = self.train(
            self.config(
                "compiled",
                data={"packing": True},
                optim={"max_steps": self.sz.warm * 2 + self.sz.steps},
                run={"compile": True, "log_every": self.sz.warm * 2},
            )
        )
        base = getattr(self, "packed_res", None)
        stats = self._data_stats()
        base_tps = base["tokens_per_s"] if base else None
        return {
            "rows": [
                *self._speed_rows(
                    "SFT, torch.compile + packing (after warm-up)",
                    res,
                    base_tps,
                    "packing, eager",
                    stats,
                ),
                row(
                    "torch.compile peak memory",
                    f"{res['peak_gb']:.1f} GiB" if res["peak_gb"] else "",
                    f"{base['peak_gb']:.1f} GiB (eager)" if base and base.get("peak_gb") else "",
                ),
                row("torch.compile run, warm-up included", f"{time.monotonic() - t:.0f} s"),
            ],
            "kdstudio": res,
        }

    def s_resume(self) -> dict:
        """An uninterrupted run vs the same run stopped halfway and resumed (small student)."""
        steps, half = 2 * self.sz.warm, self.sz.warm
        sections = {"optim": {"max_steps": steps}, "run": {"log_every": 1}}
        whole = self.train(self.config("whole", self.small, **sections))
        cfg = self.config("split", self.small, **sections)
        first = self.train(cfg, stop_at=half)
        second = self.train(cfg, resume=True)
        a = dict(whole["losses"])
        b = dict(first["losses"]) | dict(second["losses"])
        after = [s for s in a if s > half and s in b]
        diffs = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-9) for s in after]
        before = [abs(a[s] - b[s]) for s in a if s <= half and s in b]
        return {
            "rows": [
                row(
                    f"resumed vs uninterrupted loss, steps {half + 1}-{steps}, max rel diff",
                    f"{max(diffs):.2e}" if diffs else "no steps compared",
                    "",
                    "",
                    "<= 1e-2 (bf16)" if self.cuda else "<= 1e-5 (fp32)",
                ),
                row("before the stop, max abs diff", f"{max(before):.2e}" if before else ""),
                row("status after stop / after resume", f"{first['status']} / {second['status']}"),
            ],
            "whole": whole["losses"],
            "split": sorted(b.items()),
        }

    def s_thread(self) -> dict:
        """The SFT run again, in a background thread (as the window runs it) while this thread
        times a 10 ms timer; against the same run on the main thread (the sft section)."""
        main = self.sft_tps  # measured after the GPU's clocks had ramped up (see s_peak)
        res = self.train(self.config("thread"), thread=True)
        return {
            "rows": [
                row(
                    "trainer in a background thread, tokens/s",
                    fmt(res["tokens_per_s"]),
                    f"{fmt(main)} (main thread)" if main else "",
                    f"{res['tokens_per_s'] / main:.2f}x" if main else "",
                    ">= 0.95x",
                ),
                row(
                    "main thread's 10 ms timer lateness while training, p99 / max",
                    f"{res.get('lateness_p99_ms', 0):.1f} / {res.get('lateness_max_ms', 0):.1f} ms",
                    "",
                    "",
                    "p99 < 50 ms",
                ),
            ],
            "kdstudio": res,
        }

    def s_torchrun(self) -> dict:
        """`torchrun --nproc-per-node 1 -m kdstudio train` with ddp and with fsdp (both at
        once, small student): Ctrl-C to the launcher's process group once a checkpoint
        exists, as a terminal does, then `--resume` to the end."""
        import signal

        from kdstudio.config import dumps_toml

        steps = 300
        launch = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "1", "-m", "kdstudio", "--workspace", str(self.ws_path),
            "train", "--quiet",
        ]  # fmt: skip
        procs = {}
        for parallel in ("ddp", "fsdp"):
            name = f"tr-{parallel}"
            cfg = self.config(
                name,
                self.small,
                optim={"max_steps": steps},
                run={"parallel": parallel, "checkpoint_every": self.sz.warm, "log_every": 5},
            )
            path = self.work / f"{name}.toml"
            path.write_text(dumps_toml(cfg.to_dict()))
            procs[parallel] = subprocess.Popen(
                [*launch, "--config", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        first = {}
        t = time.monotonic()
        while len(first) < len(procs) and time.monotonic() - t < 300:
            for parallel, proc in procs.items():
                folder = self.ws_path / "checkpoints" / f"tr-{parallel}"
                if parallel not in first and (
                    proc.poll() is not None
                    or (
                        folder.exists()
                        and any(p.name.startswith("step-") for p in folder.iterdir())
                    )
                ):
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
                    first[parallel] = proc
            time.sleep(0.05)
        results = {}
        for parallel, proc in procs.items():
            out, _ = proc.communicate(timeout=300)
            results[parallel] = {"rc": proc.returncode, "tail": out[-3000:]}
        stopped = {p: self._run_info(f"tr-{p}") for p in procs}
        resumed = {
            p: subprocess.Popen(
                [*launch, "--resume", f"tr-{p}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for p in procs
        }
        rows, detail = [], {}
        for parallel, proc in resumed.items():
            out, _ = proc.communicate(timeout=300)
            finished = self._run_info(f"tr-{parallel}")
            ok = (
                stopped[parallel].get("status") == "stopped"
                and proc.returncode == 0
                and finished.get("status") == "finished"
                and finished.get("step") == steps
            )
            rows.append(
                row(
                    f"torchrun nproc 1, run.parallel = {parallel}: Ctrl-C, resume",
                    f"{'ok' if ok else 'FAILED'} (stopped at step {stopped[parallel].get('step')} "
                    f"as {stopped[parallel].get('status')}, torchrun exit "
                    f"{results[parallel]['rc']}; resumed: exit {proc.returncode}, "
                    f"{finished.get('status')} at step {finished.get('step')} of {steps})",
                )
            )
            detail[parallel] = {
                "first": results[parallel],
                "stopped": stopped[parallel],
                "resume_rc": proc.returncode,
                "resume_tail": out[-3000:],
                "finished": finished,
            }
        return {"rows": rows, "detail": detail}

    def _run_info(self, name: str) -> dict:
        show = self.kdstudio("runs", "show", name, "--json", check=False)
        if show.returncode != 0:
            return {"error": show.stderr[-500:]}
        doc = json.loads(show.stdout)
        return doc.get("run", doc)


class IntervalProfiler:
    """Profiles the CUDA kernels of one logging interval of a run (CUPTI only, so the steps
    keep their CPU time): the share of the interval's wall time the GPU is busy, and the
    kernels that take it. `step` is the run's on_metrics hook."""

    def __init__(self, cuda: bool, profile_interval: int) -> None:
        self.cuda, self.at = cuda, profile_interval
        self.marks: list[float] = []
        self.prof = None

    def step(self, _event: Any) -> None:
        if not self.cuda:
            return
        from torch.profiler import ProfilerActivity, profile

        self.marks.append(time.perf_counter())
        if len(self.marks) == self.at:
            self.prof = profile(activities=[ProfilerActivity.CUDA])
            self.prof.start()
        elif len(self.marks) == self.at + 1 and self.prof is not None:
            self.prof.stop()

    def result(self, table: Path) -> dict | None:
        if self.prof is None or len(self.marks) <= self.at:
            return None
        import torch

        events = self.prof.key_averages()
        cuda = torch.autograd.DeviceType.CUDA
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == cuda)
        top = sorted(events, key=lambda e: -e.self_device_time_total)[:25]
        table.write_text(events.table(sort_by="self_device_time_total", row_limit=40))
        wall = self.marks[self.at] - self.marks[self.at - 1]
        return {
            "busy": kernel_us / 1e6 / wall,
            "interval_s": wall,
            "top": [(e.key, round(e.self_device_time_total / 1e3, 2)) for e in top],
        }


class Recorder:
    """A sink that keeps every event, stops the run at a step, and calls `on_metrics` with
    each training-metrics event."""

    def __init__(self, cancel: Any, stop_at: int | None, on_metrics: Any) -> None:
        self.events: list[Any] = []
        self.t_made = time.monotonic()
        self.cancel, self.stop_at, self.on_metrics = cancel, stop_at, on_metrics
        self._metrics = 0

    def emit(self, event: Any) -> None:
        self.events.append(event)
        if type(event).__name__ == "Metrics" and "tokens_per_s" in event.values:
            self._metrics += 1
            if self.on_metrics is not None:
                self.on_metrics(event)
            if self.stop_at is not None and event.step >= self.stop_at:
                self.cancel.cancel("gpu-check")

    def measuring(self) -> bool:
        return self._metrics >= 1


def _store() -> Any:
    """Where the collection store lives (kdstudio.collect.store; kdstudio.outputs before)."""
    try:
        from kdstudio.collect import store
    except ImportError:
        from kdstudio import outputs as store
    return store


def make_tokenizer(out: Path, pairs: list[tuple[str, str]]) -> Path:
    """A byte-level BPE trained on the check's own text, with a ChatML template (Qwen2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([p + " " + r for p, r in pairs] + ["system user assistant"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "gpu-check-out"))
    p.add_argument("--work", default=None, help="scratch folder (default: /dev/shm or /tmp)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, any device (CPU here)")
    p.add_argument("--cpu", action="store_true", help="ignore the GPU")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--budget-s", type=float, default=420, help="skip what would start after this")
    args = p.parse_args(argv)
    if args.work is None:
        shm = Path("/dev/shm")
        free = shutil.disk_usage(shm).free if shm.exists() else 0
        args.work = str((shm if free > 40 * 2**30 else Path("/tmp")) / "kdstudio-gpu-check")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    check = Check(args)
    check.run(only)
    print((Path(args.out) / "gpu_check.md").read_text())
    failed = [n for n, r in check.report.sections.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
