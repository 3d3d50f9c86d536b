"""A small OpenAI-compatible HTTP server for tests: real sockets and real HTTP, scripted answers.

What it answers is steered by the request: a chat whose last user message is ``fail 400``,
``fail 500``, ``fail 503 text``, ``slow`` or ``break stream`` misbehaves that way.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    body: dict[str, Any] | None
    authorization: str | None


@dataclass
class FakeUpstream:
    models: list[str] = field(default_factory=lambda: ["up-chat", "embed-a", "embed-b"])
    seen: list[Seen] = field(default_factory=list)
    slow_s: float = 1.0
    models_delay_s: float = 0.0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                """Quiet."""

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _text(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                upstream.seen.append(Seen("GET", self.path, None, self.headers.get("Authorization")))
                if self.path == "/v1/models":
                    time.sleep(upstream.models_delay_s)
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in upstream.models]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                upstream.seen.append(Seen("POST", self.path, body, self.headers.get("Authorization")))
                if self.path == "/v1/chat/completions":
                    self._chat(body)
                elif self.path == "/v1/completions":
                    text = f"completion of {body.get('prompt')}"
                    self._json(
                        200,
                        {
                            "id": "cmpl-up",
                            "object": "text_completion",
                            "model": body["model"],
                            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                        },
                    )
                elif self.path == "/v1/embeddings":
                    inputs = body["input"]
                    data = [
                        {"object": "embedding", "index": i, "embedding": [float(len(str(text))), float(i)]}
                        for i, text in enumerate(inputs)
                    ]
                    self._json(
                        200,
                        {
                            "object": "list",
                            "model": body["model"],
                            "data": list(reversed(data)),
                            "usage": {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)},
                        },
                    )
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def _chat(self, body: dict[str, Any]) -> None:
                said = body["messages"][-1]["content"]
                if said == "fail 400":
                    self._json(
                        400, {"error": {"message": "max_tokens must be at most 4096", "type": "invalid_request_error"}}
                    )
                    return
                if said == "fail 500":
                    self._json(500, {"error": {"message": "CUDA out of memory"}})
                    return
                if said == "fail 503 text":
                    self._text(503, "upstream overloaded")
                    return
                if said == "slow":
                    time.sleep(upstream.slow_s)
                if body.get("stream"):
                    self._stream(body, said)
                    return
                self._json(
                    200,
                    {
                        "id": "chatcmpl-up",
                        "object": "chat.completion",
                        "created": 1,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": f"upstream heard: {said}"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                    },
                )

            def _stream(self, body: dict[str, Any], said: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i, piece in enumerate(["up", "stream", "ed"]):
                    chunk = {
                        "id": "chatcmpl-up",
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if said == "break stream" and i == 0:
                        self.wfile.write(b"data: {this is not json\n\n")
                        return
                self.wfile.write(b": keep-alive comment\n\ndata: [DONE]\n\n")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-upstream", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def posted(self, path: str) -> list[dict[str, Any]]:
        return [s.body for s in self.seen if s.method == "POST" and s.path == path and s.body is not None]
