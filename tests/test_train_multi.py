"""Training on several collections (several teachers, several prompt sets): the config, the
split by prompt content, the sampling mix, a minimum curation score, and what a run reports."""

from __future__ import annotations

import json
import math

import pytest
from support.train_data import add_answers, make_collection, memorisable_pairs
from train_support import make_config, single_thread, student, train

from kdstudio.collect import decisions
from kdstudio.errors import ConfigError
from kdstudio.workspace import Workspace


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    return student(tmp_path_factory.mktemp("multi"))


@pytest.fixture(scope="module")
def tok(student_path):
    from kdstudio.distill.batches import load_student_tokenizer

    return load_student_tokenizer(str(student_path))[0]


def two_teachers(path, *, shift: int = 0) -> Workspace:
    """Dataset `tiny` answered by two teachers (`tiny`: two samples each, `tiny.b`), and a
    second dataset `copy` holding the same prompts under other row ids. `shift` imports an
    unrelated dataset first, so every row id differs from another workspace's."""
    ws = Workspace.open(path)
    if shift:
        make_collection(ws, "other", memorisable_pairs(shift, seed=5))
    pairs = memorisable_pairs(24)
    make_collection(ws, "tiny", pairs, samples=2)
    add_answers(ws, "tiny.b", "tiny", [r.upper() for _, r in pairs])
    make_collection(ws, "copy", pairs)
    return ws


def test_one_collection_or_several_with_one_weight_each():
    from kdstudio.distill.config import DataConfig

    assert DataConfig(collection="a").names() == ["a"]
    assert DataConfig(collections=["a", "b"], weights=[1, 3]).weights == [1.0, 3.0]
    assert DataConfig(collections=["a", "b"]).label() == "collections 'a', 'b'"
    cases = [
        ({}, "data.collection must be set"),
        ({"collection": "a", "collections": ["b"]}, "not both"),
        ({"collections": ["a", "b"], "weights": [1]}, "has 1 weight for 2 collections"),
        ({"collections": ["a", "b"], "weights": [1, 0]}, "positive numbers"),
        ({"collections": ["a", "a"]}, "names 'a' twice"),
        ({"collection": "a", "split": "hash"}, "data.split must be one of prompt, row"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            DataConfig(**values)


def _sides(data) -> dict[str, set[str]]:
    from kdstudio.distill.batches import prompt_key

    sides: dict[str, set[str]] = {}
    for side, examples in (("train", data.train), ("eval", data.eval)):
        for e in examples:
            sides.setdefault(prompt_key(e.example.messages), set()).add(side)
    return sides


def test_every_answer_to_a_prompt_lands_on_one_side_in_any_workspace(tmp_path, tok, student_path):
    from kdstudio.distill.plan import load_dataset

    config = make_config(
        student_path, data={"collection": None, "collections": ["tiny", "tiny.b", "copy"]}
    )
    ws = two_teachers(tmp_path / "a")
    data = load_dataset(config, ws, tok)
    sides = _sides(data)
    prompts = {p for p, _ in memorisable_pairs(24)}  # 18: some rows repeat a prompt
    assert len(sides) == len(prompts) and all(len(s) == 1 for s in sides.values())
    held = {k for k, s in sides.items() if s == {"eval"}}
    assert len(held) == math.ceil(0.2 * len(prompts))
    per = data.per_collection
    assert [per[c]["train"] + per[c]["eval"] for c in ("tiny", "tiny.b", "copy")] == [48, 24, 24]
    assert per["tiny"]["eval"] == 2 * per["tiny.b"]["eval"] == 2 * per["copy"]["eval"] > 0
    # the held-out rows of both datasets are recorded (evaluation picks its prompts by row)
    assert len(data.eval_rows) == 2 * per["copy"]["eval"]

    other = two_teachers(tmp_path / "b", shift=7)  # the same files, other row ids
    other_data = load_dataset(config, other, tok)
    assert {k for k, s in _sides(other_data).items() if s == {"eval"}} == held
    assert sorted(r - 7 for r in other_data.eval_rows) == data.eval_rows


def test_a_run_made_before_the_prompt_split_resumes_on_its_row_split(tmp_path, student_path):
    from kdstudio.distill import runs
    from kdstudio.distill.batches import split_rows
    from kdstudio.distill.trainer import Trainer, run_training

    ws = two_teachers(tmp_path / "ws")
    config = make_config(student_path, optim={"max_steps": 2}, run={"name": "old"})
    assert config.data.split == "prompt"
    run = runs.create_run(ws, config.resolved())
    # as kdstudio 0.1 stored it: no data.split in the config
    stored = json.loads(ws.query_one("SELECT config FROM runs WHERE id=?", (run.id,))[0])
    del stored["data"]["split"]
    ws.db.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(stored), run.id))
    assert runs.get_run(ws, "old").train_config().data.split == "row"

    result = run_training(Trainer.for_resume(ws, "old"))
    assert result.status == "finished"
    rows = [r[0] for r in ws.query("SELECT id FROM dataset_rows ORDER BY id")][:24]
    assert runs.get_run(ws, "old").eval_rows == sorted(split_rows(rows, 0.2)[1])


