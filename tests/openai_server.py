"""A real OpenAI-compatible HTTP server on loopback, for tests of the provider clients.

It listens on 127.0.0.1 on an ephemeral port in a background thread and answers through a route
table (`ROUTES`, path -> handler): `/v1/embeddings` and `/v1/chat/completions` (streamed as
server-sent events when asked, word by word). Embeddings are deterministic: each vector is
derived from a hash of its input text; chat answers are scripted (`say(...)`) or a fixed
sentence citing [1]. Tests script faults for the next requests (`fail(429, "hang", ...)`), or
take the server down (`down = 500`), and read what was received in `requests` (and how many
requests it was answering at once at most, `most_in_flight`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import numpy as np

Fault = (
    int | Literal["hang", "malformed", "wrong_dim", "nan", "reversed", "malformed_stream", "stall"]
)
DEFAULT_ANSWER = "The sources answer this [1]."

# (type, message) of the errors a test can inject, as OpenAI words them.
ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "Incorrect API key provided: unused."),
    429: ("rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", "The server had an error while processing your request."),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
}


@dataclass(frozen=True)
class Reply:
    """What a route answers: status, JSON-ready body (or raw bytes) and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    # A streamed body: each item is written and flushed in turn; None stalls until shutdown.
    events: list[bytes | None] | None = None

    def encoded(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


@dataclass(frozen=True)
class Call:
    """One received request; `fault` is the fault scripted for it, if any; `at` when it came
    (`time.monotonic()`)."""

    path: str
    body: dict[str, Any]
    fault: Fault | None
    at: float = field(default_factory=time.monotonic)


Route = Callable[["OpenAIServer", Call], Reply]


class OpenAIServer:
    """Loopback OpenAI-compatible server; use as a context manager."""

    def __init__(
        self,
        dimension: int = 384,
        hang_s: float = 10.0,
        token_delay_s: float = 0.0,
        embed_delay_s: float = 0.0,
    ) -> None:
        self.dimension = dimension
        self.hang_s = hang_s
        self.token_delay_s = token_delay_s
        # Each embeddings answer takes this long; `most_in_flight` counts the overlap.
        self.embed_delay_s = embed_delay_s
        self.in_flight = 0
        self.most_in_flight = 0
        self.down: int | None = None
        self.requests: list[Call] = []
        self._answers: deque[str] = deque()
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        # A short poll interval keeps shutdown, and so each test's teardown, quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def embedding_inputs(self) -> list[list[str]]:
        """The texts of each embeddings request, in the order received."""
        return [_texts(c.body) for c in self.requests if c.path == "/v1/embeddings"]

    @property
    def chat_calls(self) -> list[Call]:
        return [c for c in self.requests if c.path == "/v1/chat/completions"]

    def say(self, *answers: str) -> None:
        """The next chat completions answer these texts, one each."""
        with self._lock:
            self._answers.extend(answers)

    def next_answer(self) -> str:
        with self._lock:
            return self._answers.popleft() if self._answers else DEFAULT_ANSWER

    def fail(self, *faults: Fault) -> None:
        """Apply these faults, one each, to the next requests."""
        with self._lock:
            self._faults.extend(faults)

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def handle(self, path: str, raw: bytes) -> Reply:
        route = ROUTES.get(path)
        if route is None:
            return error_reply(404, f"Unknown path {path}", "invalid_request_error")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error_reply(400, "Request body is not a JSON object", "invalid_request_error")
        call = self._record(path, body)
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return self._faulty(call) or route(self, call)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _record(self, path: str, body: dict[str, Any]) -> Call:
        with self._lock:
            fault = self.down or (self._faults.popleft() if self._faults else None)
            call = Call(path, body, fault)
            self.requests.append(call)
        return call

    def _faulty(self, call: Call) -> Reply | None:
        """Answer the faults every route shares; route-specific ones are left to the route."""
        if isinstance(call.fault, int):
            kind, message = ERRORS.get(call.fault, ("server_error", f"HTTP {call.fault}"))
            return error_reply(call.fault, message, kind)
        if call.fault == "malformed":
            return Reply(200, b'{"object": "list", "data": [')
        if call.fault == "hang":
            # Waiting on the event rather than sleeping lets shutdown end a hanging request.
            self._stop.wait(self.hang_s)
        return None


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close, so no request outlives the server.
    daemon_threads = False
    app: OpenAIServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        reply = self.server.app.handle(self.path, self.rfile.read(length))
        if reply.events is None:
            self._send(reply)
        else:
            self._stream(reply.events)

    def _stream(self, events: list[bytes | None]) -> None:
        app = self.server.app
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in events:
                if event is None:
                    app._stop.wait(app.hang_s)
                    continue
                self.wfile.write(event)
                self.wfile.flush()
                if app.token_delay_s:
                    time.sleep(app.token_delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, reply: Reply) -> None:
        payload = reply.encoded()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out) before the answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


