"""Prompt datasets (immutable once imported; a filtered/edited copy links to its parent).

- `datasets`: one row per dataset; `stats` is a JSON document (rows, roles, lengths,
  duplicates), `mapping` the columns the import used (field -> column).
- `dataset_rows`: `idx` is dense 0..n_rows-1 in file order and row ids increase with it;
  `messages` is the JSON list of prompt turns [{"role", "content"}] (system, earlier turns,
  final user turn; never the final answer), `prompt` the final user turn, `reference` the
  final assistant answer when the file had one, `row_key` the file's id, `meta` the file's
  other fields (JSON), `row_hash` a 64-bit content hash used to find duplicates.
- `dataset_fts`: full-text index over prompt and reference. Rows are added in bulk after an
  import (not by a per-row trigger: that would slow imports several times); deletions are
  kept in step by a trigger, so deleting rows by any route leaves the index right. It keeps
  no token positions or sizes (detail=column, columnsize=0: a third less indexing time), so
  it answers word and prefix queries, not phrase/NEAR queries or bm25 ranking.
"""

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
    row_hash INTEGER NOT NULL,
    UNIQUE (dataset_id, idx)
);

CREATE VIRTUAL TABLE dataset_fts USING fts5 (
    prompt, reference, content='dataset_rows', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2', detail=column, columnsize=0
);

CREATE TRIGGER dataset_rows_fts_delete AFTER DELETE ON dataset_rows BEGIN
    INSERT INTO dataset_fts (dataset_fts, rowid, prompt, reference)
    VALUES ('delete', old.id, old.prompt, old.reference);
END;
"""
