"""Helpers for the collection tests: prompt datasets written straight into the schema,
teachers pointing at the loopback server, and a scan of the workspace for secrets."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kdstudio.config import TeacherConfig
from kdstudio.workspace import Workspace

KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
KEY_ENV = "KDSTUDIO_TEST_TEACHER_KEY"


def make_prompts(
    ws: Workspace, name: str = "prompts", n: int = 20, *, system: str | None = None
) -> int:
    """A dataset of `n` one-turn prompts ("prompt 0" ...); returns its id."""
    cur = ws.db.execute(
        "INSERT INTO datasets(name, source, format, n_rows, created_at) VALUES (?, 'test', 'jsonl', ?, 0)",
        (name, n),
    )
    did = cur.lastrowid
    rows = []
    for i in range(n):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"prompt {i}"}
        ]
        rows.append(
            (did, i, json.dumps(messages), f"prompt {i}", system, len(f"prompt {i}"), f"h{name}{i}")
        )
    ws.db.executemany(
        "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, system, n_chars, row_hash)"
        " VALUES (?,?,?,?,?,?,?)",
        rows,
    )
    return did


def add_teacher(ws: Workspace, server, name: str = "t", *, key: bool = True, **kw) -> TeacherConfig:
    teacher = TeacherConfig(
        name=name,
        base_url=server.url,
        model=kw.pop("model", "teacher-1"),
        key_source="env" if key else "none",
        key_env=KEY_ENV if key else None,
        price_in=kw.pop("price_in", 1.0),
        price_out=kw.pop("price_out", 2.0),
        **kw,
    )
    ws.add_teacher(teacher, replace=True)
    return teacher


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under `root` whose bytes contain `needle` (the DB, its WAL, logs...)."""
    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def billed_per_prompt(server) -> dict[str, int]:
    """{prompt text: times billed} from the server's counter."""
    out: dict[str, int] = {}
    for body, n in server.billed.items():
        doc = json.loads(body)
        key = doc["messages"][-1]["content"] + (f"#seed{doc['seed']}" if "seed" in doc else "")
        out[key] = out.get(key, 0) + n
    return out


def claim_all(ws, collection: str, pid: int, from_idx: int = 0) -> list[str]:
    """Make `collection` look collected by process `pid`, with its requests of dataset rows
    `from_idx` on in flight; returns their hashes."""
    host = os.uname().nodename
    ws.db.execute(
        "UPDATE collections SET pid=?, host=?, heartbeat=?, status='running' WHERE name=?",
        (pid, host, time.time(), collection),
    )
    ws.db.execute(
        "INSERT INTO request_claims(hash, collection_id, pid, host, claimed_at)"
        " SELECT ci.hash, c.id, ?, ?, 0 FROM collection_items ci"
        " JOIN collections c ON c.id = ci.collection_id"
        " JOIN dataset_rows d ON d.id = ci.row_id WHERE c.name=? AND d.idx >= ?",
        (pid, host, collection, from_idx),
    )
    return [r[0] for r in ws.query("SELECT hash FROM request_claims ORDER BY hash")]


def answer_held(ws, held: list[str]) -> None:
    """The collector that claimed these requests stores their answers and lets go."""
    from kdstudio.collect.store import insert_response
    from kdstudio.teachers import Response

    with ws.tx() as con:
        for h in held:
            insert_response(con, h, Response(text="from the other one", cost=0.5))
        con.execute("DELETE FROM request_claims")


def other_collection(ws, n: int, **settings) -> None:
    """Collection `other` asks the same requests as prompts.t (same teacher and settings)."""
    from kdstudio.collect import CollectConfig
    from kdstudio.collect.ledger import Collection

    col = Collection(
        CollectConfig(teacher="t", dataset="prompts", name="other", limit=n, **settings), ws
    )
    col.open()
