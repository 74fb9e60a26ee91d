"""A per-user cache of the validated shipped matrix, so `doctor` does not re-parse ~300 KB of TOML per run.

Parsing and validating compat_matrix/ costs more than everything else doctor does; the result only
changes when a TOML file (its bytes), the schema code or moe-env's version changes, so those key the
cache (hashing ~300 KB costs about a millisecond). Any problem with the cache (unreadable, stale class
shapes, read-only home) falls back to the real loader; the cache can never make a run fail.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zlib
from pathlib import Path
from typing import Optional

from moe_env import __version__
from moe_env.matrix import model
from moe_env.paths import matrix_root


def cache_dir() -> Path:
    """$MOE_ENV_CACHE_DIR, else $XDG_CACHE_HOME/moe-env, else ~/.cache/moe-env."""
    explicit = os.environ.get("MOE_ENV_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moe-env"


def _key(root: Path) -> str:
    """CRC-32 and Adler-32 of everything that shapes the result (zlib: no OpenSSL start-up on this path)."""
    parts = [f"{__version__}\0{root.resolve()}".encode()]
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


def load_matrix_cached(root: Optional[Path] = None) -> model.Matrix:
    """load_matrix(), through the cache unless MOE_ENV_NO_CACHE is set."""
    if os.environ.get("MOE_ENV_NO_CACHE"):
        return _loader().load_matrix(root)
    root_path = Path(root) if root else matrix_root()
    if not root_path.is_dir():
        return _loader().load_matrix(root_path)  # its one-line error
    try:
        key = _key(root_path)
    except OSError:
        return _loader().load_matrix(root_path)
    folder = cache_dir()
    target = folder / f"matrix-{key}.pickle"
    try:
        with open(target, "rb") as fh:
            cached = pickle.load(fh)
        if isinstance(cached, model.Matrix):
            return cached
    except Exception:  # missing, truncated, or written by another schema: rebuild
        pass
    # a fresh load (loader.load_matrix memoises per path within a process, which would hide the edit
    # that made the key change); raises MatrixError on a bad file, as without the cache
    matrix = _loader()._load(root_path)
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".matrix-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(matrix, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
        tmp = None
        for old in folder.glob("matrix-*.pickle"):
            if old != target:
                old.unlink()
    except OSError:
        pass  # a read-only or full home: work without the cache
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return matrix