def test_weights_mix_each_epoch_in_proportion_and_replay_exactly():
    from kdstudio.distill.batches import DataStream

    groups = [0] * 30 + [1] * 10
    stream = DataStream([5] * 40, 4, seed=3, groups=groups, weights=[1.0, 3.0])
    epoch = [i for _ in range(stream.batches_per_epoch) for row in stream.next() for i in row]
    drawn = [groups[i] for i in epoch]
    assert len(epoch) == 40 and drawn.count(0) == 10 and drawn.count(1) == 30
    assert len(set(i for i in epoch if groups[i] == 1)) == 10  # the small one, three times
    assert len(set(i for i in epoch if groups[i] == 0)) == 10  # a subsample of the large one
    again = DataStream([5] * 40, 4, seed=3, groups=groups, weights=[1.0, 3.0])
    again.load_state_dict({"epoch": 0, "index": 4, "world": 1})
    assert (
        again.next()
        == DataStream([5] * 40, 4, seed=3, groups=groups, weights=[1.0, 3.0])._batches(0)[4]
    )
    second = [groups[i] for _ in range(stream.batches_per_epoch) for r in stream.next() for i in r]
    assert second.count(1) == 30 and stream.epoch == 1


def test_min_score_keeps_well_scored_and_person_accepted_answers(tmp_path, tok, student_path):
    from kdstudio.collect.store import collection_id
    from kdstudio.distill.plan import load_dataset

    ws = two_teachers(tmp_path / "ws")
    cid = collection_id(ws, "tiny.b")
    rows = [
        r[0] for r in ws.query("SELECT row_id FROM collection_items WHERE collection_id=?", (cid,))
    ]
    with ws.tx() as con:
        decisions.record(
            con,
            cid,
            [decisions.Decision(r, 0, "accepted", 0.9, "ok", "check:t") for r in rows[:10]]
            + [decisions.Decision(r, 0, "pending", 0.2, "meh", "check:t") for r in rows[10:14]],
        )
        decisions.record(
            con, cid, [decisions.Decision(rows[20], 0, "accepted", None, None, "person")]
        )
    config = make_config(
        student_path,
        data={"collection": "tiny.b", "min_score": 0.5, "eval_fraction": 0.0},
    )
    data = load_dataset(config, ws, tok)
    assert len(data.train) == 11
    assert data.skipped == {"rejected": 0, "empty": 0, "below min_score": 4, "unscored": 9}


def test_a_run_on_two_teachers_reports_each_collection(tmp_path, student_path, run_cli):
    from kdstudio.collect import store
    from kdstudio.distill.preflight import preflight
    from kdstudio.evaluate import held_out_examples

    ws = two_teachers(tmp_path / "ws")
    first = store.list_items(ws, "tiny.b", limit=1)[0]
    store.set_review(ws, "tiny.b", first.row_id, 0, "accepted", reason="checked by hand")
    data = {"collection": None, "collections": ["tiny", "tiny.b"], "weights": [1, 1]}
    config = make_config(student_path, data=data, optim={"max_steps": 3}, run={"name": "two"})
    report = preflight(config.resolved(), ws, device="cpu")
    assert report.ok, report.errors
    assert report.collections["tiny.b"] == {
        "teacher": "teacher-b", "train": 20, "eval": 4, "dropped": 0, "skipped": 0,
    }  # fmt: skip
    text = report.describe()
    assert "collections 'tiny', 'tiny.b': 60 train / 12 eval" in text
    assert "tiny.b (teacher teacher-b): 20 train / 4 eval" in text
    assert "each epoch mixes tiny 50%, tiny.b 50% [data.weights]" in text

    assert train(ws, config.resolved()).status == "finished"
    from kdstudio.distill.runs import get_run

    run = get_run(ws, "two")
    held = held_out_examples(ws, run)  # what `kdstudio eval` compares: one answer a row
    assert len(held) == len(run.eval_rows) == 4
    assert {e.collection for e in held} == {"tiny"}  # from the first collection that has it
    ws.close()
    shown = run_cli("--workspace", str(tmp_path / "ws"), "runs", "show", "two", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert [(c["name"], c["teacher"], c["weight"], c["train"]) for c in doc["collections"]] == [
        ("tiny", None, 1.0, 40),
        ("tiny.b", "teacher-b", 1.0, 20),
    ]
    assert doc["collection"] == "tiny, tiny.b"
    text = run_cli("--workspace", str(tmp_path / "ws"), "runs", "show", "two").stdout
    assert "tiny.b  teacher-b  1       20" in text

    out = tmp_path / "export"
    exported = run_cli("--workspace", str(tmp_path / "ws"), "export", "two", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    card = (out / "README.md").read_text()
    assert (
        "| tiny | import | – | tiny |" in card and "| tiny.b | teacher | teacher-b | tiny |" in card
    )
    assert 'collections = [\n    "tiny",\n    "tiny.b",\n]' in card  # the resolved config
    assert "| tiny.b | person | 1 | 0 | 0 |" in card  # who decided the reviews


def test_a_judges_collection_is_refused_as_training_data(tmp_path, student_path):
    from kdstudio.distill.preflight import preflight

    ws = two_teachers(tmp_path / "ws")
    ws.db.execute("UPDATE collections SET source='judge' WHERE name='tiny.b'")
    config = make_config(student_path, data={"collection": "tiny.b"})
    report = preflight(config, ws, device="cpu")
    assert any("holds a judge's verdicts" in e for e in report.errors), report.errors
