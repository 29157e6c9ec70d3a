"""Importing prompt files: formats, schema detection, mapping, bad input, atomicity."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdstudio.data import DataError, import_dataset, store
from kdstudio.errors import Cancelled, UserError
from kdstudio.events import CancelToken, ListSink, Log, Warning


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rows(ws, name):
    return list(store.iter_rows(ws, name))


CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
    {"messages": [{"role": "user", "content": "no answer yet"}]},
]


def test_openai_chat_keeps_turns_and_takes_the_final_answer_as_reference(ws, tmp_path):
    result = import_dataset(ws, write_jsonl(tmp_path / "chat.jsonl", CHAT))
    assert (result.name, result.n_rows, result.detected_format) == ("chat", 3, "openai-chat")
    assert result.n_references == 2
    first, multi, bare = rows(ws, "chat")
    assert first.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (first.prompt, first.system, first.reference) == ("Hi", "Be brief.", "Hello!")
    assert [m["role"] for m in multi.messages] == ["user", "assistant", "user"]
    assert (multi.prompt, multi.reference) == ("and 3+3?", "6")
    assert (bare.reference, bare.system) == (None, None)
    stored = ws.query_one("SELECT messages FROM dataset_rows WHERE idx=0")[0]
    assert json.loads(stored) == first.messages  # the contract other engineers read


def test_sharegpt_json_array_maps_from_value_roles(ws, tmp_path):
    data = [
        {
            "id": "a1",
            "conversations": [
                {"from": "system", "value": "You are terse."},
                {"from": "human", "value": "Name a colour"},
                {"from": "gpt", "value": "Blue"},
            ],
        }
    ]
    (tmp_path / "sg.json").write_text(json.dumps(data, indent=2))
    result = import_dataset(ws, tmp_path / "sg.json")
    assert (result.file_format, result.detected_format) == ("json", "sharegpt")
    (row,) = rows(ws, "sg")
    assert (row.prompt, row.system, row.reference, row.row_key) == (
        "Name a colour",
        "You are terse.",
        "Blue",
        "a1",
    )


def test_alpaca_object_with_a_list_joins_instruction_and_input(ws, tmp_path):
    doc = {
        "version": 2,
        "data": [
            {"instruction": "Translate", "input": "chat", "output": "cat"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    }
    (tmp_path / "alp.json").write_text(json.dumps(doc))
    result = import_dataset(ws, tmp_path / "alp.json")
    assert result.detected_format == "alpaca"
    a, b = rows(ws, "alp")
    assert (a.prompt, a.reference) == ("Translate\n\nchat", "cat")
    assert (b.prompt, b.reference) == ("Say hi", "hi")


def test_csv_with_quoted_commas_and_newlines_and_odd_columns(ws, tmp_path):
    (tmp_path / "odd.csv").write_bytes(
        b'\xef\xbb\xbfQuestion ,Gold Answer,Topic\n"Hello, world?","line one\nline two",greet\n'
        b'"Say ""hi""",hi,misc\n'
    )
    result = import_dataset(ws, tmp_path / "odd.csv")
    assert result.columns == {"prompt": "Question", "response": "Gold Answer"}
    a, b = rows(ws, "odd")
    assert (a.prompt, a.reference, a.meta) == (
        "Hello, world?",
        "line one\nline two",
        {"Topic": "greet"},
    )
    assert b.prompt == 'Say "hi"'


def test_no_prompt_column_error_lists_the_columns_and_map_fixes_it(ws, tmp_path):
    (tmp_path / "q.csv").write_text("Frage,Antwort\nWie geht's?,Gut\n")
    with pytest.raises(UserError) as err:
        import_dataset(ws, tmp_path / "q.csv")
    assert (
        "'Frage'" in str(err.value)
        and "'Antwort'" in str(err.value)
        and "--map prompt=" in str(err.value)
    )
    result = import_dataset(
        ws, tmp_path / "q.csv", mapping={"prompt": "Frage", "response": "Antwort"}
    )
    (row,) = rows(ws, result.name)
    assert (row.prompt, row.reference) == ("Wie geht's?", "Gut")


