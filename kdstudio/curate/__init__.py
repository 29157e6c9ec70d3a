"""Automatic curation of a collection's answers, never destructive.

    run_check(CheckConfig(collection="prompts.gpt", check_spec="checks.py:valid"), ws, sink)
    run_judge(JudgeConfig(collection="prompts.gpt", teacher="claude"), ws, sink)
    best_of_n(BestConfig(collection="prompts.gpt", by="check"), ws, sink)

Each curator writes, per answer, a review (accepted, rejected, or pending when it could not
decide), a score from 0 to 1 and a reason, under its own name (`check:NAME`,
`judge:TEACHER`, `best:BY`), through `kdstudio.collect.decisions`: earlier decisions stay in
the history, a person's accept or reject stands, and no answer is ever deleted. Training
uses accepted and unreviewed answers as before, and `data.min_score` can require a score.

One concern a module:

- `config`  CheckConfig, JudgeConfig, BestConfig (the CLI's options and the window's forms)
- `job`     what every curator shares: the answers to decide, its claim and record in the
            workspace (`curations`), its summary
- `checks`  a program decides: the user's function or a built-in, in worker processes
            with a per-answer timeout
- `builtins` the built-in checks: exact, numeric, regex, JSON Schema
- `worker`  the worker process's side of a check (imports nothing heavy)
- `judge`   a teacher scores each answer with a rubric, through the collection job itself
            (concurrency, cache, resume, budget)
- `best`    best-of-n: the best sample per prompt by a score is accepted, the rest rejected
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdstudio.curate.best import best_of_n
    from kdstudio.curate.checks import run_check
    from kdstudio.curate.config import BestConfig, CheckConfig, JudgeConfig
    from kdstudio.curate.judge import run_judge

__all__ = ["BestConfig", "CheckConfig", "JudgeConfig", "best_of_n", "run_check", "run_judge"]

_WHERE = {
    "BestConfig": "config",
    "CheckConfig": "config",
    "JudgeConfig": "config",
    "best_of_n": "best",
    "run_check": "checks",
    "run_judge": "judge",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: the CLI builds its parser from `curate.config` alone.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"kdstudio.curate.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
