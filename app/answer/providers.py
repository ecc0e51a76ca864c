"""Chat models behind the `openai` client: fallback in order, a circuit breaker per model.

Each configured model gets its own client with the per-call timeout and the client's retries
(exponential backoff with jitter on 429, 5xx, timeouts and connection errors, honouring
`Retry-After`). A model whose call still fails counts a failure on its breaker; after
`HYBRID_ANSWER_BREAKER_FAILURES` in a row it is skipped for `HYBRID_ANSWER_BREAKER_COOLDOWN`
seconds, then tried once more. The next model takes over as long as nothing has been streamed;
once text has gone out, a failure ends the answer with an error. When no model can answer,
`NoModelAnswered` names each model and why; the answer then falls back to quoting the passages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from app.errors import Unavailable, UpstreamError
from app.observe.metrics import METRICS
from app.settings import AnswerSettings


@dataclass(frozen=True)
class ChatModel:
    """One entry of `HYBRID_ANSWER_MODELS`: a model name at an endpoint (None = default)."""

    model: str
    base_url: str | None

    @property
    def name(self) -> str:
        """How logs, errors, metrics and `/ready` name it: credentials in the URL (user,
        password, query string) are left out."""
        if not self.base_url:
            return self.model
        url = httpx.URL(self.base_url).copy_with(
            username=None, password=None, query=None, fragment=None
        )
        return f"{self.model}@{url}"


def parse_models(entries: tuple[str, ...], default_url: str | None = None) -> list[ChatModel]:
    """`model` or `model@base_url` entries, as validated by the settings."""
    models = []
    for entry in entries:
        model, _, base_url = entry.partition("@")
        models.append(ChatModel(model.strip(), base_url.strip() or default_url))
    return models


class CircuitBreaker:
    """Closed until `failures` calls fail in a row; then open for `cooldown_s`, then half-open:
    one trial call closes it on success or opens it again on failure."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether to call now; in the half-open state only one caller gets through."""
        with self._lock:
            if self.opened_at is None:
                return True
            if self.clock() - self.opened_at < self.cooldown_s or self._trial:
                return False
            self._trial = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self.consecutive, self.opened_at, self._trial = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self.consecutive += 1
            if self._trial or self.consecutive >= self.failures:
                self.opened_at = self.clock()
            self._trial = False

    def remaining_s(self) -> float:
        with self._lock:
            if self.opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))

    @property
    def state(self) -> str:
        """`closed` (calls go through), `open` (skipped) or `half-open` (the next call, or the
        one under way, is the trial)."""
        if self.opened_at is None:
            return "closed"
        return "open" if self.remaining_s() > 0 else "half-open"


class NoModelAnswered(Unavailable):
    """Every configured model failed or was skipped by its open circuit breaker."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("no answer model could answer: " + "; ".join(reasons))
        self.reasons = reasons


@dataclass
class Chunk:
    """What a streamed completion yields: the model that answers, text, or usage; `degraded`
    says why an extractive answer stands in for the models'."""

    model: str | None = None
    text: str = ""
    usage: dict[str, int] | None = None
    degraded: str | None = None


_FAILURES = (openai.OpenAIError, httpx.HTTPError, ValueError, KeyError, TypeError)


class ChatModels:
    """The configured models in fallback order, each with its client and breaker."""

    def __init__(
        self, settings: AnswerSettings, api_key: str | None, base_url: str | None = None
    ) -> None:
        self.settings = settings
        self.models = parse_models(settings.models, base_url)
        self.breakers = {
            m.name: CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
            for m in self.models
        }
        self._clients = {m.name: self._client(m, api_key) for m in self.models}

    def _client(self, model: ChatModel, api_key: str | None) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=self.settings.api_key or api_key or "unused",
            base_url=model.base_url,
            timeout=self.settings.timeout_s,
            max_retries=self.settings.max_retries,
        )

    def breakers_in_order(self) -> list[tuple[ChatModel, CircuitBreaker]]:
        return [(m, self.breakers[m.name]) for m in self.models]

    def stream(
        self,
        messages: list[ChatCompletionMessageParam],
        *,
        temperature: float | None = None,
        json_output: bool = False,
    ) -> Iterator[Chunk]:
        """The first model that answers streams its completion; the others are fallbacks.
        `temperature` overrides the setting; `json_output` asks for a JSON object."""
        reasons = []
        for model in self.models:
            breaker = self.breakers[model.name]
            if not breaker.allow():
                reasons.append(f"{model.name}: skipped for {breaker.remaining_s():.0f} s more")
                METRICS.observe_provider_error(model.name)
                continue
            try:
                chunks = self._open(model, messages, temperature, json_output)
                first = next(chunks, None)
            except _FAILURES as exc:
                breaker.failed()
                reasons.append(f"{model.name}: {_reason(exc)}")
                METRICS.observe_provider_error(model.name)
                continue
            except BaseException:
                breaker.failed()  # a half-open breaker must not wait for a trial that ended
                raise
            if first is None:
                breaker.failed()
                reasons.append(f"{model.name}: empty answer")
                METRICS.observe_provider_error(model.name)
                continue
            breaker.succeeded()  # it answers; a failure from here on counts anew
            if reasons:
                METRICS.observe_fallback("model")
            yield Chunk(model=model.name)
            yield from self._rest(model, breaker, first, chunks)
            return
        raise NoModelAnswered(reasons)

    def _rest(
        self,
        model: ChatModel,
        breaker: CircuitBreaker,
        first: Chunk,
        chunks: Iterator[Chunk],
    ) -> Iterator[Chunk]:
        yield first
        try:
            yield from chunks
        except _FAILURES as exc:
            breaker.failed()
            METRICS.observe_provider_error(model.name)
            raise UpstreamError(f"{model.name} failed mid-answer: {_reason(exc)}") from exc

    def _open(
        self,
        model: ChatModel,
        messages: list[ChatCompletionMessageParam],
        temperature: float | None,
        json_output: bool,
    ) -> Iterator[Chunk]:
        stream = self._clients[model.name].chat.completions.create(
            model=model.model,
            messages=messages,
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature if temperature is None else temperature,
            stream=True,
            stream_options={"include_usage": True},
            response_format={"type": "json_object"} if json_output else openai.omit,
        )
        return _chunks(stream)


def _chunks(stream: Any) -> Iterator[Chunk]:
    # Closing the stream (also when the client goes away mid-answer) frees the connection.
    with stream:
        for event in stream:
            usage = _usage(event.usage) if event.usage else None
            text = "".join((choice.delta.content or "") for choice in event.choices)
            if text or usage:
                yield Chunk(text=text, usage=usage)


def _usage(usage: Any) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(getattr(usage, k)) for k in keys if getattr(usage, k, None) is not None}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code}: {message or exc.message}"
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return "timed out"
    return f"unusable answer ({type(exc).__name__}: {exc})"
