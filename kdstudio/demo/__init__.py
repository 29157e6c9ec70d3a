"""The offline demo: the whole distillation job on a task whose answers can be checked.

    result = Demo(ws, DemoPlan.full(), sink, cancel).run()
    print(result.table())

Nothing is downloaded and no key is needed. Every step goes through the same core as a
user's own work, so the workspace it leaves is an ordinary one to browse in the studio:

1. task: prompts generated here (reverse a few letters, sort a few digits, as chat prompts)
   whose answers a program checks; a training set, imported with its reference answers as
   a collection, and a disjoint held-out set, both through the real import path;
2. tokenizer and models: a byte-level BPE tokenizer trained on the task's text, a teacher
   and a smaller student (tiny Llamas, random weights) that share it;
3. teacher: trained on the reference answers with the real `Trainer` (method `sft`; run
   `demo-teacher`, curves and checkpoints like any run), exported, added as a local teacher;
4. collection: the teacher answers the training prompts through the real collection job,
   greedy, with its top-20 logprobs and token ids;
5. student: distilled from that collection (`sparse_kd` from the stored logprobs by
   default, or `dense_kd` with the local teacher; run `demo-student`), and beside it the same
   student trained with plain `sft` on the same collection, steps and seed (run
   `demo-student-sft`), so the table shows what the teacher's distribution added;
6. best of n: the teacher answers the training prompts again at temperature 1, `samples`
   answers each (`demo-task.sampled`); the task's check (`demo/task_check.py`, run by
   `kdstudio outputs check`) decides each, best-of-n keeps one right answer per prompt
   (none where no sample is right), and two students are trained with the same steps and
   seed: on the kept answers (`demo-student-best`) and on the unfiltered first sample of
   each prompt (`demo-task.unfiltered`, the same answers from the cache;
   `demo-student-unfiltered`);
7. scores: task accuracy (answers checked by the program, not compared with the teacher)
   of the teacher, the student before, after distillation and after SFT, and the students
   on sampled answers, on held-out prompts that none of the models trained on.

Re-running reuses what is done: datasets, tokenizer, models, finished runs and the
collection are kept; a stopped run resumes from its last checkpoint and a stopped collection
from its last stored answer. Stopping (the CancelToken) finishes the current step, saves,
and raises `Cancelled`. The plan a workspace was built with is stored in `demo/plan.json`;
another plan in the same workspace is refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import string
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kdstudio.errors import Cancelled, UserError
from kdstudio.events import (
    CancelToken,
    Event,
    FanoutSink,
    Finished,
    Log,
    Metrics,
    NullSink,
    Progress,
    RowDone,
    Sink,
)
from kdstudio.formatting import duration
from kdstudio.workspace import Workspace

DEMO_FOLDER = "demo"  # in the workspace: task files, tokenizer, initial models, plan, results
TRAIN_DATASET = "demo-task"
TEST_DATASET = "demo-heldout"
REFERENCE_COLLECTION = "demo-task.reference"
TEACHER = "demo-teacher"  # the teacher's training run, its export and the local teacher
STUDENT = "demo-student"  # the student's distillation run
SFT_STUDENT = "demo-student-sft"  # the same student, data, steps and seed with plain SFT
SAMPLED = f"{TRAIN_DATASET}.sampled"  # several answers a prompt at temperature 1
UNFILTERED = f"{TRAIN_DATASET}.unfiltered"  # the first of them, as they come
STUDENT_BEST = "demo-student-best"  # trained on best-of-n by the task's check
STUDENT_UNFILTERED = "demo-student-unfiltered"  # trained on the unfiltered first samples
CHECK_FILE = "task_check.py"  # in DEMO_FOLDER: the task's check, as a user writes one
METHODS = ("sparse_kd", "dense_kd")
STEPS = ("task", "models", "teacher", "collect", "student", "best-of-n", "score")
STATUS_FILE = "status.json"  # in DEMO_FOLDER: the step and progress, for a window to show
STATUS_EVERY_S = 1.0  # progress is written at most this often (steps and the end at once)

# -- the task ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One chat prompt of the task and its correct answer."""

    kind: str  # reverse | sort
    prompt: str
    answer: str


def solve(prompt: str) -> str | None:
    """The correct answer to a task prompt, computed from the prompt alone (None: not one)."""
    head, _, body = prompt.partition(":")
    items = body.split()
    if not items:
        return None
    if head == "Reverse the letters":
        return " ".join(reversed(items))
    if head == "Sort the digits":
        return " ".join(sorted(items))
    return None


