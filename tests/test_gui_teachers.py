"""Teachers panel: add through the dialog (key to the real keyring or an env var), edit, remove."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def panel(qtbot, ws, tmp_path):
    from support.gui import prepare_app

    from kdstudio.gui import errors, workers
    from kdstudio.gui.panels.teachers import TeachersPanel

    prepare_app(tmp_path / "settings")
    p = TeachersPanel()
    qtbot.addWidget(p)
    p.set_workspace(ws)
    p.show()
    qtbot.waitUntil(lambda: not p.running_jobs(), timeout=10000)  # the keyring probe
    yield p
    workers.stop_all(10)
    errors.uninstall()


def fill(dialog, *, name, url, model, key=None, env=None):
    dialog.name.setText(name)
    dialog.base_url.setText(url)
    dialog.model.setText(model)
    if env:
        dialog.key_env.setChecked(True)
        dialog.env_name.setText(env)
    elif key:
        dialog.key_keyring.setChecked(True)
        dialog.api_key.setText(key)
    else:
        dialog.key_none.setChecked(True)
    dialog.price_in.setValue(0.15)
    dialog.price_out.setValue(0.6)


def test_add_teacher_with_env_key_appears_in_the_table(qtbot, panel, ws):
    panel.add_teacher()
    fill(panel.dialog, name="mini", url="http://localhost:9/v1", model="m", env="MY_KEY")
    panel.dialog.try_accept()
    qtbot.waitUntil(lambda: "mini" in ws.teacher_names(), timeout=5000)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1, timeout=5000)
    t = ws.get_teacher("mini")
    assert (t.key_source, t.key_env, t.price_out) == ("env", "MY_KEY", 0.6)
    assert panel.selected().name == "mini"


def test_bad_url_is_shown_inline_in_the_dialog_and_nothing_is_saved(panel, ws):
    panel.add_teacher()
    fill(panel.dialog, name="bad", url="localhost:8000", model="m")
    panel.dialog.try_accept()
    assert panel.dialog.isVisible()
    assert "not a valid URL" in panel.dialog.message.text
    assert ws.teacher_names() == []


def test_duplicate_name_is_an_inline_message(qtbot, panel, ws):
    from kdstudio.config import TeacherConfig

    ws.add_teacher(TeacherConfig(name="dup", base_url="http://localhost:9/v1", model="m"))
    panel.refresh()
    panel.save_teacher(
        TeacherConfig(name="dup", base_url="http://localhost:9/v1", model="x"), None, replace=False
    )
    assert "already exists" in panel.message.text
    assert ws.get_teacher("dup").model == "m"


@pytest.mark.keyring
def test_add_teacher_stores_the_key_in_the_real_keyring_and_nowhere_else(qtbot, panel, ws):
    from kdstudio import secrets

    key = "sk-gui-test-7f3a9c1e55"
    assert panel.keyring_ok, panel.keyring_message
    panel.add_teacher()
    fill(panel.dialog, name="keyed", url="http://localhost:9/v1", model="m", key=key)
    panel.dialog.try_accept()
    qtbot.waitUntil(lambda: "keyed" in ws.teacher_names(), timeout=10000)
    try:
        assert secrets.read_key(ws.id, "keyed") == key
        assert ws.get_teacher("keyed").key_source == "keyring"
        for path in ws.root.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path
        panel.refresh()
        panel.select_teacher("keyed")
        panel.remove_teacher(panel.selected())
        qtbot.waitUntil(lambda: "keyed" not in ws.teacher_names(), timeout=10000)
        assert secrets.read_key(ws.id, "keyed") is None
    finally:
        secrets.delete_key(ws.id, "keyed")


@pytest.mark.keyring
def test_a_teacher_of_the_same_name_in_another_workspace_never_touches_this_ones_key(
    qtbot, panel, ws, tmp_path
):
    """Workspace A (`panel`) and B each have a teacher `fake`, with different keys; A's
    server accepts only A's key. Probing A works after B adds its `fake`, and after B
    removes it (issue 12: B's add used to replace A's key, and B's remove to delete it)."""
    from support.openai_server import OpenAIServer

    from kdstudio import secrets
    from kdstudio.gui.panels.teachers import TeachersPanel
    from kdstudio.workspace import Workspace

    key_a, key_b = "sk-workspace-a-11111111", "sk-workspace-b-22222222"
    ws_b = Workspace.open(tmp_path / "B")
    panel_b = TeachersPanel()
    qtbot.addWidget(panel_b)
    panel_b.set_workspace(ws_b)
    qtbot.waitUntil(lambda: not panel_b.running_jobs(), timeout=10000)

    def add(p, url, key):
        p.add_teacher()
        fill(p.dialog, name="fake", url=url, model="teacher-1", key=key)
        p.dialog.try_accept()
        qtbot.waitUntil(
            lambda: "fake" in p.ws.teacher_names() and not p.running_jobs(), timeout=10000
        )

    def probe_a():
        panel.refresh()
        panel.select_teacher("fake")
        panel.probe_selected()
        qtbot.waitUntil(lambda: not panel.running_jobs(), timeout=20000)
        return ws.get_teacher("fake").capabilities

    with OpenAIServer(api_key=key_a) as srv_a, OpenAIServer(api_key=key_b) as srv_b:
        try:
            add(panel, srv_a.url, key_a)
            assert probe_a()["auth"] == "ok"
            add(panel_b, srv_b.url, key_b)
            assert secrets.read_key(ws_b.id, "fake") == key_b
            assert probe_a()["auth"] == "ok", panel.message.text
            panel_b.refresh()
            panel_b.select_teacher("fake")
            panel_b.remove_teacher(panel_b.selected())
            qtbot.waitUntil(lambda: "fake" not in ws_b.teacher_names(), timeout=10000)
            assert secrets.read_key(ws_b.id, "fake") is None
            assert probe_a()["auth"] == "ok", panel.message.text
            assert secrets.read_key(ws.id, "fake") == key_a
        finally:
            for w in (ws, ws_b):
                secrets.delete_key(w.id, "fake")
            ws_b.close()


def test_a_local_teacher_folder_that_does_not_exist_is_refused_in_the_dialog(panel, ws, tmp_path):
    panel.add_teacher()
    dialog = panel.dialog
    dialog.kind.setCurrentIndex(dialog.kind.findData("local"))
    dialog.name.setText("big")
    dialog.path.setText(str(tmp_path / "moved-model"))
    dialog.try_accept()
    assert dialog.isVisible() and "big" not in ws.teacher_names()
    assert dialog.message.text == f"Model folder: folder {tmp_path / 'moved-model'} does not exist."
    (tmp_path / "empty").mkdir()
    dialog.path.setText(str(tmp_path / "empty"))
    dialog.try_accept()
    assert "has no config.json" in dialog.message.text and dialog.isVisible()


def test_a_url_password_is_masked_in_the_panel_and_kept_when_the_dialog_leaves_it(qtbot, panel, ws):
    from kdstudio.config import TeacherConfig

    real = "http://user:s3cr3t-PASS@localhost:9/v1"
    ws.add_teacher(
        TeacherConfig(name="pw", base_url=real, model="m", headers={"X-Api-Key": "plain-old"})
    )
    panel.refresh()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1, timeout=5000)
    panel.select_teacher("pw")
    shown = [panel.model.data(panel.model.index(0, c)) for c in range(panel.model.columnCount())]
    assert "http://user:***@localhost:9/v1" in shown and not any("s3cr3t" in str(s) for s in shown)
    detail = panel.detail.toPlainText()
    assert "s3cr3t" not in detail and "plain-old" not in detail and "X-Api-Key: ***" in detail
    panel.edit_selected()
    assert panel.dialog.base_url.text() == "http://user:***@localhost:9/v1"
    assert panel.dialog.build().base_url == real  # left as shown: the stored one is kept
    panel.dialog.base_url.setText("http://other:9/v1")
    assert panel.dialog.build().base_url == "http://other:9/v1"
