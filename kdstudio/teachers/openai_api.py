"""Talking to an OpenAI-compatible teacher with the official `openai` async client.

The client's own retries are off (`max_retries=0`): the collector retries itself, so it can
honour `retry-after`, adapt concurrency and show each row's state. Errors are classified
into what the collector does next (`Outcome.kind`):

- `transient`: 408, 409, 429, 5xx, timeouts, dropped connections, malformed or truncated
  bodies, empty choices -> retry with backoff (429 also lowers concurrency);
- `row`: 400, 404, 422 and other 4xx -> this row fails with the server's message;
- `fatal`: 401, 403 -> the whole job stops with one clear message.

Every message that leaves this module has the API key removed (`redact`).
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdstudio.formatting import url
from kdstudio.logprobs import from_openai
from kdstudio.teachers import Response

if TYPE_CHECKING:
    from kdstudio.config import TeacherConfig

USER_AGENT = "kdstudio"
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s/@:]*:)[^\s/@]+@")


def redact(text: str, key: str | Iterable[str | None] | None) -> str:
    """`text` with the key (or each of several secrets: the key and secret header values)
    and any long prefix of it replaced by '***', and URL passwords masked."""
    secrets = [key] if key is None or isinstance(key, str) else list(key)
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "***")
        if len(secret) >= 12:  # servers sometimes echo a shortened key: sk-abc...wxyz
            text = text.replace(secret[:8], "***").replace(secret[-6:], "***")
    return _URL_PASSWORD.sub(r"\1***@", text)


def make_client(
    teacher: TeacherConfig,
    key: str | None,
    *,
    max_connections: int,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> Any:
    """An AsyncOpenAI client for the teacher, retries off, sized for `max_connections`;
    `headers` are the teacher's extra headers with their secret values (default: the
    plain ones only)."""
    import httpx2
    import openai

    http = httpx2.AsyncClient(
        limits=httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        timeout=httpx2.Timeout(timeout, connect=min(10.0, timeout)),
    )
    return openai.AsyncOpenAI(
        base_url=teacher.base_url,
        api_key=key or "not-needed",
        max_retries=0,
        timeout=httpx2.Timeout(timeout, connect=min(10.0, timeout)),
        default_headers=dict(teacher.headers if headers is None else headers),
        http_client=http,
    )


def request_body(
    teacher: TeacherConfig, params: dict[str, Any], messages: list[dict], sample: int
) -> dict[str, Any]:
    """The chat completion request for one (prompt, sample), exactly as sent and hashed.

    With a seed, sample i uses seed + i so that samples differ yet repeat exactly.
    """
    body: dict[str, Any] = {"model": teacher.model, "messages": messages}
    if params.get("max_tokens") is not None:
        # Newer OpenAI models refuse `max_tokens`; the probe notes when they want the new name.
        name = (teacher.capabilities or {}).get("max_tokens_param", "max_tokens")
        body[name] = params["max_tokens"]
    for name in ("temperature", "top_p"):
        if params.get(name) is not None:
            body[name] = params[name]
    if params.get("seed") is not None:
        body["seed"] = int(params["seed"]) + sample
    if params.get("stop"):
        body["stop"] = list(params["stop"])
    if params.get("top_logprobs") is not None:
        body["logprobs"] = True
        if params["top_logprobs"] > 0:
            body["top_logprobs"] = params["top_logprobs"]
        if params.get("token_ids"):
            body["return_tokens_as_token_ids"] = True
    return body


def split_body(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `client.chat.completions.create` (vendor fields via extra_body)."""
    kwargs = dict(body)
    extra = {}
    if "return_tokens_as_token_ids" in kwargs:
        extra["return_tokens_as_token_ids"] = kwargs.pop("return_tokens_as_token_ids")
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class EmptyAnswer(Exception):
    """A 200 answer without a usable choice (retried like a malformed body)."""


def parse_completion(
    completion: Any, teacher: TeacherConfig, *, latency: float | None = None, batch: bool = False
) -> Response:
    """A stored `Response` from a ChatCompletion (SDK object or the JSON of one)."""
    get = (lambda o, k: o.get(k)) if isinstance(completion, dict) else getattr  # noqa: E731
    choices = get(completion, "choices") or []
    if not choices:
        raise EmptyAnswer("the teacher answered with no choices")
    choice = choices[0]
    message = get(choice, "message")
    text = get(message, "content") if message is not None else None
    if text is None:
        refusal = get(message, "refusal") if message is not None else None
        if refusal:
            raise RowError(f"the teacher refused: {refusal}")
        if get(choice, "finish_reason") == "content_filter":
            raise RowError("the provider's content filter withheld the answer")
        raise EmptyAnswer("the teacher's answer has no text")
    lp = get(choice, "logprobs")
    content = get(lp, "content") if lp is not None else None
    usage = get(completion, "usage")
    pt = int((get(usage, "prompt_tokens") if usage is not None else 0) or 0)
    ct = int((get(usage, "completion_tokens") if usage is not None else 0) or 0)
    return Response(
        text=text,
        finish_reason=get(choice, "finish_reason"),
        prompt_tokens=pt,
        completion_tokens=ct,
        cost=teacher.cost(pt, ct, batch=batch),
        logprobs=from_openai(content) if content is not None else None,
        latency=latency,
        endpoint=url(teacher.base_url),  # as shown: never a password on disk
        model=teacher.model,
        source="batch" if batch else "teacher",
    )


