"""A run whose loss blows up is marked diverged, says what happened and what to change, stops
by default (`run.stop_on_divergence`), and keeps its last good checkpoint: the one resume,
evaluation and export take. The rule (kdstudio.distill.divergence) on sequences, then on real
tiny runs that diverge (AdamW at a learning rate far too high, clipping off)."""

from __future__ import annotations

import json
import math
import random

import pytest
from train_support import (
    config_dict,
    losses,
    make_config,
    single_thread,
    student,
    train,
    workspace_with_collection,
    write_toml,
)

from kdstudio.distill import checkpoint as ckpt
from kdstudio.distill import runs
from kdstudio.distill.divergence import PATIENCE, DivergenceCheck
from kdstudio.events import Failed, ListSink, Warning


def judge(losses_by_report: list[float], start: float | None = None, every: int = 10):
    check = DivergenceCheck()
    if start is not None:
        check.start(start)
    for i, loss in enumerate(losses_by_report, 1):
        found = check.observe(i * every, loss)
        if found is not None:
            return check, found
    return check, None


# -- the rule ---------------------------------------------------------------------------------


def test_noisy_healthy_curves_never_trip_the_check():
    """Falling curves with 50% noise per report, at every scale from a fresh model's loss
    (log V) to a memorised set's (near 0), and a hard report that doubles the loss."""
    rng = random.Random(0)
    for start in (12.0, 6.0, 2.0, 0.5, 0.05):
        for _ in range(50):
            curve = [
                start * (0.2 + 0.8 * math.exp(-i / 30)) * rng.uniform(0.5, 1.5) for i in range(300)
            ]
            curve[150] *= 2
            check, found = judge(curve, start=start)
            assert found is None, (start, check.state_dict())
            assert check.good_until == 3000


def test_a_loss_that_is_not_finite_diverges_at_once():
    for bad in (float("nan"), float("inf")):
        _, found = judge([5.0, 4.0, bad], start=6.0)
        assert found.kind == "not finite" and found.step == 30 and found.good_until == 20
        assert ("NaN" if math.isnan(bad) else "infinite") in found.describe()


def test_an_explosion_diverges_at_once_and_a_rising_loss_after_patience():
    _, found = judge([5.0, 1e6], start=6.0)
    assert (found.kind, found.step, found.best, found.best_step) == ("exploded", 20, 5.0, 10)
    assert "200,000x its best (5 at step 10)" in found.describe()
    # three reports in a row far above the best; a healthy one in between resets the count
    _, found = judge([2.0, 7.0, 8.0, 2.5, 7.0, 8.0, 9.0], start=6.0)
    assert (found.kind, found.step, found.good_until) == ("rising", 70, 40)
    assert f"for {PATIENCE} reports in a row, reaching 9 at step 70" in found.describe()


def test_near_zero_and_large_losses_need_both_the_ratio_and_the_margin():
    # 0.01 -> 0.1 is 10x but not 2 nats; 10 -> 14 is 4 nats but not 3x
    assert judge([0.01] + [0.1] * 10, start=0.5)[1] is None
    assert judge([10.0] + [14.0] * 10, start=11.0)[1] is None
    assert judge([0.01] + [2.5] * 3, start=0.5)[1].kind == "rising"


def test_the_first_step_loss_is_the_baseline_of_an_early_explosion():
    """lr 1000: the first interval averages 1e6, then the model sits at the uniform guess."""
    assert judge([1.3e6, 5.95, 5.95], start=5.96)[1].kind == "exploded"


def test_the_state_survives_a_checkpoint():
    check, _ = judge([3.0, 2.0, 9.0], start=6.0)
    again = DivergenceCheck()
    again.load_state_dict(json.loads(json.dumps(check.state_dict())))
    assert again.observe(40, 9.0) is None and again.observe(50, 9.5).kind == "rising"


# -- pruning and choosing checkpoints ---------------------------------------------------------


def _write(ws, step, **meta):
    ckpt.write_checkpoint(ws, "k", step, lambda d: (d / "x").write_text("w"), meta)