def test_map_to_a_missing_column_names_the_existing_ones(ws, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}])
    with pytest.raises(UserError, match=r"no column 'body' \(columns: 'text'\)"):
        import_dataset(ws, path, mapping={"prompt": "body"})
    with pytest.raises(UserError, match="unknown field 'answr'"):
        import_dataset(ws, path, mapping={"answr": "text"})


def test_tsv_and_parquet_tables(ws, tmp_path):
    (tmp_path / "t.tsv").write_text("prompt\tsystem\nhello\tbe kind\n")
    import_dataset(ws, tmp_path / "t.tsv")
    (row,) = rows(ws, "t")
    assert (row.prompt, row.system) == ("hello", "be kind")
    assert row.messages[0] == {"role": "system", "content": "be kind"}

    table = pa.table({"question": ["a?", "b?"], "answer": ["A", None], "n": [1, 2]})
    pq.write_table(table, tmp_path / "pq.parquet")
    result = import_dataset(ws, tmp_path / "pq.parquet")
    assert result.file_format == "parquet" and result.n_references == 1
    a, b = rows(ws, "pq")
    assert (a.prompt, a.reference, a.meta, b.reference) == ("a?", "A", {"n": 1}, None)


def test_format_is_reported_as_a_log_event(ws, tmp_path):
    sink = ListSink()
    import_dataset(ws, write_jsonl(tmp_path / "c.jsonl", CHAT), sink=sink)
    assert any("OpenAI chat" in e.message for e in sink.of(Log))


def test_jsonl_saved_as_json_is_detected_by_content(ws, tmp_path):
    write_jsonl(tmp_path / "lines.json", [{"prompt": "a"}, {"prompt": "b"}])
    assert import_dataset(ws, tmp_path / "lines.json").file_format == "jsonl"


# -- bad input ----------------------------------------------------------------------------------


def bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"prompt": "ok 1"}\n{"prompt": "ok 2"}\n{"prompt": "broken" "x"}\n{"prompt": "ok 4"}\n[1, 2]\n'
    )
    return path


def test_malformed_line_names_file_line_and_excerpt_and_imports_nothing(ws, tmp_path):
    with pytest.raises(DataError) as err:
        import_dataset(ws, bad_file(tmp_path))
    msg = str(err.value)
    assert msg.startswith("bad.jsonl, line 3: not valid JSON")
    assert '{"prompt": "broken" "x"}' in msg and "--skip-bad" in msg
    assert err.value.line == 3
    assert ws.query("SELECT * FROM datasets") == [] and ws.query("SELECT * FROM dataset_rows") == []


def test_skip_bad_imports_the_good_rows_and_lists_every_bad_line(ws, tmp_path):
    sink = ListSink()
    result = import_dataset(ws, bad_file(tmp_path), skip_bad=True, sink=sink)
    assert result.n_rows == 3
    assert [line for line, _ in result.skipped] == [3, 5]
    assert "an array" in result.skipped[1][1]
    assert [r.prompt for r in rows(ws, "bad")] == ["ok 1", "ok 2", "ok 4"]
    assert [r.idx for r in rows(ws, "bad")] == [0, 1, 2]
    assert len(sink.of(Warning)) == 2
    assert store.stats(ws, "bad")["skipped"] == 2


def test_invalid_utf8_names_the_line(ws, tmp_path):
    path = tmp_path / "enc.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"enc.jsonl, line 2: not valid UTF-8"):
        import_dataset(ws, path)
    (tmp_path / "enc.csv").write_bytes(b"prompt\nok\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"enc.csv, line 3: not valid UTF-8"):
        import_dataset(ws, tmp_path / "enc.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n\n", "has no rows"),
        ("prompt\n", "has no rows"),
    ],
)
def test_empty_files_say_so(ws, tmp_path, content, message):
    path = tmp_path / ("e.csv" if content.startswith("prompt") else "e.jsonl")
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        import_dataset(ws, path)


