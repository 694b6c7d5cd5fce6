"""Where a stage is sent: the endpoint's settings, its chat URL (normalised and checked) and the request body.

The URL comes from a possibly shared workflow, so it is parsed rather than string-matched: only http/https,
no user:password@ and no #fragment (a fragment is never sent, so `.../interrupt#/api/chat` used to pass a
suffix check and POST to /interrupt), and the path is percent-decoded and resolved (`..`, `.`, `//`) before
the dialect's path (/api/chat or /chat/completions) is appended or checked. What is sent is exactly the path
that was checked, so a URL aimed at the ComfyUI server itself can reach nothing but a path ending in the chat
suffix, which ComfyUI does not serve. Redirect targets go through the same check.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

APIS = ("ollama", "openai-compatible")
SUFFIX = {"ollama": "/api/chat", "openai-compatible": "/chat/completions"}
DEFAULT_TIMEOUT = 60.0  # seconds for one stage, everything included
MAX_REPLY_BYTES = 1 << 20  # 1 MiB after decompression; a stage's reply is a few hundred bytes
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_PATH_SAFE = "/-._~!$&'()*+,;=:@"


class UrlRefused(ValueError):
    """The url cannot be used; the message shows no credentials and no query string."""


@dataclass(frozen=True)
class Endpoint:
    api: str  # "ollama" | "openai-compatible"
    url: str
    model: str
    timeout: float = DEFAULT_TIMEOUT  # total seconds per stage: connect, every read, redirects and the retry
    api_key_env: str = ""  # NAME of the environment variable holding the key
    json_mode: bool = True
    max_reply_bytes: int = MAX_REPLY_BYTES

    def chat_url(self) -> str:
        """The normalised URL that is POSTed to; UrlRefused if the url is not acceptable."""
        return normalize_url(self.url, self.api)

    def identity(self) -> dict:
        """Everything that changes the answer, for the cache key (no key material)."""
        return {"api": self.api, "url": self.chat_url(), "model": self.model, "json": self.json_mode}


def display_url(url: str) -> str:
    """A URL as shown in messages: no user:password@, no query (it may carry a key), no fragment."""
    try:
        p = urlsplit(url.strip())
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "(unparseable url)"
    return urlunsplit((p.scheme, host + port, p.path, "…" if p.query else "", ""))


def _clean_path(path: str) -> str:
    """Percent-decode once and resolve dot segments and repeated slashes, refusing what would decode again."""
    decoded = unquote(path, errors="strict")
    if re.search(r"%[0-9A-Fa-f]{2}", decoded):
        raise UrlRefused("its path is percent-encoded twice")
    if _BAD_CHARS.search(decoded) or "?" in decoded or "#" in decoded:
        raise UrlRefused("its path holds encoded control characters, spaces, backslashes, '?' or '#'")
    normal = posixpath.normpath("/" + decoded)
    return re.sub(r"/+", "/", normal)


def normalize_url(url: str, api: str) -> str:
    """http(s)://host[:port]/normalised-path ending in the dialect's chat path, plus the query if any."""
    if api not in SUFFIX:
        raise UrlRefused(f"api {api!r} has no chat path (expected one of {', '.join(APIS)})")
    text = url.strip()
    if _BAD_CHARS.search(text):
        raise UrlRefused("it contains spaces, control characters or backslashes")
    try:
        p = urlsplit(text)
        port = p.port
    except ValueError:
        raise UrlRefused("it is not a valid URL (check the host and port)") from None
    if p.scheme.lower() not in ("http", "https"):
        raise UrlRefused("only http:// and https:// URLs are allowed")
    if "@" in p.netloc:
        raise UrlRefused("it contains user:password@ credentials (they are not shown); use api_key_env for the key")
    if "#" in text:
        raise UrlRefused("it contains a #fragment, which is never sent to the server")
    host = p.hostname or ""
    if not host or not host.isascii():
        raise UrlRefused("it has no host, or a host that is not ASCII (write it in its xn-- form)")
    try:
        path = _clean_path(p.path or "/")
    except UnicodeDecodeError:
        raise UrlRefused("its path is not valid percent-encoded UTF-8") from None
    suffix = SUFFIX[api]
    if not path.endswith(suffix):
        path = path.rstrip("/") + suffix
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    return urlunsplit((p.scheme.lower(), netloc, quote(path, safe=_PATH_SAFE), p.query, ""))


def check_redirect(target: str, api: str) -> str:
    """A redirect target, normalised, if it is still a chat URL of this dialect; UrlRefused otherwise (a
    redirect is never extended with the chat path, so a 307 to /interrupt is refused, not rewritten)."""
    normal = normalize_url(target, api)
    try:
        path = _clean_path(urlsplit(target.strip()).path or "/")
    except UnicodeDecodeError:
        raise UrlRefused("its path is not valid percent-encoded UTF-8") from None
    if not path.endswith(SUFFIX[api]):
        raise UrlRefused(f"its path does not end in {SUFFIX[api]}")
    return normal


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
