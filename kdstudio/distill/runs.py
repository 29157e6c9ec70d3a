"""Training runs in the workspace: create, look up, list, and track status.

Status: `created`, `running`, `finished`, `stopped` (by the user, after a checkpoint),
`failed`, `diverged` (its loss blew up: `kdstudio.distill.divergence`; its `error` says
what happened and what to change). The process training a run holds a `Lease` on its row
(pid, host, heartbeat), taken with `claim` before its setup loads anything and given up
when the run ends, so a second `train --resume` of it is refused at once, naming the
holder; a dead holder's claim is taken over. One stored as `running` whose process is gone
(its pid is dead, when it ran on this host; else its heartbeat is older than
`STALE_AFTER_S`) reads as `interrupted`, at the step of its last checkpoint (where
`--resume` continues it).
No torch here: the GUI and `runs list` use this module cheaply.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdstudio.errors import NotFound, UserError
from kdstudio.workspace import Lease, LeaseHeld

if TYPE_CHECKING:
    from kdstudio.distill.config import TrainConfig
    from kdstudio.workspace import Workspace

STATUSES = ("created", "running", "finished", "stopped", "failed", "diverged", "interrupted")
HEARTBEAT_EVERY_S = 10.0
STALE_AFTER_S = 120.0


@dataclass
class Run:
    """One row of `runs`, with its effective status (`interrupted` is derived, never stored)."""

    id: int
    name: str
    status: str
    method: str
    config: dict[str, Any]
    collection: str
    step: int
    world_size: int
    pid: int | None
    host: str | None
    heartbeat: float | None
    error: str | None
    eval_rows: list[int] | None
    summary: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    checkpoint_step: int | None = None  # the step of its last checkpoint (None: none yet)

    def train_config(self) -> TrainConfig:
        from kdstudio.distill.config import TrainConfig

        return TrainConfig.from_stored(self.config)

    @property
    def collections(self) -> list[str]:
        """The collections the run trains on (one or several)."""
        data = self.config.get("data", {})
        return [data["collection"]] if data.get("collection") else list(data.get("collections", []))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lease(ws: Workspace, run_id: int) -> Lease:
    """The lease a training process holds on its run while it is `running`."""
    return Lease(ws, "runs", run_id, every_s=HEARTBEAT_EVERY_S, stale_after_s=STALE_AFTER_S)


def effective_status(row: dict[str, Any]) -> str:
    """`running` becomes `interrupted` when its process is dead or silent for too long."""
    status = row["status"]
    alive = Lease.holder_alive(row.get("pid"), row.get("host"), row.get("heartbeat"), STALE_AFTER_S)
    return "interrupted" if status == "running" and not alive else status


# Each run's row with the step of its last checkpoint (the window's index of the folders).
_SELECT = (
    "SELECT r.*, (SELECT MAX(c.step) FROM checkpoints c WHERE c.run_id = r.id)"
    " AS checkpoint_step FROM runs r"
)


def _from_row(row: Any) -> Run:
    data = dict(row)
    data["status"] = effective_status(data)
    if data["status"] == "interrupted":
        # Its row says the step it last reported before it died (the heartbeat's); what
        # counts is where `--resume` continues: its last checkpoint (0: it starts over).
        data["step"] = data.get("checkpoint_step") or 0
    data["config"] = json.loads(data["config"])
    data["eval_rows"] = json.loads(data["eval_rows"]) if data.get("eval_rows") else None
    data["summary"] = json.loads(data.get("summary") or "{}")
    return Run(**data)


def run_names(ws: Workspace) -> list[str]:
    return [r[0] for r in ws.query("SELECT name FROM runs ORDER BY id")]


def create_run(ws: Workspace, config: TrainConfig, *, world_size: int = 1) -> Run:
    """Store a new run with its fully resolved config; the name must be free."""
    name = config.run.name
    if not name:
        raise UserError("the run has no name (resolve the config first)")
    now = time.time()
    with ws.tx() as con:
        if con.execute("SELECT 1 FROM runs WHERE name=?", (name,)).fetchone():
            raise UserError(
                f"a run named {name!r} already exists: continue it with "
                f"`kdstudio train --resume {name}`, or pick another name with --set run.name=NEW"
            ).with_fix("rename_run", name)
        con.execute(
            "INSERT INTO runs(name, status, method, config, collection, world_size, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                name,
                "created",
                config.distill.method,
                json.dumps(config.to_dict()),
                ", ".join(config.data.names()),
                world_size,
                now,
                now,
            ),
        )
    return get_run(ws, name)


def get_run(ws: Workspace, name: str) -> Run:
    row = ws.query_one(f"{_SELECT} WHERE r.name=?", (name,))
    if row is None:
        raise NotFound("run", name, run_names(ws))
    return _from_row(row)


def list_runs(ws: Workspace) -> list[Run]:
    return [_from_row(r) for r in ws.query(f"{_SELECT} ORDER BY r.id")]


def claim(ws: Workspace, run_id: int) -> Run:
    """Claim run `run_id` for this process (before loading anything for it) and return it
    as it is now; UserError names the live process that holds it."""
    try:
        with ws.tx() as con:
            lease(ws, run_id).claim(con)
    except LeaseHeld as held:
        name = ws.query_one("SELECT name FROM runs WHERE id=?", (run_id,))[0]
        raise UserError(
            f"run {name!r} is being trained by process {held.pid} on {held.host}; wait for "
            "it to end, or stop it first"
        ) from None
    return _from_row(ws.query_one(f"{_SELECT} WHERE r.id=?", (run_id,)))


def release(ws: Workspace, run_id: int) -> None:
    """Give up this process's claim on a run, leaving its status as it is."""
    lease(ws, run_id).release(updated_at=time.time())


