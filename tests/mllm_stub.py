"""A scripted MLLM chat server on 127.0.0.1 (stdlib http.server), speaking Ollama and OpenAI dialects.

Tests queue behaviours per stage: ("good", obj) answers with obj as the message JSON, ("text", s) answers
with s as the message, ("slow", seconds), ("status", code, body), ("garbled", raw) sends a non-JSON body.
Hostile modes, for the planner's limits:
* ("drip", seconds): the good reply, one byte every `seconds` (Content-Length set, so it would complete);
* ("endless",): a chunked body that never ends (64 KiB chunks of a JSON string);
* ("gzip_bomb", mib): `mib` MiB of a JSON string, gzip-compressed (about 1000:1) with Content-Encoding: gzip;
* ("announce", n): Content-Length n, then a few bytes and the connection closes;
* ("echo", template): the message is template.format(auth=<the Authorization header as received>);
* ("echo_status", code): HTTP `code` whose body quotes the Authorization header;
* ("redirect", code, location): a redirect (location relative or absolute).
Every request is recorded (path, headers, body, size of the raw body). Tests get a started one from the
mllm_stub fixture (tests/conftest.py).
"""
from __future__ import annotations

import functools
import gzip
import io
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


@functools.lru_cache(maxsize=4)
def gzip_bomb(mib: int) -> bytes:
    """A gzip stream that decodes to `mib` MiB: the envelope of a reply whose message never ends."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as z:
        z.write(b'{"message": {"role": "assistant", "content": "')
        block = b"a" * (1 << 20)
        for _ in range(mib):
            z.write(block)
    return buf.getvalue()


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
        self.dripped = 0  # bytes sent by "drip" replies
        self.sent = 0  # bytes sent by "endless" replies
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
                                      "stage": stage, "size": len(raw)})
                todo = stub.queue[stage].pop(0) if stub.queue[stage] else ("good", stub.good[stage])
                kind = todo[0]
                auth = self.headers.get("Authorization", "(none)")
                if kind == "slow":
                    time.sleep(todo[1])
                    todo = ("good", stub.good[stage])
                    kind = "good"
                try:
                    if kind == "status":
                        self._send(todo[1], todo[2].encode())
                    elif kind == "echo_status":
                        self._send(todo[1], f"unauthorized: you sent Authorization: {auth}".encode())
                    elif kind == "garbled":
                        self._send(200, todo[1].encode())
                    elif kind == "redirect":
                        self._send(todo[1], b"moved", {"Location": todo[2]})
                    elif kind == "drip":
                        self._drip(self._envelope(body, json.dumps(stub.good[stage])), todo[1])
                    elif kind == "endless":
                        self._endless()
                    elif kind == "gzip_bomb":
                        self._send(200, gzip_bomb(todo[1]), {"Content-Encoding": "gzip"})
                    elif kind == "announce":
                        self._send(200, b'{"message": ', {"Content-Length": str(todo[1])})
                    else:
                        if kind == "echo":
                            text = todo[1].format(auth=auth)
                        else:
                            text = json.dumps(todo[1]) if kind == "good" else todo[1]
                        self._send(200, self._envelope(body, text))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (limit tests)
                    pass

            def _envelope(self, body: dict, text: str) -> bytes:
                if self.path.endswith("/api/chat"):
                    reply = {"model": body["model"], "message": {"role": "assistant", "content": text},
                             "done": True}
                else:
                    reply = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                return json.dumps(reply).encode()

            def _send(self, code: int, data: bytes, headers: dict | None = None) -> None:
                headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _drip(self, data: bytes, every: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    stub.dripped += 1
                    time.sleep(every)

            def _endless(self) -> None:
                self.protocol_version = "HTTP/1.1"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"a" * (64 << 10)
                self.wfile.write(b'%x\r\n{"message": {"content": "\r\n' % len(b'{"message": {"content": "'))
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    stub.sent += len(chunk)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
