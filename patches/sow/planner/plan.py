"""The three SOW stages in order (each feeds the next), with the manual values standing in where asked or
where a stage fails and on_failure allows it.

Configuration a shared workflow could abuse is refused before any request (a url that is not a chat URL,
an api_key_env that is not an API-key variable name): those are errors whatever on_failure says. Everything
that can go wrong with the reply (timeout, too large, too deep, not JSON, wrong schema, HTTP error, unset key)
is a PlanFailure whose `kind` names it; with a manual value and on_failure allowing it, the stage falls back,
a warning is logged and the report carries it. An interrupt is never a failure: it stops the run. Every text
that leaves here (values, notes, warnings, log lines, errors) has the key redacted.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...engine.errors import ConduitError
from . import transport
from .cache import CACHE, cache_key
from .endpoint import Endpoint, UrlRefused, build_payload, check_redirect, display_url
from .prompts import STAGE_NAMES, box_messages, prompt_messages, retry_messages
from .reply import MAX_JSON_DEPTH, BadReply, excerpt, fit_box, loads, normalize_box, parse_object, reply_text, \
    validate_prompt
from .secrets import KeyRefused, KeyUnavailable, check_key_name, read_key, redactor_for

log = logging.getLogger(__name__)

FAILURE_KINDS = ("timeout", "too_large", "too_deep", "not_json", "bad_reply", "http_error", "unreachable",
                 "redirect", "encoding", "no_key")
_FALLBACK_FIX = "or give manual values as fallback."


class PlanFailure(ConduitError):
    """A stage failed in a way on_failure may cover; kind (one of FAILURE_KINDS) names it."""

    def __init__(self, node: str, kind: str, problem: str, fix: str = "") -> None:
        self.kind = kind
        super().__init__(node, problem, fix)


@dataclass
class Exchange:
    """A stage's result and where it came from, for the node's report."""
    stage: str
    value: Any
    source: str  # "model" | "model (retried)" | "cache" | "manual"
    notes: list[str] = field(default_factory=list)
    warning: str = ""  # set when the stage failed and the manual value stands in


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


class _Call:
    """One plan's endpoint after its checks: the URL, the key, the redactor and the interrupt check."""

    def __init__(self, endpoint: Endpoint, node: str, interrupted: Callable[[], bool] | None) -> None:
        self.endpoint = endpoint
        self.node = node
        self.interrupted = interrupted
        try:
            name = check_key_name(endpoint.api_key_env)
        except KeyRefused as exc:
            raise ConduitError(node, exc.problem, exc.fix) from None
        self.key = None
        self.key_problem: KeyUnavailable | None = None
        try:
            self.key = read_key(name)
        except KeyUnavailable as exc:
            self.key_problem = exc
        self.redact = redactor_for(self.key)
        try:
            self.url = endpoint.chat_url()
        except UrlRefused as exc:
            raise ConduitError(node, f"url {self.shown(display_url(endpoint.url), 120)} is refused: {exc}.",
                               "give the server's base URL, e.g. http://127.0.0.1:11434 (Ollama) or "
                               "https://api.openai.com/v1; /api/chat or /chat/completions is added.") from None
        self.shown_url = self.redact(display_url(self.url))
        self.identity = {"api": endpoint.api, "url": self.url, "model": endpoint.model, "json": endpoint.json_mode}

    def shown(self, text: Any, limit: int = 300) -> str:
        """Redacted, then cut (so a cut never leaves half a key), then redacted again."""
        return self.redact(excerpt(self.redact(str(text)), limit))

    def fail(self, kind: str, problem: str, fix: str) -> PlanFailure:
        return PlanFailure(self.node, kind, self.redact(problem), fix)

    def _follow(self, target: str) -> str:
        try:
            return check_redirect(target, self.endpoint.api)
        except UrlRefused as exc:
            raise transport.TransportError("redirect", f"it redirects to {self.shown(display_url(target), 120)}, "
                                                       f"which is refused: {exc}") from None

    def post(self, stage: str, payload: dict, deadline: float) -> Any:
        """One request (with its redirects) within the stage's deadline; the decoded JSON body."""
        where = STAGE_NAMES.get(stage, stage)
        if self.key_problem is not None:
            raise self.fail("no_key", f"{where}: {self.key_problem.problem}", self.key_problem.fix)
        headers = {"Content-Type": "application/json", **(self.key.header() if self.key else {})}
        try:
            reply = transport.post(self.url, json.dumps(payload).encode(), headers, deadline=deadline,
                                   max_bytes=self.endpoint.max_reply_bytes, interrupted=self.interrupted,
                                   follow=self._follow)
        except transport.TransportError as exc:
            url, t, cap = self.shown_url, self.endpoint.timeout, self.endpoint.max_reply_bytes
            problem, fix = {
                "timeout": (f"no reply from {url} within {t:g} s (the total for the stage: connecting, every read, "
                            "redirects and the retry)",
                            f"raise timeout, use a smaller/faster model, {_FALLBACK_FIX}"),
                "too_large": (f"the reply from {url} is too large: {exc}",
                              f"point url at a chat endpoint (a stage's reply is a few hundred bytes; the cap is "
                              f"{cap} bytes after decompression), {_FALLBACK_FIX}"),
                "unreachable": (f"cannot reach {url} ({exc})",
                                f"check the url and that the server is running, {_FALLBACK_FIX}"),
                "redirect": (f"{url}: {exc}", f"put the final chat URL in url, {_FALLBACK_FIX}"),
                "encoding": (f"{url}: {exc}", f"point url at an OpenAI-compatible or Ollama chat endpoint, "
                                              f"{_FALLBACK_FIX}"),
            }[exc.kind]
            raise self.fail(exc.kind, f"{where}: {problem}", fix) from None
        text = reply.data.decode("utf-8", "replace")
        if reply.status >= 400:
            raise self.fail("http_error", f"{where}: HTTP {reply.status} from {self.shown_url}: "
                                          f"{self.shown(text) or '(empty body)'}",
                            f"check model name, url and api_key_env, {_FALLBACK_FIX}")
        try:
            return loads(reply.data)
        except BadReply as exc:
            if "nested deeper" in str(exc):
                raise self.fail("too_deep", f"{where}: the server's reply is JSON nested deeper than "
                                            f"{MAX_JSON_DEPTH} levels", f"point url at a chat endpoint, "
                                                                        f"{_FALLBACK_FIX}") from None
            raise self.fail("not_json", f"{where}: the server's reply is not JSON: {self.shown(text)!r}",
                            "point url at an OpenAI-compatible or Ollama chat endpoint.") from None


