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
