"""Export in every format, and import -> export -> import gives the same rows."""

from __future__ import annotations

import json

import pytest

from kdstudio.data import export_dataset, import_dataset, store
from kdstudio.errors import UserError

RECORDS = [
    {
        "id": "r1",
        "messages": [
            {"role": "system", "content": "Réponds en français."},
            {"role": "user", "content": 'Hello, "world"\nsecond line'},
            {"role": "assistant", "content": "Bonjour, le monde 🌍"},
        ],
        "topic": "greeting",
    },
    {
        "id": "r2",
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and, times 3?"},
            {"role": "assistant", "content": "12"},
        ],
    },
    {"id": "r3", "messages": [{"role": "user", "content": "unanswered, with a comma"}]},
    {
        "id": "r4",
        "messages": [
            {"role": "user", "content": "empty answer"},
            {"role": "assistant", "content": "ok"},
        ],
    },
]

EXT = {"parquet": ".parquet", "csv": ".csv", "sharegpt": ".json", "alpaca": ".json", "hf": ""}
LOSSLESS = {"jsonl", "parquet", "csv", "hf"}


@pytest.fixture
def source(ws, tmp_path):
    path = tmp_path / "src.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8"
    )
    import_dataset(ws, path)
    return "src"


def content(ws, name, *, lossless):
    out = []
    for r in store.iter_rows(ws, name):
        row = (r.messages, r.prompt, r.system, r.reference)
        out.append((*row, r.row_key, r.meta) if lossless else row)
    return out


@pytest.mark.parametrize(
    "fmt", ["openai-chat", "sharegpt", "alpaca", "jsonl", "parquet", "csv", "hf"]
)
def test_round_trip_gives_the_same_rows(ws, tmp_path, source, fmt):
    out = tmp_path / f"out{EXT.get(fmt, '.jsonl')}"
    result = export_dataset(ws, source, out, fmt)
    assert result.n_rows == len(RECORDS)
    back = import_dataset(ws, out, name=f"back-{fmt}")
    expected = {"sharegpt": "sharegpt", "alpaca": "alpaca"}.get(fmt, "openai-chat")
    assert back.detected_format == expected
    lossless = fmt in LOSSLESS
    assert content(ws, f"back-{fmt}", lossless=lossless) == content(ws, source, lossless=lossless)


def test_openai_chat_export_is_what_fine_tuning_accepts(ws, tmp_path, source):
    out = tmp_path / "ft.jsonl"
    export_dataset(ws, source, out, "openai-chat")
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert all(set(rec) == {"messages"} for rec in lines)
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": "Bonjour, le monde 🌍"}


def test_sharegpt_and_alpaca_as_json_arrays_or_jsonl_by_suffix(ws, tmp_path, source):
    export_dataset(ws, source, tmp_path / "a.json", "alpaca")
    doc = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert doc[1]["history"] == [["2+2?", "4"]] and doc[1]["output"] == "12"
    assert doc[0]["system"] == "Réponds en français."
    export_dataset(ws, source, tmp_path / "s.jsonl", "sharegpt")
    first = json.loads((tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert [t["from"] for t in first["conversations"]] == ["system", "human", "gpt"]


def test_failed_export_leaves_no_partial_file(ws, tmp_path):
    path = tmp_path / "tool.jsonl"
    recs = [
        {"prompt": "fine"},
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "result"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    import_dataset(ws, path)
    out = tmp_path / "tool-alpaca.json"
    with pytest.raises(UserError, match="row 1 .*Alpaca cannot hold"):
        export_dataset(ws, "tool", out, "alpaca")
    assert not out.exists() and not list(tmp_path.glob(".tool-alpaca*"))


def test_format_from_suffix_and_bad_targets(ws, tmp_path, source):
    assert export_dataset(ws, source, tmp_path / "x.parquet").format == "parquet"
    assert export_dataset(ws, source, tmp_path / "x.csv").format == "csv"
    with pytest.raises(UserError, match="does not exist"):
        export_dataset(ws, source, tmp_path / "nope" / "x.jsonl")
    with pytest.raises(UserError, match="unknown export format"):
        export_dataset(ws, source, tmp_path / "x.txt", "yaml")
