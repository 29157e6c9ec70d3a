"""Reading, reviewing and listing collected outputs (no network)."""

from __future__ import annotations

import pytest
from collect_support import make_prompts

from kdstudio.collect import store as outputs
from kdstudio.errors import NotFound, UserError
from kdstudio.logprobs import from_openai


def _imported(ws, n=6):
    did = make_prompts(ws, "qa", n, system="be brief")
    outputs.create_collection(
        ws, "qa.import", dataset_id=did, teacher_name=None, params={}, source="import"
    )
    rows = ws.query("SELECT id, idx FROM dataset_rows WHERE dataset_id=? ORDER BY idx", (did,))
    with ws.tx():
        for r in rows:
            lp = None
            if r["idx"] % 2 == 0:
                lp = from_openai(
                    [{"token": "x", "logprob": -0.1 * (r["idx"] + 1), "top_logprobs": []}]
                )
            text = f"answer {r['idx']} " + ("long " * r["idx"])
            outputs.add_imported_response(
                ws,
                "qa.import",
                dataset_name="qa",
                row_id=r["id"],
                idx=r["idx"],
                text=text,
                logprobs=lp,
            )
    return [r["id"] for r in rows]


def test_iter_examples_skips_rejected_uses_edits_and_keeps_the_original(ws):
    ids = _imported(ws)
    outputs.set_review(ws, "qa.import", ids[1], 0, "rejected")
    outputs.set_review(ws, "qa.import", ids[2], 0, "accepted", edited_text="a better answer")
    examples = list(outputs.iter_examples(ws, "qa.import"))
    assert [e.row_id for e in examples] == [i for i in ids if i != ids[1]]
    edited = next(e for e in examples if e.row_id == ids[2])
    assert (
        edited.response == "a better answer" and edited.logprobs is None
    )  # logprobs were of the original
    assert edited.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "prompt 2"},
    ]
    assert outputs.get_item(ws, "qa.import", ids[2]).original.startswith("answer 2")
    assert len(list(outputs.iter_examples(ws, "qa.import", include_rejected=True))) == len(ids)
    first = examples[0]
    assert first.logprobs is not None and first.logprobs.tokens == [b"x"]


def test_iter_examples_pages_through_large_collections(ws, monkeypatch):
    monkeypatch.setattr(outputs, "PAGE", 2)
    ids = _imported(ws, n=7)
    assert [e.row_id for e in outputs.iter_examples(ws, "qa.import")] == ids


def test_importing_the_same_answers_twice_is_idempotent(ws):
    _imported(ws)
    before = ws.query_one("SELECT COUNT(*) FROM responses")[0]
    row = ws.query_one("SELECT id FROM dataset_rows WHERE idx=0")
    outputs.add_imported_response(
        ws, "qa.import", dataset_name="qa", row_id=row[0], idx=0, text="answer 0 "
    )
    assert ws.query_one("SELECT COUNT(*) FROM responses")[0] == before


def test_listing_filters_search_and_pages(ws):
    ids = _imported(ws)
    outputs.set_review(ws, "qa.import", ids[3], 0, "rejected")
    F = outputs.ItemFilter
    assert outputs.count_items(ws, "qa.import") == 6
    assert outputs.count_items(ws, "qa.import", F(search="long")) == 5  # FTS over answers
    assert outputs.count_items(ws, "qa.import", F(search="prompt 4")) == 1  # and prompts
    assert (
        outputs.count_items(ws, "qa.import", F(search='"unbalanced')) == 0
    )  # no FTS syntax errors
    assert outputs.count_items(ws, "qa.import", F(review="rejected")) == 1
    assert outputs.count_items(ws, "qa.import", F(has_logprobs=True)) == 3
    assert outputs.count_items(ws, "qa.import", F(has_logprobs=False)) == 3
    assert outputs.count_items(ws, "qa.import", F(min_chars=20)) == 3
    # confidence = exp(mean logprob): rows 0, 2, 4 have exp(-0.1), exp(-0.3), exp(-0.5)
    assert outputs.count_items(ws, "qa.import", F(min_confidence=0.7)) == 2
    page = outputs.list_items(ws, "qa.import", F(order="idx"), offset=2, limit=2)
    assert [i.idx for i in page] == [2, 3]
    by_conf = outputs.list_items(ws, "qa.import", F(order="confidence", has_logprobs=True))
    assert [i.idx for i in by_conf] == [4, 2, 0]


