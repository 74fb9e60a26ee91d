"""The matrix for `lock` and `build-steps`, validated once and then read back from a pickle.

`lock` without --refresh must answer in well under 0.2 s; parsing and validating every TOML file
costs more than that. The validated Matrix is pickled under the user cache folder, keyed by moe-env's
version, the Python version and every matrix file's path, size and mtime: any edit revalidates.
A cache that cannot be read or written is ignored (the slow path is always correct).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Optional

from moe_env.matrix.loader import load_matrix
from moe_env.matrix.model import Matrix
from moe_env.paths import matrix_root


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moe-env"


def _key(root: Path) -> str:
    from moe_env import __version__

    from moe_env.matrix import loader, model

    h = hashlib.sha256(f"{__version__}|{sys.version_info[:3]}|{root.resolve()}".encode())
    for code in (model.__file__, loader.__file__):  # a schema change in a checkout revalidates too
        h.update(f"|{code}:{os.stat(code).st_mtime_ns}".encode())
    for p in sorted(root.rglob("*.toml")):
        st = p.stat()
        h.update(f"|{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def load_matrix_fast(root: Optional[Path] = None) -> Matrix:
    root = Path(root) if root else matrix_root()
    if os.environ.get("MOE_ENV_NO_CACHE") or not root.is_dir():
        return load_matrix(root)
    path = None
    try:
        path = _cache_dir() / f"matrix-{_key(root)}.pickle"
        with open(path, "rb") as fh:
            matrix = pickle.load(fh)
        if isinstance(matrix, Matrix):
            return matrix
    except (OSError, pickle.PickleError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        pass
    from moe_env.matrix import loader

    loader._cache.pop(str(root.resolve()), None)  # the files changed since any copy this process holds
    matrix = load_matrix(root)  # validates; raises MatrixError on a bad file
    if path is None:
        return matrix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(matrix, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except (OSError, pickle.PickleError):
        pass
    return matrix
