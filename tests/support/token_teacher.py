"""A teacher that writes with a real tokenizer's tokens and renders them the way real servers do.

    teacher = TokenTeacher(tokenizer_dir, style="llamacpp")
    server = OpenAIServer(teacher=teacher)      # answers chat completions with it

Each answer is a deterministic function of the request: a few words of the tokenizer's
vocabulary (as single tokens, sometimes as two tokens where the tokenizer has one, the
non-canonical sequences a sampling teacher writes), now and then a character the tokenizer
spells with several byte tokens, and its end-of-turn token. Each position's top-k holds the
chosen token, other ordinary tokens, and sometimes a special token, with logprobs that
decrease down the list.

How it is rendered (`STYLES`):

- `llamacpp`: llama-cpp-python's server: token text decoded with errors ignored (a byte
  token of a cut character is ""), special tokens as "", `bytes` null, and no entry for the
  stop token;
- `ollama`: text and UTF-8 `bytes` for every entry (a cut character's bytes are exact), no
  stop token;
- `vllm`: like `ollama` but the stop token is the last entry, rendered as "".

`tokens_of(body)` gives the ids an answer was written with (tests compare training with it).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

STYLES = ("llamacpp", "ollama", "vllm")


class TokenTeacher:
    """Answers written in a tokenizer's own tokens (see the module docstring)."""

    def __init__(self, tokenizer_dir: Any, *, style: str = "llamacpp", top_k: int = 5) -> None:
        from transformers import AutoTokenizer

        from kdstudio.teachers.vocab import VocabBytes

        if style not in STYLES:
            raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")
        self.tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.vocab = VocabBytes(self.tok)
        self.style, self.top_k = style, top_k
        self.eos = self.tok.eos_token_id
        words = [
            i
            for i, b in enumerate(self.vocab.bytes)
            if b and i not in self.vocab.specials and b[:1] == b" " and b[1:].isalpha()
        ]
        self.words = sorted(words)
        # pairs of tokens that spell one word token: a non-canonical way to write it
        self.splits = {}
        for i in self.words:
            b = self.vocab.of(i) or b""
            for cut in range(2, len(b)):
                left, right = self.vocab.find(b[:cut]), self.vocab.find(b[cut:])
                if left >= 0 and right >= 0 and left not in self.vocab.specials:
                    self.splits[i] = (left, right)
                    break
        self.cut_char = self._cut_char()
        self.others = sorted(set(range(len(self.vocab))) - self.vocab.specials - {self.eos})
        self.special = sorted(self.vocab.specials - {self.eos})

    def _cut_char(self) -> list[int] | None:
        """A character the tokenizer spells with two or more byte tokens, as those ids."""
        for ch in "жщ🙂é":
            ids = self.tok.encode(" " + ch, add_special_tokens=False)
            pieces = [self.vocab.of(i) or b"" for i in ids]
            if len(ids) >= 3 and all(len(p) == 1 for p in pieces[1:]):
                return ids
        return None

    def tokens_of(self, body: dict[str, Any]) -> list[int]:
        """The ids of the answer to `body` (content tokens and the end-of-turn token)."""
        key = json.dumps([body.get("messages"), body.get("seed")], sort_keys=True)
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        ids: list[int] = []
        for _ in range(rng.randint(6, 10)):
            word = rng.choice(self.words)
            if word in self.splits and rng.random() < 0.3:
                ids += list(self.splits[word])
            else:
                ids.append(word)
            if self.cut_char and rng.random() < 0.15:
                ids += self.cut_char
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is not None:
            ids = ids[: int(limit)]
            while not self._whole(ids):  # never stop inside a character
                ids.pop()
        return [*ids, self.eos]

    def _whole(self, ids: list[int]) -> bool:
        try:
            b"".join(self.vocab.of(i) or b"" for i in ids).decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def answer(self, body: dict[str, Any], k: int) -> tuple[str, list[dict], str]:
        """(content, logprobs content entries, finish reason) rendered in this teacher's style."""
        ids = self.tokens_of(body)
        content_ids = ids[:-1]
        content = b"".join(self.vocab.of(i) or b"" for i in content_ids).decode("utf-8")
        rng = random.Random(hashlib.sha256(repr(ids).encode()).digest())
        shown = ids if self.style == "vllm" else content_ids
        entries = [self._entry(i, rng, k) for i in shown]
        return content, entries, "stop"

    def _entry(self, tid: int, rng: random.Random, k: int) -> dict[str, Any]:
        lp = -rng.random() * 1.5
        alts = [tid] + rng.sample(self.others, k + 2)
        if self.special and rng.random() < 0.3:
            alts.insert(rng.randint(1, len(alts) - 1), rng.choice(self.special))
        top, seen, last = [], set(), lp
        for j, alt in enumerate(alts):
            if alt in seen and alt != tid:
                continue
            seen.add(alt)
            alt_lp = lp if j == 0 else last - 0.2 - rng.random() * 1.5
            last = alt_lp
            top.append(self._render(alt, alt_lp))
            if len(top) == k:
                break
        return {**self._render(tid, lp), "top_logprobs": top}

    def _render(self, tid: int, lp: float) -> dict[str, Any]:
        raw = b"" if tid in self.vocab.specials else (self.vocab.of(tid) or b"")
        text = raw.decode("utf-8", errors="ignore")
        entry: dict[str, Any] = {"token": text, "logprob": lp}
        entry["bytes"] = None if self.style == "llamacpp" else list(raw)
        return entry
