"""Lazy row access (page, count, search), stats, versions (derive) and removal."""

from __future__ import annotations

import json

import pytest

from kdstudio.data import import_dataset, store
from kdstudio.errors import NotFound, UserError


@pytest.fixture
def numbers(ws, tmp_path):
    """A 3,000-row dataset: prompt 'question N about {cats|dogs|birds}', every 2nd answered."""
    topics = ["cats", "dogs", "birds"]
    path = tmp_path / "numbers.jsonl"
    with path.open("w") as f:
        for i in range(3000):
            rec = {"prompt": f"question {i} about {topics[i % 3]}", "id": f"q{i}"}
            if i % 2 == 0:
                rec["response"] = f"answer {i}"
            f.write(json.dumps(rec) + "\n")
    import_dataset(ws, path)
    return "numbers"


def test_page_reads_by_idx_at_any_offset(ws, numbers):
    first = store.page(ws, numbers, 0, 10)
    assert [r.idx for r in first] == list(range(10))
    deep = store.page(ws, numbers, 2995, 10)
    assert [r.prompt for r in deep] == [
        f"question {i} about {['cats', 'dogs', 'birds'][i % 3]}" for i in range(2995, 3000)
    ]
    assert store.page(ws, numbers, 5000, 10) == []
    assert store.count(ws, numbers) == 3000


def test_search_matches_prompt_and_reference_and_pages_in_file_order(ws, numbers):
    assert store.count(ws, numbers, search="dogs") == 1000
    hits = store.page(ws, numbers, 0, 5, search="dogs")
    assert [r.idx for r in hits] == [1, 4, 7, 10, 13]
    assert [r.idx for r in store.page(ws, numbers, 5, 3, search="dogs")] == [16, 19, 22]
    assert [r.idx for r in store.search(ws, numbers, "answer 42")] == [42]  # found in the reference
    assert store.count(ws, numbers, search="DOGS question") == 1000  # case-blind, all words
    assert store.count(ws, numbers, search='"; DROP') == 0  # typed punctuation is not FTS syntax
    assert store.count(ws, numbers, search="***") == 0


def test_search_stays_inside_its_dataset(ws, numbers, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "dogs elsewhere"}) + "\n")
    import_dataset(ws, other)
    assert store.count(ws, numbers, search="elsewhere") == 0
    assert [r.prompt for r in store.page(ws, "other", 0, 10, search="dogs")] == ["dogs elsewhere"]


def test_stats_describe_rows_roles_lengths(ws, numbers):
    s = store.stats(ws, numbers)
    assert s["rows"] == 3000 and s["with_reference"] == 1500 and s["with_system"] == 0
    assert s["roles"]["user"] == 3000 and s["roles"]["assistant (reference)"] == 1500
    assert s["chars"]["min"] <= s["chars"]["p50"] <= s["chars"]["p90"] <= s["chars"]["max"]
    assert sum(k for _, _, k in s["length_histogram"]) == 3000
    assert s["approx_tokens"] == round(s["chars"]["total"] / 4)


@pytest.mark.parametrize("dedupe", [False, True])  # stats from the import, or a rescan
def test_length_quantiles_are_exact_not_bucket_bounds(ws, tmp_path, dedupe):
    import numpy as np

    # 150-190 characters share a histogram bucket (160-191): its upper bound is no quantile.
    lengths = [150 + (i * 37) % 41 for i in range(400)] + [12, 3000]
    lines = [
        json.dumps({"prompt": f"{i:04d}" + "x" * (n - 4)}) + "\n" for i, n in enumerate(lengths)
    ]
    if dedupe:  # a repeated row, dropped: the stats are then counted again from the rows
        lines.append(lines[0])
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(lines))
    import_dataset(ws, path, name="lengths", dedupe=dedupe)
    chars = store.stats(ws, "lengths")["chars"]
    for q in (50, 90, 99):
        assert chars[f"p{q}"] == int(np.percentile(lengths, q, method="inverted_cdf"))
    assert (chars["min"], chars["max"], chars["exact"]) == (12, 3000, True)
    assert chars["p50"] != chars["p90"] != chars["p99"]
    hist = store.stats(ws, "lengths")["length_histogram"]
    assert sum(k for _, _, k in hist) == len(lengths)


