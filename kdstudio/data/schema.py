"""Row schemas: detect which shape a file's records have and turn each into a dataset row.

Recognised shapes (the `detected_format` of an import):

- ``openai-chat``: ``messages`` = [{"role", "content"}, ...] (OpenAI chat fine-tuning JSONL)
- ``sharegpt``: ``conversations`` = [{"from": "human"|"gpt"|"system", "value"}, ...]
- ``alpaca``: ``instruction`` (+ ``input``, ``output``, optional ``system``, ``history``)
- ``table``: any table with a prompt column (``prompt``, ``question``, ``query`` ...) and
  optionally a response, system and id column.

Every shape becomes the same row: ``messages`` (the prompt turns: system, earlier turns and
the final user turn, without the final assistant answer), ``prompt`` (the final user turn),
``system``, ``reference`` (the final assistant answer, when the file had one), ``row_key``
(the file's id) and ``meta`` (the record's other fields).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kdstudio.errors import UserError

SCHEMAS = ("openai-chat", "sharegpt", "alpaca", "table")

# The fields `--map FIELD=COLUMN` accepts, with what each means (shown in errors and help).
FIELDS = {
    "prompt": "the user's prompt (plain tables)",
    "system": "the system prompt",
    "response": "the answer to keep as the reference (aliases: reference, output)",
    "id": "a row id kept with the row",
    "messages": "a list of {role, content} turns (OpenAI chat)",
    "conversations": "a list of {from, value} turns (ShareGPT)",
    "instruction": "the instruction (Alpaca)",
    "input": "the input appended to the instruction (Alpaca)",
    "history": "earlier [user, assistant] pairs (Alpaca)",
    "meta": "an object of extra fields kept with the row",
}
FIELD_ALIASES = {"reference": "response", "output": "response", "answer": "response"}

# Column names that auto-detection tries, best first (compared case- and separator-blind).
CANDIDATES = {
    "messages": ["messages", "chat", "dialog", "dialogue"],
    "conversations": ["conversations", "conversation", "turns"],
    "prompt": [
        "prompt", "question", "query", "problem", "request", "user", "human", "input",
        "text", "source", "utterance", "message", "content",
    ],
    "response": [
        "response", "reference", "answer", "output", "completion", "target", "assistant",
        "gpt", "chosen", "solution", "reply",
    ],
    "system": ["system", "system_prompt", "systemprompt", "system_message", "persona"],
    "id": ["id", "_id", "uid", "uuid", "key", "row_id", "example_id", "sample_id", "custom_id"],
    "instruction": ["instruction"],
    "input": ["input", "context"],
    "history": ["history"],
    "meta": ["meta"],
}  # fmt: skip

ROLE_MAP = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """One record cannot become a row; the message says why (the caller adds file + line)."""


@dataclass
class Schema:
    """A detected (or mapped) shape: its name and which column holds which field."""

    name: str
    columns: dict[str, str]  # field -> column
    consumed: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        cols = ", ".join(f"{f}={c!r}" for f, c in self.columns.items())
        return f"{self.name} ({cols})"


def _norm(name: str) -> str:
    return re.sub(r"[\s\-_.]+", "_", str(name).strip().lower())


def normalize_mapping(mapping: dict[str, str] | None) -> dict[str, str]:
    """Check `--map` fields; returns {field: column} with aliases resolved."""
    out: dict[str, str] = {}
    for key, column in (mapping or {}).items():
        fld = FIELD_ALIASES.get(key.strip().lower(), key.strip().lower())
        if fld not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise UserError(f"--map {key}={column}: unknown field {key!r} (fields: {known})")
        if not str(column).strip():
            raise UserError(f"--map {key}=: the column name is empty")
        out[fld] = str(column)
    return out


def parse_map_args(items: Iterable[str]) -> dict[str, str]:
    """`["prompt=question", "response=answer"]` -> {"prompt": "question", ...}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--map {item!r}: expected FIELD=COLUMN, e.g. --map prompt=question")
        key, column = item.split("=", 1)
        out[key.strip()] = column.strip()
    return normalize_mapping(out)


