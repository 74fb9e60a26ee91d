"""lock and doctor judge a host the same way; lock answers offline or says it needs the network.

The real matrix and the shipped lockfiles; hosts are stated through the documented MOE_ENV_*
overrides (CLI runs in a subprocess) or as HostInfo (the property test, in process).
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_env.environment import GPU, HostInfo
from moe_env.errors import UsageError
from moe_env.lock.as_env import environment_from_locked, judge, read_locked
from moe_env.lock.gate import LockRefused, choose, errors, locked_from_resolution
from moe_env.lock.shipped import shipped_lockfile
from moe_env.matrix.loader import load_matrix

MATRIX = load_matrix()
STACKS = [(p.name, s) for p in MATRIX.projects.values() for s in p.stacks]
SHIPPED = [(p, s) for p, s in STACKS if shipped_lockfile(p, s)]


def cli(*argv, env=None, timeout=60):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    base.update({"MOE_ENV_NVCC_VERSION": "none", "MOE_ENV_GPUS": "none", "NO_COLOR": "1"})
    base.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "moe_env", *argv], capture_output=True, text=True, timeout=timeout, env=base)
    return proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------- every project ships a lock from the default index


def test_every_project_ships_its_default_stack_and_it_keeps_the_upstream_torch():
    for project in MATRIX.projects.values():
        code, out, err = cli("lock", project.name, "--offline")
        assert code == 0, err
        assert out.startswith(f"# moe-env lockfile: {project.name} ")
    code, out, _ = cli("lock", "minigemini", "--offline")
    assert "stack mgm-8x7b-cu117\n" in out.splitlines(True)[0] and "\ntorch==2.0.1 \\\n" in out
    assert "\ndeepspeed==0.13.5 \\\n" in out  # the one cited departure (set_z3_leaf_modules)
    code, out, _ = cli("lock", "moe-llava", "--offline")
    for pin in ("torch==2.0.1", "deepspeed==0.9.5", "transformers==4.37.0"):
        assert f"\n{pin} \\\n" in out


def test_the_cu117_lock_says_which_gpus_it_serves_and_what_to_run_for_h100():
    text = shipped_lockfile("minigemini", next(s for p, s in SHIPPED if s.id == "mgm-8x7b-cu117")).read_text()
    gpus = [ln for ln in text.splitlines() if ln.startswith("# GPUs: ")]
    assert gpus and "sm_86" in gpus[0] and "none for sm_90 (" in gpus[0] and "H100" in gpus[0]
    assert "# for sm_90: `moe-env lock minigemini --model 8x7b --cuda 12.1` (stack mgm-8x7b-cu121, ships a lockfile, offline)" in text
    code, out, _ = cli("lock", "mgm", "--explain")
    assert code == 0 and "none for sm_90" in out and "--cuda 12.1" in out


def test_matrix_list_marks_the_stacks_that_ship():
    code, out, _ = cli("matrix", "list")
    assert code == 0
    assert "stack mgm-8x7b-cu117:" in out and "stack megatron-mixtral-cu130:" in out
    line = {ln.split(":")[0].strip(): ln for ln in out.splitlines() if ln.strip().startswith("stack ")}
    assert line["stack mgm-8x7b-cu117"].endswith("ships a lockfile (offline)")
    assert line["stack megatron-mixtral-cu130"].endswith("fresh resolution (network)")
    doc = json.loads(cli("matrix", "list", "--json")[1])
    ships = {s["id"]: s["shipped"] for p in doc["projects"] for s in p["stacks"]}
    assert ships["moe-llava-cu117"] is True and ships["moe-llava-cu118"] is False


# ---------------------------------------------------------------- offline, and failing fast without a network


def closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("argv", [["megatron", "--cuda", "13.0"], ["mgm", "--cuda", "cpu"], ["mgm", "--refresh"]])
def test_offline_fails_fast_naming_what_ships_and_the_command_to_resolve(argv, tmp_path):
    proxy = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    code, out, err = cli("lock", *argv, "--offline", env={"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "ALL_PROXY": proxy})
    took = time.monotonic() - start
    assert code == 3 and out == ""
    assert err.startswith("moe-env: error: --offline: ") and "needs a fresh resolution" in err
    assert "lockfiles ship for " in err and "resolve this one online with `moe-env lock " in err
    assert len(err.strip().splitlines()) == 1
    assert took < 10  # never waited on a network


def test_without_offline_it_says_it_resolves_online_and_an_unreachable_index_fails_in_seconds(tmp_path):
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "ALL_PROXY": proxy, "UV_CACHE_DIR": str(tmp_path / "uv"),
           "UV_NO_CONFIG": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    start = time.monotonic()
    code, out, err = cli("lock", "megatron", "--cuda", "13.0", env=env, timeout=120)
    took = time.monotonic() - start
    assert code == 3, err
    said, error = err.strip().splitlines()
    assert said.startswith("moe-env: resolving megatron-mixtral-cu130 online with uv (") and "PyTorch index" in said
    assert error.startswith("moe-env: error: uv could not reach the package index")
    assert took < 10, f"{took:.1f} s to fail"  # was 13-19 s of retries


def test_uv_offline_refresh_is_a_network_error_not_an_unsatisfiable_stack(tmp_path):
    env = {"UV_OFFLINE": "1", "UV_CACHE_DIR": str(tmp_path / "empty-cache"), "UV_NO_CONFIG": "1"}
    code, out, err = cli("lock", "moe-llava", "--refresh", env=env)
    assert code == 3, err
    assert "UV_OFFLINE=1 is set" in err and "found no versions" not in err


# ---------------------------------------------------------------- one judgement


V100 = {"MOE_ENV_GPUS": "V100:7.0x8", "MOE_ENV_CUDA_DRIVER_VERSION": "535.54.03"}


def test_v100_mgm_8x7b_lock_refuses_with_doctors_own_bf16_finding(tmp_path):
    code, out, err = cli("lock", "mgm", "--cuda", "auto", env=V100)
    assert code == 1 and out == ""
    assert "minigemini.mgm-gpu-bf16" in err and "V100 (sm_70)" in err
    lock = shipped_lockfile("minigemini", next(s for p, s in SHIPPED if s.id == "mgm-8x7b-cu117"))
    code, out, _ = cli("doctor", "--from-lock", str(lock), "--json", env=V100)
    assert code == 1
    ids = {f["id"] for f in json.loads(out)["findings"] if f["severity"] == "error"}
    assert "minigemini.mgm-gpu-bf16" in ids
    assert not (tmp_path / "x").exists()
    code, _, err = cli("lock", "mgm", "--cuda", "auto", "-o", str(tmp_path / "x" / "lock.txt"), env=V100)
    assert code == 1 and not (tmp_path / "x").exists()  # nothing written


def test_driver_470_gives_the_same_minor_compat_warning_in_lock_and_doctor(tmp_path):
    env = {"MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_CUDA_DRIVER_VERSION": "470.82.01"}
    out_file = tmp_path / "lock.txt"
    code, _, err = cli("lock", "moe-llava", "--cuda", "auto", "--offline", "-o", str(out_file), env=env)
    assert code == 0, err
    assert "warning torch.driver-minor-compat" in err
    code, out, _ = cli("doctor", "--from-lock", str(out_file), "--json", env=env)
    warnings = {f["id"] for f in json.loads(out)["findings"] if f["severity"] == "warning"}
    assert code == 0 and "torch.driver-minor-compat" in warnings


def test_h100_default_lock_moves_to_a_stack_that_carries_sm_90():
    code, out, err = cli("lock", "mgm", "--offline", env={"MOE_ENV_GPUS": "H100:9.0x8", "MOE_ENV_CUDA_DRIVER_VERSION": "550.54.15"})
    assert code == 0, err
    assert "stack mgm-8x7b-cu121\n" in out.splitlines(True)[0]


def test_doctor_from_lock_bad_input_is_one_line():
    code, out, err = cli("doctor", "--from-lock", "/nonexistent/lock.txt")
    assert code == 2 and err.startswith("moe-env: error: ") and len(err.strip().splitlines()) == 1


HOSTS = st.builds(
    lambda cc, n, driver, nvcc, build: HostInfo(
        driver_version=f"{driver}.00" if driver else None,
        gpus=[GPU(index=i, name=f"GPU sm_{cc.replace('.', '')}", compute_capability=cc) for i in range(n)],
        nvcc_version=nvcc, build_mode=build),
    st.sampled_from(["6.0", "6.1", "7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]),
    st.integers(0, 2),
    st.one_of(st.none(), st.integers(450, 580)),
    st.sampled_from([None, "11.7", "11.8", "12.1", "12.4", "12.8", "13.0"]),
    st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pv=st.sampled_from([(p, s) for p, s in STACKS]), host=HOSTS,
       cuda=st.sampled_from([None, "auto", "11.8", "12.1", "12.8", "13.0", "cpu"]))
def test_property_lock_succeeds_implies_doctor_from_lock_has_no_errors(pv, host, cuda):
    project, stack = pv
    variant = stack.variants[0] if stack.variants else None
    env = type("E", (), {"host": host})() if cuda == "auto" else None
    try:
        judged = choose(MATRIX, project, host, variant=variant, cuda=cuda, env=env)
    except (LockRefused, UsageError):
        return  # lock refused: nothing to hold it to
    r = judged.resolution
    assert not errors(judged.findings)
    path = shipped_lockfile(project, r.stack) if r.native else None
    if path is not None:  # the real lockfile lock would print, judged as doctor --from-lock reads it
        locked = read_locked(path.read_text(encoding="utf-8"), str(path))
    else:  # a fresh resolution: at least the stack's pins, as the lockfile pins them
        locked = locked_from_resolution(r)
        locked.variants = [r.variant.id] if r.variant else []
    env_ = environment_from_locked(MATRIX, locked, host)
    findings = judge(MATRIX, env_, locked.project or project, locked.variants or None)
    assert not errors(findings), [(f.id, f.seen) for f in errors(findings)]


def test_a_gpu_less_machines_toolkit_is_not_judged_unless_stated(tmp_path):
    """lock and doctor --from-lock share one host rule: a CUDA 13 nvcc on a machine without driver or GPU
    (CI, a login node) says nothing about the training nodes; stated, or beside a GPU, it is judged."""
    if os.path.exists("/sys/module/nvidia/version") or os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    nvcc = bindir / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "MOE_ENV_GPUS": "none"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    run = lambda extra: subprocess.run([sys.executable, "-m", "moe_env", "lock", "mgm", "--offline"],  # noqa: E731
                                       capture_output=True, text=True, timeout=60, env={**base, **env, **extra})
    assert run({}).returncode == 0
    stated = run({"MOE_ENV_NVCC_VERSION": "13.0"})
    assert stated.returncode == 1 and "build.nvcc-cuda-major-mismatch" in stated.stderr
    with_gpu = run({"MOE_ENV_GPUS": "H100:9.0x8", "MOE_ENV_CUDA_DRIVER_VERSION": "550.54.15"})
    assert with_gpu.returncode == 1 and "nvcc 13.0" in with_gpu.stderr
