"""What the window remembers between sessions (QSettings): geometry, workspaces, files."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

MAX_RECENT = 8


def settings() -> QSettings:
    return QSettings()


def recent(kind: str) -> list[str]:
    """Recent `workspaces` or `files`, newest first."""
    value = settings().value(f"recent/{kind}", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or [])]


def add_recent(kind: str, path: str | Path) -> list[str]:
    path = str(Path(path).expanduser().resolve())
    items = [path] + [p for p in recent(kind) if p != path]
    settings().setValue(f"recent/{kind}", items[:MAX_RECENT])
    return items[:MAX_RECENT]


def last_workspace() -> str | None:
    value = settings().value("workspace/last")
    return str(value) if value else None


def set_last_workspace(path: str | Path) -> None:
    settings().setValue("workspace/last", str(path))
