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

Split. By prompt (every sample and every collection's answer to one prompt on the same
side), deterministic: prompts are ordered by a hash of their messages (`prompt_key`) and the
first `ceil(fraction * prompts)` are held out, so one file and one config give the same
split in any workspace. `data.split = "row"` orders dataset row ids instead (the rule runs
of kdstudio 0.1 started with; they keep it when resumed).

Mixing (`data.weights`). With several collections, each epoch draws from collection i a
share weights[i] / sum(weights) of the epoch's examples (cycling through a small one in a
fresh order each time, subsampling a large one), a pure function of (seed, epoch) like the
order itself.

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
    # "text": the student's tokens of the teacher's text; "teacher": the teacher's own token
    # sequence, which sparse_kd (align exact) trains on when the server told it
    sequence: str = "text"

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
    return preview_encoded(tok, enc, text, template, dropped=dropped)


def preview_encoded(
    tok: Any,
    enc: Encoded,
    text: str,
    template: str,
    *,
    dropped: bool = False,
    sequence: str = "text",
) -> Preview:
    """The Preview of an encoded example: its tokens, and which carry loss."""
    tokens = [
        {"id": i, "text": tok.decode([i]), "loss": lab != IGNORE}
        for i, lab in zip(enc.input_ids, enc.labels, strict=True)
    ]
    return Preview(
        text, tokens, len(tokens), enc.n_target, enc.truncated, dropped, template, sequence
    )


# -- split ------------------------------------------------------------------------------------


def prompt_key(messages: list[dict]) -> str:
    """A prompt's identity for the split: a hash of its messages (role and content of every
    turn), whatever dataset, collection or sample it comes from."""
    from kdstudio.collect.store import content_hash

    turns = [[m.get("role"), m.get("content")] for m in messages]
    return content_hash(["kdstudio-split", turns])


def _row_key(row_id: int) -> str:
    return hashlib.sha256(f"kdstudio-split:{row_id}".encode()).hexdigest()


def split_keys(keys: Iterable[str], fraction: float) -> tuple[set[str], set[str]]:
    """(train keys, eval keys): the first ceil(fraction * n) keys in sorted order are held
    out (at least one when fraction > 0 and there are two keys or more). Keys are hashes,
    so sorted order is a fixed pseudo-random order."""
    ordered = sorted(set(keys))
    n_eval = math.ceil(fraction * len(ordered)) if fraction > 0 else 0
    n_eval = min(n_eval, max(len(ordered) - 1, 0))
    return set(ordered[n_eval:]), set(ordered[:n_eval])


def split_rows(row_ids: Iterable[int], fraction: float) -> tuple[set[int], set[int]]:
    """(train rows, eval rows) by the row rule (`data.split = "row"`): rows in the order of a
    hash of their id, the first ceil(fraction * n) held out."""
    by_key = {_row_key(r): r for r in set(row_ids)}
    train, held = split_keys(by_key, fraction)
    return {by_key[k] for k in train}, {by_key[k] for k in held}


# -- dataset ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Encoded train and eval examples of a run's collections, plus what was left out and why."""

    train: list[Encoded]
    eval: list[Encoded]
    eval_rows: list[int]
    dropped: int = 0  # truncation would cut the whole response away
    skipped: dict[str, int] = field(default_factory=dict)  # rejected, empty, low score...
    # per collection: {"train", "eval", "dropped", "skipped"} counts (examples of each)
    per_collection: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return len(self.train) + len(self.eval)

    def why_no_train(self, collection: str, max_length: int) -> str:
        """Why there are no training examples, and what to change (pre-flight and trainer).
        `collection` names the data: "collection 'a'" (see DataConfig.label) or a bare name."""
        label = collection if collection.startswith("collection") else f"collection {collection!r}"
        where = f"{label} gives no training examples"
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
        if self.skipped.get("below min_score") or self.skipped.get("unscored"):
            return (
                f"{where}: every answer is rejected, below data.min_score or unscored "
                f"({skipped}); lower data.min_score, or score the answers first "
                "(`kdstudio outputs check`)"
            )
        return (
            f"{where}: it has no done outputs{f' ({skipped} skipped)' if skipped else ''}; "
            "collect (or accept) some first"
        )


