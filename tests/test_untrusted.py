"""The shared bounded readers, the output layer, the matrix cache and the CLI's streams, against hostile input."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_env.errors import UsageError
from moe_env.output import remove_stale_temps, write_all, write_atomic
from moe_env.untrusted import (
    UntrustedInput,
    as_int,
    inside,
    json_loads,
    printable,
    read_bytes,
    read_json,
    toml_loads,
)

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- JSON


@pytest.mark.parametrize("text, reason", [
    ("[" * 100_000 + "]" * 100_000, "nested 100000 deep"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": 1e999}', "out of range"),
    ('{"a": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ('{"a": "\\ud800"}', "lone surrogate"),
    ('{"a": "x\\udc00"}', "lone surrogate"),
    ('{"a": [1, 2', "truncated JSON"),
    ("{'a': 1}", "not valid JSON"),
])
def test_json_refuses_hostile_documents(text, reason):
    with pytest.raises(UntrustedInput, match=reason.replace("(", r"\(")):
        json_loads(text, what="report.json")


def test_json_depth_ignores_brackets_inside_strings_and_accepts_pairs():
    doc = {"a": "[[[[[[" * 100 + '"\\', "b": [[[1]]], "emoji": "\U0001F600"}
    assert json_loads(json.dumps(doc), max_depth=4) == doc
    with pytest.raises(UntrustedInput, match="nested 5 deep"):
        json_loads(json.dumps({"a": [[[[1]]]]}), max_depth=4)
    assert json_loads(b'\xef\xbb\xbf{"x": 1}') == {"x": 1}
    with pytest.raises(UntrustedInput, match="not UTF-8"):
        json_loads(b'{"x": "\xff"}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_round_trips_what_json_writes(value):
    assert json_loads(json.dumps(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_json_never_raises_anything_else(data):
    try:
        json_loads(data)
    except UntrustedInput as exc:
        assert "\n" not in str(exc)


def test_toml_depth_and_errors():
    with pytest.raises(UntrustedInput, match="nested more than 3 deep"):
        toml_loads("a = [[[[1]]]]", max_depth=3)
    with pytest.raises(UntrustedInput, match="not valid TOML"):
        toml_loads("[project\n", what="x.toml")
    with pytest.raises(UntrustedInput):
        toml_loads("a = " + "[" * 50_000 + "]" * 50_000)


# ---------------------------------------------------------------- numbers and text


@pytest.mark.parametrize("value, ok", [
    (8, 8), ("8", 8), (" 16 ", 16), (8.0, 8), ("-1", None), ("²", None), ("\U00010A40", None), ("eight", None),
    (True, None), (None, None), ([8], None), (8.5, None), ("9" * 41, None), (float("inf"), None), (10**20, None),
])
def test_as_int(value, ok):
    if ok is None:
        with pytest.raises(UntrustedInput, match="num_experts"):
            as_int(value, lo=0, hi=10**6, what="num_experts")
    else:
        assert as_int(value, lo=0, hi=10**6, what="num_experts") == ok


def test_printable_neutralises_terminal_control():
    assert printable("node\x1b]0;pwned\x07\x1b[2J07") == "node\\x1b]0;pwned\\x07\\x1b[2J07"
    assert printable("abc\u202edcba") == "abc\\u202edcba"
    assert printable("a\nb") == "a\\x0ab" and printable("a\nb", newlines=True) == "a\nb"
    assert printable("\ud800") == "\\ud800"
    assert printable("tab\there ünïcode 中文") == "tab\there ünïcode 中文"


# ---------------------------------------------------------------- files


def test_inside_refuses_what_leaves_the_folder(tmp_path):
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "model-00001.safetensors").write_bytes(b"x")
    (ck / "out").symlink_to("/etc/passwd")
    (ck / "sub").mkdir()
    assert inside(ck, "model-00001.safetensors") == (ck / "model-00001.safetensors").resolve()
    for rel in ("../../../../../etc/passwd", "/etc/passwd", "out", "sub", "../ckpt/../../x", "", "a\0b"):
        assert inside(ck, rel) is None, rel
    (ck / "proc").symlink_to("/proc/self/mem")
    assert inside(ck, "proc") is None


def test_read_bytes_refuses_fifo_and_devices_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    for path in (fifo, "/dev/zero", tmp_path):
        with pytest.raises(UntrustedInput):
            read_bytes(path, max_bytes=100)
    assert time.monotonic() - started < 5
    big = tmp_path / "big.json"
    big.write_text("[" + "1," * 100 + "1]")
    with pytest.raises(UntrustedInput, match="more than the 50"):
        read_json(big, max_bytes=50)


# ---------------------------------------------------------------- the output layer


def test_write_atomic_keeps_mode_and_never_clobbers(tmp_path):
    out = tmp_path / "a" / "b" / "lock.txt"
    assert write_atomic(out, "one\n") is True  # parent folders are created
    os.chmod(out, 0o640)
    with pytest.raises(UsageError, match="exists and differs; use --force"):
        write_atomic(out, "two\n")
    assert out.read_text() == "one\n"
    assert write_atomic(out, "one\n") is False
    assert write_atomic(out, "two\n", force=True) is True
    assert out.read_text() == "two\n" and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in out.parent.iterdir()] == ["lock.txt"]


def test_write_atomic_long_names_and_non_regular_targets(tmp_path):
    name = "x" * 255
    assert write_atomic(tmp_path / name, "ok") is True
    null, full = tmp_path / "null", tmp_path / "full"
    if os.getuid() != 0:
        pytest.skip("making device nodes needs root")
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # our own /dev/null and /dev/full: a bug here
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # cannot damage the machine's /dev
    with pytest.raises(UsageError, match="not a regular file"):
        write_atomic(null, "data")
    assert write_atomic(null, "data", force=True) is True and stat.S_ISCHR(null.stat().st_mode)
    with pytest.raises(UsageError, match="No space left"):
        write_atomic(full, "data", force=True)
    assert stat.S_ISCHR(full.stat().st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(UsageError, match="no reader"):
        write_atomic(fifo, "data", force=True)
    assert time.monotonic() - started < 5 and stat.S_ISFIFO(fifo.stat().st_mode)


def test_write_all_is_all_or_nothing(tmp_path):
    (tmp_path / "requirements.txt").write_text("mine\n")
    with pytest.raises(UsageError, match="requirements.txt: exists and differs"):
        write_all([(tmp_path / "Dockerfile", "FROM x\n"), (tmp_path / "requirements.txt", "theirs\n")])
    assert not (tmp_path / "Dockerfile").exists()
    assert write_all([(tmp_path / "Dockerfile", "FROM x\n"), (tmp_path / "requirements.txt", "mine\n")]) == [True, False]


def test_stale_temps_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    stale = tmp_path / f".moe-env-{int(dead)}-abcd.tmp"
    stale.write_text("partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    mine = tmp_path / ".moe-env-notapid.tmp"
    mine.write_text("not ours")
    remove_stale_temps(tmp_path)
    assert not stale.exists() and mine.exists()


def test_sigterm_mid_write_leaves_no_temp(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import moe_env.output as o
        real = os.fsync
        def slow(fd):
            print("writing", flush=True); time.sleep(30); real(fd)
        os.fsync = slow
        o.write_atomic({str(tmp_path / 'out.txt')!r}, "x" * 1000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the matrix cache


def _cache_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOE_ENV_", "XDG_"))}
    env.update(extra)
    env["HOME"] = str(tmp_path / "home")
    return env


def _matrix_list(env):
    """A command that reads the matrix through the cache (`lock` of a shipped stack, offline)."""
    r = subprocess.run([sys.executable, "-m", "moe_env", "lock", "minigemini"], capture_output=True, text=True,
                       env=env, cwd=env.get("PWD", "/"), timeout=60)
    r.stdout = "megatron" if r.returncode == 0 and "torch==" in r.stdout else r.stdout
    return r


def test_cache_never_runs_a_planted_file(tmp_path):
    """A pickle or JSON planted in the cache by anyone is never executed; another user's or a writable one is ignored."""
    cache = tmp_path / "cache"
    env = _cache_env(tmp_path, MOE_ENV_CACHE_DIR=str(cache))
    assert _matrix_list(env).returncode == 0
    (target,) = cache.glob("matrix-*.jsonl")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    sentinel = tmp_path / "ran"
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    for name in (target.name, target.name.replace(".jsonl", ".pickle")):
        (cache / name).write_bytes(pickle.dumps(Boom()))
    assert _matrix_list(env).returncode == 0 and not sentinel.exists()


