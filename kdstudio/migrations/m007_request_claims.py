"""Claims on the requests in flight, the teacher each collection asks, and which of a
teacher's headers are credentials.

- `request_claims`: a request (by its content hash, the key of `responses`) that one
  collector has in flight. Another collection that needs the same answer at the same time
  waits for it instead of paying for it again. A claim lives as long as the lease of the
  collection that made it: it counts only while that collection's row still names the
  claim's pid and host and that holder is alive (`kdstudio.workspace.Lease.holder_alive`),
  so a killed collector's claims are taken over (see `kdstudio.collect.ledger`).
- `collections.teacher_model`, `collections.teacher_endpoint`: the model and the endpoint
  (as hashed: the base URL, or `local:<folder>:<fingerprint>` for a local teacher) that a
  collection's answers come from. Resuming it after the teacher changed (`teacher add NAME
  --replace --model OTHER`) is refused instead of mixing two models' answers. Collections
  made before are filled in from their stored answers where those say (a local teacher's
  fingerprint was never stored: the next run records it).
- `teachers.secret_headers`: the names (JSON list) of a teacher's extra HTTP headers whose
  values are credentials (`api-key: ...`): their values live in the OS keyring like the
  API key (`kdstudio.secrets`), never in `teachers.headers`.
"""

SCHEMA = [
    """CREATE TABLE request_claims (
        hash TEXT PRIMARY KEY,
        collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        claimed_at REAL NOT NULL
    )""",
    "CREATE INDEX request_claims_by_collection ON request_claims (collection_id)",
    "ALTER TABLE teachers ADD COLUMN secret_headers TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE collections ADD COLUMN teacher_model TEXT",
    "ALTER TABLE collections ADD COLUMN teacher_endpoint TEXT",
]

# One answer of each teacher collection that came from an endpoint (not a local teacher).
ANSWERED_BY = """
SELECT c.id, r.model, r.endpoint FROM collections c
JOIN collection_items ci ON ci.collection_id = c.id AND ci.status = 'done'
JOIN responses r ON r.hash = ci.hash
WHERE c.source = 'teacher' AND r.source IN ('teacher', 'batch')
  AND r.model IS NOT NULL AND r.endpoint IS NOT NULL AND r.endpoint NOT LIKE 'local:%'
GROUP BY c.id
"""


def upgrade(con) -> None:
    for statement in SCHEMA:
        con.execute(statement)
    con.executemany(
        "UPDATE collections SET teacher_model=?, teacher_endpoint=? WHERE id=?",
        [(model, endpoint, cid) for cid, model, endpoint in con.execute(ANSWERED_BY).fetchall()],
    )
