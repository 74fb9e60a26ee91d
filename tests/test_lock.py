"""`moe-env lock`: real uv and pip-compile runs against a local index the tests serve, shipped lockfiles
offline, atomic no-clobber writes, and one-line errors."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lock_support import isolated_env, serve_index, write_matrix
from moe_env.checks.lockfile import parse_lockfile
from moe_env.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    with serve_index(tmp_path_factory.mktemp("index")) as idx:
        yield idx


@pytest.fixture
def setup(tmp_path, monkeypatch, index):
    """A test matrix whose stacks target this interpreter's Python, an empty lockfiles folder, isolation."""
    root = write_matrix(tmp_path / "matrix")
    proj = root / "projects" / "toymoe.toml"
    proj.write_text(proj.read_text().replace('python = "3.11"', f'python = "{PY}"'))
    for k, v in isolated_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in ("MOE_ENV_INDEX_URL", "MOE_ENV_TORCH_INDEX", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MOE_ENV_MATRIX", str(root))
    monkeypatch.setenv("MOE_ENV_FLASH_ATTN_RELEASES", "http://127.0.0.1:9/v{version}.json")  # live check: offline
    monkeypatch.setenv("MOE_ENV_LOCKFILES", str(tmp_path / "lockfiles"))
    # lock judges the host as doctor does: this machine's own nvcc, driver and GPUs must not decide the tests
    monkeypatch.setenv("MOE_ENV_NVCC_VERSION", "none")
    monkeypatch.setenv("MOE_ENV_GPUS", "none")
    monkeypatch.delenv("MOE_ENV_CUDA_DRIVER_VERSION", raising=False)
    (tmp_path / "lockfiles").mkdir()
    return tmp_path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def idx_args(index):
    return ["--index-url", index.index_url, "--torch-index", index.torch_root]


def pins_of(text):
    lock = parse_lockfile(text, "lock")
    return {name: str(p.requirement.specifier) for name, p in lock.pins.items()}


def hashes_of(text):
    """{name: (version, [sha256...])} from a requirements-style lockfile."""
    out = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            out[m.group(1)] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


# ---------------------------------------------------------------- fresh resolutions


@pytest.mark.parametrize("cuda", [None, "11.8"])
def test_uv_and_pip_tools_agree_and_hash_the_real_files(setup, capsys, index, cuda):
    extra = ["--cuda", cuda] if cuda else []
    results = {}
    for backend in ("uv", "pip-tools"):
        code, out, err = run_cli(capsys, "lock", "toy", "--refresh", "--backend", backend, *extra, *idx_args(index))
        assert code == 0, err
        results[backend] = out
    assert pins_of(results["uv"]) == pins_of(results["pip-tools"])
    pins = pins_of(results["uv"])
    want_torch = "==2.1.2+cu118" if cuda else "==2.1.2"
    assert pins["torch"] == want_torch
    assert pins["fakelib"] == "==1.0" and pins["helperlib"] == "==1.1"  # transitive, newest
    assert "flash-attn" not in pins  # a source build, named in the header instead
    for backend, text in results.items():
        for name, (version, hashes) in hashes_of(text).items():
            assert hashes, f"{backend}: {name} has no hash"
            assert set(hashes) <= set(index.hashes_of(name, version)), f"{backend}: {name} hash is not the file's"
        body = [ln for ln in text.splitlines() if not ln.startswith("#")]
        assert not any(re.match(r"\s*(--index-url|--extra-index-url|-i |--find-links)", ln) for ln in body)
        assert "# moe-env lockfile: toymoe (variants 8x7b), stack toy-8x7b-cu121" in text
        assert "then install with build steps (not in this file): flash-attn==2.5.8" in text


def test_lockfile_installs_with_pip_require_hashes(setup, capsys, index, venv):
    """The install line the header prints, run by pip itself."""
    out = setup / "req.txt"
    code, _, err = run_cli(capsys, "lock", "toy", "--cuda", "11.8", "--refresh", "-o", str(out), *idx_args(index))
    assert code == 0, err
    install = next(ln for ln in out.read_text().splitlines() if ln.startswith("# install: "))
    assert install.endswith(f"--extra-index-url {index.torch_root}/cu118")
    cmd = [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--quiet", "--no-cache-dir",
           "--require-hashes", "-r", str(out), "--index-url", index.index_url,
           "--extra-index-url", f"{index.torch_root}/cu118"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert (venv.site / "torch-2.1.2+cu118.dist-info").is_dir()


def test_lockfile_installs_with_require_hashes(setup, capsys, index, venv):
    out = setup / "req.txt"
    code, _, err = run_cli(capsys, "lock", "toy", "--cuda", "11.8", "--refresh", "-o", str(out), *idx_args(index))
    assert code == 0, err
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    cmd = [uv, "pip", "install", "--python", str(venv.python), "--require-hashes", "-r", str(out),
           "--index-url", index.index_url, "--extra-index-url", f"{index.torch_root}/cu118",
           "--index-strategy", "unsafe-best-match"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (venv.site / "torch-2.1.2+cu118.dist-info" / "METADATA").is_file()
    assert (venv.site / "helperlib-1.1.dist-info").is_dir()
    # a tampered hash is refused: the hashes are really checked
    bad = setup / "bad.txt"
    text = out.read_text()
    first = re.search(r"--hash=sha256:([0-9a-f]{64})", text).group(1)
    bad.write_text(text.replace(first, "0" * 64))
    bad_cmd = [str(bad) if part == str(out) else part for part in cmd] + ["--reinstall"]
    proc = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "hash" in proc.stderr.lower()


def test_pylock_format(setup, capsys, index):
    code, out, err = run_cli(capsys, "lock", "toy", "--format", "pylock", *idx_args(index))
    assert code == 0, err
    doc = tomllib.loads(out)
    pkgs = {p["name"]: p for p in doc["packages"]}
    assert pkgs["torch"]["version"] == "2.1.2"
    wheel = pkgs["helperlib"]["wheels"][0]
    assert wheel["hashes"]["sha256"] in index.hashes_of("helperlib", "1.1")
    # what pip (26.1+) and uv need to install it without an index option: a url and a sha256 per file
    for pkg in doc["packages"]:
        for art in pkg.get("wheels", []) + ([pkg["sdist"]] if "sdist" in pkg else []):
            assert art["url"].startswith(index.base_url) and len(art["hashes"]["sha256"]) == 64, pkg["name"]
    assert out.startswith("# moe-env lockfile: toymoe")


def test_pylock_installs_with_uv_from_the_local_index(setup, capsys, index, venv):
    """A real client reads the pylock.toml: `uv pip install -r pylock.toml` installs exactly its pins."""
    out = setup / "pylock.toml"
    code, _, err = run_cli(capsys, "lock", "toy", "--format", "pylock", "-o", str(out), *idx_args(index))
    assert code == 0, err
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    proc = subprocess.run([uv, "pip", "install", "--python", str(venv.python), "-r", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (venv.site / "torch-2.1.2.dist-info" / "METADATA").is_file()
    assert (venv.site / "helperlib-1.1.dist-info").is_dir() and (venv.site / "fakelib-1.0.dist-info").is_dir()
    # doctor reads the same file as an Environment
    code, outj, _ = run_cli(capsys, "doctor", "toy", "--from-lock", str(out), "--json")
    doc = json.loads(outj)
    assert doc["environment"]["torch"]["version"] == "2.1.2" and doc["environment"]["torch"]["cuda"] == "12.1"


# pip reads `-r pylock.toml` from 26.1 on (experimental): release:pip==26.1:pip/_internal/cli/req_command.py
# ("Using pylock.toml as a requirements source"); 26.0 ships pip/_internal/utils/pylock.py for `pip lock` only
PIP_READS_PYLOCK = "26.1"
TEST_CACHE = Path(os.environ.get("MOE_ENV_TEST_BASE_CACHE") or Path.home() / ".cache" / "moe-env-test")


def _pip_wheel_that_reads_pylock() -> Path:
    """pip==26.1's wheel, from the test cache; downloaded there once (the network marker is for that)."""
    folder = TEST_CACHE / "pip"
    wheel = folder / f"pip-{PIP_READS_PYLOCK}-py3-none-any.whl"
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                               "-d", str(folder), f"pip=={PIP_READS_PYLOCK}"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not wheel.is_file():
            pytest.skip(f"cannot download pip=={PIP_READS_PYLOCK}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return wheel


@pytest.mark.network
def test_pylock_installs_with_pip_from_the_local_index(setup, capsys, index, tmp_path):
    """The first pip release that reads pylock.toml installs our `--format pylock` output as written."""
    wheel = _pip_wheel_that_reads_pylock()
    out = setup / "pylock.toml"
    code, _, err = run_cli(capsys, "lock", "toy", "--format", "pylock", "-o", str(out), *idx_args(index))
    assert code == 0, err
    venv = tmp_path / "pipvenv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    env = isolated_env(tmp_path)
    # the venv's own pip upgraded to that release, from the cached wheel: no index is asked
    proc = subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([py, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.stdout.startswith(f"pip {PIP_READS_PYLOCK} "), proc.stdout
    # no --index-url: pip takes every file from the lock's own entries (the local index the test serves)
    proc = subprocess.run([py, "-m", "pip", "install", "--no-cache-dir", "-r", str(out)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Using pylock.toml as a requirements source" in proc.stderr  # pip really read it as a lock
    site = next((venv / "lib").glob("python3.*")) / "site-packages"
    for dist in ("torch-2.1.2", "helperlib-1.1", "fakelib-1.0"):
        assert (site / f"{dist}.dist-info" / "METADATA").is_file(), dist
    # and pip checks the lock's hashes: a tampered one is refused
    text = out.read_text()
    first = re.search(r'sha256 = "([0-9a-f]{64})"', text).group(1)
    bad = setup / "bad" / "pylock.toml"
    bad.parent.mkdir()
    bad.write_text(text.replace(first, "0" * 64))
    proc = subprocess.run([py, "-m", "pip", "install", "--no-cache-dir", "--force-reinstall", "-r", str(bad)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode != 0 and "hash" in (proc.stderr + proc.stdout).lower(), proc.stderr


def test_deepspeed_is_locked_and_megatron_commit_is_not(setup, capsys, index, tmp_path):
    # the "new" stack pins torch 2.8.0 (default build 12.8) and deepspeed; megatron-core comes from a commit
    code, out, err = run_cli(capsys, "lock", "toy", "--model", "new", "--refresh", *idx_args(index))
    assert code == 0, err
    pins = pins_of(out)
    assert pins["deepspeed"] == "==0.13.2" and pins["torch"] == "==2.8.0"
    assert "megatron-core" not in pins and "flash-attn" not in pins
    assert "deepspeed==0.13.2, megatron-core@0123456789abcdef0123456789abcdef01234567, flash-attn==2.8.3" in out
    assert "after installing, run the build steps (moe-env build-steps toymoe --model new --cuda 12.8 --python " in err
    assert "deepspeed 0.13.2" in err and "flash-attn 2.8.3 (flash-attn 2.8.3 publishes flash_attn-2.8.3+cu12torch2.8" in err


def test_network_failure_is_exit_3_and_says_what_works_offline(setup, capsys, index, monkeypatch):
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    shipped = setup / "lockfiles" / "toymoe" / "toy-8x7b-cu121"
    shipped.mkdir(parents=True)
    (shipped / "requirements.txt").write_text("# shipped\ntorch==2.1.2 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    start = time.monotonic()
    code, out, err = run_cli(capsys, "lock", "toy", "--refresh", "--index-url", f"http://127.0.0.1:{port}/simple/",
                             "--timeout", "60")
    assert code == 3, err
    said, error = err.strip().splitlines()
    assert said == "moe-env: resolving toy-8x7b-cu121 online with uv (--refresh asks for a fresh resolution)"
    assert error.startswith("moe-env: error: uv could not reach the package index")
    assert "offline, shipped lockfiles still work: `moe-env lock toymoe --model 8x7b --cuda 12.1` (toy-8x7b-cu121)" in err
    assert out == ""
    assert time.monotonic() - start < 60


def test_pip_tools_cannot_target_another_python(setup, capsys, index):
    other = "3.10" if PY != "3.10" else "3.11"
    code, out, err = run_cli(capsys, "lock", "toy", "--python", other, "--backend", "pip-tools", *idx_args(index))
    assert code == 2
    assert f"pip-tools resolves for the interpreter it runs under (Python {PY}), not {other}" in err
    code, out, err = run_cli(capsys, "lock", "toy", "--format", "pylock", "--backend", "pip-tools")
    assert code == 2 and "--format pylock needs --backend uv" in err


# ---------------------------------------------------------------- shipped, offline


def write_shipped(setup, text):
    folder = setup / "lockfiles" / "toymoe" / "toy-8x7b-cu121"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text(text)
    return folder / "requirements.txt"


SHIPPED = "# moe-env lockfile: toymoe, stack toy-8x7b-cu121\n\ntorch==2.1.2 \\\n    --hash=sha256:" + "b" * 64 + "\n"


def test_shipped_lockfile_offline(setup, capsys, monkeypatch):
    write_shipped(setup, SHIPPED)
    # any index access would fail: nothing listens on port 9, and uv/pip must not even run
    monkeypatch.setenv("MOE_ENV_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PATH", "/nonexistent")
    code, out, err = run_cli(capsys, "lock", "toymoe")
    assert code == 0, err
    assert out == SHIPPED


def test_shipped_lockfile_json_and_explain(setup, capsys):
    path = write_shipped(setup, SHIPPED)
    code, out, _ = run_cli(capsys, "lock", "toy", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["origin"] == "shipped" and doc["shipped"] == str(path)
    assert doc["resolution"]["stack"] == "toy-8x7b-cu121" and doc["text"] == SHIPPED
    assert [s["package"] for s in doc["build_steps"]] == ["flash-attn"]
    code, out, _ = run_cli(capsys, "lock", "toy", "--explain")
    assert code == 0 and "stack    toy-8x7b-cu121" in out and f"shipped: {path}" in out
    assert "flash-attn 2.5.8 publishes no cu122torch2.1cxx11abiFALSE-cp" in out


def test_output_is_atomic_and_not_clobbered(setup, capsys):
    write_shipped(setup, SHIPPED)
    out = setup / "out.txt"
    code, _, err = run_cli(capsys, "lock", "toy", "-o", str(out))
    assert code == 0 and out.read_text() == SHIPPED and "wrote" in err
    code, _, err = run_cli(capsys, "lock", "toy", "-o", str(out))  # byte-identical: fine
    assert code == 0 and "unchanged" in err
    out.write_text("mine\n")
    code, _, err = run_cli(capsys, "lock", "toy", "-o", str(out))
    assert code == 2 and "exists and differs; use --force" in err
    assert out.read_text() == "mine\n"
    code, _, err = run_cli(capsys, "lock", "toy", "-o", str(out), "--force")
    assert code == 0 and out.read_text() == SHIPPED
    assert [p.name for p in setup.iterdir() if p.name.startswith((".out.txt", ".moe-env-"))] == []


@pytest.mark.parametrize("argv, message", [
    (["lock", "nope"], "unknown project 'nope'"),
    (["lock", "toy", "--model", "70b"], "unknown model variant '70b'"),
    (["lock", "toy", "--cuda", "99.9"], "--cuda 99.9: no torch build for CUDA 99.9"),
    (["lock", "toy", "--python", "3.13"], "no known-good toymoe stack runs on Python 3.13"),
    (["lock", "toy", "-o", "/etc/hostname/x.txt"], "/etc/hostname exists and is not a folder"),
    (["lock", "toy", "-o", "/proc/moe-env-test.txt"], "/proc/moe-env-test.txt: cannot write"),
    (["lock", "toy", "-o", "/tmp"], "is a folder"),
])
def test_bad_input_is_one_line_exit_2(setup, capsys, argv, message):
    write_shipped(setup, SHIPPED)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("moe-env: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_cli_subprocess_offline(setup):
    """The real console boundary: a subprocess, its exit code and streams."""
    write_shipped(setup, SHIPPED)
    proc = subprocess.run([sys.executable, "-m", "moe_env", "lock", "toy"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == SHIPPED
    proc = subprocess.run([sys.executable, "-m", "moe_env", "lock", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--refresh" in proc.stdout


def test_regen_writes_every_stack_then_lock_serves_them_offline(setup, capsys, index, monkeypatch):
    from moe_env.lock import regen

    monkeypatch.setenv("MOE_ENV_INDEX_URL", index.index_url)
    monkeypatch.setenv("MOE_ENV_TORCH_INDEX", index.torch_root)
    assert regen.main([]) == 0
    out = capsys.readouterr().out
    assert "2 lockfiles written, 0 failed" in out
    for stack in ("toy-8x7b-cu121", "toy-new-cu128"):
        path = setup / "lockfiles" / "toymoe" / stack / "requirements.txt"
        text = path.read_text()
        assert f"stack {stack}" in text
        assert f"command: python -m moe_env.lock.regen --project toymoe --stack {stack}" in text
    assert regen.main(["--check"]) == 0
    assert "ok" in capsys.readouterr().out
    monkeypatch.setenv("MOE_ENV_INDEX_URL", "http://127.0.0.1:9/simple/")  # offline from here on
    code, out, err = run_cli(capsys, "lock", "toy", "--model", "new")
    assert code == 0 and out == (setup / "lockfiles" / "toymoe" / "toy-new-cu128" / "requirements.txt").read_text()


@pytest.mark.parametrize("driver, gpus, torch_pin", [
    ("580.65.06", "6.1x2", "==2.8.0+cu126"),  # Pascal: cu128 lacks sm_61, cu126 has it
    ("580.65.06", "H100:9.0", "==2.8.0"),  # the stack's own cu128, the default index's build
])
def test_cuda_auto_from_overridden_host_facts(setup, capsys, index, monkeypatch, driver, gpus, torch_pin):
    monkeypatch.setenv("MOE_ENV_CUDA_DRIVER_VERSION", driver)
    monkeypatch.setenv("MOE_ENV_GPUS", gpus)
    code, out, err = run_cli(capsys, "lock", "toy", "--model", "new", "--cuda", "auto", "--refresh", *idx_args(index))
    assert code == 0, err
    assert pins_of(out)["torch"] == torch_pin
    assert f"driver {driver}" in out  # the header says why this build


def test_cuda_auto_blackwell_on_an_old_torch_is_refused(setup, capsys, monkeypatch):
    monkeypatch.setenv("MOE_ENV_CUDA_DRIVER_VERSION", "580.65.06")
    monkeypatch.setenv("MOE_ENV_GPUS", "12.0x8")
    code, out, err = run_cli(capsys, "lock", "toy", "--cuda", "auto")
    assert code == 2 and "has no kernels for sm_120" in err and out == ""


def test_python_from_a_target_interpreter(setup, capsys, venv):
    write_shipped(setup, SHIPPED)
    code, out, err = run_cli(capsys, "lock", "toy", "--python", str(venv.python), "--explain")
    assert code == 0, err
    assert f"Python {PY}" in out  # the venv's interpreter is this Python
    code, out, err = run_cli(capsys, "lock", "toy", "--python", "/nonexistent/python")
    assert code == 2 and "--python /nonexistent/python: cannot run it" in err