_EXACT = {c for cands in CANDIDATES.values() for c in cands}


def _find(columns: dict[str, str], fld: str, taken: set[str]) -> str | None:
    """The column (original spelling) that holds `fld`: an exact candidate name first, else a
    name ending in one ('Gold Answer', 'user_prompt'), never a name another field owns."""
    for cand in CANDIDATES[fld]:
        col = columns.get(cand)
        if col is not None and col not in taken:
            return col
    if fld in ("messages", "conversations", "instruction", "input", "history", "meta"):
        return None
    for cand in CANDIDATES[fld]:
        for norm, col in columns.items():
            if col not in taken and norm not in _EXACT and norm.rsplit("_", 1)[-1] == cand:
                return col
    return None


def _turn_style(records: list[dict], column: str) -> str | None:
    """'role' or 'from' when `column` holds lists of turns; None otherwise."""
    for rec in records:
        value = rec.get(column)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, dict):
                if "role" in first:
                    return "role"
                if "from" in first:
                    return "from"
            return None
    return None


def detect(records: list[dict], mapping: dict[str, str] | None, forced: str | None) -> Schema:
    """The schema of `records` (the first few of a file). `forced` is a schema name or None.

    Raises UserError naming the columns found when no prompt can be located.
    """
    mapping = dict(mapping or {})
    seen: dict[str, str] = {}  # normalized -> original column name
    for rec in records:
        for key in rec:
            seen.setdefault(_norm(key), key)
    originals = set(seen.values())
    for fld, col in mapping.items():
        if col not in originals:
            raise UserError(
                f"--map {fld}={col}: there is no column {col!r} (columns: {_list(seen.values())})"
            )
    taken = set(mapping.values())

    def pick(fld: str) -> str | None:
        if fld in mapping:
            return mapping[fld]
        col = _find(seen, fld, taken)
        if col is not None:
            taken.add(col)
        return col

    name = forced
    chat_col = mapping.get("messages") or mapping.get("conversations")
    if name is None:
        if chat_col is None and "prompt" not in mapping and "instruction" not in mapping:
            for fld in ("messages", "conversations"):
                col = _find(seen, fld, taken)
                if col is not None and _turn_style(records, col):
                    chat_col = col
                    break
        if chat_col is not None:
            style = _turn_style(records, chat_col)
            name = "sharegpt" if style == "from" else "openai-chat"
        elif "prompt" not in mapping and (
            "instruction" in mapping or ("instruction" in seen and "prompt" not in seen)
        ):
            name = "alpaca"
        else:
            name = "table"

    columns: dict[str, str] = {}
    if name in ("openai-chat", "sharegpt"):
        chat_col = chat_col or pick("messages" if name == "openai-chat" else "conversations")
        if chat_col is None:
            chat_col = pick("conversations" if name == "openai-chat" else "messages")
        if chat_col is None or not _turn_style(records, chat_col):
            want = "messages" if name == "openai-chat" else "conversations"
            raise UserError(
                f"--format {name}: no column holds a list of turns (expected {want!r}; "
                f"columns: {_list(seen.values())}); use --map {want}=COLUMN"
            )
        taken.add(chat_col)
        columns["messages"] = chat_col
        # a prompt column beside the turns (as in kdstudio's CSV/Parquet exports) repeats the
        # last user turn: the turns win, and the column is not kept as an extra field
        col = pick("prompt")
        if col is not None:
            columns["prompt"] = col
    elif name == "alpaca":
        col = pick("instruction")
        if col is None:
            raise UserError(
                f"--format alpaca: no 'instruction' column (columns: {_list(seen.values())}); "
                "use --map instruction=COLUMN"
            )
        columns["instruction"] = col
        for fld in ("input", "history"):
            col = pick(fld)
            if col is not None:
                columns[fld] = col
    else:
        col = pick("prompt")
        if col is None:
            raise UserError(
                f"no prompt column found (columns: {_list(seen.values())}); say which column "
                f"holds the prompt with --map prompt=COLUMN, e.g. --map prompt={next(iter(seen.values()), 'text')}"
            )
        columns["prompt"] = col
        col = pick("history")
        if col is not None:
            columns["history"] = col
    for fld in ("response", "system", "id", "meta"):
        col = pick(fld)
        if col is not None:
            columns[fld] = col
    return Schema(name, columns, frozenset(columns.values()))


