"""The workspace: a folder with one SQLite database (WAL) plus folders for checkpoints/exports.

Schema changes go through numbered migrations in `kdstudio.migrations` (`mNNN_*.py`, each
with `SQL` or an `upgrade(con)` function); `PRAGMA user_version` holds the version. Opening
an older workspace migrates it in one transaction per step; a newer one is refused.

Every connection has an owner that closes it (docs/design-notes.md says why): `ws.db` is the
calling thread's connection, made on first use; `ws.connect()` is one more the caller closes;
`release_thread()` closes the calling thread's connections when its job ends; `ws.close()`
closes every connection the workspace made, in every thread, and refuses new ones. A
process that stops showing a workspace therefore holds none of its files open.

Anything that must not run twice at once (a collection, a training run) holds a `Lease` on
its row: this process's pid and host, and a heartbeat.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdstudio.config import TeacherConfig
from kdstudio.errors import KdError, NotFound, UserError
from kdstudio.formatting import by_name, natural_key

DB_NAME = "kdstudio.sqlite"
ENV_VAR = "KDSTUDIO_WORKSPACE"


def default_path() -> Path:
    """`KDSTUDIO_WORKSPACE`, else the platform's user data dir (e.g. ~/.local/share/kdstudio)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("kdstudio", appauthor=False)) / "workspace"


def migrations() -> list[tuple[int, str, Any]]:
    """[(version, name, module)] in order; versions must be 1..N without gaps."""
    import kdstudio.migrations as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("m") and info.name[1:4].isdigit():
            found.append(
                (
                    int(info.name[1:4]),
                    info.name,
                    importlib.import_module(f"{pkg.__name__}.{info.name}"),
                )
            )
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise RuntimeError(f"migration numbering has a gap before {name}")
    return found


def schema_version() -> int:
    return len(migrations())


class WorkspaceClosed(KdError):
    """A closed workspace was used: a job or view outlived the workspace it belonged to."""


class WorkspaceUnavailable(UserError):
    """The workspace cannot be opened: `reason` is "damaged", "locked", "missing" or
    "unopenable"."""

    def __init__(self, message: str, *, reason: str, path: Path) -> None:
        super().__init__(message)
        self.reason, self.path = reason, path


