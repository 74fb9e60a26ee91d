"""A per-user cache of the validated shipped matrix, so `doctor` does not re-parse ~300 KB of TOML per run.

Parsing and validating compat_matrix/ costs more than everything else doctor does; the result only
changes when a TOML file (its bytes), the schema code or moe-env's version changes, so those key the
cache (hashing ~300 KB costs about a millisecond). Any problem with the cache (unreadable, stale class
shapes, read-only home) falls back to the real loader; the cache can never make a run fail.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Optional

from moe_env import __version__
from moe_env.matrix import loader, model
from moe_env.paths import matrix_root


def cache_dir() -> Path:
    """$MOE_ENV_CACHE_DIR, else $XDG_CACHE_HOME/moe-env, else ~/.cache/moe-env."""
    explicit = os.environ.get("MOE_ENV_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moe-env"


def _key(root: Path) -> str:
    h = hashlib.sha256(f"{__version__}\0{root.resolve()}".encode())
    for code in (Path(model.__file__), Path(loader.__file__)):
        st = code.stat()
        h.update(f"\0{code.name}\0{st.st_mtime_ns}\0{st.st_size}".encode())
    for path in sorted(p for p in root.rglob("*.toml") if p.is_file()):
        # contents, not mtimes: two quick edits of the same size can share a coarse mtime
        h.update(f"\0{path.relative_to(root).as_posix()}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:24]


def load_matrix_cached(root: Optional[Path] = None) -> model.Matrix:
    """load_matrix(), through the cache unless MOE_ENV_NO_CACHE is set."""
    if os.environ.get("MOE_ENV_NO_CACHE"):
        return loader.load_matrix(root)
    root_path = Path(root) if root else matrix_root()
    if not root_path.is_dir():
        return loader.load_matrix(root_path)  # its one-line error
    try:
        key = _key(root_path)
    except OSError:
        return loader.load_matrix(root)
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
    matrix = loader._load(root_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".matrix-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(matrix, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
        for old in folder.glob("matrix-*.pickle"):
            if old != target:
                old.unlink()
    except OSError:
        pass
    return matrix
