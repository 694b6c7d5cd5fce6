"""Read the files users hand to Conduit's nodes without trusting them (pure Python; no comfy, no torch at import).

Every failure is a ConduitError naming the node, the problem and the fix; nothing raw reaches the user.

- Only regular files are read. os.stat + stat.S_ISREG runs BEFORE the file is opened, so a directory, a FIFO
  or a device (/dev/zero) is refused without opening it; the open itself uses O_NONBLOCK (a FIFO swapped in
  after the check cannot block the worker) and fstat re-checks the opened file.
- Sizes are capped (below), and a read never takes more than the cap plus one byte (files in /proc report
  size 0 and are cut off by the read, not by the reported size).
- JSON is checked for nesting depth before it is parsed (no RecursionError) and numbers longer than
  MAX_NUMBER_CHARS characters are refused (no 4300-digit int-conversion ValueError, no multi-kB floats).
- Pickles (.pt, .pth, .ckpt, .bin, .pkl, ...) are never loaded: unpickling a file can run code.
- Safetensors files are checked before the library sees them: the 8-byte header length against the file
  size and MAX_SAFETENSORS_HEADER_BYTES, the header JSON with the depth limit, every tensor's byte range
  inside the data section; then the safetensors library loads them and any error it still raises is wrapped.
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
from typing import Any

from .errors import ConduitError

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_TABLE_BYTES = 16 * MiB              # a sensitivity table file (SDXL, 1000 timesteps, q/k/v is about 4 MiB)
MAX_JSON_DEPTH = 32                     # nesting of objects and arrays in any JSON file Conduit reads
MAX_NUMBER_CHARS = 100                  # characters in one JSON number (a float64 repr needs at most 24)
MAX_LORA_BYTES = 8 * GiB                # a LoRA .safetensors file
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pt2", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
_READ_CHUNK = 1 * MiB


def shown(path: Any) -> str:
    """How a path appears in messages: its file name only (messages may reach remote clients)."""
    text = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.replace("\x00", "\\0")
    return repr(os.path.basename(text.rstrip("/\\")) or text)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def check_path_text(path: Any, node: str, what: str, fix: str) -> str:
    """The path as a str; ConduitError for non-text values and NUL bytes."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError:
            raise ConduitError(node, f"the {what} path is not valid UTF-8.", fix) from None
    if not isinstance(path, str):
        raise ConduitError(node, f"the {what} must be given as a file name, got {type(path).__name__}.", fix)
    if "\x00" in path:
        raise ConduitError(node, f"the {what} name {shown(path)} contains a NUL byte.", fix)
    if not path.strip():
        raise ConduitError(node, f"no {what} was given (the name is empty).", fix)
    return path


def regular_file(path: Any, node: str, what: str, fix: str, max_bytes: int) -> tuple[str, os.stat_result]:
    """(path, stat) of an existing regular file of at most max_bytes; checked without opening it."""
    path = check_path_text(path, node, what, fix)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConduitError(node, f"the {what} {shown(path)} does not exist.", fix) from None
    except PermissionError:
        raise ConduitError(node, f"the {what} {shown(path)} cannot be accessed (permission denied).", fix) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConduitError(node, f"the {what} {shown(path)} cannot be accessed ({reason}).", fix) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConduitError(node, f"the {what} {shown(path)} is {_kind(st.st_mode)}, not a regular file; only "
                           "regular files are read.", fix)
    if st.st_size > max_bytes:
        raise ConduitError(node, f"the {what} {shown(path)} is {_size(st.st_size)}, more than the "
                           f"{_size(max_bytes)} Conduit reads.", fix)
    return path, st


def _size(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n} bytes"


