"""Helpers for the curation tests: a collection of given answers to prompts with reference
answers, imported through the real import path, and small check files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kdstudio.workspace import Workspace
from support.train_data import add_answers


def answered(
    ws: Workspace,
    tmp_path: Path,
    answers: Sequence[str | Sequence[str]],
    *,
    references: Sequence[str | None] | None = None,
    name: str = "quiz",
    teacher: str = "teacher-a",
) -> str:
    """Dataset `name` (prompts "question i", with `references` as the file's answers) and
    collection `name.teacher` holding `answers` (a list per row: several samples)."""
    from kdstudio.data.importer import import_dataset

    src = tmp_path / f"{name}.jsonl"
    with src.open("w", encoding="utf-8") as f:
        for i in range(len(answers)):
            record = {"prompt": f"question {i}"}
            if references is not None and references[i] is not None:
                record["response"] = references[i]
            f.write(json.dumps(record) + "\n")
    import_dataset(ws, src, name=name)
    return add_answers(ws, f"{name}.{teacher}", name, answers, teacher=teacher)


def write_checks(folder: Path) -> Path:
    """checks.py: `flaky` misbehaves on cue words in the answer; `length` scores by length."""
    path = folder / "checks.py"
    path.write_text(
        """import math, os, sys, time


def flaky(prompt, answer, reference):
    if "raise" in answer:
        raise ValueError("boom")
    if "hang" in answer:
        time.sleep(60)
    if "garbage" in answer:
        return "yes"
    if "nan" in answer:
        return math.nan
    if "crash" in answer:
        os._exit(3)
    if "exit" in answer:
        sys.exit(4)
    return "good" in answer


def length(prompt, answer, reference):
    return min(len(answer) / 20, 1.0), f"{len(answer)} characters"


def slow(prompt, answer, reference):
    time.sleep(0.15)
    return True
""",
        encoding="utf-8",
    )
    return path
