"""The workspace store: migrations, concurrent readers, crash safety."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from workspace_support import open_files_under, workspace_at

from kdstudio.config import TeacherConfig
from kdstudio.errors import UserError
from kdstudio.workspace import DB_NAME, Workspace, migrations, schema_version


def tables(ws: Workspace) -> set[str]:
    return {r[0] for r in ws.query("SELECT name FROM sqlite_master WHERE type IN ('table','view')")}


def test_new_workspace_is_at_the_latest_schema_in_wal_mode(ws):
    assert ws.version == schema_version() >= 4
    assert ws.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"teachers", "events", "datasets", "collections", "responses", "runs"} <= tables(ws)


def test_migrations_are_numbered_without_gaps():
    versions = [v for v, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_a_v1_workspace_migrates_and_keeps_its_data(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    con = sqlite3.connect(root / DB_NAME)
    _, _, m001 = migrations()[0]
    con.executescript(m001.SQL)
    con.execute(
        "INSERT INTO teachers(name, kind, base_url, model, created_at, updated_at) "
        "VALUES ('gpt', 'openai', 'https://api.example.com/v1', 'm', 0, 0)"
    )
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()

    ws = Workspace.open(root)
    assert ws.version == schema_version()
    assert ws.get_teacher("gpt").base_url == "https://api.example.com/v1"
    assert "runs" in tables(ws)


def test_migration_9_takes_url_passwords_out_of_where_answers_came_from(tmp_path):
    """Before it, every answer's row and the collection kept the teacher's URL as typed,
    password and all; after, they hold it as shown. The teacher's own URL is untouched
    (the requests need it)."""
    root = tmp_path / "old"
    con = workspace_at(root, 8)
    typed, plain = "http://bob:hunter2-s3cr3t@10.0.0.5:8000/v1", "http://10.0.0.5:8001/v1"
    con.execute(
        "INSERT INTO teachers(name, kind, base_url, model, created_at, updated_at)"
        " VALUES ('t', 'openai', ?, 'm', 0, 0)",
        (typed,),
    )
    con.execute("INSERT INTO datasets(id, name, n_rows, created_at) VALUES (1, 'd', 0, 0)")
    for i, endpoint in enumerate([typed, plain, "local:/models/x:abc"]):
        con.execute(
            "INSERT INTO collections(name, dataset_id, teacher_endpoint, created_at, updated_at)"
            " VALUES (?, 1, ?, 0, 0)",
            (f"c{i}", endpoint),
        )
        con.execute(
            "INSERT INTO responses(hash, text, endpoint, created_at) VALUES (?, 'a', ?, 0)",
            (f"h{i}", endpoint),
        )
    con.commit()
    con.close()

    ws = Workspace.open(root)
    try:
        shown = "http://bob:***@10.0.0.5:8000/v1"
        expected = [shown, plain, "local:/models/x:abc"]
        assert [r[0] for r in ws.query("SELECT endpoint FROM responses ORDER BY hash")] == expected
        assert [
            r[0] for r in ws.query("SELECT teacher_endpoint FROM collections ORDER BY name")
        ] == expected
        assert ws.get_teacher("t").base_url == typed
    finally:
        ws.close()


def test_a_workspace_from_a_newer_version_is_refused_with_a_clear_message(tmp_path):
    Workspace.open(tmp_path / "ws").close()
    con = sqlite3.connect(tmp_path / "ws" / DB_NAME)
    con.execute("PRAGMA user_version=999")
    con.close()
    with pytest.raises(UserError, match="newer kdstudio.*upgrade"):
        Workspace.open(tmp_path / "ws")


def test_a_file_given_as_workspace_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        Workspace.open(tmp_path / "f")


def test_readers_are_not_blocked_while_a_job_writes(ws):
    started, release = threading.Event(), threading.Event()

    def writer():
        with ws.tx() as con:
            for i in range(100):
                con.execute(
                    "INSERT INTO events(job_kind, job_id, t, type, payload) VALUES ('j','1',?,?,'{}')",
                    (i, "Log"),
                )
            started.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(10)
    reader = ws.connect()
    t0 = time.perf_counter()
    seen_during = reader.execute("SELECT count(*) FROM events").fetchone()[0]
    read_time = time.perf_counter() - t0
    release.set()
    thread.join(10)
    seen_after = reader.execute("SELECT count(*) FROM events").fetchone()[0]
    reader.close()
    assert seen_during == 0, "a reader must see only committed rows"
    assert read_time < 1.0, "a reader must not wait for the writer"
    assert seen_after == 100


def test_a_killed_writer_leaves_an_intact_database_with_every_commit(tmp_path):
    root = tmp_path / "ws"
    Workspace.open(root).close()
    script = textwrap.dedent(
        f"""
        import sys, time
        from kdstudio.workspace import Workspace
        ws = Workspace.open({str(root)!r})
        i = 0
        while True:
            with ws.tx() as con:
                for _ in range(50):
                    con.execute("INSERT INTO events(job_kind, job_id, t, type, payload) "
                                "VALUES ('w', '1', ?, 'Log', '{{}}')", (time.time(),))
            i += 50
            print(i, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.time() + 60
    while committed < 2000 and time.time() < deadline:
        committed = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    ws = Workspace.open(root)
    assert ws.integrity_check() == "ok"
    assert ws.query_one("SELECT count(*) FROM events")[0] >= committed >= 2000


def test_teachers_round_trip_without_secrets(ws):
    t = TeacherConfig(
        name="local-vllm",
        base_url="http://127.0.0.1:8000/v1/",
        model="qwen",
        key_source="env",
        key_env="VLLM_KEY",
        headers={"X-Org": "a"},
        price_in=0.5,
        price_out=1.5,
    )
    ws.add_teacher(t)
    back = ws.get_teacher("local-vllm")
    assert back.base_url == "http://127.0.0.1:8000/v1"
    assert back.headers == {"X-Org": "a"} and back.price_out == 1.5
    with pytest.raises(UserError, match="already exists"):
        ws.add_teacher(t)
    ws.remove_teacher("local-vllm")
    with pytest.raises(UserError, match="no teacher named 'local-vllm'"):
        ws.get_teacher("local-vllm")


def test_metrics_can_be_tailed_by_rowid(ws):
    ws.db.execute("INSERT INTO runs(name, config, created_at, updated_at) VALUES ('r', '{}', 0, 0)")
    run_id = ws.query_one("SELECT id FROM runs WHERE name='r'")[0]
    ws.add_metrics(run_id, 1, {"loss": 2.0, "lr": 1e-3}, 1.0)
    first = ws.metrics(run_id)
    ws.add_metrics(run_id, 2, {"loss": 1.5}, 2.0)
    new = ws.metrics(run_id, after_rowid=first[-1]["rowid"])
    assert [(r["step"], r["name"], r["value"]) for r in new] == [(2, "loss", 1.5)]


def test_a_lease_is_refused_while_its_holder_lives_and_taken_over_once_it_is_gone(ws):
    import os
    import socket

    from kdstudio.workspace import Lease, LeaseHeld

    now = time.time()
    ws.db.execute(
        "INSERT INTO runs(name, status, method, config, collection, created_at, updated_at)"
        " VALUES ('r', 'created', 'sft', '{}', 'c', ?, ?)",
        (now, now),
    )
    lease = Lease(ws, "runs", 1, every_s=10.0, stale_after_s=120.0)
    here = socket.gethostname()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)  # fmt: skip

    def holder(pid, host, heartbeat):
        ws.db.execute(
            "UPDATE runs SET pid=?, host=?, heartbeat=? WHERE id=1", (pid, host, heartbeat)
        )

    def claim():
        with ws.tx() as con:
            lease.claim(con, status="running")

    holder(os.getppid(), here, now - 3600)  # alive here: its pid answers, however old the beat
    with pytest.raises(LeaseHeld) as held:
        claim()
    assert (held.value.pid, held.value.host) == (os.getppid(), here)
    assert ws.query_one("SELECT status FROM runs")[0] == "created", "nothing half-written"
    holder(dead, here, now)  # dead here: taken over at once, even with a fresh heartbeat
    claim()
    holder(12345, "elsewhere", time.time())  # another host: only its heartbeat can tell
    with pytest.raises(LeaseHeld):
        claim()
    holder(12345, "elsewhere", time.time() - 121)
    claim()
    row = ws.query_one("SELECT pid, host, heartbeat, status FROM runs")
    assert (row["pid"], row["host"], row["status"]) == (os.getpid(), here, "running")
    claim()  # this process again: still its own
    lease.release(status="finished")
    assert ws.query_one("SELECT pid, status FROM runs")[:] == (None, "finished")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd is Linux's")
