"""A child process with pipes, for doctor's own path: the probe and `nvcc --version`.

Why not subprocess: importing it brings threading, selectors and signal (~3.5 ms of doctor's 0.1 s
budget), and doctor needs only this much. os.posix_spawn (vfork+exec in glibc) also starts a child
without copying the parent's page tables. POSIX only, as moe-env is.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False  # typing's constant, without importing typing before the probe starts
if TYPE_CHECKING:
    from typing import List, Optional, Tuple

_CHUNK = 1 << 16


class SpawnTimeout(Exception):
    """The child did not finish within the timeout (it has been killed)."""


class Child:
    """A started child; its stdin, stdout and stderr are pipes (stdin /dev/null when `stdin=False`)."""

    def __init__(self, argv: List[str], *, stdin: bool = True, env: Optional[dict] = None):
        self.args = list(argv)
        self.returncode: Optional[int] = None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r = in_w = None
        try:
            actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
            if stdin:
                in_r, in_w = os.pipe()
                actions.insert(0, (os.POSIX_SPAWN_DUP2, in_r, 0))
            else:
                actions.insert(0, (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
            # the pipes' own ends are close-on-exec (Python's default): only the dup'ed 0/1/2 survive exec
            self.pid = os.posix_spawn(self.args[0], self.args, os.environ if env is None else env,
                                      file_actions=actions)
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd is not None:
                    os.close(fd)
        self._in, self._out, self._err = in_w, out_r, err_r

    def communicate(self, data: str = "", timeout: float = 60.0) -> Tuple[str, str]:
        """Write `data` to its stdin, read stdout and stderr to the end, reap it: (stdout, stderr) as text.

        SpawnTimeout when it takes longer than `timeout` (the child is killed first). A child that exits
        without reading its stdin is not an error here: the caller judges its output.
        """
        deadline = time.monotonic() + timeout
        pending = data.encode("utf-8", "surrogateescape") if self._in is not None else b""
        out_fd, err_fd = self._out, self._err
        if out_fd is None or err_fd is None:
            raise ValueError("communicate() called twice")
        chunks = {out_fd: [], err_fd: []}
        poller = select.poll()
        if self._in is not None:
            if pending:
                os.set_blocking(self._in, False)
                poller.register(self._in, select.POLLOUT)
            else:
                os.close(self._in)
                self._in = None
        for fd in chunks:
            poller.register(fd, select.POLLIN)
        open_fds = len(chunks) + (1 if self._in is not None else 0)
        try:
            while open_fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise SpawnTimeout(f"{self.args[0]} did not finish within {timeout:g}s")
                for fd, event in poller.poll(left * 1000):
                    if fd == self._in:
                        try:
                            pending = pending[os.write(fd, pending[:_CHUNK]):]
                        except BrokenPipeError:
                            pending = b""
                        if not pending:
                            poller.unregister(fd)
                            os.close(fd)
                            self._in = None
                            open_fds -= 1
                        continue
                    block = os.read(fd, _CHUNK) if event & (select.POLLIN | select.POLLHUP | select.POLLERR) else b""
                    if block:
                        chunks[fd].append(block)
                    else:
                        poller.unregister(fd)
                        open_fds -= 1
        finally:
            self._close()
        self.wait()
        return (b"".join(chunks[out_fd]).decode("utf-8", "replace"),
                b"".join(chunks[err_fd]).decode("utf-8", "replace"))

    def wait(self) -> int:
        if self.returncode is None:
            while True:
                try:
                    _, status = os.waitpid(self.pid, 0)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    status = 0
                    break
            self.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
        return self.returncode

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it (if still running) and reap it; its pipes are closed."""
        import signal

        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close()
        self.wait()

    def _close(self) -> None:
        for name in ("_in", "_out", "_err"):
            fd = getattr(self, name)
            setattr(self, name, None)  # never closed twice: the number may belong to another file by then
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def run(argv: List[str], timeout: float, data: str = "") -> Tuple[int, str, str]:
    """Start, feed, collect: (exit code, stdout, stderr). OSError when it cannot start; SpawnTimeout."""
    child = Child(argv, stdin=bool(data))
    out, err = child.communicate(data, timeout)
    return child.returncode or 0, out, err