def error_reply(status: int, message: str, kind: str) -> Reply:
    """An OpenAI-style error body; 429 asks for an immediate retry."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    headers = {"Retry-After": "0"} if status == 429 else {}
    return Reply(status, body, headers)


def embeddings(server: OpenAIServer, call: Call) -> Reply:
    """POST /v1/embeddings: one deterministic vector per input text.

    Route faults: "wrong_dim" (one value too many), "nan" (a NaN in the first vector) and
    "reversed" (items listed last first, each keeping its `index`).
    """
    texts = _texts(call.body)
    time.sleep(server.embed_delay_s)
    dimension = server.dimension + 1 if call.fault == "wrong_dim" else server.dimension
    vectors = [vector_for(text, dimension) for text in texts]
    if call.fault == "nan" and vectors:
        vectors[0][0] = float("nan")
    data = [
        {"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)
    ]
    if call.fault == "reversed":
        data.reverse()
    tokens = sum(len(text.split()) for text in texts)
    body = {
        "object": "list",
        "data": data,
        "model": call.body.get("model", ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Reply(200, body)


def vector_for(text: str, dimension: int) -> list[float]:
    """A unit vector determined by the text alone."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    vector = np.random.default_rng(seed).standard_normal(dimension)
    return [float(x) for x in vector / np.linalg.norm(vector)]


def _texts(body: dict[str, Any]) -> list[str]:
    value = body.get("input", [])
    return [value] if isinstance(value, str) else list(value)


def chat_completions(server: OpenAIServer, call: Call) -> Reply:
    """POST /v1/chat/completions: the next scripted answer, whole or streamed word by word.

    Route faults: "malformed_stream" (an event that is not JSON) and "stall" (the first word,
    then silence past any timeout).
    """
    answer = server.next_answer()
    model = call.body.get("model", "")
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in call.body["messages"])
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(answer.split()),
        "total_tokens": prompt_tokens + len(answer.split()),
    }
    if not call.body.get("stream"):
        message = {"role": "assistant", "content": answer}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return Reply(200, _completion("chat.completion", model, [choice], usage))
    return Reply(200, None, events=_chat_events(answer, model, usage, call.fault))


def _chat_events(
    answer: str, model: str, usage: dict[str, int], fault: Fault | None
) -> list[bytes | None]:
    words = answer.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    chunks = [
        _completion("chat.completion.chunk", model, [_delta(piece)], None) for piece in pieces
    ]
    events: list[bytes | None] = [_sse(chunk) for chunk in chunks]
    if fault == "malformed_stream":
        events = [b'data: {"id": "broken", "choices": [\n\n']
    elif fault == "stall":
        events = [*events[:1], None]
    else:
        events.append(_sse(_completion("chat.completion.chunk", model, [], usage)))
        events.append(b"data: [DONE]\n\n")
    return events


def _delta(text: str) -> dict[str, Any]:
    return {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}


def _completion(
    kind: str, model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-loopback",
        "object": kind,
        "created": 0,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


ROUTES: dict[str, Route] = {
    "/v1/embeddings": embeddings,
    "/v1/chat/completions": chat_completions,
}
