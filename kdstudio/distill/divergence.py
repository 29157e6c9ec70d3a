"""When a run has diverged, and which of its checkpoints are still good.

    check = DivergenceCheck()
    check.start(first_step_loss)               # the loss of the weights the run starts from
    found = check.observe(step, interval_loss)   # at every log interval: a Divergence, once
    check.good_until                             # checkpoints before this step are good

The rule, on the mean training loss of each log interval (the one figure every process
holds after the interval's all-reduce, so all of them decide alike, with no extra sync):

1. **Not finite** (NaN or inf): diverged at once. Weights that produced a NaN loss hold
   NaNs or infinities themselves, and AdamW spreads them to every parameter it touches.
2. **Exploded**: above `EXPLODE` (100) times the running minimum (and never below 100 nats
   a token): diverged at once. No batch explains such a loss: guessing uniformly over a
   256k-token vocabulary costs 12.5 nats a token, and the loss spikes reported in large
   LLM training (PaLM, OPT) are rises of under 2x. A tiny student at lr 1000 with clipping
   off showed it: 1.3e6 for its first interval, then the uniform guess for good.
3. **Rising**: above `RATIO` (3) times the running minimum *and* `MARGIN` (2 nats, a 7.4x
   worse perplexity) above it, for `PATIENCE` (3) intervals in a row. One hard batch can
   double an interval's mean; three intervals in a row at triple the best cannot be noise.
   The ratio keeps large losses (a fresh model near log V) from tripping on a few nats of
   noise; the margin keeps near-zero losses (a memorised set at 0.01) from tripping on a
   jump to 0.05. LLM Foundry's KillLossSpike uses the same shape (2x its running average
   for 4 intervals); ours stands higher because an interval's mean over a small batch is
   noisier than their windowed average.

The running minimum starts from the loss of the run's first step (the weights as loaded;
kept on the device and read with the first report, so no extra sync): a run that explodes
within its first interval is measured against where it began; without that, the uniform
guess it collapsed to would have looked like its best.

Which checkpoints are good: a checkpoint's weights are first measured by the loss of the
next interval. `good_until` is the last step of the latest healthy interval, so a
checkpoint at a step before it has been confirmed by a healthy loss; one at or after it is
unconfirmed while the run goes on, and when the run diverges it is marked as written after
the divergence (`checkpoint.mark_diverged`): never the last, the best, or pruned in place
of a good one.

Pure Python (no torch): the trainer feeds it floats; tests feed it sequences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdstudio.distill.config import TrainConfig

RATIO = 3.0
MARGIN = 2.0  # nats per token
PATIENCE = 3  # log intervals in a row
EXPLODE = 100.0  # times the running minimum (at least 1 nat), at once


@dataclass(frozen=True)
class Divergence:
    """What the check found: at which report, how, and from which step on checkpoints are
    not good."""

    step: int  # the report that decided it
    kind: str  # "not finite" | "exploded" | "rising"
    loss: float
    best: float
    best_step: int
    good_until: int  # checkpoints at steps before this one are good

    def describe(self) -> str:
        """What happened, in words: "the loss became NaN at step 40"."""
        best = f"{self.best:.4g} at step {self.best_step}"
        if self.kind == "not finite":
            value = "NaN" if math.isnan(self.loss) else "infinite"
            return f"the loss became {value} at step {self.step}"
        if self.kind == "exploded":
            times = self.loss / max(self.best, 1e-12)
            return (
                f"the loss exploded to {self.loss:.3g} at step {self.step}, {times:,.0f}x its "
                f"best ({best})"
            )
        return (
            f"the loss stayed above {RATIO:g}x its best ({best}) for {PATIENCE} reports in a "
            f"row, reaching {self.loss:.4g} at step {self.step}"
        )

    def to_dict(self) -> dict[str, Any]:
        # NaN and inf are not JSON: the run's summary keeps them as text
        data = asdict(self)
        if not math.isfinite(self.loss):
            data["loss"] = str(self.loss)
        return data


class DivergenceCheck:
    """The rule of the module docstring, one report at a time; its state is checkpointed."""

    def __init__(self, step: int = 0) -> None:
        self.best: float | None = None
        self.best_step = step
        self.streak = 0
        self.good_until = step
        self.found: Divergence | None = None

    @property
    def needs_start(self) -> bool:
        """True until the running minimum has a first value."""
        return self.best is None

    def start(self, loss: float, step: int = 0) -> None:
        """The loss of the weights the run starts from (a non-finite one is no baseline:
        the first report then says the loss is not finite)."""
        if self.best is None and math.isfinite(loss):
            self.best, self.best_step = loss, step

    def observe(self, step: int, loss: float) -> Divergence | None:
        """Judge the interval ending at `step`; returns the Divergence once, when decided."""
        if self.found is not None:
            return None
        if not math.isfinite(loss):
            return self._diverged(step, "not finite", loss)
        if self.best is None:
            self.best, self.best_step = loss, step
        best = self.best
        if loss > EXPLODE * max(best, 1.0):
            return self._diverged(step, "exploded", loss)
        if loss > max(RATIO * best, best + MARGIN):
            self.streak += 1
            if self.streak >= PATIENCE:
                return self._diverged(step, "rising", loss)
            return None
        self.streak = 0
        self.good_until = step
        if loss < best:
            self.best, self.best_step = loss, step
        return None

    def _diverged(self, step: int, kind: str, loss: float) -> Divergence:
        best = self.best if self.best is not None else loss
        self.found = Divergence(step, kind, loss, best, self.best_step, self.good_until)
        return self.found

    def state_dict(self) -> dict[str, Any]:
        found = self.found
        return {
            "best": self.best,
            "best_step": self.best_step,
            "streak": self.streak,
            "good_until": self.good_until,
            "found": asdict(found) if found is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_step = int(state.get("best_step", self.best_step))
        self.streak = int(state.get("streak", 0))
        self.good_until = int(state.get("good_until", self.good_until))
        found = state.get("found")
        self.found = Divergence(**found) if found else None


@dataclass(frozen=True)
class Remedy:
    """One setting to change so the next run does not diverge."""

    key: str  # "optim.lr"
    value: Any
    text: str  # said in the run's message


def remedies(config: TrainConfig) -> list[Remedy]:
    """What to change, from the settings that make a run diverge: a learning rate a tenth
    as large (and at most the top of its usual range), clipping, warmup, and fp16."""
    from kdstudio.distill.plan import fmt_lr, usual_lr

    o, usual = config.optim, usual_lr(config)
    lr = min(o.lr / 10, usual.high)
    why = f" ({usual.span()} is usual for {usual.what})" if o.lr > usual.high else ""
    out = [Remedy("optim.lr", lr, f"lower optim.lr from {fmt_lr(o.lr)} to {fmt_lr(lr)}{why}")]
    if o.clip == 0:
        out.append(Remedy("optim.clip", 1.0, "turn gradient clipping on (optim.clip = 1.0)"))
    if o.warmup == 0:
        out.append(Remedy("optim.warmup", 0.03, "warm the learning rate up (optim.warmup = 0.03)"))
    if config.run.precision == "fp16":
        out.append(
            Remedy("run.precision", "auto", 'train in bf16 or fp32 (run.precision = "auto")')
        )
    return out


def advice(config: TrainConfig) -> str:
    """The remedies in words, for the run's message."""
    return "; ".join(r.text for r in remedies(config))


def remedied(config: TrainConfig) -> TrainConfig:
    """`config` with its remedies applied and no run name: the next run to try (the
    window's "New run with these changes")."""
    from kdstudio.distill.config import TrainConfig

    data = config.to_dict()
    for r in remedies(config):
        section, key = r.key.split(".")
        data[section][key] = r.value
    data["run"]["name"] = None
    return TrainConfig.from_dict(data)
