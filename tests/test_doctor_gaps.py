"""Issue 11: the failures every MoE user hits, caught by `moe-env doctor` from static evidence.

Real venvs with fake distributions the tests write (tests/fakes.py), probed across the process boundary
with the shipped matrix; host facts stated through MOE_ENV_* and a host root the tests build.
"""

from __future__ import annotations

import json

import pytest

from doctor_support import add_deepspeed, add_plain, add_torch, moe_env_cli
from moe_env.lock.indexes import torch_index_url

H100_OLD_DRIVER = {"MOE_ENV_GPUS": "H100:9.0x8", "MOE_ENV_CUDA_DRIVER_VERSION": "535.104.05"}


def run(args, env=None):
    res = moe_env_cli(["doctor", *args], env=env)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    return res


def run_json(args, env=None):
    res = run([*args, "--json"], env)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def by_id(doc):
    return {f["id"]: f for f in doc["findings"]}


def cpu_torch_venv(venv, version="2.13.0+cpu", hip=None):
    """torch's dist-info and the torch/version.py a CPU (or ROCm) wheel ships, plus MGM / MoE-LLaVA on top."""
    add_torch(venv, version, None, requires=[])
    if hip:
        version_py = venv.site / "torch" / "version.py"
        version_py.write_text(version_py.read_text().replace("hip: Optional[str] = None", f"hip: Optional[str] = {hip!r}"))
    add_deepspeed(venv, "0.14.4", z3_leaf=True, built_torch="2.13", requires=[])
    add_plain(venv, "transformers", "4.37.0")
    add_plain(venv, "accelerate", "0.21.0")
    add_plain(venv, "pydantic", "1.10.13")
    add_plain(venv, "open-clip-torch", "2.24.0", package="open_clip")
    return venv


# ---------------------------------------------------------------- torch itself


@pytest.mark.parametrize("project", ["mgm", "moe-llava"])
def test_cpu_torch_on_a_stated_gpu_host_is_an_error_with_the_cuda_build_to_install(venv, project):
    cpu_torch_venv(venv)
    code, doc = run_json([project, "--python", str(venv.python)], H100_OLD_DRIVER)
    assert code == 1
    f = by_id(doc)["torch.cpu-build-on-gpu-host"]
    assert f["severity"] == "error" and "2.13.0+cpu" in f["title"]
    # what `pip install torch==2.13.0` gives (the matrix's default_cuda), and why it does not fit driver 535
    assert "`pip install torch==2.13.0` from the default index gives its CUDA 13.0 build" in f["seen"]
    assert "535.104.05" in f["seen"]
    # the newest CUDA build of 2.13 that driver 535 runs: 12.6, under CUDA 12 minor-version compatibility
    assert f["fix"] == f"pip install 'torch==2.13.0+cu126' --index-url {torch_index_url('cu126')}"
    assert f["requirement"] == "torch==2.13.0+cu126" and f["index_url"] == torch_index_url("cu126")
    assert any("torch/cuda/__init__.py" in s for s in f["sources"])


def test_cpu_torch_with_a_new_driver_gets_the_default_index_build(venv):
    cpu_torch_venv(venv)
    code, doc = run_json(["mgm", "--python", str(venv.python)],
                         {"MOE_ENV_GPUS": "H100:9.0x8", "MOE_ENV_CUDA_DRIVER_VERSION": "580.65.06"})
    f = by_id(doc)["torch.cpu-build-on-gpu-host"]
    assert "which driver 580.65.06 runs" in f["seen"] and f["requirement"] == "torch==2.13.0+cu130"


def test_rocm_torch_on_an_nvidia_host_is_an_error(venv):
    cpu_torch_venv(venv, version="2.13.0+rocm6.4", hip="6.4.43482")
    code, doc = run_json(["mgm", "--python", str(venv.python)], H100_OLD_DRIVER)
    f = by_id(doc)["torch.rocm-build-on-nvidia-host"]
    assert f["severity"] == "error" and "ROCm" in f["title"] and "cu126" in f["fix"]
    assert "torch.cpu-build-on-gpu-host" not in by_id(doc)


def test_cpu_torch_in_build_mode_for_a_gpu_project_is_an_error_without_gpus(venv):
    cpu_torch_venv(venv)
    code, doc = run_json(["mgm", "--build", "--python", str(venv.python)], {"MOE_ENV_GPUS": "none"})
    f = by_id(doc)["torch.cpu-build-on-gpu-host"]
    assert f["severity"] == "error" and not f["deferred"] and "--build" in f["seen"]
    assert f["requirement"] == "torch==2.13.0+cu130"  # no driver to judge: the default index's build
    assert code == 1


