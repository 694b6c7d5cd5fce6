"""Multimodal LLM planning over HTTP (requests only, no ComfyUI): the three SOW stages with strict JSON.

Endpoints: OpenAI-compatible chat completions ({url}/chat/completions) and Ollama ({url}/api/chat).
The API key is read from a named environment variable at request time and never returned, logged or cached.
Every failure is a ConduitError naming the stage and what came back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from .errors import ConduitError

log = logging.getLogger(__name__)

APIS = ("ollama", "openai-compatible")
STAGE_NAMES = {"prompt": "stage 1 (prompt intensification)", "condition_box": "stage 2 (condition box)",
               "related_box": "stage 3 (condition-related box)"}
ORDERS = ("auto", "xyxy", "yxyx", "xywh")
SCALES = ("auto", "0-1", "0-1000", "pixels")
SHOWN = 300  # characters of a bad reply quoted in errors
CACHE_SIZE = 256

_cache: OrderedDict[str, Any] = OrderedDict()


class BadReply(ValueError):
    """The model answered, but not with the JSON that was asked for."""


@dataclass(frozen=True)
class Endpoint:
    api: str  # "ollama" | "openai-compatible"
    url: str
    model: str
    timeout: float = 60.0
    api_key_env: str = ""  # NAME of the environment variable holding the key
    json_mode: bool = True

    def chat_url(self) -> str:
        base = self.url.rstrip("/")
        suffix = "/api/chat" if self.api == "ollama" else "/chat/completions"
        return base if base.endswith(suffix) else base + suffix

    def identity(self) -> dict:
        """Everything that changes the answer, for the cache key (no key material)."""
        return {"api": self.api, "url": self.chat_url(), "model": self.model, "json": self.json_mode}


@dataclass
class Exchange:
    """A stage's result and where it came from, for the node's report."""
    stage: str
    value: Any
    source: str  # "model" | "model (retried)" | "cache" | "manual"
    notes: list[str] = field(default_factory=list)


def clear_cache() -> None:
    _cache.clear()


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def api_key(endpoint: Endpoint, node: str) -> str | None:
    name = endpoint.api_key_env.strip()
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConduitError(node, f"environment variable {name} (api_key_env) is not set.",
                           f"set {name} in ComfyUI's environment, or clear api_key_env for servers without keys.")
    return value


def build_payload(endpoint: Endpoint, messages: list[dict], images_b64: list[str]) -> dict:
    """Chat request in the endpoint's dialect; images go with the last user message."""
    msgs = [dict(m) for m in messages]
    last = msgs[-1]
    if endpoint.api == "ollama":
        if images_b64:
            last["images"] = list(images_b64)
        body: dict = {"model": endpoint.model, "messages": msgs, "stream": False, "options": {"temperature": 0}}
        if endpoint.json_mode:
            body["format"] = "json"
        return body
    if images_b64:
        last["content"] = [{"type": "text", "text": last["content"]}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b}"}} for b in images_b64]
    body = {"model": endpoint.model, "messages": msgs, "temperature": 0}
    if endpoint.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def reply_text(endpoint: Endpoint, body: Any) -> str:
    """The assistant's message text from a chat response body."""
    try:
        if endpoint.api == "ollama":
            text = body["message"]["content"]
        else:
            text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        where = "message.content" if endpoint.api == "ollama" else "choices[0].message.content"
        raise BadReply(f"the response has no {where}") from None
    if not isinstance(text, str):
        raise BadReply("the message content is not text")
    return text


def post(endpoint: Endpoint, payload: dict, stage: str, node: str) -> Any:
    """POST and decode the JSON body; transport and HTTP failures become ConduitErrors."""
    key = api_key(endpoint, node)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = endpoint.chat_url()
    where = STAGE_NAMES.get(stage, stage)
    try:
        resp = requests.post(url, json=payload, headers=headers, timeout=endpoint.timeout)
    except requests.Timeout:
        raise ConduitError(node, f"{where}: no reply from {url} within {endpoint.timeout:g} s.",
                           "raise timeout, use a smaller/faster model, or give manual values as fallback.") from None
    except requests.RequestException as exc:
        raise ConduitError(node, f"{where}: cannot reach {url} ({type(exc).__name__}: "
                                 f"{_short(_redact(str(exc), key))}).",
                           "check the url and that the server is running, or give manual values as fallback.") \
            from None
    if resp.status_code >= 400:
        raise ConduitError(node, f"{where}: HTTP {resp.status_code} from {url}: "
                                 f"{_short(_redact(resp.text, key)) or '(empty body)'}",
                           "check model name, url and api_key_env, or give manual values as fallback.")
    try:
        return resp.json()
    except ValueError:
        raise ConduitError(node, f"{where}: the server's reply is not JSON: {_short(_redact(resp.text, key))!r}",
                           "point url at an OpenAI-compatible or Ollama chat endpoint.") from None


