"""follow_prompt must not return before the prompt is in /history (newer hosts send execution_success first)."""
import asyncio
import json
import threading

from conduit.websocket import follow_prompt


def test_follow_prompt_waits_for_the_final_executing_message():
    from aiohttp import web

    history: dict = {}
    order: list[str] = []

    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await asyncio.sleep(0.05)
        await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": "p1"}}))
        order.append("success sent")
        try:  # a client that stops here has not seen the prompt reach /history
            msg = await ws.receive(timeout=0.3)
            order.append(f"client left early ({msg.type.name})")
            return ws
        except asyncio.TimeoutError:
            pass
        history["p1"] = {"outputs": {}}  # task_done
        await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}}))
        order.append("executing None sent")
        await ws.receive(timeout=5)
        return ws

    async def history_handler(request):
        pid = request.match_info["pid"]
        return web.json_response({pid: history[pid]} if pid in history else {})

    ready = threading.Event()
    state: dict = {}

    def serve():
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        app.router.add_get("/history/{pid}", history_handler)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state["port"] = site._server.sockets[0].getsockname()[1]
        state["loop"] = loop
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(10)
    follow_prompt(f"http://127.0.0.1:{state['port']}", "c", "p1", timeout=10)
    assert "p1" in history and order == ["success sent", "executing None sent"]
    state["loop"].call_soon_threadsafe(state["loop"].stop)