def test_cpu_torch_on_a_cpu_node_is_a_warning_for_a_project_and_nothing_without_one(venv):
    cpu_torch_venv(venv)
    code, doc = run_json(["mgm", "--python", str(venv.python)], {"MOE_ENV_GPUS": "none"})
    assert by_id(doc)["torch.cpu-build-for-gpu-project"]["severity"] == "warning"
    assert "torch.cpu-build-on-gpu-host" not in by_id(doc)


def test_missing_torch_is_one_error_for_a_project(venv):
    add_deepspeed(venv, "0.14.4", z3_leaf=True, requires=["torch", "hjson"])
    add_plain(venv, "mgm", "1.0.0")
    code, doc = run_json(["--python", str(venv.python)], H100_OLD_DRIVER)
    found = by_id(doc)
    assert found["torch.missing"]["severity"] == "error" and code == 1
    assert "deepspeed 0.14.4" in found["torch.missing"]["seen"]
    assert found["torch.missing"]["requirement"] == "torch==2.0.1"  # MGM's pin
    # one finding for the one problem: no deps.missing line for torch besides it
    assert not [f for f in doc["findings"] if f["id"] == "deps.missing" and "`torch`" in f["title"]]
    assert [f for f in doc["findings"] if f["id"] == "deps.missing" and "`hjson`" in f["title"]]


def test_missing_torch_generic_checks_only_when_something_requires_it(venv_factory):
    needs = venv_factory()
    add_plain(needs, "accelerate", "0.21.0", requires=["torch>=1.10.0", "numpy"])
    code, doc = run_json(["--python", str(needs.python)])
    assert doc["project"] is None
    assert by_id(doc)["torch.missing"]["severity"] == "error" and code == 1
    assert "accelerate 0.21.0" in by_id(doc)["torch.missing"]["seen"]
    plain = venv_factory()
    add_plain(plain, "numpy", "1.26.4")
    code, doc = run_json(["--python", str(plain.python)])
    assert "torch.missing" not in by_id(doc) and code == 0