def is_correct(prompt: str, answer: str) -> bool:
    """Whether `answer` solves `prompt` (spacing is not judged: 'c b a' == ' c  b a ')."""
    expected = solve(prompt)
    return expected is not None and " ".join(answer.split()) == expected


def _problem(rng: random.Random, kind: str, length: int) -> Problem:
    if kind == "reverse":
        items = rng.choices(string.ascii_lowercase, k=length)
        prompt = "Reverse the letters: " + " ".join(items)
    else:
        items = rng.choices(string.digits, k=length)
        prompt = "Sort the digits: " + " ".join(items)
    return Problem(kind, prompt, solve(prompt) or "")


def make_problems(
    n_train: int, n_test: int, *, seed: int = 0, lengths: tuple[int, int] = (3, 6)
) -> tuple[list[Problem], list[Problem]]:
    """`n_train` training and `n_test` held-out problems, half of each kind, no prompt in both
    (nor twice in one). Deterministic for a seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[list[Problem]] = [[], []]
    for part, n in enumerate((n_train, n_test)):
        while len(out[part]) < n:
            kind = ("reverse", "sort")[len(out[part]) % 2]
            p = _problem(rng, kind, rng.randint(*lengths))
            if p.prompt not in seen:
                seen.add(p.prompt)
                out[part].append(p)
    return out[0], out[1]


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of everything the demo builds. `full()` is the `kdstudio demo` default;
    `quick()` is a shrunken one for tests (the same steps, minutes -> seconds)."""

    name: str = "full"
    n_train: int = 2000
    n_test: int = 200
    seed: int = 0
    vocab_size: int = 320
    teacher_layers: int = 3
    teacher_hidden: int = 128
    student_layers: int = 1
    student_hidden: int = 64
    teacher_steps: int = 800
    student_steps: int = 1200
    batch_size: int = 32
    teacher_lr: float = 2e-3
    student_lr: float = 3e-3
    method: str = "sparse_kd"
    kd_weight: float = 0.5
    max_new_tokens: int = 16
    samples: int = 4  # answers per prompt at temperature 1, for best-of-n

    @classmethod
    def full(cls, **changes: Any) -> DemoPlan:
        return cls(**changes)

    @classmethod
    def quick(cls, **changes: Any) -> DemoPlan:
        small = {
            "name": "quick",
            "n_train": 800,
            "n_test": 60,
            "teacher_layers": 1,
            "teacher_hidden": 64,
            "student_layers": 1,
            "student_hidden": 32,
            "teacher_steps": 400,
            "student_steps": 400,
            "teacher_lr": 3e-3,
            "samples": 3,
        }
        return cls(**{**small, **changes})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"demo method {self.method!r}: choose one of {', '.join(METHODS)}")
        if min(self.n_train, self.n_test, self.teacher_steps, self.student_steps, self.samples) < 1:
            raise UserError("demo plan: sizes and step counts must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the result --------------------------------------------------------------------------------


@dataclass
class Score:
    """One model's answers to the held-out prompts: correct answers per task kind."""

    model: str
    params: int
    correct: dict[str, int]
    total: dict[str, int]
    agree_with_teacher: int | None = None

    @property
    def n(self) -> int:
        return sum(self.total.values())

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / max(self.n, 1)

    def kind_accuracy(self, kind: str) -> float:
        return self.correct.get(kind, 0) / max(self.total.get(kind, 0), 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}


@dataclass
class DemoResult:
    """What a demo run reached and how long each step took (seconds, this run only)."""

    workspace: Path
    plan: DemoPlan
    scores: list[Score]
    timings: dict[str, float]
    reused: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)
    # the best-of-n step's figures (`Demo.curation_figures`)
    curation: dict[str, Any] = field(default_factory=dict)

    HEADERS: ClassVar[list[str]] = [
        "MODEL", "PARAMS", "ACCURACY", "REVERSE", "SORT", "SAME AS TEACHER",
    ]  # fmt: skip

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    def score(self, model: str) -> Score:
        """The score of `teacher`, `before`, `after`, `sft`, `unfiltered` or `best`."""
        return next(s for s in self.scores if s.model == model)

    def rows(self) -> list[list[str]]:
        """The result table (`HEADERS`), one row per model."""
        rows = []
        for s in self.scores:
            agree = "-" if s.agree_with_teacher is None else f"{s.agree_with_teacher / s.n:.0%}"
            rows.append(
                [
                    MODEL_LABELS[s.model].format(method=self.plan.method, n=self.plan.samples),
                    f"{s.params / 1e6:.2f}M",
                    f"{s.accuracy:.1%} ({sum(s.correct.values())}/{s.n})",
                    f"{s.kind_accuracy('reverse'):.0%}",
                    f"{s.kind_accuracy('sort'):.0%}",
                    agree,
                ]
            )
        return rows

    def curation_line(self) -> str:
        """What best-of-n did: how often a sample was right, how many prompts it kept."""
        c = self.curation
        if not c:
            return ""
        return (
            f"best of {self.plan.samples} at temperature 1: {c['correct_share']:.0%} of the "
            f"{c['samples']:,} sampled answers are right (the first sample of each prompt: "
            f"{c['first_correct_share']:.0%}); the check kept one right answer for "
            f"{c['kept']:,} of {c['prompts']:,} prompts"
        )

    def timing_line(self) -> str:
        parts = ", ".join(
            f"{k} {duration(v)}" + (" (reused)" if k in self.reused else "")
            for k, v in self.timings.items()
        )
        return f"took {duration(self.seconds)}: {parts}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": str(self.workspace),
            "plan": self.plan.to_dict(),
            "scores": [s.to_dict() for s in self.scores],
            "timings": self.timings,
            "seconds": self.seconds,
            "reused": self.reused,
            "examples": self.examples,
            "curation": self.curation,
        }


