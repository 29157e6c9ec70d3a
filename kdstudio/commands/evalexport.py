"""`kdstudio eval RUN` and `kdstudio export RUN --out DIR`."""

from __future__ import annotations

import argparse
import re
from contextlib import contextmanager
from typing import Any

from kdstudio.cli import add_config_options, config_from_args, stop_on_signals
from kdstudio.evaluate import EvalConfig
from kdstudio.export import ExportConfig

SHOW_DEFAULT = 3
METAVARS = {
    "limit": "N",
    "checkpoint": "last|best|STEP",
    "max_new_tokens": "N",
    "batch_size": "N",
    "out": "DIR",
}


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="compare a run's student with its teacher and its starting weights on held-out prompts",
    )
    ev.add_argument("run", metavar="RUN")
    add_config_options(ev, EvalConfig, skip=("run",), metavars=METAVARS)
    ev.add_argument(
        "--show",
        type=int,
        default=SHOW_DEFAULT,
        metavar="N",
        help=f"print N prompts side by side (default: {SHOW_DEFAULT})",
    )
    ev.add_argument(
        "--json", action="store_true", help="print one JSON document (with every prompt)"
    )
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("export", help="write a run's student as a Hugging Face model folder")
    ex.add_argument("run", metavar="RUN")
    add_config_options(ex, ExportConfig, skip=("run",), metavars=METAVARS)
    ex.add_argument("--json", action="store_true", help="print one JSON document")
    ex.set_defaults(func=cmd_export)


@contextmanager
def _flags_in_messages(section: str) -> Any:
    """Config errors name the command-line flag (`--max-new-tokens`), not `eval.max_new_tokens`."""
    from kdstudio.errors import ConfigError

    try:
        yield
    except ConfigError as exc:
        text = re.sub(
            rf"\b{section}\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc)
        )
        raise ConfigError(text) from None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _one_line(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_eval(args: argparse.Namespace, ctx) -> int:
    from kdstudio.evaluate import METRICS, eval_items, evaluate
    from kdstudio.events import CancelToken, ConsoleSink

    with _flags_in_messages("eval"):
        config = config_from_args(EvalConfig, args, run=args.run)
    cancel = CancelToken()
    with stop_on_signals(cancel, "after this batch (what is done is saved)"):
        result = evaluate(config, ctx.ws, ConsoleSink(quiet=args.json), cancel)
    items = eval_items(ctx.ws, result.id)
    if args.json:
        ctx.print_json({**result.to_dict(), "items": [it.to_dict() for it in items]})
        return 0
    summary = result.summary
    print(
        f"evaluation {result.id} of {result.run} at {result.checkpoint}: "
        f"{summary['n']} held-out prompts ({summary['n_tokens']} teacher tokens scored)"
    )
    rows = []
    for name in METRICS:
        row = summary["metrics"][name]
        if row["before"] is None and row["after"] is None:
            continue  # kl_to_teacher / teacher_nll where the data has no way to them
        gap = row.get("gap_closed")
        rows.append(
            [name, *(_fmt(row[m]) for m in ("before", "after", "teacher"))]
            + ["n/a" if gap is None else f"{gap:.0%}"]
        )
    ctx.print_table(["METRIC", "BEFORE", "AFTER", "TEACHER", "GAP CLOSED"], rows)
    print(f"(before = the starting weights, after = {result.checkpoint}; {summary['note']})")
    reference = summary.get("reference")
    if reference:
        print(f"\nagainst the dataset's reference answers ({reference['n']} prompts have one):")
        ctx.print_table(
            ["METRIC", "BEFORE", "AFTER", "TEACHER"],
            [
                [name, *(_fmt(row[m]) for m in ("before", "after", "teacher"))]
                for name, row in reference["metrics"].items()
            ],
        )
    for it in items[: max(args.show, 0)]:
        print(f"\n[{it.idx}] {_one_line(it.prompt)}")
        print(f"  teacher: {_one_line(it.teacher)}")
        print(f"  before : {_one_line(it.student_before)}")
        print(f"  after  : {_one_line(it.student_after)}")
    return 0


def cmd_export(args: argparse.Namespace, ctx) -> int:
    from kdstudio.events import CancelToken, ConsoleSink
    from kdstudio.export import export

    with _flags_in_messages("export"):
        config = config_from_args(ExportConfig, args, run=args.run)
    cancel = CancelToken()
    with stop_on_signals(cancel, "the export (nothing will be left half-written)"):
        result = export(config, ctx.ws, ConsoleSink(quiet=args.json), cancel)
    if args.json:
        ctx.print_json(result.to_dict())
    return 0
