"""A per-user cache of the validated shipped matrix, so `doctor` does not re-parse ~300 KB of TOML per run.

Parsing and validating compat_matrix/ costs more than everything else doctor does; the result only
changes when a TOML file (its bytes), the schema code or moe-env's version changes, so those key the
cache. The cache is plain JSON rebuilt into the typed dataclasses of matrix/model.py: reading it can
never run code (a pickle there once could). It is used only when the folder and the file belong to
this user and nobody else can write them, the file is a regular file (a FIFO there must not hang
doctor), the cache location is absolute (a relative XDG_CACHE_HOME is ignored, as the XDG spec says:
it would put the cache inside whatever checkout the command runs in), and the file's own record of
its key matches. Any problem falls back to the real loader; the cache can never make a run fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import typing
import zlib
from pathlib import Path
from typing import Any, Dict, Optional

from moe_env import __version__
from moe_env.matrix import model
from moe_env.paths import matrix_root

FORMAT = "moe-env.matrix-cache/2"
MAX_CACHE_BYTES = 32 * 1024 * 1024


def cache_dir() -> Optional[Path]:
    """$MOE_ENV_CACHE_DIR, else $XDG_CACHE_HOME/moe-env, else ~/.cache/moe-env; None when no absolute one exists."""
    explicit = os.environ.get("MOE_ENV_CACHE_DIR")
    if explicit:
        return Path(explicit) if os.path.isabs(explicit) else None
    xdg = os.environ.get("XDG_CACHE_HOME") or ""
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moe-env" if os.path.isabs(base) else None


def _key(root: Path) -> str:
    """CRC-32 and Adler-32 of everything that shapes the result (zlib: no OpenSSL start-up on this path)."""
    parts = [f"{FORMAT}\0{__version__}\0{root.resolve()}".encode()]
    model_py = Path(model.__file__)
    for code in (model_py, model_py.with_name("loader.py")):
        st = code.stat()
        parts.append(f"\0{code.name}\0{st.st_mtime_ns}\0{st.st_size}".encode())
    for path in sorted(p for p in root.rglob("*.toml") if p.is_file()):
        # contents, not mtimes: two quick edits of the same size can share a coarse mtime
        parts.append(f"\0{path.relative_to(root).as_posix()}\0".encode())
        parts.append(path.read_bytes())
    blob = b"".join(parts)
    return f"{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}{len(blob):x}"


def _loader():
    """The real loader, imported only on a miss (it brings tomllib and the validation code)."""
    from moe_env.matrix import loader

    return loader


def _trusted(st: os.stat_result, want_dir: bool) -> bool:
    """Ours, and writable by nobody else (a shared XDG_CACHE_HOME must not let another user plant one)."""
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.getuid() and not (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _read_cache(folder: Path, target: Path, key: str) -> Optional[model.Matrix]:
    try:
        if not _trusted(os.lstat(folder), want_dir=True):
            return None
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not _trusted(st, want_dir=False) or st.st_size > MAX_CACHE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = json.loads(fh.read())
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
            return None
        return _build(model.Matrix, data["matrix"])
    except Exception:  # malformed, or written by another schema: rebuild
        return None
    finally:
        os.close(fd)


def _write_cache(folder: Path, target: Path, key: str, matrix: model.Matrix) -> None:
    tmp = None
    try:
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        if not _trusted(os.lstat(folder), want_dir=True):
            return
        text = json.dumps({"format": FORMAT, "key": key, "matrix": dataclasses.asdict(matrix)}, separators=(",", ":"))
        tmp = str(folder / f".matrix-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
        tmp = None
        for old in folder.glob("matrix-*"):
            if old != target:
                old.unlink()
    except (OSError, TypeError, ValueError):
        pass  # a read-only or full home: work without the cache
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def load_matrix_cached(root: Optional[Path] = None) -> model.Matrix:
    """load_matrix(), through the cache unless MOE_ENV_NO_CACHE is set."""
    if os.environ.get("MOE_ENV_NO_CACHE"):
        return _loader().load_matrix(root)
    root_path = Path(root) if root else matrix_root()
    folder = cache_dir()
    if not root_path.is_dir() or folder is None:
        return _loader().load_matrix(root_path)  # its one-line error, or no usable cache location
    try:
        key = _key(root_path)
    except OSError:
        return _loader().load_matrix(root_path)
    target = folder / f"matrix-{key}.json"
    cached = _read_cache(folder, target, key)
    if cached is not None:
        return cached
    # a fresh load (loader.load_matrix memoises per path within a process, which would hide the edit
    # that made the key change); raises MatrixError on a bad file, as without the cache
    matrix = _loader()._load(root_path)
    _write_cache(folder, target, key, matrix)
    return matrix


# ---------------------------------------------------------------- JSON -> the typed dataclasses
#
# Per class, once: which fields hold dataclasses (directly, in a list or in a dict) and need rebuilding;
# every other field is plain JSON data already (str, int, bool, lists and tables of them) and is taken
# as is. That keeps a cache hit at a few milliseconds for ~6,000 entries.

_PLANS: Dict[type, Dict[str, Any]] = {}


def _converter(hint: Any):
    """None when values of this type are plain data, else a function rebuilding them."""
    if dataclasses.is_dataclass(hint):
        return lambda value: _build(hint, value)
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        conv = _converter(inner[0]) if inner else None
        return None if conv is None else (lambda value: None if value is None else conv(value))
    if origin is list:
        conv = _converter(typing.get_args(hint)[0])
        return None if conv is None else (lambda value: [conv(v) for v in value])
    if origin is dict:
        conv = _converter(typing.get_args(hint)[1])
        return None if conv is None else (lambda value: {k: conv(v) for k, v in value.items()})
    return None


def _build(cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: not an object")
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = {name: _converter(hint) for name, hint in typing.get_type_hints(cls).items()}
    kwargs = {}
    for name, value in data.items():
        if name in plan:
            conv = plan[name]
            kwargs[name] = value if conv is None or value is None else conv(value)
    return cls(**kwargs)
