"""Checkpoints of a run: the folder layout, atomic writes, pruning, and loading a student.

Layout (a contract: evaluation, export and the window rely on it):

    <workspace>/checkpoints/<run name>/step-0000120/
        model/              save_pretrained (safetensors); a peft adapter for a LoRA run
        tokenizer/          the student's tokenizer, with the chat template training used
        trainer_state.pt    optimizer, scheduler, grad scaler, RNG states, data position, step
        meta.json           {"step", "eval_loss", "time", "run", "lora", "world_size",
                             "diverged" (when written after the run diverged)}

A checkpoint is written into a hidden temporary folder next to it and renamed into place,
and `meta.json` is written last, so a folder named `step-*` is always complete; a crash
while saving leaves the previous checkpoint untouched. The folders are the truth; the
`checkpoints` table is an index of them for the window.

A checkpoint written after its run diverged (`kdstudio.distill.divergence`) is marked so in
its meta.json: it stays on disk, but `last` and `best` (evaluation, export, resume) are
chosen among the good ones, and pruning never removes a good one to keep it.

    list_checkpoints(ws, "run")                      -> [CheckpointInfo] by step
    resolve_checkpoint(ws, "run", "last"|"best"|120) -> Path (last, best: good ones only)
    load_student(ws, "run", "last", device="cpu")    -> (model, tokenizer)
    base_student_path(ws, "run")                     -> the student's starting weights
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdstudio.errors import NotFound, UserError

if TYPE_CHECKING:
    from kdstudio.workspace import Workspace

STEP_RE = re.compile(r"step-(\d{7,})")
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    eval_loss: float | None
    time: float
    is_best: bool = False
    diverged: bool = False  # written after the run diverged: never last or best

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "path": str(self.path),
            "eval_loss": self.eval_loss,
            "time": self.time,
            "is_best": self.is_best,
            "diverged": self.diverged,
        }


def _name(run: Any) -> str:
    return run if isinstance(run, str) else run.name


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def run_dir(ws: Workspace, run: Any) -> Path:
    """The run's checkpoint folder (not created)."""
    return ws.checkpoints_dir / _name(run)


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def list_checkpoints(ws: Workspace, run: Any) -> list[CheckpointInfo]:
    """Complete checkpoints of a run on disk, oldest first; the best by eval loss among the
    good ones (not written after a divergence) is marked."""
    root = run_dir(ws, run)
    found = []
    if root.is_dir():
        for path in root.iterdir():
            m = STEP_RE.fullmatch(path.name)
            meta = _read_meta(path) if m and path.is_dir() else None
            if meta is None:
                continue
            found.append((int(m.group(1)), path, meta))
    found.sort(key=lambda item: item[0])
    best = _best_step([(s, m.get("eval_loss")) for s, _, m in found if not m.get("diverged")])
    return [
        CheckpointInfo(
            s,
            p,
            meta.get("eval_loss"),
            float(meta.get("time", 0.0)),
            s == best,
            bool(meta.get("diverged")),
        )
        for s, p, meta in found
    ]


def _best_step(items: list[tuple[int, float | None]]) -> int | None:
    scored = [(loss, -step, step) for step, loss in items if loss is not None and loss == loss]
    return min(scored)[2] if scored else None  # ties: the later step; NaN is never best


def resolve_checkpoint(ws: Workspace, run: Any, which: str | int = "last") -> Path:
    """The folder of one checkpoint: `last`, `best` (by eval loss; else last), or a step."""
    name = _name(run)
    items = list_checkpoints(ws, name)
    if not items:
        raise UserError(f"run {name!r} has no checkpoint yet (train it first)")
    good = [c for c in items if not c.diverged]
    if which in ("last", "best") and not good:
        raise UserError(
            f"run {name!r} has no good checkpoint: it diverged before its first one was "
            f"confirmed (written after the divergence: steps {', '.join(str(c.step) for c in items)}"
            "; name one by its step to use it anyway)"
        )
    if which == "last":
        return good[-1].path
    if which == "best":
        best = [c for c in good if c.is_best]
        return (best or good)[-1].path
    try:
        step = int(which)
    except (TypeError, ValueError):
        raise UserError(f"checkpoint {which!r}: expected last, best or a step number") from None
    for c in items:
        if c.step == step:
            return c.path
    raise NotFound(f"checkpoint of run {name!r} at step", str(step), [str(c.step) for c in items])


def _run_config(ws: Workspace, run: Any) -> dict[str, Any]:
    from kdstudio.distill.runs import get_run

    return get_run(ws, _name(run)).config


def base_student_path(ws: Workspace, run: Any) -> Path:
    """The Hugging Face folder the run's student started from (a UserError when it is gone:
    evaluation and a LoRA export need it)."""
    from kdstudio.model_folder import check_model_folder

    return check_model_folder(
        _run_config(ws, run)["student"]["path"], f"run {_name(run)!r}: its student (student.path)"
    )


def load_tokenizer(ws: Workspace, run: Any) -> Any:
    """The student's tokenizer with the chat template the run trains with."""
    from kdstudio.distill.batches import load_student_tokenizer

    config = _run_config(ws, run)
    base = str(base_student_path(ws, run))
    tok, _ = load_student_tokenizer(base, config["student"]["template"])
    return tok


