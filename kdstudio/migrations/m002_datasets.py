"""Prompt datasets (immutable once imported; a filtered/edited copy links to its parent)."""

SQL = """
CREATE TABLE datasets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    parent_id INTEGER REFERENCES datasets (id),
    source TEXT,
    format TEXT,
    mapping TEXT NOT NULL DEFAULT '{}',
    n_rows INTEGER NOT NULL DEFAULT 0,
    stats TEXT NOT NULL DEFAULT '{}',
    note TEXT,
    created_at REAL NOT NULL
);

CREATE TABLE dataset_rows (
    id INTEGER PRIMARY KEY,
    dataset_id INTEGER NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    messages TEXT NOT NULL,
    prompt TEXT NOT NULL,
    system TEXT,
    reference TEXT,
    row_key TEXT,
    meta TEXT,
    n_chars INTEGER NOT NULL DEFAULT 0,
    row_hash TEXT NOT NULL,
    UNIQUE (dataset_id, idx)
);

CREATE VIRTUAL TABLE dataset_fts USING fts5 (
    prompt, reference, content='dataset_rows', content_rowid='id'
);
"""
