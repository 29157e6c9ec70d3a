"""Shared fixtures. Core tests never import Qt; GUI tests use pytest-qt (offscreen)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _python_collects_again_after_a_gui_test():
    """The studio collects garbage on its GUI thread only (kdstudio.gui.collector); after a
    GUI test, collect now and give collection back to Python for the tests that follow."""
    yield
    collector = sys.modules.get("kdstudio.gui.collector")
    if collector is not None:
        collector.uninstall()


@pytest.fixture
def ws(tmp_path):
    """A fresh workspace in a temp folder."""
    from kdstudio.workspace import Workspace

    workspace = Workspace.open(tmp_path / "ws")
    yield workspace
    workspace.close()


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m kdstudio` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    def run(*args, input=None, env=None, workspace=None, timeout=120):
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        ws_args = ["--workspace", str(workspace or tmp_path / "ws")]
        return subprocess.run(
            [sys.executable, "-m", "kdstudio", *ws_args, *args],
            input=input,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def keyring_available() -> bool:
    from kdstudio.secrets import probe_backend

    return probe_backend(timeout=5).ok


def pytest_collection_modifyitems(config, items):
    """Tests marked `keyring` need the real Secret Service that scripts/test starts."""
    if not any(item.get_closest_marker("keyring") for item in items):
        return
    if keyring_available() or os.environ.get("KDSTUDIO_REQUIRE_KEYRING"):
        return  # scripts/test sets KDSTUDIO_REQUIRE_KEYRING: there a missing keyring fails
    reason = "no Secret Service running (scripts/test starts gnome-keyring in a private D-Bus)"
    for item in items:
        if item.get_closest_marker("keyring"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """A workspace with two tiny trained runs, `demo` (full) and `lo` (LoRA), whose teacher
    carries a planted key (support.runs.make_demo_workspace); shared by the eval and
    export tests, which only add evaluations and exports to it."""
    import torch
    from support.runs import make_demo_workspace

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only contend on a busy machine
    try:
        demo = make_demo_workspace(tmp_path_factory.mktemp("trained"))
    finally:
        torch.set_num_threads(threads)
    yield demo
    demo.ws.close()


@pytest.fixture(scope="session")
def kd_models(tmp_path_factory):
    """Tiny KD students and teachers with related tokenizers (tests/kd_support.py)."""
    from kd_support import make_kd_models

    return make_kd_models(tmp_path_factory.mktemp("kd_models"))
