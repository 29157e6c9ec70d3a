"""What a run will use, decided before it starts: device, precision, data, steps, memory.

The trainer, the pre-flight and evaluation all call these rules, so what the pre-flight
reports is what the run does:

    device = pick_device(config.run.device)                    # UserError: no CUDA GPU
    precision = pick_precision(config.run.precision, device)   # .amp_dtype, .use_scaler
    with autocast(device, precision.amp_dtype): ...
    data = load_dataset(config, ws, tokenizer)                 # encoded, split, eval capped
    stream = data_stream(config, data.train)                   # this rank's batch order
    steps = total_steps(config.optim, stream.batches_per_epoch)
    est = memory_estimate(config, ws, device=device); describe_memory(est)

Memory (`memory_estimate`). Parameter counts come from the model configs (instantiated on
the meta device: no weights are read). Student weights are fp32 (the trainer keeps a fp32
master copy), gradients and AdamW's two moments fp32 for the trained parameters (all, or the
LoRA adapters), a teacher in the autocast dtype, activations by the usual per-layer count
(~34 values per hidden unit and token kept for backward, one layer's worth plus the layer
inputs under gradient checkpointing), and the loss: full fp32 logits for SFT, one chunk for
the fused KD losses. It is an estimate (±30%), meant to catch runs that cannot fit.

torch is imported inside the functions: the window imports evaluation (and so this module)
when it opens.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdstudio.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kdstudio.collect.store import Example
    from kdstudio.distill.batches import Dataset, DataStream, Encoded, Preview
    from kdstudio.distill.config import OptimConfig, TrainConfig
    from kdstudio.workspace import Workspace


# -- device and precision ----------------------------------------------------------------------


def pick_device(want: str, *, index: int | None = None, setting: str = "run.device") -> Any:
    """The torch device for `want` (auto | cuda | cpu): auto takes the CUDA GPU when there is
    one. `index` picks a GPU (a torchrun process's local rank). `setting` names the option in
    the message when CUDA is asked for but absent."""
    import torch

    if want == "cuda" and not torch.cuda.is_available():
        raise UserError(f'{setting} = "cuda" but no CUDA GPU is available (use auto or cpu)')
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda") if index is None else torch.device("cuda", index)


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: `amp_dtype` is the autocast dtype (None: fp32, no autocast);
    fp16 needs a gradient scaler."""

    name: str  # bf16 | fp16 | fp32
    amp_dtype: Any
    use_scaler: bool


def pick_precision(want: str, device: Any) -> Precision:
    """`want` (auto | bf16 | fp16 | fp32) on `device`: auto is bf16 autocast on a CUDA GPU that
    supports it, else fp32. bf16 and fp16 need a CUDA GPU (UserError otherwise)."""
    import torch

    cuda = device.type == "cuda"
    if want in ("bf16", "fp16") and not cuda:
        raise UserError(f'run.precision = "{want}" needs a CUDA GPU; use auto or fp32 on CPU')
    if want == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bf16: set run.precision to fp16 or fp32")
    if want == "auto":
        want = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[want]
    return Precision(want, dtype, want == "fp16")


def autocast(device: Any, amp_dtype: Any) -> Any:
    """The autocast context of a precision's `amp_dtype` on `device` (none for fp32)."""
    import torch

    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


# -- data and steps ----------------------------------------------------------------------------


def check_collections(config: TrainConfig, ws: Workspace) -> None:
    """Every collection of the run exists and holds answers to train on (UserError naming the
    setting otherwise)."""
    from kdstudio.collect.store import get_collection

    key = "data.collection" if config.data.collection else "data.collections"
    for name in config.data.names():
        try:
            info = get_collection(ws, name)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
        if info.source == "judge":
            raise UserError(
                f"{key}: {name!r} holds a judge's verdicts on another collection's answers, "
                "not answers to train on; train on the judged collection (its answers carry "
                "the judge's scores: data.min_score)"
            )


def iter_run_examples(
    config: TrainConfig, ws: Workspace, *, include_rejected: bool = False
) -> Iterator[Example]:
    """The examples of every collection of a run, collection after collection (each tagged
    with its collection's name), in dataset order within each."""
    from kdstudio.collect.store import iter_examples

    for name in config.data.names():
        yield from iter_examples(ws, name, include_rejected=include_rejected)


def preview_run_example(
    config: TrainConfig, ws: Workspace, tokenizer: Any, example: Example, *, fallback: bool
) -> Preview:
    """Example `example` of a run as its student will be fed it: rendered with the student's
    template and, for sparse_kd aligned "exact" (chosen, or what `auto` picks on the run's
    first 256 examples with logprobs, as the trainer does), the teacher's own token sequence
    where the server told it, not a re-tokenisation of the teacher's text."""
    from kdstudio.distill.batches import encode_example, preview_encoded, preview_example

    max_length = config.data.max_length
    pv = preview_example(
        tokenizer, example.messages, example.response, max_length, fallback=fallback
    )
    if config.distill.method != "sparse_kd" or example.logprobs is None or pv.dropped:
        return pv
    from kdstudio.distill.align import align_example, choose_mode
    from kdstudio.teachers.vocab import VocabBytes

    vocab = VocabBytes(tokenizer)
    mode = config.distill.align
    if mode == "auto":

        def encoded() -> Iterator[tuple[Encoded, str, Any]]:
            for ex in iter_run_examples(config, ws):
                if ex.logprobs is not None:
                    enc = encode_example(tokenizer, ex.messages, ex.response, max_length)
                    if enc is not None:
                        yield enc, ex.response, ex.logprobs

        mode, _ = choose_mode(encoded(), vocab, "auto")
    if mode != "exact":
        return pv
    enc = encode_example(tokenizer, example.messages, example.response, max_length)
    assert enc is not None  # not dropped (above)
    targets = align_example(
        enc, example.response, example.logprobs, vocab, mode="exact", max_length=max_length
    )
    if targets.encoded is None:
        return pv
    return preview_encoded(tokenizer, targets.encoded, pv.text, pv.template, sequence="teacher")


def load_dataset(config: TrainConfig, ws: Workspace, tokenizer: Any) -> Dataset:
    """The run's examples: its collections rendered with the student's tokenizer, split by
    prompt, the held-out part capped at `data.eval_max_examples`; rejected, empty and (with
    `data.min_score`) low-scored outputs are skipped and counted, edited ones used. The caller
    decides what an empty train part means."""
    from kdstudio.distill.batches import build_dataset

    cfg = config.data
    check_collections(config, ws)
    data = build_dataset(
        tokenizer,
        iter_run_examples(config, ws, include_rejected=True),
        max_length=cfg.max_length,
        eval_fraction=cfg.eval_fraction,
        split=cfg.split,
        min_score=cfg.min_score,
    )
    if cfg.eval_max_examples:
        data.eval = data.eval[: cfg.eval_max_examples]
    return data


def data_stream(
    config: TrainConfig, train: list[Encoded], *, rank: int = 0, world_size: int = 1
) -> DataStream:
    """The endless, resumable stream of this rank's micro-batches of the training examples
    (mixed by `data.weights` when there are several collections)."""
    from kdstudio.distill.batches import DataStream

    names = config.data.names()
    weights = config.data.weights or None
    groups = [names.index(e.example.collection) for e in train] if weights else None
    return DataStream(
        [len(e) for e in train],
        config.optim.batch_size,
        seed=config.run.seed,
        rank=rank,
        world_size=world_size,
        group_by_length=config.data.group_by_length,
        pack_length=config.data.max_length if config.data.packing else None,
        groups=groups,
        weights=weights,
    )


def check_packing(model: Any, device: Any) -> None:
    """Refuse `data.packing` for a model whose attention would mix packed examples: two short
    sequences run packed in one row must give the logits each gives alone."""
    import torch

    hf = getattr(model, "module", model)
    vocab = hf.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, vocab, (1, n), generator=gen).to(device) for n in (5, 7))
    was_training = hf.training
    hf.eval()
    try:
        with torch.no_grad():
            alone = torch.cat([hf(input_ids=x, use_cache=False).logits for x in (a, b)], dim=1)
            pos = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0).to(device)
            packed = hf(input_ids=torch.cat([a, b], dim=1), position_ids=pos, use_cache=False)
    finally:
        hf.train(was_training)
    if not torch.allclose(alone.float(), packed.logits.float(), atol=1e-3, rtol=1e-3):
        impl = getattr(hf.config, "_attn_implementation", "?")
        raise UserError(
            f"data.packing: this student's attention ({impl}) lets packed examples see each "
            'other; turn data.packing off, or load the model with attn_implementation "sdpa" '
            'or "flash_attention_2"'
        )