def test_row_over_the_size_limit_is_refused(ws, tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"prompt": "x" * 5000}])
    with pytest.raises(DataError, match=r"line 1: the row is .* over the .* limit"):
        import_dataset(ws, path, max_row_bytes=1000)


def test_unknown_role_and_empty_prompt_are_row_errors(ws, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "wizard", "content": "hi"}]}])
    with pytest.raises(
        DataError, match=r"line 1: turn 1 has unknown role 'wizard' \(known roles: .*user"
    ):
        import_dataset(ws, path)
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "fine"}, {"prompt": "   "}])
    with pytest.raises(DataError, match=r"line 2: the prompt \('prompt'\) is empty"):
        import_dataset(ws, path)


def test_broken_json_array_names_the_line(ws, tmp_path):
    (tmp_path / "arr.json").write_text('[\n {"prompt": "a"},\n {"prompt": "b",}\n]\n')
    with pytest.raises(DataError, match=r"arr.json, line 3: not valid JSON"):
        import_dataset(ws, tmp_path / "arr.json")


def test_csv_row_with_too_many_fields_names_its_line(ws, tmp_path):
    (tmp_path / "f.csv").write_text('prompt,answer\n"multi\nline",x\na,b,c\n')
    with pytest.raises(DataError, match=r"f.csv, line 4: has 3 fields but the header has 2"):
        import_dataset(ws, tmp_path / "f.csv")


