"""What resuming needs: the unfinished collections and runs, each by name, and the settings
each was started with, so a front end fills its form from them and shows a settings
conflict before it starts anything.

    for c in unfinished_collections(ws):        # interrupted and failed, by name
        print(c.name, c.state, c.line())
    config = collect_settings(ws, "prompts.gpt")  # what it ran with (concurrency included)
    problem = collect_conflict(ws, config)        # None, or what differs from the stored one
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kdstudio.collect import store as outputs
from kdstudio.collect.config import CollectConfig
from kdstudio.collect.ledger import Collection, interrupted_collections
from kdstudio.errors import UserError
from kdstudio.workspace import Workspace


def collect_settings(ws: Workspace, name: str) -> CollectConfig:
    """The settings collection `name` last ran with; for a collection older than stored
    settings, its request parameters with the other settings at their defaults."""
    row = ws.query_one("SELECT settings FROM collections WHERE name=?", (name,))
    info = outputs.get_collection(ws, name)  # NotFound, with the known names
    if row is not None and row["settings"]:
        stored = json.loads(row["settings"])
        fields = CollectConfig.__dataclass_fields__
        return CollectConfig.from_dict({k: v for k, v in stored.items() if k in fields})
    params = {k: v for k, v in info.params.items() if k in CollectConfig.__dataclass_fields__}
    params.pop("samples", None)
    return CollectConfig(
        teacher=info.teacher_name or "",
        dataset=info.dataset_name or "",
        name=info.name,
        samples=info.params.get("samples", 1),
        **params,
    )


def collect_conflict(ws: Workspace, config: CollectConfig) -> str | None:
    """Why `config` cannot continue the collection of its name (it exists with another
    dataset, teacher or request parameters), or None when it can (or is new)."""
    name = config.collection_name()
    row = ws.query_one(
        "SELECT dataset_id, teacher_name, params, source, teacher_model, teacher_endpoint"
        " FROM collections WHERE name=?",
        (name,),
    )
    if row is None:
        return None
    if row["source"] != "teacher":
        return f"collection {name!r} holds imported answers, not a teacher's; choose another name"
    try:
        new = Collection(config, ws)
    except UserError as exc:
        return str(exc)
    diff = outputs.settings_difference(
        row, new.dataset["id"], new.teacher.name, new.params, new.teacher.model, new.endpoint
    )
    if diff is None:
        return None
    if diff.teacher:
        return f"collection {name!r} was collected from another model ({diff})"
    return f"collection {name!r} was collected with other settings ({diff})"


@dataclass(frozen=True)
class Unfinished:
    """A collection that stopped before every answer was stored."""

    name: str
    state: str  # interrupted (stopped, or its process is gone), incomplete (rows failed), failed
    done: int
    total: int
    failed: int  # rows that failed (retried by the next run)
    message: str  # why it stopped, as the job said

    def line(self) -> str:
        stored = f"{self.done:,} of {self.total:,} answers stored"
        if self.state == "failed":
            return f"failed ({stored}): {self.message}"
        if self.state == "incomplete":
            return f"incomplete ({stored}, {self.failed:,} failed)"
        return f"interrupted ({stored})"


def unfinished_collections(ws: Workspace) -> list[Unfinished]:
    """Every collection a run left unfinished, by name: interrupted ones and failed ones
    (a failed one stopped on an error that needs fixing first, such as a rejected key)."""
    return [
        Unfinished(
            name=info.name,
            state=info.status if info.status in ("failed", "incomplete") else "interrupted",
            done=info.counts.get("done", 0),
            total=info.counts.get("total", 0),
            failed=info.counts.get("failed", 0),
            message=info.message or "",
        )
        for info in interrupted_collections(ws)
    ]


def stopped_runs(ws: Workspace) -> list[Any]:
    """Runs that can continue from a checkpoint (stopped, or interrupted: process gone)."""
    from kdstudio.distill import runs

    return [r for r in runs.list_runs(ws) if r.status in ("stopped", "interrupted")]


def run_conflicts(stored: dict[str, Any], form: dict[str, Any]) -> list[str]:
    """The settings in `form` that differ from a run's `stored` config ("optim.lr: 0.001 ->
    0.002"): a resumed run keeps its stored settings, so these would not be used."""
    out = []
    for section in sorted(set(stored) | set(form)):
        a, b = stored.get(section) or {}, form.get(section) or {}
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                out.append(f"{section}: {a!r} -> {b!r}")
            continue
        for key in sorted(set(a) | set(b)):
            if key == "name" and section == "run":
                continue
            if a.get(key) != b.get(key) and b.get(key) is not None:
                out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out