class RowError(Exception):
    """This row cannot be answered (the server's message says why)."""


@dataclass
class Outcome:
    """What one attempt came to."""

    kind: str  # ok | transient | row | fatal
    response: Response | None = None
    message: str = ""
    status: int | None = None
    retry_after: float | None = None
    rate_limited: bool = False


def server_message(exc: Any) -> str:
    """The server's own error message from an APIStatusError (falls back to the SDK's)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(getattr(exc, "message", "") or exc)


def _error_code(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    return err.get("code") if isinstance(err, dict) else None


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date) or
    `x-ratelimit-reset-requests` ("1s", "6m0s", "20ms")."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    value = headers.get("x-ratelimit-reset-requests")
    if value:
        parts = _DURATION_RE.findall(value)
        if parts:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
            return sum(float(n) * scale[u] for n, u in parts)
    return None


MAX_RETRY_AFTER_S = 120.0  # a longer retry-after is capped (a server's "come back tomorrow")


def backoff(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry `attempt` (1-based) of a transient failure: the server's
    retry-after (plus up to 10% jitter), else 0.5 * 2^(attempt-1) capped at 30 s with full
    jitter in [50%, 100%]. The collection and the probe retry by it."""
    if retry_after is not None:
        return min(MAX_RETRY_AFTER_S, retry_after) * (1 + 0.1 * rng.random())
    return min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + 0.5 * rng.random())


_MODEL_MISSING_RE = re.compile(
    r"model\b.*\b(does not exist|not found|not exist|unknown)|(unknown|no such) model", re.I
)


def classify(exc: BaseException, key: str | Iterable[str | None] | None) -> Outcome:
    """Turn an exception from one request into an Outcome (messages redacted: `key` is the
    API key, or every secret the request carried)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = redact(server_message(exc), key)
        headers = getattr(exc.response, "headers", None)
        if status in (401, 403):
            return Outcome("fatal", message=message, status=status)
        if status == 404 and _MODEL_MISSING_RE.search(message):
            # Every row would fail the same way: stop once instead of paying for nothing.
            return Outcome("fatal", message=message, status=status)
        if status == 429 and _error_code(exc) == "insufficient_quota":
            return Outcome("fatal", message=message, status=status)
        if status == 429:
            return Outcome(
                "transient",
                message=f"HTTP 429: {message}",
                status=status,
                retry_after=retry_after(headers),
                rate_limited=True,
            )
        if status in (408, 409) or status >= 500:
            return Outcome(
                "transient",
                message=f"HTTP {status}: {message}",
                status=status,
                retry_after=retry_after(headers),
            )
        return Outcome("row", message=f"HTTP {status}: {message}", status=status)
    if isinstance(exc, openai.APITimeoutError):
        return Outcome("transient", message="the request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return Outcome("transient", message=redact(f"connection error{detail}", key)[:300])
    if isinstance(exc, RowError):
        return Outcome("row", message=redact(str(exc), key))
    if isinstance(
        exc,
        (
            EmptyAnswer,
            json.JSONDecodeError,
            openai.APIResponseValidationError,
            ValueError,
            KeyError,
            TypeError,
        ),
    ):
        return Outcome(
            "transient", message=redact(f"malformed answer: {type(exc).__name__}: {exc}", key)[:300]
        )
    return Outcome("transient", message=redact(f"{type(exc).__name__}: {exc}", key)[:300])


def fatal_message(teacher: TeacherConfig, outcome: Outcome) -> str:
    """One clear line for a 401/403 that stops the job (never containing the key)."""
    where = {"keyring": "the OS keyring", "env": f"${teacher.key_env}", "none": "no key"}[
        teacher.key_source
    ]
    base_url = url(teacher.base_url)  # a password in it is shown as ***
    if outcome.status == 401 and "@" in base_url and teacher.key_source != "none":
        # The HTTP client sends a URL's user:password as Basic authorization, in the one
        # Authorization header the API key's Bearer would have used.
        return (
            f"teacher {teacher.name!r} was refused (HTTP 401: {outcome.message}); its URL "
            f"{base_url} carries credentials, which are sent as HTTP Basic authorization in "
            "place of the API key: check them, or, if the server wants the API key, give "
            f"the teacher a URL without them (`kdstudio teacher add {teacher.name} --base-url "
            "URL --replace`)"
        )
    if outcome.status == 401:
        return (
            f"teacher {teacher.name!r} rejected the API key (HTTP 401: {outcome.message}); the key comes "
            f"from {where}: store a valid one with `kdstudio teacher add {teacher.name} --base-url "
            f"{base_url} --model {teacher.model} --api-key-stdin --replace`"
        )
    if outcome.status == 429:
        return (
            f"teacher {teacher.name!r} has no quota left (HTTP 429: {outcome.message}); add credit "
            "or raise the limit with the provider, then re-run the same command to resume"
        )
    if outcome.status == 404:
        return (
            f"teacher {teacher.name!r} has no model {teacher.model!r} at {base_url} "
            f"(HTTP 404: {outcome.message}); `kdstudio teacher probe {teacher.name}` lists the "
            "models it serves: change the teacher's --model, then re-run the same command"
        )
    hint = ""
    if "logprob" in outcome.message.lower():
        hint = "; this model does not give logprobs: collect without --top-logprobs"
    return f"teacher {teacher.name!r} refused the request (HTTP 403: {outcome.message}){hint}"
