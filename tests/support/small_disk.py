"""A full disk for tests: a small tmpfs in a private mount namespace, where this machine
allows one (root, or unprivileged user namespaces); tests fall back to a patched write
that fails with ENOSPC where it does not.

    prefix = mount_namespace()          # None: no tmpfs here, use the fallback
    run_on_tmpfs(prefix, mount, "64k", script)

The tmpfs lives only in the namespace of the one shell script that mounts it, so nothing
is left mounted whatever happens to the test; the script copies out what it wants kept.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import tempfile
from pathlib import Path


@functools.cache
def mount_namespace() -> tuple[str, ...] | None:
    """The command prefix that runs a script where it may mount a tmpfs, or None."""
    candidates = [("unshare", "--user", "--map-root-user", "--mount")]
    if os.geteuid() == 0:
        candidates.insert(0, ("unshare", "--mount"))
    with tempfile.TemporaryDirectory() as tmp:
        for prefix in candidates:
            try:
                probe = subprocess.run(
                    [*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(tmp)}"],
                    capture_output=True,
                    timeout=20,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0:
                return prefix
    return None


def run_on_tmpfs(
    prefix: tuple[str, ...],
    mount: Path,
    size: str,
    script: str,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run `script` (sh) with a tmpfs of `size` (e.g. "600k") mounted on `mount`."""
    mount.mkdir(parents=True, exist_ok=True)
    full = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} || exit 99\n{script}"
    return subprocess.run(
        [*prefix, "sh", "-c", full],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