def test_close_closes_the_connections_of_every_thread_and_refuses_new_ones(tmp_path):
    from kdstudio.workspace import WorkspaceClosed

    ws = Workspace.open(tmp_path / "ws")
    ws.add_teacher(TeacherConfig(name="t", base_url="http://x/v1", model="m"))
    started, finish = threading.Barrier(4), threading.Event()

    def reader():
        assert ws.teacher_names() == ["t"]  # this thread's own connection
        started.wait()
        finish.wait()  # still alive when the workspace closes

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait()
    extra = ws.connect()  # one the caller forgot to close
    assert ws.connections() == 5 and open_files_under(ws.root)  # this thread, 3, extra
    ws.close()
    assert ws.connections() == 0
    assert open_files_under(ws.root) == []
    with pytest.raises(WorkspaceClosed, match="was closed"):
        ws.teacher_names()
    with pytest.raises(sqlite3.ProgrammingError):
        extra.execute("SELECT 1")
    finish.set()
    for t in threads:
        t.join()


def test_a_thread_releases_its_connection_when_its_job_ends(ws):
    from kdstudio.workspace import release_thread

    def job():
        ws.teacher_names()
        assert ws.connections() == 2  # the test's thread and this one
        release_thread()

    ws.teacher_names()
    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert ws.connections() == 1


def test_a_damaged_or_unopenable_workspace_says_what_is_wrong(tmp_path):
    from kdstudio.workspace import WorkspaceUnavailable

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / DB_NAME).write_bytes(b"this is not a database, it only has the name" * 100)
    with pytest.raises(WorkspaceUnavailable, match="is damaged") as info:
        Workspace.open(damaged)
    assert info.value.reason == "damaged"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / DB_NAME).mkdir()  # a folder where the database should be
    with pytest.raises(WorkspaceUnavailable) as info:
        Workspace.open(blocked)
    assert info.value.reason == "unopenable" and "cannot open" in str(info.value)


def test_a_workspace_locked_by_another_program_is_refused_after_the_open_timeout(tmp_path):
    from kdstudio.workspace import WorkspaceUnavailable

    Workspace.open(tmp_path / "ws").close()
    holder = sqlite3.connect(tmp_path / "ws" / DB_NAME, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # as a program that keeps the file to itself
    try:
        with pytest.raises(WorkspaceUnavailable, match="locked by another program") as info:
            Workspace.open(tmp_path / "ws", open_timeout_s=0.2)
        assert info.value.reason == "locked"
    finally:
        holder.execute("COMMIT")
        holder.close()
