"""`kdstudio eval RUN` and `kdstudio export RUN --out DIR`."""

from __future__ import annotations

import argparse
import re
from contextlib import contextmanager
from typing import Any

from kdstudio.cli import stop_on_signals

SHOW_DEFAULT = 3


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="compare a run's student with its teacher and its starting weights on held-out prompts",
    )
    ev.add_argument("run", metavar="RUN")
    ev.add_argument("--limit", type=int, metavar="N", help="at most N held-out prompts")
    ev.add_argument(
        "--checkpoint",
        default="last",
        metavar="last|best|STEP",
        help="which checkpoint (default: last)",
    )
    ev.add_argument(
        "--max-new-tokens", type=int, default=256, metavar="N", help="longest answer (default: 256)"
    )
    ev.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch")
    ev.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
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
    ex.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")
    ex.add_argument(
        "--merge-lora",
        action="store_true",
        help="LoRA runs: merge the adapter into the base weights (default: export the adapter)",
    )
    ex.add_argument(
        "--checkpoint",
        default="last",
        metavar="last|best|STEP",
        help="which checkpoint (default: last)",
    )
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
    from kdstudio.evaluate import METRICS, EvalConfig, eval_items, evaluate
    from kdstudio.events import CancelToken, ConsoleSink

    with _flags_in_messages("eval"):
        config = EvalConfig(
            run=args.run,
            limit=args.limit,
            checkpoint=args.checkpoint,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            device=args.device,
        )
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
        gap = row.get("gap_closed")
        rows.append(
            [name, *(_fmt(row[m]) for m in ("before", "after", "teacher"))]
            + ["n/a" if gap is None else f"{gap:.0%}"]
        )
    ctx.print_table(["METRIC", "BEFORE", "AFTER", "TEACHER", "GAP CLOSED"], rows)
    print(f"(before = the starting weights, after = {result.checkpoint}; {summary['note']})")
    for it in items[: max(args.show, 0)]:
        print(f"\n[{it.idx}] {_one_line(it.prompt)}")
        print(f"  teacher: {_one_line(it.teacher)}")
        print(f"  before : {_one_line(it.student_before)}")
        print(f"  after  : {_one_line(it.student_after)}")
    return 0


def cmd_export(args: argparse.Namespace, ctx) -> int:
    from kdstudio.events import CancelToken, ConsoleSink
    from kdstudio.export import ExportConfig, export

    with _flags_in_messages("export"):
        config = ExportConfig(
            run=args.run, out=args.out, checkpoint=args.checkpoint, merge_lora=args.merge_lora
        )
    cancel = CancelToken()
    with stop_on_signals(cancel, "the export (nothing will be left half-written)"):
        result = export(config, ctx.ws, ConsoleSink(quiet=args.json), cancel)
    if args.json:
        ctx.print_json(result.to_dict())
    return 0
