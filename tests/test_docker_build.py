"""A real container build of a generated Dockerfile: the doctor gate fails a broken stack and passes a good one.

buildah (vfs storage, no daemon) builds on a base image made locally with debootstrap
(.ci/docker-base.sh; cached in $MOE_ENV_TEST_BASE_CACHE, default ~/.cache/moe-env-test), with no
network: every wheel comes from a wheelhouse in the build context (the toy project's tiny wheels,
moe-env's wheel built from this checkout, and moe-env's dependencies, downloaded once into the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docker_fixtures import REPO, toy_env, write_toy_lockfiles, write_toy_matrix

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("MOE_ENV_TEST_BASE_CACHE") or Path.home() / ".cache" / "moe-env-test")
SUITE = os.environ.get("MOE_ENV_DEBIAN_SUITE", "bookworm")
ARCHIVE = CACHE / f"base-{SUITE}.oci.tar"
BASE_IMAGE = f"localhost/moe-env-test-base:{SUITE}"
TIMINGS = []  # (what, seconds), printed at the end of the module


def _run(cmd, timeout=900, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def base_archive():
    missing = [t for t in ("buildah", "runc") if shutil.which(t) is None]
    if not ARCHIVE.is_file():
        if os.geteuid() != 0:
            pytest.skip(f"no base image at {ARCHIVE} and not root; run .ci/docker-base.sh as root")
        t0 = time.monotonic()
        proc = _run(["bash", REPO / ".ci" / "docker-base.sh"], timeout=1200, env={**os.environ, "MOE_ENV_TEST_BASE_CACHE": str(CACHE)})
        if proc.returncode != 0:
            pytest.skip(f".ci/docker-base.sh failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        TIMINGS.append(("debootstrap base image", time.monotonic() - t0))
    elif missing:
        pytest.skip(f"{', '.join(missing)} not installed; run .ci/docker-base.sh as root")
    if os.geteuid() != 0:
        pytest.skip("buildah with vfs storage and runc isolation needs root here")
    python = (ARCHIVE.parent / (ARCHIVE.name + ".python")).read_text().strip()
    return ARCHIVE, python


@pytest.fixture(scope="module")
def buildah(base_archive, tmp_path_factory):
    """buildah with a private storage root, the base image loaded into it."""
    root = tmp_path_factory.mktemp("buildah")
    cmd = ["buildah", "--root", root / "storage", "--runroot", root / "run", "--storage-driver", "vfs"]
    t0 = time.monotonic()
    proc = _run(cmd + ["pull", "-q", f"oci-archive:{base_archive[0]}"])
    assert proc.returncode == 0, proc.stderr
    image_id = proc.stdout.strip().splitlines()[-1]
    assert _run(cmd + ["tag", image_id, BASE_IMAGE]).returncode == 0
    TIMINGS.append(("load base image", time.monotonic() - t0))
    yield cmd
    t0 = time.monotonic()
    # vfs layers are plain folders: no need to ask buildah (rm is faster than shutil.rmtree here)
    if _run(["rm", "-rf", root], timeout=900).returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
    TIMINGS.append(("remove storage", time.monotonic() - t0))


def _isolation(buildah_cmd):
    """runc isolation gives `--network none`; chroot cannot (buildah refuses), so it is the fallback."""
    want = os.environ.get("MOE_ENV_TEST_ISOLATION", "oci")
    if want == "chroot":
        return ["--isolation", "chroot"]
    return ["--isolation", "oci", "--runtime", "runc", "--network", "none"]


def _dependency_wheels(moe_env_wheel: Path, python: str) -> Path:
    """moe-env's dependencies as wheels for the base image's Python, downloaded once into the cache."""
    reqs = sorted(_requires_dist(moe_env_wheel))
    key = hashlib.sha256(("\n".join(reqs) + python).encode()).hexdigest()[:12]
    dest = CACHE / f"wheels-py{python}-{key}"
    if (dest / ".complete").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    proc = _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--python-version", python,
                 "--platform", "manylinux2014_x86_64", "--implementation", "cp", "-d", dest, *reqs], env=env, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot download moe-env's dependency wheels (network?): {proc.stderr.strip().splitlines()[-1:]}")
    (dest / ".complete").write_text("\n".join(reqs) + "\n")
    return dest


def _requires_dist(wheel: Path):
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            out.append(line.split(":", 1)[1].strip())
    return out


@pytest.fixture(scope="module")
def context(tmp_path_factory, base_archive):
    """A build context: toy matrix, lockfiles, and a wheelhouse with everything pip will need."""
    root = tmp_path_factory.mktemp("ctx")
    python = base_archive[1]
    matrix = write_toy_matrix(root / "matrix", python)
    wheels = root / "wheels"
    write_toy_lockfiles(root / "lockfiles", wheels)
    t0 = time.monotonic()
    out = tmp_path_factory.mktemp("moe-env-wheel")
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO],
                env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (moe_wheel,) = out.glob("moe_env-*.whl")
    shutil.copy(moe_wheel, wheels)
    for w in _dependency_wheels(moe_wheel, python).glob("*.whl"):
        shutil.copy(w, wheels)
    TIMINGS.append(("wheelhouse", time.monotonic() - t0))
    return root, matrix


def _generate(ctx: Path, matrix: Path, stack: str) -> Path:
    folder = ctx / stack
    folder.mkdir(exist_ok=True)
    for name in ("wheels", "matrix"):
        if not (folder / name).exists():
            shutil.copytree(ctx / name, folder / name)
    env = {**os.environ, **toy_env(matrix, ctx / "lockfiles")}
    proc = _run([sys.executable, "-m", "moe_env", "dockerfile", "toymoe", "--model", "8x1b", "--stack", stack,
                 "--base", BASE_IMAGE, "--no-apt", "--wheelhouse", "wheels", "--matrix-dir", "matrix",
                 "-o", folder / "Dockerfile", "--force"], env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return folder


def _build(buildah_cmd, folder: Path, tag: str):
    t0 = time.monotonic()
    # no --layers: with vfs every committed layer is a full copy of the root file system
    # --format docker: the OCI format drops SHELL, and the build steps are written for bash
    proc = _run(buildah_cmd + ["bud", "--format", "docker", *_isolation(buildah_cmd), "-f", folder / "Dockerfile", "-t", tag, folder],
                timeout=1200)
    TIMINGS.append((f"build {tag}", time.monotonic() - t0))
    return proc


def test_doctor_gate_passes_a_good_stack(buildah, context):
    ctx, matrix = context
    folder = _generate(ctx, matrix, "toy-good")
    proc = _build(buildah, folder, "localhost/toy:good")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "moe-env doctor toymoe --model 8x1b" in log  # the gate ran
    # the image carries the stack: the lockfile's deepspeed, moe-env on PATH, the doctor entrypoint
    ctr = _run(buildah + ["from", "localhost/toy:good"]).stdout.strip()
    try:
        out = _run(buildah + ["run", *_run_isolation(), ctr, "--", "/opt/venv/bin/python", "-c",
                              "import deepspeed.utils as u; print(u.set_z3_leaf_modules.__name__)"])
        assert out.returncode == 0 and "set_z3_leaf_modules" in out.stdout, out.stderr
        info = json.loads(_run(buildah + ["inspect", "--type", "image", "localhost/toy:good"]).stdout)
        entry = (info.get("Docker") or {}).get("config", {}).get("Entrypoint") or info["OCIv1"]["config"]["Entrypoint"]
        assert "moe-env doctor toymoe" in entry[2] and "--strict" in entry[2]
        # container start: the entrypoint runs the full doctor (no --build), then the command.
        # Told the node's GPUs and driver, it passes and the command runs; MOE_ENV_DOCTOR=0 skips it.
        node = ["--env", "MOE_ENV_GPUS=8.0x8", "--env", "MOE_ENV_CUDA_DRIVER_VERSION=550.54.15"]
        # buildah run gives the container a 64 MiB /dev/shm, Docker's default: with 8 GPUs that is caught
        small = _run(buildah + ["run", *_run_isolation(), *node, ctr, "--", *entry, "echo", "command-ran"])
        assert small.returncode == 1 and "host.shm-too-small" in small.stdout, small.stdout + small.stderr
        # a node started with --shm-size=16g (stated, as buildah run cannot size it) passes and the command runs
        node += ["--env", "MOE_ENV_SHM_SIZE=16G"]
        started = _run(buildah + ["run", *_run_isolation(), *node, ctr, "--", *entry, "echo", "command-ran"])
        assert started.returncode == 0 and "command-ran" in started.stdout, started.stdout + started.stderr
        assert "moe-env doctor: /opt/venv/bin/python" in started.stdout
        # on a node whose driver is too old for torch's CUDA 12.1, the start-up check stops the command
        old = ["--env", "MOE_ENV_GPUS=8.0x8", "--env", "MOE_ENV_CUDA_DRIVER_VERSION=470.57.02", "--env", "MOE_ENV_SHM_SIZE=16G"]
        stopped = _run(buildah + ["run", *_run_isolation(), *old, ctr, "--", *entry, "echo", "command-ran"])
        assert stopped.returncode == 1 and "command-ran" not in stopped.stdout, stopped.stdout + stopped.stderr
        assert "470.57.02" in stopped.stdout
        skipped = _run(buildah + ["run", *_run_isolation(), "--env", "MOE_ENV_DOCTOR=0", ctr, "--", *entry, "echo", "command-ran"])
        assert skipped.returncode == 0 and skipped.stdout.strip() == "command-ran", skipped.stdout + skipped.stderr
    finally:
        _run(buildah + ["rm", ctr])


def _run_isolation():
    return ["--isolation", "chroot"] if os.environ.get("MOE_ENV_TEST_ISOLATION") == "chroot" else ["--runtime", "runc", "--network", "none"]


def test_doctor_gate_fails_a_broken_stack(buildah, context):
    ctx, matrix = context
    folder = _generate(ctx, matrix, "toy-broken")
    proc = _build(buildah, folder, "localhost/toy:broken")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-4000:]
    # it failed at the gate, for the reason the matrix gives, after everything else installed
    assert "moe-env doctor toymoe --model 8x1b" in log
    assert "set_z3_leaf_modules" in log, log[-4000:]
    assert "Successfully installed deepspeed-0.12.6" in log


def test_multi_stage_build_carries_the_venv_into_the_runtime_stage(buildah, context):
    """A source-build step runs in the build stage; the runtime stage gets /opt/venv and passes the gate.

    The step is the test's own (installing a tiny `toyext` wheel; no compiler in this base image);
    the devel and runtime images are the same Debian base under two names.
    """
    from types import SimpleNamespace

    from docker_fixtures import make_wheel
    from moe_env.docker import DockerOptions, plan_dockerfile, render_dockerfile
    from moe_env.matrix.loader import load_matrix
    from moe_env.resolver import resolve

    ctx, matrix_dir = context
    runtime_name = BASE_IMAGE.rsplit(":", 1)[0] + ":runtime"
    assert _run(buildah + ["tag", BASE_IMAGE, runtime_name]).returncode == 0
    folder = _generate(ctx, matrix_dir, "toy-good")  # the context: wheels, matrix, lockfile
    make_wheel(folder / "wheels", "toyext", "1.0")
    matrix = load_matrix(matrix_dir)
    resolution = resolve(matrix, "toymoe", variant="8x1b")
    step = SimpleNamespace(
        package="toyext", reason="the test's stand-in for a compiled extension",
        env={"TORCH_CUDA_ARCH_LIST": "7.0"},
        # bash (SHELL is honoured), the --gpu-arch list, and the lockfile's torch before building
        preconditions=['[[ -n "$BASH_VERSION" ]]', '[ "$TORCH_CUDA_ARCH_LIST" = "8.0;9.0" ]', '"$PYTHON" -c "import torch"'],
        commands=['"$PYTHON" -m pip install --no-deps toyext==1.0'],
        verify=['"$PYTHON" -c "import toyext"'],
    )
    options = DockerOptions(gpu_archs=["8.0", "9.0"], base=BASE_IMAGE, apt=False, wheelhouse="wheels",
                            matrix_dir="matrix", lockfile=f"requirements.{resolution.stack.id}.txt")
    plan = plan_dockerfile(matrix, resolution, [step], options)
    plan.runtime_image = runtime_name  # two names, so the plan has two stages
    assert plan.multi_stage
    (folder / "Dockerfile").write_text(render_dockerfile(plan))
    proc = _build(buildah, folder, "localhost/toy:multi")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "[1/2] STEP" in log and "[2/2] STEP" in log  # the build stage, then the runtime stage
    assert "moe-env doctor toymoe --model 8x1b" in log
    ctr = _run(buildah + ["from", "localhost/toy:multi"]).stdout.strip()
    try:
        out = _run(buildah + ["run", *_run_isolation(), ctr, "--", "/opt/venv/bin/python", "-c",
                              "import toyext, deepspeed; print('ok', deepspeed.__version__)"])
        assert out.returncode == 0 and "ok 0.13.2" in out.stdout, out.stderr
    finally:
        _run(buildah + ["rm", ctr])


def teardown_module(module):
    if TIMINGS:
        sys.stderr.write("\n" + "\n".join(f"docker-build timing: {what}: {s:.1f}s" for what, s in TIMINGS) + "\n")
