"""Collections of teacher outputs. Responses are a shared cache keyed by a content hash of
(endpoint, model, parameters, messages, sample index), so no request is ever paid twice.

- `responses`: one row per distinct request ever answered (text, usage, cost, logprobs blob).
- `collection_items`: one row per (collection, dataset row, sample) with its state
  (queued, in_flight, retrying, done, failed + error), review and edited text. `cost` is
  what this collection paid for the item (0 when the response came from the cache).
- `collection_batches`: Batch API submissions, so a restarted process picks them up.
- `response_fts`: full-text index over response text (kept by triggers).
"""

SQL = """
CREATE TABLE collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    teacher_id INTEGER REFERENCES teachers (id) ON DELETE SET NULL,
    teacher_name TEXT,
    dataset_id INTEGER NOT NULL REFERENCES datasets (id),
    params TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'teacher',
    status TEXT NOT NULL DEFAULT 'created',
    batch_id TEXT,
    budget REAL,
    pid INTEGER,
    host TEXT,
    heartbeat REAL,
    message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE responses (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    endpoint TEXT,
    model TEXT,
    source TEXT NOT NULL DEFAULT 'teacher',
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    logprobs BLOB,
    mean_logprob REAL,
    n_chars INTEGER NOT NULL DEFAULT 0,
    latency REAL,
    created_at REAL NOT NULL
);

CREATE TABLE collection_items (
    collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    row_id INTEGER NOT NULL REFERENCES dataset_rows (id),
    sample INTEGER NOT NULL DEFAULT 0,
    hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'in_flight', 'retrying', 'done', 'failed')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    review TEXT NOT NULL DEFAULT 'pending' CHECK (review IN ('pending', 'accepted', 'rejected')),
    edited_text TEXT,
    updated_at REAL,
    PRIMARY KEY (collection_id, row_id, sample)
);
CREATE INDEX collection_items_by_status ON collection_items (collection_id, status, row_id, sample);
CREATE INDEX collection_items_by_hash ON collection_items (hash);

CREATE TABLE collection_batches (
    id INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    batch_id TEXT NOT NULL,
    input_file_id TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    status TEXT NOT NULL DEFAULT 'submitted',
    n_requests INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX collection_batches_by_collection ON collection_batches (collection_id);

CREATE VIRTUAL TABLE response_fts USING fts5 (text, content='responses', content_rowid='id');

CREATE TRIGGER responses_fts_insert AFTER INSERT ON responses BEGIN
    INSERT INTO response_fts (rowid, text) VALUES (new.id, new.text);
END;

CREATE TRIGGER responses_fts_delete AFTER DELETE ON responses BEGIN
    INSERT INTO response_fts (response_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

CREATE TRIGGER responses_fts_update AFTER UPDATE OF text ON responses BEGIN
    INSERT INTO response_fts (response_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO response_fts (rowid, text) VALUES (new.id, new.text);
END;
"""