def test_quantile_of_counted_values():
    assert store.quantile([], 0.5) == 0
    assert store.quantile([(5, 1)], 0.99) == 5
    counts = [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert [store.quantile(counts, q) for q in (0.25, 0.5, 0.51, 1.0)] == [1, 2, 3, 4]


def test_length_buckets_cover_every_length_once():
    seen = {}
    for n in range(0, 5000):
        k = store.length_bucket(n)
        lo, hi = store.bucket_bounds(k)
        assert lo <= n <= hi
        seen.setdefault(k, n)
    assert len(seen) < 60


def test_derive_makes_a_linked_version_and_leaves_the_parent_alone(ws, numbers):
    info = store.derive(ws, numbers, "cats-only", search="cats", note="just cats")
    assert (info.parent, info.n_rows, info.note) == (numbers, 1000, "just cats")
    rows = store.page(ws, "cats-only", 0, 3)
    assert [(r.idx, r.row_key) for r in rows] == [(0, "q0"), (1, "q3"), (2, "q6")]
    assert store.count(ws, "cats-only", search="cats") == 1000
    assert store.count(ws, numbers) == 3000

    picked = store.derive(ws, numbers, "picked", keep=[5, 1, 2999], drop=[1])
    assert [r.row_key for r in store.iter_rows(ws, picked)] == ["q5", "q2999"]

    edited = store.derive(
        ws,
        numbers,
        "edited",
        predicate=lambda r: r.reference is not None and r.idx < 6,
        edits={2: {"prompt": "new prompt", "system": "be nice", "reference": None}},
    )
    a, b, c = store.iter_rows(ws, edited)
    assert (a.idx, a.row_key) == (0, "q0")
    assert (b.prompt, b.system, b.reference) == ("new prompt", "be nice", None)
    assert b.messages == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "new prompt"},
    ]
    assert store.get_row(ws, numbers, 2).prompt == "question 2 about birds"  # parent unchanged
    assert edited.stats["with_system"] == 1


def test_derive_refuses_an_existing_name_and_unknown_edits(ws, numbers):
    with pytest.raises(UserError, match="already exists"):
        store.derive(ws, numbers, numbers)
    with pytest.raises(UserError, match="cannot edit"):
        store.derive(ws, numbers, "x", edits={0: {"colour": "red"}})
    with pytest.raises(UserError, match="no row of 'numbers' is left"):
        store.derive(ws, numbers, "x", search="zebras")
    assert "x" not in store.dataset_names(ws)


def test_unknown_dataset_lists_the_known_ones(ws, numbers):
    with pytest.raises(NotFound, match=r"no dataset named 'nope' \(known: numbers\)"):
        store.page(ws, "nope", 0, 10)


def test_delete_removes_rows_and_search_entries_but_not_while_used(ws, numbers):
    store.derive(ws, numbers, "child", keep=[0, 1])
    with pytest.raises(UserError, match="derived versions 'child'"):
        store.delete_dataset(ws, numbers)
    store.delete_dataset(ws, "child")
    store.delete_dataset(ws, numbers)
    assert ws.query("SELECT count(*) FROM dataset_rows")[0][0] == 0
    ws.db.execute("INSERT INTO dataset_fts(dataset_fts) VALUES ('integrity-check')")
    assert ws.query("SELECT count(*) FROM dataset_fts WHERE dataset_fts MATCH 'dogs'")[0][0] == 0


def test_dataset_used_by_a_collection_cannot_be_removed(ws, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    import_dataset(ws, path, as_collection="qa-answers")
    with pytest.raises(UserError, match="used by collection"):
        store.delete_dataset(ws, "qa")


def test_search_with_odd_input_never_raises(ws, tmp_path):
    path = tmp_path / "odd.jsonl"
    texts = [
        "foo_bar baz",
        "don't stop",
        "café au lait",
        "日本語 テキスト",
        "C++ templates",
        "e\u0301te",
    ]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
    import_dataset(ws, path)
    assert store.count(ws, "odd", search="foo_bar") == 1
    assert store.count(ws, "odd", search="don't") == 1
    assert store.count(ws, "odd", search="CAFE") == 1  # diacritics folded
    assert store.count(ws, "odd", search="日本語") == 1
    assert store.count(ws, "odd", search="templ*") == 1
    for text in ['"', "AND", "OR NOT", "(", "*", "NEAR(a b)", "a:b", "^x", "e\u0301te", "-x"]:
        store.count(ws, "odd", search=text)
        store.page(ws, "odd", 0, 10, search=text)


def test_search_index_built_in_several_pieces_covers_every_row(ws, tmp_path, monkeypatch):
    from kdstudio.data import importer

    monkeypatch.setattr(importer, "BATCH", 70)
    monkeypatch.setattr(importer, "FTS_EVERY", 250)
    path = tmp_path / "pieces.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"row {i} {'odd' if i % 2 else 'even'}"}) + "\n"
            for i in range(1000)
        )
    )
    import_dataset(ws, path)
    assert store.count(ws, "pieces", search="odd") == 500
    assert [r.idx for r in store.page(ws, "pieces", 0, 3, search="999")] == [999]
    ws.db.execute("INSERT INTO dataset_fts(dataset_fts, rank) VALUES ('integrity-check', 1)")
