"""`teacher probe`: find out what a teacher can do before paying for a collection.

For an OpenAI-compatible teacher, in order (each step needs the one before):
1. reachability and authentication (`GET /models`; 401/403 stop here), and which server
   it is where the server says so (vLLM, llama.cpp, Ollama, LM Studio, OpenAI: see
   kdstudio.teachers.servers);
2. whether the model exists (in the model list, or by asking it when there is no list);
3. typical latency (three one-token requests);
4. logprobs: whether they work (403 means the model refuses them) and how many top
   logprobs come back (asks for 20, then fewer when the server refuses 20);
5. token ids: vLLM's `return_tokens_as_token_ids` answering "token_id:N".

A local teacher is loaded once: it gives logprobs over its whole vocabulary, with ids.
The result is a plain dict stored with the teacher (`ws.set_teacher_capabilities`).
Probing costs a handful of tiny requests (at most 8 output tokens each). A transient
failure (5xx, 429, a timeout, a dropped connection) is retried like the collection does,
so a passing 503 is not reported as what the teacher can do.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from kdstudio.config import TeacherConfig
from kdstudio.teachers.openai_api import backoff, classify, redact

PING = [{"role": "user", "content": "Reply with the single word: ok"}]


PROBE_RETRIES = 2  # a transient failure (5xx, 429, timeout, dropped) is asked again, twice
PROBE_MAX_WAIT_S = 5.0  # the probe answers a person: it never waits longer for one retry


def probe(
    teacher: TeacherConfig,
    key: str | None,
    *,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What `teacher` can do. `headers`: its extra headers with their secret values from
    the keyring (`kdstudio.secrets.resolve_headers`; default: the plain ones only)."""
    if teacher.kind == "local":
        return probe_local(teacher)
    return _OpenAIProbe(teacher, key, timeout, headers).run()


def probe_local(teacher: TeacherConfig) -> dict[str, Any]:
    from kdstudio.teachers.local import LocalTeacher

    t0 = time.monotonic()
    local = LocalTeacher(teacher.path or "", name=teacher.name)
    load_s = time.monotonic() - t0
    t0 = time.monotonic()
    local.generate([{"messages": PING, "max_tokens": 4, "temperature": 0.0, "top_logprobs": 1}])
    return {
        "kind": "local",
        "reachable": True,
        "auth": "none",
        "model_exists": True,
        "logprobs": True,
        "top_logprobs": local.vocab_size,
        "token_ids": True,
        "device": local.device,
        "load_s": round(load_s, 3),
        "latency_ms": {"p50": round((time.monotonic() - t0) * 1000, 1)},
        "errors": [],
        "checked_at": time.time(),
    }


