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

import json
import os
import stat
import typing
import zlib
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from moe_env import __version__
from moe_env.matrix import model
from moe_env.paths import matrix_dir
from moe_env.record import asdict, defer, hints, is_record

if TYPE_CHECKING:
    from pathlib import Path

FORMAT = "moe-env.matrix-cache/4"
MAX_CACHE_BYTES = 32 * 1024 * 1024
# Sections doctor never reads, kept out of the first line and built on first read (record.defer): about
# 40% of the file. The file is JSON Lines: line 1 the header (key, plans, the rest of the matrix, where
# each deferred section lies), then one line per deferred section.
DEFERRED = {
    "Matrix": ("known_issues", "fleet_facts", "launcher_args", "cuda_images"),
    "Project": ("rules", "known_issues", "entry_points"),
}


def cache_dir() -> Optional[str]:
    """$MOE_ENV_CACHE_DIR, else $XDG_CACHE_HOME/moe-env, else ~/.cache/moe-env; None when no absolute one exists."""
    explicit = os.environ.get("MOE_ENV_CACHE_DIR")
    if explicit:
        return explicit if os.path.isabs(explicit) else None
    xdg = os.environ.get("XDG_CACHE_HOME") or ""
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "moe-env") if os.path.isabs(base) else None


def _key(root: Union[str, Path]) -> str:
    """CRC-32 and Adler-32 of everything that shapes the result (zlib: no OpenSSL start-up on this path)."""
    top = os.path.realpath(root)
    parts = [f"{FORMAT}\0{__version__}\0{top}".encode()]
    model_py = model.__file__
    for code in (model_py, os.path.join(os.path.dirname(model_py), "loader.py")):
        st = os.stat(code)
        parts.append(f"\0{os.path.basename(code)}\0{st.st_mtime_ns}\0{st.st_size}".encode())
    for rel in _toml_files(top):
        # contents, not mtimes: two quick edits of the same size can share a coarse mtime
        parts.append(f"\0{rel}\0".encode())
        with open(os.path.join(top, rel), "rb") as fh:
            parts.append(fh.read())
    blob = b"".join(parts)
    return f"{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}{len(blob):x}"


def _toml_files(top: str) -> list:
    """Every regular *.toml below `top`, as sorted relative POSIX paths (os.scandir: a third of rglob's cost)."""
    found, folders = [], [""]
    while folders:
        rel = folders.pop()
        with os.scandir(os.path.join(top, rel) if rel else top) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    folders.append(name)
                elif entry.name.endswith(".toml") and entry.is_file():
                    found.append(name)
    return sorted(found)


def _loader():
    """The real loader, imported only on a miss (it brings tomllib and the validation code)."""
    from moe_env.matrix import loader

    return loader