def test_megatron_without_megatron_core_is_an_error_unless_a_checkout_is_on_pythonpath(venv, tmp_path):
    add_torch(venv, "2.6.0+cu124", "12.4", requires=[])
    env = {"MOE_ENV_GPUS": "H100:9.0x8", "MOE_ENV_NVCC_VERSION": "12.4"}
    code, doc = run_json(["megatron", "--python", str(venv.python)], env)
    f = by_id(doc)["megatron.megatron-core-installed"]
    assert f["severity"] == "error" and any("pretrain_gpt.py:16" in s for s in f["sources"])
    checkout = tmp_path / "Megatron-LM"
    (checkout / "megatron" / "core").mkdir(parents=True)
    (checkout / "megatron" / "__init__.py").write_text("")
    (checkout / "megatron" / "core" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    code, doc = run_json(["megatron", "--python", str(venv.python)], {**env, "PYTHONPATH": str(checkout)})
    assert "megatron.megatron-core-installed" not in by_id(doc)


def test_xtuner_without_xtuner_or_mmengine_reports_both(venv):
    add_torch(venv, "2.3.1+cu121", "12.1", requires=[])
    code, doc = run_json(["xtuner", "--python", str(venv.python)], {"MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_NVCC_VERSION": "12.1"})
    found = by_id(doc)
    assert found["xtuner.xtuner-installed"]["severity"] == "error"
    assert found["xtuner.mmengine-min"]["severity"] == "error" and "not installed" in found["xtuner.mmengine-min"]["seen"]


# ---------------------------------------------------------------- host facts


def _cuda_venv(venv):
    """torch cu121 with a deepspeed that has no pre-built ops: something must compile at first use."""
    add_torch(venv, "2.1.2+cu121", "12.1", requires=[])
    add_deepspeed(venv, "0.14.4", z3_leaf=True, requires=[])
    return venv


def test_cuda_home_set_but_missing_is_an_error_when_something_must_compile(venv, tmp_path):
    _cuda_venv(venv)
    gone = tmp_path / "no-such-cuda"
    code, doc = run_json(["--python", str(venv.python)], {"CUDA_HOME": str(gone), "MOE_ENV_GPUS": "A100:8.0x8"})
    f = by_id(doc)["host.cuda-home-missing"]
    assert f["severity"] == "error" and str(gone) in f["seen"] and "JIT" in f["seen"]
    assert "build.nvcc-missing" not in by_id(doc)  # one finding for the one problem
    assert doc["environment"]["host"]["cuda_home_exists"] is False


def test_cuda_home_without_the_jit_headers_is_an_error(venv, tmp_path):
    _cuda_venv(venv)
    toolkit = tmp_path / "cuda-nvcc-only"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("/* */\n")
    code, doc = run_json(["--python", str(venv.python)], {"CUDA_HOME": str(toolkit), "MOE_ENV_NVCC_VERSION": "12.1"})
    f = by_id(doc)["host.cuda-headers-missing"]
    assert f["severity"] == "error" and "include/curand_kernel.h" in f["seen"] and "cuda_runtime.h" not in f["seen"]
    assert doc["environment"]["host"]["cuda_headers_missing"] == ["include/curand_kernel.h"]


def _container_root(tmp_path):
    root = tmp_path / "host"
    (root / "dev" / "shm").mkdir(parents=True)
    (root / ".dockerenv").write_text("")
    return root


@pytest.mark.parametrize("size, severity", [("64M", "error"), ("512M", "warning"), ("2G", None)])
def test_dev_shm_in_a_container_with_several_gpus(venv, tmp_path, size, severity):
    _cuda_venv(venv)
    root = _container_root(tmp_path)
    env = {"MOE_ENV_HOST_ROOT": str(root), "MOE_ENV_SHM_SIZE": size, "MOE_ENV_GPUS": "A100:8.0x8",
           "MOE_ENV_NVCC_VERSION": "12.1"}
    code, doc = run_json(["--python", str(venv.python)], env)
    assert doc["environment"]["host"]["container"] == "/.dockerenv"
    f = by_id(doc).get("host.shm-too-small")
    if severity is None:
        assert f is None
    else:
        assert f["severity"] == severity and "--shm-size=1g" in f["fix"] and any("nccl#342" in s for s in f["sources"])


def test_dev_shm_of_a_build_container_is_deferred():
    """In a Docker build (--build) the build container's /dev/shm says nothing of the training container's:
    the check is deferred (the slow tier's real buildah build once failed its gate on a 64 MiB build /dev/shm)."""
    from moe_env.checks.host import shm_size
    from moe_env.checks.registry import Context
    from moe_env.environment import GPU, Environment, HostInfo, PythonInfo
    from moe_env.matrix.cache import load_matrix_cached

    def judge(source, build):
        host = HostInfo(gpus=[GPU(index=i, name="A100", compute_capability="8.0") for i in range(8)],
                        shm_bytes=64 << 20, shm_source=source, container="/run/.containerenv", build_mode=build)
        env = Environment(python=PythonInfo("3.11.7", "cpython", "x", "/p", "linux-x86_64", "x86_64"), host=host)
        return {f.id: f for f in shm_size(Context(env=env, matrix=load_matrix_cached()))}

    assert judge("statvfs /dev/shm", build=False)["host.shm-too-small"].severity == "error"
    deferred = judge("statvfs /dev/shm", build=True)
    assert set(deferred) == {"host.shm-deferred"} and deferred["host.shm-deferred"].deferred
    assert judge("MOE_ENV_SHM_SIZE", build=True)["host.shm-too-small"].severity == "error"  # a stated size is judged


def test_dev_shm_read_with_statvfs_under_the_host_root(venv, tmp_path):
    _cuda_venv(venv)
    root = _container_root(tmp_path)
    code, doc = run_json(["--python", str(venv.python)], {"MOE_ENV_HOST_ROOT": str(root), "MOE_ENV_GPUS": "none"})
    host = doc["environment"]["host"]
    assert host["shm_bytes"] > 0 and host["shm_source"] == "statvfs /dev/shm"
    assert "host.shm-too-small" not in by_id(doc)  # no GPUs: NCCL is not in play


def test_cgroup_marks_a_container(venv, tmp_path):
    root = tmp_path / "host"
    (root / "proc" / "1").mkdir(parents=True)
    (root / "proc" / "1" / "cgroup").write_text("0::/kubepods/burstable/pod1234/abcd\n")
    code, doc = run_json(["--python", str(venv.python)], {"MOE_ENV_HOST_ROOT": str(root)})
    assert doc["environment"]["host"]["container"] == "/proc/1/cgroup (kubepods)"


def test_nccl_version_torch_loads_from_the_wheel_or_torch_lib(venv_factory):
    wheel = venv_factory()
    add_torch(wheel, "2.1.2+cu121", "12.1", requires=[])
    add_plain(wheel, "nvidia-nccl-cu12", "2.18.1", package="nvidia/nccl")
    code, doc = run_json(["--python", str(wheel.python)])
    assert doc["environment"]["torch"]["nccl"] == "2.18.1"
    assert doc["environment"]["torch"]["nccl_source"] == "distribution nvidia-nccl-cu12"
    bundled = venv_factory()
    add_torch(bundled, "1.13.1+cu117", "11.7", requires=[])
    (bundled.site / "torch" / "lib").mkdir(parents=True, exist_ok=True)
    (bundled.site / "torch" / "lib" / "libnccl.so.2.14.3").write_bytes(b"\x7fELF not loaded")
    code, doc = run_json(["--python", str(bundled.python)])
    assert doc["environment"]["torch"]["nccl"] == "2.14.3"


def test_gpu_override_with_memory(venv):
    code, doc = run_json(["--python", str(venv.python)], {"MOE_ENV_GPUS": "A100:8.0x8:80GB"})
    gpus = doc["environment"]["host"]["gpus"]
    assert len(gpus) == 8 and {g["memory_mib"] for g in gpus} == {81920} and {g["compute_capability"] for g in gpus} == {"8.0"}


@pytest.mark.parametrize("var, value", [
    ("MOE_ENV_GPUS", "8.0x99999999999999999999"),
    ("MOE_ENV_GPUS", "8.0x" + "9" * 5000),
    ("MOE_ENV_GPUS", "A100:99.0x8"),
    ("MOE_ENV_GPUS", "A100:8.0x8:99999999GB"),
    ("MOE_ENV_GPUS", "8.0x4096,8.0x1"),
    ("MOE_ENV_GPUS", "\x1b[31mH100:9.0"),
    ("MOE_ENV_CUDA_DRIVER_VERSION", "999999999999999999999999"),
    ("MOE_ENV_CUDA_DRIVER_VERSION", "535.104.05.1.2"),
    ("MOE_ENV_NVCC_VERSION", "99999999999.1"),
    ("MOE_ENV_SHM_SIZE", "lots"),
    ("MOE_ENV_SHM_SIZE", "99999999999999T"),
])
def test_garbage_host_overrides_are_one_line_errors(venv, var, value):
    res = run(["--python", str(venv.python)], {var: value})
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"moe-env: error: {var}") and len(lines[0]) < 300, res.stderr
    assert "\x1b" not in res.stderr


