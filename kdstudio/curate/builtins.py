"""The built-in checks, as plain functions of an answer (and the dataset's reference):
`exact`, `numeric[:TOLERANCE]`, `regex:PATTERN`, `json-schema:FILE.json` (see
`kdstudio.curate.checks`). A worker process builds them with `builtin(spec)`; each returns
(passed, reason) or raises `NotCheckable` when the answer cannot be decided."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any


class NotCheckable(Exception):
    """An answer a built-in check cannot decide (e.g. its row has no reference answer)."""

    not_checkable = True  # the worker reports it as the reason, without "raised ..."


NUMBER = re.compile(r"[-+]?(?:\d[\d,_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _squash(text: str) -> str:
    return " ".join(text.split())


def _short(text: str, width: int = 40) -> str:
    text = _squash(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def last_number(text: str) -> float | None:
    """The last number written in `text` (1,234.5 and 1_000 read as numbers), or None."""
    for match in reversed(list(NUMBER.finditer(text or ""))):
        try:
            return float(match.group().replace(",", "").replace("_", ""))
        except ValueError:
            continue
    return None


def _reference(reference: Any) -> str:
    if reference is None or not str(reference).strip():
        raise NotCheckable("this row has no reference answer to compare with")
    return str(reference)


def check_exact(answer: str, reference: Any) -> tuple[bool, str]:
    expected = _squash(_reference(reference))
    if _squash(answer) == expected:
        return True, "matches the reference answer"
    return False, f"differs from the reference answer {_short(expected)!r}"


def check_numeric(answer: str, reference: Any, tolerance: float) -> tuple[bool, str]:
    expected = last_number(_reference(reference))
    if expected is None:
        raise NotCheckable("the reference answer has no number")
    got = last_number(answer)
    if got is None:
        return False, f"no number in the answer (expected {expected:g})"
    if abs(got - expected) <= tolerance * max(1.0, abs(expected)):
        return True, f"{got:g} equals the reference {expected:g}"
    return False, f"{got:g}, not the reference {expected:g}"


def check_regex(answer: str, pattern: re.Pattern[str]) -> tuple[bool, str]:
    if pattern.search(answer):
        return True, f"matches /{pattern.pattern}/"
    return False, f"does not match /{pattern.pattern}/"


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def check_json_schema(answer: str, validator: Any) -> tuple[bool, str]:
    fenced = _FENCE.search(answer)
    text = fenced.group(1) if fenced else answer
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return False, f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if not errors:
        return True, "JSON that matches the schema"
    first = errors[0]
    where = "/".join(str(p) for p in first.absolute_path) or "the document"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return False, f"{where}: {first.message}{more}"


def builtin(spec: dict[str, Any]) -> Callable[[str, str, Any], tuple[bool, str]]:
    """The built-in check a worker spec names, as (prompt, answer, reference) -> (ok, why)."""
    kind = spec["kind"]
    if kind == "exact":
        return lambda prompt, answer, reference: check_exact(answer, reference)
    if kind == "numeric":
        tol = float(spec["arg"])
        return lambda prompt, answer, reference: check_numeric(answer, reference, tol)
    if kind == "regex":
        pattern = re.compile(spec["target"])
        return lambda prompt, answer, reference: check_regex(answer, pattern)
    if kind == "json-schema":
        import jsonschema

        validator = jsonschema.validators.validator_for(spec["arg"])(spec["arg"])
        return lambda prompt, answer, reference: check_json_schema(answer, validator)
    raise ValueError(f"unknown built-in check {kind!r}")
