"""Experiment trackers (`[run] report_to`): TensorBoard's event files, an MLflow file store and
W&B's offline run files hold the same series as the workspace, at the same steps, with the
config and the run's name; a resume continues the same tracker runs; a tracker that cannot
start is a warning and the run goes on."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from train_support import make_config, single_thread, student, train, workspace_with_collection

from kdstudio.distill import runs
from kdstudio.errors import ConfigError
from kdstudio.events import ListSink, Metrics
from kdstudio.events import Warning as WarningEvent

pytestmark = pytest.mark.slow
ALL = ["tensorboard", "mlflow", "wandb"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()


@pytest.fixture(autouse=True)
def _offline_trackers(monkeypatch, tmp_path):
    """W&B offline (no account, no network); MLflow in the workspace's file store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)


def workspace_series(ws, name: str) -> dict[str, dict[int, float]]:
    run = runs.get_run(ws, name)
    return {k: dict(v) for k, v in runs.metric_series(ws, run.id).items()}


def tensorboard_series(logdir: Path) -> tuple[dict[str, list[tuple[int, float]]], object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    series = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    return series, acc


def mlflow_store(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient((ws.root / "mlruns").as_uri())


def wandb_records(path: Path):
    """The records of a W&B run file (LevelDB-style log: 32 KiB blocks of framed chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def wandb_history(ws, run_id: str) -> tuple[list[dict], list]:
    """Every history row the offline W&B run `run_id` logged (all sessions, in order)."""
    # one folder a session (`-1`, `-2` ... when two start in the same second), oldest first
    folders = (ws.root / "wandb" / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb")
    files = sorted(folders, key=lambda p: p.stat().st_mtime_ns)
    rows, records = [], []
    for path in files:
        for rec in wandb_records(path):
            records.append(rec)
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
    return rows, records


def assert_same_series(points: list[tuple[int, float]], stored: dict[int, float], name: str):
    """`points` holds each stored step once, in step order, with the stored value."""
    assert [s for s, _ in points] == sorted(stored), name
    assert [v for _, v in points] == pytest.approx([stored[s] for s in sorted(stored)]), name


def latest_per_step(points) -> dict[int, float]:
    """A tracker that keeps repeated steps (MLflow, W&B): the last value of each step."""
    out: dict[int, float] = {}
    for step, value in points:
        out[step] = value
    return out


def test_report_to_takes_known_trackers_once_and_a_comma_list_from_set(tmp_path):
    path = student(tmp_path)
    assert make_config(path).run.report_to == []
    assert make_config(path, run={"report_to": "tensorboard, mlflow"}).run.report_to == [
        "tensorboard",
        "mlflow",
    ]
    assert make_config(path, run={"report_to": "none"}).run.report_to == []
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        make_config(path, run={"report_to": ["comet"]})
    with pytest.raises(ConfigError, match="twice"):
        make_config(path, run={"report_to": ["mlflow", "mlflow"]})


def test_every_tracker_holds_the_workspace_series_config_and_name(tmp_path):
    ws = workspace_with_collection(tmp_path / "ws")
    config = make_config(
        student(tmp_path),
        run={"name": "tracked", "report_to": ALL, "eval_every": 4},
        optim={"max_steps": 6},
    )
    sink = ListSink()
    result = train(ws, config, sink)
    assert result.status == "finished"
    assert not sink.of(WarningEvent), [w.message for w in sink.of(WarningEvent)]
    stored = workspace_series(ws, "tracked")
    assert set(stored) >= {"loss", "lr", "grad_norm", "eval_loss"} and len(stored["loss"]) == 6

    # TensorBoard: the event files, read back by TensorBoard's own EventAccumulator
    tb, acc = tensorboard_series(tmp_path / "ws" / "tensorboard" / "tracked")
    assert set(tb) == set(stored)
    for name, points in stored.items():
        assert_same_series(tb[name], points, name)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "run `tracked`" in text and "max_steps = 6" in text  # the run's TOML
    hparams = [t for t in acc.summary_metadata if t.startswith("_hparams_")]
    assert "_hparams_/session_start_info" in hparams

    # MLflow: the file store in the workspace, one run named after kdstudio's, FINISHED
    client = mlflow_store(ws)
    summary = runs.get_run(ws, "tracked").summary["trackers"]
    mlrun = client.get_run(summary["mlflow"]["run_id"])
    assert mlrun.info.run_name == "tracked" and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["optim.max_steps"] == "6"
    assert mlrun.data.params["run.report_to"] == json.dumps(ALL)
    for name, points in stored.items():
        history = client.get_metric_history(mlrun.info.run_id, name)
        assert_same_series(sorted((m.step, m.value) for m in history), points, name)

    # W&B offline: the run file holds the config, the name and every metric at its step
    rows, records = wandb_history(ws, summary["wandb"]["id"])
    assert summary["wandb"]["mode"] == "offline"
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_rec.display_name == "tracked"
    config_items = {
        i.key: json.loads(i.value_json)
        for r in records
        if r.WhichOneof("record_type") == "run"
        for i in r.run.config.update
    }
    assert config_items["optim"]["max_steps"] == 6 and config_items["run"]["name"] == "tracked"
    for name, points in stored.items():
        logged = [(row["step"], row[name]) for row in rows if name in row]
        assert_same_series(logged, points, name)


class _CrashAt:
    """A sink that breaks the run at a step (after the trackers got it): a crash mid-run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def emit(self, event) -> None:
        if isinstance(event, Metrics) and event.step == self.step and "loss" in event.values:
            raise RuntimeError("power cut")


def test_a_resume_continues_the_same_tracker_runs_without_the_repeated_steps(tmp_path):
    ws = workspace_with_collection(tmp_path / "ws")
    config = make_config(
        student(tmp_path),
        run={"name": "again", "report_to": ALL, "checkpoint_every": 4},
        optim={"max_steps": 8},
    )
    with pytest.raises(RuntimeError, match="power cut"):
        train(ws, config, _CrashAt(6))  # steps 5 and 6 are logged, the checkpoint is at 4
    first = runs.get_run(ws, "again").summary["trackers"]
    client = mlflow_store(ws)
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "FAILED"

    assert train(ws, config, resume=True).status == "finished"
    after = runs.get_run(ws, "again").summary["trackers"]
    assert after["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    assert after["wandb"]["id"] == first["wandb"]["id"]
    stored = workspace_series(ws, "again")
    assert sorted(stored["loss"]) == list(range(1, 9))

    # TensorBoard purged what the crashed session logged past its checkpoint: one point a step
    tb, _ = tensorboard_series(tmp_path / "ws" / "tensorboard" / "again")
    assert_same_series(tb["loss"], stored["loss"], "loss")

    # MLflow: one run in the experiment, FINISHED; steps 5-6 twice, the later value as stored
    mlrun = client.get_run(after["mlflow"]["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    history = [(m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "loss")]
    assert sorted(s for s, _ in history) == [1, 2, 3, 4, 5, 5, 6, 6, 7, 8]
    assert latest_per_step(sorted(history, key=lambda p: p[0])) == pytest.approx(stored["loss"])

    # W&B: both sessions wrote the same run id; the last value of each step is the stored one
    rows, _ = wandb_history(ws, after["wandb"]["id"])
    logged = [(row["step"], row["loss"]) for row in rows if "loss" in row]
    assert latest_per_step(logged) == pytest.approx(stored["loss"])


def test_a_tracker_that_cannot_start_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch):
    import kdstudio.trackers as trackers

    real = trackers.installed
    monkeypatch.setattr(trackers, "installed", lambda name: name != "wandb" and real(name))
    # an MLflow server that is not there, asked once without retries
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    ws = workspace_with_collection(tmp_path / "ws")
    config = make_config(student(tmp_path), run={"name": "partial", "report_to": ALL})
    sink = ListSink()
    assert train(ws, config, sink).status == "finished"
    warnings = [w.message for w in sink.of(WarningEvent) if w.where == "run.report_to"]
    assert any("'wandb'" in w and "pip install 'kdstudio[wandb]'" in w for w in warnings)
    assert any(w.startswith("MLflow did not start") for w in warnings), warnings
    tb, _ = tensorboard_series(tmp_path / "ws" / "tensorboard" / "partial")
    assert len(tb["loss"]) == 8  # the tracker that did start got everything
    stored_events = ws.query("SELECT payload FROM events WHERE type='Warning'")
    assert any("MLflow did not start" in r["payload"] for r in stored_events)


def test_preflight_notes_a_tracker_that_is_not_installed(tmp_path, monkeypatch):
    import kdstudio.trackers as trackers
    from kdstudio.distill.preflight import preflight

    monkeypatch.setattr(trackers, "installed", lambda name: name == "tensorboard")
    ws = workspace_with_collection(tmp_path / "ws")
    config = make_config(student(tmp_path), run={"report_to": ["tensorboard", "wandb"]})
    report = preflight(config, ws)
    assert report.ok, report.describe()
    assert "reports to TensorBoard" in report.checks
    assert any("'wandb'" in n and "kdstudio[wandb]" in n for n in report.notes), report.notes