# ---------------------------------------------------------------- the summary header


def test_text_report_starts_with_a_summary_of_the_stack(venv):
    cpu_torch_venv(venv)
    res = run(["mgm", "--python", str(venv.python)], H100_OLD_DRIVER)
    head = res.stdout.split("\n\n")[1].splitlines()
    rows = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in head}
    assert list(rows)[:6] == ["python", "torch", "deepspeed", "transformers", "accelerate", "flash-attn"]
    assert rows["torch"].startswith("2.13.0+cpu (CPU-only, no CUDA")
    assert rows["deepspeed"].startswith("0.14.4 (no pre-built ops")
    assert rows["transformers"] == "4.37.0" and rows["flash-attn"] == "not installed"
    assert rows["driver"] == "535.104.05 (MOE_ENV_CUDA_DRIVER_VERSION)"
    assert rows["GPUs"] == "8x H100 (sm_90) [MOE_ENV_GPUS]"
    assert "nvcc" in rows and "CUDA_HOME" in rows


def test_summary_header_names_the_archs_of_a_cuda_build(venv):
    add_torch(venv, "2.1.2+cu121", "12.1", requires=[])
    res = run(["--python", str(venv.python)], {"MOE_ENV_GPUS": "A100:8.0x8:80GB"})
    torch_row = next(line for line in res.stdout.splitlines() if line.strip().startswith("torch:"))
    assert "CUDA 12.1" in torch_row and "sm_80" in torch_row and "sm_90" in torch_row
    assert "8x A100 (sm_80, 80 GiB)" in res.stdout


def test_text_report_escapes_control_characters_from_the_environment(venv):
    add_torch(venv, "2.13.0+cpu", None, requires=[])
    version_py = venv.site / "torch" / "version.py"
    version_py.write_text(version_py.read_text().replace("__version__ = '2.13.0+cpu'", "__version__ = '2.13.0\\x1b[2J+cpu'"))
    res = run(["mgm", "--python", str(venv.python)], H100_OLD_DRIVER)
    assert "\x1b" not in res.stdout and "\\x1b[2J" in res.stdout
