"""A small ComfyUI HTTP + websocket client (stdlib only): submit, follow, cancel, fetch outputs."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib import error, parse, request

from .errors import UsageError
from .websocket import Cancelled, follow_prompt

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "ComfyClient", "ComfyError", "ComfyHTTPError", "PromptRejected", "RunResult",
           "format_prompt_error", "parse_server_url"]


class ComfyError(RuntimeError):
    pass


class ComfyHTTPError(ComfyError):
    def __init__(self, method: str, path: str, code: int, body: str) -> None:
        self.code, self.body = code, body
        super().__init__(f"{method} {path} failed with HTTP {code}: {body}")


class PromptRejected(ComfyError):
    """/prompt refused the graph (HTTP 400), or accepted only part of it (node_errors beside a prompt_id)."""

    def __init__(self, message: str, reply: dict, prompt_id: str | None = None) -> None:
        self.reply, self.prompt_id = reply, prompt_id
        super().__init__(message)


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict
    status: dict
    images: list[bytes] = field(default_factory=list)


def parse_server_url(text: str) -> str:
    """'gpu-a:8188' -> 'http://gpu-a:8188'; a URL that cannot be a ComfyUI server is a UsageError."""
    raw = text.strip()
    if not raw:
        raise UsageError("--server needs an address, e.g. --server http://127.0.0.1:8188")
    url = raw if "://" in raw else "http://" + raw
    parts = parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"--server {text}: ComfyUI speaks http:// or https://, not {parts.scheme}://; "
                         f"e.g. --server http://{parts.netloc or '127.0.0.1:8188'}")
    if not parts.hostname or any(c.isspace() for c in raw):
        raise UsageError(f"--server {text}: no host name in it; e.g. --server http://127.0.0.1:8188")
    try:
        _ = parts.port
    except ValueError:
        raise UsageError(f"--server {text}: the port must be a number from 1 to 65535, "
                         f"e.g. --server {parts.scheme}://{parts.hostname}:8188") from None
    if parts.query or parts.fragment:
        raise UsageError(f"--server {text}: give just the server's address, without ?query or #fragment, "
                         f"e.g. --server {parts.scheme}://{parts.netloc}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def format_prompt_error(reply: dict) -> str:
    """A /prompt error body ({error, node_errors}) as readable lines, whole: the error, then one line per
    node error with node id, class, input and message."""
    lines = []
    err = reply.get("error")
    if isinstance(err, dict):
        head = err.get("message") or err.get("type") or "prompt rejected"
        details = err.get("details")
        lines.append(f"{head}: {details}" if details and details != head else head)
    elif err:
        lines.append(str(err))
    node_errors = reply.get("node_errors") or {}
    for nid, entry in node_errors.items():
        class_type = entry.get("class_type", "?")
        for e in entry.get("errors", []) or [{}]:
            extra = e.get("extra_info") or {}
            name = extra.get("input_name")
            where = f"node {nid} ({class_type})" + (f" input {name}" if name else "")
            message = e.get("message") or e.get("type") or "error"
            details = e.get("details")
            text = f"{message}: {details}" if details and details not in message else message
            got = extra.get("received_value")
            if got is not None and str(got) not in text:
                text += f" (got {_text(got)})"
            lines.append(f"  {where}: {text}")
    if not lines:
        lines.append(_text(reply))
    return "\n".join(lines)


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

    def post_json(self, path: str, payload: dict, timeout: float | None = None) -> Any:
        data = json.dumps(payload).encode()
        req = request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with request.urlopen(req, timeout=timeout or self.timeout) as r:
                body = r.read()
        except error.HTTPError as exc:
            raise ComfyHTTPError("POST", path, exc.code, exc.read().decode(errors="replace")) from None
        try:
            return json.loads(body) if body.strip() else {}
        except json.JSONDecodeError:
            return {}

    def probe(self, timeout: float = 5.0) -> str | None:
        """None when ComfyUI answers; else why not, in words."""
        try:
            json.loads(self._get("/system_stats", timeout=timeout))
            return None
        except error.HTTPError as exc:
            return f"answers HTTP {exc.code} on /system_stats, so it is not a ComfyUI server"
        except error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, socket.gaierror):
                return f"has a host name that does not resolve ({reason.strerror})"
            if isinstance(reason, ConnectionRefusedError):
                return "refuses the connection (nothing listens on that port)"
            if isinstance(reason, (socket.timeout, TimeoutError)):
                return f"does not answer within {timeout:g}s"
            return f"cannot be reached ({reason})"
        except (TimeoutError, socket.timeout):
            return f"does not answer within {timeout:g}s"
        except json.JSONDecodeError:
            return "answers /system_stats with something that is not JSON, so it is not a ComfyUI server"
        except (OSError, ValueError) as exc:
            return f"cannot be reached ({exc})"

    def alive(self) -> bool:
        try:
            self._get("/system_stats", timeout=2)
            return True
        except OSError:
            return False

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self) -> tuple[list[str], list[str]]:
        """(running, pending) prompt ids from GET /queue (items are [number, prompt_id, graph, extra, outputs])."""
        q = self.get_json("/queue")
        return ([item[1] for item in q.get("queue_running", [])], [item[1] for item in q.get("queue_pending", [])])

    def submit(self, graph: dict, extra_data: dict | None = None) -> str:
        """Queue the graph; PromptRejected (readable, whole) when ComfyUI refuses any of it. A partly valid
        graph is queued by ComfyUI anyway (its valid outputs): that prompt is removed again before raising."""
        payload = {"prompt": graph, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        try:
            reply = self.post_json("/prompt", payload)
        except ComfyHTTPError as exc:
            try:
                body = json.loads(exc.body)
            except json.JSONDecodeError:
                raise exc from None
            if not isinstance(body, dict):
                raise exc from None
            raise PromptRejected(f"prompt rejected by {self.base}:\n{format_prompt_error(body)}", body) from None
        prompt_id = reply.get("prompt_id")
        if reply.get("node_errors"):
            done = self.cancel(prompt_id) if prompt_id else ""
            note = f"\n(ComfyUI had queued the valid part as {prompt_id}; {done})" if prompt_id else ""
            raise PromptRejected(f"prompt rejected by {self.base} (part of the graph failed validation):\n"
                                 f"{format_prompt_error(reply)}{note}", reply, prompt_id)
        if not prompt_id:
            raise ComfyError(f"/prompt on {self.base} answered without a prompt_id: {_text(reply)}")
        return prompt_id

    def cancel(self, prompt_id: str, settle: float = 30.0) -> str:
        """Leave nothing of this prompt on the server: delete it from the queue, and interrupt it only if it
        is the one running (so another user's prompt is never interrupted). Says what it did."""
        try:
            self.post_json("/queue", {"delete": [prompt_id]}, timeout=30)
            running, pending = self.queue()
            if prompt_id not in running:
                return "removed from the queue" if prompt_id not in pending else "still queued (could not delete)"
            deadline = time.monotonic() + settle
            while prompt_id in running and time.monotonic() < deadline:
                # current hosts interrupt only the prompt named here; the pinned one ignores the body, and
                # the check just above is what keeps another user's prompt safe there
                self.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=30)
                stop = time.monotonic() + 3.0
                while prompt_id in running and time.monotonic() < stop:
                    time.sleep(0.1)
                    running, _ = self.queue()
            return "interrupted" if prompt_id not in running else f"still running after {settle:g}s of interrupts"
        except (OSError, ComfyError, ValueError) as exc:
            return f"could not clean up ({exc})"

    def wait(self, prompt_id: str, on_progress: Callable[[dict], None] | None = None,
             cancel: threading.Event | None = None, timeout: float | None = None) -> RunResult:
        """Follow the websocket until the prompt finishes; fall back to polling /history."""
        follow_prompt(self.base, self.client_id, prompt_id, timeout or self.timeout, on_progress, cancel)
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
            raise ComfyError(f"execution failed on {self.base}: {format_execution_error(status)}")
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


def format_execution_error(status: dict) -> str:
    """The last execution_error (or interruption) in a /history status, as one readable line."""
    messages = status.get("messages", [])
    for kind, data in reversed(messages):
        if kind == "execution_error":
            where = f"node {data.get('node_id')} ({data.get('node_type')})"
            return f"{where}: {data.get('exception_type', 'error')}: {data.get('exception_message', '')}".strip()
        if kind == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return _text(status)
