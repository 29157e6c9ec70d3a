"""The one check of a Hugging Face model folder named by the user, before anything loads it.

Every place that reads a model from a path the user gave (the student, a local teacher, a
run's starting weights for evaluation and export) calls `check_model_folder` first. Without
it, `from_pretrained` takes a path that does not exist for a Hub repo id and answers, after a
few seconds of trying, "Repo id must be in the form 'repo_name' or 'namespace/repo_name'",
which names neither the setting nor the real problem.

    folder = check_model_folder(cfg.student.path, "student.path")   # Path, or UserError
"""

from __future__ import annotations

from pathlib import Path

from kdstudio.errors import UserError


def model_folder_problem(path: str | Path, *, model: bool = True) -> str | None:
    """What is wrong with `path` as a model folder ("folder … does not exist", …), or None;
    `model=False` asks only for a folder (one that holds just a tokenizer). Cheap (a few
    stat calls): the window asks it while a path is typed."""
    folder = Path(path).expanduser()
    if not str(path).strip():
        return "no folder given"
    if not folder.exists():
        return f"folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a model folder"
    if model and not (folder / "config.json").is_file():
        return (
            f"folder {folder} has no config.json (expected a Hugging Face model folder: "
            "config.json, the weights and the tokenizer)"
        )
    return None


def check_model_folder(path: str | Path, what: str, *, model: bool = True) -> Path:
    """`path` as a Path when it is a Hugging Face model folder (any folder with
    `model=False`), else a UserError naming `what` (the setting or the thing:
    "student.path", "teacher 'big'") and the problem."""
    problem = model_folder_problem(path, model=model)
    if problem is not None:
        raise UserError(f"{what}: {problem}")
    return Path(path).expanduser()
