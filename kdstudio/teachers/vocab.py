"""Token vocabularies as bytes: what each token id of a tokenizer spells.

Teachers send their tokens as text pieces or bytes and students train on ids, so the two
meet on bytes (DISTILLATION.md: "compare by bytes, never by display strings"):

    vocab = VocabBytes(tokenizer)
    vocab.of(token_id)        -> bytes (None for an id without a piece)
    vocab.index[b" the"]      -> the id that spells exactly those bytes
    special_ids(tokenizer)    -> ids of special tokens (eos, end-of-turn, ...)

Byte-level BPE pieces decode through GPT-2's byte table (`byte_decoder`), SentencePiece
pieces (`▁`, `<0xNN>`) by their rules, anything else with `decode`. No torch here.
"""

from __future__ import annotations

from typing import Any


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
        decoder = byte_decoder()
        sample = [p for p in pieces[:: max(1, n // 2000)] if p]
        byte_level = sum(all(c in decoder for c in p) for p in sample) > 0.9 * len(sample)
        self.bytes: list[bytes | None] = []
        for i, piece in enumerate(pieces):
            self.bytes.append(piece_bytes(tok, i, piece, i in specials, byte_level, decoder))
        self.index: dict[bytes, int] = {}
        for i, b in enumerate(self.bytes):
            if not b:
                continue
            old = self.index.get(b)
            if old is None or (old in specials and i not in specials):
                self.index[b] = i

    def __len__(self) -> int:
        return len(self.bytes)

    def of(self, token_id: int) -> bytes | None:
        return self.bytes[token_id] if 0 <= token_id < len(self.bytes) else None


def piece_bytes(
    tok: Any, i: int, piece: str | None, special: bool, byte_level: bool, decoder: dict[str, int]
) -> bytes | None:
    """The bytes of token `i` whose vocabulary piece is `piece` (see the module docstring)."""
    if piece is None:
        return None
    if special:
        return piece.encode("utf-8")
    if byte_level and all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    if "▁" in piece:
        return piece.replace("▁", " ").encode("utf-8")
    text = tok.decode([i])
    return text.encode("utf-8") if text else None
