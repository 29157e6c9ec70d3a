"""A local Hugging Face teacher (a tiny random Llama built offline) on the collection path."""

from __future__ import annotations

import numpy as np
import pytest
from collect_support import make_prompts

from kdstudio.collect import CollectConfig, collect
from kdstudio.collect import store as outputs
from kdstudio.config import TeacherConfig


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from kdstudio.demo.tiny import make_model, make_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(root / "tok", ["prompt one two three café"], vocab_size=300)
    return make_model(root / "teacher", tok, layers=1, hidden=32)


def test_local_teacher_gives_text_and_top_k_logprobs_with_token_ids(ws, tiny_teacher):
    from transformers import AutoTokenizer

    make_prompts(ws, n=5)
    ws.add_teacher(TeacherConfig(name="loc", kind="local", path=str(tiny_teacher)))
    summary = collect(
        CollectConfig(
            teacher="loc",
            dataset="prompts",
            max_tokens=10,
            temperature=0.0,
            top_logprobs=4,
            local_batch_size=2,
        ),
        ws,
    )
    assert summary.counts["done"] == 5 and summary.spent == 0
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    for e in outputs.iter_examples(ws, "prompts.loc"):
        tl = e.logprobs
        assert tl.token_ids is not None and tl.top_ids is not None and tl.k == 4
        ids = [i for i in tl.token_ids if i != tok.eos_token_id]
        assert tok.decode(ids, skip_special_tokens=True) == e.response
        # greedy: the sampled token is the teacher's top-1, with the same logprob
        assert tl.top_ids[:, 0].tolist() == tl.token_ids
        assert np.allclose(tl.top_logprobs[:, 0], tl.logprobs, atol=1e-2)
        assert np.all(np.diff(tl.top_logprobs, axis=1) <= 1e-3)
        assert b"".join(tl.tokens[: len(ids)]).decode("utf-8", "replace") == e.response


def test_local_answers_are_cached_like_remote_ones(ws, tiny_teacher):
    make_prompts(ws, n=3)
    ws.add_teacher(TeacherConfig(name="loc", kind="local", path=str(tiny_teacher)))
    config = CollectConfig(teacher="loc", dataset="prompts", max_tokens=6, temperature=0.0)
    collect(config, ws)
    again = collect(config, ws)
    assert again.requests == 0 and again.counts["done"] == 3


@pytest.mark.slow  # two CLI processes that load transformers
def test_cli_add_local_checks_the_folder_and_probe_finds_ids(ws, run_cli, tiny_teacher, tmp_path):
    import json

    ws.close()
    missing = run_cli("teacher", "add-local", "bad", "--path", str(tmp_path), workspace=ws.root)
    assert missing.returncode == 2 and "has no config.json" in missing.stderr
    added = run_cli("teacher", "add-local", "loc", "--path", str(tiny_teacher), workspace=ws.root)
    assert added.returncode == 0, added.stderr
    probed = run_cli("teacher", "probe", "loc", "--json", workspace=ws.root)
    assert probed.returncode == 0, probed.stderr
    caps = json.loads(probed.stdout)
    assert caps["token_ids"] is True and caps["logprobs"] is True and caps["device"] == "cpu"


def test_a_changed_model_folder_is_asked_again(ws, tiny_teacher, tmp_path):
    import os
    import shutil

    folder = shutil.copytree(tiny_teacher, tmp_path / "teacher")
    make_prompts(ws, n=2)
    ws.add_teacher(TeacherConfig(name="loc", kind="local", path=str(folder)))
    config = CollectConfig(teacher="loc", dataset="prompts", max_tokens=4, temperature=0.0)
    collect(config, ws)
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, (1, 1))  # new weights in the same folder
    again = collect(CollectConfig(**{**config.to_dict(), "name": "after-update"}), ws)
    assert again.requests == 2 and again.cached == 0
