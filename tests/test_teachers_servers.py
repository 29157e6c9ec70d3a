"""Local servers as teachers: presets (one table for the dialog, the CLI and the README), the
served-model list, and telling vLLM, llama.cpp, Ollama, LM Studio and OpenAI apart from what
each says of itself (the loopback server mimics each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.openai_server import OpenAIServer

from kdstudio.config import TeacherConfig
from kdstudio.errors import UserError
from kdstudio.teachers.probe import probe, summary_lines
from kdstudio.teachers.servers import (
    CAPABILITIES_END,
    CAPABILITIES_START,
    PRESETS,
    capability_markdown,
    detect_server,
    list_models,
    preset,
    server_root,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("flavor", "server", "version"),
    [
        ("vllm", "vllm", "0.11.0"),
        ("llamacpp", "llamacpp", "b6500-loopback"),
        ("ollama", "ollama", "0.12.11"),
        ("lmstudio", "lmstudio", None),
        ("openai", "openai", "2020-10-01"),
        (None, "unknown", None),
    ],
)
def test_detect_server_from_what_each_says_of_itself(flavor, server, version):
    with OpenAIServer(flavor=flavor) as srv:
        found = detect_server(srv.url)
    assert found["server"] == server and found["version"] == version
    assert (found["evidence"] != "") == (server != "unknown")


def test_a_bare_version_endpoint_is_not_taken_for_vllm():
    """Only vLLM's own owned_by makes /version count (many servers have a /version)."""

    class VersionOnly(OpenAIServer):
        def _native(self, method, path):
            return {"version": "1.0"} if path == "/version" else None

    with VersionOnly() as srv:
        assert detect_server(srv.url)["server"] == "unknown"


def test_probe_names_the_server_and_lm_studio_gives_text_only():
    with OpenAIServer(flavor="ollama", models=("llama3.2", "qwen2.5")) as srv:
        caps = probe(TeacherConfig(name="o", base_url=srv.url, model="qwen2.5"), None)
    assert caps["server"]["server"] == "ollama" and caps["logprobs"] is True
    assert dict(summary_lines(caps))["server"] == "Ollama 0.12.11 (GET /api/version)"
    with OpenAIServer(flavor="lmstudio") as srv:
        caps = probe(TeacherConfig(name="l", base_url=srv.url, model="teacher-1"), None)
    assert caps["server"]["title"] == "LM Studio"
    assert caps["logprobs"] is False and caps["model_exists"] is True


def test_list_models_returns_what_the_server_serves_and_says_why_not():
    with OpenAIServer(flavor="llamacpp", models=("qwen2.5-0.5b-instruct-q4",)) as srv:
        assert list_models(srv.url) == ["qwen2.5-0.5b-instruct-q4"]
    with OpenAIServer(api_key="sk-right") as srv:
        with pytest.raises(UserError, match="refused the request \\(401\\)"):
            list_models(srv.url, "sk-wrong")
        assert list_models(srv.url, "sk-right") == ["teacher-1"]
    with pytest.raises(UserError, match="cannot reach http://127.0.0.1:9/v1/models"):
        list_models("http://127.0.0.1:9/v1", timeout=2)


def test_presets_fill_urls_and_the_readme_table_is_generated_from_them():
    assert preset("ollama").base_url == "http://localhost:11434/v1"
    assert server_root(preset("ollama").base_url) == "http://localhost:11434"
    assert [p.key for p in PRESETS] == ["openai", "vllm", "llamacpp", "ollama", "lmstudio"]
    with pytest.raises(UserError, match="unknown preset 'tgi'"):
        preset("tgi")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert CAPABILITIES_START in text, "the README lost its capability table markers"
    table = text.split(CAPABILITIES_START, 1)[1].split(CAPABILITIES_END, 1)[0].strip()
    assert table == capability_markdown(), "regenerate: python -m kdstudio.teachers.servers"


def test_cli_teacher_add_with_a_preset_fills_the_base_url(run_cli, tmp_path):
    with OpenAIServer(flavor="ollama", models=("llama3.2", "qwen2.5")) as srv:
        proc = run_cli("teacher", "add", "local", "--preset", "ollama", "--model", "qwen2.5")
        assert proc.returncode == 0, proc.stderr
        assert "http://localhost:11434/v1" in proc.stdout
        # a preset and another address (a server on another port or machine)
        proc = run_cli("teacher", "add", "o2", "--preset", "ollama", "--base-url", srv.url)
        assert proc.returncode == 2
        assert "--model is required" in proc.stderr and "llama3.2, qwen2.5" in proc.stderr
        proc = run_cli(
            "teacher",
            "add",
            "o2",
            "--preset",
            "ollama",
            "--base-url",
            srv.url,
            "--model",
            "qwen2.5",
        )
        assert proc.returncode == 0, proc.stderr
        proc = run_cli("teacher", "probe", "o2", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["server"]["server"] == "ollama"
    proc = run_cli("teacher", "presets", "--json")
    assert [p["key"] for p in json.loads(proc.stdout)] == [p.key for p in PRESETS]
    proc = run_cli("teacher", "add", "x", "--model", "m")
    assert proc.returncode == 2 and "--base-url or --preset" in proc.stderr