MODEL_LABELS = {
    "teacher": "teacher (trained on the references)",
    "before": "student before distillation",
    "after": "student after ({method})",
    "sft": "student after sft (same data and steps)",
    "unfiltered": "student on sampled answers, unfiltered",
    "best": "student on sampled answers, best of {n} by the check",
}


# -- the pipeline ------------------------------------------------------------------------------


class _Console:
    """Passes the jobs' progress and messages on, without their per-step metrics or rows.

    One console sink shows every job of the demo in turn, so its progress clock (rate, ETA)
    restarts when another job begins: a new step, another unit, or a count going back.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._last: tuple[str, int] | None = None

    def new_job(self) -> None:
        self._last = None
        if hasattr(self.sink, "_start"):  # ConsoleSink times progress from its first event
            self.sink._start = None

    def emit(self, event: Event) -> None:
        if isinstance(event, Progress):
            if self._last and (event.unit != self._last[0] or event.done < self._last[1]):
                self.new_job()
            self._last = (event.unit, event.done)
        if not isinstance(event, (Metrics, RowDone, Finished)):
            self.sink.emit(event)


class _StatusFile:
    """The demo's state in a small JSON file, atomically replaced: the current step (its
    "[i/6] …" line), the last progress of that step, and how the demo ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step, self.progress = "", None
        self._written = 0.0
        self.write("running", "")

    def emit(self, event: Event) -> None:
        if isinstance(event, Log) and event.message.startswith("["):
            self.step, self.progress = event.message, None
            self.write("running", "")
        elif isinstance(event, Progress):
            self.progress = event
            if time.time() - self._written >= STATUS_EVERY_S or event.done == event.total:
                self.write("running", "")

    def end(self, state: str, message: str) -> None:
        self.write(state, message)

    def write(self, state: str, message: str) -> None:
        p = self.progress
        doc = {
            "state": state,
            "step": self.step,
            "progress": None if p is None else [p.done, p.total, p.unit],
            "message": message,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "t": time.time(),
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)
        self._written = doc["t"]


