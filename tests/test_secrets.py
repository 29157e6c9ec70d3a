"""API keys live in the real OS keyring (gnome-keyring started by scripts/test), never on disk."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from kdstudio import secrets
from kdstudio.config import TeacherConfig

PLANTED = "sk-kdstudio-test-PLANTED-0123456789abcdef"


def files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                pass
    return hits


WS = f"test-ws-{os.getpid()}"  # a workspace id of these tests' own


def forget(*entries: tuple[str | None, str]) -> None:
    """Delete keyring entries a test made: (workspace id, teacher), or (None, teacher) for
    an entry stored the 0.1 way."""
    import keyring

    for ws_id, teacher in entries:
        user = secrets.account(ws_id, teacher) if ws_id else teacher
        try:
            keyring.delete_password(secrets.SERVICE, user)
        except Exception:  # noqa: BLE001 - already gone
            pass


@pytest.fixture
def teacher_name(request):
    name = f"test-{request.node.name[:40]}-{os.getpid()}".replace("_", "-")
    yield name
    forget((WS, name), (None, name), ("other-ws", name))


@pytest.mark.keyring
def test_a_key_round_trips_through_the_real_keyring(teacher_name):
    assert secrets.probe_backend().ok
    secrets.store_key(WS, teacher_name, PLANTED)
    assert secrets.read_key(WS, teacher_name) == PLANTED
    teacher = TeacherConfig(
        name=teacher_name, base_url="http://x/v1", model="m", key_source="keyring"
    )
    assert secrets.resolve_key(teacher, WS) == PLANTED
    assert secrets.delete_key(WS, teacher_name) is True
    assert secrets.read_key(WS, teacher_name) is None


@pytest.mark.keyring
def test_two_workspaces_keep_apart_keys_of_teachers_with_the_same_name(teacher_name):
    secrets.store_key(WS, teacher_name, PLANTED)
    secrets.store_key("other-ws", teacher_name, "sk-other-workspace-key")
    assert secrets.read_key(WS, teacher_name) == PLANTED
    assert secrets.read_key("other-ws", teacher_name) == "sk-other-workspace-key"
    assert secrets.delete_key("other-ws", teacher_name) is True
    assert secrets.read_key(WS, teacher_name) == PLANTED
    assert secrets.read_key("other-ws", teacher_name) is None


@pytest.mark.keyring
def test_a_key_stored_the_old_way_is_read_copied_and_never_deleted(teacher_name):
    import keyring

    keyring.set_password(secrets.SERVICE, teacher_name, PLANTED)  # as kdstudio 0.1 stored it
    assert secrets.read_key(WS, teacher_name) == PLANTED
    assert keyring.get_password(secrets.SERVICE, secrets.account(WS, teacher_name)) == PLANTED
    secrets.store_key("other-ws", teacher_name, "sk-new-key-of-another-workspace")
    assert secrets.delete_key("other-ws", teacher_name) is True
    assert keyring.get_password(secrets.SERVICE, teacher_name) == PLANTED  # the old entry stays
    assert secrets.read_key(WS, teacher_name) == PLANTED
    assert secrets.delete_key(WS, teacher_name) is True
    assert keyring.get_password(secrets.SERVICE, teacher_name) == PLANTED


@pytest.mark.keyring
def test_a_hanging_keyring_read_times_out_and_keeps_the_stored_key(teacher_name, monkeypatch):
    secrets.store_key(WS, teacher_name, PLANTED)
    backend = secrets._backend()
    real_get = backend.get_password
    release = threading.Event()

    def hanging_get(service, user):
        if user == secrets.account(WS, teacher_name):
            release.wait(30)
        return real_get(service, user)

    monkeypatch.setattr(type(backend), "get_password", lambda self, s, u: hanging_get(s, u))
    t0 = time.monotonic()
    with pytest.raises(secrets.KeyringUnavailable, match="did not answer within"):
        secrets.read_key(WS, teacher_name, timeout=0.5)
    assert time.monotonic() - t0 < 5
    release.set()
    monkeypatch.undo()
    assert secrets.read_key(WS, teacher_name) == PLANTED


@pytest.mark.keyring
def test_cli_keeps_the_key_out_of_every_file_and_output(run_cli, tmp_path):
    from kdstudio.workspace import Workspace

    name = f"cli-{os.getpid()}"
    ws = Workspace.open(tmp_path / "ws")
    ws_id = ws.id
    ws.close()
    add = run_cli(
        "teacher",
        "add",
        name,
        "--base-url",
        "https://api.example.com/v1",
        "--model",
        "gpt-x",
        "--api-key-stdin",
        input=PLANTED + "\n",
    )
    try:
        assert add.returncode == 0, add.stderr
        listed = run_cli("teacher", "list", "--json")
        assert listed.returncode == 0
        assert '"key_source": "keyring"' in listed.stdout
        for out in (add, listed):
            assert PLANTED not in out.stdout + out.stderr
        assert secrets.read_key(ws_id, name) == PLANTED
        assert files_containing(tmp_path, PLANTED) == []
        removed = run_cli("teacher", "remove", name)
        assert removed.returncode == 0
        assert secrets.read_key(ws_id, name) is None
    finally:
        forget((ws_id, name))


def test_without_a_keyring_backend_the_message_says_how_to_fix_it(run_cli, tmp_path):
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    out = run_cli(
        "teacher",
        "add",
        "t",
        "--base-url",
        "http://localhost:8000/v1",
        "--model",
        "m",
        "--api-key-stdin",
        input=PLANTED + "\n",
        env=env,
    )
    assert out.returncode == 1  # a failure at run time, not bad input (README: exit codes)
    assert "no usable OS keyring backend" in out.stderr
    assert "--api-key-env" in out.stderr
    assert PLANTED not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1
    assert "no teachers yet" in run_cli("teacher", "list", env=env).stdout


def test_a_key_from_an_environment_variable_is_read_at_run_time(monkeypatch):
    teacher = TeacherConfig(
        name="envt", base_url="http://x/v1", model="m", key_source="env", key_env="KD_TEST_KEY"
    )
    monkeypatch.delenv("KD_TEST_KEY", raising=False)
    with pytest.raises(secrets.KeyMissing, match="KD_TEST_KEY, which is not set"):
        secrets.resolve_key(teacher, WS)
    monkeypatch.setenv("KD_TEST_KEY", PLANTED)
    assert secrets.resolve_key(teacher, WS) == PLANTED


@pytest.mark.keyring
def test_cli_add_and_remove_in_another_workspace_leave_this_ones_key(run_cli, tmp_path):
    """Issue 12: `teacher add fake` in workspace B replaced A's key; `teacher remove fake`
    in B deleted it."""
    from support.openai_server import OpenAIServer

    from kdstudio.workspace import Workspace

    a, b = tmp_path / "A", tmp_path / "B"
    ids = []
    for root in (a, b):
        ws = Workspace.open(root)
        ids.append(ws.id)
        ws.close()
    key_a, key_b = "sk-cli-workspace-a-123", "sk-cli-workspace-b-456"
    with OpenAIServer(api_key=key_a) as server:
        try:
            args = ["teacher", "add", "fake", "--base-url", server.url, "--model", "teacher-1"]
            assert run_cli(*args, "--api-key-stdin", input=key_a, workspace=a).returncode == 0
            assert run_cli(*args, "--api-key-stdin", input=key_b, workspace=b).returncode == 0
            assert secrets.read_key(ids[0], "fake") == key_a
            assert run_cli("teacher", "remove", "fake", workspace=b).returncode == 0
            assert secrets.read_key(ids[1], "fake") is None
            probe = run_cli("teacher", "probe", "fake", "--json", workspace=a)
            assert probe.returncode == 0, probe.stderr
            assert '"auth": "ok"' in probe.stdout
        finally:
            forget((ids[0], "fake"), (ids[1], "fake"))


def test_collect_with_a_broken_keyring_exits_1_before_estimating_or_writing(run_cli, tmp_path):
    """The key is read before anything else: no "N requests to make" line, no collection
    left marked failed, exit 1 (a run-time failure) with one line."""
    from collect_support import make_prompts

    from kdstudio.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    make_prompts(ws, n=3)
    ws.add_teacher(
        TeacherConfig(name="kr", base_url="http://127.0.0.1:9/v1", model="m", key_source="keyring")
    )
    ws.close()
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    out = run_cli("collect", "--teacher", "kr", "--dataset", "prompts", env=env)
    assert out.returncode == 1, out.stderr
    assert "no usable OS keyring backend" in out.stderr
    assert "requests to make" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert run_cli("outputs", "list", "--json", env=env).stdout.strip() == "[]"


@pytest.mark.keyring
def test_header_credentials_go_to_the_keyring_and_url_passwords_are_never_shown(run_cli, tmp_path):
    """A key sent as a header (Azure's `api-key`) was stored in the workspace and printed by
    `teacher list --json`; a password in --base-url was printed by `teacher list` and the
    401 hint. Header credentials now go to the keyring (from stdin, never argv) and URLs are
    shown with the password masked."""
    from collect_support import make_prompts
    from support.openai_server import OpenAIServer

    from kdstudio.workspace import Workspace

    header_value, url_password = "hdr-SECRET-0123456789abcdef", "URLPASS-s3cr3t"
    ws = Workspace.open(tmp_path / "ws")
    make_prompts(ws, n=3)
    ws_id = ws.id
    ws.close()
    with OpenAIServer(header_key=("api-key", header_value)) as server:
        base = server.url.replace("http://", f"http://user:{url_password}@")
        add = ["teacher", "add", "az", "--base-url", base, "--model", "teacher-1"]
        on_argv = run_cli(*add, "--header", f"api-key={header_value}")
        assert on_argv.returncode == 2 and "--secret-header api-key" in on_argv.stderr
        assert header_value not in on_argv.stderr
        assert "no teachers yet" in run_cli("teacher", "list").stdout
        try:
            added = run_cli(*add, "--secret-header", "api-key", "--header", "X-Trace=on",
                            input=header_value + "\n")  # fmt: skip
            assert added.returncode == 0, added.stderr
            listed = run_cli("teacher", "list")
            as_json = run_cli("teacher", "list", "--json")
            doc = json.loads(as_json.stdout)[0]
            assert doc["secret_headers"] == ["api-key"] and doc["headers"] == {"X-Trace": "on"}
            assert doc["base_url"] == server.url.replace("http://", "http://user:***@")
            probed = run_cli("teacher", "probe", "az", "--json")
            assert probed.returncode == 0, probed.stderr
            assert json.loads(probed.stdout)["model_exists"] is True  # the header went along
            collected = run_cli("collect", "--teacher", "az", "--dataset", "prompts",
                                "--max-tokens", "4")  # fmt: skip
            assert collected.returncode == 0, collected.stderr
            wrong = "hdr-WRONG-9876543210fedcba"
            replaced = run_cli(*add, "--secret-header", "api-key", "--replace", input=wrong)
            assert replaced.returncode == 0, replaced.stderr
            refused = run_cli("collect", "--teacher", "az", "--dataset", "prompts", "--name",
                              "again", "--max-tokens", "5")  # fmt: skip
            assert refused.returncode == 1 and "rejected the API key" in refused.stderr
            assert "http://user:***@127.0.0.1" in refused.stderr
            outputs = [on_argv, added, listed, as_json, probed, collected, replaced, refused]
            for out in outputs:
                for secret in (header_value, url_password, wrong):
                    assert secret not in out.stdout + out.stderr, (secret, out.args)
            assert files_containing(tmp_path, header_value) == []
            assert files_containing(tmp_path, wrong) == []
            assert secrets.read_key(ws_id, "az") is None  # no API key: the header is the key
            assert run_cli("teacher", "remove", "az").returncode == 0
            import keyring

            account = secrets.header_account(ws_id, "az", "api-key")
            assert keyring.get_password(secrets.SERVICE, account) is None
        finally:
            secrets.delete_headers(ws_id, "az", ["api-key"])


def test_url_credentials_are_never_echoed_back_nor_stored_with_the_answers(run_cli, tmp_path):
    """The HTTP client sends a URL's user:password as a Basic Authorization header, and a
    server that echoes the header it got printed `Basic <base64 of user:password>` in the
    401 message; every answer's row and the collection kept the URL with its password; and
    a teacher whose password changed could not continue its collection ("collected from
    another model", with both URLs shown the same)."""
    import base64

    from collect_support import make_prompts
    from support.openai_server import OpenAIServer

    from kdstudio.workspace import Workspace

    old_pw, new_pw = "URLPASS-0ld-s3cr3t", "URLPASS-n3w-s3cr3t"
    ws = Workspace.open(tmp_path / "ws")
    make_prompts(ws, n=4)
    ws.close()
    env = {"TEACHER_KEY": "sk-test-0123456789"}
    with OpenAIServer(api_key="sk-test-0123456789") as keyed:
        base = keyed.url.replace("http://", f"http://user:{old_pw}@")
        add = ["teacher", "add", "t", "--model", "teacher-1", "--api-key-env", "TEACHER_KEY"]
        assert run_cli(*add, "--base-url", base, env=env).returncode == 0
        refused = run_cli("collect", "--teacher", "t", "--dataset", "prompts", env=env)
    assert refused.returncode == 1
    assert "Basic ***" in refused.stderr  # the server did echo what it got
    assert "carries credentials, which are sent as HTTP Basic authorization" in refused.stderr
    token = base64.b64encode(f"user:{old_pw}".encode()).decode()
    for secret in (old_pw, token, token[:8], f"user:{old_pw}"):
        assert secret not in refused.stdout + refused.stderr, secret

    with OpenAIServer() as open_server:  # behind a proxy that took the password
        for pw, limit in ((old_pw, ["--limit", "2"]), (new_pw, [])):
            base = open_server.url.replace("http://", f"http://user:{pw}@")
            added = run_cli(*add, "--base-url", base, "--replace", env=env)
            assert added.returncode == 0, added.stderr
            collected = run_cli("collect", "--teacher", "t", "--dataset", "prompts",
                                "--name", "rotated", *limit, env=env)  # fmt: skip
            assert collected.returncode == 0, collected.stderr  # the new password continues it
    ws = Workspace.open(tmp_path / "ws")
    try:
        assert (
            ws.query_one(
                "SELECT COUNT(*) FROM collection_items ci JOIN collections c"
                " ON c.id = ci.collection_id WHERE c.name='rotated' AND ci.status='done'"
            )[0]
            == 4
        )
        stored = [r[0] for r in ws.query("SELECT endpoint FROM responses")]
        stored += [r[0] for r in ws.query("SELECT teacher_endpoint FROM collections")]
        assert stored and all("user:***@127.0.0.1" in e for e in stored), stored
    finally:
        ws.close()
