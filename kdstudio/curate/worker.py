"""The worker process of a check: loads the check once, then answers one task at a time.

    parent                         worker (this module, in a spawned process)
    ------                         ------
    start                    ->    load the check; ("ready",) or ("load_error", why)
    (key, prompt, answer, ref) ->  (key, "ok", score, reason) or (key, "error", None, why)
    None or a closed pipe    ->    exit

Whatever the check does (raise, return garbage, print, call exit()) becomes the answer's
reason here; a hang or a crash of this process is seen and named by the parent
(`kdstudio.curate.checks.CheckPool`), which replaces the process. Ctrl-C in a terminal
reaches the whole process group: the worker ignores it and lets the parent stop it.

It imports nothing heavy: a check process starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

Result = tuple[str, float | None, str | None]


def main(conn: Any, spec: dict[str, Any]) -> None:
    """The worker's loop (the target of the spawned process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        check = load(spec)
    except BaseException as exc:  # noqa: BLE001 - a broken check is reported, never raised
        conn.send(("load_error", load_error(exc, spec)))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        key, prompt, answer, reference = task
        conn.send((key, *call(check, spec, prompt, answer, reference)))


def load(spec: dict[str, Any]) -> Any:
    """The callable a spec names: a function of a file or a module, or a built-in."""
    kind = spec["kind"]
    if kind == "file":
        path = Path(spec["target"])
        sys.path.insert(0, str(path.parent))  # the check may import its neighbours
        module_spec = importlib.util.spec_from_file_location(f"kdstudio_check_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    elif kind == "module":
        module = importlib.import_module(spec["target"])
    else:
        from kdstudio.curate.builtins import builtin

        return builtin(spec)
    fn = getattr(module, spec["func"], None)
    if fn is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise LookupError(
            f"{spec['target']} has no function {spec['func']!r}"
            + (f" (it has: {', '.join(names)})" if names else "")
        )
    if not callable(fn):
        raise LookupError(f"{spec['target']}:{spec['func']} is not a function")
    return fn


def load_error(exc: BaseException, spec: dict[str, Any]) -> str:
    """Why a check could not be loaded, with the file and line for a syntax error."""
    if isinstance(exc, SyntaxError):
        return f"{Path(exc.filename or spec['target']).name}, line {exc.lineno}: {exc.msg}"
    if isinstance(exc, LookupError) and exc.args:
        return str(exc.args[0])
    return f"loading {spec['name']} raised {type(exc).__name__}: {exc}{_where(exc, spec)}"


def call(check: Any, spec: dict[str, Any], prompt: str, answer: str, reference: Any) -> Result:
    """Run the check on one answer: ("ok", score, reason) or ("error", None, why)."""
    try:
        value = check(prompt, answer, reference)
    except BaseException as exc:  # noqa: BLE001 - SystemExit included: it is the answer's reason
        if getattr(exc, "not_checkable", False):
            return ("error", None, str(exc))
        if isinstance(exc, SystemExit):
            return ("error", None, f"the check called exit({exc.code}){_where(exc, spec)}")
        return ("error", None, f"raised {type(exc).__name__}: {exc}{_where(exc, spec)}")
    return normalize(value)


def normalize(value: Any) -> Result:
    """A check's return value as (status, score, reason): a bool is 1 or 0, a float must be a
    number from 0 to 1, `(value, reason)` carries a reason; anything else is garbage."""
    reason = None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (str, type(None))):
        value, reason = value
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # numpy's bool_ and float64 are a check's answer too
    if isinstance(value, bool):
        return ("ok", 1.0 if value else 0.0, reason)
    if isinstance(value, (int, float)):
        score = float(value)
        if math.isfinite(score) and 0.0 <= score <= 1.0:
            return ("ok", score, reason)
        return ("error", None, f"returned {value!r}: a score must be a number from 0 to 1")
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return (
        "error",
        None,
        f"returned {shown} (a {type(value).__name__}): a check returns a bool or a number "
        "from 0 to 1",
    )


def _where(exc: BaseException, spec: dict[str, Any]) -> str:
    """` (checks.py, line 7)`: the last line of the user's own file in the traceback."""
    if spec["kind"] != "file":
        return ""
    target = str(Path(spec["target"]))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == target]
    if not frames:
        return ""
    return f" ({Path(target).name}, line {frames[-1].lineno})"
