"""Training runs, their metrics (tailed live by the window), checkpoints and evaluations.

runs.status: created | running | finished | stopped | failed (a `running` run whose process
is gone reads as `interrupted`; see kdstudio.distill.runs). runs.eval_rows: JSON list of the
dataset row ids held out for evaluation. checkpoints: an index of the folders under
checkpoints/<run>/step-NNNNNNN/ (the folders and their meta.json are the truth).
evaluations.status: running | finished | stopped | failed (see kdstudio.evaluate).
"""

SQL = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'created',
    method TEXT,
    config TEXT NOT NULL,
    collection TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    world_size INTEGER NOT NULL DEFAULT 1,
    pid INTEGER,
    host TEXT,
    heartbeat REAL,
    error TEXT,
    eval_rows TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE run_metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    t REAL NOT NULL,
    PRIMARY KEY (run_id, name, step)
);
CREATE INDEX run_metrics_by_run ON run_metrics (run_id);

CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    eval_loss REAL,
    is_best INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);

CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    checkpoint TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    step INTEGER,
    status TEXT NOT NULL DEFAULT 'running',
    config TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    finished_at REAL
);
CREATE INDEX evaluations_by_run ON evaluations (run_id, id);

CREATE TABLE eval_items (
    eval_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    row_id INTEGER,
    prompt TEXT NOT NULL,
    teacher TEXT,
    student_before TEXT,
    student_after TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (eval_id, idx)
);
"""