class _OpenAIProbe:
    def __init__(
        self,
        teacher: TeacherConfig,
        key: str | None,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> None:
        import openai

        self.teacher, self.key, self.timeout = teacher, key, timeout
        self.headers = dict(teacher.headers if headers is None else headers)
        self.hidden = [key, *teacher.secret_values(self.headers)]
        self.rng = random.Random()
        self.client = openai.OpenAI(
            base_url=teacher.base_url,
            api_key=key or "not-needed",
            max_retries=0,
            timeout=timeout,
            default_headers=self.headers,
        )
        self.caps: dict[str, Any] = {
            "kind": "openai",
            "reachable": False,
            "auth": "unknown",
            "model_exists": None,
            "logprobs": None,
            "top_logprobs": 0,
            "token_ids": False,
            "latency_ms": None,
            "errors": [],
            "checked_at": time.time(),
        }

    def _error(self, step: str, exc: BaseException) -> Any:
        outcome = classify(exc, self.hidden)
        self.caps["errors"].append(redact(f"{step}: {outcome.message}", self.hidden))
        return outcome

    def _retrying(self, call: Any, *args: Any, **kw: Any) -> Any:
        """One request, asked again after a transient failure (the collection's classes
        and backoff, each wait capped for a person waiting): a 503 is not a finding."""
        for attempt in range(1, PROBE_RETRIES + 2):
            try:
                return call(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - classified; the last one is raised
                outcome = classify(exc, self.hidden)
                if outcome.kind != "transient" or attempt > PROBE_RETRIES:
                    raise
                time.sleep(min(PROBE_MAX_WAIT_S, backoff(attempt, outcome.retry_after, self.rng)))
        raise AssertionError("unreachable")

    def _chat(self, **kw: Any) -> Any:
        limit = {self.caps.get("max_tokens_param", "max_tokens"): 8}
        return self._retrying(
            self.client.chat.completions.create,
            model=self.teacher.model,
            messages=PING,
            **limit,
            **kw,
        )

    def run(self) -> dict[str, Any]:
        try:
            listed = self._models()
            if self.caps["reachable"] and self.caps["auth"] != "rejected":
                self._server()
            if listed and self._latency():
                self._logprobs()
        finally:
            self.client.close()
        return self.caps

    def _server(self) -> None:
        from kdstudio.teachers.servers import DETECT_TIMEOUT_S, detect_server

        t = self.teacher
        timeout = min(self.timeout, DETECT_TIMEOUT_S)
        self.caps["server"] = detect_server(t.base_url, self.key, self.headers, timeout=timeout)

    def _models(self) -> bool:
        import openai

        try:
            models = [m.id for m in self._retrying(self.client.models.list).data]
        except openai.APIStatusError as exc:
            self._error("list models", exc)
            self.caps["reachable"] = True
            if exc.status_code in (401, 403):
                self.caps["auth"] = "rejected"
                return False
            return True  # some servers have no /models: ask the model itself next
        except Exception as exc:  # noqa: BLE001 - unreachable, reported in the result
            self._error("connect", exc)
            return False
        self.caps.update(reachable=True, auth="ok" if self.key else "none", models=models[:50])
        self.caps["model_exists"] = self.teacher.model in models
        return True

    def _latency(self) -> bool:
        import openai

        times = []
        for _ in range(3):
            t0 = time.monotonic()
            try:
                self._chat()
            except openai.APIStatusError as exc:
                if (
                    exc.status_code == 400
                    and "max_completion_tokens" in str(exc)
                    and "max_tokens_param" not in self.caps
                ):
                    # Newer OpenAI models take max_completion_tokens only: use it from now on.
                    self.caps["max_tokens_param"] = "max_completion_tokens"
                    continue
                self._error("ask the model", exc)
                if exc.status_code == 404:
                    self.caps["model_exists"] = False
                if exc.status_code in (401, 403):
                    self.caps["auth"] = "rejected"
                return False
            except Exception as exc:  # noqa: BLE001 - reported in the result
                self._error("ask the model", exc)
                return False
            times.append((time.monotonic() - t0) * 1000)
        self.caps["model_exists"] = True
        if self.caps["auth"] == "unknown":
            self.caps["auth"] = "ok" if self.key else "none"
        self.caps["latency_ms"] = {
            "p50": round(statistics.median(times), 1),
            "min": round(min(times), 1),
            "max": round(max(times), 1),
        }
        return True

    def _logprobs(self) -> None:
        import openai

        for k in (20, 10, 5, 1, 0):
            try:
                kw = {"logprobs": True, **({"top_logprobs": k} if k else {})}
                answer = self._chat(**kw)
            except openai.APIStatusError as exc:
                self._error(f"logprobs (top {k})", exc)
                if exc.status_code == 403:
                    self.caps["logprobs"] = False
                    return
                continue
            except Exception as exc:  # noqa: BLE001 - reported in the result
                self._error(f"logprobs (top {k})", exc)
                continue
            content = (
                answer.choices[0].logprobs.content
                if answer.choices and answer.choices[0].logprobs
                else None
            )
            if not content:
                self.caps["logprobs"] = False
                return
            self.caps["logprobs"] = True
            self.caps["top_logprobs"] = max(len(c.top_logprobs or []) for c in content)
            self._token_ids(k)
            return
        self.caps["logprobs"] = False

    def _token_ids(self, k: int) -> None:
        try:
            kw = {"logprobs": True, **({"top_logprobs": k} if k else {})}
            answer = self._chat(**kw, extra_body={"return_tokens_as_token_ids": True})
            content = answer.choices[0].logprobs.content or []
            self.caps["token_ids"] = bool(content) and all(
                c.token.startswith("token_id:") for c in content
            )
        except Exception as exc:  # noqa: BLE001 - a server that rejects the field has no ids
            self._error("token ids", exc)
            self.caps["token_ids"] = False


def summary_lines(caps: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, finding) rows for the CLI and the GUI."""

    def yn(v: Any) -> str:
        return "unknown" if v is None else "yes" if v else "no"

    lat = caps.get("latency_ms") or {}
    rows = [("reachable", yn(caps.get("reachable")))]
    server = caps.get("server")
    if server:
        if server.get("server") == "unknown":
            rows.append(("server", "an OpenAI-compatible server that does not say which"))
        else:
            version = f" {server['version']}" if server.get("version") else ""
            rows.append(("server", f"{server['title']}{version} ({server['evidence']})"))
    rows += [
        ("authentication", str(caps.get("auth"))),
        ("model exists", yn(caps.get("model_exists"))),
    ]
    if caps.get("model_exists") is False and caps.get("models"):
        served = ", ".join(caps["models"][:10]) + (" ..." if len(caps["models"]) > 10 else "")
        rows.append(("models served", f"{served} (change the teacher's --model)"))
    rows += [
        ("logprobs", yn(caps.get("logprobs"))),
        ("top logprobs", str(caps.get("top_logprobs", 0))),
        ("token ids", yn(caps.get("token_ids"))),
        (
            "latency",
            f"{lat.get('p50')} ms (min {lat.get('min')}, max {lat.get('max')})"
            if lat.get("min") is not None
            else (f"{lat.get('p50')} ms" if lat else "-"),
        ),
    ]
    if caps.get("device"):
        rows.append(("device", str(caps["device"])))
    for err in caps.get("errors", []):
        rows.append(("problem", err))
    return rows
