"""The `kdstudio` command: a headless front end over the same core as the window.

Sub-command groups live in `kdstudio.commands.*`, each with `register(subparsers)`.
Heavy libraries (torch, transformers, Qt) are imported inside the commands that use them,
so `kdstudio --help` answers at once.

Exit codes: 0 done; 2 bad input or usage; 1 failure at run time; 130 cancelled cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kdstudio import __version__
from kdstudio.config import Section, _base_type, field_default
from kdstudio.errors import Cancelled, KdError, UserError
from kdstudio.events import CancelToken

SectionT = TypeVar("SectionT", bound=Section)

COMMAND_MODULES = [
    "kdstudio.commands.teacher",
    "kdstudio.commands.data",
    "kdstudio.commands.train",
    "kdstudio.commands.collect",
    "kdstudio.commands.evalexport",
    "kdstudio.commands.demo",
]


@dataclass
class Context:
    """What every command gets: the workspace (opened on first use) and output helpers."""

    workspace_path: Path | None
    _ws: Any = field(default=None, repr=False)

    @property
    def ws(self):  # -> Workspace
        if self._ws is None:
            from kdstudio.workspace import Workspace

            self._ws = Workspace.open(self.workspace_path)
        return self._ws

    @staticmethod
    def print_json(doc: Any) -> None:
        json.dump(doc, sys.stdout, indent=2, default=str, ensure_ascii=False)
        sys.stdout.write("\n")

    @staticmethod
    def print_table(headers: list[str], rows: list[list[Any]]) -> None:
        cells = [[str(c) for c in r] for r in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
        print(line.rstrip())
        for r in cells:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kdstudio",
        description="A desktop studio for knowledge distillation of language models. "
        "Without a command, opens the studio window.",
    )
    parser.add_argument("--version", action="version", version=f"kdstudio {__version__}")
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        type=Path,
        default=None,
        help="workspace folder (default: $KDSTUDIO_WORKSPACE or the user data dir)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _open_window(ctx: Context) -> int:
    from kdstudio.gui.app import run_app

    return run_app(ctx.workspace_path)


def main(argv: list[str] | None = None) -> int:
    # kdstudio reports progress itself (console, window): Hugging Face's own bars ("Writing
    # model shards", "Loading weights") would interleave with it; read at their import
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(args.workspace)
    func = getattr(args, "func", None)
    try:
        if func is None:
            if args.command:  # a group given without its sub-command
                parser.parse_args([args.command, "--help"])
            return _open_window(ctx)
        return int(func(args, ctx) or 0)
    except Cancelled as exc:
        print(f"kdstudio: stopped: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("kdstudio: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"kdstudio: error: {exc}", file=sys.stderr)
        return 2
    except KdError as exc:
        print(f"kdstudio: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: say what broke
        if os.environ.get("KDSTUDIO_DEBUG"):
            traceback.print_exc()
        print(f"kdstudio: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("(set KDSTUDIO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        if ctx._ws is not None:
            ctx._ws.close()


def add_config_options(
    parser: argparse.ArgumentParser,
    section: type[Section],
    *,
    skip: Sequence[str] = (),
    flags: dict[str, Sequence[str]] | None = None,
    metavars: dict[str, str] | None = None,
) -> None:
    """One option per field of a config section, from the field's own metadata: its type,
    default, bounds, choices and help (so the CLI never re-declares them).

    `--max-tokens N` for `max_tokens`; `flags` gives other names (several are aliases),
    `metavars` the placeholders. A bool is a switch: `--batch-api` when it defaults to
    False, `--no-adaptive` when True, both `--token-ids/--no-token-ids` when unset (None).
    A list is a repeatable option. An option not given is absent from the namespace, so
    `config_from_args` leaves the config's own default in place.
    """
    flags, metavars = flags or {}, metavars or {}
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        if f.name in skip:
            continue
        tp, nullable = _base_type(hints[f.name])
        default = field_default(f)
        names = list(flags.get(f.name, ()))
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if tp is bool:
            if nullable:
                kw["action"] = argparse.BooleanOptionalAction
                names = names or [_flag(f.name)]
            elif default:
                kw["action"] = "store_false"
                names = [_flag(f"no_{f.name}"), *names]
            else:
                kw["action"] = "store_true"
                names = names or [_flag(f.name)]
        else:
            kw["metavar"] = metavars.get(f.name)
            kw["type"] = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
            if typing.get_origin(tp) is list:
                kw["action"] = "append"
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
                kw["metavar"] = None  # argparse lists them
            names = names or [_flag(f.name)]
        kw["required"] = default is dataclasses.MISSING
        repeat = kw.get("action") == "append"
        kw["help"] = _option_help(f, default, switch=tp is bool, repeat=repeat).replace("%", "%%")
        parser.add_argument(*names, **kw)


def config_from_args(section: type[SectionT], args: argparse.Namespace, **values: Any) -> SectionT:
    """The config for the options `add_config_options` declared (those given), plus `values`."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(section) if hasattr(args, f.name)
    }
    return section.from_dict({**given, **values})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_help(f: dataclasses.Field, default: Any, *, switch: bool, repeat: bool) -> str:
    """The field's help in the CLI's style (lower case, no full stop), then its bounds and
    default: `requests in flight at most (adapts down on 429; 1-256, default 8)`."""
    text = f.metadata.get("help", "").rstrip(".")
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):  # not USD, `code`
        text = text[0].lower() + text[1:]
    if switch:
        return f"do not {text}" if default is True else text
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    facts = []
    if lo is not None and hi is not None:
        facts.append(f"{lo}-{hi}")
    elif lo is not None:
        facts.append(f">= {lo}")
    if default not in (None, [], dataclasses.MISSING):
        facts.append(f"default: {default}")
    if repeat:
        facts.append("repeatable")
    if not facts:
        return text
    if text.endswith(")"):  # one pair of parentheses: "(unset: text only; 0-20)"
        return f"{text[:-1]}; {', '.join(facts)})"
    return f"{text} ({', '.join(facts)})"


@contextmanager
def stop_on_signals(cancel: CancelToken, message: str) -> Iterator[None]:
    """While a job runs: the first Ctrl-C (or SIGTERM) cancels it cleanly, saying `message`
    (the job finishes its step, row or batch and saves); a second Ctrl-C stops at once.

    A second signal within `SAME_CTRL_C_S` of the first counts as the same Ctrl-C: under
    torchrun the terminal's Ctrl-C reaches each worker once directly and once more through
    the launcher, which passes it on to its workers at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if cancel.cancelled and signum == signal.SIGINT:
            if first and now - first[0] < SAME_CTRL_C_S:
                return
            raise KeyboardInterrupt
        first.append(now)
        cancel.cancel("stopped by Ctrl-C" if signum == signal.SIGINT else "stopped by SIGTERM")
        print(f"\nkdstudio: stopping: {message}; Ctrl-C again to quit now", file=sys.stderr)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


SAME_CTRL_C_S = 1.0


def read_secret_from_stdin(what: str = "API key") -> str:
    """Read a secret from stdin (never argv): the first line, stripped."""
    if sys.stdin is None or sys.stdin.closed:
        raise UserError(
            f"--api-key-stdin was given but there is no standard input to read the {what} from"
        )
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{what}: ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise UserError(f"--api-key-stdin was given but standard input held no {what}")
    return value