def test_cache_trusts_only_files_of_this_user_that_nobody_else_can_write(tmp_path, monkeypatch):
    from moe_env.matrix.cache import load_matrix_cached

    cache = tmp_path / "cache"
    monkeypatch.setenv("MOE_ENV_CACHE_DIR", str(cache))
    monkeypatch.delenv("MOE_ENV_NO_CACHE", raising=False)
    title = load_matrix_cached().project("minigemini").info.title
    (target,) = cache.glob("matrix-*.jsonl")
    header, rest = target.read_bytes().split(b"\n", 1)  # JSON Lines: the header line holds the project's info
    doc = json.loads(header)
    doc["matrix"]["projects"]["minigemini"]["info"]["title"] = "PLANTED"
    target.write_bytes(json.dumps(doc).encode() + b"\n" + rest)
    assert load_matrix_cached().project("minigemini").info.title == "PLANTED"  # the tamper is visible when trusted
    os.chmod(target, 0o666)
    assert load_matrix_cached().project("minigemini").info.title == title
    os.chmod(target, 0o600)
    os.chmod(cache, 0o777)
    assert load_matrix_cached().project("minigemini").info.title == title
    os.chmod(cache, 0o700)
    if os.getuid() == 0:
        target.write_bytes(json.dumps(doc).encode() + b"\n" + rest)
        os.chown(target, 65534, 65534)
        assert load_matrix_cached().project("minigemini").info.title == title


