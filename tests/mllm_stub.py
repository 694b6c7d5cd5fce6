"""A scripted MLLM chat server on 127.0.0.1 (stdlib http.server), speaking Ollama and OpenAI dialects.

Tests queue behaviours per stage: ("good", obj) answers with obj as the message JSON, ("text", s) answers
with s as the message, ("slow", seconds), ("status", code, body), ("garbled", raw) sends a non-JSON body.
Every request is recorded (path, headers, body). Tests get a started one from the mllm_stub fixture
(tests/conftest.py).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD = {
    "prompt": {"description": "a smiling woman with short brown hair", "prompt": "a photo of a smiling woman with "
                                                                              "short brown hair at a formal event"},
    "condition_box": {"box_2d": [0, 300, 400, 700]},  # Gemini style: [ymin, xmin, ymax, xmax] on 0-1000
    "related_box": {"box": [200, 300, 800, 1000], "order": "xyxy", "scale": 1000},
}


def stage_of(body: dict) -> str:
    text = json.dumps(body.get("messages", [{}])[1])
    if "salient visual features" in text:
        return "prompt"
    if "Choose where" in text:
        return "condition_box"
    return "related_box"


class StubMLLM:
    def __init__(self) -> None:
        self.queue: dict[str, list[tuple]] = {"prompt": [], "condition_box": [], "related_box": []}
        self.requests: list[dict] = []
        self.good = {k: dict(v) for k, v in GOOD.items()}
        self._server: ThreadingHTTPServer | None = None

    def script(self, stage: str, *behaviours: tuple) -> None:
        self.queue[stage].extend(behaviours)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "StubMLLM":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                stage = stage_of(body)
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                      "stage": stage})
                todo = stub.queue[stage].pop(0) if stub.queue[stage] else ("good", stub.good[stage])
                kind = todo[0]
                if kind == "slow":
                    time.sleep(todo[1])
                    todo = ("good", stub.good[stage])
                    kind = "good"
                if kind == "status":
                    self._send(todo[1], todo[2].encode())
                elif kind == "garbled":
                    self._send(200, todo[1].encode())
                else:
                    text = json.dumps(todo[1]) if kind == "good" else todo[1]
                    if self.path.endswith("/api/chat"):
                        reply = {"model": body["model"], "message": {"role": "assistant", "content": text},
                                 "done": True}
                    else:
                        reply = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                  "content": text}}]}
                    self._send(200, json.dumps(reply).encode())

            def _send(self, code: int, data: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
