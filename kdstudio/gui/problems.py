"""Expected failures in the window's own words, with the action that fixes them.

The core's messages are written for the terminal: they name the command or flag that fixes
a problem (`--set run.name=NEW`, `kdstudio teacher add … --replace`). In the window the
same fix is a button or a field, so `window_words` rewrites those parts, and `FIX_ACTIONS`
names the button for a core error's `fix` (kdstudio.errors.KdError.with_fix).

`expected_problem` decides what is a message rather than a crash report: kdstudio's own
errors, and the environment's refusals (a missing or unreadable file, a full disk, a GPU
out of memory, a server that cannot be reached). Everything else is a bug and gets the
error dialog.
"""

from __future__ import annotations

import errno
import re
import sqlite3

from kdstudio.errors import Cancelled, KdError

# The button a panel's message shows for a core error's `fix`.
FIX_ACTIONS = {
    "edit_teacher": "Edit teacher…",
    "rename_run": "Choose another name",
    "resume_run": "Resume it",
}

# (pattern, replacement), applied in order: the specific ones first, then flags in general.
_WORDS: list[tuple[str, str]] = [
    # teachers and keys
    (
        r"store a valid one with `kdstudio teacher add [^`]*`",
        "edit the teacher and paste a valid key (Edit teacher…)",
    ),
    (r"store one with `kdstudio teacher add [^`]*`", "edit the teacher and paste its key"),
    (
        r"or add the teacher with `--api-key-env VAR_NAME`",
        "or let the teacher read its key from an environment variable (Edit teacher…)",
    ),
    (
        r"`kdstudio teacher probe [^`]*` lists the models it serves: change the teacher's "
        r"--model, then re-run the same command",
        "Probe (in Teachers) lists the models it serves: edit the teacher's model, then press "
        "Start again",
    ),
    (
        r"\(add one with `kdstudio teacher add-local [^`]*`\)",
        "(add one in Teachers: Add teacher…, Local Hugging Face model)",
    ),
    (r"set --price-in/--price-out", "set its prices (Edit teacher…)"),
    # collections
    (
        r"\(see `kdstudio outputs list [^`]*--status failed`\)",
        "(filter Outputs by state “failed”)",
    ),
    (r"re-run with a larger --budget to continue", "raise the budget and press Start to continue"),
    (r"larger --budget for the rest", "larger budget for the rest"),
    (
        r"re-run with --batch-api to pick up its results",
        "tick “Batch api” and press Start to pick up its results",
    ),
    (r"re-run the same command to resume", "press Start to resume"),
    (r"re-run the same command to retry", "press Start to retry"),
    (r"re-run the same command", "press Start again"),
    (r"choose another --name", "choose another collection name"),
    (r"collect with --top-logprobs", "collect with “Top logprobs” set"),
    # runs
    (
        r"continue it with `kdstudio train --resume [^`]*`, or pick another name with "
        r"--set run\.name=NEW",
        "resume it (Stopped runs, Resume), or choose another run name (Run, Name)",
    ),
    (r"\(resume with `kdstudio train --resume [^`]*`\)", "(resume it in the Train panel)"),
    (r"--set run\.name=NEW", "another run name (Run, Name)"),
    # datasets
    (r"use --skip-bad to import", "tick “Skip bad rows” to import"),
    (r"use --dedupe to drop them", "tick “Drop duplicates” to drop them"),
    (r"--map (\w+)=COLUMN", r"choose the column for \1"),
    (r"--map (\w+)=([\w.-]+)", r"the column “\2” for \1"),
    (r"e\.g\. --name ([\w.-]+)", r"e.g. \1"),
    (r"remove it first with `kdstudio data remove [^`]*`", "remove it first in Datasets"),
    (r"use another --workspace for this one", "use another workspace for this one"),
]
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def window_words(text: str) -> str:
    """A core message with its terminal instructions turned into the window's words."""
    for pattern, replacement in _WORDS:
        text = re.sub(pattern, replacement, text)
    # Any flag left is a setting of the same name in the window's forms.
    return _FLAG.sub(lambda m: "“" + m.group(1).replace("-", " ").capitalize() + "”", text)


def expected_problem(exc: BaseException) -> str | None:
    """The message for an expected failure (a message, not a crash report); None for a bug."""
    if isinstance(exc, KdError) and not isinstance(exc, Cancelled):
        return str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return (
            "the workspace stayed locked by another program for 30 s (SQLite: database is "
            "locked); try again when it has finished"
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"the disk is full{where}; free some space and try again"
        return f"{exc.strerror}{where}"
    name = type(exc).__name__
    if name == "OutOfMemoryError":  # torch's, without importing torch here
        return (
            "out of GPU memory: lower the batch size or the maximum length, or turn on "
            "gradient checkpointing, then try again"
        )
    if name in ("APIConnectionError", "APITimeoutError"):
        return f"the server could not be reached ({exc}); check its base URL and that it runs"
    return None
