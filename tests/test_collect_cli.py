"""`kdstudio collect` and `kdstudio outputs list` as a user runs them: subprocesses, real
HTTP, Ctrl-C, and kill -9 in the middle of a collection."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from collect_support import (
    KEY,
    KEY_ENV,
    add_teacher,
    answer_held,
    billed_per_prompt,
    claim_all,
    files_containing,
    make_prompts,
    other_collection,
)
from support.openai_server import OpenAIServer

from kdstudio.collect import CollectConfig, collect
from kdstudio.config import TeacherConfig
from kdstudio.workspace import Workspace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY) as s:
        yield s


def _spawn(workspace, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, KEY_ENV: KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "kdstudio", "--workspace", str(workspace), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _count(db_path, status):
    con = sqlite3.connect(db_path, timeout=10)
    try:
        return con.execute(
            "SELECT COUNT(*) FROM collection_items WHERE status=?", (status,)
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def _wait_for(db_path, status, at_least, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(db_path, status) >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError(f"never reached {at_least} {status} rows")


def test_collect_then_outputs_list_json(ws, server, run_cli):
    make_prompts(ws, n=5)
    add_teacher(ws, server)
    ws.close()
    env = {KEY_ENV: KEY}
    done = run_cli(
        "collect",
        "--teacher",
        "t",
        "--dataset",
        "prompts",
        "--max-tokens",
        "8",
        "--top-logprobs",
        "3",
        env=env,
        workspace=ws.root,
    )
    assert done.returncode == 0, done.stderr
    assert "5 requests to make" in done.stderr and "5 of 5 done" in done.stderr
    listed = run_cli("outputs", "list", "prompts.t", "--json", "--limit", "2", workspace=ws.root)
    doc = json.loads(listed.stdout)
    assert doc["total"] == 5 and len(doc["items"]) == 2
    assert doc["items"][0]["status"] == "done" and doc["items"][0]["has_logprobs"]
    table = run_cli("outputs", "list", "prompts.t", "--search", "prompt 3", workspace=ws.root)
    assert table.returncode == 0 and "1 of 1 matching" in table.stdout
    colls = json.loads(run_cli("outputs", "list", "--json", workspace=ws.root).stdout)
    assert colls[0]["name"] == "prompts.t" and colls[0]["counts"]["done"] == 5
    assert files_containing(ws.root, KEY) == []


def test_unknown_teacher_or_dataset_exits_2_with_one_line(ws, server, run_cli):
    make_prompts(ws, n=1)
    ws.close()
    result = run_cli("collect", "--teacher", "nobody", "--dataset", "prompts", workspace=ws.root)
    assert result.returncode == 2
    assert "no teacher named 'nobody'" in result.stderr and "Traceback" not in result.stderr
    bad = run_cli(
        "collect",
        "--teacher",
        "x",
        "--dataset",
        "prompts",
        "--concurrency",
        "999",
        workspace=ws.root,
    )
    assert bad.returncode == 2 and "collect.concurrency must be <= 256" in bad.stderr


def test_ctrl_c_stores_the_requests_in_flight_and_exits_130(ws, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, latency=0.4) as server:
        make_prompts(ws, n=40)
        add_teacher(ws, server)
        ws.close()
        proc = _spawn(
            ws.root, "collect", "--teacher", "t", "--dataset", "prompts", "--concurrency", "4"
        )
        _wait_for(ws.db_path, "done", 4)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        billed = server.stats()["billed_total"]
    assert proc.returncode == 130, err
    assert "stopped by Ctrl-C" in err
    assert _count(ws.db_path, "in_flight") == 0
    assert _count(ws.db_path, "done") == billed  # what was in flight came back and was stored


def test_kill_9_at_a_random_moment_then_resume_repeats_only_in_flight_requests(ws, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    n = 150
    with OpenAIServer(api_key=KEY, latency=0.03) as server:
        make_prompts(ws, n=n)
        add_teacher(ws, server)
        ws.close()
        proc = _spawn(
            ws.root,
            "collect",
            "--teacher",
            "t",
            "--dataset",
            "prompts",
            "--concurrency",
            "8",
            "--top-logprobs",
            "2",
        )
        _wait_for(ws.db_path, "done", random.randint(5, n // 2))
        time.sleep(random.random() * 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        in_flight = _count(ws.db_path, "in_flight")
        done_before = _count(ws.db_path, "done")
        assert 0 < done_before < n
        resumed_ws = Workspace.open(ws.root)
        summary = collect(CollectConfig(teacher="t", dataset="prompts", top_logprobs=2), resumed_ws)
        assert summary.counts["done"] == n
        assert summary.requests == n - done_before  # done rows were never requested again
        billed = billed_per_prompt(server)
    assert len(billed) == n
    repeated = sum(count - 1 for count in billed.values())
    assert repeated <= in_flight <= 8
    assert resumed_ws.integrity_check() == "ok"
    assert resumed_ws.query_one("SELECT COUNT(*) FROM responses")[0] == n
    resumed_ws.close()


@pytest.mark.keyring
def test_key_from_the_keyring_works_and_never_reaches_the_workspace(ws, run_cli):
    secret = "sk-keyring-test-9f8e7d6c5b4a3210"
    with OpenAIServer(api_key=secret) as server:
        make_prompts(ws, n=3)
        ws.close()
        name = f"kr-{os.getpid()}"
        added = run_cli(
            "teacher",
            "add",
            name,
            "--base-url",
            server.url,
            "--model",
            "teacher-1",
            "--api-key-stdin",
            input=secret + "\n",
            workspace=ws.root,
        )
        assert added.returncode == 0, added.stderr
        try:
            done = run_cli(
                "collect",
                "--teacher",
                name,
                "--dataset",
                "prompts",
                "--max-tokens",
                "4",
                workspace=ws.root,
            )
            assert done.returncode == 0, done.stderr
            assert secret not in done.stdout + done.stderr
        finally:
            run_cli("teacher", "remove", name, workspace=ws.root)
    assert files_containing(ws.root, secret) == []


def test_collect_exits_1_with_the_reason_when_every_request_failed(ws, run_cli):
    """An unreachable endpoint: every row fails after its retries; that is a failed job
    (exit 1, one last line saying why), not a finished one."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_prompts(ws, n=3)
    ws.add_teacher(TeacherConfig(name="gone", base_url=f"http://127.0.0.1:{port}/v1", model="m"))
    ws.close()
    args = ["--teacher", "gone", "--dataset", "prompts", "--max-retries", "1", "--json"]
    result = run_cli("collect", *args, workspace=ws.root)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kdstudio: failed: collection 'prompts.gone': none of 3 done")
    assert "connection error" in last and "kdstudio teacher probe gone" in last
    assert "Traceback" not in result.stderr and result.stdout == ""
    doc = json.loads(run_cli("outputs", "list", "--json", workspace=ws.root).stdout)
    assert doc[0]["status"] == "failed" and doc[0]["counts"]["failed"] == 3