def _open_regular(path: str, node: str, what: str, fix: str) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConduitError(node, f"the {what} {shown(path)} cannot be opened ({exc.strerror or exc}).", fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the check and the open
            raise ConduitError(node, f"the {what} {shown(path)} is {_kind(st.st_mode)}, not a regular file; "
                               "only regular files are read.", fix)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: Any, node: str, what: str, fix: str, max_bytes: int, count: int | None = None) -> bytes:
    """The file's bytes (at most count of them when given); ConduitError if it holds more than max_bytes."""
    path, _ = regular_file(path, node, what, fix, max_bytes)
    limit = max_bytes if count is None else min(count, max_bytes)
    fd = _open_regular(path, node, what, fix)
    chunks, total = [], 0
    try:
        while total <= limit:
            try:
                chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - total))
            except BlockingIOError:
                raise ConduitError(node, f"the {what} {shown(path)} did not deliver its data (it behaves like a "
                                   "pipe or device); only regular files are read.", fix) from None
            except OSError as exc:
                raise ConduitError(node, f"the {what} {shown(path)} cannot be read ({exc.strerror or exc}).",
                                   fix) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if count is None and len(data) > max_bytes:
        raise ConduitError(node, f"the {what} {shown(path)} holds more than the {_size(max_bytes)} Conduit reads.",
                           fix)
    return data[:limit]


# ---- JSON -------------------------------------------------------------------------------------------------

_STRINGS = re.compile(r'"[^"]*"')  # after escapes are removed a string has no inner quote: linear, no backtracking
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """True when arrays/objects nest deeper than max_depth (brackets inside strings skipped); linear in the text.

    Escapes are dropped first (an escaped backslash, then an escaped quote), so every remaining quote opens or
    closes a string; the strings are removed and only the brackets are walked."""
    plain = text.replace("\\\\", "").replace('\\"', "")
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", plain))
    depth = 0
    for ch in brackets:
        if ch == "[" or ch == "{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


class _NumberTooLong(ValueError):
    pass


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise _NumberTooLong(len(text))
        return kind(text)
    return parse


def loads_json(data: bytes | str, node: str, what: str, fix: str, name: Any = "", max_depth: int = MAX_JSON_DEPTH):
    """Decode JSON with a depth limit and a length limit on numbers; ConduitError on any defect.

    NaN and Infinity literals are decoded (as Python's json does) so that validators can name them."""
    label = f" {shown(name)}" if name else ""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConduitError(node, f"the {what}{label} is not UTF-8 text (byte {exc.start} is invalid); it is "
                               "not a JSON file.", fix) from None
    else:
        text = data
    if not text.strip():
        raise ConduitError(node, f"the {what}{label} is empty.", fix)
    if json_depth_exceeds(text, max_depth):
        raise ConduitError(node, f"the {what}{label} nests arrays/objects deeper than {max_depth} levels.", fix)
    try:
        return json.loads(text, parse_int=_number(int), parse_float=_number(float))
    except _NumberTooLong as exc:
        raise ConduitError(node, f"the {what}{label} holds a number of {exc.args[0]} characters (at most "
                           f"{MAX_NUMBER_CHARS} are read).", fix) from None
    except json.JSONDecodeError as exc:
        raise ConduitError(node, f"the {what}{label} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}).", fix) from None
    except (RecursionError, ValueError, MemoryError) as exc:  # belt and braces: never leak a raw error
        raise ConduitError(node, f"the {what}{label} cannot be decoded ({type(exc).__name__}).", fix) from None