class _Connection(sqlite3.Connection):
    """A connection that tells its workspace when it is closed (so it is closed only once)."""

    owner: Workspace | None = None

    def close(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._forget(self)
        super().close()


def _connect(path: Path, timeout_s: float = 30.0) -> _Connection:
    # check_same_thread=False only so that `Workspace.close()` can close a finished thread's
    # connection from the GUI thread; each connection is still used by one thread at a time.
    con = sqlite3.connect(
        path, timeout=timeout_s, isolation_level=None, check_same_thread=False, factory=_Connection
    )
    try:
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    except BaseException:
        con.close()
        raise
    return con


_OPEN: weakref.WeakSet[Workspace] = weakref.WeakSet()  # workspaces not yet closed


def release_thread() -> None:
    """Close the calling thread's connections to every open workspace (a job's last step:
    the thread may end, or run another workspace's job next)."""
    for ws in list(_OPEN):
        ws.release_thread()


class Workspace:
    """One workspace folder. Cheap to construct; safe to share between threads."""

    def __init__(self, root: Path, *, create: bool = True, open_timeout_s: float = 30.0) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            if not self.root.exists():
                if not create:
                    raise WorkspaceUnavailable(
                        f"workspace {self.root} does not exist (moved, deleted, or on a disk "
                        "that is not mounted)",
                        reason="missing",
                        path=self.root,
                    )
                self.root.mkdir(parents=True)
            elif not self.root.is_dir():
                raise UserError(f"workspace path {self.root} is a file, not a folder")
        except OSError as exc:
            raise WorkspaceUnavailable(
                f"cannot create the workspace folder {self.root}: {exc.strerror}",
                reason="unopenable",
                path=self.root,
            ) from None
        self.db_path = self.root / DB_NAME
        self._lock = threading.Lock()
        self._by_thread: dict[int, _Connection] = {}  # `db` of each thread that used it
        self._others: set[_Connection] = set()  # from `connect()`, closed by the caller
        self.closed = False
        self._id: str | None = None
        _OPEN.add(self)
        try:
            self._migrate(open_timeout_s)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        create: bool = True,
        open_timeout_s: float = 30.0,
    ) -> Workspace:
        """Open (creating when needed) and migrate a workspace. WorkspaceUnavailable says why
        one cannot be opened (damaged, locked by another program, or not openable at all);
        `open_timeout_s` bounds the wait for another program's lock (the window waits less)."""
        return cls(
            Path(path) if path else default_path(), create=create, open_timeout_s=open_timeout_s
        )

    # -- folders -----------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoints_dir(self) -> Path:
        return self.folder("checkpoints")

    @property
    def exports_dir(self) -> Path:
        return self.folder("exports")

    # -- connections -------------------------------------------------------------------
    def connect(self, *, timeout_s: float = 30.0) -> sqlite3.Connection:
        """A new connection that the caller closes (`close()` closes it too if still open)."""
        return self._new_connection(timeout_s, thread=None)

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use `tx()` for writes that belong together)."""
        con = self._by_thread.get(threading.get_ident())
        if con is None:
            con = self._new_connection(30.0, thread=threading.get_ident())
        return con

    def _new_connection(self, timeout_s: float, *, thread: int | None) -> _Connection:
        self._check_open()
        con = _connect(self.db_path, timeout_s)  # outside the lock: it may wait for SQLite
        with self._lock:
            if not self.closed:
                con.owner = self
                if thread is None:
                    self._others.add(con)
                else:
                    self._by_thread[thread] = con
                return con
        con.close()  # the workspace was closed meanwhile
        raise self._closed_error()

    def _check_open(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _closed_error(self) -> WorkspaceClosed:
        return WorkspaceClosed(
            f"workspace {self.root} was closed (another workspace was opened, or the window "
            "closed); nothing more is read from or written to it here"
        )

    def _forget(self, con: _Connection) -> None:
        with self._lock:
            self._others.discard(con)
            for ident, mine in list(self._by_thread.items()):
                if mine is con:
                    del self._by_thread[ident]

    def release_thread(self) -> None:
        """Close the calling thread's connection (it is made again if the thread goes on)."""
        con = self._by_thread.get(threading.get_ident())
        if con is not None:
            con.close()

    def connections(self) -> int:
        """How many connections to this workspace are open now (every thread)."""
        with self._lock:
            return len(self._by_thread) + len(self._others)

    def close(self) -> None:
        """Close every connection to this workspace, in every thread; refuse new ones.

        Stop the jobs that use it first: a connection closed under a running statement
        makes that statement fail ("Cannot operate on a closed database")."""
        with self._lock:
            self.closed = True
            cons = [*self._by_thread.values(), *self._others]
        _OPEN.discard(self)
        for con in cons:
            con.close()

    def data_version(self) -> int:
        """A number that changes when another connection (any thread or process) commits.

        SQLite answers from the shared-memory index: no table is read, so a view can poll
        it several times a second to see the CLI's or another job's writes."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE): all of it is committed, or none."""
        con = self.db
        if con.in_transaction:  # nested: join the outer transaction
            yield con
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        return self.db.execute(sql, params).fetchone()

    # -- migrations ----------------------------------------------------------------------
    def _migrate(self, timeout_s: float = 30.0) -> None:
        try:
            con = self.connect(timeout_s=timeout_s)
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from None
        try:
            self._migrate_with(con)
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from None
        finally:
            con.close()

    def _migrate_with(self, con: sqlite3.Connection) -> None:
        steps = migrations()
        current = con.execute("PRAGMA user_version").fetchone()[0]
        if current > len(steps):
            raise UserError(
                f"workspace {self.root} was written by a newer kdstudio (schema "
                f"{current}, this version knows {len(steps)}); upgrade kdstudio to open it"
            )
        for version, _name, module in steps[current:]:
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("PRAGMA user_version").fetchone()[0] >= version:
                    con.execute("ROLLBACK")  # another process migrated meanwhile
                    continue
                if hasattr(module, "upgrade"):
                    module.upgrade(con)
                else:
                    for statement in _split_sql(module.SQL):
                        con.execute(statement)
                con.execute(f"PRAGMA user_version={version}")
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def _unavailable(self, exc: sqlite3.DatabaseError) -> WorkspaceUnavailable:
        """What a SQLite error at open means for the person opening the workspace."""
        text = str(exc)
        if "locked" in text or "busy" in text:
            return WorkspaceUnavailable(
                f"workspace {self.root} is locked by another program (SQLite: {text}); close "
                "the program that holds it, or open another workspace",
                reason="locked",
                path=self.root,
            )
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in text:
            return WorkspaceUnavailable(
                f"cannot open {self.db_path} (SQLite: {text}); check that the folder and the "
                "file are readable and writable",
                reason="unopenable",
                path=self.root,
            )
        return WorkspaceUnavailable(
            f"the workspace database {self.db_path} is damaged (SQLite: {text}); open it in "
            "the kdstudio window to recover what is readable into a new file (the damaged "
            "one is kept)",
            reason="damaged",
            path=self.root,
        )

    @property
    def id(self) -> str:
        """The workspace's stable id (made by migration 5): API keys are stored under it."""
        if self._id is None:
            self._id = self.query_one("SELECT value FROM workspace_info WHERE key='id'")[0]
        return self._id

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    # -- teachers ------------------------------------------------------------------------
    def add_teacher(self, teacher: TeacherConfig, *, replace: bool = False) -> None:
        now = time.time()
        row = teacher.to_row()
        with self.tx() as con:
            exists = con.execute("SELECT 1 FROM teachers WHERE name=?", (teacher.name,)).fetchone()
            if exists and not replace:
                raise UserError(
                    f"a teacher named {teacher.name!r} already exists "
                    "(remove it first, or choose another name)"
                )
            if exists:
                sets = ", ".join(f"{k}=:{k}" for k in row)
                con.execute(
                    f"UPDATE teachers SET {sets}, updated_at=:now WHERE name=:name",
                    {**row, "now": now},
                )
            else:
                cols = ", ".join(row)
                vals = ", ".join(f":{k}" for k in row)
                con.execute(
                    f"INSERT INTO teachers({cols}, created_at, updated_at) VALUES ({vals}, :now, :now)",
                    {**row, "now": now},
                )

    def teacher_names(self) -> list[str]:
        return by_name([r[0] for r in self.query("SELECT name FROM teachers")])

    def get_teacher(self, name: str) -> TeacherConfig:
        row = self.query_one("SELECT * FROM teachers WHERE name=?", (name,))
        if row is None:
            raise NotFound("teacher", name, self.teacher_names())
        return TeacherConfig.from_row(dict(row))

    def list_teachers(self) -> list[TeacherConfig]:
        return [
            TeacherConfig.from_row(dict(r))
            for r in sorted(
                self.query("SELECT * FROM teachers"), key=lambda r: natural_key(r["name"])
            )
        ]

    def remove_teacher(self, name: str) -> None:
        with self.tx() as con:
            if con.execute("DELETE FROM teachers WHERE name=?", (name,)).rowcount == 0:
                raise NotFound("teacher", name, self.teacher_names())

    def set_teacher_capabilities(self, name: str, capabilities: dict[str, Any]) -> None:
        with self.tx() as con:
            con.execute(
                "UPDATE teachers SET capabilities=?, probed_at=?, updated_at=? WHERE name=?",
                (json.dumps(capabilities), time.time(), time.time(), name),
            )

    # -- events and metrics --------------------------------------------------------------
    def add_event(self, job_kind: str, job_id: str, kind: str, payload: dict, t: float) -> None:
        self.db.execute(
            "INSERT INTO events(job_kind, job_id, t, type, payload) VALUES (?,?,?,?,?)",
            (job_kind, str(job_id), t, kind, json.dumps(payload, default=str)),
        )

    def events(self, job_kind: str, job_id: str, *, limit: int = 1000) -> list[dict]:
        rows = self.query(
            "SELECT t, type, payload FROM events WHERE job_kind=? AND job_id=? ORDER BY id DESC LIMIT ?",
            (job_kind, str(job_id), limit),
        )
        return [
            {"t": r["t"], "type": r["type"], **json.loads(r["payload"])} for r in reversed(rows)
        ]

    def add_metrics(self, run_id: int, step: int, values: dict[str, float], t: float) -> None:
        """Store metric values of a step. A NaN is left out: SQLite has no NaN (it would read
        back as NULL), and a run whose loss became NaN says so in its status and message
        (kdstudio.distill.divergence); infinities are stored as they are."""
        self.db.executemany(
            "INSERT OR REPLACE INTO run_metrics(run_id, step, name, value, t) VALUES (?,?,?,?,?)",
            [(run_id, step, k, float(v), t) for k, v in values.items() if v == v],
        )

    def metrics(self, run_id: int, *, after_rowid: int = 0) -> list[sqlite3.Row]:
        """Metrics of a run in insertion order; `after_rowid` lets a viewer tail new ones."""
        return self.query(
            "SELECT rowid, step, name, value, t FROM run_metrics WHERE run_id=? AND rowid>? ORDER BY rowid",
            (run_id, after_rowid),
        )


