"""Export: the folder loads offline with the checkpoint's logits, carries a truthful model card
with no secret in it, and is written whole or not at all."""

from __future__ import annotations

import json
import os

import pytest
import torch
from train_support import single_thread

from kdstudio.distill import checkpoint as ckpt
from kdstudio.errors import Cancelled, UserError
from kdstudio.evaluate import EvalConfig, evaluate
from kdstudio.events import CancelToken, ListSink, Warning
from kdstudio.export import ExportConfig, endpoint_host, export

IDS = torch.tensor([[1, 4, 40, 41, 42, 43, 2, 5, 44, 45]])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from single_thread()  # tiny tensors: intra-op threads only add overhead


def _export(demo, out, sink=None, cancel=None, **kwargs):
    config = ExportConfig(run=kwargs.pop("run", "demo"), out=out, **kwargs)
    return export(config, demo.ws, sink or ListSink(), cancel or CancelToken())


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _load(path):
    from transformers import AutoModelForCausalLM

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def exported(trained_runs, tmp_path_factory):
    """`demo` evaluated, then exported with the planted key in the environment too."""
    evaluate(EvalConfig(run="demo", max_new_tokens=8), trained_runs.ws, ListSink(), CancelToken())
    os.environ["KD_PLANTED_KEY"] = trained_runs.secret
    try:
        return _export(trained_runs, tmp_path_factory.mktemp("exp") / "demo-model")
    finally:
        del os.environ["KD_PLANTED_KEY"]


def test_export_loads_offline_with_the_checkpoints_logits(trained_runs, exported):
    assert exported.kind == "model" and exported.step == 20
    names = set(exported.files)
    assert {"model.safetensors", "config.json", "README.md", "kdstudio.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    model = _load(exported.path)
    reference, tok = ckpt.load_student(trained_runs.ws, "demo", "last")
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=0, atol=1e-6)
    assert model.config.use_cache  # training saved it off; inference wants the cache

    from transformers import AutoTokenizer

    exported_tok = AutoTokenizer.from_pretrained(exported.path)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    assert exported_tok.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(
        messages, tokenize=False
    )


@pytest.mark.parametrize("run", ["demo", "lo"])  # a full model, and a LoRA adapter
def test_every_exported_file_and_folder_has_the_mode_new_ones_get_here(
    trained_runs, exported, tmp_path, run
):
    """The weights came out 0600 (safetensors writes through a private temporary file)
    while the rest were 0644: whoever may read the export reads all of it."""
    result = exported if run == "demo" else _export(trained_runs, tmp_path / "a", run=run)
    probe = tmp_path / "probe"
    probe.write_text("x")
    (tmp_path / "probe-dir").mkdir()
    file_mode, dir_mode = probe.stat().st_mode & 0o777, (tmp_path / "probe-dir").stat().st_mode
    modes = {p.name: p.stat().st_mode & 0o777 for p in [result.path, *result.path.rglob("*")]}
    expected = {
        p.name: (dir_mode & 0o777) if p.is_dir() else file_mode
        for p in [result.path, *result.path.rglob("*")]
    }
    assert modes == expected


def test_no_exported_file_contains_the_teachers_key(trained_runs, exported):
    secret = trained_runs.secret.encode()
    for path in exported.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret not in data, path.name
            assert b"kd-user" not in data and b"api-key" not in data, path.name
            assert b"Authorization" not in data and b"Bearer" not in data, path.name


def test_model_card_tells_where_the_model_comes_from(trained_runs, exported):
    card = (exported.path / "README.md").read_text()
    doc = json.loads((exported.path / "kdstudio.json").read_text())
    run = doc["run"]
    assert card.startswith("---\nlibrary_name: transformers")
    assert "| big-teacher | big-model-1 | api.example.com:8443 |" in card  # host, never URL
    assert doc["teachers"] == [
        {
            "name": "big-teacher",
            "kind": "openai",
            "model": "big-model-1",
            "host": "api.example.com:8443",
        }
    ]
    assert "demo-prompts.big-teacher" in card and "demo-prompts.jsonl" in card  # data
    assert "max_tokens=64" in card  # how the answers were requested
    assert run["method"] == "sft" and "`sft`" in card
    assert doc["config"]["optim"]["max_steps"] == 20 and "[optim]" in card  # resolved config
    assert doc["base_student"]["path"] in card
    assert "Exported: 20" in card and "Run started: 20" in card  # dates
    assert doc["train_metrics"]["eval_loss"]["step"] == 20 and "| eval_loss | 20 |" in card
    ev = doc["evaluation"]
    assert (
        ev["step"] == 20
        and "| rouge_l |" in card
        and "| before | after | teacher | gap closed |" in card
    )
    assert "1 by definition" in card
    terms = card.split("## Terms of the teachers' outputs")[1]
    assert "restrict" in terms and "compete" in terms
    assert "big-teacher (big-model-1 at api.example.com:8443)" in terms


