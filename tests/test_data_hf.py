"""Hugging Face datasets: a folder written by `save_to_disk` (a Dataset, or a DatasetDict and
a split) imports like any file (detection, --map, row-exact errors, complete or absent); a
Hub id streams through `datasets` when online and says so clearly when offline; and
`data export --format hf` writes a folder `datasets.load_from_disk` reads."""

from __future__ import annotations

import json

import pytest

from kdstudio.data import export_dataset, import_dataset, list_datasets, store
from kdstudio.data.readers import DataError
from kdstudio.errors import UserError

CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": str(2 * i)},
        ],
        "topic": "sums",
    }
    for i in range(40)
]


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict (train: 40 chats in 3 shards, test: 5) and a plain Dataset table."""
    import datasets

    train = datasets.Dataset.from_list(CHATS)
    dd = datasets.DatasetDict({"train": train, "test": train.select(range(5))})
    dd.save_to_disk(str(tmp_path / "chats"), num_shards={"train": 3, "test": 1})
    table = datasets.Dataset.from_dict(
        {"Question": [f"Capital of country {i}?" for i in range(6)], "Gold": list("abcdef")}
    )
    table.save_to_disk(str(tmp_path / "quiz"))
    return tmp_path


def rows_of(ws, name):
    return [(r.system, r.prompt, r.reference) for r in store.iter_rows(ws, name)]


def test_a_split_of_a_saved_dataset_dict_imports_in_order_with_its_answers(ws, saved):
    result = import_dataset(ws, saved / "chats", split="train")
    assert result.name == "chats-train" and result.n_rows == 40
    assert result.detected_format == "openai-chat" and result.file_format == "hf"
    assert rows_of(ws, "chats-train") == [
        ("Be brief.", f"What is {i} + {i}?", str(2 * i)) for i in range(40)
    ]
    assert store.get_row(ws, "chats-train", 7).meta == {"topic": "sums"}
    info = store.get_dataset(ws, "chats-train")
    assert info.source == f"{(saved / 'chats').resolve()} (split train)"
    assert "Hugging Face dataset" in result.describe()


def test_a_dataset_dict_needs_a_split_that_exists(ws, saved):
    with pytest.raises(UserError, match="holds the splits train, test: choose one with --split"):
        import_dataset(ws, saved / "chats")
    with pytest.raises(UserError, match="has no split 'validation' .*train, test"):
        import_dataset(ws, saved / "chats", split="validation")
    with pytest.raises(UserError, match="leave out --split"):
        import_dataset(ws, saved / "quiz", split="train")
    assert list_datasets(ws) == []


def test_map_names_the_columns_of_a_saved_table(ws, saved):
    result = import_dataset(ws, saved / "quiz", mapping={"response": "Gold"})
    assert result.detected_format == "table"
    assert result.columns == {"prompt": "Question", "response": "Gold"}
    assert rows_of(ws, "quiz")[2] == (None, "Capital of country 2?", "c")


def test_a_bad_row_is_named_by_its_row_and_nothing_is_imported(ws, tmp_path):
    import datasets

    bad = [dict(c) for c in CHATS[:6]]
    bad[3] = {"messages": [{"role": "robot", "content": "beep"}], "topic": "odd"}
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DataError, match=r"^odd, row 4: .*robot") as info:
        import_dataset(ws, tmp_path / "odd")
    assert "--skip-bad" in str(info.value)
    assert list_datasets(ws) == []  # complete or absent
    result = import_dataset(ws, tmp_path / "odd", skip_bad=True)
    assert result.n_rows == 5 and [line for line, _ in result.skipped] == [4]


def test_a_folder_that_is_not_a_saved_dataset_is_refused_clearly(ws, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="is a folder; give a JSONL.*save_to_disk"):
        import_dataset(ws, tmp_path / "plain")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    with pytest.raises(UserError, match="--split applies to a Hugging Face dataset"):
        import_dataset(ws, tmp_path / "p.jsonl", split="train")


def test_a_hub_id_offline_says_how_to_bring_the_data(ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"offline \(HF_HUB_OFFLINE=1\).*save_to_disk\(DIR\)"):
        import_dataset(ws, "hf://datasets/tatsu-lab/alpaca", split="train")
    with pytest.raises(UserError, match="not a Hub dataset id"):
        import_dataset(ws, "hf://datasets/alpaca")
    assert list_datasets(ws) == []


def test_a_hub_id_streams_through_datasets_with_split_and_revision(ws, monkeypatch):
    """The Hub itself is out of reach in tests: `load_dataset` hands back a local stream,
    and the test checks what kdstudio asked it for and what it stored."""
    import datasets

    asked = {}

    def load_dataset(repo, **kw):
        asked.update(kw, repo=repo)
        rows = [{"instruction": f"Say {w}", "input": "", "output": w} for w in ("hi", "yo")]
        return datasets.Dataset.from_list(rows).to_iterable_dataset()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    result = import_dataset(ws, "hf://datasets/tatsu-lab/alpaca", split="train", revision="v1.0")
    assert asked == {"repo": "tatsu-lab/alpaca", "split": "train", "revision": "v1.0",
                     "streaming": True}  # fmt: skip
    assert result.name == "alpaca-train" and result.detected_format == "alpaca"
    assert rows_of(ws, "alpaca-train") == [(None, "Say hi", "hi"), (None, "Say yo", "yo")]
    source = store.get_dataset(ws, "alpaca-train").source
    assert source == "hf://datasets/tatsu-lab/alpaca@v1.0 (split train)"


def test_export_hf_is_read_by_load_from_disk_and_imports_back_the_same(ws, saved, tmp_path):
    import datasets

    import_dataset(ws, saved / "chats", split="train")
    out = tmp_path / "exported"
    result = export_dataset(ws, "chats-train", out, "hf")
    assert result.n_rows == 40 and result.format == "hf"
    loaded = datasets.load_from_disk(str(out))
    assert loaded.num_rows == 40
    assert loaded[5]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 5 + 5?"},
    ]
    assert loaded[5]["reference"] == "10" and json.loads(loaded[5]["meta"]) == {"topic": "sums"}
    import_dataset(ws, out, name="again")
    assert rows_of(ws, "again") == rows_of(ws, "chats-train")
    with pytest.raises(UserError, match="already exists"):
        export_dataset(ws, "chats-train", out, "hf")
    assert not list(tmp_path.glob(".exported*"))


def test_the_cli_imports_a_saved_folder_and_exports_one(saved, run_cli, tmp_path):
    proc = run_cli("data", "import", str(saved / "chats"), "--split", "test", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["name"] == "chats-test" and doc["n_rows"] == 5 and doc["file_format"] == "hf"
    proc = run_cli("data", "import", str(saved / "chats"))
    assert proc.returncode == 2 and "choose one with --split" in proc.stderr
    proc = run_cli("data", "export", "chats-test", "--out", str(tmp_path / "hf"), "--format", "hf")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hf" / "state.json").is_file()
