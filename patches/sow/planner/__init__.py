"""SOW's multimodal-LLM planner over HTTP (requests only, no ComfyUI imports): the three stages with strict
JSON, every limit bounded (total time, reply size, JSON depth, prompt length and weights) and the API key
kept out of everything it returns, logs or raises.

Modules: endpoint (settings, URL checks, request body), transport (bounded HTTP), secrets (key-name check,
redaction), prompts (stage text), reply (JSON, boxes, prompt clamping), cache, plan (orchestration).
"""
from __future__ import annotations

from .cache import CACHE_SIZE, clear_cache
from .endpoint import APIS, DEFAULT_TIMEOUT, MAX_REPLY_BYTES, SUFFIX, Endpoint, UrlRefused, build_payload, \
    normalize_url
from .plan import FAILURE_KINDS, Exchange, PlanFailure, PlanRequest, ask, plan
from .prompts import STAGE_NAMES, box_messages, prompt_messages
from .reply import MAX_JSON_DEPTH, MAX_PROMPT_CHARS, ORDERS, SCALES, WEIGHT_RANGE, BadReply, fit_box, \
    normalize_box, parse_object, reply_text, sanitize_prompt
from .secrets import KEY_NAME, KeyRefused, Redactor, check_key_name
from .transport import Interrupted, ReadStats, TransportError

__all__ = ["APIS", "CACHE_SIZE", "DEFAULT_TIMEOUT", "FAILURE_KINDS", "KEY_NAME", "MAX_JSON_DEPTH",
           "MAX_PROMPT_CHARS", "MAX_REPLY_BYTES", "ORDERS", "SCALES", "STAGE_NAMES", "SUFFIX", "WEIGHT_RANGE",
           "BadReply", "Endpoint", "Exchange", "Interrupted", "KeyRefused", "PlanFailure", "PlanRequest",
           "ReadStats", "Redactor", "TransportError", "UrlRefused", "ask", "box_messages", "build_payload",
           "check_key_name", "clear_cache", "fit_box", "normalize_box", "normalize_url", "parse_object", "plan",
           "prompt_messages", "reply_text", "sanitize_prompt"]
