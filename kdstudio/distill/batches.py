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

Packing (`data.packing`). Short examples are packed into rows of up to `max_length` tokens
(first fit, longest first, within windows of 50 batches' worth of examples; then the rows
are shuffled), so a batch is `batch_size` nearly full rows instead of `batch_size` padded
examples. Each example keeps its own positions (position ids restart at 0) and the model
gets no 2-D attention mask, so attention stays within an example: Hugging Face models read
packed sequences from the position ids (`plan.check_packing` verifies that on the model
before the first step). The loss is unchanged: labels are the examples' own, an example's
first token carries none, and the sum over target tokens is the same as unpacked.
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

    from kdstudio.model_folder import check_model_folder

    check_model_folder(path, "student.path", model=False)  # the tokenizer's own files suffice
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


def pack_rows(
    lengths: Sequence[int], order: Sequence[int], max_length: int, *, window: int
) -> list[list[int]]:
    """`order`'s examples packed into rows of at most `max_length` tokens: first fit, longest
    first, within consecutive windows of `window` examples (so packing never reaches far
    from the shuffled order). Deterministic: a pure function of its arguments."""
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: -lengths[i])
        free: list[int] = []
        first = len(rows)
        for i in part:
            n = min(lengths[i], max_length)
            slot = next((r for r, room in enumerate(free) if room >= n), None)
            if slot is None:
                rows.append([i])
                free.append(max_length - n)
            else:
                rows[first + slot].append(i)
                free[slot] -= n
    return rows


def packed_epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, *, max_length: int
) -> list[list[list[int]]]:
    """Batches of `batch_size` packed rows (lists of example indexes) for one epoch: a pure
    function of (seed, epoch), like `epoch_batches`."""
    rng = random.Random(f"kdstudio:{seed}:{epoch}:packed")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows = pack_rows(lengths, order, max_length, window=batch_size * MEGA_BATCH)
    rng.shuffle(rows)
    return [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]


class DataStream:
    """An endless stream of this rank's micro-batches, epoch after epoch, resumable exactly.

    Position is `(epoch, index)`: the next global batch is batch `index` of epoch `epoch`.
    A micro-batch is a list of rows, each a list of example indexes: one example per row,
    or several with `pack_length` (packing into rows of that many tokens).
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
        pack_length: int | None = None,
    ) -> None:
        if len(lengths) < world_size:
            raise UserError(
                f"only {len(lengths)} training examples for {world_size} processes; "
                "add data or use fewer processes"
            )
        self.lengths, self.seed, self.rank, self.world = list(lengths), seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.group, self.pack_length = group_by_length, pack_length
        self.epoch, self.index = 0, 0
        self._cache: tuple[int, list[list[list[int]]]] | None = None

    def _batches(self, epoch: int) -> list[list[list[int]]]:
        if self._cache is None or self._cache[0] != epoch:
            if self.pack_length:
                batches = packed_epoch_batches(
                    self.lengths, self.global_batch, self.seed, epoch, max_length=self.pack_length
                )
            else:
                flat = epoch_batches(
                    self.lengths, self.global_batch, self.seed, epoch, group_by_length=self.group
                )
                batches = [[[i] for i in b] for b in flat]
            # every rank needs at least one row: fold a too-small last batch away
            batches = [b for b in batches if len(b) >= self.world]
            self._cache = (epoch, batches)
        return self._cache[1]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches(0))

    def next(self) -> list[list[int]]:
        """This rank's rows of the next micro-batch (lists of example indexes)."""
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
    `Encoded` (its `example` has row_id/sample/logprobs for sparse KD), and `offsets` where
    each one starts: (row, first position). A packed batch (several examples per row) has
    `position_ids` restarting at each example and no `attention_mask` (see the module
    docstring); an unpacked one has a mask and one example per row at position 0."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor | None  # [B, T] long; None when packed
    labels: torch.Tensor  # [B, T] long, -100 = no loss
    items: list[Encoded]
    n_target: int
    n_tokens: int
    offsets: list[tuple[int, int]] = field(default_factory=list)
    position_ids: torch.Tensor | None = None  # [B, T] long when packed
    # flat indexes of the positions of logits[:, :-1] whose next token carries loss, made on
    # the CPU with the batch (finding them on the device would wait for it)
    target_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.offsets:
            self.offsets = [(row, 0) for row in range(len(self.items))]
        if self.target_index is None:
            self.target_index = (self.labels[:, 1:] != IGNORE).reshape(-1).nonzero().squeeze(-1)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What the model's forward takes for this batch (with `use_cache=False`)."""
        if self.position_ids is not None:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def to(self, device: Any) -> Batch:
        nb = str(device).startswith("cuda")

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=nb)

        return Batch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.labels),
            self.items,
            self.n_target,
            self.n_tokens,
            self.offsets,
            move(self.position_ids),
            move(self.target_index),
        )


def collate(items: Sequence[Encoded], pad_id: int, *, pin: bool = False) -> Batch:
    """One example per row, padded on the right to the longest."""
    return collate_rows([[e] for e in items], pad_id, pin=pin, packed=False)


def collate_rows(
    rows: Sequence[Sequence[Encoded]], pad_id: int, *, pin: bool = False, packed: bool = True
) -> Batch:
    """Rows of examples laid end to end, padded on the right to the longest row. `packed`
    gives position ids that restart at each example (and no attention mask); else each row
    must hold one example and gets an attention mask."""
    import torch

    width = max(sum(len(e) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long) if packed else None
    items, offsets, n_target, n_tokens = [], [], 0, 0
    for r, row in enumerate(rows):
        if not packed and len(row) != 1:
            raise ValueError("an unpacked batch holds one example per row")
        at = 0
        for e in row:
            n = len(e)
            ids[r, at : at + n] = torch.tensor(e.input_ids, dtype=torch.long)
            labels[r, at : at + n] = torch.tensor(e.labels, dtype=torch.long)
            labels[r, at] = IGNORE  # nothing predicts an example's first token
            mask[r, at : at + n] = 1
            if pos is not None:
                pos[r, at : at + n] = torch.arange(n)
            items.append(e)
            offsets.append((r, at))
            n_target += sum(1 for x in e.labels[1:] if x != IGNORE)
            n_tokens += n
            at += n
        if pos is not None and at < width:  # padding: a "sequence" of its own, no loss
            pos[r, at:] = torch.arange(width - at)
    target = (labels[:, 1:] != IGNORE).reshape(-1).nonzero().squeeze(-1)
    if pin:
        ids, mask, labels, target = (t.pin_memory() for t in (ids, mask, labels, target))
        pos = pos.pin_memory() if pos is not None else None
    return Batch(
        ids, None if packed else mask, labels, items, n_target, n_tokens, offsets, pos, target
    )
