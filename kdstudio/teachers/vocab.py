"""Token vocabularies as bytes: what each token id of a tokenizer spells.

Teachers send their tokens as text pieces or bytes and students train on ids, so the two
meet on bytes (DISTILLATION.md: "compare by bytes, never by display strings"):

    vocab = VocabBytes(tokenizer)
    vocab.of(token_id)            -> bytes (None for an id without a piece)
    vocab.find(b" the")           -> the id that spells exactly those bytes, or -1
    vocab.longest_prefix(b" thy") -> the longest ordinary token that starts those bytes, or -1
    special_ids(tokenizer)        -> ids of special tokens (eos, end-of-turn, ...)
    piece_forms(piece)            -> the byte strings a server's rendering of a token may mean

Byte-level BPE pieces decode through GPT-2's byte table (`byte_decoder`), SentencePiece
pieces (`▁`, byte-fallback `<0xNN>`) by their rules, anything else with `decode`. Which
scheme a tokenizer uses is read from its decoder when it is a fast tokenizer, else guessed
from its pieces. No torch here.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

SPACE_MARK = "▁"  # SentencePiece's visible space


@cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode -> byte table (the inverse of bytes_to_unicode)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def special_ids(tok: Any) -> set[int]:
    """Ids of the tokenizer's special tokens, including added tokens marked special."""
    ids = set(tok.all_special_ids)
    ids |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special}
    return ids


def _byte_fallback(piece: str) -> int | None:
    """The byte of a SentencePiece byte-fallback piece `<0xNN>`, else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _scheme(tok: Any, pieces: list[str | None]) -> str:
    """`byte_level` (GPT-2 style), `sentencepiece` (▁ and <0xNN>) or `plain`."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        try:
            decoder = json.dumps(json.loads(backend.to_str()).get("decoder"))
        except (ValueError, AttributeError):
            decoder = ""
        if '"ByteLevel"' in decoder:
            return "byte_level"
        if any(k in decoder for k in ('"Metaspace"', '"ByteFallback"', SPACE_MARK)):
            return "sentencepiece"
    ordinary = [p for p in pieces if p and _byte_fallback(p) is None]
    if sum(SPACE_MARK in p for p in ordinary) > 0.05 * max(len(ordinary), 1):
        return "sentencepiece"
    decoder_table = byte_decoder()
    sample = ordinary[:: max(1, len(ordinary) // 2000)]
    if sample and sum(all(c in decoder_table for c in p) for p in sample) > 0.9 * len(sample):
        return "byte_level"
    return "plain"


class VocabBytes:
    """Each token id's bytes, and the reverse map for exact byte matches.

    Special tokens are their text. A byte string shared by several ids maps to the first
    non-special one.
    """

    def __init__(self, tok: Any) -> None:
        n = len(tok)
        pieces = tok.convert_ids_to_tokens(list(range(n)))
        specials = special_ids(tok)
        self.specials = specials
        self.scheme = _scheme(tok, pieces)
        self.bytes: list[bytes | None] = [
            piece_bytes(tok, i, piece, i in specials, self.scheme) for i, piece in enumerate(pieces)
        ]
        self.index: dict[bytes, int] = {}
        self._ordinary: dict[bytes, int] = {}  # without special tokens (for longest_prefix)
        for i, b in enumerate(self.bytes):
            if not b:
                continue
            old = self.index.get(b)
            if old is None or (old in specials and i not in specials):
                self.index[b] = i
            if i not in specials:
                self._ordinary.setdefault(b, i)
        self.max_len = max((len(b) for b in self._ordinary), default=0)

    def __len__(self) -> int:
        return len(self.bytes)

    def of(self, token_id: int) -> bytes | None:
        return self.bytes[token_id] if 0 <= token_id < len(self.bytes) else None

    def find(self, b: bytes) -> int:
        """The id spelling exactly `b` (a special token by its text), -1 when none does."""
        return self.index.get(b, -1)

    def longest_prefix(self, b: bytes) -> int:
        """The ordinary token with the longest bytes that start `b`, -1 when none does: the
        token a student would begin `b` with (its tokenizer may split differently in context,
        but never with a token that spells more of `b` than this one)."""
        for n in range(min(len(b), self.max_len), 0, -1):
            i = self._ordinary.get(b[:n])
            if i is not None:
                return i
        return -1


def piece_bytes(tok: Any, i: int, piece: str | None, special: bool, scheme: str) -> bytes | None:
    """The bytes of token `i` whose vocabulary piece is `piece` (see the module docstring)."""
    if piece is None:
        return None
    if special:
        return piece.encode("utf-8")
    if scheme == "byte_level":
        table = byte_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    if scheme == "sentencepiece":
        byte = _byte_fallback(piece)
        if byte is not None:
            return bytes([byte])
        return piece.replace(SPACE_MARK, " ").encode("utf-8")
    text = tok.decode([i])
    return text.encode("utf-8") if text else None


def piece_forms(piece: bytes) -> list[bytes]:
    """What a token a server sent as `piece` may spell, most literal first: the bytes
    themselves, then, when the server sent a raw vocabulary piece instead of its text, the
    byte-level (GPT-2 `Ġthe`) or SentencePiece (`▁the`, `<0x0A>`) reading of it."""
    forms = [piece]
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return forms
    table = byte_decoder()
    if text and all(c in table for c in text):
        decoded = bytes(table[c] for c in text)
        if decoded != piece:
            forms.append(decoded)
    byte = _byte_fallback(text)
    if byte is not None:
        forms.append(bytes([byte]))
    elif SPACE_MARK in text:
        forms.append(text.replace(SPACE_MARK, " ").encode("utf-8"))
    return forms
