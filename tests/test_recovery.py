"""Recovering a damaged workspace database into a new file, keeping the damaged one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from kdstudio import recovery
from kdstudio.config import TeacherConfig
from kdstudio.data.importer import import_dataset
from kdstudio.errors import UserError
from kdstudio.workspace import DB_NAME, Workspace

PAGE = 4096


def damaged_workspace(root, rows: int = 3000):
    """A workspace with a teacher and a dataset of `rows` rows, two of whose pages are then
    overwritten with noise (as a disk or a copy gone wrong would leave them)."""
    ws = Workspace.open(root)
    ws.add_teacher(TeacherConfig(name="t1", base_url="http://localhost:9/v1", model="m"))
    src = root.parent / "prompts.jsonl"
    with src.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"prompt": f"question {i} " + "x" * 200, "response": f"a{i}"}))
            f.write("\n")
    import_dataset(ws, src, name="big")
    ws.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ws.close()
    db = root / DB_NAME
    pages = db.stat().st_size // PAGE
    with open(db, "r+b") as f:
        for n in (pages // 2, pages // 2 + 7):
            f.seek(n * PAGE)
            f.write(os.urandom(PAGE))
    return db


@pytest.mark.parametrize("use_tool", [False, None], ids=["table-copy", "best-available"])
def test_recovery_keeps_the_readable_rows_and_the_damaged_file(tmp_path, use_tool):
    root = tmp_path / "ws"
    db = damaged_workspace(root)
    before = db.read_bytes()
    ws = Workspace.open(root)
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        ws.integrity_check()
    ws.close()

    result = recovery.recover_workspace(root, use_tool=use_tool)

    assert result.kept.read_bytes() == before  # the damaged database, untouched
    assert result.kept.name.startswith("kdstudio.damaged-")
    ws = Workspace.open(root)
    try:
        assert ws.integrity_check() == "ok"
        assert ws.teacher_names() == ["t1"]
        recovered = ws.query_one("SELECT COUNT(*) FROM dataset_rows")[0]
        assert 2800 < recovered < 3000  # two pages of ~20 rows each are gone
        assert result.rows["dataset_rows"] == recovered
        found = ws.query_one("SELECT COUNT(*) FROM dataset_fts WHERE dataset_fts MATCH 'question'")[
            0
        ]
        assert found == recovered  # the search index is rebuilt from what was recovered
    finally:
        ws.close()
    assert "recovered" in result.line() and str(result.kept) in result.line()
    assert not [p for p in root.iterdir() if p.name.startswith(".recover")]


def test_recovery_refuses_while_the_workspace_is_open(tmp_path):
    root = tmp_path / "ws"
    damaged_workspace(root, rows=50)
    ws = Workspace.open(root)
    try:
        with pytest.raises(UserError, match="open in this process"):
            recovery.recover_workspace(root)
    finally:
        ws.close()
    holder = subprocess.Popen(  # another program with the workspace open
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT 1 FROM sqlite_master').fetchall(); print('open', flush=True); "
            "sys.stdin.read()",
            str(root / DB_NAME),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(UserError, match="open in another program"):
            recovery.recover_workspace(root)
    finally:
        holder.communicate("", timeout=30)
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".sqlite") == [DB_NAME]
