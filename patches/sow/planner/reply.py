"""Reading what came back: the JSON envelope, the model's JSON object, boxes, and the intensified prompt.

Everything here treats the reply as hostile. JSON is depth-checked before it is parsed (Python's parser
recurses, so `[[[[...` raised a raw RecursionError that skipped the manual fallback); every problem is a
BadReply whose message quotes at most a short excerpt. The prompt that goes into CLIP is cut to
MAX_PROMPT_CHARS and its prompt weights are clamped to WEIGHT_RANGE, computed the way ComfyUI reads them
(bare parentheses multiply by 1.1 per level, `(text:w)` sets w), because `(masterpiece:1e999)` produced a
black image and a megabyte of text spent minutes in the text encoder.
"""
from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

log = logging.getLogger(__name__)

ORDERS = ("auto", "xyxy", "yxyx", "xywh")
SCALES = ("auto", "0-1", "0-1000", "pixels")
SHOWN = 300  # characters of a bad reply quoted in messages and in the retry request
MAX_JSON_DEPTH = 32  # a chat reply is about 5 levels deep
MAX_PROMPT_CHARS = 4000  # about 1000 CLIP tokens (13 chunks of 77); the stage is asked for one or two sentences
WEIGHT_RANGE = (0.0, 2.0)  # effective prompt weight of any word; ComfyUI users stay within 0.5..1.5
MAX_PAREN_DEPTH = 10  # deeper nesting is flattened (ComfyUI parses parentheses recursively)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class BadReply(ValueError):
    """The model answered, but not with the JSON that was asked for."""


def excerpt(text: Any, limit: int = SHOWN) -> str:
    """Whitespace collapsed and cut to `limit` characters, for messages (redact before, never after)."""
    text = str(text)
    if len(text) > 20 * limit:
        text = text[:20 * limit]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def json_depth(text: str, stop: int) -> int:
    """Nesting depth of JSON text (brackets inside strings ignored), counting stops once it passes `stop`."""
    if text.count("[") + text.count("{") <= stop:
        return min(stop, text.count("[") + text.count("{"))
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(text: str | bytes) -> Any:
    """json.loads with a depth limit; BadReply (never RecursionError) for anything unparsable."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadReply("invalid JSON (not UTF-8)") from None
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise BadReply(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise BadReply(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise BadReply(f"invalid JSON ({getattr(exc, 'msg', type(exc).__name__)})") from None


def reply_text(api: str, body: Any) -> str:
    """The assistant's message text from a chat response body."""
    try:
        if api == "ollama":
            text = body["message"]["content"]
        else:
            text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        where = "message.content" if api == "ollama" else "choices[0].message.content"
        raise BadReply(f"the response has no {where}") from None
    if not isinstance(text, str):
        raise BadReply("the message content is not text")
    return text


def parse_object(text: str) -> dict:
    """The JSON object in a model reply, tolerating markdown fences and prose around it."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.S)
    if fence:
        t = fence.group(1).strip()
    try:
        obj = loads(t)
    except BadReply as first:
        start, end = t.find("{"), t.rfind("}")
        if start < 0 or end <= start:
            if "nested deeper" in str(first):
                raise
            raise BadReply("no JSON object in the reply") from None
        obj = loads(t[start:end + 1])
    if not isinstance(obj, dict):
        raise BadReply("the JSON is not an object")
    return obj


# ------------------------------------------------------------------------------------------------ prompt

def _escape(text: str) -> str:  # ComfyUI's escape_important
    return text.replace("\\)", "\0\1").replace("\\(", "\0\2")


def _literal(text: str) -> str:
    """Escaped leaf text back to prompt syntax with every parenthesis literal."""
    out = text.replace("(", "\\(").replace(")", "\\)").replace("\0\1", "\\)").replace("\0\2", "\\(")
    return out + " " if out.endswith("\\") else out


def _parse_parentheses(string: str) -> list[str]:  # ComfyUI's parse_parentheses, verbatim in behaviour
    result: list[str] = []
    current = ""
    level = 0
    for ch in string:
        if ch == "(":
            if level == 0:
                if current:
                    result.append(current)
                current = "("
            else:
                current += ch
            level += 1
        elif ch == ")":
            level -= 1
            if level == 0:
                result.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        result.append(current)
    return result


def comfy_weights(escaped: str, max_depth: int = MAX_PAREN_DEPTH) -> list[tuple[str, float]] | None:
    """(leaf text, weight) exactly as ComfyUI's token_weights reads an escaped prompt, without recursion;
    None when parentheses nest deeper than max_depth."""
    out: list[tuple[str, float]] = []
    work = [(iter(_parse_parentheses(escaped)), 1.0)]
    while work:
        parts, weight = work[-1]
        x = next(parts, None)
        if x is None:
            work.pop()
            continue
        if len(x) >= 2 and x[0] == "(" and x[-1] == ")":
            if len(work) > max_depth:
                return None
            x = x[1:-1]
            w = weight * 1.1
            colon = x.rfind(":")
            if colon > 0:
                try:
                    w = float(x[colon + 1:])
                    x = x[:colon]
                except ValueError:
                    pass
            work.append((iter(_parse_parentheses(x)), w))
        else:
            out.append((x, weight))
    return out


def _own_weights(escaped: str) -> list[tuple[str, float]]:
    """Leaves of deeply nested text in one pass: parentheses matched with a stack (unmatched ones stay
    literal), weights as ComfyUI assigns them (x1.1 per bare level, `:w` after the last colon sets w)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(escaped):
        if ch == "(":
            stack.append(i)
        elif ch == ")" and stack:
            pairs[stack.pop()] = i
    out: list[tuple[str, float]] = []
    frames: list[tuple[float, int, int]] = []  # (weight, where its text ends, its closing parenthesis)
    text = ""
    i = 0
    while i < len(escaped):
        if frames and i == frames[-1][1]:
            if text:
                out.append((text, frames[-1][0]))
                text = ""
            i = frames.pop()[2] + 1
            continue
        if escaped[i] == "(" and i in pairs:
            if text:
                out.append((text, frames[-1][0] if frames else 1.0))
                text = ""
            close = pairs[i]
            inner = escaped[i + 1:close]
            weight, end = (frames[-1][0] if frames else 1.0) * 1.1, close
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    weight, end = float(inner[colon + 1:]), i + 1 + colon
                except ValueError:
                    pass
            frames.append((weight, end, close))
        else:
            text += escaped[i]
        i += 1
    if text:
        out.append((text, frames[-1][0] if frames else 1.0))
    return out