def test_duplicates_are_counted_and_dedupe_removes_them(ws, tmp_path):
    recs = [
        {"prompt": "a"},
        {"prompt": "b"},
        {"prompt": "a"},
        {"prompt": "a", "response": "x"},
        {"prompt": "b"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    sink = ListSink()
    result = import_dataset(ws, path, sink=sink)
    assert (result.n_rows, result.duplicates) == (5, 2)
    assert any("--dedupe" in w.message for w in sink.of(Warning))
    result = import_dataset(ws, path, name="d2", dedupe=True)
    assert (result.n_rows, result.removed_duplicates) == (3, 2)
    kept = rows(ws, "d2")
    assert [(r.idx, r.prompt, r.reference) for r in kept] == [
        (0, "a", None),
        (1, "b", None),
        (2, "a", "x"),
    ]
    assert store.get_dataset(ws, "d2").stats["rows"] == 3
    assert store.count(ws, "d2", search="a") == 2  # the removed copy left the search index too


def test_existing_name_is_refused_before_reading(ws, tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a"}])
    import_dataset(ws, path)
    with pytest.raises(UserError, match="already exists"):
        import_dataset(ws, path)
    with pytest.raises(UserError, match="no such file"):
        import_dataset(ws, tmp_path / "missing.jsonl")


def test_cancel_leaves_no_dataset(ws, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": f"p{i}"} for i in range(30_000)])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        import_dataset(ws, path, cancel=token)
    assert ws.query("SELECT count(*) FROM dataset_rows")[0][0] == 0
    assert ws.query("SELECT count(*) FROM datasets")[0][0] == 0


def test_error_late_in_a_big_file_rolls_back_the_rows_already_written(ws, tmp_path):
    path = write_jsonl(tmp_path / "late.jsonl", [{"prompt": f"p{i}"} for i in range(25_000)])
    with path.open("a") as f:
        f.write("{oops\n")
    with pytest.raises(DataError, match="line 25001"):
        import_dataset(ws, path)
    assert ws.query("SELECT count(*) FROM dataset_rows")[0][0] == 0
    assert ws.integrity_check() == "ok"
    assert import_dataset(ws, path, skip_bad=True).n_rows == 25_000


def test_as_collection_stores_the_answers_as_done_items(ws, tmp_path):
    result = import_dataset(ws, write_jsonl(tmp_path / "ans.jsonl", CHAT), as_collection="ans-out")
    assert result.collection_id is not None
    col = ws.query_one("SELECT * FROM collections WHERE id=?", (result.collection_id,))
    assert (col["source"], col["teacher_name"], col["dataset_id"]) == (
        "import",
        None,
        result.dataset_id,
    )
    items = ws.query(
        "SELECT r.idx, i.status, i.sample, s.text FROM collection_items i JOIN dataset_rows r ON r.id=i.row_id"
        " JOIN responses s ON s.hash=i.hash WHERE i.collection_id=? ORDER BY r.idx",
        (result.collection_id,),
    )
    assert [tuple(i) for i in items] == [(0, "done", 0, "Hello!"), (1, "done", 0, "6")]
    from kdstudio.collect.store import content_hash

    h = ws.query_one(
        "SELECT hash FROM collection_items WHERE row_id=(SELECT id FROM dataset_rows WHERE idx=0)"
    )[0]
    assert h == content_hash(["import", "ans", 0, 0])


def test_as_collection_without_answers_is_refused_and_imports_nothing(ws, tmp_path):
    path = write_jsonl(tmp_path / "noans.jsonl", [{"prompt": "a"}])
    with pytest.raises(UserError, match="nothing to store"):
        import_dataset(ws, path, as_collection="c1")
    assert ws.query("SELECT count(*) FROM datasets")[0][0] == 0


def test_json_array_is_streamed_across_chunk_boundaries(ws, tmp_path, monkeypatch):
    from kdstudio.data.readers import JsonReader

    monkeypatch.setattr(JsonReader, "CHUNK", 7)  # every item, and one é, straddles a chunk edge
    items = [{"prompt": f"café {i}", "response": "ünïcödé " * (i % 4)} for i in range(50)]
    (tmp_path / "arr.json").write_text(
        json.dumps(items, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    result = import_dataset(ws, tmp_path / "arr.json")
    assert result.n_rows == 50
    assert [r.prompt for r in rows(ws, "arr")] == [f"café {i}" for i in range(50)]
    lines = (json.dumps(items[:3], indent=1) + "\n").count("\n")
    broken = json.dumps(items[:3], indent=1)[:-2] + ",\n {oops}\n]"
    (tmp_path / "bad.json").write_text(broken)
    with pytest.raises(DataError, match=f"bad.json, line {lines}: not valid JSON"):
        import_dataset(ws, tmp_path / "bad.json")


def test_cancel_midway_rolls_back_rows_the_writer_already_inserted(ws, tmp_path, monkeypatch):
    from kdstudio.data import importer

    monkeypatch.setattr(importer, "BATCH", 100)

    class CancelOnThirdCheck(CancelToken):
        checks = 0

        def raise_if_cancelled(self):
            self.checks += 1
            if self.checks == 3:
                self.cancel("stop")
            super().raise_if_cancelled()

    path = write_jsonl(tmp_path / "mid.jsonl", [{"prompt": f"p{i}"} for i in range(1000)])
    token = CancelOnThirdCheck()
    with pytest.raises(Cancelled):
        import_dataset(ws, path, cancel=token)
    assert token.checks == 3
    assert ws.query("SELECT count(*) FROM dataset_rows")[0][0] == 0
    assert import_dataset(ws, path).n_rows == 1000  # the write lock was released


def test_datasets_and_teachers_are_listed_in_the_order_people_number_them(ws, tmp_path):
    from kdstudio.config import TeacherConfig

    for name in ("d10", "d2", "D1"):
        src = tmp_path / f"{name}.jsonl"
        src.write_text(json.dumps({"prompt": "hi"}) + "\n")
        import_dataset(ws, src, name=name)
        ws.add_teacher(TeacherConfig(name=f"t{name[1:]}", base_url="http://x/v1", model="m"))
    assert store.dataset_names(ws) == ["D1", "d2", "d10"]
    assert [d.name for d in store.list_datasets(ws)] == ["D1", "d2", "d10"]
    assert ws.teacher_names() == ["t1", "t2", "t10"]
    assert [t.name for t in ws.list_teachers()] == ["t1", "t2", "t10"]
