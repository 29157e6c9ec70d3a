"""The settings of each automatic curator (the CLI's `outputs check|judge|best` options and
the window's Curate forms are both generated from these fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from kdstudio.collect.config import CollectConfig
from kdstudio.config import Section, setting
from kdstudio.errors import ConfigError

BY = ("check", "judge", "confidence")
ON_ERROR = ("pending", "reject")


def _as_collector(name: str, default: Any = dataclasses.MISSING) -> Any:
    """A setting of the collection job, with its own help and bounds (the judge's requests
    go through that job)."""
    f = CollectConfig.__dataclass_fields__[name]
    meta = f.metadata
    default = f.default if default is dataclasses.MISSING else default
    return setting(default, meta["help"], min=meta["min"], max=meta["max"])


THRESHOLD_HELP = (
    "Scores are 0..1 (a check's True is 1, False 0; a judge's 0-10 is divided by 10): at or "
    "above this the answer is accepted, below it rejected."
)


@dataclass
class CheckConfig(Section):
    """A program decides each answer (`kdstudio outputs check`)."""

    _section: ClassVar[str] = "check"

    collection: str = setting(help="The collection whose answers to check.")
    # not `check`: Section.check() is the cross-field validation
    check_spec: str = setting(
        help="Your function `FILE.py:NAME` or `module:NAME`, called as (prompt, answer, "
        "reference) -> bool or a float from 0 to 1 (or (that, reason)); or a built-in: "
        "`exact` or `numeric[:TOLERANCE]` against the dataset's reference answer, "
        "`regex:PATTERN` (found in the answer), `json-schema:FILE.json` (the answer is JSON "
        "that matches the schema)."
    )
    threshold: float = setting(0.5, THRESHOLD_HELP, min=0.0, max=1.0)
    timeout: float = setting(
        10.0,
        "Seconds one answer may take; a check that runs longer is stopped (its process is "
        "replaced) and the answer gets that as its reason.",
        min=0.1,
    )
    workers: int = setting(
        4, "Processes checking at once (at most the number of CPU cores).", min=1, max=64
    )
    on_error: str = setting(
        "pending",
        "An answer whose check raised, hung, crashed its process or returned something other "
        "than a bool or a 0..1 float: `pending` (undecided, the error is its reason) or "
        "`reject`.",
        choices=ON_ERROR,
    )


@dataclass
class JudgeConfig(Section):
    """A teacher scores each answer (`kdstudio outputs judge`)."""

    _section: ClassVar[str] = "judge"

    collection: str = setting(help="The collection whose answers to judge.")
    teacher: str = setting(help="The teacher that judges (any teacher: remote or local).")
    rubric: str | None = setting(
        None,
        "A text file with the judge's prompt: {prompt}, {answer} and {reference} are replaced "
        "by the prompt, the answer and the dataset's reference answer (or '(none)'); it must "
        "ask for a score from 0 to 10. Unset: kdstudio's rubric.",
    )
    name: str | None = setting(
        None,
        "The judge's own collection, where its answers are kept and cached (default: "
        "COLLECTION.judge.TEACHER).",
    )
    threshold: float = setting(0.5, THRESHOLD_HELP, min=0.0, max=1.0)
    max_tokens: int = _as_collector("max_tokens", 256)
    concurrency: int = _as_collector("concurrency")
    budget: float | None = _as_collector("budget")
    timeout: float = _as_collector("timeout")
    max_retries: int = _as_collector("max_retries")
    batch_api: bool = setting(
        False, CollectConfig.__dataclass_fields__["batch_api"].metadata["help"]
    )
    local_batch_size: int = _as_collector("local_batch_size")

    def judge_collection(self) -> str:
        return self.name or f"{self.collection}.judge.{self.teacher}"[:64]


@dataclass
class BestConfig(Section):
    """Best-of-n: the best sample of each prompt is accepted, the others rejected
    (`kdstudio outputs best`)."""

    _section: ClassVar[str] = "best"

    collection: str = setting(help="The collection with several samples per prompt.")
    by: str = setting(
        help="The score that ranks the samples: `check` (a check's, from `outputs check`), "
        "`judge` (a judge's, from `outputs judge`), `confidence` (the teacher's mean token "
        "probability), or one curator by name, e.g. `check:exact` or `judge:gpt`. Ties go to "
        "the more confident sample, then the lower sample number."
    )
    min_score: float | None = setting(
        None,
        "A prompt whose best sample scores below this has every sample rejected (none is "
        "good enough). Unset: the best is accepted whatever its score.",
        min=0.0,
        max=1.0,
    )

    def check(self) -> None:
        kind = self.by.split(":", 1)[0]
        if kind not in BY or (kind == "confidence" and ":" in self.by):
            raise ConfigError(
                f"best.by must be check, judge or confidence, or a curator such as check:exact; "
                f"got {self.by!r}"
            )
