"""The pre-flight of a distillation run: every check before the first step, in one report.

    report = preflight(config, ws)             # no run created, no weights loaded
    print(report.describe()); report.ok        # errors (problems) and notes (warnings)

What `Trainer.setup()` would refuse, found without creating a run, loading weights or
building an optimizer, by the same rules the trainer uses (`kdstudio.distill.plan`): the
student folder (its config and tokenizer), the device and precision, the collection and the
examples it gives (train, held out, dropped as too long, skipped), the steps the run would
take, the method's own checks (dense_kd: the teacher and the tokenizers,
`objectives.dense.check_teacher`; sparse_kd: the share of response tokens the stored logprobs
cover, computed by the objective's own setup), and the memory estimate
(`plan.memory_estimate`). `kdstudio train --config F --preflight` prints it; the window's
Pre-flight button shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdstudio.distill import plan
from kdstudio.errors import UserError

if TYPE_CHECKING:
    from kdstudio.distill.config import TrainConfig
    from kdstudio.workspace import Workspace


# -- the whole pre-flight -----------------------------------------------------------------------


@dataclass
class PreflightReport:
    """What a run would start with, in plain values; `errors` would stop it, `notes` would
    not. Values stay None when a check could not get that far (see `errors`)."""

    method: str
    student: str
    collection: str  # the run's collections, joined by ", "
    template: str | None = None  # "the tokenizer's" or "kdstudio's fallback"
    vocab: int | None = None  # tokens in the student's tokenizer
    device: str | None = None
    precision: str | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    dropped: int | None = None  # truncation to data.max_length would remove the response
    skipped: dict[str, int] = field(default_factory=dict)  # rejected, empty, low score
    # per collection: its teacher and its train / eval / dropped / skipped examples
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    target_tokens: int | None = None  # loss-carrying tokens of the training examples
    total_steps: int | None = None
    teacher: dict[str, Any] | None = None  # dense_kd: name, path, shared_rows, message
    kd: dict[str, Any] | None = None  # sparse_kd: align.summarize_targets + "align" (the mode)
    memory: dict[str, Any] | None = None  # plan.memory_estimate
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
    from kdstudio.distill.batches import load_student_tokenizer
    from kdstudio.model_folder import model_folder_problem

    cfg = config
    report = PreflightReport(cfg.distill.method, cfg.student.path, ", ".join(cfg.data.names()))

    # the student: its folder, its config and its tokenizer
    tok = None
    try:
        problem = model_folder_problem(cfg.student.path)
        if problem is not None:
            raise UserError(f"student.path: {problem}")
        from transformers import AutoConfig

        AutoConfig.from_pretrained(cfg.student.path)
    except UserError as exc:
        report.errors.append(str(exc))
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

    # the device and precision, by the trainer's own rules
    amp_dtype = None
    try:
        if device is not None:
            import torch

            chosen = torch.device(device)
        else:
            chosen = plan.pick_device(cfg.run.device, index=0)
        precision = plan.pick_precision(cfg.run.precision, chosen)
        amp_dtype = precision.amp_dtype
        report.device = str(chosen)
        report.precision = str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32"
        report.checks.append(f"device {report.device}, precision {report.precision}")
    except UserError as exc:
        report.errors.append(str(exc))

    # the collections and the examples they give
    data = None
    try:
        plan.check_collections(cfg, ws)
    except UserError as exc:
        report.errors.append(str(exc))
    else:
        if tok is not None:
            data = plan.load_dataset(cfg, ws, tok)
            report.train_examples, report.eval_examples = len(data.train), len(data.eval)
            report.dropped, report.skipped = data.dropped, dict(data.skipped)
            report.target_tokens = sum(e.n_target for e in data.train)
            report.collections = _per_collection(ws, data)
            if not data.train:
                report.errors.append(data.why_no_train(cfg.data.label(), cfg.data.max_length))
            else:
                o = cfg.optim
                stream = plan.data_stream(cfg, data.train)
                report.total_steps = plan.total_steps(o, stream.batches_per_epoch)
                accum = f" x {o.grad_accum} accumulated" if o.grad_accum > 1 else ""
                report.checks.append(
                    f"{cfg.data.label()}: {len(data.train):,} train / "
                    f"{len(data.eval):,} eval examples ({report.target_tokens:,} response tokens "
                    f"to learn); {report.total_steps:,} steps of batch {o.batch_size}{accum}"
                )
                if len(report.collections) > 1:
                    report.checks += [_collection_line(n, c) for n, c in report.collections.items()]
                if cfg.data.weights:
                    mix = ", ".join(
                        f"{n} {w / sum(cfg.data.weights):.0%}"
                        for n, w in zip(cfg.data.names(), cfg.data.weights, strict=True)
                    )
                    report.checks.append(f"each epoch mixes {mix} [data.weights]")
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
            low = data.skipped.get("below min_score", 0) + data.skipped.get("unscored", 0)
            if low:
                report.notes.append(
                    f"{low} examples below data.min_score = {cfg.data.min_score} or without a "
                    f"score skipped ({data.skipped.get('unscored', 0)} unscored)"
                )

    # the method's own checks
    memory = None
    if cfg.distill.method == "dense_kd" and tok is not None:
        from kdstudio.distill.objectives.dense import check_teacher

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
                "align": check.align,
                "message": check.message,
            }
            report.checks.append(check.message)
            report.notes += [f"{n} [distill.teacher]" for n in check.notes]
    elif cfg.distill.method == "sparse_kd" and data is not None and data.train:
        memory = _sparse_checks(cfg, ws, tok, data, report, amp_dtype)

    # memory
    if memory is None and tok is not None:
        try:
            memory = plan.memory_estimate(cfg, ws, device=report.device)
        except (OSError, ValueError, UserError) as exc:
            report.notes.append(f"memory estimate unavailable: {exc}")
    if memory is not None:
        report.memory = memory
        line = plan.describe_memory(memory)
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
    _lr_check(cfg, report)
    _tracker_checks(cfg, report)
    return report


def _lr_check(cfg: TrainConfig, report: PreflightReport) -> None:
    """A learning rate far outside the usual range is a note (the run may still be meant)."""
    problem = plan.lr_problem(cfg)
    if problem:
        report.notes.append(f"{problem} [optim.lr]")
    else:
        usual, lr = plan.usual_lr(cfg), cfg.optim.lr
        where = "within" if usual.low <= lr <= usual.high else "near"
        report.checks.append(
            f"optim.lr {plan.fmt_lr(lr)}: {where} the usual range for {usual.what} ({usual.span()})"
        )


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

    from kdstudio.distill.align import summarize_targets
    from kdstudio.distill.objectives import ObjectiveContext, SparseKD
    from kdstudio.events import ListSink, Log
    from kdstudio.events import Warning as WarningEvent

    objective = SparseKD(cfg)
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
    report.kd = {**summarize_targets(objective.targets.values()), "align": objective.mode}
    for event in sink.events:
        if isinstance(event, WarningEvent) and event.where != "memory":
            where = f" [{event.where}]" if event.where else ""
            report.notes.append(f"{event.message}{where}")
        elif isinstance(event, Log) and event.message.startswith(("sparse_kd:", "align ")):
            report.checks.append(event.message)
    return getattr(objective, "memory", None)


def _per_collection(ws: Workspace, data: Any) -> dict[str, dict[str, Any]]:
    """Each collection's teacher and examples (train, eval, dropped, skipped)."""
    from kdstudio.collect.store import get_collection

    out = {}
    for name, counts in data.per_collection.items():
        out[name] = {"teacher": get_collection(ws, name).teacher_name, **counts}
    return out


def _collection_line(name: str, c: dict[str, Any]) -> str:
    teacher = f" (teacher {c['teacher']})" if c.get("teacher") else ""
    left = [f"{c[k]:,} {k}" for k in ("skipped", "dropped") if c.get(k)]
    return f"  {name}{teacher}: {c['train']:,} train / {c['eval']:,} eval" + (
        f" ({', '.join(left)})" if left else ""
    )
