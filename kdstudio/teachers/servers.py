"""The OpenAI-compatible servers kdstudio knows: presets, what each gives, and telling them apart.

    PRESETS / preset("ollama")            base URL, key, what it supports (one source of truth
                                          for the Add dialog, `teacher add --preset` and the
                                          README's capability table: `capability_markdown()`)
    list_models(base_url, key)            the model ids a server lists at /models
    detect_server(base_url, key, ...)     which server answers, from what it says of itself

What each server says of itself (checked against their sources):

- OpenAI: `openai-organization` / `openai-version` response headers.
- vLLM: `owned_by: "vllm"` in /v1/models; `GET /version` -> {"version": "0.11.0"}.
- llama.cpp server: a `Server: llama.cpp` header and `owned_by: "llamacpp"`;
  `GET /props` -> {"build_info": "b6500-...", "default_generation_settings": ...}.
- Ollama: `GET /api/version` -> {"version": "0.12.11"} (its /v1/models says only
  `owned_by: "library"`, the model's namespace).
- LM Studio: `GET /api/v0/models` -> {"data": [{"type": "llm", "publisher": ...,
  "state": "loaded"}, ...]} (its native REST API beside the OpenAI one).

Detection never fails a probe: a server that says nothing is "unknown".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kdstudio.errors import UserError

DETECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Preset:
    """A kind of server: where it listens by default and what a teacher there can give."""

    key: str
    title: str
    base_url: str
    needs_key: bool
    sft: str  # text: the `sft` column of the capability table
    sparse: str  # top-k logprobs: `sparse_kd`
    dense: str  # full distribution: `dense_kd`
    lists_models: bool  # its /v1/models lists the models one can pick (local servers)
    note: str  # one line: how to start it, or what to know

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """What the Add dialog shows under the preset."""
        return (
            f"{self.title}: text (sft) {self.sft}; top-k logprobs (sparse_kd) {self.sparse}; "
            f"full distribution (dense_kd) {self.dense}. {self.note}"
        )


PRESETS: tuple[Preset, ...] = (
    Preset(
        "openai", "OpenAI", "https://api.openai.com/v1", True,
        "yes", "up to 20 (not reasoning models)", "no", False,
        "Needs an API key; prices per million tokens drive the budget.",
    ),
    Preset(
        "vllm", "vLLM", "http://localhost:8000/v1", False,
        "yes", "yes, with token ids (up to `--max-logprobs`, default 20)", "no", True,
        "Start it with `vllm serve MODEL`; token ids let sparse_kd map tokens exactly.",
    ),
    Preset(
        "llamacpp", "llama.cpp server", "http://localhost:8080/v1", False,
        "yes", "up to 20 (no stop-token logprob)", "no", True,
        "Start it with `llama-server -m MODEL.gguf`; the model is the one it loaded.",
    ),
    Preset(
        "ollama", "Ollama", "http://localhost:11434/v1", False,
        "yes", "up to 20 (Ollama ≥ 0.12.11)", "no", True,
        "Pull a model with `ollama pull NAME`; older Ollama returns no logprobs.",
    ),
    Preset(
        "lmstudio", "LM Studio", "http://localhost:1234/v1", False,
        "yes", "no (it returns no logprobs)", "no", True,
        "Start the server in LM Studio's Developer tab; text only, for sft.",
    ),
)  # fmt: skip
LOCAL_ROW = ("local Hugging Face model (`add-local`)", "yes", "yes, with token ids",
             "yes (any tokenizer)")  # fmt: skip
SERVER_TITLES = {p.key: p.title for p in PRESETS}


def preset(key: str) -> Preset:
    for p in PRESETS:
        if p.key == key:
            return p
    raise UserError(f"unknown preset {key!r} (choose one of: {', '.join(p.key for p in PRESETS)})")


CAPABILITIES_START = "<!-- teacher-capabilities:start -->"
CAPABILITIES_END = "<!-- teacher-capabilities:end -->"


def capability_markdown() -> str:
    """The README's table of what each kind of teacher allows (from PRESETS)."""
    lines = [
        "| teacher | `--preset` | default base URL | text (`sft`) | top-k logprobs (`sparse_kd`) "
        "| full distribution (`dense_kd`) |",
        "|---|---|---|---|---|---|",
    ]
    for p in PRESETS:
        lines.append(
            f"| {p.title} | `{p.key}` | `{p.base_url}` | {p.sft} | {p.sparse} | {p.dense} |"
        )
    name, sft, sparse, dense = LOCAL_ROW
    lines.append(f"| {name} | - | - | {sft} | {sparse} | {dense} |")
    return "\n".join(lines)