def _clamp(w: float) -> float:
    lo, hi = WEIGHT_RANGE
    return 1.0 if math.isnan(w) else min(max(w, lo), hi)


def _safe(leaves: list[tuple[str, float]] | None) -> bool:
    lo, hi = WEIGHT_RANGE
    return leaves is not None and all(math.isfinite(w) and lo <= w <= hi for _, w in leaves)


def _rebuild(leaves: list[tuple[str, float]]) -> str:
    """Flat prompt, one (text:w) group per run of equal clamped weight, every other parenthesis literal."""
    merged: list[list] = []
    for text, w in leaves:
        w = _clamp(w)
        if merged and merged[-1][1] == w:
            merged[-1][0] += text
        else:
            merged.append([text, w])
    parts = []
    for text, w in merged:
        lit = _literal(text)
        parts.append(lit if w == 1.0 or not text.strip() else f"({lit}:{w:.4g})")
    return "".join(parts)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ", limit - 200)
    cut = cut[:space] if space > 0 else cut
    return cut.rstrip("\\")


def sanitize_prompt(text: str) -> tuple[str, list[str]]:
    """A reply prompt made safe for CLIP: control characters removed, cut to MAX_PROMPT_CHARS, every
    effective weight within WEIGHT_RANGE and parentheses no deeper than MAX_PAREN_DEPTH. Prompts that
    already are come back unchanged."""
    notes: list[str] = []
    clean = _CONTROL.sub(" ", text).strip()
    if len(clean) > MAX_PROMPT_CHARS:
        notes.append(f"prompt cut to {MAX_PROMPT_CHARS} characters (the reply had {len(clean)})")
        clean = _cut(clean, MAX_PROMPT_CHARS)
    escaped = _escape(clean)
    leaves = comfy_weights(escaped)
    if _safe(leaves):
        return clean, notes
    lo, hi = WEIGHT_RANGE
    notes.append(f"prompt weights clamped to {lo:g}..{hi:g} and parentheses flattened" if leaves is None else
                 f"prompt weights clamped to {lo:g}..{hi:g}")
    out = _rebuild(leaves if leaves is not None else _own_weights(escaped))
    if len(out) > MAX_PROMPT_CHARS:  # the rewrite added characters: rewrite a shorter cut
        shorter = _escape(_cut(clean, max(0, len(clean) - (len(out) - MAX_PROMPT_CHARS) - 16)))
        again = comfy_weights(shorter)
        out = _rebuild(again if again is not None else _own_weights(shorter))
    if len(out) > MAX_PROMPT_CHARS or not _safe(comfy_weights(_escape(out))):
        out = _cut(re.sub(r"\\?[()]", "", clean), MAX_PROMPT_CHARS)  # no groups left at all
        notes[-1] = "prompt weights removed"
    log.warning("Conduit MLLM: %s", "; ".join(notes))
    return out, notes


def validate_prompt(obj: dict) -> tuple[str, list[str]]:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadReply('no non-empty "prompt" string')
    return sanitize_prompt(prompt)


# ------------------------------------------------------------------------------------------------ boxes

BOX_KEYS = ("box", "bbox", "bbox_2d", "box_2d", "condition_box", "related_box", "bounding_box")


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise BadReply(f"a box must be 4 numbers, got {excerpt(repr(values), 120)}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise BadReply(f"box values are not numbers: {excerpt(repr(values), 120)}") from None
    if not all(math.isfinite(v) for v in out):
        raise BadReply(f"box values are not finite: {excerpt(repr(values), 120)}")
    return out


def _find_box(obj: dict) -> tuple[list[float], str | None]:
    """(four numbers, order implied by the field name or None)."""
    for _ in range(MAX_JSON_DEPTH):
        for key in BOX_KEYS:
            if key in obj:
                val = obj[key]
                if isinstance(val, dict):
                    obj = val
                    break
                return _numbers(val), ("yxyx" if key == "box_2d" else None)
        else:
            named = [("x0", "y0", "x1", "y1", "xyxy"), ("xmin", "ymin", "xmax", "ymax", "xyxy"),
                     ("x", "y", "width", "height", "xywh"), ("x", "y", "w", "h", "xywh")]
            for a, b, c, d, order in named:
                if all(k in obj for k in (a, b, c, d)):
                    return _numbers([obj[a], obj[b], obj[c], obj[d]]), order
            break
    raise BadReply(f"no box field (expected one of {', '.join(BOX_KEYS)})")


def _declared(obj: dict, key: str, allowed: tuple[str, ...]) -> str | None:
    val = obj.get(key)
    if val is None:
        return None
    text = excerpt(val, 40).lower().replace("_", "-").replace(" ", "")
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
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BadReply(f"box {vals} is not finite as {order}")
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
