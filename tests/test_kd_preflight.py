"""Pre-flight of KD runs: tokenizer compatibility (refused before any step, padding rows
accepted), teachers and collections that cannot serve the method, the memory estimate."""

from __future__ import annotations

import pytest
from kd_support import add_local_teacher, config

from kdstudio.distill import plan
from kdstudio.distill.objectives import dense
from kdstudio.errors import ConfigError, UserError
from kdstudio.events import ListSink, Log, Metrics


def _collection(ws, n=8):
    from support.train_data import make_collection, memorisable_pairs

    return make_collection(ws, "tiny", memorisable_pairs(n))


def _setup_fails(ws, cfg):
    from kdstudio.distill.trainer import Trainer, run_training

    sink = ListSink()
    with pytest.raises(UserError) as err:
        run_training(Trainer(cfg, ws, sink))
    assert not [e for e in sink.events if isinstance(e, Metrics)]
    assert ws.query("SELECT * FROM runs") == []  # nothing trained, no trace left
    assert not (ws.checkpoints_dir / cfg.run.name).exists()
    return str(err.value)


def test_a_mismatched_tokenizer_pair_is_refused_before_any_step_when_align_is_exact(ws, kd_models):
    _collection(ws)
    add_local_teacher(ws, "other", kd_models.foreign)
    distill = {"method": "dense_kd", "teacher": "other", "align": "exact"}
    message = _setup_fails(ws, config(kd_models.student, "tiny", distill=distill))
    assert str(kd_models.student) in message and str(kd_models.foreign) in message
    assert "'other'" in message
    assert 'distill.align = "auto" or "bytes"' in message


def test_a_teacher_with_another_tokenizer_is_aligned_by_bytes_and_needs_temperature_1(
    ws, kd_models
):
    _collection(ws)
    add_local_teacher(ws, "other", kd_models.foreign)
    distill = {"method": "dense_kd", "teacher": "other", "temperature": 2.0}
    message = _setup_fails(ws, config(kd_models.student, "tiny", distill=distill))
    assert "across tokenizers needs distill.temperature = 1.0" in message
    check = dense.check_teacher(
        config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "other"}), ws
    )
    assert check.align == "bytes" and "another tokenizer" in check.message


def test_padding_rows_are_accepted_and_truncated_to_the_shared_vocabulary(ws, kd_models):
    add_local_teacher(ws, "padded", kd_models.padded)
    cfg = config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "padded"})
    check = dense.check_teacher(cfg, ws)
    assert check.teacher_rows == check.student_rows + 16
    assert check.shared_rows == check.student_rows
    assert "padding rows" in check.message


def test_a_token_beyond_the_other_models_rows_is_a_real_mismatch(kd_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(kd_models.tok)
    n = len(tok)
    assert dense.check_tokenizers(tok, tok, student_rows=n, teacher_rows=n + 8) == n
    with pytest.raises(UserError, match="only .* rows"):
        dense.check_tokenizers(tok, tok, student_rows=n + 8, teacher_rows=n - 1)


def test_dense_kd_refuses_an_api_teacher_and_names_sparse_kd(ws, kd_models):
    from kdstudio.config import TeacherConfig

    _collection(ws)
    ws.add_teacher(TeacherConfig(name="api", base_url="http://127.0.0.1:9/v1", model="m"))
    cfg = config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "api"})
    message = _setup_fails(ws, cfg)
    assert "local teacher" in message and "sparse_kd" in message


def test_sparse_kd_refuses_a_collection_without_logprobs(ws, kd_models):
    _collection(ws)
    cfg = config(kd_models.student, "tiny", distill={"method": "sparse_kd"})
    message = _setup_fails(ws, cfg)
    assert "no teacher logprobs" in message and '"sft"' in message


def test_sparse_kd_at_a_temperature_needs_the_tail_off(kd_models):
    with pytest.raises(ConfigError, match="tail = false"):
        config(kd_models.student, "c", distill={"method": "sparse_kd", "temperature": 2.0})
    cfg = config(
        kd_models.student, "c", distill={"method": "sparse_kd", "temperature": 2.0, "tail": False}
    )
    assert cfg.distill.temperature == 2.0


def test_memory_estimate_counts_teacher_optimizer_and_loss(ws, kd_models):
    add_local_teacher(ws, "t", kd_models.teacher)
    dense = plan.memory_estimate(
        config(kd_models.student, "c", distill={"method": "dense_kd", "teacher": "t"}), ws
    )
    sft = plan.memory_estimate(config(kd_models.student, "c"), ws)
    lora = plan.memory_estimate(config(kd_models.student, "c", lora={"r": 4}), ws)
    parts = ("student_weights", "gradients", "optimizer", "teacher_weights", "activations", "loss")
    assert dense["total"] == sum(dense[k] for k in parts)
    assert dense["teacher_weights"] == 4 * dense["teacher_params"] > 0
    assert sft["teacher_weights"] == 0 and sft["student_weights"] == dense["student_weights"]
    assert sft["optimizer"] == 8 * sft["student_params"]
    assert 0 < lora["trainable_params"] < lora["student_params"] / 4
    assert lora["optimizer"] == 8 * lora["trainable_params"]
    assert dense["available"] and dense["fits"] is True
    line = plan.describe_memory(dense)
    assert line.startswith("memory estimate:") and "teacher" in line and "on cpu" in line


def test_memory_estimate_is_reported_at_setup(ws, kd_models):
    from kdstudio.distill.trainer import Trainer

    _collection(ws)
    add_local_teacher(ws, "t", kd_models.teacher)
    cfg = config(kd_models.student, "tiny", distill={"method": "dense_kd", "teacher": "t"})
    sink = ListSink()
    trainer = Trainer(cfg, ws, sink)
    try:
        trainer.setup()
    finally:
        trainer.close()
    logs = [e.message for e in sink.events if isinstance(e, Log)]
    assert any(m.startswith("memory estimate:") and "teacher" in m for m in logs)
    assert any("shares the student's tokenizer" in m for m in logs)