def load_student(
    ws: Workspace, run: Any, which: str | int = "last", device: str = "cpu"
) -> tuple[Any, Any]:
    """(model, tokenizer) of a checkpoint in eval mode; `which="base"` gives the start.

    A LoRA run returns the peft model (adapter on the base weights, nothing merged).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _run_config(ws, run)
    base = base_student_path(ws, run) if which == "base" or config.get("lora") else None
    if which == "base":
        model = AutoModelForCausalLM.from_pretrained(base)
        tok = load_tokenizer(ws, run)
    else:
        path = resolve_checkpoint(ws, run, which)
        tok = AutoTokenizer.from_pretrained(path / "tokenizer")
        if config.get("lora"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base), path / "model"
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path / "model")
    return model.to(device).eval(), tok


# -- writing --------------------------------------------------------------------------------


def clean_partial(ws: Workspace, run: Any) -> int:
    """Remove temporary folders left by a crash while saving or pruning; returns how many."""
    root = run_dir(ws, run)
    n = 0
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith((TMP_PREFIX, DEL_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)
                n += 1
    return n


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    ws: Workspace,
    run: Any,
    step: int,
    write: Callable[[Path], None],
    meta: dict[str, Any],
    *,
    run_id: int | None = None,
) -> Path:
    """Write a checkpoint atomically: `write(tmp)` fills a temp folder, meta.json goes last,
    then one rename makes it visible. Returns the final folder."""
    root = run_dir(ws, run)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write(tmp)
        meta = {"step": step, "time": time.time(), **meta}
        with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # the same step saved again after a resume: replace it
            if run_id is not None:  # its row first (see prune_checkpoints)
                ws.db.execute("DELETE FROM checkpoints WHERE run_id=? AND step=?", (run_id, step))
            _discard(final)
        os.rename(tmp, final)
    except BaseException as exc:
        # A half-written checkpoint is never kept: on a full disk it would hold the space
        # that the next attempt (and the workspace's own database) needs.
        full = isinstance(exc, Exception) and _out_of_space(exc, root)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from exc
        raise
    _fsync_dir(root)
    if run_id is not None:
        ws.db.execute("DELETE FROM checkpoints WHERE run_id=? AND step=?", (run_id, step))
        ws.db.execute(
            "INSERT INTO checkpoints(run_id, step, path, eval_loss, created_at) VALUES (?,?,?,?,?)",
            (run_id, step, str(final), meta.get("eval_loss"), meta["time"]),
        )
    return final


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space. torch.save reports a full disk as a bare
    RuntimeError ("unexpected pos ..."), so besides ENOSPC anywhere in the chain, a failure
    that leaves under 64 MiB free on the folder's disk counts too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < 64 << 20
    except OSError:
        return False


def _discard(path: Path) -> None:
    """Rename out of sight first, so a half-deleted folder never looks like a checkpoint."""
    doomed = path.with_name(f"{DEL_PREFIX}{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(
    ws: Workspace,
    run: Any,
    keep_last: int,
    *,
    run_id: int | None = None,
    confirmed_before: int | None = None,
) -> list[int]:
    """Keep the last `keep_last` good checkpoints, the best by eval loss, the newest one
    confirmed good (at a step before `confirmed_before`, when the run goes on: its newer
    ones may still turn out to be after a divergence), and the last `keep_last` written
    after a divergence. Returns the removed steps.

    The index rows go first, the folders after: a kill in between leaves a complete folder
    that no row names (the next prune removes it), never a row naming a missing folder."""
    items = list_checkpoints(ws, run)
    good = [c for c in items if not c.diverged]
    confirmed = [c for c in good if confirmed_before is None or c.step < confirmed_before]
    keep = {c.step for c in good[-keep_last:] + confirmed[-1:]}
    keep |= {c.step for c in items if c.is_best}
    keep |= {c.step for c in [d for d in items if d.diverged][-keep_last:]}
    doomed = [c for c in items if c.step not in keep]
    if run_id is not None:
        with ws.tx() as con:
            for c in doomed:
                con.execute("DELETE FROM checkpoints WHERE run_id=? AND step=?", (run_id, c.step))
            _index_best(con, run_id, items)
    for c in doomed:
        _discard(c.path)
    return [c.step for c in doomed]


def _index_best(con: Any, run_id: int, items: list[CheckpointInfo]) -> None:
    """The window's index follows the folders: which checkpoint is the best."""
    best = [c.step for c in items if c.is_best]
    con.execute("UPDATE checkpoints SET is_best=0 WHERE run_id=?", (run_id,))
    if best:
        con.execute("UPDATE checkpoints SET is_best=1 WHERE run_id=? AND step=?", (run_id, best[0]))


def mark_diverged(
    ws: Workspace, run: Any, from_step: int, *, run_id: int | None = None
) -> list[int]:
    """Mark the checkpoints at `from_step` and after as written after the run diverged
    (meta.json rewritten atomically); returns their steps."""
    marked = []
    for c in list_checkpoints(ws, run):
        if c.step < from_step or c.diverged:
            continue
        meta = {**(_read_meta(c.path) or {}), "diverged": True}
        tmp = c.path / f"{TMP_PREFIX}meta.json"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, c.path / "meta.json")
        marked.append(c.step)
    if run_id is not None:
        with ws.tx() as con:
            _index_best(con, run_id, list_checkpoints(ws, run))
    return marked