def parse_object(text: str) -> dict:
    """The JSON object in a model reply, tolerating markdown fences and prose around it."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.S)
    if fence:
        t = fence.group(1).strip()
    try:
        obj = json.loads(t)
    except ValueError:
        start, end = t.find("{"), t.rfind("}")
        if start < 0 or end <= start:
            raise BadReply("no JSON object in the reply") from None
        try:
            obj = json.loads(t[start:end + 1])
        except ValueError as exc:
            raise BadReply(f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise BadReply("the JSON is not an object")
    return obj


# ------------------------------------------------------------------------------------------------ boxes

BOX_KEYS = ("box", "bbox", "bbox_2d", "box_2d", "condition_box", "related_box", "bounding_box")


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise BadReply(f"a box must be 4 numbers, got {values!r}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise BadReply(f"box values are not numbers: {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise BadReply(f"box values are not finite: {values!r}")
    return out


def _find_box(obj: dict) -> tuple[list[float], str | None]:
    """(four numbers, order implied by the field name or None)."""
    for key in BOX_KEYS:
        if key in obj:
            val = obj[key]
            if isinstance(val, dict):
                return _find_box(val)
            return _numbers(val), ("yxyx" if key == "box_2d" else None)
    named = [("x0", "y0", "x1", "y1", "xyxy"), ("xmin", "ymin", "xmax", "ymax", "xyxy"),
             ("x", "y", "width", "height", "xywh"), ("x", "y", "w", "h", "xywh")]
    for a, b, c, d, order in named:
        if all(k in obj for k in (a, b, c, d)):
            return _numbers([obj[a], obj[b], obj[c], obj[d]]), order
    raise BadReply(f"no box field (expected one of {', '.join(BOX_KEYS)})")


def _declared(obj: dict, key: str, allowed: tuple[str, ...]) -> str | None:
    val = obj.get(key)
    if val is None:
        return None
    text = str(val).lower().replace("_", "-").replace(" ", "")
    text = {"1": "0-1", "1.0": "0-1", "unit": "0-1", "normalized": "0-1", "1000": "0-1000", "px": "pixels"}.get(text,
                                                                                                                text)
    return text if text in allowed else None


def normalize_box(obj: dict, canvas_w: int, canvas_h: int, order: str = "auto", scale: str = "auto"
                  ) -> tuple[dict, list[str]]:
    """A model's box -> {x, y, w, h} as fractions of the canvas, and notes on what was assumed or clamped.

    order: xyxy | yxyx (Gemini's box_2d) | xywh (the paper's [x, y, width, height]); scale: 0-1 | 0-1000
    (Gemini) | pixels of the canvas (Qwen-style absolute boxes). 'auto' reads fields "order"/"scale" in the
    reply, then the field name, then assumes what the prompt asked for (xyxy on 0-1000) unless all values
    are <= 1.
    """
    vals, implied = _find_box(obj)
    notes: list[str] = []
    if order == "auto":
        order = _declared(obj, "order", ORDERS[1:]) or implied or "xyxy"
    if scale == "auto":
        scale = _declared(obj, "scale", SCALES[1:])
        if scale is None:
            scale = "0-1" if max(abs(v) for v in vals) <= 1.0 else "0-1000"
            if scale == "0-1000" and max(vals) > 1000:
                scale = "pixels"
    if order == "yxyx":
        vals = [vals[1], vals[0], vals[3], vals[2]]
    if order == "xywh":
        vals = [vals[0], vals[1], vals[0] + vals[2], vals[1] + vals[3]]
    div = {"0-1": (1.0, 1.0), "0-1000": (1000.0, 1000.0), "pixels": (float(canvas_w), float(canvas_h))}[scale]
    x0, y0, x1, y1 = vals[0] / div[0], vals[1] / div[1], vals[2] / div[0], vals[3] / div[1]
    notes.append(f"read as {order} on a {scale} scale")
    if x1 <= x0 or y1 <= y0:
        raise BadReply(f"box {vals} has no area as {order} (needs x1 > x0 and y1 > y0)")
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
    if cx1 <= cx0 or cy1 <= cy0:
        raise BadReply(f"box {vals} lies outside the canvas")
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        notes.append("clamped to the canvas")
        log.warning("Conduit MLLM: box %s reaches outside the canvas; clamped", vals)
    return {"x": cx0, "y": cy0, "w": cx1 - cx0, "h": cy1 - cy0}, notes


def fit_box(box: dict, canvas_w: int, canvas_h: int, aspect: float | None, min_side: float, max_side: float
            ) -> dict:
    """Reshape a condition box about its centre: the condition's aspect (w/h in pixels), its longer side
    limited to [min_side, max_side] x the canvas' shorter side, then moved back inside the canvas."""
    w, h = box["w"] * canvas_w, box["h"] * canvas_h
    cx, cy = box["x"] * canvas_w + w / 2, box["y"] * canvas_h + h / 2
    if aspect:
        area = w * h
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    short = float(min(canvas_w, canvas_h))
    side = max(w, h)
    lo, hi = min_side * short, max_side * short
    if hi > 0 and side > hi:
        w, h = w * hi / side, h * hi / side
    elif lo > 0 and side < lo:
        w, h = w * lo / side, h * lo / side
    w, h = min(w, canvas_w), min(h, canvas_h)
    x = min(max(cx - w / 2, 0.0), canvas_w - w)
    y = min(max(cy - h / 2, 0.0), canvas_h - h)
    return {"x": x / canvas_w, "y": y / canvas_h, "w": w / canvas_w, "h": h / canvas_h}


