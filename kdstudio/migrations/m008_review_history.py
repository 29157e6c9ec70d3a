"""Curation with provenance: who decided each answer's review, with a score and a reason, and
every decision ever made (nothing is overwritten or deleted).

- `collection_items.score`, `.reason`, `.decider`: the decision in force for an item (its
  `review` is that decision's verdict). `decider` is `person`, `check:<name>`,
  `judge:<teacher>` or `best:<by>`; NULL while nobody has decided.
- `review_history`: every decision, in order, with what it was based on (`basis`: a hash of
  the curator and the answer it saw, so a re-run skips what it already decided) and whether
  it took effect (`applied` = 0 when a person's decision stood and the curator's was only
  recorded).
- `curations`: one row per (collection, automatic curator): its settings, how its last run
  ended, its counts, and the claim (pid, host, heartbeat) of the process running it.

Reviews made before this version were a person's (A/R in the window, `outputs review`), so
they are recorded as such, in the history too.
"""

SQL = """
ALTER TABLE collection_items ADD COLUMN score REAL;
ALTER TABLE collection_items ADD COLUMN reason TEXT;
ALTER TABLE collection_items ADD COLUMN decider TEXT;

CREATE TABLE curations (
    id INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('check', 'judge', 'best')),
    decider TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'created',
    counts TEXT NOT NULL DEFAULT '{}',
    message TEXT,
    pid INTEGER,
    host TEXT,
    heartbeat REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (collection_id, decider)
);

CREATE TABLE review_history (
    id INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    row_id INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    review TEXT NOT NULL CHECK (review IN ('pending', 'accepted', 'rejected')),
    score REAL,
    reason TEXT,
    decider TEXT NOT NULL,
    basis TEXT,
    curation_id INTEGER REFERENCES curations (id) ON DELETE SET NULL,
    applied INTEGER NOT NULL DEFAULT 1,
    t REAL NOT NULL
);
CREATE INDEX review_history_by_item ON review_history (collection_id, row_id, sample, id);
CREATE INDEX review_history_by_basis ON review_history (collection_id, basis);

UPDATE collection_items SET decider = 'person'
    WHERE review != 'pending' OR edited_text IS NOT NULL;

INSERT INTO review_history (collection_id, row_id, sample, review, reason, decider, t)
    SELECT collection_id, row_id, sample, review,
           CASE WHEN edited_text IS NOT NULL THEN 'answer edited' END, 'person',
           COALESCE(updated_at, 0)
    FROM collection_items WHERE decider = 'person';
"""
