"""Writing results so that nothing is lost: atomically, never clobbering without --force, no temp left behind.

Every command that writes a file (lock -o, build-steps -o, dockerfile -o, regen) goes through here:
- the data goes to a short temp name in the target's folder and is renamed over the target, so a
  reader sees the old file or the new one, never half of one; the replaced file's mode is kept;
- an existing, different file is replaced only with `force`; a byte-identical one is left alone;
- a target that is not a regular file (a device, a FIFO) is refused without `force`, and with it is
  written through (never replaced by a regular file): `-o /dev/stdout --force` works, `/dev/full` is
  a one-line error, a FIFO without a reader is refused at once instead of hanging;
- SIGINT/SIGTERM during a write remove the temp file; a run killed with SIGKILL leaves one behind,
  named `.moe-env-PID-XXXX.tmp`, which the next write into that folder removes once PID is gone;
- `write_all` writes several files as one: every target is judged first, then all temps are written,
  then all are renamed, so a Dockerfile and its lockfile never come from different runs.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

from moe_env.errors import UsageError

Data = Union[str, bytes]
TEMP_PREFIX = ".moe-env-"
TEMP_SUFFIX = ".tmp"
STALE_SECONDS = 60


def _bytes(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _plan(path: Path, data: bytes, force: bool) -> str:
    """'same' (nothing to do), 'new', 'replace' or 'through' (write into a non-regular file)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "new"  # a parent that is a file is reported by _parent()
    except OSError as exc:
        raise UsageError(f"{path}: cannot check the existing file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a folder; give a file name")
    if not stat.S_ISREG(st.st_mode):
        if not force:
            raise UsageError(f"{path}: exists and is not a regular file (a device or pipe); "
                             "use --force to write into it, or give another file name")
        return "through"
    if st.st_size == len(data):
        try:
            with open(path, "rb") as fh:
                if fh.read(len(data) + 1) == data:
                    return "same"
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the existing file ({exc.strerror or exc})") from None
    if not force:
        raise UsageError(f"{path}: exists and differs; use --force to replace it")
    return "replace"


def _parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{path}: {parent} exists and is not a folder") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot create the folder {parent} ({exc.strerror or exc})") from None
    return parent


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(folder: Path) -> None:
    """Temp files of earlier runs that were killed (SIGKILL cannot be caught) in `folder`."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    now = time.time()
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
            continue
        pid_text = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid_text.isascii() or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        full = os.path.join(folder, name)
        try:
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_SECONDS and (pid == os.getpid() or not _pid_alive(pid)):
                os.unlink(full)
        except OSError:
            continue


_live_temps: List[str] = []


@contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """Remove this process's temp files if SIGINT/SIGTERM arrive mid-write, then die of that signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):  # pragma: no cover - exercised by a subprocess test
        for tmp in list(_live_temps):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        signal.signal(signum, previous.get(signum) or signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except (OSError, ValueError):
            pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            try:
                signal.signal(signum, old)
            except (OSError, ValueError):
                pass


def _write_temp(path: Path, parent: Path, data: bytes, plan: str) -> str:
    remove_stale_temps(parent)
    fd = -1
    tmp = ""
    for _ in range(100):
        tmp = os.path.join(str(parent), f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(f"{path}: cannot write in {parent} ({exc.strerror or exc})") from None
    _live_temps.append(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if plan == "replace":
            mode = stat.S_IMODE(os.stat(path).st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
    except OSError as exc:
        _discard(tmp)
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return tmp


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass
    if tmp in _live_temps:
        _live_temps.remove(tmp)


def _write_through(path: Path, data: bytes) -> None:
    """Into a device or FIFO: opened non-blocking so a FIFO with no reader fails instead of hanging."""
    try:
        fd = os.open(str(path), os.O_WRONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise UsageError(f"{path}: a pipe with no reader; start the reader first") from None
        raise UsageError(f"{path}: cannot open for writing ({exc.strerror or exc})") from None
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def write_all(items: Sequence[Tuple[Union[str, Path], Data]], *, force: bool = False) -> List[bool]:
    """Write several files as one: all are judged first, then written, then renamed into place.

    Returns, per item, whether its file changed (False: it already held exactly these bytes).
    """
    prepared = []
    for target, data in items:
        path = Path(target)
        raw = _bytes(data)
        prepared.append((path, raw, _plan(path, raw, force)))
    temps: List[Tuple[Path, str]] = []
    with _cleanup_on_signals():
        try:
            for path, raw, plan in prepared:
                if plan in ("new", "replace"):
                    temps.append((path, _write_temp(path, _parent(path), raw, plan)))
            for path, raw, plan in prepared:
                if plan == "through":
                    _write_through(path, raw)
            for path, tmp in temps:
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None
                _live_temps.remove(tmp)
        finally:
            for _, tmp in temps:
                if tmp in _live_temps:
                    _discard(tmp)
    return [plan != "same" for _, _, plan in prepared]


def write_atomic(path: Union[str, Path], data: Data, force: bool = False) -> bool:
    """Write one file (see the module docstring). Returns False when it already held exactly these bytes."""
    return write_all([(path, data)], force=force)[0]