# ------------------------------------------------------------------------------------------ the stages

SYSTEM = ("You plan image compositions for a text-to-image model from a visual condition (an image that will be "
          "pasted unchanged into the result) and a text prompt. Answer with one JSON object only, no prose.")


def prompt_messages(user_prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": (
                "The attached image is the visual condition. User prompt: " + json.dumps(user_prompt) + ". "
                "First describe the salient visual features of the condition in one sentence, then fuse that "
                "description with the user prompt into one prompt that keeps the user's intent and wording. "
                'Reply as {"description": "...", "prompt": "..."}.')}]


def box_messages(stage: str, prompt: str, canvas_w: int, canvas_h: int, aspect: float,
                 condition_box: dict | None, min_side: float, max_side: float) -> list[dict]:
    grid = (f"Coordinates are integers on a 0-1000 scale of the {canvas_w}x{canvas_h} canvas, x to the right and "
            f"y downward, as [x0, y0, x1, y1].")
    if stage == "condition_box":
        text = (f"The final image shows: {json.dumps(prompt)}. Choose where the attached visual condition "
                f"(aspect ratio width/height {aspect:.2f}) should be placed so that the composition is natural. "
                f"Its longer side should be between {min_side:.0%} and {max_side:.0%} of the canvas' shorter side. "
                f'{grid} Reply as {{"box": [x0, y0, x1, y1]}}.')
    else:
        cb = condition_box or {}
        as1000 = [round(cb.get("x", 0) * 1000), round(cb.get("y", 0) * 1000),
                  round((cb.get("x", 0) + cb.get("w", 0)) * 1000), round((cb.get("y", 0) + cb.get("h", 0)) * 1000)]
        text = (f"The final image shows: {json.dumps(prompt)}. The attached visual condition sits at {as1000}. "
                "Give the region that directly interacts with the condition and should take on its information "
                "(for example the body below a face), excluding unrelated background. "
                f'{grid} Reply as {{"box": [x0, y0, x1, y1]}}.')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def cache_key(endpoint: Endpoint, stage: str, messages: list[dict], images_b64: list[str], extra: dict) -> str:
    blob = json.dumps({"endpoint": endpoint.identity(), "stage": stage, "messages": messages,
                       "images": [hashlib.sha256(b.encode()).hexdigest() for b in images_b64], "extra": extra},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def ask(endpoint: Endpoint, stage: str, messages: list[dict], images_b64: list[str],
        validate: Callable[[dict], Any], node: str, extra: dict | None = None) -> Exchange:
    """One stage: request, parse, validate; one retry on a bad reply; results cached by input hash."""
    key = cache_key(endpoint, stage, messages, images_b64, extra or {})
    if key in _cache:
        _cache.move_to_end(key)
        value, notes = _cache[key]
        return Exchange(stage, value, "cache", list(notes))
    where = STAGE_NAMES.get(stage, stage)
    convo = list(messages)
    problem = ""
    for attempt in range(2):
        body = post(endpoint, build_payload(endpoint, convo, images_b64), stage, node)
        text = ""
        try:
            text = reply_text(endpoint, body)
            value, notes = validate(parse_object(text))
        except BadReply as exc:
            problem = f"{exc}; the reply was {_short(text or json.dumps(body)[:SHOWN])!r}"
            log.warning("Conduit MLLM %s: bad reply (attempt %d): %s", where, attempt + 1, problem)
            convo = list(messages) + [{"role": "assistant", "content": text or "(no text)"},
                                      {"role": "user", "content": f"That reply was not usable: {exc}. Answer again "
                                                                  "with the JSON object only."}]
            continue
        _cache[key] = (value, tuple(notes))
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return Exchange(stage, value, "model" if attempt == 0 else "model (retried)", list(notes))
    raise ConduitError(node, f"{where}: the model did not return the JSON asked for after one retry: {problem}",
                       "try another model, set box_order/box_scale to its convention, or give manual values.")


def validate_prompt(obj: dict) -> tuple[str, list[str]]:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadReply('no non-empty "prompt" string')
    return prompt.strip(), []


@dataclass
class PlanRequest:
    user_prompt: str
    image_b64: str  # PNG of the visual condition
    aspect: float  # condition width / height
    canvas_w: int
    canvas_h: int
    order: str = "auto"
    scale: str = "auto"
    min_side: float = 0.35  # paper: condition side 180-256 px on a 512 canvas
    max_side: float = 0.5
    keep_aspect: bool = True
    run: tuple[str, ...] = ("prompt", "condition_box", "related_box")
    manual_prompt: str = ""
    manual_condition: dict | None = None
    manual_related: dict | None = None
    fallback: bool = True  # use a given manual value when a stage fails


def _manual(stage: str, req: PlanRequest, why: str, node: str) -> Exchange:
    value = {"prompt": req.manual_prompt.strip() or req.user_prompt, "condition_box": req.manual_condition,
             "related_box": req.manual_related}[stage]
    if value is None:
        raise ConduitError(node, f"{STAGE_NAMES[stage]} has no manual value ({why}).",
                           f"connect manual_{stage.replace('_box', '')}_box or let the MLLM run this stage.")
    return Exchange(stage, value, "manual", [why])


def plan(endpoint: Endpoint | None, req: PlanRequest, node: str) -> dict[str, Exchange]:
    """Run the three stages in order (each feeds the next); manual values stand in where asked or on failure."""
    out: dict[str, Exchange] = {}

    def stage(name: str, run: Callable[[], Exchange]) -> None:
        if endpoint is None or name not in req.run:
            out[name] = _manual(name, req, "manual mode" if endpoint is None else "stage skipped", node)
            return
        try:
            out[name] = run()
        except ConduitError as exc:
            has_manual = {"prompt": req.manual_prompt.strip() or None, "condition_box": req.manual_condition,
                          "related_box": req.manual_related}[name] is not None
            if not (req.fallback and has_manual):
                raise
            log.warning("Conduit MLLM: %s failed, using the manual value: %s", STAGE_NAMES[name], exc)
            out[name] = _manual(name, req, f"fallback after: {exc.problem}", node)

    images = [req.image_b64]
    stage("prompt", lambda: ask(endpoint, "prompt", prompt_messages(req.user_prompt), images, validate_prompt,
                                node))
    prompt = out["prompt"].value

    def condition() -> Exchange:
        msgs = box_messages("condition_box", prompt, req.canvas_w, req.canvas_h, req.aspect, None, req.min_side,
                            req.max_side)

        def check(obj: dict):
            box, notes = normalize_box(obj, req.canvas_w, req.canvas_h, req.order, req.scale)
            fitted = fit_box(box, req.canvas_w, req.canvas_h, req.aspect if req.keep_aspect else None,
                             req.min_side, req.max_side)
            return fitted, notes + ([] if fitted == box else ["reshaped to the condition's aspect and size limits"])
        return ask(endpoint, "condition_box", msgs, images, check, node,
                   {"order": req.order, "scale": req.scale, "aspect": req.aspect if req.keep_aspect else None})
    stage("condition_box", condition)
    cond_box = out["condition_box"].value

    def related() -> Exchange:
        msgs = box_messages("related_box", prompt, req.canvas_w, req.canvas_h, req.aspect, cond_box, req.min_side,
                            req.max_side)
        return ask(endpoint, "related_box", msgs, images,
                   lambda obj: normalize_box(obj, req.canvas_w, req.canvas_h, req.order, req.scale), node,
                   {"order": req.order, "scale": req.scale})
    stage("related_box", related)
    return out