def set_status(ws: Workspace, run_id: int, status: str, *, error: str | None = None) -> None:
    """Record a status change: `running` claims the run for this process (pid, host,
    heartbeat); any other status ends the claim."""
    if status not in STATUSES or status == "interrupted":
        raise ValueError(f"cannot store run status {status!r}")
    now = time.time()
    if status == "running":
        claim(ws, run_id)
        lease(ws, run_id).heartbeat(status=status, error=None, updated_at=now)
    else:
        lease(ws, run_id).release(status=status, error=error, updated_at=now)


def heartbeat(ws: Workspace, run_id: int, step: int) -> None:
    """The training loop's beat on its run's lease, with the step it has reached."""
    lease(ws, run_id).heartbeat(step=step, updated_at=time.time())


def update_run(ws: Workspace, run_id: int, **values: Any) -> None:
    """Set plain columns (`step`, `world_size`, `eval_rows`, `summary`)."""
    allowed = {"step", "world_size", "eval_rows", "summary"}
    if not set(values) <= allowed:
        raise ValueError(f"cannot update {sorted(set(values) - allowed)}")
    for key in ("eval_rows", "summary"):
        if key in values and not isinstance(values[key], str):
            values[key] = json.dumps(values[key])
    sets = ", ".join(f"{k}=?" for k in values)
    ws.db.execute(
        f"UPDATE runs SET {sets}, updated_at=? WHERE id=?",
        (*values.values(), time.time(), run_id),
    )


def merge_summary(ws: Workspace, run_id: int, **values: Any) -> None:
    """Set some keys of a run's summary, keeping the others (one transaction)."""
    with ws.tx() as con:
        row = con.execute("SELECT summary FROM runs WHERE id=?", (run_id,)).fetchone()
        summary = {**json.loads((row[0] if row else None) or "{}"), **values}
        con.execute(
            "UPDATE runs SET summary=?, updated_at=? WHERE id=?",
            (json.dumps(summary), time.time(), run_id),
        )


# Each metric name of a run, then its row at the highest step, all through the
# (run_id, name, step) key: a lookup per metric rather than a pass over every stored row
# (50 ms for a 10k-step run, paid every second by the window's Runs table).
_LATEST = """
WITH RECURSIVE names(name) AS (
    SELECT MIN(name) FROM run_metrics WHERE run_id = :run
    UNION ALL
    SELECT (SELECT MIN(name) FROM run_metrics WHERE run_id = :run AND name > names.name)
    FROM names WHERE name IS NOT NULL
)
SELECT m.name, m.step, m.value FROM names JOIN run_metrics m
ON m.run_id = :run AND m.name = names.name
AND m.step = (SELECT MAX(step) FROM run_metrics WHERE run_id = :run AND name = names.name)
"""


def latest_metrics(ws: Workspace, run_id: int) -> dict[str, tuple[int, float]]:
    """{name: (step, value)} of the last reported value of every metric (what `runs list`
    and the window's Runs table both show)."""
    rows = ws.query(_LATEST, {"run": run_id})
    return {r["name"]: (r["step"], r["value"]) for r in rows}


def metric_series(ws: Workspace, run_id: int) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} in step order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in ws.query(
        "SELECT name, step, value FROM run_metrics WHERE run_id=? ORDER BY name, step", (run_id,)
    ):
        out.setdefault(r["name"], []).append((r["step"], r["value"]))
    return out


def run_collections(ws: Workspace, run: Run) -> list[dict[str, Any]]:
    """Each collection a run trains on: its name, teacher, weight in the mix (None: no
    weights), and the examples it gave (train, eval, skipped, dropped) once the run started.
    A collection removed since is listed with teacher None."""
    from kdstudio.collect.store import get_collection

    weights = run.config.get("data", {}).get("weights") or []
    counts = run.summary.get("collections", {})
    out = []
    for i, name in enumerate(run.collections):
        try:
            teacher = get_collection(ws, name).teacher_name
        except NotFound:
            teacher = None
        out.append(
            {
                "name": name,
                "teacher": teacher,
                "weight": weights[i] if i < len(weights) else None,
                **counts.get(name, {}),
            }
        )
    return out


def eval_row_ids(ws: Workspace, name: str) -> list[int]:
    """The dataset row ids a run held out for evaluation (set when the run starts)."""
    run = get_run(ws, name)
    if run.eval_rows is None:
        raise UserError(f"run {name!r} has not started yet, so it has no held-out rows")
    return run.eval_rows


def delete_run(ws: Workspace, run_id: int) -> None:
    """Remove a run row with its metrics, checkpoint index and events (not its folder)."""
    with ws.tx() as con:
        con.execute("DELETE FROM events WHERE job_kind='train' AND job_id=?", (str(run_id),))
        con.execute("DELETE FROM runs WHERE id=?", (run_id,))
