"""Teachers: how to talk to one. OpenAI-compatible endpoints (`openai_api`), the capability
`probe`, and local Hugging Face models (`local`). Every teacher answers with a `Response`.

This package never imports `kdstudio.collect`: the collection job drives teachers, not the
other way round (an import contract in pyproject.toml holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy stays out of `kdstudio --help`
    from kdstudio.logprobs import TokenLogprobs


@dataclass
class Response:
    """One answered request, as a teacher gave it (and as the response cache stores it)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    logprobs: TokenLogprobs | None = None
    latency: float | None = None
    endpoint: str | None = None
    model: str | None = None
    source: str = "teacher"
