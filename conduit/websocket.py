"""Follow one prompt over ComfyUI's /ws until it finishes (aiohttp, which ComfyUI itself requires)."""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable


class PromptFailed(RuntimeError):
    pass


class PromptTimeout(TimeoutError):
    """The prompt did not finish within the caller's timeout."""


class Cancelled(Exception):
    """The caller's cancel event was set while the prompt was being followed."""


async def _follow(base: str, client_id: str, prompt_id: str, timeout: float,
                  on_progress: Callable[[dict], None] | None) -> None:
    import aiohttp

    url = base.replace("http://", "ws://").replace("https://", "wss://") + f"/ws?clientId={client_id}"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, heartbeat=30) as ws:
            # The prompt may already be done before we connect: the caller checks /history afterwards.
            history_url = f"{base}/history/{prompt_id}"
            async with session.get(history_url) as r:
                if prompt_id in (await r.json()):
                    return
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = event.get("type")
                if kind == "progress" and on_progress:
                    on_progress(data)
                elif kind == "execution_error":
                    raise PromptFailed(json.dumps(data)[:4000])
                elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    return
                # execution_success is not the end: newer hosts send it before the prompt is written to
                # /history; the "executing" None message above follows task_done on every host.


async def _watch(cancel: threading.Event) -> None:
    while not cancel.is_set():
        await asyncio.sleep(0.1)


def follow_prompt(base: str, client_id: str, prompt_id: str, timeout: float,
                  on_progress: Callable[[dict], None] | None = None,
                  cancel: threading.Event | None = None) -> None:
    """Return when the prompt is done (the caller reads /history); TimeoutError after `timeout` seconds,
    Cancelled as soon as `cancel` is set. Neither touches the server: the caller cleans up its prompt."""
    async def bounded() -> None:
        follow = asyncio.ensure_future(_follow(base, client_id, prompt_id, timeout, on_progress))
        tasks = {follow}
        if cancel is not None:
            tasks.add(asyncio.ensure_future(_watch(cancel)))
        done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if follow in done:
            follow.result()
        elif cancel is not None and cancel.is_set():
            raise Cancelled(f"prompt {prompt_id} cancelled")
        else:
            raise PromptTimeout(f"prompt {prompt_id} did not finish within {timeout:g}s")

    try:
        asyncio.run(bounded())
    except PromptFailed:
        pass  # the caller reads the full error from /history
