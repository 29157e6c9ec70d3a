"""`kdstudio data ...` as a person runs it: exit codes, messages, JSON output."""

from __future__ import annotations

import json


def test_import_show_export_through_the_cli(run_cli, tmp_path):
    src = tmp_path / "quiz.csv"
    src.write_text(
        'Question,Expected Answer,level\n"Hello, world?","fine,\nthanks",easy\nWhy?,Because,hard\n'
    )
    done = run_cli("data", "import", str(src))
    assert done.returncode == 0, done.stderr
    assert "CSV, a table with a prompt column" in done.stderr
    assert "prompt='Question', response='Expected Answer'" in done.stderr
    assert "imported 2 rows into dataset 'quiz'" in done.stderr

    shown = run_cli("data", "show", "quiz", "--json")
    doc = json.loads(shown.stdout)
    assert doc["dataset"]["n_rows"] == 2
    assert doc["rows"][0]["reference"] == "fine,\nthanks" and doc["rows"][0]["meta"] == {
        "level": "easy"
    }

    text = run_cli("data", "show", "quiz", "--search", "because").stdout
    assert "1 row matches 'because'" in text
    assert "reference: Because" in text

    listed = json.loads(run_cli("data", "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["quiz"]

    out = tmp_path / "quiz.parquet"
    assert run_cli("data", "export", "quiz", "--out", str(out)).returncode == 0
    again = run_cli("data", "import", str(out), "--name", "quiz2", "--json")
    assert json.loads(again.stdout)["n_rows"] == 2


def test_malformed_file_exits_2_with_file_line_and_excerpt(run_cli, tmp_path):
    src = tmp_path / "broken.jsonl"
    src.write_text('{"prompt": "good"}\n{"prompt": "missing quote}\n')
    done = run_cli("data", "import", str(src))
    assert done.returncode == 2
    assert "broken.jsonl, line 2: not valid JSON: a string is not closed" in done.stderr
    assert '{"prompt": "missing quote}' in done.stderr
    assert done.stdout == ""
    assert "no datasets yet" in run_cli("data", "list").stdout

    skipped = run_cli("data", "import", str(src), "--skip-bad")
    assert skipped.returncode == 0
    assert "skipped 1 bad line: line 2" in skipped.stdout


def test_missing_prompt_column_and_bad_map_exit_2(run_cli, tmp_path):
    src = tmp_path / "de.csv"
    src.write_text("Frage;Antwort\nWie geht's?;Gut\n")
    done = run_cli("data", "import", str(src))
    assert done.returncode == 2
    assert "de.csv: no prompt column found (columns: 'Frage', 'Antwort')" in done.stderr
    done = run_cli("data", "import", str(src), "--map", "prompt=Frage", "--map", "response=Antwort")
    assert done.returncode == 0, done.stderr
    assert run_cli("data", "show", "missing").returncode == 2


def test_derive_a_subset_through_the_cli(run_cli, tmp_path):
    src = tmp_path / "q.jsonl"
    src.write_text(
        "".join(
            json.dumps({"prompt": f"{'cats' if i % 2 else 'dogs'} question {i}"}) + "\n"
            for i in range(10)
        )
    )
    assert run_cli("data", "import", str(src)).returncode == 0
    done = run_cli("data", "derive", "q", "cats", "--search", "cats", "--drop-rows", "1,7-9")
    assert done.returncode == 0, done.stderr
    assert "dataset 'cats': 2 rows derived from 'q'" in done.stdout
    doc = json.loads(run_cli("data", "show", "cats", "--json").stdout)
    assert [r["prompt"] for r in doc["rows"]] == ["cats question 3", "cats question 5"]
    assert doc["dataset"]["parent"] == "q"
    picked = json.loads(run_cli("data", "derive", "q", "head", "--rows", "0-2", "--json").stdout)
    assert picked["n_rows"] == 3 and picked["parent"] == "q"

    bad = run_cli("data", "derive", "q", "x", "--rows", "3-a")
    assert bad.returncode == 2
    assert "--rows: '3-a' is not a row number or a range like 10-20" in bad.stderr
    again = run_cli("data", "derive", "q", "cats")
    assert again.returncode == 2 and "cats" in again.stderr
    names = {d["name"] for d in json.loads(run_cli("data", "list", "--json").stdout)}
    assert names == {"q", "cats", "head"}  # nothing half-made by the refused ones
