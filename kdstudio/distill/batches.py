"""From teacher outputs to training batches: render, tokenize, mask, split, group, pad.

Rendering. An example is the prompt messages plus one assistant turn holding the teacher's
response, rendered with the student tokenizer's chat template. The prompt part is what
`apply_chat_template(messages, add_generation_prompt=True)` renders, i.e. exactly what the
student is given at inference; it is tokenized on its own and the assistant turn after it,
so training sees the same token boundary as generation.

Loss mask. Labels are -100 (no loss) on the prompt (system and user turns, the generation
prompt) and on padding. Loss is on every token of the assistant turn up to and including
the first special token after the response text (the end-of-turn token, e.g. `<|end|>` or
`<|im_end|>`); what the template writes after it (a newline) carries no loss. When the
template writes no special token after the response, the tokenizer's eos token is appended
with loss so the student learns to stop.

Fallback template. A tokenizer without a chat template (with `student.template = "auto"`),
or any tokenizer with `"fallback"`, uses `FALLBACK_TEMPLATE`:

    <bos>### System:\n{system}\n\n### User:\n{prompt}\n\n### Assistant:\n{response}<eos>\n\n

The template is saved with every checkpoint's tokenizer, so the trained student and its
export are prompted the same way.

Truncation. Examples longer than `max_length` tokens are cut at the end; one whose
response would be cut away entirely is dropped and counted (`Dataset.dropped`).

Split. By dataset row (all samples of a prompt on the same side), deterministic: rows are
ordered by a hash of their id and the first `ceil(fraction * rows)` are held out.

Batches. Length-grouped (shuffle, then sort within mega-batches of 50 batches, then shuffle
the batches), dynamically padded on the right. The order is a pure function of (seed,
epoch), so a data position `(epoch, batch)` is all a checkpoint needs to resume exactly.
Under torchrun a global batch of `batch_size * world_size` examples is formed and each rank
takes every world_size-th example of it, so ranks see similar lengths.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdstudio.errors import UserError
from kdstudio.teachers.vocab import special_ids

if TYPE_CHECKING:
    import torch

    from kdstudio.collect.store import Example

IGNORE = -100
MEGA_BATCH = 50
# Newlines are written as expressions: chat templates render with trim_blocks, which would
# eat a literal newline after a block tag.
FALLBACK_TEMPLATE = (
    "{{ bos_token or '' }}{% for m in messages %}"
    "{{ '### ' + m['role'] | capitalize + ':\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


# -- tokenizer ------------------------------------------------------------------------------


def load_student_tokenizer(path: str, template: str = "auto") -> tuple[Any, bool]:
    """(tokenizer, uses_fallback_template). Sets a pad token (eos) when there is none."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"student.path {path!r}: cannot load a tokenizer there ({exc}); "
            "it must be a Hugging Face model folder"
        ) from None
    fallback = template == "fallback" or (template == "auto" and not tok.chat_template)
    if template == "tokenizer" and not tok.chat_template:
        raise UserError(
            f"the student's tokenizer ({path}) has no chat template; set student.template to "
            '"auto" or "fallback" to use kdstudio\'s plain template'
        )
    if fallback:
        tok.chat_template = FALLBACK_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise UserError(f"the student's tokenizer ({path}) has no eos token to end responses with")
    return tok, fallback


# -- one example ----------------------------------------------------------------------------


