"""A real local HTTP server speaking the OpenAI Chat Completions protocol, with scripted replies.

Each request to ``POST /v1/chat/completions`` takes the next item of the script: a function call
(its arguments sent raw, so they may be malformed), plain assistant text, or an HTTP error. When
the script runs out the server answers 500. Every request body is recorded for assertions.

    with scripted_chat_server([Call("submit_plan", '{"steps": []}')]) as server:
        engine = OpenAIEngine(model="m", api_key="k", base_url=server.base_url)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETIONS_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Call:
    """The assistant calls ``name`` with ``arguments`` exactly as given."""

    name: str
    arguments: str
    prompt_tokens: int = 100
    completion_tokens: int = 20


@dataclass(frozen=True)
class Text:
    """The assistant answers in plain text, calling nothing."""

    content: str
    prompt_tokens: int = 100
    completion_tokens: int = 20


@dataclass(frozen=True)
class HttpError:
    """The server answers with an HTTP error status and an OpenAI-style error body."""

    status: int
    message: str = "scripted error"
    retry_after: str | None = None  # the Retry-After header, when given


@dataclass(frozen=True)
class Drop:
    """The server closes the connection without answering, as a server going down does."""


Reply = Call | Text | HttpError | Drop


class ChatServer(ThreadingHTTPServer):
    """The server; ``base_url`` is what the ``openai`` client needs, ``requests`` what it sent."""

    def __init__(self, script: Iterable[Reply]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._script: deque[Reply] = deque(script)
        self._lock = threading.Lock()
        self._served = 0
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # when each request came (monotonic seconds)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def take(self, body: dict[str, Any]) -> tuple[Reply | None, int]:
        """Record ``body`` and hand out the next scripted reply with its sequence number."""
        with self._lock:
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            self._served += 1
            return (self._script.popleft() if self._script else None), self._served


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:
        if self.path != COMPLETIONS_PATH:
            self._send(404, _error(f"no route {self.path}", "not_found"))
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        reply, seq = self.server.take(body)
        if reply is None:
            self._send(500, _error("the script has run out", "server_error"))
        elif isinstance(reply, Drop):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif isinstance(reply, HttpError):
            extra = {"Retry-After": reply.retry_after} if reply.retry_after else {}
            self._send(reply.status, _error(reply.message, "scripted"), extra)
        else:
            self._send(200, _completion(reply, model=str(body.get("model", "")), seq=seq))

    def _send(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _completion(reply: Call | Text, *, model: str, seq: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if isinstance(reply, Call):
        message["tool_calls"] = [
            {
                "id": f"call_{seq}",
                "type": "function",
                "function": {"name": reply.name, "arguments": reply.arguments},
            }
        ]
        finish = "tool_calls"
    else:
        message["content"] = reply.content
        finish = "stop"
    return {
        "id": f"chatcmpl-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


@contextmanager
def scripted_chat_server(script: Iterable[Reply]) -> Iterator[ChatServer]:
    """Serve ``script`` on 127.0.0.1 (a free port) for the duration of the block."""
    server = ChatServer(script)
    # A short poll interval keeps shutdown() quick; the default makes it wait half a second.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="chat-server", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
