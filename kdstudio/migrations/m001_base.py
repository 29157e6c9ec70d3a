"""Teachers (no secrets: keys live in the OS keyring) and the event log of every job."""

SQL = """
CREATE TABLE teachers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('openai', 'local')),
    base_url TEXT,
    model TEXT,
    path TEXT,
    key_source TEXT NOT NULL DEFAULT 'none' CHECK (key_source IN ('keyring', 'env', 'none')),
    key_env TEXT,
    headers TEXT NOT NULL DEFAULT '{}',
    price_in REAL NOT NULL DEFAULT 0,
    price_out REAL NOT NULL DEFAULT 0,
    capabilities TEXT,
    probed_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    job_kind TEXT NOT NULL,
    job_id TEXT NOT NULL,
    t REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX events_by_job ON events (job_kind, job_id, id);
"""
