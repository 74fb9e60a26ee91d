"""The no-edit build of MGM's default Dockerfile, on the real stack of its shipped lockfile.

`moe-env dockerfile minigemini --base BASE --no-apt --wheelhouse wheels -o CTX` writes the context;
buildah builds it as written, with `--network none`. Everything the build installs is real: the
lockfile's own files (torch 2.0.1 cp310 with its nvidia-*-cu11 wheels, deepspeed's sdist built in
the image, ~2.3 GB), downloaded once with `pip download --no-deps --require-hashes` into the test
cache ($MOE_ENV_TEST_BASE_CACHE, default ~/.cache/moe-env-test) and reused on later runs; moe-env's
own wheel and dependencies. The one stand-in: flash-attn 2.5.8's wheel is a GitHub release asset,
which neither this machine nor CI can reach, so the test builds a wheel with the real file name
(flash_attn-2.5.8+cu118torch2.0cxx11abiFALSE-cp310-cp310-linux_x86_64.whl) and the real release's
Requires-Dist, holding a tiny `flash_attn` package and a gcc-compiled `flash_attn_2_cuda` CPython
extension (no CUDA code).

The stack is Python 3.10; the Debian base has 3.11 only, and without a python3.10 the Dockerfile
would fetch a uv-managed build (network). So the test derives a local base image that adds this
machine's pyenv CPython 3.10 (same Debian release, so its shared libraries match) as python3.10.
It is skipped, saying why, where no such build exists.

The default base, nvidia/cuda:11.7.1-cudnn8-devel, carries the CUDA 11.7 toolkit that deepspeed
0.13.5's JIT-compiled ops need; its registry is unreachable and no CUDA 11.7 nvcc is installable here.
So the derived base also stands in for that toolkit with what doctor reads of one (never runs): an
`nvcc` on PATH under /usr/local/cuda that answers `-V` as 11.7's does (deepspeed's setup.py asks it) and
compiles nothing, the toolkit's version.json (11.7.1, nvcc 11.7.99) and the two
headers a JIT build includes (empty). Without it --strict stops the build on one true warning,
build.nvcc-missing (tests/test_doctor*.py hold that finding).

The doctor gate in the image (`moe-env doctor minigemini --build --strict`) then probes a real CUDA
torch install with real nvidia-* wheels: it must find torch 2.0.1+cu117 (CUDA 11.7, cuDNN 8.5.0.96,
NCCL 2.14.3) and pass; the image is committed, its size printed, and the judgement read back from it
as JSON.
Timings (download, build, each Dockerfile step) are printed at the end of the module.

Building the real stack first found two lockfile defects, fixed in the matrix (see
tests/test_lock_constraints.py): torch 2.0's cpp_extension needs a setuptools with pkg_resources
(<82, !=70.*; the lock had 84.2.1, and deepspeed's sdist failed in its setup.py), and flash-attn's
own requirement einops was in no lockfile (the air-gapped step could not find it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from docker_fixtures import REPO
from test_docker_build import (  # noqa: F401 - fixtures: the cached base image and a private buildah store
    BASE_IMAGE,
    CACHE,
    SUITE,
    _dependency_wheels,
    _isolation,
    _run,
    _run_isolation,
    base_archive,
    buildah,
)

pytestmark = [pytest.mark.slow, pytest.mark.network]  # network: the one-time download into the cache

STACK = "mgm-8x7b-cu117"
LOCK = REPO / "lockfiles" / "minigemini" / STACK / "requirements.txt"
FLASH_WHEEL = "flash_attn-2.5.8+cu118torch2.0cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"
# flash-attn 2.5.8's setup.py: install_requires=["torch", "einops", "packaging", "ninja"] (release:flash-attn==2.5.8:setup.py:344)
FLASH_REQUIRES = ["torch", "einops", "packaging", "ninja"]
DERIVED = f"{BASE_IMAGE}-py3.10"
TIMINGS = []  # (what, seconds or a note)


def _python310():
    """This machine's pyenv CPython 3.10 (or $MOE_ENV_TEST_PYTHON310), when it was built on the base's Debian."""
    given = os.environ.get("MOE_ENV_TEST_PYTHON310")
    candidates = [Path(given)] if given else sorted(
        (Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions").glob("3.10.*/bin/python3.10"))
    found = [p for p in candidates if p.is_file() and os.access(p, os.X_OK)]
    if not found:
        pytest.skip("no CPython 3.10 build here (pyenv's ~/.pyenv/versions/3.10.*, or $MOE_ENV_TEST_PYTHON310): "
                    "the stack is Python 3.10 and the Debian base image has 3.11 only")
    release = _os_release().get("VERSION_CODENAME", "")
    if release != SUITE:
        pytest.skip(f"this machine is Debian {release or '?'}, the base image {SUITE}: a copied Python 3.10 "
                    "would not find the libraries it was built against")
    return found[-1].resolve()


def _os_release():
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    return dict((k, v.strip('"')) for k, _, v in (ln.partition("=") for ln in text.splitlines()) if k)


def _stack_wheels(py310: Path) -> Path:
    """The shipped lockfile's own files for Python 3.10, downloaded (hash-checked) into the cache once.

    A changed lockfile downloads only what changed (pip keeps files already there), and files the
    lockfile no longer names are removed.
    """
    key = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    dest = CACHE / f"wheels-{STACK}"
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text().strip() == key:
        TIMINGS.append(("download stack files", "cached"))
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # the interpreter of the target itself: its tags pick the files; pip checks every file's sha256
    proc = _run([py310, "-m", "pip", "download", "--no-deps", "--require-hashes", "--progress-bar", "off",
                 "-r", LOCK, "-d", dest], timeout=1800)
    if proc.returncode != 0:
        pytest.skip(f"cannot download the {STACK} lockfile's files (network?): {proc.stderr.strip().splitlines()[-1:]}")
    seconds = time.monotonic() - t0
    wanted = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", LOCK.read_text()))
    for f in dest.iterdir():
        if f.is_file() and f.name != marker.name and _sha256(f) not in wanted:
            f.unlink()
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    marker.write_text(key + "\n")
    TIMINGS.append(("download stack files", f"{seconds:.1f}s, {size / 2**30:.2f} GiB"))
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stand_in_flash_attn(dest: Path, py310: Path) -> Path:
    """A wheel with flash-attn 2.5.8's real cu118/torch2.0 file name and a gcc-built CPython extension."""
    build = dest.parent / "flash-attn-src"
    build.mkdir(exist_ok=True)
    src = build / "flash_attn_2_cuda.c"
    src.write_text(
        '#include <Python.h>\n'
        'static PyObject *fwd(PyObject *self, PyObject *args) { return PyUnicode_FromString("stand-in"); }\n'
        'static PyMethodDef methods[] = {{"fwd", fwd, METH_NOARGS, "stand-in"}, {NULL, NULL, 0, NULL}};\n'
        'static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "flash_attn_2_cuda", NULL, -1, methods};\n'
        'PyMODINIT_FUNC PyInit_flash_attn_2_cuda(void) { return PyModule_Create(&mod); }\n')
    include = subprocess.run([py310, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    so_name = "flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so"
    proc = _run(["gcc", "-shared", "-fPIC", "-O1", f"-I{include}", src, "-o", build / so_name], timeout=120)
    assert proc.returncode == 0, proc.stderr
    version = "2.5.8+cu118torch2.0cxx11abiFALSE"
    info = f"flash_attn-{version}.dist-info"
    contents = {
        "flash_attn/__init__.py": b'__version__ = "2.5.8"\n\nimport flash_attn_2_cuda as _ext  # noqa: F401\n',
        so_name: (build / so_name).read_bytes(),
        f"{info}/METADATA": ("\n".join(["Metadata-Version: 2.1", "Name: flash_attn", f"Version: {version}",
                                        "Requires-Python: >=3.7"] + [f"Requires-Dist: {r}" for r in FLASH_REQUIRES])
                             + "\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: moe-env-tests\nRoot-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n",
        f"{info}/top_level.txt": b"flash_attn\nflash_attn_2_cuda\n",
    }
    record = [f"{rel},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for rel, data in contents.items()] + [f"{info}/RECORD,,"]
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / FLASH_WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel in sorted(contents):
            entry = zipfile.ZipInfo(rel, date_time=(2024, 1, 1, 0, 0, 0))
            entry.external_attr = (0o755 if rel.endswith(".so") else 0o644) << 16
            archive.writestr(entry, contents[rel])
    return path


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # 2.3 GB: a hard link where the cache and the context share a file system
    except OSError:
        shutil.copy(src, dest)


@pytest.fixture(scope="module")
def python310_base(buildah, tmp_path_factory):
    """The Debian base image plus this machine's CPython 3.10 at its own prefix, on PATH as python3.10, and
    the stand-in for the devel image's CUDA 11.7 toolkit (see the module's docstring)."""
    py310 = _python310()
    prefix = py310.parent.parent
    ctx = tmp_path_factory.mktemp("py310-base")
    t0 = time.monotonic()
    # its tests and site-packages stay out (venv and ensurepip need neither); same path, so its RPATH holds
    proc = _run(["tar", "-C", "/", "-cf", ctx / "python.tar", "--exclude", f"{prefix}/lib/python3.10/test",
                 "--exclude", f"{prefix}/lib/python3.10/site-packages/*", str(prefix).lstrip("/")], timeout=300)
    assert proc.returncode == 0, proc.stderr
    toolkit = ctx / "cuda-11.7"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    for header in ("cuda_runtime.h", "curand_kernel.h"):
        (toolkit / "include" / header).write_text("/* stand-in: the test's base has no CUDA toolkit */\n")
    (toolkit / "version.json").write_text(json.dumps(
        {"cuda": {"name": "CUDA SDK", "version": "11.7.1"}, "cuda_nvcc": {"name": "CUDA NVCC", "version": "11.7.99"}}))
    nvcc = toolkit / "bin" / "nvcc"
    # `nvcc -V` answers as CUDA 11.7.1's does (deepspeed's setup.py asks it); it compiles nothing
    nvcc.write_text("#!/bin/sh\ncase \"$1\" in -V|--version)\n"
                    "  printf '%s\\n' 'nvcc: NVIDIA (R) Cuda compiler driver' "
                    "'Cuda compilation tools, release 11.7, V11.7.99' 'Build cuda_11.7.r11.7/compiler.31442593_0'; exit 0;;\n"
                    "esac\necho 'stand-in nvcc: no CUDA compiler in this test image' >&2\nexit 1\n")
    nvcc.chmod(0o755)
    (ctx / "Containerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "ADD python.tar /\n"
        "COPY cuda-11.7 /usr/local/cuda-11.7\n"
        "RUN ln -s cuda-11.7 /usr/local/cuda\n"
        "ENV PATH=/usr/local/cuda/bin:$PATH\n"
        f"RUN ln -s {py310} /usr/local/bin/python3.10 && "
        # the extension modules a stack install needs find their Debian libraries
        "python3.10 -c 'import ssl, ctypes, sqlite3, lzma, bz2, zlib, venv, ensurepip, sys; print(sys.version)'\n")
    proc = _run(buildah + ["bud", "--format", "docker", *_isolation(buildah), "-f", ctx / "Containerfile", "-t", DERIVED, ctx],
                timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    TIMINGS.append(("derive base image with python3.10", time.monotonic() - t0))
    return py310


def _build_streaming(cmd, log_path: Path, timeout: float):
    """Run the build, stamping each Dockerfile step as it starts (buildah prints `STEP n/m: ...`)."""
    steps = []
    t0 = time.monotonic()
    lines = []
    with subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            now = time.monotonic() - t0
            lines.append(line)
            m = re.match(r"^(?:\[\d+/\d+\] )?STEP (\d+)(?:/\d+)?: (.*)", line)
            if m:
                steps.append((now, f"STEP {m.group(1)}: {m.group(2)[:70]}"))
            if now > timeout:
                proc.kill()
                break
        rc = proc.wait()
    total = time.monotonic() - t0
    log_path.write_text("".join(lines))
    per_step = [(name, (steps[i + 1][0] if i + 1 < len(steps) else total) - start) for i, (start, name) in enumerate(steps)]
    return rc, "".join(lines), total, per_step


def test_mgm_default_dockerfile_builds_as_generated(buildah, base_archive, python310_base, tmp_path_factory):
    stack_wheels = _stack_wheels(python310_base)
    ctx = tmp_path_factory.mktemp("mgm-ctx")
    wheels = ctx / "wheels"
    wheels.mkdir()
    t0 = time.monotonic()
    for f in stack_wheels.iterdir():
        if f.name != ".complete":
            _link_or_copy(f, wheels / f.name)
    _stand_in_flash_attn(wheels, python310_base)
    # moe-env's own venv uses the base's python3 (3.11): its dependencies for that Python
    env = {**os.environ, "NO_COLOR": "1"}
    for k in ("MOE_ENV_MATRIX", "MOE_ENV_LOCKFILES"):
        env.pop(k, None)  # the shipped matrix and lockfile, as a user gets them
    proc = _run([sys.executable, "-m", "moe_env", "dockerfile", "minigemini", "--base", DERIVED, "--no-apt",
                 "--wheelhouse", "wheels", "-o", ctx], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dockerfile = ctx / "Dockerfile"
    text = dockerfile.read_text()
    assert f"stack {STACK} (torch 2.0.1, CUDA 11.7, Python 3.10)" in text
    assert (ctx / f"requirements.{STACK}.txt").read_bytes() == LOCK.read_bytes()
    (moe_wheel,) = ctx.glob("moe_env-*.whl")
    for w in _dependency_wheels(moe_wheel, base_archive[1]).glob("*.whl"):
        if not (wheels / w.name).exists():
            _link_or_copy(w, wheels / w.name)
    TIMINGS.append(("context", time.monotonic() - t0))
    digest = hashlib.sha256(dockerfile.read_bytes()).hexdigest()

    tag = "localhost/mgm:default"
    # no --layers: with vfs every committed layer is a full copy of the root file system
    rc, log, total, per_step = _build_streaming(
        buildah + ["bud", "--format", "docker", *_isolation(buildah), "-f", dockerfile, "-t", tag, ctx],
        ctx.parent / "mgm-build.log", timeout=2400)
    TIMINGS.append(("build (no network)", total))
    TIMINGS.extend((f"  {name}", s) for name, s in per_step)
    assert hashlib.sha256(dockerfile.read_bytes()).hexdigest() == digest  # built as generated
    # the real stack went in: torch with its nvidia-*-cu11 wheels, deepspeed's sdist built in the image,
    # the flash-attn step, moe-env in its own venv; then the gate ran on it
    assert re.search(r"Successfully installed .*torch-2\.0\.1", log), log[-4000:]
    assert "nvidia-cudnn-cu11-8.5.0.96" in log and "deepspeed-0.13.5" in log, log[-4000:]
    assert "Successfully installed flash-attn-2.5.8+cu118torch2.0cxx11abi" in log, log[-4000:]
    gate = "STEP 11/13: RUN moe-env doctor minigemini --python /opt/venv/bin/python --build --strict"
    assert gate in log, log[-4000:]
    report = log.split(gate, 1)[1]
    assert "torch:        2.0.1+cu117 (CUDA 11.7; archs sm_37 sm_50 sm_60 sm_70 sm_75 sm_80 sm_86; cuDNN 8.5.0.96" in report
    assert "NCCL:         2.14.3 (distribution nvidia-nccl-cu11)" in report

    assert "nvcc:" in report and "11.7" in report.split("nvcc:", 1)[1].splitlines()[0], report[-4000:]
    assert rc == 0, report[-4000:]  # the gate passed under --strict: no error, no warning
    # the image, and the same judgement as JSON from it
    ctr = _run(buildah + ["from", tag]).stdout.strip()
    try:
        size = _container_size(buildah, ctr)
        TIMINGS.append(("image file system", f"{size / 2**30:.2f} GiB"))
        out = _run(buildah + ["run", *_run_isolation(), ctr, "--", "moe-env", "doctor", "minigemini",
                              "--python", "/opt/venv/bin/python", "--build", "--json"], timeout=300)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        doc = json.loads(out.stdout)
        torch = doc["environment"]["torch"]
        assert torch["version"] == "2.0.1+cu117" and torch["cuda"] == "11.7", torch
        assert not [f for f in doc["findings"] if f["severity"] in ("error", "warning") and not f.get("deferred")]
    finally:
        _run(buildah + ["rm", ctr])


def _container_size(buildah_cmd, ctr) -> int:
    mount = _run(buildah_cmd + ["mount", ctr]).stdout.strip()
    try:
        du = _run(["du", "-sb", mount], timeout=600).stdout.split()
        return int(du[0]) if du else 0
    finally:
        _run(buildah_cmd + ["umount", ctr])


def teardown_module(module):
    if TIMINGS:
        sys.stderr.write("\n" + "\n".join(
            f"mgm-docker-build: {what}: {s:.1f}s" if isinstance(s, float) else f"mgm-docker-build: {what}: {s}"
            for what, s in TIMINGS) + "\n")