def total_steps(optim: OptimConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: `optim.max_steps`, else `epochs` over the data (at least 1)."""
    if optim.max_steps:
        return optim.max_steps
    return max(1, math.ceil(optim.epochs * batches_per_epoch / optim.grad_accum))


def warmup_steps(optim: OptimConfig, total: int) -> int:
    """Warmup steps: `optim.warmup` itself when >= 1, else that share of the total."""
    return int(optim.warmup if optim.warmup >= 1 else round(optim.warmup * total))


# -- learning rate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LrRange:
    """The learning rates published recipes use with AdamW for one way of training."""

    low: float
    high: float
    what: str  # "AdamW, full fine-tuning"
    source: str  # where the range comes from, said with it

    def span(self) -> str:
        """The range as text: "1e-6 to 1e-3"."""
        return f"{fmt_lr(self.low)} to {fmt_lr(self.high)}"


def fmt_lr(lr: float) -> str:
    """A learning rate as people write it: 2e-5, 1e-3, 0.1, 1000 (not 2e-05 or 0.001)."""
    if lr == 0 or 1e-2 <= abs(lr) < 1e5:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# The range depends on what is trained (all weights or LoRA adapters), not on the method:
# sparse_kd and dense_kd scale their KD term by tau^2 (Hinton et al., 2015) so its gradients
# keep the size of sft's cross-entropy, and every method trains with AdamW.
LR_RANGES = {
    "full": LrRange(
        1e-6,
        1e-3,
        "AdamW, full fine-tuning",
        "2e-5 in most LLM fine-tuning recipes (Alpaca, Vicuna, TRL's default), 5e-4 for "
        "DistilBERT, up to 1e-3 for small students trained from scratch",
    ),
    "lora": LrRange(
        1e-5,
        2e-3,
        "AdamW, LoRA adapters",
        "1e-4 to 5e-4 in the LoRA and QLoRA papers and in PEFT's and TRL's examples",
    ),
}
# "Far outside" is beyond this factor past either end: good rates vary inside the ranges
# with model size, but a rate 10x above them makes the loss explode within a few steps (a
# tiny student here, clipping off: lr 1 took its loss from 6 to 80), and 10x below barely
# moves the weights.
LR_FAR = 10.0


def usual_lr(config: TrainConfig) -> LrRange:
    """The usual learning-rate range for this config's optimiser and what it trains."""
    return LR_RANGES["lora" if config.lora is not None else "full"]


def lr_problem(config: TrainConfig) -> str | None:
    """A warning when `optim.lr` is far outside the usual range (`usual_lr`), else None.
    Pre-flight lists it and a starting run reports it; neither refuses the run."""
    lr, usual = config.optim.lr, usual_lr(config)
    span = f"{usual.span()} for {usual.what}: {usual.source}"
    if lr > usual.high * LR_FAR:
        return (
            f"learning rate {fmt_lr(lr)} (optim.lr) is far above the usual range ({span}); "
            f"{LR_FAR:g}x past it, the loss usually explodes"
        )
    if 0 < lr < usual.low / LR_FAR:
        return (
            f"learning rate {fmt_lr(lr)} (optim.lr) is far below the usual range ({span}); the "
            "weights would barely move"
        )
    if lr == 0:
        return "learning rate 0 (optim.lr): the weights would not change"
    return None


# -- memory ------------------------------------------------------------------------------------


def _meta_model(path: str) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def _shape(model: Any) -> dict[str, int]:
    cfg = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "hidden": int(getattr(cfg, "hidden_size", 0) or 0),
        "layers": int(getattr(cfg, "num_hidden_layers", 0) or 0),
        "intermediate": int(getattr(cfg, "intermediate_size", 0) or 0),
        "vocab": int(getattr(cfg, "vocab_size", 0) or 0),
    }


