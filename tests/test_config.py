"""Typed config sections: validation messages, TOML round trip, --set overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from kdstudio.config import Section, TeacherConfig, apply_overrides, dumps_toml, load_toml, setting
from kdstudio.errors import ConfigError


@dataclass
class Optim(Section):
    _section: ClassVar[str] = "optim"
    lr: float = setting(1e-4, "Peak learning rate.", min=0)
    schedule: str = setting("cosine", "Decay after warmup.", choices=("cosine", "linear"))
    steps: int | None = setting(None, "Optimizer steps.")


def test_values_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"optim.lr must be >= 0"):
        Optim(lr=-1.0)
    with pytest.raises(ConfigError, match=r"optim.schedule must be one of cosine, linear"):
        Optim(schedule="step")
    with pytest.raises(ConfigError, match=r"optim.steps must be a int"):
        Optim(steps="ten")


def test_unknown_keys_suggest_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'lr'\?\)"):
        Optim.from_dict({"lrr": 1})


def test_ints_are_accepted_for_floats_and_toml_round_trips(tmp_path):
    o = Optim.from_dict({"lr": 1, "steps": 5})
    assert o.lr == 1.0 and isinstance(o.lr, float)
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml({"optim": o.to_dict()}))
    assert Optim.from_dict(load_toml(path)["optim"]) == o


def test_overrides_parse_toml_values_and_fall_back_to_text():
    out = apply_overrides(
        {"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "run.name=my run", "run.compile=true"]
    )
    assert out == {"optim": {"lr": 3e-4}, "run": {"name": "my run", "compile": True}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_a_bad_toml_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlr = = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML: .*line 2"):
        load_toml(path)


def test_help_rows_cover_every_field():
    keys = [k for k, _, _ in Optim.help_rows("optim.")]
    assert keys == ["optim.lr", "optim.schedule", "optim.steps"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "teacher name 'bad name' is not valid"),
        ({"name": "t", "base_url": "ftp://x"}, "not a valid URL"),
        ({"name": "t", "base_url": "http://x:99999"}, "invalid port"),
        ({"name": "t", "base_url": "http://x", "model": ""}, "--model is required"),
        ({"name": "t", "kind": "local"}, "--path"),
    ],
)
def test_teacher_config_messages(kwargs, message):
    kwargs.setdefault("base_url", "http://localhost/v1")
    kwargs.setdefault("model", "m")
    with pytest.raises(ConfigError, match=message):
        TeacherConfig(**kwargs)
