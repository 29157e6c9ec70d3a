"""Exceptions that the front ends turn into exit codes and inline messages.

- `UserError` (exit 2): bad input or usage. Its message is one clear line that says what is
  wrong and where (file, line, field) and, where it can, how to fix it.
- `JobFailed` (exit 1): something went wrong at run time (a server, a disk, a model).
- `Cancelled` (exit 130): the user stopped a job and it stopped cleanly.
"""

from __future__ import annotations


class KdError(Exception):
    """Base class of kdstudio's own errors.

    `fix` names what fixes the problem, for a front end to offer as an action (the window's
    "Edit teacher…" button); `subject` is what to fix (a teacher's or a run's name). The
    message itself stays whole for the CLI. Fixes: edit_teacher, rename_run, resume_run.
    """

    exit_code = 1
    fix: str | None = None
    subject: str | None = None

    def with_fix(self, fix: str, subject: str | None = None) -> KdError:
        """This error, naming what fixes it (`raise JobFailed(msg).with_fix(...)`)."""
        self.fix, self.subject = fix, subject
        return self


class UserError(KdError):
    """Bad input or usage: the message says what and where."""

    exit_code = 2


class ConfigError(UserError):
    """A config value is invalid; the message names the key and how to fix it."""


class NotFound(UserError):
    """A named thing (teacher, dataset, collection, run) does not exist."""

    def __init__(self, kind: str, name: str, known: list[str] | None = None) -> None:
        hint = ""
        if known is not None:
            hint = f" (known: {', '.join(known)})" if known else f" (there are no {kind}s yet)"
        super().__init__(f"no {kind} named {name!r}{hint}")
        self.kind, self.name = kind, name


class JobFailed(KdError):
    """A job failed at run time."""

    exit_code = 1


class Cancelled(KdError):
    """A job was cancelled and stopped cleanly (after checkpointing where that applies)."""

    exit_code = 130


def disk_full(exc: BaseException, then: str = "run the same command again") -> JobFailed | None:
    """A full disk (ENOSPC or a quota from a write; SQLITE_FULL from the workspace) as one
    run-time failure that says what to do (`then`, after freeing space); None for any other
    error."""
    import errno
    import sqlite3

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        detail = f"{exc.strerror}{where}"
    elif isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    ):
        detail = f"SQLite: {exc}"
    else:
        return None
    return JobFailed(
        f"the disk is full ({detail}); free some space, then {then}: what was saved before is kept"
    )
