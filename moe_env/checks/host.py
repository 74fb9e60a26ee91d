"""Generic checks on host facts that break training: CUDA_HOME for JIT builds, /dev/shm for NCCL in containers.

The facts come from probe/host.py (stat and statvfs only); these functions only judge them.
"""

from __future__ import annotations

from typing import List

from moe_env.checks.registry import Context, generic
from moe_env.findings import Finding

SRC_FIND_CUDA_HOME = ("release:torch==2.13.0:torch/utils/cpp_extension.py:158 _find_cuda_home takes CUDA_HOME/CUDA_PATH "
                      "as set, without checking that it exists")
SRC_CUDA_INCLUDE = "release:torch==2.13.0:torch/utils/cpp_extension.py:1742 JIT builds add CUDA_HOME/include to the include path"
SRC_DS_HEADERS = ("release:deepspeed==0.19.8:deepspeed/ops/csrc/includes/custom_cuda_layers.h:12 #include <curand_kernel.h>; "
                  "deepspeed/ops/csrc/includes/Timer.h:9 #include <cuda_runtime.h>")
SRC_SHM = [
    "NVIDIA/nccl#342 Docker's default 64 MB /dev/shm: 'Error while creating shared memory segment', fixed by a larger --shm-size",
    "pytorch/torchtitan#853 a 16 MB /dev/shm on 8x H100: 'unhandled system error ... Error while creating shared memory "
    "segment /dev/shm/nccl-...'; --shm-size=1g resolves it",
    "NVIDIA/nccl#290",
]

MiB = 1 << 20
SHM_FAILS = 64 * MiB  # Docker's default; failures cited at this size and below
SHM_GOOD = 1024 * MiB  # what the cited threads set to make it work (--shm-size=1g)


def _compile_reasons(ctx: Context) -> List[str]:
    from moe_env.checks.platform import _must_compile

    t = ctx.env.torch
    return _must_compile(ctx) if t is not None and t.cuda else []


@generic("cuda-home")
def cuda_home(ctx: Context) -> List[Finding]:
    host = ctx.env.host
    if not host.cuda_home:
        return []
    reasons = _compile_reasons(ctx)
    why_compile = "; ".join(reasons)
    if host.cuda_home_exists is False and host.cuda_home_source in ("CUDA_HOME", "CUDA_PATH"):
        return [Finding(
            id="host.cuda-home-missing", severity="error" if reasons else "info",
            title=f"{host.cuda_home_source} points to a folder that does not exist",
            seen=f"{host.cuda_home_source}={host.cuda_home}: no such folder" + (f"; {why_compile}" if reasons else
                                                                            "; nothing needs to compile now"),
            why=("torch.utils.cpp_extension and DeepSpeed's op builder use it as set: every JIT build fails "
                 f"running {host.cuda_home}/bin/nvcc (No such file or directory)."),
            fix=f"unset {host.cuda_home_source}, or point it at a CUDA toolkit (export {host.cuda_home_source}=/usr/local/cuda-X.Y)",
            sources=[SRC_FIND_CUDA_HOME],
        )]
    if host.cuda_home_exists and host.cuda_headers_missing and reasons:
        missing = ", ".join(host.cuda_headers_missing)
        return [Finding(
            id="host.cuda-headers-missing", severity="error",
            title="CUDA_HOME lacks the headers a JIT build of CUDA ops includes",
            seen=f"CUDA_HOME={host.cuda_home} ({host.cuda_home_source}) has no {missing}; {why_compile}",
            why=("The build stops with 'fatal error: " + host.cuda_headers_missing[0].split("/")[-1] +
                 ": No such file or directory' (a toolkit with only nvcc, e.g. a conda cuda-nvcc package "
                 "without the cudart/curand development headers)."),
            fix="Point CUDA_HOME at a full CUDA toolkit (a devel image, or install cuda-cudart-dev and libcurand-dev "
                "of torch's CUDA version)",
            sources=[SRC_CUDA_INCLUDE, SRC_DS_HEADERS],
        )]
    return []


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n // MiB} MiB"


@generic("shm")
def shm_size(ctx: Context) -> List[Finding]:
    host = ctx.env.host
    if host.shm_bytes is None or len(host.gpus) < 2:
        return []
    if not host.container and host.shm_source != "MOE_ENV_SHM_SIZE":
        return []  # a bare host's /dev/shm is half its memory; only containers cap it
    if host.shm_bytes >= SHM_GOOD:
        return []
    if ctx.build_mode and host.shm_source != "MOE_ENV_SHM_SIZE":
        # a build container's /dev/shm says nothing of the one `docker run --shm-size` gives the job
        return [Finding(
            id="host.shm-deferred", severity="info", deferred=True,
            title="/dev/shm check deferred to the node (--build)",
            seen=f"/dev/shm of the build container is {_size(host.shm_bytes)}; {len(host.gpus)} GPUs stated",
            why="The size that matters is the one the training container is started with.",
            fix="Start the container with --shm-size=1g (or --ipc=host), or set MOE_ENV_SHM_SIZE to judge it now.",
            sources=list(SRC_SHM),
        )]
    fails = host.shm_bytes <= SHM_FAILS
    where = f"in a container ({host.container})" if host.container else "as MOE_ENV_SHM_SIZE says"
    return [Finding(
        id="host.shm-too-small", severity="error" if fails else "warning",
        title=f"/dev/shm is {_size(host.shm_bytes)}, too small for NCCL across {len(host.gpus)} GPUs",
        seen=f"/dev/shm {_size(host.shm_bytes)} ({host.shm_source}) {where}; {len(host.gpus)} GPUs",
        why=("NCCL puts its intra-node buffers in /dev/shm; at Docker's default 64 MB and below the first collective "
             "fails with 'unhandled system error ... Error while creating shared memory segment /dev/shm/nccl-...'"
             if fails else
             "Below the 1 GB that the cited NCCL failures were fixed with; larger jobs (more GPUs, channels) can "
             "still run out of shared memory."),
        fix="docker run --shm-size=1g ... (or --ipc=host; Kubernetes: an emptyDir with medium: Memory on /dev/shm)",
        sources=list(SRC_SHM),
    )]