def test_a_second_ctrl_c_while_requests_hang_quits_at_once_with_one_line(ws, monkeypatch):
    """The first Ctrl-C waits for the requests in flight; the second quits now. It used to
    print one asyncio CancelledError traceback per request in flight (325 lines for 4)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, latency=60) as server:
        make_prompts(ws, n=10)
        add_teacher(ws, server)
        ws.close()
        proc = _spawn(
            ws.root, "collect", "--teacher", "t", "--dataset", "prompts", "--concurrency", "4"
        )
        _wait_for(ws.db_path, "in_flight", 4)
        proc.send_signal(signal.SIGINT)
        line = proc.stderr.readline()
        while "stopping" not in line:
            line = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "CancelledError" not in err
    assert err.strip().splitlines() == ["kdstudio: interrupted"]
    again = Workspace.open(ws.root)
    assert again.integrity_check() == "ok"
    again.close()


def test_a_full_disk_during_collect_ends_with_one_line_and_keeps_every_stored_answer(
    ws, monkeypatch, tmp_path, capsys
):
    """The workspace on a small tmpfs that fills up mid-collection (where this machine can
    mount one; else a store that fails like a full disk at a random answer): one line,
    exit 1, no traceback; what was committed is intact and a re-run completes it."""
    from support.small_disk import mount_namespace, run_on_tmpfs

    monkeypatch.setenv(KEY_ENV, KEY)
    n = 60  # answers of ~30 kB each (200 tokens, 20 alternatives): the disk fills after ~20
    args = ["collect", "--teacher", "t", "--dataset", "prompts", "--max-tokens", "200"]
    args += ["--top-logprobs", "20", "--concurrency", "16"]
    with OpenAIServer(api_key=KEY, latency=0.05, min_tokens=150, max_tokens=200) as server:
        make_prompts(ws, n=n)
        add_teacher(ws, server)
        ws.close()
        prefix = mount_namespace()
        if prefix is not None:
            mnt, out = tmp_path / "mnt", tmp_path / "out"
            out.mkdir()
            size = f"{ws.db_path.stat().st_size // 1024 + 600}k"
            cli = " ".join([sys.executable, "-m", "kdstudio", "--workspace", f"{mnt}/ws", *args])
            script = f"cp -a {ws.root} {mnt}/ws && {cli}\nrc=$?\ncp -a {mnt}/ws {out}/ws\nexit $rc"
            result = run_on_tmpfs(prefix, mnt, size, script, env={"PYTHONPATH": ROOT})
            code, err, root = result.returncode, result.stderr, out / "ws"
        else:
            from kdstudio.cli import main
            from kdstudio.collect import ledger

            real, calls, fail_at = ledger.insert_response, [0], random.randint(5, n // 2)

            def full_disk(*a, **kw):
                calls[0] += 1
                if calls[0] >= fail_at:
                    raise sqlite3.OperationalError("database or disk is full")
                return real(*a, **kw)

            monkeypatch.setattr(ledger, "insert_response", full_disk)
            code = main(["--workspace", str(ws.root), *args])
            err, root = capsys.readouterr().err, ws.root
            monkeypatch.setattr(ledger, "insert_response", real)
        assert code == 1, err
        assert "Traceback" not in err and "CancelledError" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("kdstudio: failed: the disk is full"), err
        assert "free some space" in last
        after = Workspace.open(root)
        assert after.integrity_check() == "ok"
        done = _count(after.db_path, "done")
        assert 0 < done < n
        assert after.query_one("SELECT COUNT(*) FROM responses")[0] == done
        summary = collect(
            CollectConfig(teacher="t", dataset="prompts", max_tokens=200, top_logprobs=20), after
        )
        assert summary.counts["done"] == n and summary.requests <= n - done + 16
        after.close()


@pytest.mark.parametrize("change", ["model", "base-url"])
def test_a_changed_teacher_is_never_mixed_into_an_existing_collection(ws, run_cli, change):
    """After `teacher add t --replace` with another --model or --base-url, the same collect
    used to continue the collection with the new model: five answers from each. It is
    refused (exit 2) saying what changed, before anything is sent."""
    from kdstudio.resume import collect_conflict

    with OpenAIServer(models=("teacher-1", "teacher-2")) as one, OpenAIServer() as two:
        make_prompts(ws, n=10)
        ws.close()
        add = ["teacher", "add", "t", "--base-url", one.url, "--model", "teacher-1"]
        assert run_cli(*add, workspace=ws.root).returncode == 0
        collect_args = ["collect", "--teacher", "t", "--dataset", "prompts", "--max-tokens", "8"]
        first = run_cli(*collect_args, "--limit", "5", workspace=ws.root)
        assert first.returncode == 0, first.stderr
        new = {"model": ["--model", "teacher-2"], "base-url": ["--base-url", two.url]}[change]
        replaced = add[:3] + ["--base-url", one.url, "--model", "teacher-1", "--replace"]
        replaced[replaced.index(f"--{change}") + 1] = new[1]
        assert run_cli(*replaced, workspace=ws.root).returncode == 0
        sent_before = one.stats()["requests"].get("chat", 0) + two.stats()["requests"].get(
            "chat", 0
        )
        again = run_cli(*collect_args, workspace=ws.root)
        sent_after = one.stats()["requests"].get("chat", 0) + two.stats()["requests"].get("chat", 0)
    assert again.returncode == 2, again.stderr
    err = again.stderr.strip()
    assert len(err.splitlines()) == 1 and "was collected from another model" in err
    was, now = ("'teacher-1'", "'teacher-2'") if change == "model" else (one.url, two.url)
    assert f"{was} -> " in err.replace(f"'{one.url}'", one.url) and now in err
    assert sent_after == sent_before  # nothing was asked of the new model
    reopened = Workspace.open(ws.root)
    config = CollectConfig(teacher="t", dataset="prompts", max_tokens=8)
    assert "was collected from another model" in collect_conflict(reopened, config)
    done = reopened.query(
        "SELECT DISTINCT r.model, r.endpoint FROM collection_items ci"
        " JOIN responses r ON r.hash = ci.hash WHERE ci.status='done'"
    )
    assert [tuple(r) for r in done] == [("teacher-1", one.url)]
    reopened.close()


def test_two_collections_needing_the_same_requests_at_once_pay_for_each_once(ws, monkeypatch):
    """A dataset and its `data derive` subset collected at the same time by two processes:
    a request one has in flight is awaited by the other, an answer one got is reused by
    the other, and what each paid is its spend. Before, every shared prompt was billed
    twice and the second collection recorded it as cached at $0."""
    from kdstudio.collect import store as outputs
    from kdstudio.data.store import derive

    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY, latency=0.15) as server:
        make_prompts(ws, n=40)
        derive(ws, "prompts", "subset", drop=range(0, 40, 4))  # 30 of the 40, shared
        add_teacher(ws, server)
        ws.close()
        both = []
        for dataset in ("prompts", "subset"):
            both.append(
                _spawn(
                    ws.root, "collect", "--teacher", "t", "--dataset", dataset, "--concurrency", "4"
                )  # fmt: skip
            )
            _wait_for(ws.db_path, "in_flight", 1)
        errors = [p.communicate(timeout=120)[1] for p in both]
        billed = billed_per_prompt(server)
        stats = server.stats()
    assert [p.returncode for p in both] == [0, 0], errors
    assert len(billed) == 40 and stats["paid_twice"] == 0, billed
    after = Workspace.open(ws.root)
    spends = [outputs.get_collection(after, c).spend for c in ("prompts.t", "subset.t")]
    paid = after.query_one("SELECT SUM(cost) FROM responses")[0]
    assert sum(spends) == pytest.approx(paid)  # every answer paid for is some collection's spend
    assert after.query_one("SELECT COUNT(*) FROM request_claims")[0] == 0
    after.close()


def test_a_request_claimed_by_a_dead_collector_is_taken_over(ws, server):
    """kill -9 left claims behind: they count only while their collector lives."""
    make_prompts(ws, n=5)
    add_teacher(ws, server)
    other_collection(ws, 5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim_all(ws, "other", dead.pid)
    summary = collect(CollectConfig(teacher="t", dataset="prompts"), ws)
    assert summary.counts["done"] == 5 and summary.requests == 5
    assert set(billed_per_prompt(server).values()) == {1}


def test_a_request_a_live_collector_has_in_flight_is_awaited_not_paid_again(ws, server):
    """Another live collector holds prompts 3 and 4: this one asks for 0-2 only, waits, and
    takes 3 and 4 from the cache once they are answered there."""
    from kdstudio.events import RowDone

    make_prompts(ws, n=5)
    add_teacher(ws, server)
    other_collection(ws, 5)
    held = claim_all(ws, "other", os.getppid(), from_idx=3)  # alive, on this host
    three_done = threading.Event()

    class Watch:
        def emit(self, event):
            if isinstance(event, RowDone) and event.row == 2:
                three_done.set()

    box = {}
    job = threading.Thread(
        target=lambda: box.update(summary=collect(
            CollectConfig(teacher="t", dataset="prompts"), Workspace.open(ws.root), Watch()
        ))
    )  # fmt: skip
    job.start()
    assert three_done.wait(30)
    time.sleep(0.5)
    assert job.is_alive()  # waiting for the other collector's answers
    answer_held(ws, held)  # the other collector's answers arrive
    job.join(30)
    summary = box["summary"]
    assert summary.status == "done" and summary.requests == 3 and summary.cached == 2
    assert sorted(billed_per_prompt(server)) == ["prompt 0", "prompt 1", "prompt 2"]
    assert summary.spent == pytest.approx(sum(
        i.cost for i in outputs_items(ws, "prompts.t") if not i.cached
    ))  # fmt: skip


def outputs_items(ws, name):
    from kdstudio.collect import store as outputs

    return outputs.list_items(ws, name, limit=100)
