"""A real OpenAI-protocol HTTP server on 127.0.0.1 for tests, benchmarks and the demo.

It speaks HTTP/1.1 with keep-alive over asyncio streams (in a background thread, or as a
process: `python -m support.openai_server --latency 0.05`) and implements:

- `GET /v1/models`, `GET /v1/models/{id}`
- `POST /v1/chat/completions` with `logprobs`/`top_logprobs` (token strings, UTF-8 bytes,
  `-9999` sentinels and some null `bytes`, like the real API) and vLLM's
  `return_tokens_as_token_ids` ("token_id:N") when `token_ids=True`; `header_key=(name,
  value)` asks for a key in a header of its own (like Azure's `api-key`), else 401
- `POST /v1/files` (multipart), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`
- `POST /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`
- `GET /_stats` (billing counters, as JSON) and `POST /_reset`
- `teacher=` a `support.token_teacher.TokenTeacher` writes the answers in a real tokenizer's
  tokens, rendered as llama.cpp, Ollama or vLLM render them (instead of the word list below)
- `flavor=` one of FLAVORS makes it say what that server says of itself: vLLM (`owned_by`
  "vllm", `GET /version`), llama.cpp (`Server: llama.cpp`, `owned_by` "llamacpp",
  `GET /props`), Ollama (`GET /api/version`), LM Studio (`GET /api/v0/models`; logprobs
  silently left out, as LM Studio does) or OpenAI (`openai-organization` headers)

Answers are deterministic functions of the request: random words, or what `reply(body)`
returns when given (e.g. a judge's verdict read from the rubric in the request; None falls
back to the words). Faults are injected with
`add_fault(kind, ...)`: 429 (with retry-after), 500, 503, 400, 404, 401, 403, `slow`,
`drop` (close without answering), `malformed` (invalid JSON), `truncated` (body shorter
than its content-length), `empty_choices`. `rate_limit=N` answers at most N requests per
second and 429 beyond. `billed` counts complete answers per prompt (the canonical request
body), so a test can assert that no prompt was paid for twice.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
VOCAB = (
    [" the", " a", " answer", " is", " student", " teacher", " model", " learns", " from"]
    + [" small", " large", " data", " token", " word", " and", " to", " of", " in", " it"]
    + [" é", " café", " naïve", " 🙂", ",", ".", "!", "?", " 1", " 2", " 3", " 4", " 5"]
    + [" distill", " knowledge", " soft", " label", " probability", " loss", " step", " runs"]
)
STATUS_FAULTS = {"400": 400, "401": 401, "403": 403, "404": 404, "408": 408, "409": 409}
STATUS_FAULTS.update({"429": 429, "500": 500, "503": 503})
FAULT_KINDS = (*STATUS_FAULTS, "slow", "drop", "malformed", "truncated", "empty_choices")
FLAVORS = ("vllm", "llamacpp", "ollama", "lmstudio", "openai")
OWNERS = {"vllm": "vllm", "llamacpp": "llamacpp", "ollama": "library",
          "lmstudio": "organization_owner", "openai": "system"}  # fmt: skip


@dataclass
class Fault:
    """One injected fault. It fires on matching requests `times` times (None = forever),
    or with `probability` per matching request."""

    kind: str
    times: int | None = 1
    match: str | None = None  # substring of the request's messages
    endpoint: str = "chat"  # chat | models | files | batches | batch_line | any
    probability: float | None = None
    retry_after: float | None = None
    delay: float = 0.0
    message: str | None = None
    code: str | None = None  # the error body's code, e.g. "insufficient_quota"
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(FAULT_KINDS)})")


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class _Bucket:
    """Token bucket: `rate` requests per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.tokens, self.t = self.burst, time.monotonic()

    def take(self) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def count_tokens(messages: list[dict]) -> int:
    """The server's prompt-token count: words and punctuation, plus 3 per message."""
    total = 0
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += 3 + max(1, math.ceil(len(str(content)) / 4))
    return total


