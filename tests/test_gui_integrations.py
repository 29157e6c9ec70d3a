"""The window's side of the integrations: a saved Hugging Face datasets folder in the import
step, presets and the served-model list in the Add teacher dialog, the tracker choice in
the Train panel, and "Open in TensorBoard" in Runs."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, ws, tmp_path):
    from support.gui import studio_window

    yield from studio_window(qtbot, ws, tmp_path / "settings", size=(1200, 800))


@pytest.fixture
def saved_dict(tmp_path):
    import datasets

    rows = [{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(12)]
    train = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": train, "test": train.select(range(3))}).save_to_disk(
        str(tmp_path / "qa")
    )
    return tmp_path / "qa"


# -- datasets ---------------------------------------------------------------------------------


def test_a_saved_dataset_dict_imports_from_the_window_with_its_split(qtbot, window, ws, saved_dict):
    panel = window.show_panel("datasets")
    panel.import_files([str(saved_dict)])
    dialog = panel.importer
    assert [dialog.split.itemText(i) for i in range(dialog.split.count())] == ["train", "test"]
    assert dialog.name.text() == "qa-train" and dialog.model.rowCount() == 12
    assert "Hugging Face dataset" in dialog.detected.text()
    dialog.split.setCurrentText("test")
    dialog.update_preview()
    assert dialog.name.text() == "qa-test" and dialog.model.rowCount() == 3
    assert dialog.model.row(2).prompt == "Q2?" and dialog.model.row(2).reference == "A2"
    with qtbot.waitSignal(dialog.imported, timeout=20_000):
        dialog.start_import()
    assert panel.dataset == "qa-test" and panel.model.total == 3
    assert "Imported 3 rows" in panel.message.text


def test_a_folder_that_is_not_a_saved_dataset_is_refused_inline(window, tmp_path):
    (tmp_path / "photos").mkdir()
    panel = window.show_panel("datasets")
    panel.importer = None
    panel.import_files([str(tmp_path / "photos")])
    assert panel.importer is None
    assert panel.message.level == "error" and "save_to_disk" in panel.message.text


# -- teachers ---------------------------------------------------------------------------------


@pytest.fixture
def teachers(qtbot, window):
    panel = window.show_panel("teachers")
    qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=10_000)  # the keyring probe
    return panel


def test_a_preset_fills_the_base_url_and_says_what_the_server_supports(
    qtbot, teachers, monkeypatch
):
    import kdstudio.teachers.servers as servers
    from kdstudio.errors import UserError

    asked = []

    def unreachable(url, *args, **kw):
        asked.append(url)
        raise UserError(f"cannot reach {url}/models: connection refused")

    monkeypatch.setattr(servers, "list_models", unreachable)  # no llama.cpp on this machine
    teachers.add_teacher()
    dialog = teachers.dialog
    dialog.preset.setCurrentIndex(dialog.preset.findData("llamacpp"))
    assert dialog.base_url.text() == "http://localhost:8080/v1"
    assert dialog.key_none.isChecked()
    assert "top-k logprobs (sparse_kd) up to 20" in dialog.preset_info.text()
    qtbot.waitUntil(lambda: dialog.list_models_button.isEnabled(), timeout=15_000)
    assert asked == ["http://localhost:8080/v1"]  # a local server's models are listed at once
    assert "Could not list the models: cannot reach" in dialog.models_status.text()
    dialog.preset.setCurrentIndex(dialog.preset.findData("openai"))
    assert dialog.base_url.text() == "https://api.openai.com/v1"
    assert not dialog.key_none.isChecked()  # OpenAI needs a key
    assert "LM Studio" in [dialog.preset.itemText(i) for i in range(dialog.preset.count())]


def test_a_served_model_is_picked_from_the_list_fetched_off_the_gui_thread(qtbot, teachers, ws):
    from support.openai_server import OpenAIServer

    with OpenAIServer(flavor="ollama", models=("llama3.2:1b", "qwen2.5:0.5b")) as srv:
        teachers.add_teacher()
        dialog = teachers.dialog
        dialog.preset.setCurrentIndex(dialog.preset.findData("ollama"))
        dialog.name.setText("local-qwen")
        dialog.base_url.setText(srv.url)  # this machine's Ollama, on another port
        dialog.fetch_models()
        assert dialog.models_status.text().startswith("Asking")  # the answer comes later
        qtbot.waitUntil(lambda: dialog.served.count() == 2, timeout=10_000)
        assert dialog.served.isVisible() and "2 models served" in dialog.models_status.text()
        dialog.served.setCurrentIndex(1)
        dialog.on_served_picked(1)
        assert dialog.model.text() == "qwen2.5:0.5b"
        dialog.try_accept()
        qtbot.waitUntil(lambda: "local-qwen" in ws.teacher_names(), timeout=5000)
    t = ws.get_teacher("local-qwen")
    assert (t.base_url, t.model, t.key_source) == (srv.url, "qwen2.5:0.5b", "none")


# -- train: the tracker choice ------------------------------------------------------------------


def test_the_train_panel_offers_the_installed_trackers_as_check_boxes(window, tmp_path):
    import tomllib

    from kdstudio.distill.config import TrainConfig

    panel = window.show_panel("train")
    choice = panel.report_to
    assert set(choice.boxes) == {"tensorboard", "mlflow", "wandb"}
    assert all(box.isEnabled() for box in choice.boxes.values())  # scripts/test installs all
    choice.boxes["tensorboard"].setChecked(True)
    choice.boxes["mlflow"].setChecked(True)
    panel.student_path.set_value(str(tmp_path / "student"))
    panel.collections.set_config_values({"collection": "c"})
    assert panel.config_dict()["run"]["report_to"] == ["tensorboard", "mlflow"]
    panel.update_cli()
    toml = tomllib.loads(panel.toml_view.toPlainText())
    assert toml["run"]["report_to"] == ["tensorboard", "mlflow"]
    config = TrainConfig.from_dict(panel.config_dict())
    config.run.report_to = ["wandb"]
    panel.set_config(config)
    assert choice.value() == ["wandb"]


def test_a_tracker_that_is_not_installed_is_greyed_with_how_to_install_it(qtbot, monkeypatch):
    import kdstudio.trackers as trackers
    from kdstudio.gui.trackers import TrackerChoice

    monkeypatch.setattr(trackers, "installed", lambda name: name != "wandb")
    choice = TrackerChoice()
    qtbot.addWidget(choice)
    assert not choice.boxes["wandb"].isEnabled()
    assert "pip install 'kdstudio[wandb]'" in choice.boxes["wandb"].toolTip()
    choice.set_value(["wandb"])  # a config that names it keeps it
    assert choice.value() == ["wandb"]


# -- runs: Open in TensorBoard ------------------------------------------------------------------


def test_open_in_tensorboard_serves_the_workspace_runs_and_stops_with_the_window(
    qtbot, window, ws, tmp_path, monkeypatch
):
    """A real TensorBoard on a free port, asked over HTTP for the run's loss curve."""
    import json
    import urllib.request

    from PySide6.QtGui import QDesktopServices
    from train_support import make_config, student, train, workspace_with_collection

    from kdstudio.distill import runs
    from kdstudio.workspace import pid_alive

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()))
    panel = window.show_panel("runs")
    panel.open_tensorboard()
    assert "No run reports to TensorBoard yet" in panel.message.text

    workspace_with_collection(ws.root)
    config = make_config(student(tmp_path), run={"name": "seen", "report_to": ["tensorboard"]})
    assert train(ws, config).status == "finished"
    assert panel.tensorboard_button.isVisible()
    with qtbot.waitSignal(panel.tensorboard.opened, timeout=120_000) as signal:
        panel.open_tensorboard()
    url = signal.args[0]
    assert opened == [url] and url.startswith("http://127.0.0.1:")
    query = f"{url}data/plugin/scalars/scalars?run=seen&tag=loss"
    with urllib.request.urlopen(query, timeout=30) as response:
        points = json.load(response)  # [[wall_time, step, value], ...]
    stored = dict(runs.metric_series(ws, runs.get_run(ws, "seen").id)["loss"])
    assert [p[1] for p in points] == sorted(stored)
    assert [p[2] for p in points] == pytest.approx([stored[s] for s in sorted(stored)], rel=1e-6)
    pid = panel.tensorboard.process.processId()
    assert pid_alive(pid)
    window.close()
    assert panel.tensorboard.process is None
    assert not pid_alive(pid)
