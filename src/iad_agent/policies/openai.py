"""``OpenAIPolicy``: any OpenAI-compatible ``/v1/chat/completions`` server as the agent's VLM.

vLLM, SGLang, Ollama, LM Studio, llama.cpp's server and hosted APIs all speak this protocol.
Requests go through the ``openai`` client library, which retries 429 and 5xx answers,
timeouts and dropped connections with exponential backoff (honouring ``Retry-After``); a
reply whose body is not a chat completion is retried here, as often. Images go as data URLs
(downsized to ``max_image_side``); the API key, if any, comes from an environment variable; a
semaphore bounds the requests in flight when evaluation runs episodes in parallel. Token
counts and retries land in ``Step.usage``, latency in ``Step.policy_ms``.

Two ways to offer the tools (``native_tools``): the text protocol (default; the ``<tools>``
block of the system prompt, replies parsed from text: works with every server), or native
function calling (``tools=`` in the request, ``tool_calls`` in the reply, ``tool`` role
messages for the results; needs e.g. vLLM's ``--enable-auto-tool-choice --tool-call-parser
hermes``). Either way the trajectory records the turn in the text protocol.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any

import openai
from PIL import Image

from iad_agent.agent.protocol import render_parse_error, render_tool_response
from iad_agent.imageio import data_url
from iad_agent.policies.vlm import DEFAULT_MAX_IMAGE_SIDE, Completion, VLMPolicy

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool
    from iad_agent.types import Step

log = logging.getLogger(__name__)

_DATA_URLS = "openai_data_urls"  # episode.memo key: id(downsized image) -> (image, data URL)
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?(</tool_call>|$)", re.DOTALL)


class PolicyError(RuntimeError):
    """The server could not produce a turn (unreachable, refused, or broken after all retries)."""


class OpenAIPolicy(VLMPolicy):
    """A VLM behind an OpenAI-compatible chat-completions endpoint.

    Args:
        model: model name as the server knows it (``--served-model-name`` for vLLM); when left
            out, the one model listed by ``GET /models``.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (default ``$OPENAI_BASE_URL``).
        api_key_env: environment variable holding the API key; unset or empty: a placeholder
            key (local servers ignore it).
        timeout: seconds per request before it counts as failed.
        max_retries: retries after the first attempt on 429, 5xx, timeouts and connection
            errors (the openai client's exponential backoff, 0.5 s doubling, or the server's
            ``Retry-After``), and, separately, on replies that are not a chat completion;
            other 4xx answers fail at once.
        max_image_side: longer side of every image sent, in pixels.
        concurrency: requests in flight at once from this policy (evaluation reads it too).
        temperature: sampling temperature (0 = greedy).
        max_new_tokens: ``max_tokens`` of each reply.
        native_tools: offer the tools through function calling (see the module docstring).
        image_format: ``png`` (lossless, default) or ``jpeg`` (smaller requests).
        extra_body: more request fields, e.g. ``{"top_k": 20}`` or vLLM's ``chat_template_kwargs``.
    """

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 3, max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE,
                 concurrency: int = 4, temperature: float = 0.0, max_new_tokens: int = 1024, native_tools: bool = False,
                 image_format: str = "png", extra_body: dict[str, Any] | None = None) -> None:
        super().__init__(max_image_side=max_image_side, native_tools=native_tools)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError("the openai policy needs --base-url, e.g. http://127.0.0.1:8000/v1 (or set OPENAI_BASE_URL)")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.image_format = image_format
        self.extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(concurrency)
        key = os.environ.get(api_key_env) if api_key_env else None
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "EMPTY", timeout=timeout, max_retries=max_retries)
        self.model = model or self._only_served_model()

    def _only_served_model(self) -> str:
        """The model name when ``--model`` is left out and the server serves exactly one."""
        try:
            names = [m.id for m in self._client.models.list()]
        except (openai.OpenAIError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"no --model given and {self.base_url}/models did not list the served models ({exc})") from exc
        if len(names) != 1:
            raise ValueError(f"no --model given and {self.base_url} serves {len(names)} models: {', '.join(names) or 'none'}")
        return names[0]

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ request
    def complete(self, messages: list[dict[str, Any]], tools: dict[str, Tool], episode: Episode) -> Completion:
        request: dict[str, Any] = {"model": self.model, "messages": self.api_messages(messages, episode),
                                   "max_tokens": self.max_new_tokens, "temperature": self.temperature}
        if self.native_tools and tools:
            request["tools"] = [tool.spec() for tool in tools.values()]
            request["tool_choice"] = "auto"
        if self.extra_body:
            request["extra_body"] = self.extra_body
        retries, problem = 0, ""
        for attempt in range(self.max_retries + 1):  # the client retries transport and server errors itself
            raw = self._create(request)
            retries += raw.retries_taken + (attempt > 0)
            try:
                data = raw.parse().model_dump()
                _check_shape(data)
                return self._completion(data, retries)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                problem = f"malformed response ({exc}): {_clip(raw.text)}"
                log.warning("%s: %s; retry %d/%d", self.url, problem, attempt + 1, self.max_retries)
        raise PolicyError(f"{self.url}: {problem} (after {self.max_retries + 1} attempts)")

    def _create(self, request: dict[str, Any]) -> Any:
        """One chat completion, as the client's raw response (the client retries what it can)."""
        try:
            with self._slots:
                return self._client.chat.completions.with_raw_response.create(**request)
        except openai.APITimeoutError as exc:
            raise PolicyError(f"{self.url}: no reply within {self.timeout:g} s (after {self.max_retries + 1} attempts)") from exc
        except openai.APIConnectionError as exc:
            raise PolicyError(f"{self.url}: connection failed ({exc.__cause__ or exc}) (after {self.max_retries + 1} attempts)") from exc
        except openai.APIStatusError as exc:
            raise PolicyError(f"{self.url} answered {exc.status_code}: {_error_text(exc)}") from exc

    def _completion(self, data: dict[str, Any], retries: int) -> Completion:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        usage = {k: int(v) for k, v in (data.get("usage") or {}).items()
                 if k in ("prompt_tokens", "completion_tokens", "total_tokens") and isinstance(v, (int, float))}
        usage["retries"] = retries
        return Completion(text=content or "", tool_calls=list(message.get("tool_calls") or []),
                          reasoning=reasoning if isinstance(reasoning, str) else "", usage=usage,
                          finish_reason=choice.get("finish_reason"))

    # ------------------------------------------------------------------ messages
    def api_messages(self, messages: list[dict[str, Any]], episode: Episode) -> list[dict[str, Any]]:
        """Chat messages in the OpenAI wire format (images as data URLs; tool turns if native)."""
        cache = episode.memo.setdefault(_DATA_URLS, {})
        out = [{"role": m["role"], "content": [self._part(p, cache) for p in m["content"]]} for m in messages]
        if self.native_tools:
            out = self._native_turns(out, episode)
        for m in out:  # plain strings where there are no images: the widest server support
            if m["role"] in ("system", "assistant") and isinstance(m["content"], list) and all(p["type"] == "text" for p in m["content"]):
                m["content"] = "".join(p["text"] for p in m["content"])
        return out

    def _part(self, part: dict[str, Any], cache: dict[int, tuple[Image.Image, str]]) -> dict[str, Any]:
        if part.get("type") != "image":
            return {"type": "text", "text": part.get("text", "")}
        image = part["image"]
        hit = cache.get(id(image))
        if hit is None or hit[0] is not image:
            hit = (image, self._data_url(image))
            cache[id(image)] = hit
        return {"type": "image_url", "image_url": {"url": hit[1]}}

    def _data_url(self, image: Image.Image) -> str:
        return data_url(image, self.image_format)

    def _native_turns(self, out: list[dict[str, Any]], episode: Episode) -> list[dict[str, Any]]:
        """Replace each tool-calling turn and its observation by OpenAI's assistant ``tool_calls``
        + ``tool`` messages; images and format errors follow in a user message."""
        traj = episode.trajectory
        head = 2 if traj.system_prompt else 1
        result = out[:head]
        i = head
        for s, step in enumerate(traj.steps):
            assistant = out[i]
            i += 1
            observed = bool(step.tool_calls or step.parse_errors)
            observation = out[i] if observed else None
            i += observed
            if not step.tool_calls:
                result.append(assistant)
                if observation is not None:
                    result.append(observation)
                continue
            result.extend(self._native_step(s, step, episode))
        return result

    def _native_step(self, index: int, step: Step, episode: Episode) -> list[dict[str, Any]]:
        ids = [call.id or f"call_{index}_{j}" for j, call in enumerate(step.tool_calls)]
        text = _TOOL_CALL_BLOCK.sub("", step.raw_output or "").strip()
        turns: list[dict[str, Any]] = [{
            "role": "assistant", "content": text or None,
            "tool_calls": [{"id": cid, "type": "function",
                            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
                           for cid, call in zip(ids, step.tool_calls)],
        }]
        for cid, call, result in zip(ids, step.tool_calls, step.observations):
            turns.append({"role": "tool", "tool_call_id": cid, "content": render_tool_response(call, result)})
        extra = [{"type": "text", "text": render_parse_error(e)} for e in step.parse_errors]
        cache = episode.memo.setdefault(_DATA_URLS, {})
        for result in step.observations:
            extra.extend(self._part({"type": "image", "image": self.fitted(img, episode)}, cache) for img in result.images)
        if extra:
            turns.append({"role": "user", "content": extra})
        return turns


def _check_shape(data: Any) -> None:
    """Raise unless ``data`` looks like a chat completion with a message."""
    if not isinstance(data, dict) or not isinstance(data["choices"], list) or not isinstance(data["choices"][0], dict):
        raise ValueError("no choices")
    if not isinstance(data["choices"][0].get("message"), dict):
        raise ValueError("no message in the first choice")


def _error_text(exc: openai.APIStatusError) -> str:
    """The server's own error message, as short as it can be said."""
    body = exc.body
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error) if isinstance(error, dict) else error
    return _clip(str(message if message is not None else exc.response.text))


def _clip(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
