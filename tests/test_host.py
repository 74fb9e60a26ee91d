"""Host facts: driver, GPUs, nvcc; from fake /sys and /proc trees, fake tools on PATH, and overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moe_env.errors import UsageError
from moe_env.probe import host as hostmod
from moe_env.probe.host import gather_host, parse_gpu_override, parse_nvidia_smi


def _tool(bindir: Path, name: str, script: str) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def _env(tmp_path: Path, **extra) -> dict:
    """An environment with an empty PATH dir (no nvidia-smi, no nvcc) plus `extra`."""
    empty = tmp_path / "emptybin"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(empty)}
    env.update(extra)
    return env


def _root(tmp_path: Path, files: dict) -> str:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize("value, expected", [
    ("8.0x8", [("sm_80 (MOE_ENV_GPUS)", "8.0")] * 8),
    ("H100:9.0", [("H100", "9.0")]),
    ("A100:8.0x2", [("A100", "8.0")] * 2),
    ("H100x2,T4", [("H100", None), ("H100", None), ("T4", None)]),
    ("NVIDIA A100-SXM4-80GB:sm_80", [("NVIDIA A100-SXM4-80GB", "8.0")]),
    (" 12.0 , L40S:8.9 ", [("sm_120 (MOE_ENV_GPUS)", "12.0"), ("L40S", "8.9")]),
    ("none", []),
])
def test_gpu_override_forms(value, expected):
    gpus = parse_gpu_override(value)
    assert [(g.name, g.compute_capability) for g in gpus] == expected
    assert [g.index for g in gpus] == list(range(len(expected)))


@pytest.mark.parametrize("value", ["H100:nine", ":9.0", "A100:8.0x0", ",", "bad;name"])
def test_gpu_override_rejects_nonsense(value):
    with pytest.raises(UsageError, match="MOE_ENV_GPUS"):
        parse_gpu_override(value)


def test_overrides_win_and_are_recorded(tmp_path):
    root = _root(tmp_path, {"/sys/module/nvidia/version": "535.104.05\n"})
    env = _env(tmp_path, MOE_ENV_CUDA_DRIVER_VERSION="550.54.15", MOE_ENV_GPUS="H100:9.0x8", MOE_ENV_NVCC_VERSION="12.4.131")
    h = gather_host(build_mode=True, environ=env, root=root)
    assert (h.driver_version, h.driver_source) == ("550.54.15", "MOE_ENV_CUDA_DRIVER_VERSION")
    assert len(h.gpus) == 8 and h.gpu_source == "MOE_ENV_GPUS" and h.gpus[7].compute_capability == "9.0"
    assert h.nvcc_version == "12.4"
    assert h.build_mode is True
    assert h.overrides == ["MOE_ENV_CUDA_DRIVER_VERSION", "MOE_ENV_GPUS", "MOE_ENV_NVCC_VERSION"]


def test_hostname_override(tmp_path):
    h = gather_host(environ=_env(tmp_path, MOE_ENV_HOSTNAME=" node07 "), root=_root(tmp_path, {}))
    assert h.hostname == "node07" and h.overrides == ["MOE_ENV_HOSTNAME"]
    assert gather_host(environ=_env(tmp_path), root=_root(tmp_path, {})).hostname not in (None, "node07")


@pytest.mark.parametrize("var, value", [("MOE_ENV_CUDA_DRIVER_VERSION", "latest"), ("MOE_ENV_NVCC_VERSION", "twelve")])
def test_bad_version_overrides(tmp_path, var, value):
    with pytest.raises(UsageError, match=var):
        gather_host(environ=_env(tmp_path, **{var: value}), root=_root(tmp_path, {}))


# ---------------------------------------------------------------- driver from /sys and /proc


def test_no_gpu_machine(tmp_path):
    h = gather_host(environ=_env(tmp_path), root=_root(tmp_path, {}))
    assert (h.driver_version, h.gpus, h.nvcc_version, h.cuda_home, h.build_mode) == (None, [], None, None, False)
    assert h.notes == [] and h.overrides == []


def test_driver_from_sys_module(tmp_path):
    root = _root(tmp_path, {"/sys/module/nvidia/version": "550.54.15\n",
                            "/proc/driver/nvidia/version": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.1.1\n"})
    h = gather_host(environ=_env(tmp_path), root=root)
    assert (h.driver_version, h.driver_source) == ("550.54.15", "/sys/module/nvidia/version")


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)\n", "570.86.15"),
])
def test_driver_from_proc(tmp_path, text, version):
    h = gather_host(environ=_env(tmp_path), root=_root(tmp_path, {"/proc/driver/nvidia/version": text}))
    assert (h.driver_version, h.driver_source) == (version, "/proc/driver/nvidia/version")


def test_gpus_from_proc_when_no_nvidia_smi(tmp_path):
    root = _root(tmp_path, {
        "/proc/driver/nvidia/gpus/0000:07:00.0/information": "Model: \t\t NVIDIA A100-SXM4-80GB\nIRQ:   \t\t 42\n",
        "/proc/driver/nvidia/gpus/0000:0f:00.0/information": "Model: \t\t NVIDIA A100-SXM4-80GB\nIRQ:   \t\t 43\n",
    })
    h = gather_host(environ=_env(tmp_path), root=root)
    assert [g.name for g in h.gpus] == ["NVIDIA A100-SXM4-80GB"] * 2
    assert h.gpu_source == "/proc/driver/nvidia/gpus" and h.gpus[0].compute_capability is None


# ---------------------------------------------------------------- nvidia-smi


def test_parse_nvidia_smi_rows():
    gpus, driver = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n"
                                    "NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n\n")
    assert [(g.index, g.name, g.memory_mib, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559, "9.0"), (1, "NVIDIA H100 80GB HBM3", 81559, "9.0")]
    assert driver == "550.54.15"
    gpus, _ = parse_nvidia_smi("Tesla V100-SXM2-32GB, [N/A], [N/A], 470.82.01\n")
    assert gpus[0].memory_mib is None and gpus[0].compute_capability is None


def test_nvidia_smi_on_path(tmp_path):
    bindir = tmp_path / "bin"
    _tool(bindir, "nvidia-smi", 'echo "NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.104.05"\n'
                                'echo "NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.104.05"\n')
    h = gather_host(environ={"PATH": str(bindir)}, root=_root(tmp_path, {}))
    assert [(g.name, g.compute_capability, g.memory_mib) for g in h.gpus] == [("NVIDIA A100-SXM4-80GB", "8.0", 81920)] * 2
    assert (h.driver_version, h.driver_source, h.gpu_source) == ("535.104.05", "nvidia-smi", "nvidia-smi")


def test_old_nvidia_smi_without_compute_cap(tmp_path):
    bindir = tmp_path / "bin"
    _tool(bindir, "nvidia-smi",
          'case "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; esac\n'
          'echo "Tesla V100-SXM2-32GB, 32510, 470.82.01"\n')
    h = gather_host(environ={"PATH": str(bindir)}, root=_root(tmp_path, {}))
    assert [(g.name, g.compute_capability, g.memory_mib) for g in h.gpus] == [("Tesla V100-SXM2-32GB", None, 32510)]
    assert h.driver_version == "470.82.01"


def test_hanging_or_failing_nvidia_smi_becomes_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(hostmod, "NVIDIA_SMI_TIMEOUT", 0.5)
    bindir = tmp_path / "bin"
    _tool(bindir, "nvidia-smi", "exec sleep 20\n")
    h = gather_host(environ={"PATH": str(bindir)}, root=_root(tmp_path, {}))
    assert h.gpus == [] and any("did not answer" in n for n in h.notes)

    _tool(bindir, "nvidia-smi", 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9\n')
    h = gather_host(environ={"PATH": str(bindir)}, root=_root(tmp_path, {}))
    assert h.gpus == [] and h.notes == ["nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate "
                                        "with the NVIDIA driver."]


# ---------------------------------------------------------------- nvcc and CUDA_HOME


def test_nvcc_from_cuda_home_version_json(tmp_path):
    home = tmp_path / "cuda-12.1"
    _tool(home / "bin", "nvcc", "echo should-not-run; exit 1\n")
    (home / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.1.1"},
                                                   "cuda_nvcc": {"name": "CUDA NVCC", "version": "12.1.105"}}))
    h = gather_host(environ=_env(tmp_path, CUDA_HOME=str(home)), root=_root(tmp_path, {}))
    assert (h.cuda_home, h.nvcc_path, h.nvcc_version) == (str(home), str(home / "bin" / "nvcc"), "12.1")


def test_nvcc_version_txt(tmp_path):
    home = tmp_path / "cuda-10.2"
    _tool(home / "bin", "nvcc", "exit 1\n")
    (home / "version.txt").write_text("CUDA Version 10.2.89\n")
    h = gather_host(environ=_env(tmp_path, CUDA_PATH=str(home)), root=_root(tmp_path, {}))
    assert h.nvcc_version == "10.2"


def test_nvcc_on_path_is_asked(tmp_path):
    bindir = tmp_path / "toolkit" / "bin"
    _tool(bindir, "nvcc", 'echo "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                          'echo "Cuda compilation tools, release 11.8, V11.8.89"\n')
    h = gather_host(environ={"PATH": str(bindir)}, root=_root(tmp_path, {}))
    assert h.nvcc_version == "11.8"
    assert h.cuda_home == str(tmp_path / "toolkit")  # as torch.utils.cpp_extension would guess it
    assert h.nvcc_path == str(bindir / "nvcc")


def test_usr_local_cuda_fallback(tmp_path):
    root = tmp_path / "root"
    home = root / "usr" / "local" / "cuda"
    _tool(home / "bin", "nvcc", "exit 1\n")
    (home / "version.json").write_text(json.dumps({"cuda_nvcc": {"version": "13.0.88"}}))
    h = gather_host(environ=_env(tmp_path), root=str(root))
    assert (h.cuda_home, h.nvcc_version) == (str(home), "13.0")


def test_broken_nvcc_is_a_note(tmp_path):
    bindir = tmp_path / "tk" / "bin"
    _tool(bindir, "nvcc", "echo 'segfault'\nexit 139\n")
    h = gather_host(environ={"PATH": str(bindir)}, root=_root(tmp_path, {}))
    assert h.nvcc_version is None and any("no 'release X.Y'" in n for n in h.notes)


def test_real_host_is_fast_and_safe():
    """On whatever machine runs the tests: no exception, and an answer (values depend on the machine)."""
    h = gather_host()
    assert h.hostname
    assert all(g.name for g in h.gpus)
    if h.nvcc_version:
        assert h.nvcc_version.count(".") == 1 and os.path.exists(h.nvcc_path)
