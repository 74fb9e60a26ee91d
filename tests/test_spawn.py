"""moe_env.spawn, the subprocess-free child runner doctor uses for the probe and nvcc: real children, real pipes."""

from __future__ import annotations

import os
import sys
import time

import pytest

from moe_env import spawn


def _open_fds():
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


def test_both_streams_large_without_deadlock():
    """4 MB to stdin, 2 MB back on each of stdout and stderr: a naive read-one-then-the-other would hang."""
    code = "import sys; d = sys.stdin.read(); sys.stdout.write(d[:2000000]); sys.stderr.write(d[:2000000]); sys.exit(3)"
    rc, out, err = spawn.run([sys.executable, "-c", code], timeout=60, data="x" * 4_000_000)
    assert (rc, len(out), len(err)) == (3, 2_000_000, 2_000_000)


def test_a_child_that_never_reads_its_stdin():
    rc, out, _ = spawn.run(["/bin/sh", "-c", "exec 0<&-; echo ok"], timeout=30, data="y" * 2_000_000)
    assert (rc, out) == (0, "ok\n")


def test_timeout_kills_and_reaps():
    before = _open_fds()
    child = spawn.Child(["/bin/sleep", "30"], stdin=False)
    start = time.monotonic()
    with pytest.raises(spawn.SpawnTimeout, match="did not finish within 0.3s"):
        child.communicate("", timeout=0.3)
    assert time.monotonic() - start < 5
    assert child.returncode == -9
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # reaped: no zombie left
    assert _open_fds() == before


def test_no_descriptor_leaks_and_signals_are_negative():
    before = _open_fds()
    for _ in range(20):
        rc, _, _ = spawn.run(["/bin/sh", "-c", "kill -TERM $$"], timeout=30)
        assert rc == -15
    assert _open_fds() == before


def test_cannot_start_is_an_oserror_and_leaks_nothing(tmp_path):
    before = _open_fds()
    with pytest.raises(FileNotFoundError):
        spawn.Child([str(tmp_path / "missing")])
    text = tmp_path / "not-executable"
    text.write_text("hello\n")
    with pytest.raises(PermissionError):
        spawn.Child([str(text)])
    assert _open_fds() == before


def test_kill_before_communicate():
    child = spawn.Child(["/bin/sleep", "30"])
    child.kill()
    assert child.returncode == -9
    child.kill()  # twice is harmless
    with pytest.raises(ValueError):
        child.communicate("x", timeout=1)
