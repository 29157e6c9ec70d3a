"""Collecting teacher outputs: send a dataset's prompts to a teacher, keep every answer.

    from kdstudio.collect import CollectConfig, collect, estimate_cost

One concern a module:

- `config`   CollectConfig, the settings of one collection
- `cost`     what the remaining requests could cost (before and during a run)
- `ledger`   one collection's items, their states, and the claim of the collecting process
- `store`    collections and the shared response cache: reading, review, listing, export
- `decisions` review decisions with score, reason and decider, and their history
- `pacing`   adaptive concurrency and retry backoff
- `runner`   Request, RunStats and the Runner protocol that the three runners follow:
- `live`     an OpenAI-compatible endpoint, many requests in flight (asyncio)
- `batch`    the OpenAI Batch API (half price, results within 24 h)
- `local`    a local Hugging Face teacher in this process
- `job`      collect(): runs a collection from start to outcome and summary
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdstudio.collect.config import CollectConfig
    from kdstudio.collect.job import collect, estimate_cost

__all__ = ["CollectConfig", "collect", "estimate_cost"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the CLI builds its parser from `collect.config` alone, and
    # `kdstudio --help` should not pay for the job's imports (numpy, the store).
    if name == "CollectConfig":
        from kdstudio.collect.config import CollectConfig

        return CollectConfig
    if name in ("collect", "estimate_cost"):
        from kdstudio.collect import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
