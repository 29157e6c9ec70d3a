"""Pre-flight checks of a distillation run, before any step: the teacher's tokenizer, memory.

    report = preflight(config, ws)             # every check below, no run created
    print(report.describe()); report.ok        # errors (problems) and notes (warnings)
    check = check_teacher(config, ws)          # dense_kd: TeacherCheck or UserError
    est = memory_estimate(config, ws)          # dict of byte counts (the GUI shows it)
    print(describe_memory(est))

The whole pre-flight (`preflight`). What `Trainer.setup()` would refuse, found without
creating a run, loading weights or building an optimizer: the student folder (its config
and tokenizer), the device and precision, the collection and the examples it gives (train,
held out, dropped as too long, skipped), the steps the run would take, the method's own
checks (dense_kd: the teacher and the tokenizers; sparse_kd: the share of response tokens
the stored logprobs cover, computed by the objective's own setup), and the memory estimate.
`kdstudio train --config F --preflight` prints it; the window's Pre-flight button shows it.

Tokenizers (`check_tokenizers`). Dense KD compares the two models' distributions id by id,
so the tokenizers must be the same: the same token for every id, and the same ids for a
probe text. Models of one family may differ only in padding rows of the embedding (e.g. a
vocab_size of 152064 vs 151936 for the same 151,665 tokens): then both distributions are
truncated to the shared rows, after checking that no token lives beyond them. Anything
else is refused with a message naming both tokenizers and the methods that still work.

Memory (`memory_estimate`). Parameter counts come from the model configs (instantiated on
the meta device: no weights are read). Student weights are fp32 (the trainer keeps a fp32
master copy), gradients and AdamW's two moments fp32 for the trained parameters (all, or the
LoRA adapters), a teacher in the autocast dtype, activations by the usual per-layer count
(~34 values per hidden unit and token kept for backward, one layer's worth plus the layer
inputs under gradient checkpointing), and the loss: full fp32 logits for SFT, one chunk for
the fused KD losses. It is an estimate (±30%), meant to catch runs that cannot fit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdstudio.errors import UserError

if TYPE_CHECKING:
    from kdstudio.distill.config import TrainConfig
    from kdstudio.workspace import Workspace

PROBE_TEXT = "Hello, world! The answer is 42.\n  Naïve café 🙂 — distillation\t(x+y)^2"


@dataclass
class TeacherCheck:
    """A local teacher that passed the tokenizer check. `shared_rows`: the vocabulary size
    KD runs over (the smaller model's rows when only padding rows differ)."""

    teacher: str
    teacher_path: str
    shared_rows: int
    student_rows: int
    teacher_rows: int
    message: str
    notes: list[str] = field(default_factory=list)


def _rows(path: str) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.vocab_size)


