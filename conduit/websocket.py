"""Follow one prompt over ComfyUI's /ws until it finishes (aiohttp, which ComfyUI itself requires)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable


class PromptFailed(RuntimeError):
    pass


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


def follow_prompt(base: str, client_id: str, prompt_id: str, timeout: float,
                  on_progress: Callable[[dict], None] | None = None) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(_follow(base, client_id, prompt_id, timeout, on_progress), timeout)

    try:
        asyncio.run(bounded())
    except PromptFailed:
        pass  # the caller reads the full error from /history
