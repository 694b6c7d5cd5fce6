"""A small ComfyUI HTTP + websocket client (stdlib only): submit, follow, fetch outputs."""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib import error, parse, request

log = logging.getLogger(__name__)


class ComfyError(RuntimeError):
    pass


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict
    status: dict
    images: list[bytes] = field(default_factory=list)


class ComfyClient:
    def __init__(self, base_url: str, timeout: float = 600.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _get(self, path: str, timeout: float | None = None) -> bytes:
        with request.urlopen(self.base + path, timeout=timeout or self.timeout) as r:
            return r.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self._get(path))

    def post_json(self, path: str, payload: dict) -> Any:
        data = json.dumps(payload).encode()
        req = request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}")
        except error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise ComfyError(f"POST {path} failed with HTTP {exc.code}: {body}") from None

    def alive(self) -> bool:
        try:
            self._get("/system_stats", timeout=2)
            return True
        except OSError:
            return False

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def submit(self, graph: dict, extra_data: dict | None = None) -> str:
        payload = {"prompt": graph, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        reply = self.post_json("/prompt", payload)
        if reply.get("node_errors"):
            raise ComfyError(f"prompt rejected: {json.dumps(reply['node_errors'])[:2000]}")
        return reply["prompt_id"]

    def wait(self, prompt_id: str, on_progress: Callable[[dict], None] | None = None) -> RunResult:
        """Follow the websocket until the prompt finishes; fall back to polling /history."""
        from .websocket import follow_prompt

        follow_prompt(self.base, self.client_id, prompt_id, self.timeout, on_progress)
        hist = None
        for _ in range(100):  # an error can reach the socket a moment before /history has the prompt
            hist = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if hist is not None:
                break
            time.sleep(0.1)
        if hist is None:
            raise ComfyError(f"prompt {prompt_id} finished but is missing from /history")
        status = hist.get("status", {})
        if status.get("status_str") == "error":
            messages = [m for m in status.get("messages", []) if m[0] == "execution_error"]
            detail = messages[-1][1] if messages else status
            raise ComfyError(f"execution failed: {json.dumps(detail)[:4000]}")
        return RunResult(prompt_id, hist.get("outputs", {}), status)

    def images(self, result: RunResult) -> list[tuple[str, bytes]]:
        out = []
        for node_out in result.outputs.values():
            for img in node_out.get("images", []):
                q = parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                     "type": img.get("type", "output")})
                out.append((img["filename"], self._get(f"/view?{q}")))
        return out

    def run(self, graph: dict, on_progress: Callable[[dict], None] | None = None) -> RunResult:
        result = self.wait(self.submit(graph), on_progress)
        result.images = [data for _, data in self.images(result)]
        return result