def test_pruning_keeps_the_newest_confirmed_checkpoint_and_never_a_diverged_one_instead(ws):
    for step in (2, 4, 6):
        _write(ws, step, eval_loss=1.0)
        # only checkpoints before step 3 were confirmed by a healthy loss so far
        ckpt.prune_checkpoints(ws, "k", keep_last=1, confirmed_before=3)
    assert [c.step for c in ckpt.list_checkpoints(ws, "k")] == [2, 6]
    assert ckpt.mark_diverged(ws, "k", 3) == [6]
    for step in (8, 10):
        _write(ws, step, eval_loss=0.1, diverged=True)
        ckpt.prune_checkpoints(ws, "k", keep_last=1, confirmed_before=3)
    items = ckpt.list_checkpoints(ws, "k")
    assert [(c.step, c.diverged, c.is_best) for c in items] == [(2, False, True), (10, True, False)]
    assert ckpt.resolve_checkpoint(ws, "k", "last").name == "step-0000002"
    assert ckpt.resolve_checkpoint(ws, "k", "best").name == "step-0000002"
    assert ckpt.resolve_checkpoint(ws, "k", 10).name == "step-0000010"  # asked for by step


def test_a_run_with_only_diverged_checkpoints_has_no_last_one(ws):
    _write(ws, 2, diverged=True)
    with pytest.raises(Exception, match="no good checkpoint: it diverged"):
        ckpt.resolve_checkpoint(ws, "k", "last")


# -- real runs --------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    return student(tmp_path_factory.mktemp("diverge"))


@pytest.fixture
def tiny(student_path, tmp_path):
    workspace = workspace_with_collection(tmp_path / "ws")
    yield workspace
    workspace.close()


def _exploding(student_path, lr=1000.0, **run):
    """The issue's run: lr 1000, clipping off, no warmup."""
    optim = {"max_steps": 40, "lr": lr, "clip": 0.0, "warmup": 0}
    return make_config(student_path, optim=optim, run={"log_every": 2, **run})


def test_the_remedies_make_the_next_run_to_try(student_path):
    from kdstudio.distill.divergence import remedied, remedies

    fixed = remedied(_exploding(student_path, name="x"))
    assert (fixed.optim.lr, fixed.optim.clip, fixed.optim.warmup) == (1e-3, 1.0, 0.03)
    assert fixed.run.name is None  # a new run
    mild = make_config(student_path, optim={"lr": 3e-4})
    assert [r.key for r in remedies(mild)] == ["optim.lr"]
    assert remedied(mild).optim.lr == pytest.approx(3e-5)


def test_an_exploding_run_is_marked_diverged_stopped_and_told_what_to_change(tiny, student_path):
    sink = ListSink()
    result = train(tiny, _exploding(student_path, name="boom", checkpoint_every=2), sink)
    assert result.status == "diverged" and result.step < 40
    assert result.checkpoint is None  # nothing was confirmed good, nothing ruined was saved
    run = runs.get_run(tiny, "boom")
    assert run.status == "diverged" and run.error == result.message
    assert run.summary["diverged"]["kind"] == "exploded"
    assert "run boom diverged: the loss exploded to" in run.error
    assert "lower optim.lr from 1000 to 1e-3 (1e-6 to 1e-3 is usual for AdamW" in run.error
    assert "turn gradient clipping on (optim.clip = 1.0)" in run.error
    (failed,) = sink.of(Failed)
    assert failed.details == "diverged" and failed.message == run.error
    lr_warning = [w for w in sink.of(Warning) if w.where == "optim.lr"]
    assert lr_warning and "far above the usual range (1e-6 to 1e-3" in lr_warning[0].message
    assert all(c.diverged for c in ckpt.list_checkpoints(tiny, "boom"))
    assert max(losses(tiny, "boom").values()) > 1e4


def test_a_nan_loss_stops_the_run_at_its_first_report_and_is_not_stored(tiny, student_path):
    """SQLite has no NaN (it reads back as NULL): the metric is left out, the run says it."""
    result = train(tiny, _exploding(student_path, lr=1e12, name="nan"))
    run = runs.get_run(tiny, "nan")
    assert result.status == run.status == "diverged" and result.step == 2
    assert "the loss became NaN at step 2" in run.error
    assert run.summary["diverged"]["loss"] == "nan"
    assert losses(tiny, "nan") == {}  # nothing of the NaN report in the table


