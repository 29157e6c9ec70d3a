"""The training config: one typed section per concern, loaded from TOML, validated on build.

    [student]  path, template
    [data]     collection, eval_fraction, max_length, ...
    [distill]  method (sft | sparse_kd | dense_kd), teacher, divergence, ...
    [optim]    max_steps or epochs, batch_size, grad_accum, lr, warmup, schedule, ...
    [run]      name, seed, checkpoint_every, eval_every, log_every, precision, device, ...
    [lora]     optional: its presence turns LoRA on (needs the `lora` extra: peft)

The help text of every setting feeds the README's config reference (`TrainConfig.help_rows`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kdstudio.config import Section, apply_overrides, check_name, load_toml, setting
from kdstudio.errors import ConfigError

# the experiment trackers `run.report_to` may name (kdstudio.trackers drives them)
TRACKERS = ("tensorboard", "mlflow", "wandb")

METHODS = ("sft", "sparse_kd", "dense_kd")
DIVERGENCES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")
ALIGNS = ("auto", "exact", "bytes", "uld")  # kdstudio.distill.align explains each


@dataclass
class StudentConfig(Section):
    _section: ClassVar[str] = "student"

    path: str = setting(
        help="The student: a Hugging Face model folder (config, weights, tokenizer)."
    )
    template: str = setting(
        "auto",
        "Chat template used to render examples: `auto` uses the tokenizer's own and falls back "
        "to kdstudio's plain template when it has none; `tokenizer` requires the tokenizer's "
        "own; `fallback` always uses kdstudio's (saved with every checkpoint).",
        choices=("auto", "tokenizer", "fallback"),
    )

    def check(self) -> None:
        if not self.path.strip():
            raise ConfigError("student.path is empty: give a Hugging Face model folder")


@dataclass
class DataConfig(Section):
    _section: ClassVar[str] = "data"

    collection: str | None = setting(
        None, "The collection of teacher outputs to train on, by name (or `collections`)."
    )
    collections: list[str] = setting(
        help="Several collections to train on together, by name (instead of `collection`): "
        "several teachers, or several sets of prompts.",
        default_factory=list,
    )
    weights: list[float] = setting(
        help="The sampling mix of `collections`, one weight per collection: each epoch draws "
        "examples from collection i in proportion to weights[i] (repeating a small one, "
        "subsampling a large one). Empty: every example once per epoch.",
        default_factory=list,
    )
    min_score: float | None = setting(
        None,
        "Train only on answers whose curation score (from a check, a judge or best-of-n, "
        "0..1) is at least this; answers without a score are left out too, except those a "
        "person accepted. Rejected answers are always left out.",
        min=0.0,
        max=1.0,
    )
    eval_fraction: float = setting(
        0.05,
        "Share of prompts held out for evaluation; deterministic, and every answer to one "
        "prompt (every sample, every collection) lands on the same side.",
        min=0.0,
        max=0.5,
    )
    split: str = setting(
        "prompt",
        "How held-out prompts are chosen: `prompt` by a hash of the prompt's messages (the "
        "same file gives the same split in any workspace); `row` by dataset row id (how runs "
        "of kdstudio 0.1 split, kept so they resume on their own split).",
        choices=("prompt", "row"),
    )
    max_length: int = setting(
        1024,
        "Longest example in tokens (prompt + response). Longer ones are cut at the end; one "
        "whose whole response would be cut away is dropped and counted.",
        min=8,
    )
    group_by_length: bool = setting(
        True,
        "Batch examples of similar length together (less padding). The batches then depend "
        "on optim.batch_size: batch_size 4 and 2 x grad_accum 2 train identically only with "
        "this off.",
    )
    packing: bool = setting(
        False,
        "Pack several examples into each row of `max_length` tokens (positions restart at each "
        "example and attention stays within it, checked on the model before the first step): "
        "fuller rows, little padding. `optim.batch_size` then counts rows, so a step holds more "
        "examples; losses are the same sums over the answer tokens.",
    )
    eval_max_examples: int = setting(
        256, "Cap on held-out examples scored at each evaluation (0 = all).", min=0
    )

    def check(self) -> None:
        if self.collection and self.collections:
            raise ConfigError("data: set `collection` (one) or `collections` (several), not both")
        if not self.collection and not self.collections:
            raise ConfigError(
                "data.collection must be set (the collection of teacher outputs to train on), "
                "or data.collections for several"
            )
        names = self.names()
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"data.collections: {name!r} is not a collection name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"data.collections names {', '.join(map(repr, dupes))} twice")
        if self.weights:
            if len(self.weights) != len(names):
                n = len(self.weights)
                raise ConfigError(
                    f"data.weights has {n} weight{'s' * (n != 1)} for {len(names)} "
                    f"collection{'s' * (len(names) != 1)}: give one per entry of "
                    "data.collections"
                )
            bad = [w for w in self.weights if not isinstance(w, (int, float)) or not w > 0]
            if bad or not all(math.isfinite(w) for w in self.weights):
                raise ConfigError(f"data.weights must be positive numbers; got {self.weights!r}")
            self.weights = [float(w) for w in self.weights]

    def names(self) -> list[str]:
        """The collections to train on, in order (one for `collection`)."""
        return [self.collection] if self.collection else list(self.collections)

    def label(self) -> str:
        """How messages name the training data: "collection 'a'" or "collections 'a', 'b'"."""
        names = self.names()
        quoted = ", ".join(repr(n) for n in names)
        return f"collection{'s' * (len(names) > 1)} {quoted}"


@dataclass
class DistillConfig(Section):
    _section: ClassVar[str] = "distill"

    method: str = setting(
        "sft",
        "`sft`: sequence-level distillation (cross-entropy on the teacher's text); "
        "`sparse_kd`: also match the teacher's stored top-k logprobs; `dense_kd`: match a "
        "local teacher's full distribution.",
        choices=METHODS,
    )
    teacher: str | None = setting(
        None, "A local teacher's name (`teacher add-local`), needed by `dense_kd`."
    )
    divergence: str = setting(
        "fkl",
        "Divergence for `dense_kd`: forward KL, reverse KL, generalized JSD (`beta`), skew KL, "
        "skew reverse KL, total variation.",
        choices=DIVERGENCES,
    )
    beta: float = setting(
        0.5, "JSD interpolation: 0 is forward KL, 1 is reverse KL.", min=0.0, max=1.0
    )
    temperature: float = setting(
        1.0, "Softmax temperature of both models in the KD term (tau^2 is applied).", min=1e-3
    )
    kd_weight: float = setting(
        0.5, "Total loss = (1 - kd_weight) * CE + kd_weight * KD.", min=0.0, max=1.0
    )
    align: str = setting(
        "auto",
        "How the teacher's tokens meet the student's: `exact` (the same tokenizer: 1:1 "
        "positions, candidates by id or exact bytes, trained on the teacher's own token "
        "sequence), `bytes` (any tokenizer: every student token gets the teacher's "
        "distribution moved onto student tokens by bytes), `uld` (sorted-probability distance, "
        "for vocabularies that share no pieces); `auto` picks exact or bytes from the data.",
        choices=ALIGNS,
    )
    tail: bool = setting(
        True,
        "`sparse_kd`: keep one tail bucket for the teacher's probability mass outside its top-k "
        "(else renormalise over the top-k).",
    )
    chunk_size: int = setting(
        512,
        "Positions per chunk when computing KD losses (bounds peak memory; 512 keeps the loss "
        "under 0.35x the memory of full logits).",
        min=1,
    )
    on_policy: float = setting(
        0.0,
        "`dense_kd`: GKD's lambda, the share of micro-batches where the student writes the "
        "response (sampling) and the teacher scores it; those train on the divergence alone.",
        min=0.0,
        max=1.0,
    )

    @staticmethod
    def fields_for(method: str, divergence: str = "fkl") -> frozenset[str]:
        """The [distill] keys that apply to `method` (and, for dense_kd, to `divergence`).
        The window shows only these and writes only these into a config; the others keep
        their defaults, which the method ignores."""
        fields = {"method"}
        if method in ("sparse_kd", "dense_kd"):
            fields |= {"temperature", "kd_weight", "chunk_size"}
        if method == "sparse_kd":
            fields |= {"tail", "align"}
        if method == "dense_kd":
            fields |= {"teacher", "divergence", "on_policy", "align"}
            if divergence == "jsd":
                fields.add("beta")
        return frozenset(fields)

    def check(self) -> None:
        if self.method == "dense_kd" and not self.teacher:
            raise ConfigError(
                "distill.teacher must name a local teacher for method dense_kd "
                "(add one with `kdstudio teacher add-local NAME --path DIR`)"
            )
        if self.on_policy and self.method != "dense_kd":
            raise ConfigError(
                "distill.on_policy needs method dense_kd (a local teacher scores what the "
                "student writes); set it to 0 for other methods"
            )
        if self.method == "sparse_kd" and self.tail and self.temperature != 1.0:
            raise ConfigError(
                "distill.temperature must be 1.0 for sparse_kd with distill.tail = true (the "
                "teacher's tail mass at another temperature is unknown); set tail = false"
            )


@dataclass
class OptimConfig(Section):
    _section: ClassVar[str] = "optim"

    max_steps: int = setting(0, "Optimizer steps to train; 0 means use `epochs` instead.", min=0)
    epochs: float = setting(
        1.0, "Passes over the training examples (used when max_steps is 0).", min=0.0
    )
    batch_size: int = setting(8, "Examples per micro-batch (per process).", min=1)
    grad_accum: int = setting(
        1,
        "Micro-batches per optimizer step. The loss is normalised by the target tokens of "
        "the whole accumulation window (across all processes), not per micro-batch.",
        min=1,
    )
    lr: float = setting(2e-5, "Peak learning rate (AdamW).", min=0.0)
    warmup: float = setting(
        0.03,
        "Linear warmup: a number of steps when >= 1, else a fraction of the total steps.",
        min=0.0,
    )
    schedule: str = setting(
        "cosine",
        "Decay after warmup, down to `min_lr_ratio * lr`.",
        choices=("cosine", "linear", "constant"),
    )
    min_lr_ratio: float = setting(0.0, "Final learning rate as a fraction of `lr`.", min=0, max=1)
    weight_decay: float = setting(
        0.0, "AdamW weight decay (not applied to biases and norms).", min=0
    )
    clip: float = setting(1.0, "Gradient clipping by global norm; 0 turns it off.", min=0.0)
    betas: list[float] = setting(help="AdamW betas.", default_factory=lambda: [0.9, 0.999])

    def check(self) -> None:
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("set optim.max_steps or optim.epochs to a positive number")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1); got {self.betas!r}")


@dataclass
class RunConfig(Section):
    _section: ClassVar[str] = "run"

    name: str | None = setting(
        None, "The run's name (checkpoint folder and `--resume` key); default: collection + time."
    )
    seed: int = setting(0, "Seed of every random generator (data order, dropout, init).")
    checkpoint_every: int = setting(
        500,
        "Save a checkpoint every N steps (and always at the end or on stop); 0 = only then.",
        min=0,
    )
    keep_last: int = setting(
        2,
        "Checkpoints to keep besides the best by eval loss (and, while training, the newest "
        "one a healthy loss has confirmed).",
        min=1,
    )
    eval_every: int = setting(
        500,
        "Evaluate on the held-out examples every N steps (and at the end); 0 = only at the end.",
        min=0,
    )
    log_every: int = setting(10, "Report training metrics every N steps.", min=1)
    stop_on_divergence: bool = setting(
        True,
        "Stop a run whose loss diverges: NaN or infinite, 100x its best at once, or over 3x its "
        "best and 2 nats above it for 3 reports in a row (kdstudio.distill.divergence). The run "
        "is marked `diverged` either way and its last good checkpoint is kept; checkpoints "
        "written after the divergence are never used as last or best.",
    )
    precision: str = setting(
        "auto",
        "`auto`: bf16 autocast on CUDA GPUs that support it, else fp32. fp16 uses a grad scaler.",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    device: str = setting("auto", "Where to train.", choices=("auto", "cuda", "cpu"))
    parallel: str = setting(
        "ddp",
        "Under torchrun: `ddp` replicates the student on every process; `fsdp` shards it "
        "(`fully_shard`) for students too big for one GPU.",
        choices=("ddp", "fsdp"),
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in the backward pass (less memory, ~30% slower)."
    )
    compile: bool = setting(False, "torch.compile the student (faster steps after a warm-up).")
    deterministic: bool = setting(
        False, "torch.use_deterministic_algorithms (bit-exact reruns; slower on GPUs)."
    )
    report_to: list[str] = setting(
        help="Experiment trackers that also get every metric, the config and the run's name "
        '(rank 0 only): any of "tensorboard", "mlflow", "wandb", each an optional extra '
        "(`pip install 'kdstudio[tensorboard]'`). One that cannot start is a warning, never "
        "a lost run.",
        default_factory=list,
    )

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):  # --set run.report_to=tensorboard,mlflow
            items = (p.strip() for p in self.report_to.split(","))
            self.report_to = [p for p in items if p and p != "none"]
        super().__post_init__()

    def check(self) -> None:
        if self.name is not None:
            check_name("run", self.name)
        for name in self.report_to:
            if name not in TRACKERS:
                raise ConfigError(
                    f"run.report_to: unknown tracker {name!r} (choose from {', '.join(TRACKERS)})"
                )
        if len(set(self.report_to)) != len(self.report_to):
            raise ConfigError(f"run.report_to names a tracker twice: {self.report_to!r}")


@dataclass
class LoraConfig(Section):
    _section: ClassVar[str] = "lora"

    r: int = setting(16, "LoRA rank: the size of the low-rank update matrices.", min=1)
    alpha: float = setting(32.0, "LoRA alpha (scale = alpha / r).", min=0.0)
    dropout: float = setting(0.05, "Dropout on the LoRA path.", min=0.0, max=1.0)
    target_modules: list[str] = setting(
        help='Module names to adapt, or ["all-linear"].', default_factory=lambda: ["all-linear"]
    )

    def check(self) -> None:
        if not self.target_modules:
            raise ConfigError('lora.target_modules is empty: name modules or use ["all-linear"]')


@dataclass
class TrainConfig(Section):
    """A whole training run. `lora` is None unless a [lora] table is given."""

    student: StudentConfig = setting(help="The student model.")
    data: DataConfig = setting(help="Training data.")
    distill: DistillConfig = setting(help="Distillation method.", default_factory=DistillConfig)
    optim: OptimConfig = setting(help="Optimizer and schedule.", default_factory=OptimConfig)
    run: RunConfig = setting(help="Run settings.", default_factory=RunConfig)
    lora: LoraConfig | None = setting(None, "LoRA adapters instead of full fine-tuning.")

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> TrainConfig:
        """A run's config as stored in the workspace. Settings that did not exist when an
        older run was made get the value that version used, not today's default, so the run
        resumes (and evaluates) as it started: before `data.split`, the split was by row."""
        data = dict(data)
        if isinstance(data.get("data"), dict) and "split" not in data["data"]:
            data["data"] = {**data["data"], "split": "row"}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        for key in ("student", "data"):
            if key not in data:
                raise ConfigError(
                    f"the config has no [{key}] table; it needs at least "
                    "[student] path and [data] collection"
                )
        for key, value in data.items():
            sections = ("student", "data", "distill", "optim", "run", "lora")
            if key in sections and not isinstance(value, dict) and value is not None:
                raise ConfigError(f"{key} must be a table ([{key}]), got {value!r}")
        return super().from_dict(data)

    def resolved(self, base: Path | None = None) -> TrainConfig:
        """A copy with the run name filled in and the student path made absolute."""
        data = self.to_dict()
        path = Path(data["student"]["path"]).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        data["student"]["path"] = str(path.resolve())
        if not data["run"].get("name"):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            data["run"]["name"] = f"{self.data.names()[0]}-{stamp}"[:64]
        return TrainConfig.from_dict(data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML file, apply `--set key=value` overrides, validate, resolve paths.

    A relative `student.path` is taken relative to the config file's folder.
    """
    path = Path(path)
    data = apply_overrides(load_toml(path), overrides or [])
    try:
        config = TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config.resolved(base=path.resolve().parent)


REFERENCE_START = "<!-- train-config-reference:start -->"
REFERENCE_END = "<!-- train-config-reference:end -->"


def reference_markdown() -> str:
    """The README's config reference table, generated from the settings' help text."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, help_text in TrainConfig.help_rows():
        if key.startswith("lora."):
            help_text = f"(only with a [lora] table) {help_text}"
        default = "(required)" if default == "(required)" else f"`{default}`"
        lines.append(f"| `{key}` | {default} | {help_text.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m kdstudio.distill.config > table.md
    print(reference_markdown())