def _lora_params(model: Any, r: int, targets: list[str]) -> int:
    import torch

    head = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if targets != ["all-linear"] and name.rsplit(".", 1)[-1] not in targets:
            continue
        total += r * (module.in_features + module.out_features)
    return total


def _available(device: Any) -> tuple[str, int | None]:
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        return str(device), int(torch.cuda.mem_get_info(device)[1])
    try:
        return "cpu", int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return "cpu", None


def memory_estimate(
    config: TrainConfig, ws: Workspace | None = None, *, device: Any = None
) -> dict[str, Any]:
    """Estimated peak memory of a run, in bytes per part (see the module docstring).

    Keys: device, available (bytes or None), fits, total, student_weights, gradients,
    optimizer, teacher_weights, activations, loss, and the counts student_params,
    trainable_params, teacher_params. Reads configs only (no weights).
    """
    cfg = config
    student = _meta_model(cfg.student.path)
    s = _shape(student)
    trainable = (
        _lora_params(student, cfg.lora.r, list(cfg.lora.target_modules))
        if cfg.lora is not None
        else s["params"]
    )
    dev_name, available = _available(device)
    amp = cfg.run.precision in ("bf16", "fp16") or (
        cfg.run.precision == "auto" and dev_name.startswith("cuda")
    )
    act_bytes = 2 if amp else 4
    tokens = cfg.optim.batch_size * cfg.data.max_length
    t = None
    if cfg.distill.method == "dense_kd" and ws is not None and cfg.distill.teacher:
        teacher = ws.get_teacher(cfg.distill.teacher)
        if teacher.kind == "local" and teacher.path:
            t = _shape(_meta_model(teacher.path))
    per_layer = 34 * tokens * s["hidden"] * act_bytes // 2
    if cfg.run.gradient_checkpointing:
        activations = s["layers"] * tokens * s["hidden"] * act_bytes + per_layer
    else:
        activations = s["layers"] * per_layer
    if cfg.distill.method == "sft":
        loss = 3 * tokens * s["vocab"] * 4  # logits, their fp32 log-softmax, the gradient
    else:
        chunk = min(cfg.distill.chunk_size, tokens)
        loss = 6 * chunk * s["vocab"] * 4 + 4 * s["vocab"] * s["hidden"]  # + head-grad buffer
    teacher_weights = teacher_act = 0
    if t is not None:
        teacher_weights = t["params"] * act_bytes
        teacher_act = tokens * (2 * t["hidden"] + t["intermediate"]) * act_bytes
    est = {
        "device": dev_name,
        "available": available,
        "student_params": s["params"],
        "trainable_params": trainable,
        "teacher_params": t["params"] if t else 0,
        "student_weights": 4 * s["params"],
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,
        "teacher_weights": teacher_weights,
        "activations": activations + teacher_act,
        "loss": loss,
    }
    parts = ("student_weights", "gradients", "optimizer", "teacher_weights", "activations", "loss")
    est["total"] = sum(est[k] for k in parts)
    est["fits"] = None if available is None else est["total"] <= available
    return est


def fmt_bytes(n: int) -> str:
    """1.52 GiB, 46 MiB, 1.3 MiB, 420 KiB: tiny students read as more than "0 MiB"."""
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    if n >= 10 * 2**20:
        return f"{n / 2**20:.0f} MiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{max(n, 0) / 2**10:.0f} KiB"


def describe_memory(est: dict[str, Any]) -> str:
    """One line: the parts and the total against what the device has."""
    parts = [
        ("student", "student_weights"),
        ("gradients", "gradients"),
        ("optimizer", "optimizer"),
        ("teacher", "teacher_weights"),
        ("activations", "activations"),
        ("loss", "loss"),
    ]
    body = " + ".join(f"{label} {fmt_bytes(est[key])}" for label, key in parts if est[key])
    of = f" of {fmt_bytes(est['available'])}" if est.get("available") else ""
    return f"memory estimate: {body} = {fmt_bytes(est['total'])}{of} on {est['device']}"