def _dumps(body: Any) -> str:
    try:
        return json.dumps(body)
    except (TypeError, ValueError, RecursionError):
        return repr(type(body))


def ask(call: _Call, stage: str, messages: list[dict], images_b64: list[str], validate: Callable[[dict], Any],
        extra: dict | None = None) -> Exchange:
    """One stage: request, parse, validate; one retry on a bad reply, all within the stage's total time;
    validated results cached by input hash."""
    key = cache_key(call.identity, stage, messages, images_b64, extra or {})
    hit = CACHE.get(key)
    if hit is not None:
        return Exchange(stage, hit[0], "cache", list(hit[1]))
    where = STAGE_NAMES.get(stage, stage)
    deadline = time.monotonic() + call.endpoint.timeout
    convo = list(messages)
    problem = ""
    for attempt in range(2):
        body = call.post(stage, build_payload(call.endpoint, convo, images_b64), deadline)
        text = ""
        try:
            text = call.redact(reply_text(call.endpoint.api, body))  # so nothing derived from it (values,
            value, notes = validate(parse_object(text))  # messages cut mid-key, the retry) can carry the key
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            reason = call.shown(exc if isinstance(exc, BadReply) else f"unusable reply ({type(exc).__name__})", 200)
            quoted = call.shown(text) if text else call.shown(_dumps(body))
            problem = f"{reason}; the reply was {quoted!r}"
            log.warning("Conduit MLLM %s: bad reply (attempt %d): %s", where, attempt + 1, problem)
            convo = retry_messages(messages, call.shown(text), reason)
            continue
        value, notes = call.redact.value(value), [call.redact(n) for n in notes]
        CACHE.put(key, value, notes)
        return Exchange(stage, value, "model" if attempt == 0 else "model (retried)", list(notes))
    raise call.fail("bad_reply", f"{where}: the model did not return the JSON asked for after one retry: {problem}",
                    "try another model, set box_order/box_scale to its convention, or give manual values.")


