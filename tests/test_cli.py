"""The CLI contract: help is instant, bad input exits 2 with one clear line."""

from __future__ import annotations

import subprocess
import sys

from kdstudio import __version__


def test_help_answers_without_importing_heavy_libraries():
    """`kdstudio --help` answers at once because it loads none of the libraries that take
    time to import (that, not a wall-clock limit, is what keeps it fast on a busy machine)."""
    heavy = ("numpy", "torch", "transformers", "PySide6", "openai", "httpx2", "pyarrow", "keyring")
    code = (
        "import sys, contextlib, io\n"
        "from kdstudio.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_collect_options_are_the_config_fields_with_their_own_defaults_and_help(run_cli):
    import dataclasses

    from kdstudio.cli import build_parser, config_from_args
    from kdstudio.collect import CollectConfig

    args = build_parser().parse_args(["collect", "--teacher", "t", "--dataset", "d"])
    assert config_from_args(CollectConfig, args) == CollectConfig(teacher="t", dataset="d")
    args = build_parser().parse_args(
        ["collect", "--teacher", "t", "--dataset", "d", "--stop", "a", "--stop", "b"]
        + ["--max-tokens", "64", "--no-token-ids", "--fixed-concurrency", "--poll", "2"]
    )
    config = config_from_args(CollectConfig, args)
    assert (config.stop, config.max_tokens, config.token_ids) == (["a", "b"], 64, False)
    assert (config.adaptive, config.batch_poll_s) == (False, 2.0)
    text = " ".join(run_cli("collect", "--help").stdout.split())
    for f in dataclasses.fields(CollectConfig):
        words = " ".join(f.metadata["help"].rstrip(".").split()[1:])[:20]
        assert words in text, f"--help does not show {f.name}'s help"
    assert "answers per prompt (1-64, default: 1)" in text


def test_version(run_cli):
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"kdstudio {__version__}"


def test_python_m_kdstudio_is_the_same_command():
    out = subprocess.run(
        [sys.executable, "-m", "kdstudio", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "teacher" in out.stdout


def one_line_error(out, *fragments):
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.startswith("kdstudio")]
    assert len(lines) == 1, out.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_teacher_exits_2(run_cli):
    one_line_error(run_cli("teacher", "remove", "nope"), "no teacher named 'nope'")


def test_malformed_url_exits_2(run_cli):
    out = run_cli("teacher", "add", "t", "--base-url", "localhost:8000", "--model", "m")
    one_line_error(out, "--base-url 'localhost:8000' is not a valid URL")


def test_missing_key_on_stdin_exits_2(run_cli):
    out = run_cli(
        "teacher",
        "add",
        "t",
        "--base-url",
        "http://localhost/v1",
        "--model",
        "m",
        "--api-key-stdin",
        input="",
    )
    one_line_error(out, "standard input held no API key")


def test_duplicate_teacher_exits_2_and_keeps_the_first(run_cli):
    args = (
        "teacher",
        "add",
        "t",
        "--base-url",
        "http://localhost/v1",
        "--model",
        "m1",
        "--api-key-env",
        "T_KEY",
    )
    assert run_cli(*args).returncode == 0
    one_line_error(
        run_cli("teacher", "add", "t", "--base-url", "http://h/v1", "--model", "m2"),
        "already exists",
    )
    listed = run_cli("teacher", "list")
    assert "m1" in listed.stdout and "$T_KEY" in listed.stdout


def test_unknown_command_exits_2(run_cli):
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_workspace_env_var_is_honoured(tmp_path):
    import os

    env = {**os.environ, "KDSTUDIO_WORKSPACE": str(tmp_path / "envws")}
    subprocess.run(
        [sys.executable, "-m", "kdstudio", "teacher", "list"],
        env=env,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "envws" / "kdstudio.sqlite").exists()
