"""`CollectConfig`: the settings of one collection (the CLI's `collect` flags and the
window's Collect form are both generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kdstudio.config import Section, TeacherConfig, setting


@dataclass
class CollectConfig(Section):
    """Settings of one collection run (the CLI's `collect` flags, the GUI's Collect panel)."""

    _section: ClassVar[str] = "collect"

    teacher: str = setting(help="Name of the teacher to ask.")
    dataset: str = setting(help="Name of the prompt dataset.")
    name: str | None = setting(None, "Collection name (default: DATASET.TEACHER).")
    samples: int = setting(1, "Answers per prompt.", min=1, max=64)
    max_tokens: int = setting(512, "Most tokens per answer.", min=1, max=131072)
    temperature: float = setting(1.0, "Sampling temperature.", min=0.0, max=2.0)
    top_p: float | None = setting(
        None, "Nucleus sampling mass (unset: the server's default).", min=0.0, max=1.0
    )
    seed: int | None = setting(None, "Seed; sample i uses seed + i (unset: none sent).")
    stop: list[str] = setting(help="A stop sequence.", default_factory=list)
    top_logprobs: int | None = setting(
        None,
        "Ask for logprobs with this many alternatives per token (unset: text only).",
        min=0,
        max=20,
    )
    token_ids: bool | None = setting(
        None,
        "Ask for token ids (vLLM return_tokens_as_token_ids); unset: when the probe found them.",
    )
    concurrency: int = setting(
        8, "Requests in flight at most (adapts down on 429).", min=1, max=256
    )
    adaptive: bool = setting(True, "Lower concurrency on 429 and raise it again on success.")
    max_retries: int = setting(
        8, "Retries of a transient error before the row fails.", min=0, max=100
    )
    timeout: float = setting(300.0, "Seconds before one request times out.", min=1.0)
    budget: float | None = setting(
        None, "Stop launching requests before spending more than this many USD.", min=0.0
    )
    batch_api: bool = setting(False, "Submit through the Batch API (half price, up to 24 h).")
    batch_poll_s: float = setting(15.0, "Seconds between Batch API status checks.", min=0.01)
    local_batch_size: int = setting(
        8, "Prompts per generate() call of a local teacher.", min=1, max=1024
    )
    limit: int | None = setting(None, "Only the first N prompts of the dataset.", min=1)

    def collection_name(self) -> str:
        return self.name or f"{self.dataset}.{self.teacher}"[:64]

    def request_params(self, teacher: TeacherConfig) -> dict[str, Any]:
        """The parameters that shape the answers (stored with the collection and hashed)."""
        token_ids = self.token_ids
        if token_ids is None:
            token_ids = (
                bool((teacher.capabilities or {}).get("token_ids")) and teacher.kind == "openai"
            )
        return {
            "samples": self.samples,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop),
            "top_logprobs": self.top_logprobs,
            "token_ids": bool(token_ids) and self.top_logprobs is not None,
        }