def test_export_of_another_checkpoint_has_its_weights(trained_runs, tmp_path):
    result = _export(trained_runs, tmp_path / "step10", checkpoint="10")
    assert result.step == 10
    reference, _ = ckpt.load_student(trained_runs.ws, "demo", 10)
    torch.testing.assert_close(_logits(_load(result.path)), _logits(reference), rtol=0, atol=1e-6)
    doc = json.loads((result.path / "kdstudio.json").read_text())
    assert doc["checkpoint"]["name"] == "step-0000010"


def test_lora_run_exports_the_adapter_by_default(trained_runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = _export(trained_runs, tmp_path / "adapter", run="lo")
    assert result.kind == "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(result.files)
    assert "model.safetensors" not in result.files
    base_path = ckpt.base_student_path(trained_runs.ws, "lo")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), result.path)
    reference, _ = ckpt.load_student(trained_runs.ws, "lo", "last")
    torch.testing.assert_close(_logits(loaded.eval()), _logits(reference), rtol=0, atol=1e-6)
    # transformers' peft integration follows adapter_config.json to the base student
    torch.testing.assert_close(_logits(_load(result.path)), _logits(reference), rtol=0, atol=1e-6)
    card = (result.path / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card


def test_merge_lora_exports_a_plain_model_equal_to_base_plus_adapter(trained_runs, tmp_path):
    result = _export(trained_runs, tmp_path / "merged", run="lo", merge_lora=True)
    assert result.kind == "merged" and "adapter_config.json" not in result.files
    merged = _load(result.path)
    assert not hasattr(merged, "peft_config")
    reference, _ = ckpt.load_student(trained_runs.ws, "lo", "last")
    base, _ = ckpt.load_student(trained_runs.ws, "lo", "base")
    torch.testing.assert_close(_logits(merged), _logits(reference), rtol=1e-4, atol=1e-5)
    assert (_logits(merged) - _logits(base)).abs().max() > 1e-3  # the adapter did something


def test_merge_lora_on_a_full_run_warns_and_exports_the_model(trained_runs, tmp_path):
    sink = ListSink()
    result = _export(trained_runs, tmp_path / "full", sink, merge_lora=True)
    assert result.kind == "model"
    assert any("no LoRA to merge" in w.message for w in sink.of(Warning))


def test_a_non_empty_folder_is_never_overwritten(trained_runs, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"taken is not empty.*choose a new folder"):
        _export(trained_runs, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        _export(trained_runs, tmp_path / "a-file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "README.md" in _export(trained_runs, empty).files  # an empty folder is fine


def test_a_failed_or_stopped_export_leaves_nothing_behind(trained_runs, tmp_path, monkeypatch):
    import kdstudio.export as mod

    def broken(doc):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "model_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _export(trained_runs, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled, match="nothing was written"):
        _export(trained_runs, tmp_path / "out", cancel=cancel)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://user:sk-secret@api.example.com/v1?key=sk-secret", "api.example.com"),
        ("http://localhost:8000/v1", "localhost:8000"),
        ("local:/models/teacher", "local"),
        ("", "unknown"),
        ("not a url", "unknown"),
    ],
)
def test_endpoint_host_keeps_only_host_and_port(url, host):
    assert endpoint_host(url) == host


def test_cli_export_writes_once_then_refuses(trained_runs, run_cli, tmp_path, capsys):
    from kdstudio.cli import main

    out = tmp_path / "cli-model"
    args = ["--workspace", str(trained_runs.ws.root), "export", "demo", "--out", str(out)]
    assert main([*args, "--json"]) == 0  # in process: the heavy imports are paid once
    assert json.loads(capsys.readouterr().out)["kind"] == "model"
    assert (out / "model.safetensors").is_file()
    proc = run_cli("export", "demo", "--out", str(out), workspace=trained_runs.ws.root)
    assert proc.returncode == 2
    assert "is not empty" in proc.stderr and "Traceback" not in proc.stderr


def test_a_collection_removed_since_training_is_named_not_fatal(
    trained_runs, tmp_path, monkeypatch
):
    import kdstudio.export as mod
    from kdstudio.errors import NotFound

    def gone(ws, name):
        raise NotFound("collection", name, [])

    monkeypatch.setattr(mod, "_collection_record", gone)
    result = _export(trained_runs, tmp_path / "orphan")
    card = (result.path / "README.md").read_text()
    assert "| demo-prompts.big-teacher | removed from the workspace since training |" in card
    assert "No teacher is recorded" in card