def _manual(stage: str, req: PlanRequest, why: str, node: str, warning: str = "") -> Exchange:
    value = {"prompt": req.manual_prompt.strip() or req.user_prompt, "condition_box": req.manual_condition,
             "related_box": req.manual_related}[stage]
    if value is None:
        raise ConduitError(node, f"{STAGE_NAMES[stage]} has no manual value ({why}).",
                           f"connect manual_{stage.replace('_box', '')}_box or let the MLLM run this stage.")
    return Exchange(stage, value, "manual", [why], warning)


def plan(endpoint: Endpoint | None, req: PlanRequest, node: str,
         interrupted: Callable[[], bool] | None = None) -> dict[str, Exchange]:
    """Run the three stages; `interrupted` (ComfyUI's processing_interrupted, from the node) is polled during
    every request and raises transport.Interrupted, which no fallback catches."""
    call = _Call(endpoint, node, interrupted) if endpoint is not None else None
    out: dict[str, Exchange] = {}

    def stage(name: str, run: Callable[[], Exchange]) -> None:
        if call is None or name not in req.run:
            out[name] = _manual(name, req, "manual mode" if call is None else "stage skipped", node)
            return
        try:
            out[name] = run()
        except ConduitError as exc:
            has_manual = {"prompt": req.manual_prompt.strip() or None, "condition_box": req.manual_condition,
                          "related_box": req.manual_related}[name] is not None
            if not (req.fallback and has_manual):
                raise
            kind = getattr(exc, "kind", "error")
            problem = call.redact(exc.problem)
            log.warning("%s: %s failed (%s), using the manual value: %s", node, STAGE_NAMES[name], kind, problem)
            out[name] = _manual(name, req, f"fallback after {kind}: {problem}", node,
                                f"{STAGE_NAMES[name]} failed ({kind}); the manual value is used")

    images = [req.image_b64]
    stage("prompt", lambda: ask(call, "prompt", prompt_messages(req.user_prompt), images, validate_prompt))
    prompt = out["prompt"].value

    def condition() -> Exchange:
        msgs = box_messages("condition_box", prompt, req.canvas_w, req.canvas_h, req.aspect, None, req.min_side,
                            req.max_side)

        def check(obj: dict) -> tuple[dict, list[str]]:
            box, notes = normalize_box(obj, req.canvas_w, req.canvas_h, req.order, req.scale)
            fitted = fit_box(box, req.canvas_w, req.canvas_h, req.aspect if req.keep_aspect else None,
                             req.min_side, req.max_side)
            return fitted, notes + ([] if fitted == box else ["reshaped to the condition's aspect and size limits"])
        return ask(call, "condition_box", msgs, images, check,
                   {"order": req.order, "scale": req.scale, "aspect": req.aspect if req.keep_aspect else None})
    stage("condition_box", condition)
    cond_box = out["condition_box"].value

    def related() -> Exchange:
        msgs = box_messages("related_box", prompt, req.canvas_w, req.canvas_h, req.aspect, cond_box, req.min_side,
                            req.max_side)
        return ask(call, "related_box", msgs, images,
                   lambda obj: normalize_box(obj, req.canvas_w, req.canvas_h, req.order, req.scale),
                   {"order": req.order, "scale": req.scale})
    stage("related_box", related)
    return out
