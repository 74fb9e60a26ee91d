"""Writing results: atomically (temp file + os.replace), never clobbering without --force."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from moe_env.errors import UsageError


def write_atomic(path: Path, text: str, force: bool = False) -> bool:
    """Write `text` to `path`. Returns False when the file already held exactly these bytes.

    An existing, different file is replaced only with `force`; a failure leaves no partial file.
    """
    path = Path(path)
    data = text.encode("utf-8")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, give a file name")
    if path.exists():
        try:
            if path.read_bytes() == data:
                return False
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the existing file: {exc.strerror or exc}") from None
        if not force:
            raise UsageError(f"{path}: exists and differs; use --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)  # -o newdir/file: the folder is made
    except OSError as exc:
        raise UsageError(f"{path}: cannot create folder {parent}: {exc.strerror or exc}") from None
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(parent))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return True