class Demo:
    """The demo pipeline on one workspace; `run()` does every step that is not done yet."""

    def __init__(
        self,
        ws: Workspace,
        plan: DemoPlan | None = None,
        sink: Sink | None = None,
        cancel: CancelToken | None = None,
        *,
        threads: int | None = 1,
    ) -> None:
        self.ws, self.plan = ws, plan or DemoPlan.full()
        self.cancel = cancel or CancelToken()
        self.folder = ws.folder(DEMO_FOLDER)
        # The steps and their progress also go to demo/status.json, where a window open on
        # the workspace (`kdstudio demo` opens one beside this process) shows them. A file,
        # not the database: a job holding a write transaction must never wait for it.
        self.status = _StatusFile(self.folder / STATUS_FILE)
        self.sink = FanoutSink([sink or NullSink(), self.status])
        self.job_sink = _Console(self.sink)
        self.threads = threads
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []

    # -- paths --------------------------------------------------------------------------------
    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / "tokenizer"

    @property
    def teacher_init(self) -> Path:
        return self.folder / "teacher-init"

    @property
    def student_init(self) -> Path:
        return self.folder / "student-init"

    @property
    def teacher_dir(self) -> Path:
        return self.ws.exports_dir / TEACHER

    @property
    def collection(self) -> str:
        return f"{TRAIN_DATASET}.{TEACHER}"

    # -- driver -------------------------------------------------------------------------------
    def run(self) -> DemoResult:
        """Every step in order (skipping what is done); the result table."""
        with _torch_threads(self.threads):
            try:
                result = self._run()
            except Cancelled as exc:
                self.status.end("stopped", str(exc))
                raise
            except Exception as exc:
                self.status.end("failed", str(exc) if isinstance(exc, UserError) else repr(exc))
                raise
        self.status.end("complete", "")
        return result

    def _run(self) -> DemoResult:
        self._check_plan()
        steps: list[tuple[str, str, Callable[[], bool]]] = [
            ("task", "importing the task's prompts", self.make_task),
            ("models", "building the tokenizer, the teacher and the student", self.make_models),
            ("teacher", "training the teacher on the reference answers", self.train_teacher),
            ("collect", "collecting the teacher's answers with logprobs", self.collect),
            ("student", f"distilling the student ({self.plan.method})", self.train_student),
            (
                "best-of-n",
                f"best of {self.plan.samples} by the task's check, against unfiltered answers",
                self.best_of_n,
            ),
        ]
        for i, (key, what, step) in enumerate(steps, start=1):
            self.cancel.raise_if_cancelled()
            self.job_sink.new_job()
            self.sink.emit(Log(f"[{i}/{len(STEPS)}] {what}"))
            with self._timed(key):
                if not step():
                    self.reused.append(key)
                    self.sink.emit(Log("  already done: reusing it"))
        self.sink.emit(Log(f"[{len(STEPS)}/{len(STEPS)}] scoring answers on held-out prompts"))
        self.job_sink.new_job()
        with self._timed("score"):
            scores, examples = self.score()
            self.evaluate_student()
        result = DemoResult(
            self.ws.root,
            self.plan,
            scores,
            dict(self.timings),
            list(self.reused),
            examples,
            self.curation_figures(),
        )
        self._write_json("results.json", result.to_dict())
        return result

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _check_plan(self) -> None:
        path = self.folder / "plan.json"
        mine = self.plan.to_dict()
        if path.exists():
            # a setting added since this workspace was built takes this version's value
            stored = {**mine, **json.loads(path.read_text())}
            if stored != mine:
                diff = ", ".join(
                    f"{k} {stored.get(k)!r} -> {v!r}" for k, v in mine.items() if stored.get(k) != v
                )
                raise UserError(
                    f"the demo workspace {self.ws.root} was built with another plan ({diff}); "
                    "use another --workspace for this one"
                )
        else:
            self._write_json("plan.json", mine)

    def _write_json(self, name: str, doc: Any) -> None:
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, self.folder / name)

    # -- 1. task --------------------------------------------------------------------------------
    def problems(self) -> tuple[list[Problem], list[Problem]]:
        return make_problems(self.plan.n_train, self.plan.n_test, seed=self.plan.seed)

    def make_task(self) -> bool:
        from kdstudio.data import store
        from kdstudio.data.importer import import_dataset

        train, test = self.problems()
        did = False
        for name, problems, collection in (
            (TRAIN_DATASET, train, REFERENCE_COLLECTION),
            (TEST_DATASET, test, None),
        ):
            if store.exists(self.ws, name):
                continue
            path = self.folder / f"{name}.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for p in problems:
                    fh.write(json.dumps({"prompt": p.prompt, "response": p.answer}) + "\n")
            result = import_dataset(
                self.ws,
                path,
                name=name,
                as_collection=collection,
                sink=self.job_sink,
                cancel=self.cancel,
                note="generated by `kdstudio demo`: reverse letters / sort digits, checkable",
            )
            self.sink.emit(Log("  " + result.describe()))
            did = True
        return did

    # -- 2. tokenizer and models -------------------------------------------------------------
    def make_models(self) -> bool:
        from kdstudio.demo.tiny import make_model, make_tokenizer

        p = self.plan
        did = False
        if not (self.tokenizer_dir / "tokenizer.json").exists():
            train, _ = self.problems()
            texts = [f"{x.prompt}\n{x.answer}" for x in train]
            _atomic_dir(
                self.tokenizer_dir, lambda d: make_tokenizer(d, texts, vocab_size=p.vocab_size)
            )
            did = True
        for path, layers, hidden, seed in (
            (self.teacher_init, p.teacher_layers, p.teacher_hidden, p.seed),
            (self.student_init, p.student_layers, p.student_hidden, p.seed + 1),
        ):
            if not (path / "config.json").exists():
                _atomic_dir(
                    path,
                    lambda d, layers=layers, hidden=hidden, seed=seed: make_model(
                        d, self.tokenizer_dir, layers=layers, hidden=hidden, seed=seed,
                        max_positions=128,
                    ),
                )  # fmt: skip
                did = True
        if did:
            self.sink.emit(
                Log(
                    f"  teacher {_params(self.teacher_init) / 1e6:.2f}M parameters, student "
                    f"{_params(self.student_init) / 1e6:.2f}M, one tokenizer "
                    f"({p.vocab_size} tokens)"
                )
            )
        return did

    # -- 3. teacher -----------------------------------------------------------------------------
    def train_config(
        self, name: str, student: Path, collection: str, *, seed: int | None = None, **distill: Any
    ) -> Any:
        """The demo's training config of run `name` (the teacher's sizes for TEACHER, else the
        student's); `seed` instead of the plan's (bench/bench_kd_quality.py trains several)."""
        from kdstudio.distill.config import TrainConfig

        p = self.plan
        steps = p.teacher_steps if name == TEACHER else p.student_steps
        lr = p.teacher_lr if name == TEACHER else p.student_lr
        every = max(steps // 4, 1)
        eval_every = max(steps // 10, 1)
        return TrainConfig.from_dict(
            {
                "student": {"path": str(student)},
                "data": {"collection": collection, "eval_fraction": 0.05, "max_length": 64},
                "distill": distill or {"method": "sft"},
                "optim": {
                    "max_steps": steps,
                    "batch_size": p.batch_size,
                    "lr": lr,
                    "warmup": max(steps // 20, 1),
                    "min_lr_ratio": 0.1,
                    "weight_decay": 0.01,
                },
                "run": {
                    "name": name,
                    "seed": p.seed if seed is None else seed,
                    "checkpoint_every": every,
                    "eval_every": eval_every,
                    "log_every": max(steps // 60, 1),
                    "keep_last": 1,
                    "device": "auto",
                },
            }
        ).resolved()

    def train(self, config: Any) -> bool:
        """Train run `config.run.name` to the end (resuming it when it was stopped)."""
        from kdstudio.distill import runs
        from kdstudio.distill.trainer import Trainer, run_training

        name = config.run.name
        if name in runs.run_names(self.ws):
            run = runs.get_run(self.ws, name)
            if run.status == "finished":
                return False
            self.sink.emit(Log(f"  resuming run {name} ({run.status} at step {run.step})"))
            trainer = Trainer.for_resume(self.ws, name, self.job_sink, self.cancel)
        else:
            trainer = Trainer(config, self.ws, self.job_sink, self.cancel)
        result = run_training(trainer)
        if result.status != "finished":
            raise Cancelled(
                f"run {name} stopped at step {result.step}; run the demo again to resume it"
            )
        self.sink.emit(
            Log(
                f"  run {name}: {result.step} steps, loss {result.loss:.3f}"
                + (f", eval loss {result.eval_loss:.3f}" if result.eval_loss is not None else "")
            )
        )
        return True

    def train_teacher(self) -> bool:
        from kdstudio.config import TeacherConfig
        from kdstudio.export import ExportConfig, export

        did = self.train(self.train_config(TEACHER, self.teacher_init, REFERENCE_COLLECTION))
        if not (self.teacher_dir / "config.json").exists():
            if self.teacher_dir.exists() and not any(self.teacher_dir.iterdir()):
                self.teacher_dir.rmdir()
            export(
                ExportConfig(run=TEACHER, out=self.teacher_dir), self.ws, self.job_sink, self.cancel
            )
            did = True
        if TEACHER not in self.ws.teacher_names():
            self.ws.add_teacher(
                TeacherConfig(name=TEACHER, kind="local", path=str(self.teacher_dir), model=TEACHER)
            )
            self.sink.emit(Log(f"  added local teacher {TEACHER!r}: {self.teacher_dir}"))
            did = True
        return did

    # -- 4. collection --------------------------------------------------------------------------
    def collect_config(self) -> Any:
        from kdstudio.collect import CollectConfig

        return CollectConfig(
            teacher=TEACHER,
            dataset=TRAIN_DATASET,
            name=self.collection,
            max_tokens=self.plan.max_new_tokens,
            temperature=0.0,
            top_logprobs=20,
            local_batch_size=64,
        )

    def collect(self) -> bool:
        from kdstudio.collect import collect
        from kdstudio.collect.store import collection_status_counts

        if self.collection in _collection_names(self.ws):
            counts = collection_status_counts(self.ws, self.collection)
            if counts["total"] and counts["done"] == counts["total"]:
                return False
        summary = collect(self.collect_config(), self.ws, self.job_sink, self.cancel)
        self.sink.emit(Log(f"  {summary.message} in {duration(summary.elapsed)}"))
        return True

    # -- 5. student -----------------------------------------------------------------------------
    def train_student(self) -> bool:
        """The distilled student, then the same student with plain SFT on the same data, steps
        and seed: the table's honest comparison (does the teacher's distribution help here?)."""
        distill: dict[str, Any] = {"method": self.plan.method, "kd_weight": self.plan.kd_weight}
        if self.plan.method == "dense_kd":
            distill["teacher"] = TEACHER
        did = self.train(self.train_config(STUDENT, self.student_init, self.collection, **distill))
        sft = self.train_config(SFT_STUDENT, self.student_init, self.collection, method="sft")
        return self.train(sft) or did

    # -- 6. best of n -----------------------------------------------------------------------------
    def sample_config(self, name: str, samples: int) -> Any:
        """The teacher at temperature 1: `samples` answers a prompt (one: the first of them,
        which the collection cache gives back without generating again)."""
        from kdstudio.collect import CollectConfig

        return CollectConfig(
            teacher=TEACHER,
            dataset=TRAIN_DATASET,
            name=name,
            samples=samples,
            max_tokens=self.plan.max_new_tokens,
            temperature=1.0,
            seed=self.plan.seed,
            top_logprobs=20,
            local_batch_size=64,
        )

    def write_check(self) -> Path:
        """The task's check as a file, the way a user writes one for their own task."""
        path = self.folder / CHECK_FILE
        text = (
            '"""The demo task\'s check, written as you would write one for your own task:\n\n'
            f"    kdstudio outputs check {SAMPLED} --check {CHECK_FILE}:check\n\n"
            "It gets the prompt, the answer and the dataset's reference answer, and returns\n"
            'True or False (or a score from 0 to 1, or (that, "a reason")).\n"""\n\n'
            "from kdstudio.demo import is_correct\n\n\n"
            "def check(prompt, answer, reference):\n"
            "    return is_correct(prompt, answer)\n"
        )
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return path

    def best_of_n(self) -> bool:
        """Sample, check, choose the best; train a student on the chosen answers and one on
        the unfiltered first samples, with the same steps and seed."""
        from kdstudio.collect import collect
        from kdstudio.curate import BestConfig, CheckConfig, best_of_n, run_check
        from kdstudio.curate.job import curations

        did = False
        for name, samples in ((SAMPLED, self.plan.samples), (UNFILTERED, 1)):
            if not self._collected(name):
                summary = collect(
                    self.sample_config(name, samples), self.ws, self.job_sink, self.cancel
                )
                self.sink.emit(Log(f"  {summary.message} in {duration(summary.elapsed)}"))
                did = True
        done = {c["kind"] for c in curations(self.ws, SAMPLED) if c["status"] == "done"}
        if did or done != {"check", "best"}:
            check = CheckConfig(
                collection=SAMPLED, check_spec=f"{self.write_check()}:check", workers=1
            )
            run_check(check, self.ws, self.job_sink, self.cancel)  # each logs what it decided
            best = BestConfig(collection=SAMPLED, by="check", min_score=1.0)
            best_of_n(best, self.ws, self.job_sink, self.cancel)
            did = True
        distill: dict[str, Any] = {"method": self.plan.method, "kd_weight": self.plan.kd_weight}
        if self.plan.method == "dense_kd":
            distill["teacher"] = TEACHER
        for run, collection in ((STUDENT_UNFILTERED, UNFILTERED), (STUDENT_BEST, SAMPLED)):
            config = self.train_config(run, self.student_init, collection, **distill)
            did = self.train(config) or did
        return did

    def _collected(self, name: str) -> bool:
        from kdstudio.collect.store import collection_status_counts

        if name not in _collection_names(self.ws):
            return False
        counts = collection_status_counts(self.ws, name)
        return bool(counts["total"]) and counts["done"] == counts["total"]

    def curation_figures(self) -> dict[str, Any]:
        """How right the sampled answers are, and what best-of-n kept (from the workspace)."""
        from kdstudio.collect.store import collection_id

        cid = collection_id(self.ws, SAMPLED)
        decider = f"check:{CHECK_FILE}:check"
        right = self.ws.query(
            "SELECT h.sample, h.score FROM review_history h JOIN (SELECT MAX(id) AS id FROM"
            " review_history WHERE collection_id=? AND decider=? GROUP BY row_id, sample) last"
            " ON last.id = h.id",
            (cid, decider),
        )
        first = [r["score"] == 1.0 for r in right if r["sample"] == 0]
        kept = self.ws.query_one(
            "SELECT COUNT(*) FROM collection_items WHERE collection_id=? AND review='accepted'",
            (cid,),
        )[0]
        return {
            "samples": len(right),
            "correct_share": sum(r["score"] == 1.0 for r in right) / max(len(right), 1),
            "first_correct_share": sum(first) / max(len(first), 1),
            "prompts": len(first),
            "kept": int(kept),
        }

    # -- 7. scores ------------------------------------------------------------------------------
    def score(self) -> tuple[list[Score], list[dict[str, str]]]:
        """Accuracy of the teacher, the student before and after, on the held-out prompts."""
        from transformers.utils import logging as hf_logging

        from kdstudio.distill import checkpoint as ckpt
        from kdstudio.distill.plan import pick_device

        hf_logging.disable_progress_bar()
        _, test = self.problems()
        device = pick_device("auto")
        models = [
            ("teacher", lambda: _load(self.teacher_dir, device)),
            ("before", lambda: _load(self.student_init, device)),
            ("after", lambda: ckpt.load_student(self.ws, STUDENT, "last", str(device))),
            ("sft", lambda: ckpt.load_student(self.ws, SFT_STUDENT, "last", str(device))),
            (
                "unfiltered",
                lambda: ckpt.load_student(self.ws, STUDENT_UNFILTERED, "last", str(device)),
            ),
            ("best", lambda: ckpt.load_student(self.ws, STUDENT_BEST, "last", str(device))),
        ]
        answers: dict[str, list[str]] = {}
        scores = []
        for key, load in models:
            self.cancel.raise_if_cancelled()
            model, tok = load()
            score, answers[key] = self.score_model(key, model, tok, device, answers.get("teacher"))
            scores.append(score)
            label = MODEL_LABELS[key].format(method=self.plan.method, n=self.plan.samples)
            self.sink.emit(Log(f"  {label}: {score.accuracy:.1%} correct"))
        examples = [
            {"prompt": p.prompt, "expected": p.answer, **{k: v[i] for k, v in answers.items()}}
            for i, p in enumerate(test[:6])
        ]
        return scores, examples

    def score_model(
        self,
        key: str,
        model: Any,
        tok: Any,
        device: Any,
        teacher_answers: Sequence[str] | None = None,
    ) -> tuple[Score, list[str]]:
        """One model's task accuracy on the held-out prompts (and how often it answers as the
        teacher did, given the teacher's answers), with its answers."""
        _, test = self.problems()
        got = self._answers(model, tok, [p.prompt for p in test], device)
        correct = dict.fromkeys(("reverse", "sort"), 0)
        total = dict.fromkeys(("reverse", "sort"), 0)
        for p, a in zip(test, got, strict=True):
            total[p.kind] += 1
            correct[p.kind] += is_correct(p.prompt, a)
        same = None
        if teacher_answers is not None:
            same = sum(a == t for a, t in zip(got, teacher_answers, strict=True))
        params = sum(x.numel() for x in model.parameters())
        return Score(key, params, correct, total, same), got

    def evaluate_student(self) -> bool:
        """The studio's side-by-side evaluation of the student run (before / after / teacher's
        text) on the run's own held-out prompts, once per final checkpoint."""
        from kdstudio.distill import runs
        from kdstudio.evaluate import EvalConfig, evaluate, latest_evaluation

        run = runs.get_run(self.ws, STUDENT)
        if latest_evaluation(self.ws, STUDENT, step=run.step) is not None:
            return False
        config = EvalConfig(run=STUDENT, max_new_tokens=self.plan.max_new_tokens, batch_size=64)
        evaluation = evaluate(config, self.ws, self.job_sink, self.cancel)
        rouge = evaluation.summary["metrics"]["rouge_l"]
        self.sink.emit(
            Log(
                f"  evaluation {evaluation.id} of run {STUDENT} (ROUGE-L against the teacher's "
                f"answers: {rouge['before']:.2f} before, {rouge['after']:.2f} after)"
            )
        )
        return True

    def _answers(self, model: Any, tok: Any, prompts: Sequence[str], device: Any) -> list[str]:
        from kdstudio.evaluate import generate_answers

        out: list[str] = []
        for start in range(0, len(prompts), 100):
            chunk = [[{"role": "user", "content": p}] for p in prompts[start : start + 100]]
            out += generate_answers(
                model,
                tok,
                chunk,
                max_new_tokens=self.plan.max_new_tokens,
                stop_ids=[tok.eos_token_id],
                device=device,
            )
        return out


def is_complete(ws: Workspace) -> bool:
    """Whether the demo in `ws` has run to the end (its results are stored)."""
    return (ws.folder(DEMO_FOLDER) / "results.json").exists()


def stored_result(ws: Workspace) -> dict[str, Any] | None:
    """The last result written in `ws` (as `DemoResult.to_dict`), if any."""
    path = ws.folder(DEMO_FOLDER) / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True)
class DemoStatus:
    """What the demo in a workspace is doing, from its demo/status.json (`demo_status`)."""

    state: str  # running | stopped | failed | complete | gone (its process died)
    step: str  # "[4/6] collecting the teacher's answers with logprobs"
    progress: tuple[int, int | None, str] | None  # (done, total, unit) of the current step
    message: str  # why it stopped or failed
    result: dict[str, Any] | None  # DemoResult.to_dict() when complete
    t: float  # when the demo last wrote its status

    def accuracy_line(self) -> str:
        """Held-out accuracy of teacher, student before and after (complete demos only)."""
        if not self.result:
            return ""
        acc = {s["model"]: s["accuracy"] for s in self.result.get("scores", [])}
        line = (
            f"held-out accuracy: teacher {acc.get('teacher', 0):.0%}, student "
            f"{acc.get('before', 0):.0%} before and {acc.get('after', 0):.0%} after distillation"
        )
        return line + (f" ({acc['sft']:.0%} with SFT alone)" if "sft" in acc else "")


def demo_status(root: Path) -> DemoStatus | None:
    """The state of the demo in workspace folder `root` (None: no demo ever ran there).
    One small file read; a window asks about once a second."""
    path = Path(root) / DEMO_FOLDER / STATUS_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    state = doc.get("state", "running")
    if state == "running" and doc.get("host") == socket.gethostname():
        from kdstudio.workspace import pid_alive

        if not pid_alive(int(doc.get("pid") or 0)):
            state = "gone"
    result = None
    if state == "complete":
        results = Path(root) / DEMO_FOLDER / "results.json"
        try:
            result = json.loads(results.read_text())
        except (OSError, ValueError):
            result = None
    progress = doc.get("progress")
    return DemoStatus(
        state=state,
        step=doc.get("step", ""),
        progress=tuple(progress) if progress else None,
        message=doc.get("message", ""),
        result=result,
        t=float(doc.get("t", 0.0)),
    )


def default_workspace() -> Path:
    """A `demo` folder beside the default workspace (never the user's own workspace)."""
    from kdstudio.workspace import default_path

    return default_path().parent / "demo"


# -- helpers -----------------------------------------------------------------------------------


def _atomic_dir(target: Path, build: Callable[[Path], Any]) -> None:
    """Build a folder under a temporary name and rename it into place (no half-written one)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """CPU threads of torch for the demo's duration. Its models are so small that one
    thread is about as fast as several on an idle machine, and several threads spinning on
    a busy one are many times slower (measured: 15x on 2 shared cores)."""
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _params(path: Path) -> int:
    config = json.loads((path / "config.json").read_text())
    h, n, v = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inter = config["intermediate_size"]
    return 2 * v * h + n * (4 * h * h + 3 * h * inter + 2 * h) + h


def _load(path: Path, device: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _collection_names(ws: Workspace) -> list[str]:
    from kdstudio.collect.store import collection_names

    return collection_names(ws)