def test_status_counts_cover_every_state(ws):
    _imported(ws)
    counts = outputs.collection_status_counts(ws, "qa.import")
    assert counts == {
        "queued": 0,
        "in_flight": 0,
        "retrying": 0,
        "done": 6,
        "failed": 0,
        "total": 6,
    }


def test_create_collection_resumes_same_settings_and_refuses_different_ones(ws):
    did = make_prompts(ws, "p", 2)
    first = outputs.create_collection(
        ws, "c1", dataset_id=did, teacher_name=None, params={"max_tokens": 5}
    )
    again = outputs.create_collection(
        ws, "c1", dataset_id=did, teacher_name=None, params={"max_tokens": 5}
    )
    assert first == again
    with pytest.raises(UserError, match="max_tokens: 5 -> 6"):
        outputs.create_collection(
            ws, "c1", dataset_id=did, teacher_name=None, params={"max_tokens": 6}
        )


def test_bad_review_and_unknown_collection_are_clear_errors(ws):
    ids = _imported(ws)
    with pytest.raises(UserError, match="review must be one of"):
        outputs.set_review(ws, "qa.import", ids[0], 0, "maybe")
    with pytest.raises(NotFound, match="qa.import"):
        outputs.iter_examples(ws, "nope").__next__()


def test_bulk_import_matches_one_by_one_and_is_idempotent(ws):
    did = make_prompts(ws, "bulk", 5)
    outputs.create_collection(
        ws, "bulk.import", dataset_id=did, teacher_name=None, params={}, source="import"
    )
    rows = [
        (r["id"], r["idx"], f"answer {r['idx']}")
        for r in ws.query("SELECT id, idx FROM dataset_rows")
    ]
    assert (
        outputs.add_imported_responses(ws, "bulk.import", dataset_name="bulk", rows=rows, page=2)
        == 5
    )
    outputs.add_imported_responses(ws, "bulk.import", dataset_name="bulk", rows=rows)
    assert ws.query_one("SELECT COUNT(*) FROM responses")[0] == 5
    assert [e.response for e in outputs.iter_examples(ws, "bulk.import")] == [
        f"answer {i}" for i in range(5)
    ]
    assert outputs.count_items(ws, "bulk.import", outputs.ItemFilter(search="answer")) == 5


def test_a_local_teachers_changed_files_or_folder_are_a_teacher_difference(ws):
    """A local teacher's endpoint is its folder and a fingerprint of its files."""
    from kdstudio.collect.store import settings_difference

    ws.db.execute("INSERT INTO datasets(id, name, created_at) VALUES (7, 'd', 0)")
    outputs.create_collection(
        ws, "c", dataset_id=7, teacher_name="big", params={}, teacher_model="m",
        teacher_endpoint="local:/models/big:aaaa",
    )  # fmt: skip
    row = ws.query_one("SELECT * FROM collections WHERE name='c'")
    same = settings_difference(row, 7, "big", {}, "m", "local:/models/big:aaaa")
    files = settings_difference(row, 7, "big", {}, "m", "local:/models/big:bbbb")
    folder = settings_difference(row, 7, "big", {}, "m", "local:/models/other:aaaa")
    assert same is None
    assert files.teacher and "the files of its model folder /models/big changed" in files
    assert folder.teacher and "endpoint: '/models/big' -> '/models/other'" in folder
    with pytest.raises(UserError, match="was collected from another model"):
        outputs.create_collection(
            ws, "c", dataset_id=7, teacher_name="big", params={}, teacher_model="m",
            teacher_endpoint="local:/models/big:bbbb",
        )  # fmt: skip