def test_cache_ignores_relative_xdg_and_fifo(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    env = _cache_env(tmp_path, XDG_CACHE_HOME="rel-cache", PWD=str(checkout))
    r = _matrix_list(env)
    assert r.returncode == 0 and not (checkout / "rel-cache").exists()
    cache = tmp_path / "fifo-cache"
    env = _cache_env(tmp_path, MOE_ENV_CACHE_DIR=str(cache))
    assert _matrix_list(env).returncode == 0
    (target,) = cache.glob("matrix-*.jsonl")
    target.unlink()
    os.mkfifo(target)
    r = _matrix_list(env)  # a FIFO at the cache path must not hang the command
    assert r.returncode == 0 and "megatron" in r.stdout
    os.chmod(cache, 0o777)
    assert _matrix_list(env).returncode == 0


# ---------------------------------------------------------------- the CLI's own streams


def _sh(cmd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=60)


def test_closed_full_and_broken_stdout():
    cli = f"{sys.executable} -m moe_env"
    r = _sh(f"{cli} matrix list | head -c1")
    assert r.returncode == 0 and r.stderr == "" and len(r.stdout) == 1
    r = _sh(f"{cli} matrix list > /dev/full; echo rc=$?")
    assert "rc=2" in r.stdout and r.stderr.strip() == "moe-env: error: cannot write to standard output (No space left on device)"
    r = _sh(f"{cli} matrix list >&-; echo rc=$?")
    assert "rc=0" in r.stdout and "Traceback" not in r.stderr and "internal error" not in r.stderr
