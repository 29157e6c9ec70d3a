"""What a collection could cost, before and while it runs.

Prompt tokens are approximated without a tokenizer (nothing is downloaded): ceil(chars / 4)
+ 3 per message. Real usage comes back with each answer and is stored per row. Output is
priced at `max_tokens`, an upper bound. The Batch API charges half (`TeacherConfig.cost`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from kdstudio.collect.config import CollectConfig
from kdstudio.config import TeacherConfig
from kdstudio.formatting import usd


def approx_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens without a tokenizer: ceil(chars / 4) + 3 per message (chat overhead).

    Close for English with GPT-style tokenizers; real counts come back with each answer.
    """
    total = 3
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        total += 3 + math.ceil(len(content) / 4)
    return total


@dataclass
class CostEstimate:
    """What the remaining requests could cost, before starting."""

    requests: int
    prompt_tokens: int
    max_completion_tokens: int
    usd: float  # prompt tokens at price_in + max_tokens at price_out (an upper bound on output)
    spent: float  # already paid in this collection
    batch: bool
    priced: bool  # False when the teacher has no prices (then usd is 0)
    local: bool = False  # a local teacher: no cost

    def line(self) -> str:
        if self.local:
            price = "free (a local teacher)"
        elif self.priced:
            price = f"up to {usd(self.usd)}"
        else:
            price = "cost unknown (the teacher has no prices: set --price-in/--price-out)"
        tokens = f"~{self.prompt_tokens:,} prompt tokens + at most {self.max_completion_tokens:,} output tokens"
        spent = f"; {usd(self.spent)} spent so far" if self.spent else ""
        batch = " at Batch API prices" if self.batch else ""
        return f"{self.requests:,} requests to make: {tokens}, {price}{batch}{spent}"


def estimate(
    teacher: TeacherConfig, config: CollectConfig, prompt_tokens_each: Iterable[int], spent: float
) -> CostEstimate:
    """The estimate for requests with these (approximate) prompt token counts."""
    prompt_tokens = requests = 0
    for n in prompt_tokens_each:
        requests += 1
        prompt_tokens += n
    completion_tokens = requests * config.max_tokens
    return CostEstimate(
        requests=requests,
        prompt_tokens=prompt_tokens,
        max_completion_tokens=completion_tokens,
        usd=teacher.cost(prompt_tokens, completion_tokens, batch=config.batch_api),
        spent=spent,
        batch=config.batch_api,
        priced=teacher.priced,
        local=teacher.kind == "local",
    )


def worst_cost(
    teacher: TeacherConfig, config: CollectConfig, prompt_tokens: int, prompt_ratio: float
) -> float:
    """The most one request could cost: its prompt estimate times a safety margin
    (`prompt_ratio`, learnt from real usage) plus `max_tokens` of output."""
    return teacher.cost(prompt_tokens * prompt_ratio, config.max_tokens, batch=config.batch_api)
