"""Curation from the CLI (review, edit, export) and the resume offer, over the same core as the window."""

from __future__ import annotations

import json
import os
import time

from kdstudio.collect import store as outputs
from kdstudio.collect.ledger import interrupted_collections
from kdstudio.data import import_dataset
from kdstudio.workspace import Workspace


def imported_collection(tmp_path, n=4):
    src = tmp_path / "answers.jsonl"
    with src.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"prompt": f"What is {i} + 1?", "response": f"The answer is {i + 1}."})
                + "\n"
            )
    ws = Workspace.open(tmp_path / "ws")
    import_dataset(ws, src, name="sums", as_collection="sums.ref")
    return ws


def test_review_edit_and_export_from_the_cli(tmp_path, run_cli):
    ws = imported_collection(tmp_path)
    assert run_cli("outputs", "review", "sums.ref", "accept", "0", "2").returncode == 0
    assert run_cli("outputs", "review", "sums.ref", "reject", "1").returncode == 0
    edit = run_cli("outputs", "edit", "sums.ref", "2", input="Two plus one is 3.\n")
    assert edit.returncode == 0, edit.stderr
    out = tmp_path / "accepted.jsonl"
    exported = run_cli("outputs", "export", "sums.ref", "--out", str(out), "--review", "accepted")
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in records] == [0, 2]
    assert records[1]["messages"][-1] == {"role": "assistant", "content": "Two plus one is 3."}
    assert records[1]["edited"] is True
    # the original is kept, and training sees the edit and not the rejected row
    detail = outputs.get_item(ws, "sums.ref", outputs.row_id_for_index(ws, "sums.ref", 2))
    assert detail.original == "The answer is 3."
    responses = [e.response for e in outputs.iter_examples(ws, "sums.ref")]
    assert "Two plus one is 3." in responses and "The answer is 2." not in responses
    assert run_cli("outputs", "edit", "sums.ref", "2", "--revert").returncode == 0
    assert outputs.get_item(ws, "sums.ref", detail.item.row_id).item.response == "The answer is 3."


def test_bad_row_numbers_and_empty_edits_exit_2_with_the_range(tmp_path, run_cli):
    imported_collection(tmp_path)
    bad = run_cli("outputs", "review", "sums.ref", "accept", "9")
    assert bad.returncode == 2 and "no row #9 (its rows are #0 to #3)" in bad.stderr
    empty = run_cli("outputs", "edit", "sums.ref", "0", input="")
    assert empty.returncode == 2 and "standard input, which was empty" in empty.stderr


def test_a_collection_whose_process_died_is_offered_for_resume(tmp_path):
    ws = imported_collection(tmp_path)
    info = outputs.get_collection(ws, "sums.ref")
    cid = outputs.create_collection(
        ws, "sums.t", dataset_id=info.dataset_id, teacher_name="t", params={"max_tokens": 8}
    )
    row_ids = [
        r[0] for r in ws.query("SELECT id FROM dataset_rows WHERE dataset_id=?", (info.dataset_id,))
    ]
    with ws.tx() as con:
        con.executemany(
            "INSERT INTO collection_items(collection_id, row_id, sample, hash, status) VALUES (?,?,0,?,?)",
            [(cid, r, f"h{r}", "done" if i == 0 else "queued") for i, r in enumerate(row_ids)],
        )
        # a process that no longer exists, with a fresh heartbeat
        con.execute(
            "UPDATE collections SET status='running', pid=?, host=?, heartbeat=? WHERE id=?",
            (2**22 + 12345, os.uname().nodename, time.time(), cid),
        )
    assert [c.name for c in interrupted_collections(ws)] == ["sums.t"]
    ws.db.execute("UPDATE collections SET pid=? WHERE id=?", (os.getpid(), cid))
    assert interrupted_collections(ws) == [], "a live collector is not offered for resume"
