"""Typed configuration: one dataclass per concern, validated on construction.

Each field is declared with `setting(default, help, ...)`; the help text feeds the CLI, the
GUI's tooltips and the README's config reference. Invalid values raise `ConfigError` with a
message that names the key and says how to fix it. Configs round-trip through TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

from kdstudio.errors import ConfigError


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with help text and simple bounds checked on construction."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) for an annotation like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def field_default(f: dataclasses.Field) -> Any:
    """A config field's default value (made fresh from a factory); MISSING when required."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


class Section:
    """Mixin for config dataclasses: validation, dict/TOML conversion, help text."""

    _section: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            tp, nullable = _base_type(hints[f.name])
            key = self._key(f.name)
            if value is None:
                if not nullable:
                    raise ConfigError(f"{key} must be set ({f.metadata.get('help', '')})")
                continue
            if dataclasses.is_dataclass(tp):
                if isinstance(value, dict):
                    setattr(self, f.name, tp.from_dict(value))
                continue
            value = self._coerce(key, value, tp)
            setattr(self, f.name, value)
            self._check_bounds(key, value, f.metadata)
        self.check()

    def check(self) -> None:
        """Cross-field checks of a section; override and raise ConfigError."""

    @classmethod
    def _key(cls, name: str) -> str:
        return f"{cls._section}.{name}" if cls._section else name

    @staticmethod
    def _coerce(key: str, value: Any, tp: Any) -> Any:
        origin = typing.get_origin(tp) or tp
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is Path or tp == "Path":
            return Path(value)
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            return list(value)
        if origin is dict and isinstance(value, dict):
            return value
        if (
            isinstance(origin, type)
            and not isinstance(value, origin)
            or (origin is int and isinstance(value, bool))
        ):
            name = getattr(origin, "__name__", str(origin))
            raise ConfigError(f"{key} must be a {name}, got {value!r}")
        return value

    @staticmethod
    def _check_bounds(key: str, value: Any, meta: Any) -> None:
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            # nan passes every `<` and `>` below; inf is no setting's meaning either
            raise ConfigError(f"{key} must be a finite number; got {value!r}")
        choices, lo, hi = meta.get("choices"), meta.get("min"), meta.get("max")
        if choices and value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        if lo is not None and value < lo:
            raise ConfigError(f"{key} must be >= {lo}; got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be <= {hi}; got {value!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = (
                    f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
                )
                raise ConfigError(f"unknown key {cls._key(key)!r}{hint}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Section):
                out[f.name] = value.to_dict()
            elif isinstance(value, Path):
                out[f.name] = str(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def help_rows(cls, prefix: str = "") -> list[tuple[str, str, str]]:
        """(key, default, help) for every field, nested sections flattened (for docs)."""
        rows = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            tp, _ = _base_type(hints[f.name])
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp):
                rows += tp.help_rows(prefix=f"{key}.")
                continue
            default = field_default(f)
            if default is dataclasses.MISSING:
                default = "(required)"
            help_text = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
            rows.append(
                (key, json.dumps(default) if default != "(required)" else default, help_text)
            )
        return rows


def _toml_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _toml_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_toml(data: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(_toml_value(data))


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (['optim', 'lr'], 0.0001); values are read as TOML, else as text."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"--set {item!r}: {key!r} is not a dotted key such as optim.lr")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `--set key=value` applied."""
    out = json.loads(json.dumps(data, default=str))
    for item in items:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


# -- teachers ------------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{kind} name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_url(key: str, url: str) -> str:
    parsed = urlparse(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"{key} {url!r} is not a valid URL: expected http(s)://host[:port]/path, "
            "e.g. https://api.openai.com/v1 or http://localhost:8000/v1"
        )
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{key} {url!r} has an invalid port") from None
    return url.rstrip("/")


@dataclass
class TeacherConfig(Section):
    """A teacher: an OpenAI-compatible endpoint or a local Hugging Face model folder.

    The API key itself is never here: it lives in the OS keyring (`key_source = "keyring"`)
    or in an environment variable whose *name* is `key_env`.
    """

    name: str = setting(help="A short name to refer to this teacher by.")
    kind: str = setting("openai", "Where the teacher runs.", choices=("openai", "local"))
    base_url: str | None = setting(
        None, "OpenAI-compatible base URL, e.g. https://api.openai.com/v1."
    )
    model: str | None = setting(None, "Model name at the endpoint (or a label for a local model).")
    path: str | None = setting(None, "Hugging Face model folder of a local teacher.")
    key_source: str = setting(
        "none", "Where the API key comes from.", choices=("keyring", "env", "none")
    )
    key_env: str | None = setting(None, "Name of the environment variable holding the key.")
    headers: dict[str, str] = setting(help="Extra HTTP headers.", default_factory=dict)
    secret_headers: list[str] = setting(
        help="Names of extra headers whose values are credentials (kept in the OS keyring).",
        default_factory=list,
    )
    price_in: float = setting(0.0, "USD per million input (prompt) tokens.", min=0)
    price_out: float = setting(0.0, "USD per million output (completion) tokens.", min=0)
    capabilities: dict[str, Any] | None = setting(None, "What `teacher probe` found.")

    def check(self) -> None:
        check_name("teacher", self.name)
        if self.kind == "openai":
            self.base_url = check_url("--base-url", self.base_url or "")
            if not self.model:
                raise ConfigError("--model is required for an OpenAI-compatible teacher")
        else:
            if not self.path:
                raise ConfigError(
                    "--path (a Hugging Face model folder) is required for a local teacher"
                )
        for header in self.secret_headers:
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
                raise ConfigError(f"header name {header!r} is not a valid HTTP header name")
        if self.key_source == "env" and not (
            self.key_env and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.key_env)
        ):
            raise ConfigError(f"--api-key-env {self.key_env!r} is not an environment variable name")

    @property
    def priced(self) -> bool:
        """Whether this teacher has prices (without them, cost is unknown, not zero)."""
        return bool(self.price_in or self.price_out)

    def cost(self, prompt_tokens: float, completion_tokens: float, *, batch: bool = False) -> float:
        """USD for these tokens at this teacher's prices; the Batch API charges half."""
        usd = (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6
        return usd * 0.5 if batch else usd

    def is_secret_header(self, name: str) -> bool:
        """Whether header `name` carries a credential (its value lives in the keyring)."""
        return name.lower() in {n.lower() for n in self.secret_headers}

    def secret_values(self, headers: dict[str, str]) -> list[str]:
        """What no message about this teacher may repeat, besides its API key: the values
        of its secret headers among `headers` (as sent) and the credentials in its URL."""
        from kdstudio.formatting import url_secrets

        values = [v for k, v in headers.items() if self.is_secret_header(k)]
        return [*values, *url_secrets(self.base_url)]

    def to_row(self) -> dict[str, Any]:
        """The workspace row: never the value of a secret header (those live in the keyring;
        a teacher whose secrets were resolved for a job stores without them)."""
        row = self.to_dict()
        row["headers"] = json.dumps(
            {k: v for k, v in row["headers"].items() if not self.is_secret_header(k)}
        )
        row["secret_headers"] = json.dumps(list(self.secret_headers))
        row["capabilities"] = json.dumps(row["capabilities"]) if row["capabilities"] else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TeacherConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in row.items() if k in names}
        data["headers"] = json.loads(data.get("headers") or "{}")
        data["secret_headers"] = json.loads(data.get("secret_headers") or "[]")
        data["capabilities"] = (
            json.loads(data["capabilities"]) if data.get("capabilities") else None
        )
        return cls(**data)

    def public_dict(self) -> dict[str, Any]:
        """What may be shown (`teacher list --json`, the window): the base URL without its
        password, header values that carry credentials as `***` (also any stored before
        kdstudio kept them in the keyring), secret headers by name only."""
        from kdstudio.formatting import url

        doc = self.to_dict()
        doc["base_url"] = url(self.base_url) if self.base_url else self.base_url
        doc["headers"] = {
            k: "***" if credential_header(k) else v
            for k, v in self.headers.items()
            if not self.is_secret_header(k)
        }
        return doc


CREDENTIAL_WORDS = ("auth", "key", "token", "secret", "password", "cookie", "session", "sig")


def credential_header(name: str) -> bool:
    """Whether an HTTP header's name says its value is a credential (`Authorization`,
    `api-key`, `X-Auth-Token`, `Cookie` ...): such a value never goes on a command line
    or into the workspace."""
    lowered = name.lower()
    return any(word in lowered for word in CREDENTIAL_WORDS)
