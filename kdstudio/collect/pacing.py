"""Pacing: how many requests may be in flight, and how long a retry waits.

Concurrency is AIMD: a 429 lowers it (x0.7, at most once a second) and pauses launches for
the server's `retry-after`; a run of successes raises it again, up to the setting. Retries
of transient errors wait with jittered exponential backoff; 429s do not use up
`max_retries` (the server said "later", not "no"), up to `MAX_RATE_LIMITED` of them.
"""

from __future__ import annotations

import math

# The backoff itself is the teacher protocol's, shared with `teacher probe`.
from kdstudio.teachers.openai_api import MAX_RETRY_AFTER_S, backoff

__all__ = ["MAX_RATE_LIMITED", "MAX_RETRY_AFTER_S", "AdaptiveLimit", "backoff"]

MAX_RATE_LIMITED = 1000  # 429s of one row before it fails (they do not use up max_retries)


class AdaptiveLimit:
    """AIMD concurrency: x0.7 on a 429 (at most once per `cooldown` s), +1 after `limit`
    successes in a row, between 1 and the configured maximum."""

    def __init__(self, maximum: int, *, adaptive: bool = True, cooldown: float = 1.0) -> None:
        self.maximum, self.adaptive, self.cooldown = maximum, adaptive, cooldown
        self.value = float(maximum)
        self._streak = 0
        self._last_cut = -math.inf

    @property
    def limit(self) -> int:
        return max(1, int(self.value))

    def on_success(self) -> None:
        if not self.adaptive or self.value >= self.maximum:
            return
        self._streak += 1
        if self._streak >= self.limit:
            self._streak = 0
            self.value = min(self.maximum, self.value + 1)

    def on_rate_limited(self, now: float) -> None:
        self._streak = 0
        if self.adaptive and now - self._last_cut >= self.cooldown:
            self._last_cut = now
            self.value = max(1.0, self.value * 0.7)
