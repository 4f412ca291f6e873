"""The `ai` binding: a call in Workers AI's shape (`{prompt}`, `{messages}` or `{text}`) forwarded to the binding's
OpenAI-compatible endpoint (/chat/completions, /embeddings) with its API key, and the answer in Workers AI's shape.
The key goes to the endpoint only: never into an answer, an error message or a log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from codeexec.broker.errors import BadRequest, UpstreamError, UpstreamTimeout
from codeexec.broker.kube import Kube, secret_text
from codeexec.broker.limits import Spend
from codeexec.models import AiBinding

# Workers AI's default for a generation that names no max_tokens.
DEFAULT_MAX_TOKENS = 256
MAX_MESSAGES = 1000
MAX_TEXTS = 100
# The largest answer read from an endpoint (embeddings of MAX_TEXTS texts are a few MiB of JSON).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# How much of an endpoint's error message the code gets.
MAX_UPSTREAM_MESSAGE = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class Prompt(_Strict):
    prompt: str = Field(min_length=1)


class Messages(_Strict):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)


class Texts(_Strict):
    text: str | list[str] = Field(min_length=1, max_length=MAX_TEXTS)


def _input_kind(value: Any) -> str | None:
    """Which input a call sends: its one key."""
    keys = set(value) & {"prompt", "messages", "text"} if isinstance(value, dict) else set()
    return keys.pop() if len(keys) == 1 else None


Input = Annotated[
    Annotated[Prompt, Tag("prompt")] | Annotated[Messages, Tag("messages")] | Annotated[Texts, Tag("text")],
    Discriminator(
        _input_kind,
        custom_error_type="input",
        custom_error_message="input must be an object with one of prompt, messages, text",
    ),
]


class Options(_Strict):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


class RunRequest(_Strict):
    """POST /v1/ai/{binding}/run."""

    model: str = Field(min_length=1, max_length=256)
    input: Input
    options: Options = Options()

    def max_tokens(self) -> int | None:
        """What a generation may produce at most, as asked (None: an embedding, which generates nothing)."""
        if isinstance(self.input, Texts):
            if self.options != Options():
                raise BadRequest("options are for a generation (prompt or messages), not for text embeddings")
            return None
        return self.options.max_tokens or DEFAULT_MAX_TOKENS


@dataclass(frozen=True)
class AiTarget:
    """The ai binding a call goes to."""

    namespace: str
    name: str
    spec: AiBinding


async def api_key(kube: Kube, target: AiTarget) -> str | None:
    """The binding's API key, read from its Secret now (a changed key is used at once); None without one."""
    ref = target.spec.api_key_secret_ref
    return None if ref is None else (await secret_text(kube, target.namespace, ref, target.name))[0]


class Endpoints:
    """The broker's HTTP client to the model endpoints. Keeps no cookies (an endpoint may serve the bindings of
    several namespaces: nothing one call gets may go with another's), follows no redirects (the key would go with
    them) and uses no proxy from the environment."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def close(self) -> None:
        await self._session.close()

    async def run(self, target: AiTarget, request: RunRequest, key: str | None, spend: Spend) -> dict[str, Any]:
        """The answer in Workers AI's shape; `spend.tokens` set to what the endpoint counted."""
        if isinstance(request.input, Texts):
            body: dict[str, Any] = {"model": request.model, "input": request.input.text}
            answer = await self._post(target, "/embeddings", body, key)
            usage = _usage(answer, fallback=0)
            spend.tokens = usage["total_tokens"]
            vectors = _embeddings(answer)
            return {"shape": [len(vectors), len(vectors[0])], "data": vectors, "usage": usage}
        if isinstance(request.input, Prompt):
            messages = [{"role": "user", "content": request.input.prompt}]
        else:
            messages = [message.model_dump() for message in request.input.messages]
        body = {"model": request.model, "messages": messages, "max_tokens": spend.max_tokens, "stream": False}
        if request.options.temperature is not None:
            body["temperature"] = request.options.temperature
        answer = await self._post(target, "/chat/completions", body, key)
        # An endpoint that does not count is charged the most it could have generated.
        usage = _usage(answer, fallback=spend.max_tokens or 0)
        spend.tokens = usage["total_tokens"]
        return {"response": _completion(answer), "usage": usage}

    async def _post(self, target: AiTarget, path: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout_ms = target.spec.request_timeout_ms
        try:
            async with self._session.post(
                target.spec.endpoint.rstrip("/") + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000),
                allow_redirects=False,
            ) as response:
                status, raw = response.status, await _read(response)
        except TimeoutError as error:
            raise UpstreamTimeout(f"the endpoint did not answer within {timeout_ms} ms (requestTimeoutMs)") from error
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamError(f"the endpoint could not be reached: {_redacted(str(error), key)}") from error
        if status in (401, 403):
            # What an endpoint says of a refused key may quote part of it.
            raise UpstreamError(f"the endpoint refused the binding's API key (HTTP {status})")
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if status != 200:
            raise UpstreamError(f"the endpoint answered HTTP {status}: {_redacted(_error_text(answer, raw), key)}")
        if not isinstance(answer, dict):
            raise UpstreamError("the endpoint's answer is not a JSON object")
        return answer


async def _read(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused once it passes MAX_ANSWER_BYTES: never held whole when larger."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise UpstreamError(f"the endpoint's answer is larger than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_text(answer: Any, raw: bytes) -> str:
    """An endpoint's error message: OpenAI's {"error": {"message"}}, {"error": "..."}, {"detail": ...}, else text."""
    if isinstance(answer, dict):
        error = answer.get("error")
        found = error.get("message") if isinstance(error, dict) else error or answer.get("detail")
        if found:
            return str(found)[:MAX_UPSTREAM_MESSAGE]
    return raw.decode("utf-8", "replace").strip()[:MAX_UPSTREAM_MESSAGE] or "(no message)"


def _redacted(text: str, key: str | None) -> str:
    return text.replace(key, "[the API key]") if key else text


def _usage(answer: dict[str, Any], fallback: int) -> dict[str, int]:
    """OpenAI's usage counts (an embedding's has no completion_tokens); no usage at all: total_tokens `fallback`."""
    usage = answer.get("usage")
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": fallback}
    if not isinstance(usage, dict):
        raise UpstreamError("the endpoint's usage is not an object")
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    total = usage.get("total_tokens", prompt + completion if _is_count(prompt) and _is_count(completion) else None)
    if not all(_is_count(n) for n in (prompt, completion, total)):
        raise UpstreamError("the endpoint's usage is not counts of tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _completion(answer: dict[str, Any]) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise UpstreamError("the endpoint's answer has no choices[0].message") from error
    if content is not None and not isinstance(content, str):
        raise UpstreamError("the endpoint's message content is not text")
    return content or ""


def _embeddings(answer: dict[str, Any]) -> list[list[float]]:
    """The vectors of OpenAI's {data: [{index, embedding}, ...]} in the texts' order, all of one length."""
    items = answer.get("data")
    if not isinstance(items, list) or not items:
        raise UpstreamError("the endpoint's answer has no data")
    try:
        vectors = [item["embedding"] for item in sorted(items, key=lambda item: item.get("index", 0))]
    except (AttributeError, KeyError, TypeError) as error:
        raise UpstreamError("the endpoint's data are not embeddings") from error
    vectors_ok = all(isinstance(vector, list) and len(vector) == len(vectors[0]) for vector in vectors)
    if not (vectors_ok and vectors[0] and all(_is_number(x) for vector in vectors for x in vector)):
        raise UpstreamError("the endpoint's embeddings are not vectors of numbers of one length")
    return vectors


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