class LeaseHeld(UserError):
    """Another live process holds the lease (its pid and host say which)."""

    def __init__(self, pid: int, host: str) -> None:
        super().__init__(f"process {pid} on {host} holds it")
        self.pid, self.host = pid, host


class Lease:
    """A claim on one row of a job table (`collections`, `runs`, `curations`) so that its job never runs
    twice at once: the row's `pid` and `host` name the holder, `heartbeat` says when it was
    last seen.

    The holder counts as alive while, on this host, its process is (the pid answers, however
    old the heartbeat: a long checkpoint save or a long generate may pause it), and, on
    another host, while its heartbeat is younger than `stale_after_s`. A lease whose holder is
    dead is taken over by the next `claim`. The holder beats every `every_s` seconds: from its
    own loop (`heartbeat()`), or from a helper thread while one long call blocks it
    (`beating()`).
    """

    TABLES = ("collections", "runs", "curations")

    def __init__(
        self, ws: Workspace, table: str, row_id: int, *, every_s: float, stale_after_s: float
    ) -> None:
        if table not in self.TABLES:
            raise ValueError(f"no lease on table {table!r}")
        self.ws, self.table, self.row_id = ws, table, row_id
        self.every_s, self.stale_after_s = every_s, stale_after_s

    @staticmethod
    def holder_alive(
        pid: int | None, host: str | None, heartbeat: float | None, stale_after_s: float
    ) -> bool:
        """Whether the holder a row names (pid, host, heartbeat) is still alive."""
        if not pid:
            return False
        if host == socket.gethostname():
            return pid_alive(int(pid))
        return heartbeat is not None and time.time() - heartbeat <= stale_after_s

    def claim(self, con: sqlite3.Connection, **columns: Any) -> None:
        """Take the lease inside the caller's write transaction, setting `columns` as well;
        raises LeaseHeld when another live process holds it (the caller rolls back)."""
        row = con.execute(
            f"SELECT pid, host, heartbeat FROM {self.table} WHERE id=?", (self.row_id,)
        ).fetchone()
        host = socket.gethostname()
        mine = row["pid"] == os.getpid() and row["host"] == host
        if not mine and self.holder_alive(
            row["pid"], row["host"], row["heartbeat"], self.stale_after_s
        ):
            raise LeaseHeld(row["pid"], row["host"])
        self._update(con, pid=os.getpid(), host=host, heartbeat=time.time(), **columns)

    def heartbeat(self, con: sqlite3.Connection | None = None, **columns: Any) -> None:
        """Say this holder is alive (and set `columns`, e.g. a run's step, in the same write)."""
        self._update(con or self.ws.db, heartbeat=time.time(), **columns)

    def release(self, con: sqlite3.Connection | None = None, **columns: Any) -> None:
        """Give the lease up (and set `columns`, e.g. the final status)."""
        self._update(con or self.ws.db, pid=None, **columns)

    @contextmanager
    def beating(self) -> Iterator[None]:
        """Keep the heartbeat fresh from a helper thread (its own connection) while one long
        call holds this thread: another host must not take the lease over meanwhile."""
        stop = threading.Event()

        def beat() -> None:
            con = self.ws.connect()
            try:
                while not stop.wait(self.every_s):
                    try:
                        self.heartbeat(con)
                    except sqlite3.OperationalError:
                        pass  # the database is busy right now: the next beat tries again
            finally:
                con.close()

        name = f"heartbeat-{self.table}-{self.row_id}"
        thread = threading.Thread(target=beat, name=name, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _update(self, con: sqlite3.Connection, **columns: Any) -> None:
        if not all(name.isidentifier() for name in columns):  # names go into the SQL text
            raise ValueError(f"not column names: {list(columns)}")
        sets = ", ".join(f"{name}=?" for name in columns)
        con.execute(f"UPDATE {self.table} SET {sets} WHERE id=?", (*columns.values(), self.row_id))


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine is alive (jobs record pid + host to detect crashes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (complete_statement keeps triggers whole)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
