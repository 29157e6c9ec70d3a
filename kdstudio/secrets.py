"""API keys in the OS keyring, never on disk: service "kdstudio", user `<workspace id>/<teacher>`.

Extra HTTP headers that carry credentials (`api-key: ...`, named in the teacher's
`secret_headers`) are kept the same way, under `<workspace id>/<teacher>/header:<name>`,
and read back for a job by `resolve_headers`.

A key belongs to one teacher of one workspace, so a teacher of the same name in another
workspace has its own key: adding, replacing or removing it there never touches this one.
Keys stored by kdstudio 0.1 under the bare teacher name (user = teacher name, shared by
every workspace) keep working: when a workspace's own entry is missing, the old one is
read and copied to the workspace's entry. The old entry is never changed or deleted (any
other workspace may still rely on it); removing a teacher deletes only its workspace's.

Some Linux setups hang on a keyring call (a locked collection waiting for a prompt that
never comes), so every call runs in a daemon thread with a timeout. A failed or timed-out
read never deletes or overwrites a stored key. Error messages never contain a key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kdstudio.errors import JobFailed, UserError

if TYPE_CHECKING:
    from kdstudio.config import TeacherConfig

SERVICE = "kdstudio"
TIMEOUT_S = 5.0
T = TypeVar("T")

HOW_TO_FIX = (
    "install and unlock a Secret Service (e.g. `sudo apt install gnome-keyring` and log in to "
    "a desktop session, or KWallet on KDE), or store the key in an environment variable and "
    "add the teacher with `--api-key-env VAR_NAME`"
)


class KeyringUnavailable(JobFailed):
    """No working keyring backend, or it failed or did not answer: a failure at run time
    (exit 1), not bad input; the message says how to fix it."""


class KeyMissing(UserError):
    """The teacher's key is not stored where the teacher says it is."""


@dataclass(frozen=True)
class BackendStatus:
    ok: bool
    backend: str
    message: str


def _call(fn: Callable[[], T], what: str, timeout: float = TIMEOUT_S) -> T:
    """Run a keyring call in a daemon thread; raise KeyringUnavailable on timeout or error."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"keyring-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise KeyringUnavailable(
            f"the OS keyring did not answer within {timeout:.0f} s while trying to {what} "
            f"(it may be locked or waiting for a prompt); {HOW_TO_FIX}"
        )
    if "error" in box:
        exc = box["error"]
        # The key is never part of keyring's exception text, but be safe: report type only
        # plus the backend's message, which describes the backend, not the secret.
        raise KeyringUnavailable(
            f"the OS keyring failed to {what}: {type(exc).__name__}: {_safe(exc)}; {HOW_TO_FIX}"
        ) from None
    return box["value"]


def _safe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


def _backend() -> Any:
    import keyring

    return keyring.get_keyring()


def probe_backend(timeout: float = TIMEOUT_S) -> BackendStatus:
    """Check that a usable keyring backend answers, without touching any stored key."""
    try:
        backend = _call(_backend, "find a backend", timeout)
    except KeyringUnavailable as exc:
        return BackendStatus(False, "unknown", str(exc))
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    priority = getattr(backend, "priority", 0)
    if "fail" in name.lower() or "null" in name.lower() or (priority is not None and priority <= 0):
        return BackendStatus(False, name, f"no usable OS keyring backend ({name}); {HOW_TO_FIX}")
    try:
        _call(lambda: backend.get_password(SERVICE, "__kdstudio_probe__"), "read", timeout)
    except KeyringUnavailable as exc:
        return BackendStatus(False, name, str(exc))
    return BackendStatus(True, name, f"keyring backend {name} works")


def _require_backend(timeout: float) -> Any:
    status = probe_backend(timeout)
    if not status.ok:
        raise KeyringUnavailable(status.message)
    return _backend()


def account(workspace_id: str, teacher: str) -> str:
    """The keyring user a workspace's teacher keeps its key under."""
    return f"{workspace_id}/{teacher}"


def store_key(workspace_id: str, teacher: str, key: str, *, timeout: float = TIMEOUT_S) -> None:
    """Store (or replace) a workspace's teacher's key. Nothing is written anywhere else."""
    if not key or not key.strip():
        raise UserError("the API key is empty")
    if any(c in key for c in "\r\n"):
        raise UserError("the API key contains a line break; paste it on one line")
    backend = _require_backend(timeout)
    user = account(workspace_id, teacher)
    _call(lambda: backend.set_password(SERVICE, user, key.strip()), "store the key", timeout)
    # Read back: some backends accept writes into a locked collection that never lands.
    stored = _call(lambda: backend.get_password(SERVICE, user), "read the key back", timeout)
    if stored != key.strip():
        raise KeyringUnavailable(
            f"the OS keyring did not keep the key for {teacher!r}; {HOW_TO_FIX}"
        )


