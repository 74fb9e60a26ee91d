"""One bounded reader per format for bytes that others wrote: JSON, TOML, files, numbers, printed text.

moe-env reads checkpoints from a hub, reports from every node, venvs and matrix overrides. Limits on
depth, size and number live here, not at each call site, so a 5,000-digit integer, a JSON document
nested 100,000 deep, a FIFO where a file should be or an escape sequence in a hostname is refused or
neutralised the same way by every command. Failures are `UntrustedInput`: a one-line reason that the
caller turns into a usage error (exit 2) or a Finding.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from pathlib import Path

MiB = 1024 * 1024
JSON_MAX_BYTES = 64 * MiB
JSON_MAX_DEPTH = 64
TOML_MAX_DEPTH = 32
MAX_INT_DIGITS = 40


class UntrustedInput(ValueError):
    """Input that is malformed or past a limit; str() is one line that names what was read."""


# ---------------------------------------------------------------- JSON

_KEEP_STRUCTURE = bytes.maketrans(b"", b"")
_DROP = bytes(c for c in range(256) if c not in b'[]{}"\\')
_DEPTH_TABLE = [0] * 256
_DEPTH_TABLE[ord("[")] = _DEPTH_TABLE[ord("{")] = 1
_DEPTH_TABLE[ord("]")] = _DEPTH_TABLE[ord("}")] = -1
_HIGH = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")
_LOW = re.compile(rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _nesting(raw: bytes) -> int:
    """How deep `[`/`{` nest outside strings: a C-speed scan (translate) of only the structural bytes."""
    skeleton = raw.translate(_KEEP_STRUCTURE, _DROP)
    if skeleton.count(b"[") + skeleton.count(b"{") <= 1:
        return skeleton.count(b"[") + skeleton.count(b"{")
    skeleton = skeleton.replace(b"\\\\", b"").replace(b'\\"', b"").replace(b"\\", b"")
    skeleton = b"".join(skeleton.split(b'"')[::2])  # quotes now alternate open/close: keep what is outside
    if not skeleton:
        return 0
    return max(0, max(accumulate(map(_DEPTH_TABLE.__getitem__, skeleton))))


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise UntrustedInput(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedInput(f"a number out of range ({text[:20]})")
    return value


def _constant(text: str) -> Any:
    raise UntrustedInput(f"{text} is not a JSON number")


def json_loads(data: Union[str, bytes], *, what: str = "JSON", max_bytes: int = JSON_MAX_BYTES,
               max_depth: int = JSON_MAX_DEPTH) -> Any:
    """Parse JSON with limits: size, nesting depth, integer digits; NaN, Infinity and lone surrogates refused."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise UntrustedInput(f"{what}: {len(raw)} bytes, more than the {max_bytes} this reader accepts")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UntrustedInput(f"{what}: not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    depth = _nesting(raw)
    if depth > max_depth:
        raise UntrustedInput(f"{what}: nested {depth} deep, more than the {max_depth} this reader accepts")
    suspect = b"\\u" in raw and (_HIGH.search(raw) or _LOW.search(raw))
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
        if suspect and _has_surrogate(value):  # the regex also fires on an escaped backslash before "ud800"
            raise UntrustedInput("a lone surrogate escape (\\uD800-\\uDFFF) in a string")
        return value
    except UntrustedInput as exc:
        raise UntrustedInput(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated")
        kind = "truncated JSON" if truncated else "not valid JSON"
        raise UntrustedInput(f"{what}: {kind} (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise UntrustedInput(f"{what}: cannot be read ({type(exc).__name__})") from None


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_json(path: Union[str, Path], *, what: Optional[str] = None, max_bytes: int = JSON_MAX_BYTES,
              max_depth: int = JSON_MAX_DEPTH) -> Any:
    label = what or str(path)
    return json_loads(read_bytes(path, max_bytes=max_bytes, what=label), what=label, max_bytes=max_bytes,
                      max_depth=max_depth)


# ---------------------------------------------------------------- TOML


def toml_loads(text: str, *, what: str = "TOML", max_depth: int = TOML_MAX_DEPTH) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.9/3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UntrustedInput(f"{what}: not valid TOML ({str(exc).splitlines()[0]})") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise UntrustedInput(f"{what}: cannot be read ({type(exc).__name__})") from None
    depth = _tree_depth(data, max_depth)
    if depth > max_depth:
        raise UntrustedInput(f"{what}: nested more than {max_depth} deep")
    return data


def _tree_depth(value: Any, limit: int) -> int:
    """Depth of nested dicts/lists (iterative, stops past `limit`)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


# ---------------------------------------------------------------- files


def read_bytes(path: Union[str, Path], *, max_bytes: int, what: Optional[str] = None) -> bytes:
    """A regular file's bytes, at most `max_bytes`; a FIFO, device, socket or folder is refused without
    blocking (opened O_NONBLOCK, judged by fstat before any read)."""
    label = what or str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(str(path), flags)
    except FileNotFoundError:
        raise UntrustedInput(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UntrustedInput(f"{label}: is a folder, not a file") from None
    except OSError as exc:
        raise UntrustedInput(f"{label}: cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UntrustedInput(f"{label}: is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedInput(f"{label}: not a regular file (a pipe, socket or device)")
        if st.st_size > max_bytes:
            raise UntrustedInput(f"{label}: {st.st_size} bytes, more than the {max_bytes} this reader accepts")
        chunks = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 4 * MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise UntrustedInput(f"{label}: grew past {max_bytes} bytes while being read")
        return data
    except OSError as exc:
        raise UntrustedInput(f"{label}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_text(path: Union[str, Path], *, max_bytes: int, what: Optional[str] = None) -> str:
    """read_bytes() decoded as UTF-8 (a BOM is dropped); undecodable bytes are an error."""
    label = what or str(path)
    data = read_bytes(path, max_bytes=max_bytes, what=label)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UntrustedInput(f"{label}: not UTF-8 text (byte {exc.start})") from None


def inside(root: Union[str, Path], rel: str) -> Optional[Path]:
    """`root/rel` resolved (symlinks followed) when it stays inside `root` and is a regular file, else None.

    For names read from a checkpoint's index or a manifest: `../../etc/passwd`, an absolute path, a
    symlink that leaves the folder or `/proc/self/mem` are never opened.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel):
        return None
    base = os.path.realpath(str(root))
    target = os.path.realpath(os.path.join(base, rel))
    if target != base and not target.startswith(base.rstrip(os.sep) + os.sep):
        return None
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            return None
    except (OSError, ValueError):
        return None
    from pathlib import Path  # lazily: doctor's path does not need pathlib (~3 ms)

    return Path(target)


# ---------------------------------------------------------------- numbers


def as_int(value: Any, *, lo: int, hi: int, what: str) -> int:
    """An untrusted number as an int in [lo, hi]: an int (not bool), an integral float, or ASCII digits.

    Unicode digits (`²`, Kharosthi) pass str.isdigit() but are not numbers here.
    """
    if isinstance(value, bool):
        raise UntrustedInput(f"{what}: {value!r} is not a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,%d}" % MAX_INT_DIGITS, value.strip(), re.ASCII):
        number = int(value.strip())
    else:
        # never repr() a container: a pickled DAG of shared lists would expand exponentially
        shown = printable(repr(value)[:40]) if isinstance(value, (str, bytes, float, int)) or value is None \
            else f"a {type(value).__name__}"
        raise UntrustedInput(f"{what}: {shown} is not a whole number")
    if number < lo or number > hi:
        raise UntrustedInput(f"{what}: {number if abs(number) < 10**12 else 'a huge number'} is outside {lo}..{hi}")
    return number


# ---------------------------------------------------------------- printing

_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}


def printable(text: Any, *, newlines: bool = False) -> str:
    """Text safe to put on a terminal: control characters (ESC, C0, C1, DEL), bidi overrides and lone
    surrogates are shown as escapes (`\\x1b`, `\\u202e`), so an input can neither move the cursor nor
    recolour, hide or reorder what moe-env prints. Tabs stay; newlines stay only with newlines=True."""
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable() and text.isascii():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\t" or (ch == "\n" and newlines):
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in _BIDI or 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029, 0xFEFF):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
