"""`teacher probe` against the loopback server: what a teacher can do, stored with it."""

from __future__ import annotations

import json

import pytest
from collect_support import KEY, KEY_ENV, add_teacher, files_containing
from support.openai_server import OpenAIServer

from kdstudio.teachers.probe import probe, summary_lines


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def test_probe_finds_logprobs_top_k_token_ids_and_latency():
    with OpenAIServer(api_key=KEY, token_ids=True, max_logprobs=10, latency=0.01) as server:
        from kdstudio.config import TeacherConfig

        teacher = TeacherConfig(
            name="v", base_url=server.url, model="teacher-1", key_source="env", key_env=KEY_ENV
        )
        caps = probe(teacher, KEY)
    assert caps["reachable"] and caps["auth"] == "ok" and caps["model_exists"]
    assert caps["logprobs"] is True and caps["top_logprobs"] == 10  # 20 was refused, 10 worked
    assert caps["token_ids"] is True
    assert caps["latency_ms"]["p50"] >= 10
    assert any("top 20" in e for e in caps["errors"])
    assert dict(summary_lines(caps))["token ids"] == "yes"


def test_probe_reports_a_model_that_refuses_logprobs():
    with OpenAIServer(logprobs=False) as server:
        from kdstudio.config import TeacherConfig

        caps = probe(TeacherConfig(name="r", base_url=server.url, model="teacher-1"), None)
    assert caps["model_exists"] and caps["logprobs"] is False and caps["token_ids"] is False
    assert caps["auth"] == "none"


def test_probe_reports_an_unknown_model():
    with OpenAIServer() as server:
        from kdstudio.config import TeacherConfig

        caps = probe(TeacherConfig(name="m", base_url=server.url, model="no-such-model"), None)
    assert caps["reachable"] and caps["model_exists"] is False and caps["logprobs"] is None


def test_probe_of_an_unreachable_teacher_says_so():
    from kdstudio.config import TeacherConfig

    caps = probe(
        TeacherConfig(name="x", base_url="http://127.0.0.1:9/v1", model="m"), None, timeout=2
    )
    assert caps["reachable"] is False and caps["errors"]


def test_cli_probe_stores_capabilities_and_a_wrong_key_fails_without_leaking(
    ws, run_cli, monkeypatch
):
    with OpenAIServer(api_key=KEY, token_ids=True) as server:
        add_teacher(ws, server, name="good")
        ws.close()
        ok = run_cli("teacher", "probe", "good", "--json", workspace=ws.root, env={KEY_ENV: KEY})
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["token_ids"] is True
        listed = json.loads(run_cli("teacher", "list", "--json", workspace=ws.root).stdout)
        assert listed[0]["capabilities"]["top_logprobs"] == 20
        wrong = "sk-wrong-probe-key-must-not-leak-77"
        bad = run_cli("teacher", "probe", "good", workspace=ws.root, env={KEY_ENV: wrong})
    assert bad.returncode == 1
    assert "rejected" in bad.stdout
    assert wrong not in bad.stdout + bad.stderr and wrong[:8] not in bad.stdout
    assert files_containing(ws.root, wrong) == [] and files_containing(ws.root, KEY) == []


def test_probe_notices_models_that_want_max_completion_tokens_and_collect_uses_it(ws):
    from collect_support import make_prompts

    from kdstudio.collect import CollectConfig, collect

    with OpenAIServer(api_key=KEY, reject_max_tokens=True) as server:
        teacher = add_teacher(ws, server)
        caps = probe(teacher, KEY)
        assert caps["max_tokens_param"] == "max_completion_tokens" and caps["logprobs"] is True
        ws.set_teacher_capabilities("t", caps)
        make_prompts(ws, n=3)
        summary = collect(CollectConfig(teacher="t", dataset="prompts", max_tokens=5), ws)
    assert summary.counts["done"] == 3


def test_probe_retries_a_transient_5xx_like_the_collection_does():
    """A passing 503 on the model list and a 500 on the first question are not findings:
    they used to read as "no /models" and "cannot ask the model" (so no logprobs probed)."""
    from kdstudio.config import TeacherConfig

    with OpenAIServer() as server:
        server.add_fault("503", endpoint="models", retry_after=0.05)
        server.add_fault("500")
        caps = probe(TeacherConfig(name="f", base_url=server.url, model="teacher-1"), None)
        status = server.stats()["status"]
    assert status.get("503") == 1 and status.get("500") == 1  # both happened, both retried
    assert caps["reachable"] and caps["model_exists"] is True and caps["models"]
    assert caps["logprobs"] is True and caps["latency_ms"]["min"] is not None
    assert not [e for e in caps["errors"] if "500" in e or "503" in e], caps["errors"]