def read_key(workspace_id: str, teacher: str, *, timeout: float = TIMEOUT_S) -> str | None:
    """The workspace's teacher's key, or None when there is none. Raises KeyringUnavailable,
    never deletes. A key stored the 0.1 way (user = teacher name) is copied to this
    workspace's entry on first read, and left where it was."""
    backend = _require_backend(timeout)
    user = account(workspace_id, teacher)
    value = _call(lambda: backend.get_password(SERVICE, user), "read the key", timeout)
    if value:
        return value
    old = _call(lambda: backend.get_password(SERVICE, teacher), "read the key", timeout)
    if old:
        try:
            _call(lambda: backend.set_password(SERVICE, user, old), "copy the key", timeout)
        except KeyringUnavailable:
            pass  # the old entry still answers next time
    return old or None


def delete_key(workspace_id: str, teacher: str, *, timeout: float = TIMEOUT_S) -> bool:
    """Delete a workspace's teacher's key (only on the user's explicit removal); True if one
    existed. The 0.1 entry under the bare teacher name is kept: other workspaces may use it."""
    import keyring.errors

    backend = _require_backend(timeout)
    user = account(workspace_id, teacher)

    def delete() -> bool:
        try:
            backend.delete_password(SERVICE, user)
        except keyring.errors.PasswordDeleteError:
            return False
        return True

    return _call(delete, "delete the key", timeout)


def header_account(workspace_id: str, teacher: str, header: str) -> str:
    """The keyring user a workspace's teacher keeps a secret header's value under."""
    return f"{workspace_id}/{teacher}/header:{header.lower()}"


def store_header(
    workspace_id: str, teacher: str, header: str, value: str, *, timeout: float = TIMEOUT_S
) -> None:
    """Store (or replace) the value of a teacher's secret header, and read it back."""
    if not value or not value.strip():
        raise UserError(f"the value of header {header!r} is empty")
    if any(c in value for c in "\r\n"):
        raise UserError(f"the value of header {header!r} contains a line break")
    backend = _require_backend(timeout)
    user = header_account(workspace_id, teacher, header)
    _call(lambda: backend.set_password(SERVICE, user, value.strip()), "store a header", timeout)
    stored = _call(lambda: backend.get_password(SERVICE, user), "read a header back", timeout)
    if stored != value.strip():
        raise KeyringUnavailable(
            f"the OS keyring did not keep header {header!r} of {teacher!r}; {HOW_TO_FIX}"
        )


def delete_headers(
    workspace_id: str, teacher: str, headers: list[str], *, timeout: float = TIMEOUT_S
) -> None:
    """Delete the stored values of these secret headers (the user removed them)."""
    if not headers:
        return
    import keyring.errors

    backend = _require_backend(timeout)

    def delete() -> None:
        for header in headers:
            try:
                backend.delete_password(SERVICE, header_account(workspace_id, teacher, header))
            except keyring.errors.PasswordDeleteError:
                pass  # never stored, or already gone

    _call(delete, "delete a header", timeout)


def resolve_headers(
    teacher: TeacherConfig, workspace_id: str, *, timeout: float = TIMEOUT_S
) -> dict[str, str]:
    """Every extra header a teacher's requests carry: the plain ones, and the values of
    its secret ones from the keyring (KeyMissing when one is not stored)."""
    headers = dict(teacher.headers)
    if not teacher.secret_headers:
        return headers
    backend = _require_backend(timeout)
    for header in teacher.secret_headers:
        user = header_account(workspace_id, teacher.name, header)
        value = _call(lambda u=user: backend.get_password(SERVICE, u), "read a header", timeout)
        if not value:
            raise KeyMissing(
                f"no value of header {header!r} is stored in the OS keyring for teacher "
                f"{teacher.name!r}; store one with `kdstudio teacher add {teacher.name} ... "
                f"--secret-header {header} --replace`"
            ).with_fix("edit_teacher", teacher.name)
        headers[header] = value
    return headers


def resolve_key(
    teacher: TeacherConfig, workspace_id: str, *, timeout: float = TIMEOUT_S
) -> str | None:
    """The key a workspace's teacher's requests use: keyring, environment variable, or none."""
    if teacher.key_source == "none":
        return None
    if teacher.key_source == "env":
        value = os.environ.get(teacher.key_env or "")
        if not value:
            raise KeyMissing(
                f"teacher {teacher.name!r} reads its key from the environment variable "
                f"{teacher.key_env}, which is not set"
            ).with_fix("edit_teacher", teacher.name)
        return value
    value = read_key(workspace_id, teacher.name, timeout=timeout)
    if not value:
        raise KeyMissing(
            f"no API key is stored in the OS keyring for teacher {teacher.name!r}; store one with "
            f"`kdstudio teacher add {teacher.name} ... --api-key-stdin --replace`"
        ).with_fix("edit_teacher", teacher.name)
    return value