@dataclass
class Encoded:
    """One tokenized example. `labels[i]` is the target at position i (-100: no loss);
    the loop shifts by one. `spans[j]` is the (start, end) character range of completion
    token j (position `prompt_len + j`) relative to the response text (negative or beyond
    its length for template text around it; (-1, -1) for an appended eos)."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    spans: list[tuple[int, int]]
    example: Any = None
    truncated: bool = False

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    def __len__(self) -> int:
        return len(self.input_ids)


def common_prefix(a: str | bytes, b: str | bytes) -> int:
    """Length of the longest common prefix of two strings (or two byte strings)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the first difference
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def encode_example(
    tok: Any, messages: list[dict], response: str, max_length: int
) -> Encoded | None:
    """Tokenize and mask one example; None when truncation would leave no response token."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    cut = common_prefix(prompt, full)
    prompt_ids = tok(full[:cut], add_special_tokens=False)["input_ids"]
    completion = full[cut:]
    enc = tok(completion, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    r0 = completion.find(response) if response else -1
    r0 = max(r0, 0)
    r1 = r0 + len(response)
    specials = special_ids(tok)
    end = next(
        (
            j
            for j, (i, (s, _)) in enumerate(zip(ids, offsets, strict=True))
            if s >= r1 and i in specials
        ),
        None,
    )
    if end is None:
        ids, offsets, end = [*ids, tok.eos_token_id], [*offsets, (-1, -1)], len(ids)
    labels = [IGNORE] * len(prompt_ids) + ids[: end + 1] + [IGNORE] * (len(ids) - end - 1)
    spans = [(s - r0, e - r0) if s >= 0 else (-1, -1) for s, e in offsets]
    input_ids = prompt_ids + ids
    truncated = len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        spans = spans[: max(0, max_length - len(prompt_ids))]
    if not any(x != IGNORE for x in labels[1:]):
        return None
    return Encoded(input_ids, labels, len(prompt_ids), spans, truncated=truncated)


@dataclass
class Preview:
    """What the student sees for one example (the window shows it; `runs preview` prints it)."""

    text: str
    tokens: list[dict[str, Any]]  # {"id", "text", "loss"}
    n_tokens: int
    n_loss: int
    truncated: bool
    dropped: bool
    template: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def preview_example(
    tok: Any, messages: list[dict], response: str, max_length: int, *, fallback: bool = False
) -> Preview:
    """The rendered text, its tokens, and which tokens carry loss."""
    text = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    enc = encode_example(tok, messages, response, max_length)
    template = "kdstudio fallback" if fallback else "tokenizer"
    if enc is None:
        enc = encode_example(tok, messages, response, 10**9)
        assert enc is not None
        dropped = True
    else:
        dropped = False
    tokens = [
        {"id": i, "text": tok.decode([i]), "loss": lab != IGNORE}
        for i, lab in zip(enc.input_ids, enc.labels, strict=True)
    ]
    return Preview(text, tokens, len(tokens), enc.n_target, enc.truncated, dropped, template)


# -- split ------------------------------------------------------------------------------------


def _row_key(row_id: int) -> str:
    return hashlib.sha256(f"kdstudio-split:{row_id}".encode()).hexdigest()


def split_rows(row_ids: Iterable[int], fraction: float) -> tuple[set[int], set[int]]:
    """(train rows, eval rows): the first ceil(fraction * n) rows in hash order are held out
    (at least one when fraction > 0 and there are two rows or more)."""
    rows = sorted(set(row_ids), key=_row_key)
    n_eval = math.ceil(fraction * len(rows)) if fraction > 0 else 0
    n_eval = min(n_eval, max(len(rows) - 1, 0))
    return set(rows[n_eval:]), set(rows[:n_eval])


# -- dataset ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Encoded train and eval examples of a collection, plus what was left out and why."""

    train: list[Encoded]
    eval: list[Encoded]
    eval_rows: list[int]
    dropped: int = 0  # truncation would cut the whole response away
    skipped: dict[str, int] = field(default_factory=dict)  # rejected, empty response

    @property
    def n_examples(self) -> int:
        return len(self.train) + len(self.eval)

    def why_no_train(self, collection: str, max_length: int) -> str:
        """Why there are no training examples, and what to change (pre-flight and trainer)."""
        where = f"collection {collection!r} gives no training examples"
        if self.n_examples:
            return (
                f"{where}: its {self.n_examples} usable examples are all held out; lower "
                "data.eval_fraction"
            )
        if self.dropped:
            return (
                f"{where}: all {self.dropped} are longer than data.max_length = "
                f"{max_length} tokens up to their response; raise data.max_length"
            )
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items() if n)
        return (
            f"{where}: it has no done outputs{f' ({skipped} skipped)' if skipped else ''}; "
            "collect (or accept) some first"
        )


