"""Bounded HTTP for the planner: one POST whose total time, size and interruptibility are all capped.

requests' `timeout` bounds each socket read, not the request: a server dripping one byte every few seconds
holds a plain `requests.post` forever, and a gzip bomb or an endless chunked body fills memory. So here:
* the request runs in a worker thread while the caller polls a total deadline and an interrupt check (ComfyUI's
  /interrupt, passed in as a callable so this module never imports comfy); when either fires, the call's
  sockets are shut down and the caller returns at once, also while the server is still thinking;
* the body is read with stream=True in small chunks (one socket read each), the deadline and the interrupt
  check run between chunks, and it is decompressed here with a bounded output per step, so the decoded size
  is counted as it streams and a reply stops at the cap, compressed or not; a Content-Length over the cap is
  refused before reading;
* redirects are followed by hand, each target checked by the caller's `follow` before anything is sent, the
  Authorization header dropped when the origin changes, loops and long chains refused;
* ~/.netrc credentials are never attached (the host is a workflow's choice), proxies and CA settings from the
  environment still apply.
"""
from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

CHUNK = 16 * 1024  # bytes per read
POLL_S = 0.05  # how often the caller checks the deadline and the interrupt
MAX_REDIRECTS = 5
ERROR_BODY_BYTES = 4096  # of an HTTP error body, for the message
REDIRECT_CODES = (301, 302, 303, 307, 308)
ACCEPT_ENCODING = "gzip, deflate"  # what _Decoder handles; anything else is refused


@dataclass
class ReadStats:
    """What one call read, for callers and tests: bytes off the wire, bytes after decoding, reads, requests."""
    raw_bytes: int = 0
    decoded_bytes: int = 0
    chunks: int = 0
    requests: int = 0


@dataclass
class Reply:
    status: int
    url: str  # after redirects
    data: bytes  # decoded body (for status >= 400: its first ERROR_BODY_BYTES)
    truncated: bool = False


