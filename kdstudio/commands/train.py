"""`kdstudio train --config FILE [--set k=v ...] | --resume RUN` and `kdstudio runs ...`.

Ctrl-C (or SIGTERM) asks the run to stop: it finishes the current step, saves a checkpoint
and exits with 130; a second Ctrl-C aborts at once (the run then reads as interrupted and
resumes from its last checkpoint). A run that diverges exits with 1 after saying what
happened and what to change. Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import traceback
from typing import Any

from kdstudio.cli import stop_on_signals
from kdstudio.errors import Cancelled, JobFailed, UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a student on a collection of teacher outputs")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="a TOML training config")
    src.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="print no per-step metrics")
    p.add_argument(
        "--preflight",
        action="store_true",
        help="only check the config (student, data, method, memory) and print the report; "
        "creates no run; exit 2 when it finds problems",
    )
    p.add_argument("--json", action="store_true", help="with --preflight: print JSON")
    p.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list, inspect and preview training runs")
    rsub = r.add_subparsers(dest="runs_command", metavar="ACTION")
    ls = rsub.add_parser("list", help="list runs with their status")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    ls.set_defaults(func=cmd_list)

    show = rsub.add_parser("show", help="a run's status, config, metrics and checkpoints")
    show.add_argument("run")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(func=cmd_show)

    pv = rsub.add_parser(
        "preview", help="what the student sees: an example's rendered text and its loss tokens"
    )
    which = pv.add_mutually_exclusive_group(required=True)
    which.add_argument("run", nargs="?", help="a run (its config decides the rendering)")
    which.add_argument("--config", metavar="FILE", help="a TOML training config instead of a run")
    pv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pv.add_argument("--index", type=int, default=0, help="the N-th example of the collection")
    pv.add_argument("--tokens", action="store_true", help="also list every token")
    pv.add_argument("--json", action="store_true", help="print one JSON document")
    pv.set_defaults(func=cmd_preview)


def cmd_train(args: argparse.Namespace, ctx) -> int:
    from kdstudio.distill.config import load_config
    from kdstudio.events import CancelToken, ConsoleSink
    from kdstudio.model_folder import check_model_folder

    if args.preflight:
        return _preflight(args, ctx)
    if args.resume and args.set:
        raise UserError("--set cannot change a run being resumed (its config is fixed)")
    config = None if args.resume else load_config(args.config, args.set)
    if config is not None:  # said before torch and transformers load (seconds)
        check_model_folder(config.student.path, "student.path")
    from kdstudio.distill.trainer import Trainer, run_training

    rank = int(os.environ.get("RANK", "0"))
    sink = ConsoleSink(quiet=args.quiet) if rank == 0 else None
    cancel = CancelToken()
    if args.resume:
        trainer = Trainer.for_resume(ctx.ws, args.resume, sink, cancel)
    else:
        trainer = Trainer(config, ctx.ws, sink, cancel)
    with stop_on_signals(cancel, "after this step (saving a checkpoint)"):
        try:
            result = run_training(trainer)
        except Exception as exc:
            if sink is None or sink.failed is None or isinstance(exc, UserError | Cancelled):
                raise
            # the run's error was printed just above as it happened: end with where it
            # stands, not the same message again
            if os.environ.get("KDSTUDIO_DEBUG"):
                traceback.print_exc()
            name = trainer.config.run.name
            raise JobFailed(
                f"run {name} failed at step {trainer.step} (the error above); "
                f"`kdstudio train --resume {name}` continues it from its last checkpoint"
            ) from None
    if result.status == "stopped":
        raise Cancelled(
            f"run {result.run} stopped at step {result.step}; checkpoint {result.checkpoint}"
        )
    if result.status == "diverged":  # the whole story was printed as the run's error
        kept = result.checkpoint or "none (no checkpoint was confirmed good)"
        raise JobFailed(f"run {result.run} diverged; last good checkpoint: {kept}")
    return 0


def _preflight(args: argparse.Namespace, ctx) -> int:
    from kdstudio.distill.config import load_config
    from kdstudio.distill.preflight import preflight

    if args.resume:
        raise UserError("--preflight checks a new config: use it with --config FILE")
    report = preflight(load_config(args.config, args.set), ctx.ws)
    if args.json:
        ctx.print_json(report.to_dict())
    else:
        print(report.describe())
    return 0 if report.ok else 2


def _run_row(run: Any, ws: Any) -> list[Any]:
    from kdstudio.distill.runs import latest_metrics

    m = latest_metrics(ws, run.id)
    loss = f"{m['loss'][1]:.4f}" if "loss" in m else "-"
    ev = f"{m['eval_loss'][1]:.4f}" if "eval_loss" in m else "-"
    total = run.summary.get("total_steps", "?")
    return [run.name, run.status, run.method, f"{run.step}/{total}", loss, ev, run.collection]


def cmd_list(args: argparse.Namespace, ctx) -> int:
    from kdstudio.distill.runs import latest_metrics, list_runs

    items = list_runs(ctx.ws)
    if args.json:
        ctx.print_json(
            [
                {
                    **_brief(r),
                    "metrics": {k: v for k, (_, v) in latest_metrics(ctx.ws, r.id).items()},
                }
                for r in items
            ]
        )
        return 0
    if not items:
        print("no runs yet (start one with `kdstudio train --config FILE`)")
        return 0
    ctx.print_table(
        ["NAME", "STATUS", "METHOD", "STEP", "LOSS", "EVAL", "COLLECTION"],
        [_run_row(r, ctx.ws) for r in items],
    )
    return 0


def _brief(run: Any) -> dict[str, Any]:
    keys = (
        "name",
        "status",
        "method",
        "collection",
        "step",
        "checkpoint_step",
        "world_size",
        "error",
        "summary",
        "created_at",
        "updated_at",
    )
    return {k: getattr(run, k) for k in keys}


def cmd_show(args: argparse.Namespace, ctx) -> int:
    from kdstudio.config import dumps_toml
    from kdstudio.distill.checkpoint import list_checkpoints
    from kdstudio.distill.runs import get_run, latest_metrics, metric_series, run_collections

    run = get_run(ctx.ws, args.run)
    collections = run_collections(ctx.ws, run)
    checkpoints = list_checkpoints(ctx.ws, run.name)
    latest = latest_metrics(ctx.ws, run.id)
    if args.json:
        ctx.print_json(
            {
                **_brief(run),
                "config": run.config,
                "collections": collections,
                "eval_rows": run.eval_rows,
                "metrics": {k: {"step": s, "value": v} for k, (s, v) in latest.items()},
                "series": {
                    k: [[s, v] for s, v in pts] for k, pts in metric_series(ctx.ws, run.id).items()
                },
                "checkpoints": [c.to_dict() for c in checkpoints],
            }
        )
        return 0
    print(
        f"run {run.name}: {run.status} at step {run.step}"
        + (f" of {run.summary['total_steps']}" if "total_steps" in run.summary else "")
    )
    if run.error:
        print(f"error: {run.error}")
    print(f"method {run.method}, processes {run.world_size}")
    print(
        f"\n{'collections' if len(collections) > 1 else 'collection'}:"
        if collections
        else "\nno collection"
    )
    ctx.print_table(
        ["NAME", "TEACHER", "WEIGHT", "TRAIN", "EVAL", "SKIPPED"],
        [
            [
                c["name"],
                c["teacher"] or "-",
                "-" if c["weight"] is None else f"{c['weight']:g}",
                c.get("train", "-"),
                c.get("eval", "-"),
                c.get("skipped", "-"),
            ]
            for c in collections
        ],
    )
    if "train_examples" in run.summary:
        sm = run.summary
        print(
            f"examples: {sm['train_examples']} train, {sm['eval_examples']} held out, "
            f"{sm['dropped_too_long']} dropped (too long), skipped {sm.get('skipped', {})}"
        )
    if latest:
        print("\nlatest metrics:")
        ctx.print_table(
            ["NAME", "STEP", "VALUE"], [[k, s, f"{v:.6g}"] for k, (s, v) in sorted(latest.items())]
        )
    print("\ncheckpoints:" if checkpoints else "\nno checkpoints")
    if checkpoints:
        ctx.print_table(
            ["STEP", "EVAL LOSS", "BEST", "AFTER DIVERGING", "PATH"],
            [
                [
                    c.step,
                    "-" if c.eval_loss is None else f"{c.eval_loss:.4f}",
                    "*" if c.is_best else "",
                    "yes (never last or best)" if c.diverged else "",
                    c.path,
                ]
                for c in checkpoints
            ],
        )
    print("\nconfig:")
    print(dumps_toml(run.config).rstrip())
    return 0


def cmd_preview(args: argparse.Namespace, ctx) -> int:
    from kdstudio.distill.batches import load_student_tokenizer
    from kdstudio.distill.config import load_config
    from kdstudio.distill.runs import get_run

    if args.config:
        config = load_config(args.config, args.set)
    else:
        config = get_run(ctx.ws, args.run).train_config()
    tok, fallback = load_student_tokenizer(config.student.path, config.student.template)
    if args.index < 0:
        raise UserError(f"--index must be 0 or more; got {args.index}")
    from kdstudio.distill.plan import iter_run_examples, preview_run_example

    found = list(itertools.islice(iter_run_examples(config, ctx.ws), args.index + 1))
    if len(found) <= args.index:
        raise UserError(
            f"--index {args.index}: {config.data.label()} has only {len(found)} usable examples"
        )
    example = found[args.index]
    pv = preview_run_example(config, ctx.ws, tok, example, fallback=fallback)
    if args.json:
        ctx.print_json({"row_id": example.row_id, "sample": example.sample, **pv.to_dict()})
        return 0
    color = sys.stdout.isatty()
    marked = "".join(
        (f"\x1b[4;32m{t['text']}\x1b[0m" if color else f"[{t['text']}]") if t["loss"] else t["text"]
        for t in pv.tokens
    )
    print(
        f"example {args.index} (row {example.row_id}, sample {example.sample}); "
        f"template: {pv.template}; {pv.n_tokens} tokens, {pv.n_loss} with loss"
        + ("; truncated" if pv.truncated else "")
        + ("; DROPPED (no response left)" if pv.dropped else "")
        + (
            "; the teacher's own token sequence (sparse_kd trains on it, not on a"
            " re-tokenisation of its text)"
            if pv.sequence == "teacher"
            else ""
        )
    )
    print("loss tokens are " + ("underlined in green" if color else "in [brackets]") + ":\n")
    print(marked)
    if args.tokens:
        print()
        ctx.print_table(
            ["POS", "ID", "LOSS", "TOKEN"],
            [
                [i, t["id"], "yes" if t["loss"] else "", repr(t["text"])]
                for i, t in enumerate(pv.tokens)
            ],
        )
    return 0