# -- talking to a server ------------------------------------------------------------------------


def server_root(base_url: str) -> str:
    """http://host:11434/v1 -> http://host:11434 (where /api/version, /props ... live)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _client(key: str | None, headers: dict[str, str] | None, timeout: float) -> Any:
    import httpx2

    sent = dict(headers or {})
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return httpx2.Client(headers=sent, timeout=timeout, follow_redirects=True)


def _json(client: Any, url: str) -> tuple[dict[str, Any] | None, Any]:
    """(the JSON object at `url` or None, the response or None); never raises."""
    try:
        response = client.get(url)
        doc = response.json() if response.status_code == 200 else None
        return (doc if isinstance(doc, dict) else None), response
    except Exception:  # noqa: BLE001 - a server that does not answer this says nothing
        return None, None


def list_models(
    base_url: str,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> list[str]:
    """The model ids the server lists at {base_url}/models (UserError: what went wrong)."""
    from kdstudio.teachers.openai_api import redact

    url = base_url.rstrip("/") + "/models"
    try:
        with _client(key, headers, timeout) as client:
            response = client.get(url)
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, timed out
        raise UserError(redact(f"cannot reach {url}: {exc}", key)) from None
    if response.status_code in (401, 403):
        raise UserError(f"{url} refused the request ({response.status_code}): check the API key")
    if response.status_code != 200:
        raise UserError(f"{url} answered {response.status_code}: it lists no models")
    try:
        data = response.json().get("data") or []
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]
    except (ValueError, AttributeError) as exc:
        raise UserError(f"{url} did not answer with a model list ({exc})") from None


def detect_server(
    base_url: str,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = DETECT_TIMEOUT_S,
) -> dict[str, Any]:
    """{"server": key or "unknown", "title", "version", "evidence"}: which server answers at
    `base_url`, from its own headers and endpoints (a few GETs; never raises)."""
    root = server_root(base_url)
    with _client(key, headers, timeout) as client:
        models, response = _json(client, base_url.rstrip("/") + "/models")
        hints = _hints(models, response)
        # vLLM and OpenAI only on a hint: a bare /version or header is too common to trust
        for server in dict.fromkeys((*hints, "ollama", "lmstudio", "llamacpp")):
            found = _confirm(client, root, server, response)
            if found is not None:
                version, evidence = found
                return {
                    "server": server,
                    "title": SERVER_TITLES[server],
                    "version": version,
                    "evidence": evidence,
                }
    return {"server": "unknown", "title": "unknown", "version": None, "evidence": ""}


def _hints(models: dict[str, Any] | None, response: Any) -> list[str]:
    """Servers the /models answer points to, most likely first."""
    hints = []
    head = response.headers if response is not None else {}
    if "llama.cpp" in head.get("server", "").lower():
        hints.append("llamacpp")
    if "openai-organization" in head or "openai-version" in head:
        hints.append("openai")
    owners = {
        str(m.get("owned_by", "")).lower()
        for m in (models or {}).get("data") or []
        if isinstance(m, dict)
    }
    if "vllm" in owners:
        hints.append("vllm")
    if "llamacpp" in owners:
        hints.append("llamacpp")
    return list(dict.fromkeys(hints))


def _confirm(client: Any, root: str, server: str, response: Any) -> tuple[str | None, str] | None:
    """(version, evidence) when `server` is what answers, else None."""
    if server == "openai":
        head = response.headers
        return head.get("openai-version"), "openai-organization/openai-version headers"
    if server == "ollama":
        doc, _ = _json(client, root + "/api/version")
        if doc and isinstance(doc.get("version"), str):
            return doc["version"], "GET /api/version"
    elif server == "lmstudio":
        doc, _ = _json(client, root + "/api/v0/models")
        data = (doc or {}).get("data")
        if (
            isinstance(data, list)
            and data
            and all(isinstance(m, dict) and "type" in m and "state" in m for m in data)
        ):
            return None, "GET /api/v0/models (LM Studio's REST API)"
    elif server == "llamacpp":
        doc, _ = _json(client, root + "/props")
        if doc and ("default_generation_settings" in doc or "build_info" in doc):
            return doc.get("build_info"), "GET /props"
        if response is not None and "llama.cpp" in response.headers.get("server", "").lower():
            return None, "Server: llama.cpp header"
    elif server == "vllm":
        doc, _ = _json(client, root + "/version")
        if doc and isinstance(doc.get("version"), str):
            return doc["version"], "owned_by: vllm in /models, GET /version"
        return None, "owned_by: vllm in /models"
    return None


if __name__ == "__main__":  # python -m kdstudio.teachers.servers > table.md
    print(capability_markdown())
