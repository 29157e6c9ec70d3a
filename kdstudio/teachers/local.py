"""A local teacher: a Hugging Face model folder run with transformers in this process.

`LocalTeacher.generate` runs one batched `generate()` (left padding, GPU when present)
and returns, per prompt, the text and the top-k logprobs of every generated position
*with token ids* (from the raw logits, fp32 log-softmax). The final eos token, when the
model stopped on it, is part of the logprobs (the student should learn to stop); the text
excludes it. Token bytes come from the byte-level vocabulary when the tokenizer has one.

Sampling: temperature 0 is greedy; otherwise each generate() call is seeded from its
first item's seed (seed + sample), so a re-run with the same batch size repeats exactly.
Without `top_logprobs`, the local teacher still keeps the top 20 (they cost nothing here).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdstudio.errors import UserError
from kdstudio.generation import generate_batch
from kdstudio.logprobs import TokenLogprobs
from kdstudio.teachers import Response
from kdstudio.teachers.vocab import VocabBytes

if TYPE_CHECKING:
    from kdstudio.config import TeacherConfig

DEFAULT_TOP_K = 20


def request_body(
    teacher: TeacherConfig, params: dict[str, Any], messages: list[dict]
) -> dict[str, Any]:
    """What `LocalTeacher.generate` takes for one prompt (and what the collector hashes):
    the OpenAI request fields it honours. The sample's seed offset is added at generate time."""
    body = {"model": teacher.model or os.path.basename(str(teacher.path)), "messages": messages}
    body.update({k: v for k, v in params.items() if k not in ("samples", "token_ids")})
    return body


class LocalTeacher:
    """A loaded model + tokenizer that answers chat prompts with logprobs and ids."""

    def __init__(self, path: str | Path, *, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise UserError(
                f"local teacher folder {self.path} has no config.json (expected a Hugging Face model folder)"
            )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = (
            torch.bfloat16
            if self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
            else torch.float32
        )
        self.model = (
            AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        )
        self.vocab = VocabBytes(self.tok)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def token_bytes(self, token_id: int) -> bytes:
        """What token `token_id` spells (a special token: its text; an id beyond the
        tokenizer, a padding row: nothing)."""
        return self.vocab.of(token_id) or b""

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return self.tok(text, add_special_tokens=False)["input_ids"]
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant: "
        return self.tok(text)["input_ids"]

    def generate(self, bodies: list[dict[str, Any]]) -> list[Response]:
        """Answer a batch of request bodies (same params, built by the collector)."""
        import torch

        params = bodies[0]
        prompts = [self._prompt_ids(b["messages"]) for b in bodies]
        pad = self.tok.pad_token_id
        temperature = float(params.get("temperature") or 0.0)
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(params.get("max_tokens") or 256),
            "do_sample": temperature > 0,
            "return_dict_in_generate": True,
            "output_logits": True,
            "pad_token_id": pad,
            "eos_token_id": self.tok.eos_token_id,
        }
        if temperature > 0:
            kwargs["temperature"] = temperature
            if params.get("top_p") is not None:
                kwargs["top_p"] = float(params["top_p"])
            torch.manual_seed(int(params.get("seed") or 0))
        if params.get("stop"):
            kwargs["stop_strings"] = list(params["stop"])
            kwargs["tokenizer"] = self.tok
        k = params.get("top_logprobs")
        k = DEFAULT_TOP_K if k is None else int(k)
        t0 = time.monotonic()
        got = generate_batch(self.model, prompts, pad_id=pad, device=self.device, **kwargs)
        latency = (time.monotonic() - t0) / len(bodies)
        logits = torch.stack(got.output.logits, dim=1).float()  # [B, steps, V]
        logp = torch.log_softmax(logits, dim=-1)
        results = []
        for b, prompt in enumerate(prompts):
            ids = got.new_ids[b]
            n = len(ids)
            for i, tid in enumerate(ids):
                if tid == self.tok.eos_token_id:
                    n = i + 1
                    break
                if tid == pad and pad != self.tok.eos_token_id:
                    n = i
                    break
            ids = ids[:n]
            results.append(self._response(ids, logp[b, :n], k, len(prompt), latency, params))
        return results

    def _response(
        self, ids: list[int], logp: Any, k: int, n_prompt: int, latency: float, params: dict
    ) -> Response:
        import numpy as np
        import torch

        sampled = logp.gather(-1, torch.tensor(ids, device=logp.device, dtype=torch.long)[:, None])[
            :, 0
        ]
        top_lp, top_ids = (
            torch.topk(logp, k=min(k, logp.shape[-1]), dim=-1)
            if k > 0
            else (logp[:, :0], logp[:, :0].long())
        )
        top_ids_np = top_ids.cpu().numpy().astype(np.int32)
        tl = TokenLogprobs(
            tokens=[self.token_bytes(i) for i in ids],
            token_ids=list(ids),
            logprobs=sampled.cpu().numpy().astype(np.float32),
            top_tokens=[[self.token_bytes(int(j)) for j in row] for row in top_ids_np],
            top_ids=top_ids_np,
            top_logprobs=top_lp.cpu().numpy().astype(np.float32),
        )
        stopped = bool(ids) and ids[-1] == self.tok.eos_token_id
        text_ids = ids[:-1] if stopped else ids
        text = self.tok.decode(text_ids, skip_special_tokens=True)
        for s in params.get("stop") or []:
            if s and s in text:
                text, stopped = text[: text.index(s)], True
        return Response(
            text=text,
            finish_reason="stop" if stopped else "length",
            prompt_tokens=n_prompt,
            completion_tokens=len(ids),
            cost=0.0,
            logprobs=tl,
            latency=latency,
            endpoint=f"local:{self.path}",
            model=params.get("model"),
            source="local",
        )