def _left_out(ex: Example, min_score: float | None) -> str | None:
    """Why an example is not trained on (None: it is)."""
    if getattr(ex, "review", None) == "rejected":
        return "rejected"
    if not ex.response or not ex.response.strip():
        return "empty"
    if min_score is not None and not getattr(ex, "person_accepted", False):
        score = getattr(ex, "score", None)
        if score is None:
            return "unscored"
        if score < min_score:
            return "below min_score"
    return None


def build_dataset(
    tok: Any,
    examples: Iterable[Example],
    *,
    max_length: int,
    eval_fraction: float,
    split: str = "prompt",
    min_score: float | None = None,
) -> Dataset:
    """Encode examples (rejected, empty and, with `min_score`, low-scored ones skipped) and
    split them by prompt (`split = "row"`: by dataset row id)."""
    kept: list[Encoded] = []
    dropped, skipped = 0, {"rejected": 0, "empty": 0}
    if min_score is not None:
        skipped.update({"below min_score": 0, "unscored": 0})
    per: dict[str, dict[str, int]] = {}
    for ex in examples:
        counts = per.setdefault(
            getattr(ex, "collection", ""), {"train": 0, "eval": 0, "dropped": 0, "skipped": 0}
        )
        why = _left_out(ex, min_score)
        if why is not None:
            skipped[why] += 1
            counts["skipped"] += 1
            continue
        enc = encode_example(tok, ex.messages, ex.response, max_length)
        if enc is None:
            dropped += 1
            counts["dropped"] += 1
            continue
        enc.example = ex
        kept.append(enc)
    if split == "row":
        keys = [_row_key(e.example.row_id) for e in kept]
    else:
        keys = [prompt_key(e.example.messages) for e in kept]
    _train_keys, eval_keys = split_keys(keys, eval_fraction)
    train, held = [], []
    for e, key in zip(kept, keys, strict=True):
        side = "eval" if key in eval_keys else "train"
        (held if side == "eval" else train).append(e)
        per[getattr(e.example, "collection", "")][side] += 1
    eval_rows = sorted({e.example.row_id for e in held})
    return Dataset(train, held, eval_rows, dropped, skipped, per)


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
        groups: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        if len(lengths) < world_size:
            raise UserError(
                f"only {len(lengths)} training examples for {world_size} processes; "
                "add data or use fewer processes"
            )
        self.lengths, self.seed, self.rank, self.world = list(lengths), seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.group, self.pack_length = group_by_length, pack_length
        if weights and groups is None:
            raise ValueError("weights need the group (collection) of every example")
        self.groups = list(groups) if groups is not None else None
        self.weights = list(weights) if weights else None
        self.epoch, self.index = 0, 0
        self._cache: tuple[int, list[list[list[int]]]] | None = None

    def _mix(self, epoch: int) -> list[int] | None:
        """The examples one epoch draws with `weights` (None: each example once): group i
        gives a share weights[i] / sum(weights) of them, taken from fresh shuffles of it."""
        if not self.weights or self.groups is None:
            return None
        members: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            members.setdefault(g, []).append(i)
        total, weight_sum = len(self.lengths), sum(self.weights[g] for g in members)
        pool: list[int] = []
        for g, idx in sorted(members.items()):
            quota = max(1, round(total * self.weights[g] / weight_sum))
            rng = random.Random(f"kdstudio:{self.seed}:{epoch}:mix:{g}")
            while quota > 0:
                order = list(idx)
                rng.shuffle(order)
                pool += order[:quota]
                quota -= len(order)
        return pool

    def _batches(self, epoch: int) -> list[list[list[int]]]:
        if self._cache is None or self._cache[0] != epoch:
            pool = self._mix(epoch)
            lengths = self.lengths if pool is None else [self.lengths[i] for i in pool]
            if self.pack_length:
                batches = packed_epoch_batches(
                    lengths, self.global_batch, self.seed, epoch, max_length=self.pack_length
                )
            else:
                flat = epoch_batches(
                    lengths, self.global_batch, self.seed, epoch, group_by_length=self.group
                )
                batches = [[[i] for i in b] for b in flat]
            if pool is not None:  # positions in the pool -> example indexes
                batches = [[[pool[i] for i in row] for row in b] for b in batches]
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
