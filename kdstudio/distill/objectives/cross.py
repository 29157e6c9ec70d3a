"""Dense KD from a local teacher with another tokenizer: its full distribution, moved onto the
student's tokens by the same byte alignment sparse KD uses (`kdstudio.distill.align`).

    cross = CrossTokenizer(teacher_tokenizer, student_tokenizer, mode="bytes", max_length=...)
    ids, logprobs, kinds = cross.batch_targets(batch, teacher_model, device)

For each example of a batch the teacher reads the prompt in its own chat template and the
response in its own tokens (`batches.encode_example` with the teacher's tokenizer), runs
forward once, and at each of its response positions (and its end-of-turn token) keeps its
`TOP_K` most likely tokens with their exact log-probabilities: with a vocabulary of any size
the few that matter, and the rest is the tail bucket, whose mass is known exactly here. Those
positions are aligned to the student's tokens like an API teacher's top-k (projection by
bytes, chains across teacher tokens, conditionals inside them), so dense KD across tokenizers
and sparse KD from a server share one code path. An example's teacher encoding is cached; a
batch the student wrote (on-policy) is encoded afresh from the text its tokens spell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from kdstudio.distill.align import align_example, token_offsets
from kdstudio.distill.batches import FALLBACK_TEMPLATE, IGNORE, Encoded, collate, encode_example
from kdstudio.distill.objectives.kd import place_targets
from kdstudio.logprobs import TokenLogprobs
from kdstudio.teachers.vocab import VocabBytes

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch

TOP_K = 64  # teacher tokens kept per position; the rest is the tail bucket


class CrossTokenizer:
    """The teacher's side of dense KD between two tokenizers (see the module docstring)."""

    def __init__(
        self, teacher_tokenizer: Any, student_tokenizer: Any, *, mode: str, max_length: int
    ) -> None:
        tok = teacher_tokenizer
        if not getattr(tok, "chat_template", None):
            tok.chat_template = FALLBACK_TEMPLATE
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.teacher_tok = tok
        self.teacher_vocab = VocabBytes(tok)
        self.student_vocab = VocabBytes(student_tokenizer)
        self.mode = mode
        # the teacher's tokens may be more per response than the student's: give it room
        self.max_length = 4 * max_length
        self._encoded: dict[tuple[int, int], Encoded | None] = {}

    def teacher_encoding(self, enc: Encoded, response: str, *, cache: bool) -> Encoded | None:
        """The example as the teacher reads it (None: too long for the teacher to see any)."""
        ex = enc.example
        key = (ex.row_id, ex.sample)
        if cache and key in self._encoded:
            return self._encoded[key]
        got = encode_example(self.teacher_tok, ex.messages, response, self.max_length)
        if cache:
            self._encoded[key] = got
        return got

    def response_text(self, enc: Encoded) -> str:
        """The text the student's response tokens spell (for a batch the student wrote)."""
        completion = enc.input_ids[enc.prompt_len :]
        spelled = b"".join(
            self.student_vocab.of(i) or b""
            for i in completion
            if i not in self.student_vocab.specials
        )
        return spelled.decode("utf-8", errors="replace")

    def batch_targets(
        self, batch: Batch, teacher: Any, *, generated: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`(ids, logprobs, kinds)` of the batch, shaped like `SparseKD.batch_targets`."""
        responses = [
            self.response_text(e) if generated else e.example.response for e in batch.items
        ]
        teacher_encs = [
            self.teacher_encoding(e, r, cache=not generated)
            for e, r in zip(batch.items, responses, strict=True)
        ]
        readable = [(t, r) for t, r in zip(teacher_encs, responses, strict=True) if t is not None]
        scored = self._teacher_logprobs(
            [t for t, _ in readable], [r for _, r in readable], teacher, batch.input_ids.device
        )
        found = []
        for enc, resp, t_enc in zip(batch.items, responses, teacher_encs, strict=True):
            tl = scored.pop(0) if t_enc is not None else None
            found.append(align_example(enc, resp, tl, self.student_vocab, mode=self.mode))
        return place_targets(batch, found)

    def _teacher_logprobs(
        self, encs: list[Encoded], responses: list[str], teacher: Any, device: Any
    ) -> list[TokenLogprobs | None]:
        """The teacher's top-k at each of its response positions, as an API would give them."""
        if not encs:
            return []
        pad = self.teacher_tok.pad_token_id
        tb = collate(encs, pad).to(device)
        with torch.no_grad():
            logits = teacher(
                input_ids=tb.input_ids, attention_mask=tb.attention_mask, use_cache=False
            ).logits
        out = []
        for row, (enc, resp) in enumerate(zip(encs, responses, strict=True)):
            # from the token holding the response's first byte on (not template text before it)
            offsets, r0 = token_offsets(enc, self.teacher_vocab, resp.encode("utf-8"))
            first = enc.prompt_len + next(
                (j for j in range(len(offsets) - 1) if offsets[j + 1] > r0), 0
            )
            steps = [p for p in range(max(first, 1), len(enc)) if enc.labels[p] != IGNORE]
            if not steps:
                out.append(None)
                continue
            index = torch.tensor([p - 1 for p in steps], device=logits.device)
            logp = torch.log_softmax(logits[row].index_select(0, index).float(), dim=-1)
            k = min(TOP_K, logp.shape[-1])
            top_lp, top_ids = logp.topk(k, dim=-1)
            chosen = torch.tensor([enc.input_ids[p] for p in steps], device=logp.device)
            sampled = logp.gather(-1, chosen[:, None])[:, 0]
            out.append(self._token_logprobs(chosen, sampled, top_ids, top_lp))
        return out

    def _token_logprobs(
        self, chosen: Tensor, sampled: Tensor, top_ids: Tensor, top_lp: Tensor
    ) -> TokenLogprobs:
        spell = self.teacher_vocab.of
        ids = chosen.tolist()
        return TokenLogprobs(
            tokens=[spell(i) or b"" for i in ids],
            token_ids=None,  # the teacher's ids mean nothing to the student: bytes do
            logprobs=sampled.cpu().numpy().astype(np.float32),
            top_tokens=[[spell(int(j)) or b"" for j in row] for row in top_ids.tolist()],
            top_ids=None,
            top_logprobs=top_lp.cpu().numpy().astype(np.float32),
        )
