"""A wheel of the running moe-env, for a Docker build context that no index serving moe-env can reach.

Built from the files this process runs (the package, plus the shipped matrix and lockfiles as
moe_env/_data/, where an installed wheel keeps them), with this version's metadata. Timestamps are
fixed, so the same moe-env gives the same bytes: regenerating a build context changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Iterator, List, Tuple

from moe_env import __version__

DIST = "moe_env"
WHEEL_TAG = "py3-none-any"
DATA_SUFFIXES = (".toml", ".md", ".txt", ".json")
_PKG = Path(__file__).resolve().parent
_EPOCH = (2020, 1, 1, 0, 0, 0)


def wheel_name() -> str:
    return f"{DIST}-{__version__}-{WHEEL_TAG}.whl"


def _shipped_dir(name: str) -> Path:
    """The shipped data folder (never a MOE_ENV_* override: the image gets what this moe-env ships)."""
    installed = _PKG / "_data" / name
    return installed if installed.is_dir() else _PKG.parent / name


def _files() -> Iterator[Tuple[str, Path]]:
    for path in sorted(_PKG.rglob("*")):
        rel = path.relative_to(_PKG)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo") or rel.parts[0] == "_data":
            continue
        yield f"{DIST}/{rel.as_posix()}", path
    for name in ("compat_matrix", "lockfiles"):
        root = _shipped_dir(name)
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts:
                yield f"{DIST}/_data/{name}/{path.relative_to(root).as_posix()}", path


def _metadata() -> str:
    """This version's METADATA: the installed distribution's when there is one, else the essentials."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        text = distribution("moe-env").read_text("METADATA")
        if text and f"\nVersion: {__version__}\n" in f"\n{text}":
            return text if text.endswith("\n") else text + "\n"
    except (ImportError, PackageNotFoundError, OSError):  # pragma: no cover - running from a bare checkout
        pass
    return (f"Metadata-Version: 2.1\nName: moe-env\nVersion: {__version__}\nRequires-Python: >=3.9\n"
            "Requires-Dist: packaging>=22\nRequires-Dist: tomli>=1.1; python_version < \"3.11\"\n")


def build(dest: Path) -> bytes:
    """The wheel's bytes (`dest` only names it in errors)."""
    info = f"{DIST}-{__version__}.dist-info"
    entries: List[Tuple[str, bytes]] = [(arc, path.read_bytes()) for arc, path in _files()]
    entries += [
        (f"{info}/METADATA", _metadata().encode("utf-8")),
        (f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: moe-env {__version__}\nRoot-Is-Purelib: true\nTag: {WHEEL_TAG}\n".encode()),
        (f"{info}/entry_points.txt", b"[console_scripts]\nmoe-env = moe_env.cli:main\n"),
        (f"{info}/top_level.txt", b"moe_env\n"),
    ]
    record = []
    for arc, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arc, data in entries:
            zi = zipfile.ZipInfo(arc, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return buf.getvalue()