class OpenAIServer:
    """The loopback server. Use as a context manager, or `start()`/`stop()`."""

    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("teacher-1",),
        api_key: str | None = None,
        latency: float = 0.0,
        rate_limit: float | None = None,
        burst_s: float = 0.2,
        max_logprobs: int = 20,
        logprobs: bool = True,
        token_ids: bool = False,
        batch_delay: float = 0.2,
        min_tokens: int = 4,
        max_tokens: int = 24,
        port: int = 0,
        host: str = "127.0.0.1",
        echo_key_in_errors: bool = True,
        reject_max_tokens: bool = False,
        flavor: str | None = None,
        teacher: Any = None,
        header_key: tuple[str, str] | None = None,
        reply: Any = None,
    ) -> None:
        if flavor is not None and flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r} (known: {', '.join(FLAVORS)})")
        self.flavor = flavor
        self.teacher = teacher  # a support.token_teacher.TokenTeacher writes the answers
        self.header_key = header_key  # (name, value): a key sent as a header (Azure's api-key)
        self.models, self.api_key, self.latency = list(models), api_key, latency
        self.max_logprobs, self.logprobs_ok, self.token_ids = max_logprobs, logprobs, token_ids
        self.batch_delay, self.min_tokens, self.max_tokens = batch_delay, min_tokens, max_tokens
        self.host, self.port = host, port
        self.echo_key_in_errors = echo_key_in_errors
        self.reject_max_tokens = reject_max_tokens  # like newer OpenAI models
        self.reply = reply  # body -> the answer's text (None: the usual random words)
        self.faults: list[Fault] = []
        self.billed: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.files: dict[str, _File] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._bucket = _Bucket(rate_limit, rate_limit * burst_s) if rate_limit else None
        self._burst_s = burst_s
        self._lock = threading.Lock()
        self._rng = random.Random(1234)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._run_thread, name="openai-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the loopback OpenAI server did not start")
        return self

    def _run_thread(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._start_server())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _start_server(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration (thread-safe) --------------------------------------------------------
    def add_fault(self, kind: str, **kw: Any) -> Fault:
        fault = Fault(kind, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def set_rate_limit(self, rate: float | None, burst_s: float | None = None) -> None:
        with self._lock:
            burst_s = self._burst_s if burst_s is None else burst_s
            self._bucket = _Bucket(rate, rate * burst_s) if rate else None

    def reset_counters(self) -> None:
        with self._lock:
            self.billed.clear()
            self.requests.clear()
            self.status_counts.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "billed": dict(self.billed),
                "billed_total": sum(self.billed.values()),
                "paid_twice": sum(1 for n in self.billed.values() if n > 1),
                "requests": dict(self.requests),
                "status": {str(k): v for k, v in self.status_counts.items()},
            }

    def _pick_fault(self, endpoint: str, text: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.endpoint not in (endpoint, "any"):
                    continue
                if fault.match is not None and fault.match not in text:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if fault.probability is not None and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                return fault
        return None

    # -- HTTP ---------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        writer.kd_headers = self._flavor_headers()  # sent with every answer (see _send_raw)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                keep = await self._dispatch(method, path, headers, body, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass

    async def _dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes, writer
    ) -> bool:
        path = path.split("?", 1)[0]
        native = self._native(method, path)
        if native is not None:
            return await _send(writer, 200, native)
        if path.startswith("/v1/"):
            path = path[3:]
        if path == "/_stats":
            return await _send(writer, 200, self.stats())
        if path == "/_reset" and method == "POST":
            self.reset_counters()
            return await _send(writer, 200, {"ok": True})
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return await self._auth_error(writer, headers)
        if self.header_key is not None:
            name, value = self.header_key
            if headers.get(name.lower()) != value:
                return await self._auth_error(writer, headers, headers.get(name.lower(), ""))
        parts = [p for p in path.split("/") if p]
        try:
            if parts == ["chat", "completions"] and method == "POST":
                return await self._chat(writer, body)
            if parts and parts[0] == "models" and method == "GET":
                return await self._models(writer, parts[1:])
            if parts and parts[0] == "files":
                return await self._files(writer, method, parts[1:], headers, body)
            if parts and parts[0] == "batches":
                return await self._batches(writer, method, parts[1:], body)
        except _HttpError as exc:
            return await _send(writer, exc.status, _error_body(exc.message, exc.code))
        return await _send(writer, 404, _error_body(f"no route for {method} {path}", "not_found"))

    async def _auth_error(self, writer, headers: dict[str, str], given: str | None = None) -> bool:
        if given is None:
            given = headers.get("authorization", "").removeprefix("Bearer ")
        # Like the real API, name the key in the message: the client must never repeat it.
        shown = given if self.echo_key_in_errors else "***"
        message = f"Incorrect API key provided: {shown}. You can find your API key at https://example.invalid."
        with self._lock:
            self.status_counts[401] += 1
        return await _send(writer, 401, _error_body(message, "invalid_api_key"))

    # -- flavors: what each real server says of itself ------------------------------------
    def _flavor_headers(self) -> dict[str, str]:
        if self.flavor == "llamacpp":
            return {"server": "llama.cpp"}
        if self.flavor == "openai":
            return {"openai-organization": "user-loopback", "openai-version": "2020-10-01"}
        return {}

    def _native(self, method: str, path: str) -> dict[str, Any] | None:
        """The flavor's own endpoints outside /v1 (None: not one of them)."""
        if method != "GET" or self.flavor is None:
            return None
        if self.flavor == "vllm" and path == "/version":
            return {"version": "0.11.0"}
        if self.flavor == "ollama" and path == "/api/version":
            return {"version": "0.12.11"}
        if self.flavor == "llamacpp" and path == "/props":
            return {
                "default_generation_settings": {"n_ctx": 4096, "params": {"n_probs": 0}},
                "total_slots": 1,
                "model_path": f"/models/{self.models[0]}.gguf",
                "build_info": "b6500-loopback",
            }
        if self.flavor == "lmstudio" and path == "/api/v0/models":
            return {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "type": "llm",
                        "publisher": "lmstudio-community",
                        "arch": "llama",
                        "compatibility_type": "gguf",
                        "quantization": "Q4_K_M",
                        "state": "loaded",
                        "max_context_length": 4096,
                    }  # fmt: skip
                    for m in self.models
                ],
            }
        return None

    # -- models -------------------------------------------------------------------------
    async def _models(self, writer, rest: list[str]) -> bool:
        with self._lock:
            self.requests["models"] += 1
        fault = self._pick_fault("models", "")
        if fault is not None:
            return await self._fault(writer, fault)
        if rest:
            name = "/".join(rest)
            if name not in self.models:
                raise _HttpError(404, f"The model `{name}` does not exist", "model_not_found")
            return await _send(writer, 200, _model(name, self.flavor))
        return await _send(
            writer, 200, {"object": "list", "data": [_model(m, self.flavor) for m in self.models]}
        )

    # -- chat completions ------------------------------------------------------------------
    async def _chat(self, writer, raw: bytes) -> bool:
        with self._lock:
            self.requests["chat"] += 1
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _HttpError(
                400, f"We could not parse the JSON body of your request: {exc}"
            ) from None
        text = json.dumps(body.get("messages", []), ensure_ascii=False)
        fault = self._pick_fault("chat", text)
        if fault is not None and fault.kind != "slow":
            return await self._fault(writer, fault)
        bucket = self._bucket
        if bucket is not None:
            with self._lock:
                wait = bucket.take()
            if wait > 0:
                with self._lock:
                    self.status_counts[429] += 1
                headers = {
                    "retry-after": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                    "x-ratelimit-limit-requests": str(int(bucket.rate)),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait:.3f}s",
                }
                body_err = _error_body("Rate limit reached for requests", "rate_limit_exceeded")
                return await _send(writer, 429, body_err, headers)
        result = self.complete(body)  # validates before any waiting, like a real server
        delay = self.latency + (fault.delay if fault is not None else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        self._bill(body)
        return await _send(writer, 200, result)

    def _bill(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.billed[_canonical(body)] += 1
            self.status_counts[200] += 1

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The deterministic answer to a chat completion request (raises _HttpError)."""
        model = body.get("model")
        if model not in self.models:
            raise _HttpError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HttpError(400, "'messages' must be a non-empty array", "invalid_request_error")
        if self.reject_max_tokens and "max_tokens" in body:
            raise _HttpError(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "unsupported_parameter",
            )
        want_lp = bool(body.get("logprobs"))
        top_k = body.get("top_logprobs")
        if self.flavor == "lmstudio":  # accepts the fields and gives no logprobs back
            want_lp, top_k = False, None
        if top_k is not None and not want_lp:
            raise _HttpError(
                400, "top_logprobs requires logprobs to be true", "invalid_request_error"
            )
        if want_lp and not self.logprobs_ok:
            raise _HttpError(403, "This model does not support logprobs.", "permission_denied")
        if top_k is not None and not 0 <= int(top_k) <= self.max_logprobs:
            raise _HttpError(
                400,
                f"top_logprobs must be between 0 and {self.max_logprobs}",
                "invalid_request_error",
            )
        as_ids = bool(body.get("return_tokens_as_token_ids")) and self.token_ids
        n = int(body.get("n") or 1)
        choices, completion_tokens = [], 0
        for index in range(n):
            if self.teacher is not None:
                content, entries, finish = self.teacher.answer(body, int(top_k or 0))
                completion_tokens += len(entries)
            else:
                tokens, finish = self._generate(body, index)
                content, entries = "".join(tokens), None
                completion_tokens += len(tokens)
            choice: dict[str, Any] = {
                "index": index,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": finish,
                "logprobs": None,
            }
            if want_lp:
                if entries is None:
                    entries = self._logprobs(body, index, tokens, int(top_k or 0), as_ids)
                choice["logprobs"] = {"content": entries, "refusal": None}
            choices.append(choice)
        prompt_tokens = count_tokens(messages)
        return {
            "id": "chatcmpl-" + hashlib.sha1(_canonical(body).encode()).hexdigest()[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_loopback",
        }

    def _generate(self, body: dict[str, Any], index: int) -> tuple[list[str], str]:
        if self.reply is not None:
            text = self.reply(body)
            if text is not None:
                return [text], "stop"
        key = [body.get(k) for k in ("model", "messages", "seed", "temperature", "top_p")] + [index]
        rng = random.Random(hashlib.sha256(_canonical({"k": key}).encode()).digest())
        n = rng.randint(self.min_tokens, self.max_tokens)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        tokens = [rng.choice(VOCAB) for _ in range(n)]
        finish = "stop"
        if limit is not None and n > int(limit):
            tokens, finish = tokens[: int(limit)], "length"
        stops = body.get("stop")
        if stops:
            text = "".join(tokens)
            for s in [stops] if isinstance(stops, str) else stops:
                if s and s in text:
                    cut, kept = text.index(s), []
                    for tok in tokens:
                        if len("".join(kept + [tok])) > cut:
                            break
                        kept.append(tok)
                    tokens, finish = kept, "stop"
                    break
        return tokens, finish

    def _logprobs(
        self, body: dict, index: int, tokens: list[str], k: int, as_ids: bool
    ) -> list[dict]:
        rng = random.Random(hashlib.sha256((_canonical(body) + str(index)).encode()).digest())
        out = []
        for pos, tok in enumerate(tokens):
            lp = -rng.random() * 2.0
            alts = [tok] + [t for t in rng.sample(VOCAB, min(len(VOCAB), k + 1)) if t != tok][
                : max(0, k - 1)
            ]
            top, last = [], lp
            for j, alt in enumerate(alts[:k]):
                alt_lp = lp if j == 0 else last - rng.random() * 2.0
                last = alt_lp
                if j == k - 1 and k > 2 and pos % 5 == 4:
                    alt_lp = -9999.0  # the API's "not in the top" sentinel
                top.append(self._entry(alt, alt_lp, as_ids, null_bytes=(pos + j) % 7 == 6))
            out.append(
                {**self._entry(tok, lp, as_ids, null_bytes=pos % 7 == 6), "top_logprobs": top}
            )
        return out

    @staticmethod
    def _entry(tok: str, lp: float, as_ids: bool, *, null_bytes: bool) -> dict[str, Any]:
        if as_ids:
            token = f"token_id:{VOCAB.index(tok) + 10}"
            return {"token": token, "logprob": lp, "bytes": list(token.encode())}
        return {"token": tok, "logprob": lp, "bytes": None if null_bytes else list(tok.encode())}

    async def _fault(self, writer, fault: Fault) -> bool:
        status = STATUS_FAULTS.get(fault.kind)
        with self._lock:
            self.status_counts[status or 0] += 1
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if status is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = str(max(1, math.ceil(fault.retry_after)))
                headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
            codes = {429: "rate_limit_exceeded", 401: "invalid_api_key", 404: "model_not_found"}
            code = fault.code or codes.get(status)
            message = fault.message or f"injected {status} {REASONS[status]}"
            return await _send(writer, status, _error_body(message, code), headers)
        if fault.kind == "drop":
            writer.transport.abort()
            return False
        if fault.kind == "malformed":
            return await _send_raw(
                writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess'
            )
        if fault.kind == "truncated":
            body = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
            await _send_raw(writer, 200, body[: len(body) // 2], content_length=len(body))
            writer.transport.abort()
            return False
        if fault.kind == "empty_choices":
            empty = {
                "id": "chatcmpl-empty",
                "object": "chat.completion",
                "created": int(time.time()),
            }
            empty.update({"model": self.models[0], "choices": [], "usage": None})
            return await _send(writer, 200, empty)
        raise AssertionError(fault.kind)

    # -- files ----------------------------------------------------------------------------
    async def _files(
        self, writer, method: str, rest: list[str], headers: dict[str, str], body: bytes
    ) -> bool:
        with self._lock:
            self.requests["files"] += 1
        fault = self._pick_fault("files", "")
        if fault is not None:
            return await self._fault(writer, fault)
        if method == "POST" and not rest:
            fields = _multipart(headers.get("content-type", ""), body)
            if "file" not in fields:
                raise _HttpError(400, "missing 'file' in the multipart upload")
            filename, data = fields["file"]
            f = _File(
                "file-" + uuid.uuid4().hex[:24],
                filename or "upload.jsonl",
                fields.get("purpose", ("", b""))[1].decode(),
                data,
            )
            self.files[f.id] = f
            return await _send(writer, 200, f.to_dict())
        if not rest or rest[0] not in self.files:
            raise _HttpError(404, f"No such File object: {rest[0] if rest else ''}")
        f = self.files[rest[0]]
        if len(rest) == 2 and rest[1] == "content":
            return await _send_raw(writer, 200, f.data, content_type="application/octet-stream")
        return await _send(writer, 200, f.to_dict())

    # -- batches --------------------------------------------------------------------------
    async def _batches(self, writer, method: str, rest: list[str], body: bytes) -> bool:
        with self._lock:
            self.requests["batches"] += 1
        fault = self._pick_fault("batches", "")
        if fault is not None:
            return await self._fault(writer, fault)
        if method == "POST" and not rest:
            req = json.loads(body or b"{}")
            file_id = req.get("input_file_id")
            if file_id not in self.files:
                raise _HttpError(400, f"input_file_id {file_id!r} does not exist")
            now = int(time.time())
            batch = {
                "id": "batch_" + uuid.uuid4().hex[:24],
                "object": "batch",
                "endpoint": req.get("endpoint", "/v1/chat/completions"),
                "errors": None,
                "input_file_id": file_id,
                "completion_window": req.get("completion_window", "24h"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "in_progress_at": None,
                "expires_at": now + 86400,
                "completed_at": None,
                "failed_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": req.get("metadata"),
            }
            self.batches[batch["id"]] = batch
            task = asyncio.get_running_loop().create_task(self._run_batch(batch["id"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return await _send(writer, 200, batch)
        if method == "GET" and not rest:
            data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
            return await _send(writer, 200, {"object": "list", "data": data, "has_more": False})
        if not rest or rest[0] not in self.batches:
            raise _HttpError(404, f"No such Batch object: {rest[0] if rest else ''}")
        batch = self.batches[rest[0]]
        cancel = len(rest) == 2 and rest[1] == "cancel" and method == "POST"
        if cancel and batch["status"] not in ("completed", "failed", "expired"):
            batch["status"] = "cancelled"
            batch["cancelled_at"] = int(time.time())
        return await _send(writer, 200, batch)

    async def _run_batch(self, batch_id: str) -> None:
        batch = self.batches[batch_id]
        await asyncio.sleep(self.batch_delay / 2)
        if batch["status"] == "cancelled":
            return
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        lines = self.files[batch["input_file_id"]].data.decode().splitlines()
        batch["request_counts"]["total"] = len(lines)
        await asyncio.sleep(self.batch_delay / 2)
        if batch["status"] == "cancelled":
            return
        ok, bad = [], []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            req = json.loads(line)
            custom_id, req_body = req.get("custom_id"), req.get("body", {})
            fault = self._pick_fault(
                "batch_line", json.dumps(req_body.get("messages", []), ensure_ascii=False)
            )
            status, resp = 200, None
            if fault is not None and fault.kind in STATUS_FAULTS:
                status = STATUS_FAULTS[fault.kind]
                resp = _error_body(fault.message or f"injected {status}", None)
            else:
                try:
                    resp = self.complete(req_body)
                    # Batch prices are half: billing is still one answer per prompt.
                    self._bill(req_body)
                except _HttpError as exc:
                    status, resp = exc.status, _error_body(exc.message, exc.code)
            entry = {
                "id": f"batch_req_{i}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"req_{i}", "body": resp},
                "error": None,
            }
            (ok if status == 200 else bad).append(entry)
        random.Random(batch_id).shuffle(ok)  # results come back in any order
        out = _File(
            "file-" + uuid.uuid4().hex[:24], "batch_output.jsonl", "batch_output", _jsonl(ok)
        )
        self.files[out.id] = out
        batch["output_file_id"] = out.id
        if bad:
            err = _File(
                "file-" + uuid.uuid4().hex[:24], "batch_errors.jsonl", "batch_output", _jsonl(bad)
            )
            self.files[err.id] = err
            batch["error_file_id"] = err.id
        batch["request_counts"].update(completed=len(ok), failed=len(bad))
        batch["status"], batch["completed_at"] = "completed", int(time.time())


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _model(name: str, flavor: str | None = None) -> dict[str, Any]:
    owner = OWNERS.get(flavor or "", "loopback")
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": owner}


def _error_body(message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        key, _, value = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
        return method, path, headers, bytes(body)
    length = int(headers.get("content-length") or 0)
    return method, path, headers, await reader.readexactly(length) if length else b""


async def _send(writer, status: int, doc: Any, headers: dict[str, str] | None = None) -> bool:
    return await _send_raw(writer, status, json.dumps(doc).encode(), headers=headers)


async def _send_raw(
    writer,
    status: int,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    content_length: int | None = None,
) -> bool:
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"content-type: {content_type}"]
    head.append(f"content-length: {len(body) if content_length is None else content_length}")
    head += [
        f"{k}: {v}" for k, v in {**getattr(writer, "kd_headers", {}), **(headers or {})}.items()
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    return True


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """{field name: (filename, data)} of a multipart/form-data body."""
    boundary = None
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise _HttpError(400, "multipart upload without a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(b"--" + boundary.encode()):
        if b"\r\n\r\n" not in chunk:
            continue
        head, data = chunk.split(b"\r\n\r\n", 1)
        data = data[:-2] if data.endswith(b"\r\n") else data
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";"):
                    k, _, v = item.strip().partition("=")
                    if k == "name":
                        name = v.strip('"')
                    elif k == "filename":
                        filename = v.strip('"')
        if name:
            fields[name] = (filename, data)
    return fields


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the loopback OpenAI-protocol server until killed.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each chat answer")
    p.add_argument("--rate-limit", type=float, default=None, help="requests per second, 429 beyond")
    p.add_argument("--model", action="append", default=None)
    p.add_argument("--api-key", default=None, help="require this bearer key")
    p.add_argument("--token-ids", action="store_true", help="honour return_tokens_as_token_ids")
    p.add_argument("--flavor", choices=FLAVORS, help="say what this server says of itself")
    args = p.parse_args(argv)
    server = OpenAIServer(
        models=tuple(args.model or ["teacher-1"]),
        api_key=args.api_key,
        latency=args.latency,
        rate_limit=args.rate_limit,
        token_ids=args.token_ids,
        port=args.port,
        flavor=args.flavor,
    ).start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
