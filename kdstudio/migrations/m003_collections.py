"""Collections of teacher outputs. Responses are a shared cache keyed by a content hash of
(endpoint, model, parameters, messages, sample index), so no request is ever paid twice."""

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
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE responses (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    endpoint TEXT,
    model TEXT,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    logprobs BLOB,
    latency REAL,
    created_at REAL NOT NULL
);

CREATE TABLE collection_items (
    collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    row_id INTEGER NOT NULL REFERENCES dataset_rows (id),
    sample INTEGER NOT NULL DEFAULT 0,
    hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    review TEXT NOT NULL DEFAULT 'pending' CHECK (review IN ('pending', 'accepted', 'rejected')),
    edited_text TEXT,
    updated_at REAL,
    PRIMARY KEY (collection_id, row_id, sample)
);
CREATE INDEX collection_items_by_status ON collection_items (collection_id, status);
CREATE INDEX collection_items_by_hash ON collection_items (hash);
"""
