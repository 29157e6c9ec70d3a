"""The whole pre-flight (`preflight(config, ws)`): plain values and problems, no run created,
for each method; `kdstudio train --config F --preflight` prints it and exits 2 on problems."""

from __future__ import annotations

import json

import pytest
from kd_support import add_local_teacher, collect_from_loopback, config
from support.openai_server import OpenAIServer

from kdstudio.config import dumps_toml
from kdstudio.distill.preflight import preflight


def _collection(ws, n=10, **kw):
    from support.train_data import make_collection, memorisable_pairs

    return make_collection(ws, "tiny", memorisable_pairs(n), **kw)


def _no_trace(ws, cfg):
    assert ws.query("SELECT * FROM runs") == []
    assert not (ws.checkpoints_dir / cfg.run.name).exists()


def test_sft_report_counts_examples_and_steps_and_leaves_no_run(ws, kd_models):
    _collection(ws, 10)
    cfg = config(kd_models.student, "tiny", optim={"max_steps": 0, "epochs": 2.0})
    report = preflight(cfg, ws)
    assert report.ok, report.errors
    assert (report.train_examples, report.eval_examples, report.dropped) == (8, 2, 0)
    assert report.target_tokens > report.train_examples
    assert report.total_steps == 4  # 2 epochs of 8 examples in batches of 4
    assert report.vocab and report.template == "the tokenizer's"
    assert report.device == "cpu" and report.precision == "fp32"
    assert report.memory["total"] > 0 and report.teacher is None and report.kd is None
    text = report.describe()
    assert text.startswith("pre-flight passed") and "8 train / 2 eval" in text
    assert "memory estimate:" in text
    assert report.to_dict()["ok"] is True
    _no_trace(ws, cfg)


def test_missing_student_and_collection_are_both_reported(ws, tmp_path):
    cfg = config(tmp_path / "nowhere", "absent")
    report = preflight(cfg, ws)
    assert not report.ok and len(report.errors) == 2
    assert "student.path" in report.errors[0] and "nowhere" in report.errors[0]
    assert "data.collection" in report.errors[1] and "'absent'" in report.errors[1]
    assert report.train_examples is None and report.memory is None
    assert report.describe().startswith("pre-flight found 2 problems")
    _no_trace(ws, cfg)


def test_too_short_max_length_drops_every_example_and_is_an_error(ws, kd_models):
    _collection(ws, 6, system="You are a careful assistant who answers in one short line.")
    cfg = config(kd_models.student, "tiny", data={"max_length": 8})
    report = preflight(cfg, ws)
    assert report.dropped == 6 and report.train_examples == 0
    assert any(
        "gives no training examples" in e and "raise data.max_length" in e for e in report.errors
    )
    assert any("data.max_length" in n for n in report.notes)


def test_dense_kd_checks_the_teacher_tokenizer(ws, kd_models):
    _collection(ws)
    add_local_teacher(ws, "padded", kd_models.padded)
    add_local_teacher(ws, "other", kd_models.foreign)
    good = preflight(
        config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "padded"}), ws
    )
    assert good.ok, good.errors
    assert good.teacher["teacher_rows"] == good.teacher["student_rows"] + 16
    assert good.memory["teacher_weights"] > 0
    distill = {"method": "dense_kd", "teacher": "other", "align": "exact"}
    bad = preflight(config(kd_models.student, "tiny", distill=distill), ws)
    assert not bad.ok and bad.teacher is None
    assert any("share a tokenizer" in e and "'other'" in e for e in bad.errors)
    assert bad.train_examples == 8  # the other checks still ran
    other = preflight(
        config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "other"}), ws
    )
    assert other.ok, other.errors
    assert other.teacher["align"] == "bytes"
    assert any("another tokenizer" in c and "by bytes" in c for c in other.checks)


def test_sparse_kd_reports_the_kd_share_or_refuses_a_collection_without_logprobs(ws, kd_models):
    _collection(ws)
    plain = preflight(config(kd_models.student, "tiny", distill={"method": "sparse_kd"}), ws)
    assert not plain.ok and any("no teacher logprobs" in e for e in plain.errors)
    with OpenAIServer() as server:
        name = collect_from_loopback(ws, server, n=8)
    report = preflight(
        config(kd_models.student, name, distill={"method": "sparse_kd"}, data={"eval_fraction": 0}),
        ws,
    )
    assert report.ok, report.errors
    assert report.kd["examples"] == 8 and 0 < report.kd["kd_share"] <= 1
    assert report.kd["kd_positions"] <= report.kd["target_tokens"]
    assert report.kd["align"] in ("exact", "bytes")
    kinds = report.kd["kind_shares"]
    assert sum(kinds.values()) == pytest.approx(report.kd["kd_share"])
    assert any(c.startswith("sparse_kd:") for c in report.checks)
    assert any(c.startswith(f"align {report.kd['align']}:") for c in report.checks)


@pytest.mark.slow  # a CLI process that loads transformers and the models
@pytest.mark.parametrize("good", [True, False])
def test_cli_preflight_prints_the_report_and_exits_2_on_problems(
    ws, kd_models, run_cli, tmp_path, good
):
    _collection(ws)
    cfg = config(kd_models.student if good else tmp_path / "nowhere", "tiny").to_dict()
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg))
    out = run_cli("train", "--config", str(path), "--preflight", workspace=ws.root)
    assert out.returncode == (0 if good else 2), out.stderr
    assert ("pre-flight passed" if good else "pre-flight found 1 problem") in out.stdout
    as_json = run_cli("train", "--config", str(path), "--preflight", "--json", workspace=ws.root)
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is good and (doc["train_examples"] == 8 if good else doc["errors"])
    assert ws.query("SELECT * FROM runs") == []