def read_json(path: Any, node: str, what: str, fix: str, max_bytes: int = MAX_TABLE_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A regular JSON file of at most max_bytes, decoded with loads_json."""
    return loads_json(read_bytes(path, node, what, fix, max_bytes), node, what, fix, name=path, max_depth=max_depth)


# ---- model files ------------------------------------------------------------------------------------------

def suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    for s in sorted(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return os.path.splitext(name)[1]


def refuse_unless_safetensors(path: Any, node: str, what: str) -> str:
    """The path, when it names a .safetensors/.sft file; a ConduitError for pickles and other formats."""
    fix = (f"use the {what} as a .safetensors file: convert it once with a trusted tool (for example "
           "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'out.safetensors')` on a file you "
           "trust), or download the .safetensors release.")
    path = check_path_text(path, node, what, fix)
    ext = suffix(path)
    if ext in SAFETENSORS_SUFFIXES:
        return path
    if ext in PICKLE_SUFFIXES:
        raise ConduitError(node, f"the {what} {shown(path)} is a pickle-based {ext} file; Conduit never unpickles "
                           "files, because loading a pickle can run arbitrary code.", fix)
    raise ConduitError(node, f"the {what} {shown(path)} is not a .safetensors file (extension {ext or 'none'!r}).",
                       fix)


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_header(path: Any, node: str, what: str, fix: str, max_bytes: int = MAX_LORA_BYTES,
                       max_header: int = MAX_SAFETENSORS_HEADER_BYTES) -> dict:
    """The decoded header of a safetensors file after checking it describes the file; ConduitError otherwise."""
    path, st = regular_file(path, node, what, fix, max_bytes)
    size = st.st_size
    name = shown(path)
    if size == 0:
        raise ConduitError(node, f"the {what} {name} is empty (0 bytes).", fix)
    head = read_bytes(path, node, what, fix, max_bytes, count=8)
    if len(head) < 8:
        raise ConduitError(node, f"the {what} {name} is only {len(head)} bytes long; a safetensors file starts with "
                           "an 8-byte header length.", fix)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ConduitError(node, f"the {what} {name} is a PyTorch pickle/zip file with a .safetensors name; "
                           "Conduit never unpickles files.", fix)
    (n,) = struct.unpack("<Q", head)
    if n == 0 or n > max_header:
        raise ConduitError(node, f"the {what} {name} declares a header of {n} bytes (at most {max_header} are "
                           "allowed): the file is corrupt or not a safetensors file.", fix)
    if 8 + n > size:
        raise ConduitError(node, f"the {what} {name} declares a {n}-byte header but has only {size - 8} bytes after "
                           "the length: the file is truncated or not a safetensors file.", fix)
    raw = read_bytes(path, node, what, fix, max_bytes, count=8 + n)[8:]
    if len(raw) != n:
        raise ConduitError(node, f"the {what} {name} ended while its header was read (truncated).", fix)
    if not raw.lstrip().startswith(b"{"):
        raise ConduitError(node, f"the {what} {name} has no JSON header: the file is corrupt or not a safetensors "
                           "file.", fix)
    header = loads_json(raw.rstrip(b" \x00"), node, f"{what} header", fix, name=path, max_depth=8)
    if not isinstance(header, dict):
        raise ConduitError(node, f"the {what} {name} has a header that is not a JSON object (corrupt file).", fix)
    data_len = size - 8 - n
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or any(not isinstance(v, str) for v in entry.values()):
                raise ConduitError(node, f"the {what} {name} has malformed metadata in its header (corrupt file).",
                                   fix)
            continue
        ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"]))
        if not ok:
            raise ConduitError(node, f"the {what} {name} describes tensor {key[:80]!r} incompletely (dtype, shape, "
                               "data_offsets): the file is corrupt.", fix)
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end:
            raise ConduitError(node, f"the {what} {name} gives tensor {key[:80]!r} an invalid byte range "
                               f"[{begin}, {end}] (corrupt file).", fix)
        if end > data_len:
            raise ConduitError(node, f"the {what} {name} is truncated: tensor {key[:80]!r} needs bytes up to {end} "
                               f"of the data section, which holds only {data_len}.", fix)
        width = _DTYPE_BYTES.get(entry["dtype"])
        if width is not None:
            count = 1
            for d in entry["shape"]:
                count *= d
            if count * width != end - begin:
                raise ConduitError(node, f"the {what} {name} gives tensor {key[:80]!r} {end - begin} bytes for shape "
                                   f"{entry['shape'][:8]} of {entry['dtype']} (corrupt file).", fix)
    return header


def load_safetensors(path: Any, node: str, what: str, fix: str, max_bytes: int = MAX_LORA_BYTES) -> dict:
    """{name: tensor} of a checked .safetensors file, loaded on the CPU by the safetensors library."""
    path = refuse_unless_safetensors(path, node, what)
    safetensors_header(path, node, what, fix, max_bytes)
    try:
        import safetensors.torch

        return safetensors.torch.load_file(path, device="cpu")
    except ConduitError:
        raise
    except Exception as exc:  # noqa: BLE001  (SafetensorError and friends: wrapped, never shown raw)
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConduitError(node, f"the {what} {shown(path)} could not be loaded as safetensors ({detail}); the "
                           "file is corrupt or incomplete.", fix) from None
