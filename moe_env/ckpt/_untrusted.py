"""The bounded readers of moe_env.untrusted, with a stand-in until that module is on this branch.

Everything in moe_env.ckpt imports UntrustedInput, json_loads, as_int, printable and inside from here,
so switching to the shared module is this one file.
"""

from __future__ import annotations

try:  # the shared module (lands on main)
    from moe_env.untrusted import UntrustedInput, as_int, inside, json_loads, printable  # noqa: F401
except ImportError:  # pragma: no cover - stand-in with the documented API
    import json as _json
    import os as _os
    import re as _re
    import stat as _stat
    from pathlib import Path as _Path
    from typing import Any, Optional, Union

    class UntrustedInput(ValueError):  # type: ignore[no-redef]
        """A one-line reason why input from others was refused."""

    def _reject_constant(name: str) -> Any:
        raise UntrustedInput(f"non-finite number {name} in JSON")

    def _parse_int(text: str) -> int:
        if len(text.lstrip("-")) > 40:
            raise UntrustedInput("integer of more than 40 digits in JSON")
        return int(text)

    def _depth_ok(data: str, max_depth: int) -> bool:
        depth = 0
        in_str = esc = False
        for ch in data:
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
                if depth > max_depth:
                    return False
            elif ch in "]}":
                depth -= 1
        return True

    def json_loads(data: Union[str, bytes], *, what: str = "JSON", max_bytes: int = 64 << 20,  # type: ignore[misc]
                   max_depth: int = 64) -> Any:
        if len(data) > max_bytes:
            raise UntrustedInput(f"{what}: larger than {max_bytes} bytes")
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UntrustedInput(f"{what}: not UTF-8") from None
        if not _depth_ok(data, max_depth):
            raise UntrustedInput(f"{what}: nested deeper than {max_depth}")
        try:
            return _json.loads(data, parse_constant=_reject_constant, parse_int=_parse_int)
        except UntrustedInput as exc:
            raise UntrustedInput(f"{what}: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise UntrustedInput(f"{what}: not valid JSON ({str(exc)[:80]})") from None

    def as_int(value: Any, *, lo: int, hi: int, what: str) -> int:  # type: ignore[misc]
        if isinstance(value, bool):
            raise UntrustedInput(f"{what}: expected an integer, got a boolean")
        if isinstance(value, str):
            text = value.strip()
            if not text or len(text) > 40 or not _re.fullmatch(r"-?[0-9]+", text):
                raise UntrustedInput(f"{what}: expected an integer")
            value = int(text)
        if not isinstance(value, int):
            raise UntrustedInput(f"{what}: expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise UntrustedInput(f"{what}: {value} is outside {lo}..{hi}")
        return value

    _CTRL = _re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

    def printable(text: Any, *, newlines: bool = False) -> str:  # type: ignore[misc]
        s = str(text)

        def esc(m: "_re.Match[str]") -> str:
            return "\\x%02x" % ord(m.group()) if ord(m.group()) < 0x100 else "\\u%04x" % ord(m.group())

        s = _CTRL.sub(esc, s)
        if not newlines:
            s = s.replace("\n", "\\n").replace("\t", "\\t")
        return s

    def inside(root: Union[str, _Path], rel: Union[str, _Path]) -> Optional[_Path]:  # type: ignore[misc]
        base = _os.path.realpath(str(root))
        target = _os.path.realpath(_os.path.join(base, str(rel)))
        if target != base and not target.startswith(base.rstrip(_os.sep) + _os.sep):
            return None
        try:
            if not _stat.S_ISREG(_os.stat(target).st_mode):
                return None
        except (OSError, ValueError):
            return None
        return _Path(target)
