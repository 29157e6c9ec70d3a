"""Per-token teacher logprobs: one in-memory shape, one compact binary encoding.

A `TokenLogprobs` holds, for each generated position t, the sampled token (its UTF-8
bytes and, when the teacher gives them, its id), the sampled token's logprob, and the
teacher's top-k alternatives (bytes, ids when known, logprobs). Ragged top-k lists are
padded: ids with -1, logprobs with -inf. The OpenAI API's `-9999` sentinel ("not in the
top") becomes -inf as well.

Token bytes: taken from the API's `bytes` field when present, else `token.encode()`. A
vLLM server started with `return_tokens_as_token_ids` answers `"token_id:N"` instead of
text; such a token has id N and empty bytes (the text is unknown without the tokenizer).

Encoding (`encode`/`decode`), little-endian, about 6 bytes per candidate (ids int32 +
logprob fp16) plus a per-response string table:

    b"KDLP" u8 version u8 flags u32 T u16 K u32 n_strings
    u32[n_strings + 1] string offsets, then the concatenated string bytes
    idx[T] sampled token string index         (u16 or u32 by flags; all-ones = absent)
    i32[T] sampled token ids                  (flag HAS_IDS)
    f16[T] sampled logprobs
    idx[T*K] top token string indexes
    i32[T*K] top ids                          (flag HAS_TOP_IDS)
    f16[T*K] top logprobs
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"KDLP"
VERSION = 1
SENTINEL = -9999.0  # the OpenAI API's "not in the top" logprob
HAS_IDS, HAS_TOP_IDS, WIDE_INDEX = 1, 2, 4
_HEADER = struct.Struct("<4sBBIHI")
_TOKEN_ID_RE = re.compile(r"token_id:(-?\d+)")


@dataclass
class TokenLogprobs:
    """Logprobs of T generated tokens with up to K alternatives each (see module doc)."""

    tokens: list[bytes]
    token_ids: list[int] | None
    logprobs: np.ndarray  # float32 [T]
    top_tokens: list[list[bytes]]  # [T][K] (inner lists may be shorter than K)
    top_ids: np.ndarray | None  # int32 [T, K], -1 where unknown or absent
    top_logprobs: np.ndarray  # float32 [T, K], -inf where absent

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def k(self) -> int:
        return int(self.top_logprobs.shape[1]) if self.top_logprobs.ndim == 2 else 0

    def text(self) -> str:
        """The generated text these tokens spell (empty parts where only ids are known)."""
        return b"".join(self.tokens).decode("utf-8", errors="replace")

    def mean_logprob(self) -> float | None:
        """Mean logprob of the sampled tokens (finite ones), None when there are none."""
        finite = self.logprobs[np.isfinite(self.logprobs)]
        return float(finite.mean()) if finite.size else None

    def confidence(self) -> float | None:
        """Geometric-mean probability of the sampled tokens, in [0, 1]."""
        mean = self.mean_logprob()
        return math.exp(mean) if mean is not None else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenLogprobs):
            return NotImplemented
        return (
            self.tokens == other.tokens
            and self.token_ids == other.token_ids
            and self.top_tokens == other.top_tokens
            and np.array_equal(self.logprobs, other.logprobs)
            and np.array_equal(self.top_logprobs, other.top_logprobs)
            and _same_optional(self.top_ids, other.top_ids)
        )


def _same_optional(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def make(
    tokens: Sequence[bytes],
    logprobs: Iterable[float],
    top_tokens: Sequence[Sequence[bytes]],
    top_logprobs: Sequence[Sequence[float]],
    *,
    token_ids: Sequence[int] | None = None,
    top_ids: Sequence[Sequence[int]] | None = None,
) -> TokenLogprobs:
    """Build a TokenLogprobs from ragged Python lists (pads to K, maps -9999 to -inf)."""
    t = len(tokens)
    k = max((len(row) for row in top_tokens), default=0)
    lp = _clean(np.asarray(list(logprobs), dtype=np.float32).reshape(t))
    top_lp = np.full((t, k), -np.inf, dtype=np.float32)
    ids = np.full((t, k), -1, dtype=np.int32) if top_ids is not None else None
    for i, row in enumerate(top_logprobs):
        top_lp[i, : len(row)] = row
        if ids is not None and top_ids is not None:
            ids[i, : len(top_ids[i])] = top_ids[i]
    return TokenLogprobs(
        tokens=[bytes(b) for b in tokens],
        token_ids=[int(i) for i in token_ids] if token_ids is not None else None,
        logprobs=lp,
        top_tokens=[[bytes(b) for b in row] for row in top_tokens],
        top_ids=ids,
        top_logprobs=_clean(top_lp),
    )


def _clean(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=True)
    a[(a <= SENTINEL) | np.isnan(a)] = -np.inf
    return a


# -- the OpenAI wire format ------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _token(entry: Any) -> tuple[bytes, int | None]:
    text = _get(entry, "token") or ""
    match = _TOKEN_ID_RE.fullmatch(text)
    if match:
        return b"", int(match.group(1))
    raw = _get(entry, "bytes")
    if raw is not None:
        try:
            return bytes(raw), None
        except (TypeError, ValueError):
            pass
    return text.encode("utf-8", errors="surrogatepass"), None


def from_openai(content: Sequence[Any] | None) -> TokenLogprobs:
    """Convert `choice.logprobs.content` (SDK objects or plain dicts) to TokenLogprobs.

    Handles null `bytes` (uses the token text), the -9999 sentinel (-> -inf), missing
    `top_logprobs`, and vLLM's `token_id:N` tokens (-> ids, empty bytes).
    """
    tokens: list[bytes] = []
    ids: list[int | None] = []
    lps: list[float] = []
    top_tokens: list[list[bytes]] = []
    top_ids: list[list[int]] = []
    top_lps: list[list[float]] = []
    for entry in content or []:
        tok, tid = _token(entry)
        tokens.append(tok)
        ids.append(tid)
        lp = _get(entry, "logprob")
        lps.append(float(lp) if lp is not None else -math.inf)
        row_tok, row_ids, row_lp = [], [], []
        for alt in _get(entry, "top_logprobs") or []:
            a_tok, a_id = _token(alt)
            a_lp = _get(alt, "logprob")
            row_tok.append(a_tok)
            row_ids.append(a_id if a_id is not None else -1)
            row_lp.append(float(a_lp) if a_lp is not None else -math.inf)
        top_tokens.append(row_tok)
        top_ids.append(row_ids)
        top_lps.append(row_lp)
    have_ids = bool(ids) and all(i is not None for i in ids)
    have_top_ids = any(i >= 0 for row in top_ids for i in row)
    return make(
        tokens,
        lps,
        top_tokens,
        top_lps,
        token_ids=[int(i) for i in ids if i is not None] if have_ids else None,
        top_ids=top_ids if have_top_ids else None,
    )


# -- compact binary encoding ----------------------------------------------------------------


def encode(tl: TokenLogprobs) -> bytes:
    """Serialise compactly (see the module doc for the layout)."""
    t, k = len(tl.tokens), tl.k
    table: dict[bytes, int] = {}
    tok_idx = [table.setdefault(b, len(table)) for b in tl.tokens]
    top_idx = np.full((t, k), -1, dtype=np.int64)
    for i, row in enumerate(tl.top_tokens):
        for j, b in enumerate(row):
            top_idx[i, j] = table.setdefault(b, len(table))
    strings = list(table)
    wide = len(strings) >= 0xFFFF
    idx_dt = np.dtype("<u4" if wide else "<u2")
    absent = np.iinfo(idx_dt).max
    flags = (HAS_IDS if tl.token_ids is not None else 0) | (WIDE_INDEX if wide else 0)
    flags |= HAS_TOP_IDS if tl.top_ids is not None else 0
    offsets = np.zeros(len(strings) + 1, dtype=np.uint32)
    offsets[1:] = np.cumsum([len(s) for s in strings], dtype=np.uint64)
    top_idx_arr = np.where(top_idx < 0, absent, top_idx).astype(idx_dt)
    parts = [
        _HEADER.pack(MAGIC, VERSION, flags, t, k, len(strings)),
        offsets.astype("<u4").tobytes(),
        b"".join(strings),
        np.asarray(tok_idx, dtype=idx_dt).tobytes(),
    ]
    if tl.token_ids is not None:
        parts.append(np.asarray(tl.token_ids, dtype="<i4").tobytes())
    parts.append(np.asarray(tl.logprobs, dtype="<f2").tobytes())
    parts.append(top_idx_arr.tobytes())
    if tl.top_ids is not None:
        parts.append(np.asarray(tl.top_ids, dtype="<i4").reshape(t, k).tobytes())
    parts.append(np.asarray(tl.top_logprobs, dtype="<f2").reshape(t, k).tobytes())
    return b"".join(parts)


class _Reader:
    def __init__(self, blob: bytes, pos: int) -> None:
        self.blob, self.pos = memoryview(blob), pos

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.blob):
            raise ValueError("logprobs blob is truncated")
        out = np.frombuffer(self.blob[self.pos : self.pos + size], dtype=dtype, count=count)
        self.pos += size
        return out

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.blob):
            raise ValueError("logprobs blob is truncated")
        out = bytes(self.blob[self.pos : self.pos + size])
        self.pos += size
        return out


def decode(blob: bytes) -> TokenLogprobs:
    """Inverse of `encode` (logprobs come back as float32 of the stored fp16 values)."""
    if len(blob) < _HEADER.size:
        raise ValueError("logprobs blob is truncated")
    magic, version, flags, t, k, n_strings = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a kdstudio logprobs blob (magic {magic!r}, version {version})")
    r = _Reader(blob, _HEADER.size)
    offsets = r.array("<u4", n_strings + 1)
    data = r.raw(int(offsets[-1]))
    strings = [data[offsets[i] : offsets[i + 1]] for i in range(n_strings)]
    idx_dtype = "<u4" if flags & WIDE_INDEX else "<u2"
    absent = 0xFFFFFFFF if flags & WIDE_INDEX else 0xFFFF
    tok_idx = r.array(idx_dtype, t)
    token_ids = r.array("<i4", t).tolist() if flags & HAS_IDS else None
    logprobs = r.array("<f2", t).astype(np.float32)
    top_idx = r.array(idx_dtype, t * k).reshape(t, k)
    top_ids = r.array("<i4", t * k).reshape(t, k).astype(np.int32) if flags & HAS_TOP_IDS else None
    top_logprobs = r.array("<f2", t * k).reshape(t, k).astype(np.float32)
    top_tokens = [[strings[j] for j in row if j != absent] for row in top_idx.tolist()]
    return TokenLogprobs(
        tokens=[strings[i] for i in tok_idx.tolist()],
        token_ids=token_ids,
        logprobs=logprobs,
        top_tokens=top_tokens,
        top_ids=top_ids,
        top_logprobs=top_logprobs,
    )