def _trusted(st: os.stat_result, want_dir: bool) -> bool:
    """Ours, and writable by nobody else (a shared XDG_CACHE_HOME must not let another user plant one)."""
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.getuid() and not (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _read_cache(folder: str, target: str, key: str) -> Optional[model.Matrix]:
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
            raw = fh.read()
        end = raw.find(b"\n")
        header = json.loads(raw[:end]) if end > 0 else None
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("key") != key:
            return None
        body = raw[end + 1:]
        # the deferred lines are parsed after this check passed, so a damaged or cut file is a miss here,
        # never an error later in the middle of a command
        if [len(body), zlib.crc32(body)] != header["body"]:
            return None
        spans, at = header["deferred"], 0
        for _project, _name, start, size in spans:  # the lines tile the body, each ends its line
            if start != at or size < 1 or body[start + size - 1:start + size] != b"\n":
                return None
            at += size
        if at != len(body):
            return None
        builder = _Builder(header["plans"], target)
        matrix = builder.build(model.Matrix, header["matrix"])
        for project, name, start, size in spans:
            owner = matrix if project is None else matrix.projects[project]
            defer(owner, name, builder.later(type(owner), name, body, start, size))
        return matrix
    except Exception:  # malformed, or written by another schema: rebuild
        return None
    finally:
        os.close(fd)


def _encode(key: str, matrix: model.Matrix) -> bytes:
    """The cache file: the header line, then one line per deferred section (see DEFERRED)."""
    plain = asdict(matrix)
    body, deferred = bytearray(), []

    def put(owner: Dict[str, Any], project: Optional[str], names: tuple) -> None:
        for name in names:
            line = json.dumps(owner.pop(name), separators=(",", ":")).encode() + b"\n"
            deferred.append([project, name, len(body), len(line)])
            body.extend(line)

    put(plain, None, DEFERRED["Matrix"])
    for name, project in plain["projects"].items():
        put(project, name, DEFERRED["Project"])
    header = {"format": FORMAT, "key": key, "plans": _plans(), "body": [len(body), zlib.crc32(body)],
              "deferred": deferred, "matrix": plain}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + bytes(body)


def _write_cache(folder: str, target: str, key: str, matrix: model.Matrix) -> None:
    tmp = None
    try:
        if not os.path.exists(folder):
            os.makedirs(folder, mode=0o700)
        if not _trusted(os.lstat(folder), want_dir=True):
            return
        data = _encode(key, matrix)
        tmp = os.path.join(folder, f".matrix-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        tmp = None
        for name in os.listdir(folder):
            if name.startswith("matrix-") and os.path.join(folder, name) != target:
                os.unlink(os.path.join(folder, name))
    except (OSError, TypeError, ValueError):
        pass  # a read-only or full home: work without the cache
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def load_matrix_cached(root: Optional[Union[str, Path]] = None) -> model.Matrix:
    """load_matrix(), through the cache unless MOE_ENV_NO_CACHE is set."""
    if os.environ.get("MOE_ENV_NO_CACHE"):
        return _loader().load_matrix(root)
    root_dir = os.fspath(root) if root else matrix_dir()
    folder = cache_dir()
    if not os.path.isdir(root_dir) or folder is None:
        return _loader().load_matrix(root_dir)  # its one-line error, or no usable cache location
    try:
        key = _key(root_dir)
    except OSError:
        return _loader().load_matrix(root_dir)
    target = os.path.join(folder, f"matrix-{key}.jsonl")
    cached = _read_cache(folder, target, key)
    if cached is not None:
        return cached
    # a fresh load (loader.load_matrix memoises per path within a process, which would hide the edit
    # that made the key change); raises MatrixError on a bad file, as without the cache
    from pathlib import Path

    matrix = _loader()._load(Path(root_dir))
    _write_cache(folder, target, key, matrix)
    return matrix


# ---------------------------------------------------------------- JSON -> the typed dataclasses
#
# Per class, once: which fields hold dataclasses (directly, in a list or in a dict) and need rebuilding;
# every other field is plain JSON data already (str, int, bool, lists and tables of them) and is taken
# as is. That keeps a cache hit at a few milliseconds for ~6,000 entries. The plan is worked out from
# the type hints when the cache is written and stored in it (evaluating them costs ~2 ms a run;
# the key covers model.py, so a stored plan always matches the classes).

_Spec = Any  # None (plain data), ["dc", class name], ["opt" | "list" | "dict", _Spec]


def _spec(hint: Any) -> _Spec:
    if is_record(hint):
        return ["dc", hint.__name__]
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        sub = _spec(inner[0]) if inner else None
        return None if sub is None else ["opt", sub]
    if origin in (list, dict):
        sub = _spec(typing.get_args(hint)[0 if origin is list else 1])
        return None if sub is None else ["list" if origin is list else "dict", sub]
    return None


def _plans() -> Dict[str, Dict[str, _Spec]]:
    """{class name: {field: spec}} for Matrix and every dataclass reachable from it."""
    out: Dict[str, Dict[str, _Spec]] = {}
    todo = [model.Matrix]
    while todo:
        cls = todo.pop()
        if cls.__name__ in out:
            continue
        out[cls.__name__] = {name: _spec(hint) for name, hint in hints(cls).items()}
        for spec in out[cls.__name__].values():
            while isinstance(spec, list):
                if spec[0] == "dc":
                    todo.append(getattr(model, spec[1]))
                    break
                spec = spec[1]
    return out


class _Builder:
    """Rebuilds the typed tree from JSON by the stored plans; only model's own dataclasses are made."""

    def __init__(self, plans: Any, path: str = ""):
        if not isinstance(plans, dict):
            raise ValueError("no plans")
        self.plans = plans
        self.path = path
        self.made: Dict[str, Dict[str, Any]] = {}

    def _class(self, name: Any) -> type:
        cls = getattr(model, name, None) if isinstance(name, str) else None
        if not (isinstance(cls, type) and is_record(cls) and cls.__module__ == model.__name__):
            raise ValueError(f"not a matrix class: {name!r}")
        return cls

    def _converter(self, spec: _Spec):
        if spec is None:
            return None
        kind, sub = spec
        if kind == "dc":
            cls = self._class(sub)
            return lambda value: self.build(cls, value)
        conv = self._converter(sub)
        if kind == "opt":
            return lambda value: None if value is None else conv(value)
        if kind == "list":
            return lambda value: [conv(v) for v in value]
        if kind == "dict":
            return lambda value: {k: conv(v) for k, v in value.items()}
        raise ValueError(f"bad plan {spec!r}")

    def later(self, cls: type, name: str, body: bytes, start: int, size: int):
        """The maker of field `name` of a `cls` from its line of the cache body (record.defer calls it)."""
        conv = self._converter(self.plans[cls.__name__][name])

        def make() -> Any:
            try:
                value = json.loads(body[start:start + size])
                return value if conv is None or value is None else conv(value)
            except Exception as exc:  # only an edited header gets here (the body's CRC was checked)
                from moe_env.errors import MoeEnvError

                try:
                    os.unlink(self.path)  # the next run rebuilds it
                except OSError:
                    pass
                raise MoeEnvError(f"the matrix cache {self.path} does not read back ({name}: {exc}); "
                                  "it was removed: run the command again") from None

        return make

    def build(self, cls: type, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: not an object")
        plan = self.made.get(cls.__name__)
        if plan is None:
            plan = self.made[cls.__name__] = {name: self._converter(spec)
                                              for name, spec in self.plans[cls.__name__].items()}
        kwargs = {}
        for name, value in data.items():
            if name in plan:
                conv = plan[name]
                kwargs[name] = value if conv is None or value is None else conv(value)
        return cls(**kwargs)


def _build(cls: type, data: Any, plans: Any = None) -> Any:
    """The typed object of `cls` from its JSON (plans: as stored in the cache; worked out when None)."""
    return _Builder(_plans() if plans is None else plans).build(cls, data)