def _load_tokenizer(path: str, who: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the {who}'s tokenizer from {path}: {exc}") from None


def check_teacher(
    config: TrainConfig, ws: Workspace, *, student_tokenizer: Any = None
) -> TeacherCheck:
    """The dense-KD teacher of `config`: it must be local and share the student's tokenizer."""
    name = config.distill.teacher
    if not name:
        raise UserError("distill.teacher must name a local teacher for method dense_kd")
    teacher = ws.get_teacher(name)
    if teacher.kind != "local":
        raise UserError(
            f"distill.teacher {name!r} is an OpenAI-compatible endpoint: dense_kd needs a local "
            "teacher's full logits (add one with `kdstudio teacher add-local NAME --path DIR`), "
            'or collect its logprobs and train with method = "sparse_kd"'
        )
    path = teacher.path or ""
    if not (Path(path) / "config.json").exists():
        raise UserError(
            f"teacher {name!r}: {path} has no config.json (expected a Hugging Face model folder)"
        )
    student_path = config.student.path
    s_tok = student_tokenizer or _load_tokenizer(student_path, "student")
    t_tok = _load_tokenizer(path, "teacher")
    s_rows, t_rows = _rows(student_path), _rows(path)
    shared = check_tokenizers(
        s_tok,
        t_tok,
        student_rows=s_rows,
        teacher_rows=t_rows,
        student_name=f"student {student_path}",
        teacher_name=f"teacher {name!r} at {path}",
    )
    notes = []
    if (getattr(s_tok, "chat_template", None) or "") != (
        getattr(t_tok, "chat_template", None) or ""
    ):
        notes.append(
            "the teacher's chat template differs from the student's: the teacher scores the "
            "examples as the student's template renders them"
        )
    if s_rows == t_rows:
        message = f"dense_kd: teacher {name!r} shares the student's tokenizer ({s_rows:,} rows)"
    else:
        message = (
            f"dense_kd: teacher {name!r} shares the student's tokenizer; the models differ only "
            f"in padding rows ({s_rows:,} vs {t_rows:,}), KD runs over the shared {shared:,}"
        )
    return TeacherCheck(name, path, shared, s_rows, t_rows, message, notes)


def _id_table(tok: Any, n: int) -> list[str | None]:
    size = min(len(tok), n)
    return list(tok.convert_ids_to_tokens(list(range(size)))) + [None] * (n - size)


def check_tokenizers(
    student: Any,
    teacher: Any,
    *,
    student_rows: int,
    teacher_rows: int,
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> int:
    """The number of shared logit rows KD may use; UserError when the tokenizers differ.

    Accepted: every id below the smaller model's row count is the same token in both (or
    unused in both), no token of either tokenizer lives beyond it, and a probe text
    tokenizes to the same ids.
    """
    shared = min(student_rows, teacher_rows)
    problem = None
    n_s, n_t = len(student), len(teacher)
    common = min(n_s, n_t, shared)
    s_ids, t_ids = _id_table(student, common), _id_table(teacher, common)
    diff = [i for i in range(common) if s_ids[i] != t_ids[i]]
    if diff:
        i = diff[0]
        problem = (
            f"{len(diff):,} of the first {common:,} ids differ (id {i} is {s_ids[i]!r} for the "
            f"student, {t_ids[i]!r} for the teacher)"
        )
    elif n_s != n_t:
        who = "student" if n_s > n_t else "teacher"
        problem = f"the {who}'s tokenizer has {abs(n_s - n_t):,} more tokens (ids {common:,}+)"
    elif n_s > shared:
        problem = f"the tokenizers have {n_s:,} tokens but one model has only {shared:,} rows"
    elif student.encode(PROBE_TEXT, add_special_tokens=False) != teacher.encode(
        PROBE_TEXT, add_special_tokens=False
    ):
        problem = "the vocabularies match but a probe text tokenizes differently"
    if problem:
        raise UserError(
            f"dense_kd needs the teacher and the student to share a tokenizer, but the "
            f"{teacher_name} ({n_t:,} tokens) and the {student_name} ({n_s:,} tokens) differ: "
            f'{problem}. Use method = "sft" (train on the teacher\'s text) or "sparse_kd" '
            "(its stored top-k logprobs, mapped onto the student's tokens by bytes)"
        )
    return shared


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


# -- the whole pre-flight -----------------------------------------------------------------------


@dataclass
class PreflightReport:
    """What a run would start with, in plain values; `errors` would stop it, `notes` would
    not. Values stay None when a check could not get that far (see `errors`)."""

    method: str
    student: str
    collection: str
    template: str | None = None  # "the tokenizer's" or "kdstudio's fallback"
    vocab: int | None = None  # tokens in the student's tokenizer
    device: str | None = None
    precision: str | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    dropped: int | None = None  # truncation to data.max_length would remove the response
    skipped: dict[str, int] = field(default_factory=dict)  # rejected, empty response
    target_tokens: int | None = None  # loss-carrying tokens of the training examples
    total_steps: int | None = None
    teacher: dict[str, Any] | None = None  # dense_kd: name, path, shared_rows, message
    kd: dict[str, Any] | None = None  # sparse_kd: kdstudio.distill.kd.summarize_targets
    memory: dict[str, Any] | None = None  # memory_estimate
    checks: list[str] = field(default_factory=list)  # what passed, one line each
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "ok": self.ok}

    def describe(self) -> str:
        """The report as text: a verdict line, then ✓ checks, ⚠ notes and ✗ errors."""
        verdict = (
            "pre-flight passed: the run can start"
            if self.ok
            else f"pre-flight found {len(self.errors)} problem{'s' * (len(self.errors) > 1)}: "
            "the run would not start"
        )
        lines = [verdict]
        lines += [f"  ✓ {c}" for c in self.checks]
        lines += [f"  ⚠ {n}" for n in self.notes]
        lines += [f"  ✗ {e}" for e in self.errors]
        return "\n".join(lines)


def preflight(config: TrainConfig, ws: Workspace, *, device: Any = None) -> PreflightReport:
    """Every check `Trainer.setup()` makes before the first step, without creating a run,
    loading weights or building an optimizer (see the module docstring). Never raises for
    bad input: problems go to `report.errors`."""
    from kdstudio.collect.store import collection_id, iter_examples
    from kdstudio.distill.batches import DataStream, build_dataset, load_student_tokenizer

    cfg = config
    report = PreflightReport(cfg.distill.method, cfg.student.path, cfg.data.collection)

    # the student: its config and its tokenizer
    tok = None
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(cfg.student.path)
    except (OSError, ValueError) as exc:
        report.errors.append(
            f"student.path {cfg.student.path!r}: cannot load a model config there ({exc}); it "
            "must be a Hugging Face model folder"
        )
    else:
        try:
            tok, fallback = load_student_tokenizer(cfg.student.path, cfg.student.template)
        except UserError as exc:
            report.errors.append(str(exc))
        else:
            report.vocab = len(tok)
            report.template = "kdstudio's fallback" if fallback else "the tokenizer's"
            report.checks.append(
                f"student {cfg.student.path}: {len(tok):,} tokens, {report.template} chat template"
            )
            if fallback:
                report.notes.append(
                    "the student's tokenizer has no chat template: kdstudio's plain template is "
                    "used (and saved with the checkpoints) [student.template]"
                )

    # the device and precision, by the trainer's own rules (no run, no process group)
    amp_dtype = None
    try:
        from kdstudio.distill.trainer import Trainer

        probe = Trainer(cfg, ws)
        if device is not None:
            import torch

            probe.device = torch.device(device)
        else:
            probe.device = probe._pick_device()
        amp_dtype, _ = probe._pick_precision()
        report.device = str(probe.device)
        report.precision = str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32"
        report.checks.append(f"device {report.device}, precision {report.precision}")
    except UserError as exc:
        report.errors.append(str(exc))

    # the collection and the examples it gives
    data = None
    try:
        collection_id(ws, cfg.data.collection)
    except UserError as exc:
        report.errors.append(f"data.collection: {exc}")
    else:
        if tok is not None:
            data = build_dataset(
                tok,
                iter_examples(ws, cfg.data.collection, include_rejected=True),
                max_length=cfg.data.max_length,
                eval_fraction=cfg.data.eval_fraction,
            )
            if cfg.data.eval_max_examples:
                data.eval = data.eval[: cfg.data.eval_max_examples]
            report.train_examples, report.eval_examples = len(data.train), len(data.eval)
            report.dropped, report.skipped = data.dropped, dict(data.skipped)
            report.target_tokens = sum(e.n_target for e in data.train)
            if not data.train:
                report.errors.append(data.why_no_train(cfg.data.collection, cfg.data.max_length))
            else:
                o = cfg.optim
                stream = DataStream([len(e) for e in data.train], o.batch_size, seed=cfg.run.seed)
                report.total_steps = o.max_steps or max(
                    1, math.ceil(o.epochs * stream.batches_per_epoch / o.grad_accum)
                )
                accum = f" x {o.grad_accum} accumulated" if o.grad_accum > 1 else ""
                report.checks.append(
                    f"collection {cfg.data.collection!r}: {len(data.train):,} train / "
                    f"{len(data.eval):,} eval examples ({report.target_tokens:,} response tokens "
                    f"to learn); {report.total_steps:,} steps of batch {o.batch_size}{accum}"
                )
            if data.dropped:
                report.notes.append(
                    f"{data.dropped} examples dropped: truncating them to {cfg.data.max_length} "
                    "tokens would cut away the whole response [data.max_length]"
                )
            if data.skipped.get("empty"):
                report.notes.append(
                    f"{data.skipped['empty']} examples with an empty response skipped"
                )
            if data.skipped.get("rejected"):
                report.notes.append(f"{data.skipped['rejected']} rejected examples skipped")

    # the method's own checks
    memory = None
    if cfg.distill.method == "dense_kd" and tok is not None:
        try:
            check = check_teacher(cfg, ws, student_tokenizer=tok)
        except (UserError, OSError, ValueError) as exc:
            report.errors.append(str(exc))
        else:
            report.teacher = {
                "name": check.teacher,
                "path": check.teacher_path,
                "shared_rows": check.shared_rows,
                "student_rows": check.student_rows,
                "teacher_rows": check.teacher_rows,
                "message": check.message,
            }
            report.checks.append(check.message)
            report.notes += [f"{n} [distill.teacher]" for n in check.notes]
    elif cfg.distill.method == "sparse_kd" and data is not None and data.train:
        memory = _sparse_checks(cfg, ws, tok, data, report, amp_dtype)

    # memory
    if memory is None and tok is not None:
        try:
            memory = memory_estimate(cfg, ws, device=report.device)
        except (OSError, ValueError, UserError) as exc:
            report.notes.append(f"memory estimate unavailable: {exc}")
    if memory is not None:
        report.memory = memory
        line = describe_memory(memory)
        avail = memory.get("available")
        if avail and memory["total"] > avail:
            report.errors.append(
                f"{line}: the run would not fit; lower optim.batch_size or data.max_length, "
                "turn on run.gradient_checkpointing, or train LoRA adapters"
            )
        elif avail and memory["total"] > 0.9 * avail:
            report.notes.append(
                f"{line}: over 90% of what the device has; lower optim.batch_size or "
                "data.max_length, or turn on run.gradient_checkpointing [memory]"
            )
        else:
            report.checks.append(line)
    _tracker_checks(cfg, report)
    return report


def _tracker_checks(cfg: TrainConfig, report: PreflightReport) -> None:
    """A tracker that is not installed is a note: the run goes on without it."""
    from kdstudio import trackers

    ready = [n for n in cfg.run.report_to if trackers.installed(n)]
    if ready:
        report.checks.append(f"reports to {', '.join(trackers.TITLES[n] for n in ready)}")
    for name in cfg.run.report_to:
        if name not in ready:
            report.notes.append(
                f"run.report_to names {name!r} but it is not installed "
                f"({trackers.install_hint(name)}): the run will go on without it [run.report_to]"
            )


def _sparse_checks(
    cfg: TrainConfig,
    ws: Workspace,
    tok: Any,
    data: Any,
    report: PreflightReport,
    amp_dtype: Any,
) -> dict[str, Any] | None:
    """sparse_kd: the objective's own setup (alignment of the stored logprobs to the
    student's tokens) on the training examples; its log lines and warnings go to the report.
    Returns the memory estimate it made."""
    import torch

    from kdstudio.distill.kd import summarize_targets
    from kdstudio.distill.objectives import ObjectiveContext, make_objective
    from kdstudio.events import ListSink, Log
    from kdstudio.events import Warning as WarningEvent

    objective = make_objective(cfg)
    sink = ListSink()
    try:
        objective.setup(
            ObjectiveContext(
                config=cfg,
                ws=ws,
                tokenizer=tok,
                device=torch.device(report.device or "cpu"),
                autocast_dtype=amp_dtype,
                sink=sink,
                extra={"train": data.train},
            )
        )
    except UserError as exc:
        report.errors.append(str(exc))
        return None
    finally:
        objective.close()
    report.kd = summarize_targets(objective.targets.values())
    for event in sink.events:
        if isinstance(event, WarningEvent) and event.where != "memory":
            where = f" [{event.where}]" if event.where else ""
            report.notes.append(f"{event.message}{where}")
        elif isinstance(event, Log) and event.message.startswith("sparse_kd:"):
            report.checks.append(event.message)
    return getattr(objective, "memory", None)
