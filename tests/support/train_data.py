"""Small collections of teacher outputs written straight into a workspace (tests, benchmarks).

    name = make_collection(ws, "tiny", memorisable_pairs(24))
    student = make_student(tmp / "student", texts_of(pairs))

Rows go into `datasets`/`dataset_rows` with plain SQL and the answers through
`kdstudio.collect.store.add_imported_response`, so training reads them through `iter_examples`
exactly as it reads a real collection.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from kdstudio.workspace import Workspace

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "sun",
    "moon",
    "tree",
    "fish",
    "bird",
    "star",
    "rain",
]


def memorisable_pairs(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs a tiny model can learn: reverse a few words, add numbers."""
    out = []
    for i in range(n):
        a, b, c = WORDS[(i + seed) % 12], WORDS[(3 * i + 1 + seed) % 12], WORDS[(5 * i + 2) % 12]
        if i % 2 == 0:
            out.append((f"Reverse: {a} {b} {c}", f"{c} {b} {a}"))
        else:
            out.append((f"What is {i} + {i + seed + 2}?", f"The answer is {2 * i + seed + 2}."))
    return out


def texts_of(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{p} {r}" for p, r in pairs]


def make_collection(
    ws: Workspace,
    name: str,
    pairs: Sequence[tuple[str, str]],
    *,
    system: str | None = None,
    samples: int = 1,
) -> str:
    """A dataset `name` + a collection `name` holding `pairs` as done teacher outputs."""
    from kdstudio.collect.store import add_imported_response, create_collection

    now = time.time()
    with ws.tx() as con:
        did = con.execute(
            "INSERT INTO datasets(name, source, format, n_rows, created_at) VALUES (?,?,?,?,?)",
            (name, "test", "jsonl", len(pairs), now),
        ).lastrowid
        row_ids = []
        for idx, (prompt, _) in enumerate(pairs):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            text = json.dumps(messages)
            row_ids.append(
                con.execute(
                    "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, system, n_chars,"
                    " row_hash) VALUES (?,?,?,?,?,?,?)",
                    (
                        did,
                        idx,
                        text,
                        prompt,
                        system,
                        len(prompt),
                        hashlib.sha256(text.encode()).hexdigest(),
                    ),
                ).lastrowid
            )
    create_collection(ws, name, dataset_id=did, teacher_name=None, params={}, source="import")
    with ws.tx():
        for idx, ((_, response), row_id) in enumerate(zip(pairs, row_ids, strict=True)):
            for sample in range(samples):
                add_imported_response(
                    ws,
                    name,
                    dataset_name=name,
                    row_id=row_id,
                    idx=idx,
                    text=response,
                    sample=sample,
                )
    return name


def make_student(
    out_dir: str | Path,
    texts: Sequence[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 384,
    seed: int = 0,
) -> Path:
    """A tiny Llama student with a tokenizer trained on `texts` (offline)."""
    from kdstudio.demo.tiny import make_model, make_tokenizer

    out_dir = Path(out_dir)
    tok = make_tokenizer(out_dir.with_name(out_dir.name + "-tok"), texts, vocab_size=vocab_size)
    return make_model(out_dir, tok, layers=layers, hidden=hidden, seed=seed)


def add_answers(
    ws: Workspace,
    name: str,
    dataset: str,
    answers: Sequence[str | Sequence[str]],
    *,
    teacher: str = "teacher-b",
) -> str:
    """Another collection `name` of `dataset` (made by `make_collection` or an import), as if
    `teacher` had answered it: answers[i] for row i (a list: one answer per sample)."""
    from kdstudio.collect.store import content_hash, create_collection, insert_response
    from kdstudio.teachers import Response

    did = ws.query_one("SELECT id FROM datasets WHERE name=?", (dataset,))[0]
    rows = ws.query("SELECT id FROM dataset_rows WHERE dataset_id=? ORDER BY idx", (did,))
    cid = create_collection(ws, name, dataset_id=did, teacher_name=teacher, params={})
    with ws.tx() as con:
        for (row_id,), answer in zip(rows, answers, strict=True):
            for sample, text in enumerate([answer] if isinstance(answer, str) else answer):
                hash_ = content_hash(["test", name, row_id, sample])
                insert_response(con, hash_, Response(text, model=teacher, endpoint="test:"))
                con.execute(
                    "INSERT INTO collection_items(collection_id, row_id, sample, hash, status)"
                    " VALUES (?,?,?,?, 'done')",
                    (cid, row_id, sample, hash_),
                )
        con.execute("UPDATE collections SET status='done' WHERE id=?", (cid,))
    return name
