"""`kdstudio outputs check|judge|best|history ...`: automatic curation from the CLI (the
`outputs` group itself is declared in `kdstudio.commands.collect`)."""

from __future__ import annotations

import argparse
from typing import Any

from kdstudio.cli import add_config_options, config_from_args, stop_on_signals

METAVARS = {
    "check_spec": "SPEC",
    "threshold": "T",
    "timeout": "S",
    "workers": "N",
    "teacher": "NAME",
    "rubric": "FILE",
    "name": "C",
    "max_tokens": "N",
    "concurrency": "N",
    "budget": "USD",
    "max_retries": "N",
    "local_batch_size": "N",
    "by": "BY",
    "min_score": "S",
}


def register_outputs(osub: argparse._SubParsersAction) -> None:
    """Add the curation actions to `kdstudio outputs`."""
    from kdstudio.curate.config import BestConfig, CheckConfig, JudgeConfig

    _curator(
        osub,
        "check",
        CheckConfig,
        cmd_check,
        help="decide every answer with a program: your function or a built-in check",
        description="Run a check over every finished answer of a collection, in worker "
        "processes with a per-answer timeout: each answer is accepted or rejected with a "
        "score and a reason (an answer whose check raised, hung or returned garbage keeps "
        "that as its reason). Re-running the same check continues where it stopped.",
        flags={"check_spec": ["--check"]},
    )
    jg = _curator(
        osub,
        "judge",
        JudgeConfig,
        cmd_judge,
        help="have a teacher score every answer with a rubric",
        description="Ask a teacher to score each finished answer (0-10, with a reason) through "
        "the collection job: concurrency, retries, cache, resume and --budget as for `collect`. "
        "Its answers are kept as collection COLLECTION.judge.TEACHER.",
    )
    jg.add_argument(
        "--estimate", action="store_true", help="print what judging could cost and exit"
    )
    _curator(
        osub,
        "best",
        BestConfig,
        cmd_best,
        help="accept the best sample of each prompt, reject the others",
        description="Best-of-n over a collection collected with --samples N: the sample with "
        "the best score (a check's, a judge's, or the teacher's confidence) is accepted, the "
        "others are rejected with the reason.",
    )

    hs = osub.add_parser(
        "history", help="every decision on one answer: by whom, when, with score and reason"
    )
    hs.add_argument("collection")
    hs.add_argument("row", type=int, metavar="ROW", help="row number (# in `outputs list`)")
    hs.add_argument("--sample", type=int, default=0, metavar="N")
    hs.add_argument("--json", action="store_true", help="print one JSON document")
    hs.set_defaults(func=cmd_history)


def _curator(
    osub: argparse._SubParsersAction,
    name: str,
    section: Any,
    func: Any,
    *,
    help: str,
    description: str,
    flags: dict[str, list[str]] | None = None,
) -> argparse.ArgumentParser:
    """`outputs NAME COLLECTION` with one option per setting of the curator's config."""
    p = osub.add_parser(name, help=help, description=description)
    what = {"best": "the collection with several samples per prompt"}
    p.add_argument("collection", help=what.get(name, f"the collection to {name}"))
    add_config_options(p, section, skip=["collection"], flags=flags, metavars=METAVARS)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=func)
    return p


def _run(job: Any, config: Any, args: argparse.Namespace, ctx: Any, stopping: str) -> int:
    from kdstudio.events import CancelToken, ConsoleSink

    cancel = CancelToken()
    with stop_on_signals(cancel, stopping):
        summary = job(config, ctx.ws, ConsoleSink(), cancel)
    if args.json:
        ctx.print_json(summary.to_dict())
    return 0


def cmd_check(args: argparse.Namespace, ctx: Any) -> int:
    from kdstudio.curate.checks import run_check
    from kdstudio.curate.config import CheckConfig

    config = config_from_args(CheckConfig, args, collection=args.collection)
    return _run(run_check, config, args, ctx, "finishing the answers being checked")


def cmd_judge(args: argparse.Namespace, ctx: Any) -> int:
    from kdstudio.curate.config import JudgeConfig
    from kdstudio.curate.judge import estimate_judge, run_judge

    config = config_from_args(JudgeConfig, args, collection=args.collection)
    if args.estimate:
        estimate = estimate_judge(config, ctx.ws)
        if args.json:
            ctx.print_json(estimate.__dict__)
        else:
            print(estimate.line())
        return 0
    return _run(run_judge, config, args, ctx, "waiting for the verdicts in flight and storing them")


def cmd_best(args: argparse.Namespace, ctx: Any) -> int:
    from kdstudio.curate.best import best_of_n
    from kdstudio.curate.config import BestConfig

    config = config_from_args(BestConfig, args, collection=args.collection)
    return _run(best_of_n, config, args, ctx, "storing the prompts decided so far")


def cmd_history(args: argparse.Namespace, ctx: Any) -> int:
    import time

    from kdstudio.collect import store as outputs

    row_id = outputs.row_id_for_index(ctx.ws, args.collection, args.row)
    detail = outputs.get_item(ctx.ws, args.collection, row_id, args.sample)
    if args.json:
        ctx.print_json(
            {
                "collection": args.collection,
                "row": args.row,
                "sample": args.sample,
                "review": detail.item.review,
                "score": detail.item.score,
                "reason": detail.item.reason,
                "decider": detail.item.decider,
                "history": [p.to_dict() for p in detail.history],
            }
        )
        return 0
    if not detail.history:
        print(f"row {args.row} sample {args.sample}: no decision yet (pending)")
        return 0
    rows = [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.t)),
            p.decider,
            p.review + ("" if p.applied else " (a person's decision stood)"),
            "-" if p.score is None else f"{p.score:.2f}",
            p.reason or "",
        ]
        for p in detail.history
    ]
    ctx.print_table(["WHEN", "DECIDER", "REVIEW", "SCORE", "REASON"], rows)
    return 0
