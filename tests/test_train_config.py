"""The training config: the issue's keys, validation messages, overrides, resolution."""

from __future__ import annotations

import pytest
from train_support import config_dict, write_toml

from kdstudio.distill.config import TrainConfig, load_config
from kdstudio.errors import ConfigError

ISSUE_KEYS = [
    "student.path",
    "data.collection",
    "data.eval_fraction",
    "data.max_length",
    "distill.method",
    "distill.teacher",
    "distill.divergence",
    "distill.beta",
    "distill.temperature",
    "distill.kd_weight",
    "distill.tail",
    "optim.max_steps",
    "optim.epochs",
    "optim.batch_size",
    "optim.grad_accum",
    "optim.lr",
    "optim.warmup",
    "optim.schedule",
    "optim.weight_decay",
    "optim.clip",
    "run.name",
    "run.seed",
    "run.checkpoint_every",
    "run.eval_every",
    "run.log_every",
    "run.precision",
    "run.device",
    "run.gradient_checkpointing",
    "run.compile",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
]


def test_every_key_the_issue_names_is_documented_with_help():
    rows = {key: help_text for key, _default, help_text in TrainConfig.help_rows()}
    for key in ISSUE_KEYS:
        assert key in rows, key
        assert len(rows[key]) > 10, key


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("optim", {"lrr": 1e-3}, "unknown key 'optim.lrr' (did you mean 'lr'?)"),
        ("optim", {"lr": "fast"}, "optim.lr must be a float"),
        ("optim", {"batch_size": 0}, "optim.batch_size must be >= 1"),
        ("optim", {"max_steps": 0, "epochs": 0}, "set optim.max_steps or optim.epochs"),
        ("run", {"precision": "fp8"}, "run.precision must be one of auto, bf16, fp16, fp32"),
        ("run", {"name": "bad name!"}, "run name 'bad name!' is not valid"),
        ("distill", {"method": "dense_kd"}, "distill.teacher must name a local teacher"),
        ("distill", {"divergence": "kl"}, "distill.divergence must be one of fkl, rkl"),
        ("distill", {"beta": 1.5}, "distill.beta must be <= 1.0"),
        ("data", {"eval_fraction": 0.9}, "data.eval_fraction must be <= 0.5"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, section, values, message):
    path = write_toml(tmp_path / "c.toml", config_dict(tmp_path, **{section: values}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_tables_say_what_is_needed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[student]\npath = "s"\n')
    with pytest.raises(ConfigError, match=r"no \[data\] table"):
        load_config(path)


def test_overrides_apply_and_paths_resolve_relative_to_the_file(tmp_path):
    data = config_dict(tmp_path)
    data["student"]["path"] = "models/student"
    (tmp_path / "conf").mkdir()
    path = write_toml(tmp_path / "conf" / "c.toml", data)
    config = load_config(path, ["optim.lr=1e-4", "run.name=other", "lora.r=4"])
    assert config.optim.lr == 1e-4
    assert config.run.name == "other"
    assert config.lora is not None and config.lora.r == 4
    assert config.student.path == str((tmp_path / "conf" / "models" / "student").resolve())


def test_lora_is_off_unless_its_table_is_given_and_round_trips(tmp_path):
    config = TrainConfig.from_dict(config_dict(tmp_path))
    assert config.lora is None
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    named = TrainConfig.from_dict({**config_dict(tmp_path), "run": {}}).resolved()
    assert named.run.name.startswith("tiny-")


def test_the_readme_reference_is_generated_from_the_settings():
    from train_support import ROOT

    from kdstudio.distill.config import REFERENCE_END, REFERENCE_START, reference_markdown

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if REFERENCE_START not in text:
        pytest.skip("README has no training config reference")
    table = text.split(REFERENCE_START, 1)[1].split(REFERENCE_END, 1)[0].strip()
    assert table == reference_markdown(), "regenerate: python -m kdstudio.distill.config"


def test_the_cli_refuses_a_bad_config_with_exit_2_and_one_line(tmp_path, capsys):
    from kdstudio.cli import main

    path = write_toml(tmp_path / "c.toml", config_dict(tmp_path, optim={"lr": -1.0}))
    code = main(["--workspace", str(tmp_path / "ws"), "train", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "optim.lr must be >= 0.0" in err and str(path) in err
    code = main(["--workspace", str(tmp_path / "ws"), "train", "--resume", "x", "--set", "a=1"])
    assert code == 2 and "--set cannot change a run being resumed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("where", "text", "key"),
    [
        ("file", "lr = nan", "optim.lr"),
        ("file", "lr = inf", "optim.lr"),
        ("file", "betas = [0.9, -inf]", "optim.betas"),
        ("set", "optim.clip=nan", "optim.clip"),
        ("set", "distill.temperature=+inf", "distill.temperature"),
    ],
)
def test_non_finite_numbers_are_bad_input_at_load_with_exit_2(tmp_path, capsys, where, text, key):
    """nan passes every `<`/`>` bound check, so it used to reach the optimizer."""
    from kdstudio.cli import main

    path = write_toml(tmp_path / "c.toml", config_dict(tmp_path))
    overrides = []
    if where == "file":
        content = path.read_text(encoding="utf-8").replace("[optim]\n", f"[optim]\n{text}\n")
        path.write_text(content.replace("lr = 0.003\n", "", 1 if "lr" in text else 0))
    else:
        overrides = ["--set", text]
    with pytest.raises(ConfigError, match=rf"{key} must be a finite number"):
        load_config(path, overrides[1:])
    code = main(["--workspace", str(tmp_path / "ws"), "train", "--config", str(path), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and f"{key} must be a finite number" in err


def test_the_collect_and_teacher_options_refuse_non_finite_numbers(tmp_path, capsys):
    from kdstudio.cli import main

    ws = ["--workspace", str(tmp_path / "ws")]
    code = main([*ws, "collect", "--teacher", "t", "--dataset", "d", "--budget", "nan"])
    assert code == 2 and "collect.budget must be a finite number" in capsys.readouterr().err
    url = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    code = main([*ws, "teacher", "add", "t", *url, "--price-in", "nan"])
    assert code == 2 and "price_in must be a finite number" in capsys.readouterr().err
