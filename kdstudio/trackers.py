"""Experiment trackers as sinks: TensorBoard, MLflow and Weights & Biases.

`[run] report_to = ["tensorboard", "mlflow", "wandb"]` sends every metric a run stores to
each tracker, at the same step, with the config as hyper-parameters and the run's name.
The trainer attaches one `TrackerSink` beside its other rank-0 sinks (so the window, the
CLI and torchrun all get it) and calls `start(step)` once the run and its checkpoint are
loaded; the sink ends the trackers' runs when the trainer closes it.

    sink = TrackerSink(config, ws, run)     # a Sink: Metrics, Finished, Failed
    sink.start(step, warn=other_sink)       # step: 0, or the checkpoint a resume starts from
    ...
    sink.close()

Where each one writes, and how a resume continues it:

- tensorboard: `<workspace>/tensorboard/<run>/` (torch's SummaryWriter). A resume writes to
  the same folder with `purge_step` = checkpoint step + 1, so the steps the previous
  session logged after its last checkpoint (which the resume repeats) are dropped, as the
  workspace drops them.
- mlflow: `$MLFLOW_TRACKING_URI` when set (a server, or a database), else a file store in
  `<workspace>/mlruns`; experiment `$MLFLOW_EXPERIMENT_NAME` or "kdstudio". The MLflow run
  id is kept in the run's summary and a resume logs into the same MLflow run (repeated
  steps are logged again: the latest value of a step is the one the workspace keeps).
- wandb: project `$WANDB_PROJECT` or "kdstudio", files under `<workspace>/wandb/`, online or
  offline as `WANDB_MODE` says; the W&B run id is kept in the summary and a resume continues
  it (`resume="allow"`). Metrics are plotted against kdstudio's `step`.

A tracker that cannot start (not installed, no server, no login) is reported as a Warning
and the run goes on without it; one that fails later is warned about once and dropped.
Nothing here imports a tracker at module level: each is imported when a run asks for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdstudio.distill.config import TRACKERS
from kdstudio.events import Event, Failed, Finished, Metrics, NullSink, Sink, Warning

if TYPE_CHECKING:
    from kdstudio.distill.config import TrainConfig
    from kdstudio.distill.runs import Run
    from kdstudio.workspace import Workspace

# The module each tracker needs, and the extra that installs it (`pip install kdstudio[X]`).
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
TITLES = {"tensorboard": "TensorBoard", "mlflow": "MLflow", "wandb": "Weights & Biases"}
DEFAULT_PROJECT = "kdstudio"  # MLflow experiment and W&B project unless the env names one


def installed(name: str) -> bool:
    """Whether the package a tracker needs can be imported (without importing it)."""
    return importlib.util.find_spec(MODULES[name]) is not None


def installed_trackers() -> list[str]:
    return [name for name in TRACKERS if installed(name)]


def install_hint(name: str) -> str:
    return f"pip install 'kdstudio[{EXTRAS[name]}]'"


def tensorboard_root(ws: Workspace) -> Path:
    """The folder `tensorboard --logdir` shows: one sub-folder per run."""
    return ws.root / "tensorboard"


def tensorboard_dir(ws: Workspace, run_name: str) -> Path:
    return tensorboard_root(ws) / run_name


def mlflow_uri(ws: Workspace) -> str:
    """$MLFLOW_TRACKING_URI, else the workspace's own file store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (ws.root / "mlruns").as_uri()


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 2e-05, "optim.betas": "[0.9, 0.999]", ...}: scalars kept, lists and
    other values as JSON text, None left out (trackers' hyper-parameters are flat scalars)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        elif value is None:
            continue
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class _Tracker:
    """One tracker's run: `start` returns what a resume needs (kept in the run's summary)."""

    name = ""

    def __init__(self, ws: Workspace, run: Run, config: dict[str, Any]) -> None:
        self.ws, self.run, self.config = ws, run, config

    def start(self, step: int, resume: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def end(self, status: str) -> None:
        """status: finished | stopped | failed."""
        raise NotImplementedError


class _TensorBoard(_Tracker):
    name = "tensorboard"

    def start(self, step: int, resume: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        logdir = tensorboard_dir(self.ws, self.run.name)
        # Drop what a previous session logged past the step this one starts from: the
        # repeated steps (a resume), or everything (a new run reusing a deleted run's name).
        leftovers = logdir.is_dir() and any(logdir.glob("events.out.tfevents.*"))
        purge = step + 1 if step else (0 if leftovers else None)
        self.writer = SummaryWriter(str(logdir), purge_step=purge, flush_secs=10)
        if not step:
            self._hparams()
            from kdstudio.config import dumps_toml

            # the run's TOML as a Markdown code block (TensorBoard's Text tab)
            toml = "".join(f"    {line}\n" for line in dumps_toml(self.config).splitlines())
            self.writer.add_text("config", f"run `{self.run.name}`:\n\n{toml}", 0)
        return {"logdir": str(logdir)}

    def _hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        # Written into this run's own event file (add_hparams would make a sub-run), so
        # the HParams dashboard lists the run with its loss columns.
        metrics = {"loss": 0.0, "eval_loss": 0.0}
        for summary in hparams(flat_params(self.config), metrics):
            self.writer.file_writer.add_summary(summary)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def end(self, status: str) -> None:
        self.writer.close()


class _MLflow(_Tracker):
    name = "mlflow"
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def start(self, step: int, resume: dict[str, Any] | None) -> dict[str, Any]:
        uri = mlflow_uri(self.ws)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked;
            # it is what a workspace folder can hold without a database server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(uri)
        self.run_id = None
        if resume and resume.get("tracking_uri") == uri and resume.get("run_id"):
            try:
                client.update_run(resume["run_id"], status="RUNNING")
                self.run_id = resume["run_id"]
            except Exception:  # noqa: BLE001 - gone from the store: start a new MLflow run
                self.run_id = None
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(name)
            )
            tags = {"kdstudio.run": self.run.name, "kdstudio.workspace": str(self.ws.root)}
            created = client.create_run(experiment_id, run_name=self.run.name, tags=tags)
            self.run_id = created.info.run_id
            self._log_params()
        return {"tracking_uri": uri, "run_id": self.run_id}

    def _log_params(self) -> None:
        from mlflow.entities import Param

        # MLflow caps a parameter value at 6000 characters; a config value is far shorter.
        params = [Param(k, str(v)[:6000]) for k, v in flat_params(self.config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))


class _WandB(_Tracker):
    name = "wandb"

    def start(self, step: int, resume: dict[str, Any] | None) -> dict[str, Any]:
        import wandb

        project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        offline = os.environ.get("WANDB_MODE", "online") in ("offline", "dryrun", "disabled")
        # Never an interactive login prompt in the middle of a training thread.
        if not offline and not wandb.login(prompt=False, verify=False):
            raise RuntimeError(
                "no W&B API key: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline"
            )
        folder = self.ws.folder("wandb")
        self.wb = wandb.init(
            project=project,
            name=self.run.name,
            id=(resume or {}).get("id"),  # None: W&B makes a new run id
            resume="allow",
            dir=str(folder),
            config=self.config,
            reinit="create_new",  # the window trains one run after another in one process
            # kdstudio's own console output stays as it is; no prompts in a training thread
            settings=wandb.Settings(console="off", silent=True),
        )
        # kdstudio's step is the x axis: a resume logs the repeated steps again, which W&B's
        # own (strictly increasing) step would drop.
        self.wb.define_metric("step")
        self.wb.define_metric("*", step_metric="step")
        return {"id": self.wb.id, "project": project, "mode": self.wb.settings.mode}

    def log(self, step: int, values: dict[str, float]) -> None:
        self.wb.log({"step": step, **values})

    def end(self, status: str) -> None:
        self.wb.finish(exit_code=1 if status == "failed" else 0)


_CLASSES: dict[str, type[_Tracker]] = {
    "tensorboard": _TensorBoard,
    "mlflow": _MLflow,
    "wandb": _WandB,
}


class TrackerSink:
    """Sends a run's metrics to the trackers `config.run.report_to` names (see the module)."""

    def __init__(self, config: TrainConfig, ws: Workspace, run: Run) -> None:
        self.names = list(config.run.report_to)
        self.config_dict = config.to_dict()
        self.ws, self.run = ws, run
        self.active: list[_Tracker] = []
        self.warn: Sink = NullSink()
        self.status: str | None = None

    def start(self, step: int, warn: Sink | None = None) -> None:
        """Start (or, when `step` > 0 on a resume, continue) every tracker; a tracker that
        cannot start becomes a Warning on `warn` and is left out."""
        from kdstudio.distill import runs

        self.warn = warn or NullSink()
        stored = runs.get_run(self.ws, self.run.name).summary.get("trackers", {})
        started: dict[str, Any] = {}
        for name in self.names:
            if not installed(name):
                self._warning(
                    f"report_to names {name!r} but its package is not installed "
                    f"({install_hint(name)}); the run goes on without it"
                )
                continue
            tracker = _CLASSES[name](self.ws, self.run, self.config_dict)
            try:
                started[name] = tracker.start(step, stored.get(name) if step else None)
            except Exception as exc:  # noqa: BLE001 - a tracker never costs the run
                self._warning(
                    f"{TITLES[name]} did not start ({_reason(exc)}); the run goes on without it"
                )
                continue
            self.active.append(tracker)
        if started:
            runs.merge_summary(self.ws, self.run.id, trackers={**stored, **started})

    def emit(self, event: Event) -> None:
        if isinstance(event, Metrics):
            for tracker in list(self.active):
                self._call(tracker, "log", event.step, event.values)
        elif isinstance(event, Finished):
            self.status = "finished"
        elif isinstance(event, Failed):
            self.status = "stopped" if event.cancelled else "failed"

    def close(self) -> None:
        """End every tracker's run (a run that ended without Finished/Failed is 'failed')."""
        for tracker in list(self.active):
            self._call(tracker, "end", self.status or "failed")
        self.active.clear()

    def _call(self, tracker: _Tracker, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - warn once, drop the tracker, train on
            self.active.remove(tracker)
            self._warning(
                f"{TITLES[tracker.name]} failed ({_reason(exc)}): the run goes on without it"
            )

    def _warning(self, message: str) -> None:
        try:
            self.warn.emit(Warning(message, where="run.report_to"))
        except Exception:  # noqa: BLE001 - a warning about a tracker never stops the run
            pass


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"
