"""Recover what is readable from a damaged workspace database into a new file.

    result = recover_workspace(root)
    print(result.line())

The damaged database is never changed: it is copied aside first, the copy is read, and the
rows that can be read go into a new database. Only when that new database opens as a
workspace and passes `PRAGMA integrity_check` is it put in place; the damaged one (with
its `-wal`) is kept beside it as `kdstudio.damaged-<time>.sqlite`.

Two ways to read, best first:
- the sqlite3 command-line tool's `.recover`, which reads every page, also pages no table
  reaches any more (their rows land in a table `lost_and_found`), when the installed tool
  can (it needs `sqlite_dbpage`, which distribution builds often leave out);
- without the tool, a copy table by table through Python's sqlite3, which steps over the
  ranges of rows whose pages cannot be read (it cannot see orphaned pages). Full-text
  indexes are rebuilt from the recovered rows rather than copied.

Recovery refuses to run while any process (this one included) has the database open: a
file renamed under a live connection is one more way to lose it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kdstudio.errors import JobFailed, UserError
from kdstudio.workspace import _OPEN, DB_NAME, Workspace

SIDE_FILES = ("-wal", "-shm")
# SQLite's unix locking bytes (see sqlite3.c, "PENDING_BYTE"): every connection to a
# WAL-mode database holds a read lock on the SHARED range while it is open.
SHARED_FIRST = 0x40000000 + 2
SHARED_SIZE = 510
MAX_SKIPS = 64  # unreadable stretches stepped over per table before giving the rest up


@dataclass
class RecoveryResult:
    method: str  # "sqlite3 .recover" or "table copy"
    kept: Path  # the damaged database, renamed
    rows: dict[str, int] = field(default_factory=dict)  # rows recovered per table
    lost: dict[str, str] = field(default_factory=dict)  # tables given up on: why

    def line(self) -> str:
        total = sum(self.rows.values())
        rows = "row" if total == 1 else "rows"
        text = f"recovered {total:,} {rows} in {len(self.rows)} tables ({self.method})"
        if self.lost:
            text += "; not readable: " + ", ".join(f"{t} ({why})" for t, why in self.lost.items())
        return f"{text}; the damaged database is kept as {self.kept}"


def sqlite_tool() -> str | None:
    """The sqlite3 command-line tool, when installed and able to `.recover`: that needs the
    `sqlite_dbpage` table, which distribution builds often leave out (Debian 12's 3.40 and
    Ubuntu 24.04's 3.45 do: there `.recover` stops with "SQL logic error")."""
    path = shutil.which("sqlite3")
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, ":memory:", "SELECT count(*) FROM sqlite_dbpage"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return path if out.returncode == 0 else None


def recover_workspace(root: str | Path, *, use_tool: bool | None = None) -> RecoveryResult:
    """Recover `root`'s database into a new one put in its place; see the module docstring.

    `use_tool`: True needs the sqlite3 tool, False never uses it, None uses it when found."""
    root = Path(root).expanduser().resolve()
    db = root / DB_NAME
    if not db.is_file():
        raise UserError(f"there is no {DB_NAME} in {root} to recover")
    if any(ws.root == root for ws in list(_OPEN)):
        raise UserError(f"workspace {root} is open in this process; close it before recovering")
    tool = sqlite_tool() if use_tool is not False else None
    if use_tool and tool is None:
        raise UserError(
            "the sqlite3 command-line tool with .recover (built with sqlite_dbpage) is not "
            "installed"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = root / f".recover-{stamp}"
    work.mkdir()
    try:
        _check_unused(db)
        copy = work / "damaged.sqlite"
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copy2(f"{db}{suffix}", f"{copy}{suffix}")
        new = work / DB_NAME
        if tool:
            result = _with_tool(tool, copy, new)
        else:
            result = _by_table(copy, new)
        _set_version(new, _header_version(db))
        _check(work)
        _check_unused(db)
        result.kept = _keep_aside(db, stamp)
        os.replace(new, db)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _check_unused(db: Path) -> None:
    """Refuse when any process has the database open (each connection holds a read lock on
    its SHARED bytes). This process holds no connection to it, so closing the descriptor
    drops no lock of ours."""
    fd = os.open(db, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, SHARED_SIZE, SHARED_FIRST)
    except OSError:
        raise UserError(
            f"{db} is open in another program (a kdstudio window or command?); close it, "
            "then recover"
        ) from None
    finally:
        os.close(fd)


def _with_tool(tool: str, copy: Path, new: Path) -> RecoveryResult:
    dump = subprocess.run([tool, str(copy), ".recover"], capture_output=True, timeout=3600)
    if dump.returncode != 0 or not dump.stdout:
        raise JobFailed(
            f"sqlite3 .recover could not read {copy.name}: "
            f"{dump.stderr.decode(errors='replace').strip()[:300]}"
        )
    load = subprocess.run([tool, str(new)], input=dump.stdout, capture_output=True, timeout=3600)
    if load.returncode != 0:
        raise JobFailed(
            "the recovered rows could not be written: "
            f"{load.stderr.decode(errors='replace').strip()[:300]}"
        )
    con = sqlite3.connect(new)
    try:
        rows = {
            name: con.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
            for (name,) in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
            )
        }
        _rebuild_fts(con)
    finally:
        con.close()
    return RecoveryResult("sqlite3 .recover", kept=copy, rows=rows)


def _by_table(copy: Path, new: Path) -> RecoveryResult:
    src = sqlite3.connect(copy)
    dst = sqlite3.connect(new, isolation_level=None)
    result = RecoveryResult("table copy", kept=copy)
    try:
        try:
            schema = src.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JobFailed(
                f"the list of tables cannot be read ({exc}); only the sqlite3 tool's .recover "
                "can go further (install the sqlite3 package and try again)"
            ) from None
        virtual = [name for kind, name, sql in schema if sql.upper().startswith("CREATE VIRTUAL")]
        shadow = {
            f"{v}_{s}" for v in virtual for s in ("data", "idx", "content", "docsize", "config")
        }
        tables = [
            (name, sql)
            for kind, name, sql in schema
            if kind == "table" and not name.startswith("sqlite_") and name not in shadow
        ]
        dst.execute("BEGIN")
        for _name, sql in tables:
            dst.execute(sql)
        for name, _sql in tables:
            if name in virtual:
                continue
            copied, why = _copy_rows(src, dst, name)
            result.rows[name] = copied
            if why:
                result.lost[name] = why
        for kind, _name, sql in schema:
            if kind in ("index", "trigger"):
                dst.execute(sql)
        dst.execute("COMMIT")
        _rebuild_fts(dst)
    finally:
        src.close()
        dst.close()
    return result


def _copy_rows(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> tuple[int, str]:
    """Copy `table` in rowid order, stepping over rows that cannot be read. (copied, why)

    After a read fails it goes on one row at a time, each failure jumping twice as far past
    the unreadable stretch (a damaged page hides a run of consecutive rowids)."""
    cols = [r[1] for r in dst.execute(f'PRAGMA table_info("{table}")')]
    names = ", ".join(f'"{c}"' for c in ["rowid", *cols])
    marks = ", ".join("?" * (len(cols) + 1))
    insert = f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ({marks})'
    select = f'SELECT rowid, * FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT ?'
    try:
        first, last = src.execute(f'SELECT min(rowid), max(rowid) FROM "{table}"').fetchone()
    except sqlite3.DatabaseError:
        first, last = None, None
    after = (first - 1) if first is not None else 0
    copied, failures, step, careful = 0, 0, 1, 0
    while True:
        try:
            rows = src.execute(select, (after, 1 if careful else 500)).fetchall()
        except sqlite3.DatabaseError as exc:
            failures += 1
            if failures > MAX_SKIPS or last is None or after >= last:
                where = f"rows after rowid {after}" if copied else "every row"
                return copied, f"{where} unreadable ({exc})"
            after, step, careful = after + step, step * 2, 50
            continue
        if not rows:
            break
        dst.executemany(insert, [tuple(r) for r in rows])
        copied += len(rows)
        after, step, careful = rows[-1][0], 1, max(careful - 1, 0)
    return copied, f"{failures} unreadable stretch(es) stepped over" if failures else ""


def _rebuild_fts(con: sqlite3.Connection) -> None:
    for (name,) in con.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND sql LIKE 'CREATE VIRTUAL TABLE%fts5%'"
    ).fetchall():
        con.execute(f'INSERT INTO "{name}"("{name}") VALUES (\'rebuild\')')


def _header_version(db: Path) -> int:
    """PRAGMA user_version as stored in the file header (bytes 60-63), damaged or not."""
    with open(db, "rb") as f:
        header = f.read(64)
    return int.from_bytes(header[60:64], "big") if len(header) == 64 else 0


def _set_version(db: Path, version: int) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute(f"PRAGMA user_version={int(version)}")
        con.execute("PRAGMA journal_mode=WAL")
        con.commit()
    finally:
        con.close()


def _check(work: Path) -> None:
    """The recovered database opens as a workspace (migrating it if needed) and is sound."""
    ws = Workspace.open(work)
    try:
        verdict = ws.integrity_check()
    finally:
        ws.close()
    if verdict != "ok":
        raise JobFailed(f"the recovered database does not pass integrity_check: {verdict}")


def _keep_aside(db: Path, stamp: str) -> Path:
    kept = db.with_name(f"kdstudio.damaged-{stamp}.sqlite")
    for suffix in SIDE_FILES[::-1] + ("",):
        source = Path(f"{db}{suffix}")
        if source.exists():
            os.replace(source, f"{kept}{suffix}")
    return kept
