"""A small Chrome DevTools Protocol client: the system Chromium, headless, driven over its websocket with
aiohttp (already one of ComfyUI's dependencies), so the editor tier needs no browser download and no driver."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class PageError(RuntimeError):
    pass


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page. Every call is synchronous; JavaScript runs with await."""

    def __init__(self, executable: str, width: int = 1600, height: int = 1000) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="conduit-chromium-")
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", f"--user-data-dir={self._profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self.console: list[str] = []
        self.exceptions: list[str] = []
        port = self._port()
        self.loop.run_until_complete(self._connect(port))

    def _port(self, timeout: float = 30.0) -> int:
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self.proc.poll() is not None:
                raise PageError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise PageError("chromium did not open its debugging port")

    async def _connect(self, port: int) -> None:
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        for domain in ("Page", "Runtime"):
            await self._send(f"{domain}.enable", {})

    async def _send(self, method: str, params: dict, timeout: float = 120.0) -> dict:
        call_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise PageError(f"devtools connection closed during {method}")
            data = json.loads(msg.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise PageError(f"{method}: {data['error']}")
                return data.get("result", {})
            self._event(data)

    def _event(self, data: dict) -> None:
        method, params = data.get("method"), data.get("params", {})
        if method == "Runtime.consoleAPICalled":
            parts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.console.append(f"{params.get('type')}: {' '.join(parts)}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))

    def send(self, method: str, params: dict | None = None, timeout: float = 120.0) -> dict:
        return self.loop.run_until_complete(self._send(method, params or {}, timeout))

    def js(self, expression: str, timeout: float = 120.0) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise), as JSON."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)},
                           timeout=timeout + 5)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(details.get("exception", {}).get("description") or details.get("text"))
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str, timeout: float = 180.0) -> None:
        """Navigate and wait until the expression `ready` is true."""
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.js(ready, timeout=10):
                    return
            except PageError:
                pass
            time.sleep(0.5)
        raise PageError(f"the page at {url} was not ready within {timeout:.0f}s; console: {self.console[-10:]}")

    def wait_for(self, expression: str, timeout: float = 300.0, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(every)
        raise PageError(f"timed out waiting for {expression[:80]}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
        except Exception:  # noqa: BLE001  (the browser may be gone already)
            pass
        self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._profile.cleanup()