def build_dataset(
    tok: Any, examples: Iterable[Example], *, max_length: int, eval_fraction: float
) -> Dataset:
    """Encode examples (rejected and empty ones skipped) and split them by row."""
    kept: list[Encoded] = []
    dropped, skipped = 0, {"rejected": 0, "empty": 0}
    for ex in examples:
        if getattr(ex, "review", None) == "rejected":
            skipped["rejected"] += 1
            continue
        if not ex.response or not ex.response.strip():
            skipped["empty"] += 1
            continue
        enc = encode_example(tok, ex.messages, ex.response, max_length)
        if enc is None:
            dropped += 1
            continue
        enc.example = ex
        kept.append(enc)
    _train_rows, eval_rows = split_rows((e.example.row_id for e in kept), eval_fraction)
    train = [e for e in kept if e.example.row_id not in eval_rows]
    held = [e for e in kept if e.example.row_id in eval_rows]
    return Dataset(train, held, sorted(eval_rows), dropped, skipped)


# -- order ------------------------------------------------------------------------------------


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, *, group_by_length: bool = True
) -> list[list[int]]:
    """Batches of example indexes for one epoch: a pure function of (seed, epoch)."""
    rng = random.Random(f"kdstudio:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch_size * MEGA_BATCH
        order = [
            i
            for start in range(0, len(order), mega)
            for i in sorted(order[start : start + mega], key=lambda i: -lengths[i])
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


class DataStream:
    """An endless stream of this rank's micro-batches, epoch after epoch, resumable exactly.

    Position is `(epoch, index)`: the next global batch is batch `index` of epoch `epoch`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        group_by_length: bool = True,
    ) -> None:
        if len(lengths) < world_size:
            raise UserError(
                f"only {len(lengths)} training examples for {world_size} processes; "
                "add data or use fewer processes"
            )
        self.lengths, self.seed, self.rank, self.world = list(lengths), seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.group = group_by_length
        self.epoch, self.index = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            batches = epoch_batches(
                self.lengths, self.global_batch, self.seed, epoch, group_by_length=self.group
            )
            # every rank needs at least one example: fold a too-small last batch away
            batches = [b for b in batches if len(b) >= self.world]
            self._cache = (epoch, batches)
        return self._cache[1]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches(0))

    def next(self) -> list[int]:
        batches = self._batches(self.epoch)
        if self.index >= len(batches):
            self.epoch, self.index = self.epoch + 1, 0
            batches = self._batches(self.epoch)
        batch = batches[self.index]
        self.index += 1
        return batch[self.rank :: self.world]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("world", self.world) != self.world:
            raise UserError(
                f"this run was checkpointed with {state['world']} processes; resume it with "
                f"the same number (torchrun --nproc-per-node {state['world']})"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# -- collate ----------------------------------------------------------------------------------


@dataclass
class Batch:
    """A padded micro-batch. `n_target` (tokens with loss) and `n_tokens` (non-pad tokens)
    are Python ints, known without touching the device. `items` keep each example's
    `Encoded` (its `example` has row_id/sample/logprobs for sparse KD)."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    labels: torch.Tensor  # [B, T] long, -100 = no loss
    items: list[Encoded]
    n_target: int
    n_tokens: int

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device: Any) -> Batch:
        nb = str(device).startswith("cuda")
        return Batch(
            self.input_ids.to(device, non_blocking=nb),
            self.attention_mask.to(device, non_blocking=nb),
            self.labels.to(device, non_blocking=nb),
            self.items,
            self.n_target,
            self.n_tokens,
        )


def collate(items: Sequence[Encoded], pad_id: int, *, pin: bool = False) -> Batch:
    """Pad on the right to the longest example in the batch."""
    import torch

    width = max(len(e) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    n_target = sum(sum(1 for x in e.labels[1:] if x != IGNORE) for e in items)
    n_tokens = sum(len(e) for e in items)
    if pin:
        ids, mask, labels = ids.pin_memory(), mask.pin_memory(), labels.pin_memory()
    return Batch(ids, mask, labels, list(items), n_target, n_tokens)
