"""Helpers for the workspace and window tests: what this process holds open."""

from __future__ import annotations

import os
from pathlib import Path


def open_files_under(root: str | Path) -> list[str]:
    """Files under `root` this process holds open (from /proc/self/fd; Linux only), as
    /proc names them: a deleted one ends in " (deleted)"."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def workspace_at(root: Path, version: int):
    """A workspace database at `root` as kdstudio left it at schema `version` (the
    migrations up to it, run as the workspace runs them); returns the open connection for
    the test to fill in (commit and close it, then open the workspace to upgrade it)."""
    import sqlite3

    from kdstudio.workspace import DB_NAME, migrations

    root.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(root / DB_NAME)
    for number, _name, module in migrations()[:version]:
        if hasattr(module, "upgrade"):
            module.upgrade(con)
        else:
            con.executescript(module.SQL)
        con.execute(f"PRAGMA user_version={number}")
    return con