def test_infinite_metrics_are_stored_and_nan_ones_left_out(tiny, student_path):
    import time

    run = runs.create_run(tiny, make_config(student_path, run={"name": "m"}))
    tiny.add_metrics(run.id, 3, {"loss": float("nan"), "grad_norm": float("inf")}, time.time())
    assert runs.latest_metrics(tiny, run.id) == {"grad_norm": (3, float("inf"))}


def test_a_run_that_diverges_later_keeps_its_last_good_checkpoint_for_everything(
    tiny, student_path, tmp_path
):
    from kdstudio.distill.trainer import Trainer
    from kdstudio.events import CancelToken
    from kdstudio.export import ExportConfig, export

    # the learning rate warms up to 2: healthy at first, exploding after about ten steps
    optim = {"max_steps": 30, "lr": 2.0, "clip": 0.0, "warmup": 30}
    run_cfg = {"name": "late", "log_every": 2, "checkpoint_every": 2, "keep_last": 1}
    result = train(tiny, make_config(student_path, optim=optim, run=run_cfg))
    assert result.status == "diverged" and result.step < 30
    found = runs.get_run(tiny, "late").summary["diverged"]
    items = ckpt.list_checkpoints(tiny, "late")
    good = [c.step for c in items if not c.diverged]
    marked = [c.step for c in items if c.diverged]
    assert good and marked and max(good) < found["good_until"] <= min(marked)
    assert result.checkpoint.name == ckpt.step_dir_name(max(good))
    assert ckpt.resolve_checkpoint(tiny, "late", "last") == result.checkpoint
    assert ckpt.resolve_checkpoint(tiny, "late", "best") == result.checkpoint
    assert f"its last good checkpoint is step {max(good)}" in result.message

    out = export(ExportConfig(run="late", out=tmp_path / "out"), tiny, ListSink(), CancelToken())
    assert out.step == max(good)

    sink = ListSink()
    trainer = Trainer.for_resume(tiny, "late", sink)
    try:
        trainer.setup()
        assert trainer.step == max(good)
        assert any("diverged before" in w.message for w in sink.of(Warning))
        assert "diverged" not in runs.get_run(tiny, "late").summary
    finally:
        trainer.close()


def test_with_stop_on_divergence_off_the_run_trains_on_and_still_ends_diverged(
    tiny, student_path, capsys
):
    from kdstudio.cli import main

    sink = ListSink()
    cfg = _exploding(student_path, name="on", checkpoint_every=10, stop_on_divergence=False)
    result = train(tiny, cfg, sink)
    assert result.status == "diverged" and result.step == 40
    assert "It trained on to step 40 (run.stop_on_divergence = false)" in result.message
    assert any(w.where == "run.stop_on_divergence" for w in sink.of(Warning))
    assert [c.diverged for c in ckpt.list_checkpoints(tiny, "on")] == [True, True]
    capsys.readouterr()
    assert main(["--workspace", str(tiny.root), "runs", "show", "on"]) == 0
    shown = capsys.readouterr().out
    assert "run on: diverged at step 40 of 40" in shown
    assert shown.count("yes (never last or best)") == 2


def test_cli_exits_1_and_runs_list_says_diverged(tiny, student_path, tmp_path, capsys):
    from kdstudio.cli import main

    tiny.close()
    conf = write_toml(
        tmp_path / "c.toml",
        config_dict(
            student_path,
            optim={"max_steps": 40, "lr": 1000.0, "clip": 0.0, "warmup": 0},
            run={"name": "cli", "log_every": 2},
        ),
    )
    ws_args = ["--workspace", str(tmp_path / "ws")]
    assert main([*ws_args, "train", "--config", str(conf), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error: run cli diverged: the loss exploded" in err
    assert "kdstudio: failed: run cli diverged; last good checkpoint: none" in err
    assert main([*ws_args, "runs", "list", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["status"] == "diverged" and "lower optim.lr" in doc["error"]
    assert main([*ws_args, "runs", "list"]) == 0
    assert "cli   diverged" in capsys.readouterr().out