class TransportError(Exception):
    """The exchange failed; kind is one of timeout, too_large, unreachable, redirect, encoding."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class Interrupted(Exception):
    """The interrupt check fired mid-request (ComfyUI's /interrupt): the run stops, no fallback applies."""


class _Cancelled(Exception):
    """The caller gave up on this worker; nothing reads its result."""


class _Abort:
    """The sockets of one call, so that the caller can cut them on the deadline or an interrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.event.is_set():
                self._socks.append(sock)
                return
        _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.event.set()
            socks, self._socks = self._socks, []
        for sock in socks:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_worker = threading.local()  # .abort: the _Abort of the call this worker thread serves


def _track(sock: socket.socket) -> socket.socket:
    abort = getattr(_worker, "abort", None)
    if abort is not None:
        abort.add(sock)
    return sock


class _TrackedHTTP(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _track(super()._new_conn())


class _TrackedHTTPS(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _track(super()._new_conn())


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTP


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPS


class _Adapter(HTTPAdapter):
    """Direct connections register their sockets with the call; through a proxy they are not tracked, and the
    worker then ends at its own socket timeout (never later than the deadline) instead of at once."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _NoNetrc(requests.auth.AuthBase):
    """An explicit auth object, so requests never looks up ~/.netrc for a workflow-chosen host; headers set by
    the caller (Authorization) pass unchanged."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class _Decoder:
    """Content-Encoding identity, gzip or deflate, decoded with at most `budget` output bytes per call, so a
    small compressed input can never expand past the cap in memory."""

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        if enc not in ("", "identity", "gzip", "x-gzip", "deflate"):
            shown = repr(enc) if re.fullmatch(r"[a-z0-9, -]{1,24}", enc) else "(unreadable)"  # never cut: no half keys
            raise TransportError("encoding", f"the reply uses Content-Encoding {shown}, which the planner does not "
                                             "accept (only gzip and deflate)")
        self._gzip = enc in ("gzip", "x-gzip")
        self._deflate = enc == "deflate"
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS) if self._gzip else None
        self._head = b""

    def feed(self, data: bytes, budget: int) -> bytes:
        if not (self._gzip or self._deflate):
            return data[:budget]
        if self._z is None:  # deflate: zlib-wrapped as the RFC says, or raw as some servers send it
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            zlib_wrapped = (b0 & 0x0F) == 8 and (b0 * 256 + b1) % 31 == 0
            self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        out = b""
        try:
            while data and len(out) < budget:
                if self._z.eof:
                    if not self._gzip:
                        break  # bytes after a deflate stream are ignored
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # next gzip member
                out += self._z.decompress(data, budget - len(out))
                data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
        except zlib.error as exc:
            raise TransportError("encoding", f"the compressed reply is corrupt ({exc})") from None
        return out

    def finish(self, budget: int) -> bytes:
        if self._z is None or self._z.eof:
            return b""
        try:
            return self._z.flush(max(budget, 1))
        except zlib.error:
            return b""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransportError("timeout", "no complete reply before the deadline")
    return left


def _check(deadline: float, abort: _Abort, interrupted: Callable[[], bool] | None) -> None:
    if abort.event.is_set():
        raise _Cancelled
    if interrupted is not None and interrupted():
        raise Interrupted("interrupted")
    _remaining(deadline)


def _read_body(resp: requests.Response, limit: int, strict: bool, deadline: float, abort: _Abort,
               interrupted: Callable[[], bool] | None, stats: ReadStats) -> tuple[bytes, bool]:
    """(decoded body, truncated). strict: over `limit` is an error (a reply), else the rest is dropped (an
    HTTP error body, read only for its message)."""
    length = resp.headers.get("Content-Length", "").strip()
    if strict and length.isdigit() and int(length) > limit:
        raise TransportError("too_large", f"the reply announces {int(length)} bytes, over the {limit}-byte cap "
                                          "(nothing was read)")
    decoder = _Decoder(resp.headers.get("Content-Encoding", ""))
    raw = resp.raw
    read1 = getattr(raw, "read1", None)  # one socket read at most, so a drip cannot block past a check
    out = bytearray()
    while True:
        _check(deadline, abort, interrupted)
        chunk = read1(CHUNK, decode_content=False) if read1 else raw.read(1024, decode_content=False)
        if not chunk:
            out += decoder.finish(limit + 1 - len(out))
            break
        stats.raw_bytes += len(chunk)
        stats.chunks += 1
        piece = decoder.feed(chunk, limit + 1 - len(out))
        out += piece
        stats.decoded_bytes += len(piece)
        if len(out) > limit or stats.raw_bytes > limit:
            if strict:
                raise TransportError("too_large", f"the reply is over the {limit}-byte cap (stopped reading "
                                                  f"after {stats.raw_bytes} bytes)")
            return bytes(out[:limit]), True
    if len(out) > limit:
        if strict:
            raise TransportError("too_large", f"the reply is over the {limit}-byte cap")
        return bytes(out[:limit]), True
    return bytes(out), False


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or ""), p.port or {"http": 80, "https": 443}.get(p.scheme)


def _keeps_auth(old: str, new: str) -> bool:
    """Same origin, or the same host moving from http to https on the default ports (as requests allows)."""
    a, b = _origin(old), _origin(new)
    return a == b or (a[1] == b[1] and a[0] == "http" and a[2] == 80 and b[0] == "https" and b[2] == 443)


def _root_cause(exc: BaseException) -> str:
    """A short reason for a connection failure, without the URL (its query may carry a key)."""
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        cur = cur.__cause__ or cur.__context__ or next((a for a in cur.args if isinstance(a, BaseException)), None)
    return type(exc).__name__


def _exchange(url: str, body: bytes, headers: dict[str, str], deadline: float, max_bytes: int,
              interrupted: Callable[[], bool] | None, follow: Callable[[str], str] | None, stats: ReadStats,
              abort: _Abort) -> Reply:
    _worker.abort = abort
    session = requests.Session()
    adapter = _Adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    hdrs = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING, **headers}
    seen = {url}
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            _check(deadline, abort, interrupted)
            left = _remaining(deadline)
            try:
                resp = session.post(url, data=body, headers=hdrs, timeout=(left, left), stream=True,
                                    allow_redirects=False, auth=_NoNetrc())
            except requests.Timeout:
                raise TransportError("timeout", "no complete reply before the deadline") from None
            except requests.RequestException as exc:
                if abort.event.is_set():
                    raise _Cancelled from None
                raise TransportError("unreachable", f"{type(exc).__name__}: {_root_cause(exc)}") from None
            stats.requests += 1
            try:
                location = resp.headers.get("Location")
                if resp.status_code in REDIRECT_CODES and location:
                    target = urljoin(url, location.strip())
                    if follow is not None:
                        target = follow(target)
                    if target in seen:
                        raise TransportError("redirect", "the server redirects in a loop")
                    if not _keeps_auth(url, target):
                        hdrs.pop("Authorization", None)
                    seen.add(target)
                    url = target
                    continue
                ok = resp.status_code < 400
                data, truncated = _read_body(resp, max_bytes if ok else ERROR_BODY_BYTES, ok, deadline, abort,
                                             interrupted, stats)
                return Reply(resp.status_code, url, data, truncated)
            except requests.RequestException as exc:  # raised while reading the body
                if abort.event.is_set():
                    raise _Cancelled from None
                raise TransportError("unreachable", f"the connection broke while reading the reply "
                                                    f"({type(exc).__name__})") from None
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                if abort.event.is_set():
                    raise _Cancelled from None
                if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, socket.timeout)):
                    raise TransportError("timeout", "no complete reply before the deadline") from None
                raise TransportError("unreachable", f"the connection broke while reading the reply "
                                                    f"({type(exc).__name__})") from None
            finally:
                resp.close()
        raise TransportError("redirect", f"more than {MAX_REDIRECTS} redirects")
    finally:
        session.close()


def post(url: str, body: bytes, headers: dict[str, str], *, deadline: float, max_bytes: int,
         interrupted: Callable[[], bool] | None = None, follow: Callable[[str], str] | None = None,
         stats: ReadStats | None = None) -> Reply:
    """POST body to url and return the reply, all within `deadline` (time.monotonic() seconds).

    Raises TransportError (kind timeout / too_large / unreachable / redirect / encoding) or Interrupted.
    `follow(absolute_url) -> url` vets each redirect target (raise TransportError to refuse one).
    """
    stats = stats if stats is not None else ReadStats()
    abort = _Abort()
    done = threading.Event()
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["reply"] = _exchange(url, body, headers, deadline, max_bytes, interrupted, follow, stats, abort)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="conduit-mllm-http", daemon=True).start()
    try:
        while not done.wait(POLL_S):
            if interrupted is not None and interrupted():
                raise Interrupted("interrupted")
            if time.monotonic() >= deadline:
                raise TransportError("timeout", "no complete reply before the deadline")
    finally:
        if not done.is_set():
            abort.fire()
    error = result.get("error")
    if isinstance(error, _Cancelled):  # cannot happen unless fired; keep it a timeout
        raise TransportError("timeout", "no complete reply before the deadline")
    if error is not None:
        raise error
    return result["reply"]  # type: ignore[return-value]