def _list(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(repr(n) for n in names) if names else "none"


# -- turning records into rows ----------------------------------------------------------------


def _text(value: Any, what: str) -> str | None:
    """A text field: str kept, numbers stringified, None/'' -> None; other types refused."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        raise RowError(f"{what} is a boolean, expected text")
    if isinstance(value, int | float):
        return str(value)
    raise RowError(f"{what} is {type(value).__name__}, expected text")


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(f"{where} has a {kind!r} content part; only text is supported")
        return "".join(parts)
    raise RowError(f"{where} content is {type(value).__name__}, expected text")


def _turns(value: Any, column: str) -> list[dict]:
    """Normalized turns [{"role", "content"}] from a list in OpenAI or ShareGPT style.

    The hot path of an import: a turn that is already {"role": known, "content": text} is
    kept as is, anything else is rebuilt (or refused with the reason).
    """
    if type(value) is not list:
        value = _turn_list(value, column)
    if not value:
        raise RowError(f"{column!r} is an empty list")
    out = []
    role_map = ROLE_MAP
    for turn in value:
        if type(turn) is not dict:
            i = _position(value, turn)
            raise RowError(f"turn {i} of {column!r} is {type(turn).__name__}, expected an object")
        raw_role = turn.get("role")
        if raw_role is None:
            raw_role = turn.get("from")
        role = role_map.get(raw_role) if type(raw_role) is str else None
        if role is None:
            role = _slow_role(raw_role, _position(value, turn))
        content = turn.get("content")
        if type(content) is str:
            if role == raw_role and len(turn) == 2:
                out.append(turn)
                continue
        else:
            if content is None and "content" not in turn:
                content = turn.get("value")
            if type(content) is not str:
                content = _content(content, f"turn {_position(value, turn)}")
        out.append({"role": role, "content": content})
    return out


def _position(turns: list, turn: Any) -> int:
    return next(i for i, t in enumerate(turns, 1) if t is turn)


def _turn_list(value: Any, column: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(f"{column!r} is text that is not a JSON list of turns") from None
    if value is None:
        raise RowError(f"{column!r} is missing")
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise RowError(f"{column!r} is {type(value).__name__}, expected a list of turns")
    return value


def _slow_role(raw_role: Any, i: int) -> str:
    role = ROLE_MAP.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
    if role is None:
        if raw_role is None:
            raise RowError(f"turn {i} has no 'role' (or 'from')")
        known = ", ".join(sorted(ROLE_MAP))
        raise RowError(f"turn {i} has unknown role {raw_role!r} (known roles: {known})")
    return role


def _history(value: Any, column: str) -> list[dict]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(f"{column!r} is not a JSON list of [user, assistant] pairs") from None
    out = []
    for i, pair in enumerate(value or [], 1):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise RowError(f"{column!r} entry {i} is not a [user, assistant] pair")
        out.append({"role": "user", "content": _text(pair[0], f"{column} {i}") or ""})
        out.append({"role": "assistant", "content": _text(pair[1], f"{column} {i}") or ""})
    return out


def _finish(turns: list[dict], system: str | None, reference: str | None):
    """(messages, prompt, system, reference) from the full list of turns."""
    if turns and turns[-1]["role"] == "assistant":
        reference = turns[-1]["content"]
        turns = turns[:-1]
    if system is not None and not (turns and turns[0]["role"] == "system"):
        turns = [{"role": "system", "content": system}, *turns]
    if not turns or turns[-1]["role"] not in ("user", "tool"):
        if not any(t["role"] == "user" for t in turns):
            raise RowError("the conversation has no user turn")
        raise RowError("the conversation does not end with a user turn before the answer")
    prompt = next(t["content"] for t in reversed(turns) if t["role"] == "user")
    if not prompt.strip():
        raise RowError("the prompt (the last user turn) is empty")
    first = turns[0]
    sys_text = first["content"] if first["role"] == "system" else None
    return turns, prompt, sys_text, reference


Converter = Callable[[dict], tuple]


def converter(schema: Schema) -> Converter:
    """A function record -> (messages, prompt, system, reference, row_key, meta).

    Raises RowError for a record that cannot become a row.
    """
    cols = schema.columns
    resp_col, sys_col, id_col = cols.get("response"), cols.get("system"), cols.get("id")
    meta_col, hist_col = cols.get("meta"), cols.get("history")
    consumed = schema.consumed

    def extras(rec: dict) -> dict | None:
        meta = None
        if meta_col is not None:
            meta = rec.get(meta_col)
            if isinstance(meta, str):
                try:
                    meta = json.loads(meta) if meta.strip() else None
                except ValueError:
                    meta = {meta_col: meta}
            if meta is not None and not isinstance(meta, dict):
                meta = {meta_col: meta}
        if len(rec) > len(consumed) or not consumed.issuperset(rec):
            other = {k: v for k, v in rec.items() if k not in consumed}
            if other:
                meta = {**other, **(meta or {})}
        return meta or None

    def common(rec: dict):
        reference = _text(rec.get(resp_col), resp_col) if resp_col else None
        system = _text(rec.get(sys_col), sys_col) if sys_col else None
        key = _text(rec.get(id_col), id_col) if id_col else None
        return reference, system, key

    if "messages" in cols:
        chat_col, p_col = cols["messages"], cols.get("prompt")

        def convert(rec: dict) -> tuple:
            reference, system, key = common(rec)
            value = rec.get(chat_col)
            if value is None and p_col is not None and rec.get(p_col):
                # a row of a mixed file with a plain prompt instead of turns
                value = [{"role": "user", "content": _text(rec[p_col], p_col)}]
            turns = _turns(value, chat_col)
            msgs, prompt, system, reference = _finish(turns, system, reference)
            return msgs, prompt, system, reference, key, extras(rec)

    elif "instruction" in cols:
        ins_col, in_col = cols["instruction"], cols.get("input")

        def convert(rec: dict) -> tuple:
            reference, system, key = common(rec)
            prompt = _text(rec.get(ins_col), ins_col) or ""
            extra = _text(rec.get(in_col), in_col) if in_col else None
            if extra:
                prompt = f"{prompt}\n\n{extra}" if prompt else extra
            if not prompt.strip():
                raise RowError(f"the prompt ({ins_col!r}) is empty")
            turns = _history(rec.get(hist_col), hist_col) if hist_col else []
            turns.append({"role": "user", "content": prompt})
            msgs, prompt, system, reference = _finish(turns, system, reference)
            return msgs, prompt, system, reference, key, extras(rec)

    else:
        p_col = cols["prompt"]

        def convert(rec: dict) -> tuple:
            reference, system, key = common(rec)
            prompt = _text(rec.get(p_col), p_col)
            if prompt is None or not prompt.strip():
                raise RowError(f"the prompt ({p_col!r}) is empty")
            turns = _history(rec.get(hist_col), hist_col) if hist_col else []
            if system is not None:
                turns.insert(0, {"role": "system", "content": system})
            turns.append({"role": "user", "content": prompt})
            return turns, prompt, system, reference, key, extras(rec)

    return convert
