"""Generic checks about the platform: driver, GPU architectures, nvcc, DeepSpeed's build, bf16.

They hold for every project. The facts (minimum drivers, architectures per torch build, GPU
families) come from the matrix's platform tables with their sources; the few rules that are code
behaviour rather than version facts cite the upstream code they restate (SOURCES below). Host
facts are missing in a Docker build (`--build`): those checks become `deferred` findings there.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from moe_env.checks.facts import (
    cuda_major_minor,
    describe_gpus,
    gpu_capabilities,
    parse_version,
    release_tuple,
    sm,
    spec_contains,
)
from moe_env.checks.registry import Context, generic
from moe_env.findings import Finding
from moe_env.matrix.model import CudaDriver, TorchArch

# Code behaviour restated by these checks (read in the release artifacts named).
SRC_CUDA_BINARY_COMPAT = (
    "https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#binary-compatibility "
    "cubin for X.y runs on X.z with z >= y; PTX is JIT-compiled for newer GPUs"
)
SRC_TORCH_NVCC = (
    "release:torch==2.13.0:torch/utils/cpp_extension.py:622 _check_cuda_version raises on a CUDA major "
    "mismatch between nvcc and torch.version.cuda, warns on a minor one"
)
SRC_DS_NVCC = (
    "release:deepspeed==0.13.2:op_builder/builder.py:82 assert_no_cuda_mismatch (CUDAMismatchException, "
    "minor mismatches accepted only inside cuda_minor_mismatch_ok)"
)
SRC_DS_BUILD = (
    "release:deepspeed==0.13.2:op_builder/builder.py:143 validate_torch_version/validate_torch_op_version, "
    "called by OpBuilder.load (line 466) for every pre-built op"
)
SRC_DS_JIT = "release:deepspeed==0.13.2:op_builder/builder.py:477 ops not pre-built are JIT-compiled at first use (jit_load)"
SRC_BF16 = "release:torch==2.13.0:torch/cuda/__init__.py:204 is_bf16_supported: native bf16 needs compute capability major >= 8"

BF16_MIN_CC = "8.0"


# ---------------------------------------------------------------- driver


def _driver_row(ctx: Context, cuda: str) -> Optional[CudaDriver]:
    """The [[cuda_driver]] row for torch's CUDA: the same major.minor, else the newest below it in that major."""
    want = release_tuple(cuda)
    if want is None:
        return None
    best = None
    for row in ctx.matrix.cuda_drivers:
        have = release_tuple(row.cuda)
        if have is None or have[0] != want[0] or have > want:
            continue
        if best is None or have > release_tuple(best.cuda):
            best = row
    return best


@generic("torch-driver")
def torch_vs_driver(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    host = ctx.env.host
    if t is None or not t.cuda:
        return []
    cuda = cuda_major_minor(t.cuda) or t.cuda
    if not host.driver_version:
        if ctx.build_mode:
            return [Finding(
                id="host.driver-deferred", severity="info",
                title="NVIDIA driver check deferred to the node (--build)",
                seen=f"torch {t.version} needs a driver for CUDA {cuda}; no driver at build time",
                why="The image runs on hosts whose driver is only known at run time.",
                fix="Run `moe-env doctor` on a GPU node, or set MOE_ENV_CUDA_DRIVER_VERSION to judge a target driver now.",
                deferred=True,
            )]
        return [Finding(
            id="host.no-driver", severity="info",
            title="No NVIDIA driver found; GPU checks skipped",
            seen=f"torch {t.version} is a CUDA {cuda} build; no driver in /sys/module/nvidia, /proc/driver/nvidia or nvidia-smi",
            why="Normal on a login or CPU node; on a GPU node torch will not see any GPU.",
            fix="Run doctor on a GPU node, or set MOE_ENV_CUDA_DRIVER_VERSION / MOE_ENV_GPUS to judge a target.",
        )]
    driver = parse_version(host.driver_version)
    row = _driver_row(ctx, cuda)
    if driver is None or row is None:
        return []
    need = parse_version(row.min_driver)
    if need is None or driver >= need:
        return []
    major = release_tuple(cuda)[0]
    compat = next((c for c in ctx.matrix.cuda_minor_compat if c.cuda_major == major), None)
    seen = (f"driver {host.driver_version} ({host.driver_source or 'probed'}); torch {t.version} is built with CUDA "
            f"{cuda}, whose minimum driver is {row.min_driver}")
    if compat is not None and parse_version(compat.min_driver) is not None and driver >= parse_version(compat.min_driver):
        return [Finding(
            id="torch.driver-minor-compat", severity="warning",
            title=f"Driver older than CUDA {cuda} wants; running under CUDA {major}.x minor-version compatibility",
            seen=seen + f"; CUDA {major}.x minor-version compatibility needs {compat.min_driver}",
            why=("Minor-version compatibility runs the kernels, but PTX JIT and features that need a newer driver fail; "
                 "extensions that JIT-compile PTX (Triton, DeepSpeed ops) may break. " + compat.notes).strip(),
            fix=f"Upgrade the NVIDIA driver to >= {row.min_driver}, or install a torch build for an older CUDA {major}.x.",
            sources=list(row.source) + [s for s in compat.source if s not in row.source],
        )]
    return [Finding(
        id="torch.driver-too-old", severity="error",
        title=f"NVIDIA driver too old for torch's CUDA {cuda}",
        seen=seen + (f"; even CUDA {major}.x minor-version compatibility needs {compat.min_driver}" if compat else ""),
        why="torch cannot initialise CUDA: torch.cuda.is_available() is False and training fails at the first .cuda().",
        fix=(f"Upgrade the NVIDIA driver to >= {row.min_driver}, or install a torch build for a CUDA the driver "
             "supports (the PyTorch index's cuXXX variants)."),
        sources=list(row.source) + (list(compat.source) if compat else []),
    )]


# ---------------------------------------------------------------- GPU architecture vs torch build


def _arch_row(ctx: Context, version: str, cuda: str) -> Optional[TorchArch]:
    for row in ctx.matrix.torch_archs:
        if spec_contains(row.torch, version) and cuda in [cuda_major_minor(c) for c in row.cuda]:
            return row
    return None


def _runs_on(cc: Tuple[int, int], archs: List[str], ptx: str) -> bool:
    for a in archs:
        t = release_tuple(a)
        if t and t[0] == cc[0] and t[1] <= cc[1]:
            return True
    p = release_tuple(ptx) if ptx else None
    return bool(p and p <= cc)


@generic("torch-gpu-arch")
def torch_vs_gpu_arch(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    if t is None or not t.cuda:
        return []
    gpus = gpu_capabilities(ctx.env, ctx.matrix)
    if not gpus:
        if ctx.build_mode:
            return [Finding(
                id="host.gpu-deferred", severity="info",
                title="GPU architecture check deferred to the node (--build)",
                seen=f"torch {t.version} (CUDA {t.cuda}); no GPU at build time",
                why="Whether torch has kernels for the GPU is only known on the node.",
                fix="Run `moe-env doctor` on a GPU node, or set MOE_ENV_GPUS (e.g. 8.0x8) to judge a target now.",
                deferred=True,
            )]
        return []
    cuda = cuda_major_minor(t.cuda) or t.cuda
    row = _arch_row(ctx, t.version, cuda)
    if row is None:
        return []
    bad = [(g, cc) for g, cc in gpus if release_tuple(cc) is not None and not _runs_on(release_tuple(cc), row.archs, row.ptx)]
    if not bad:
        return []
    carried = " ".join(sm(a) for a in row.archs) + (f" (+PTX {sm(row.ptx)})" if row.ptx else "")
    return [Finding(
        id="torch.gpu-arch-missing", severity="error",
        title="torch has no kernels for this GPU architecture",
        seen=f"{describe_gpus(bad)}; torch {t.version} (CUDA {cuda}) carries {carried}",
        why="Every CUDA op fails with 'no kernel image is available for execution on the device'.",
        fix="Install a torch build whose CUDA variant carries this architecture (see `moe-env lock` for a stack that fits).",
        sources=list(row.source) + [SRC_CUDA_BINARY_COMPAT],
    )]


# ---------------------------------------------------------------- nvcc vs torch's CUDA, when something must compile


def _must_compile(ctx: Context) -> List[str]:
    reasons = []
    ds = ctx.env.deepspeed
    if ds is not None and not any(ds.installed_ops.values()):
        reasons.append(f"deepspeed {ds.version} has no pre-built ops (they JIT-compile at first use)")
    if ctx.project is not None:
        wants_fa = any(p.package.lower() in ("flash-attn", "flash_attn") for p in ctx.project.pins)
        fa = ctx.env.extensions.get("flash-attn")
        if wants_fa and ctx.env.dist("flash-attn") is None and not (fa and fa.present):
            wheel = _flash_attn_wheel(ctx)
            if wheel is None or not wheel.exists:
                why = wheel.why if wheel is not None else "without a matching wheel it builds from source"
                reasons.append(f"flash-attn is not installed ({ctx.project.name} uses it; {why})")
    return reasons


def _flash_attn_wheel(ctx: Context):
    """moe_env.wheels' answer for the flash-attn release the project's stacks pin, on this torch; None if unpinned."""
    from moe_env.wheels import flash_attn_wheel

    t = ctx.env.torch
    pinned = [s.pins.get("flash-attn") for s in ctx.project.stacks if s.pins.get("flash-attn")] if ctx.project else []
    if t is None or not pinned:
        return None
    py = ".".join(ctx.env.python.version.split(".")[:2])
    return flash_attn_wheel(ctx.matrix, pinned[0], t.version, cuda_major_minor(t.cuda) or t.cuda, py, t.cxx11_abi)


@generic("nvcc-torch-cuda")
def nvcc_vs_torch_cuda(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    host = ctx.env.host
    if t is None or not t.cuda:
        return []
    reasons = _must_compile(ctx)
    if not reasons:
        return []
    cuda = cuda_major_minor(t.cuda) or t.cuda
    why_compile = "; ".join(reasons)
    sources = [SRC_TORCH_NVCC, SRC_DS_NVCC, SRC_DS_JIT]
    if host.cuda_home_exists is False and host.cuda_home_source in ("CUDA_HOME", "CUDA_PATH"):
        return []  # host.cuda-home-missing speaks for it
    if not host.nvcc_version:
        return [Finding(
            id="build.nvcc-missing", severity="warning",
            title="Something must compile, but no nvcc was found",
            seen=f"{why_compile}; no nvcc on PATH or in CUDA_HOME ({host.cuda_home or 'unset'})",
            why="JIT builds and source installs need a CUDA toolkit whose major matches torch's CUDA.",
            fix=f"Install the CUDA {cuda} toolkit (or a devel image) and set CUDA_HOME, or pre-build the ops (DS_BUILD_OPS=1).",
            sources=sources,
        )]
    nv, tc = release_tuple(host.nvcc_version), release_tuple(cuda)
    if nv is None or tc is None:
        return []
    if nv[0] != tc[0]:
        return [Finding(
            id="build.nvcc-cuda-major-mismatch", severity="error",
            title="nvcc's CUDA major differs from torch's CUDA",
            seen=f"nvcc {host.nvcc_version} ({host.nvcc_path or 'PATH'}); torch {t.version} built with CUDA {cuda}; {why_compile}",
            why=("torch.utils.cpp_extension refuses a major mismatch ('The detected CUDA version ... mismatches the version "
                 "that was used to compile PyTorch') and DeepSpeed raises CUDAMismatchException."),
            fix=f"Use a CUDA {tc[0]}.x toolkit (ideally {cuda}): point CUDA_HOME at it, or install torch for CUDA {nv[0]}.x.",
            sources=sources,
        )]
    if nv != tc:
        return [Finding(
            id="build.nvcc-cuda-minor-mismatch", severity="info",
            title="nvcc's CUDA minor differs from torch's CUDA",
            seen=f"nvcc {host.nvcc_version}; torch {t.version} built with CUDA {cuda}; {why_compile}",
            why=("torch only warns about a minor mismatch; DeepSpeed accepts it only for the minors in its "
                 "cuda_minor_mismatch_ok table (set DS_SKIP_CUDA_CHECK=1 otherwise)."),
            fix=f"Prefer the CUDA {cuda} toolkit for builds.",
            sources=sources,
        )]
    return []


# ---------------------------------------------------------------- DeepSpeed built against another torch/CUDA


@generic("deepspeed-build")
def deepspeed_build(ctx: Context) -> List[Finding]:
    ds, t = ctx.env.deepspeed, ctx.env.torch
    if ds is None or t is None or not ds.build_info_found:
        return []
    prebuilt = sorted(op for op, on in ds.installed_ops.items() if on)
    if not prebuilt:
        return []  # nothing compiled at install time: DeepSpeed compiles against whatever torch is there
    out: List[Finding] = []
    torch_mm = ".".join(t.version.split("+", 1)[0].split(".")[:2])
    built_torch = ds.built_torch
    if built_torch and built_torch != "0.0" and built_torch != torch_mm:
        out.append(Finding(
            id="deepspeed.built-for-other-torch", severity="error",
            title="DeepSpeed's pre-built ops were compiled against another torch",
            seen=f"deepspeed {ds.version} pre-built {', '.join(prebuilt)} against torch {built_torch}; torch {t.version} is installed",
            why="Loading any pre-built op raises 'PyTorch version mismatch! DeepSpeed ops were compiled and installed with a "
                "different version than what is being used at runtime.'",
            fix=f"Reinstall deepspeed against this torch: pip install --no-build-isolation --force-reinstall --no-deps deepspeed=={ds.version} "
                "(with the DS_BUILD_* flags you used), or install torch " + built_torch + ".",
            sources=[SRC_DS_BUILD],
        ))
    built_cuda = ds.built_cuda
    torch_cuda = cuda_major_minor(t.cuda) if t.cuda else None
    if built_cuda and built_cuda != "0.0" and torch_cuda and cuda_major_minor(built_cuda) != torch_cuda:
        out.append(Finding(
            id="deepspeed.built-for-other-cuda", severity="error",
            title="DeepSpeed's pre-built ops were compiled against another CUDA",
            seen=f"deepspeed {ds.version} pre-built {', '.join(prebuilt)} with CUDA {built_cuda}; torch {t.version} uses CUDA {torch_cuda}",
            why="On a GPU node loading a pre-built op raises 'CUDA version mismatch! DeepSpeed ops were compiled and installed "
                "with a different version than what is being used at runtime.'",
            fix=f"Reinstall deepspeed=={ds.version} with --no-build-isolation against this torch.",
            sources=[SRC_DS_BUILD],
        ))
    return out


# ---------------------------------------------------------------- bf16 recipes on GPUs below sm_80


@generic("bf16-gpu")
def bf16_gpu(ctx: Context) -> List[Finding]:
    needing = ctx.needs_bf16()
    if not needing:
        return []
    if ctx.project is not None and any(
        c.kind == "gpu_capability" and (release_tuple(str(c.params.get("min", "0"))) or (0, 0)) >= release_tuple(BF16_MIN_CC)
        and (not c.variants or any(v.id in c.variants for v in needing))
        for c in ctx.project.checks
    ):
        return []  # the project's own gpu_capability check speaks to it, with its sources
    names = ", ".join(v.id for v in needing)
    gpus = gpu_capabilities(ctx.env, ctx.matrix)
    if not gpus:
        if ctx.build_mode:
            return [Finding(
                id="gpu.bf16-deferred", severity="info", title="bf16 GPU check deferred to the node (--build)",
                seen=f"{names} train in bf16; no GPU at build time",
                why="bf16 recipes need compute capability 8.0 (Ampere) or newer.",
                fix="Run `moe-env doctor` on a GPU node.", sources=[SRC_BF16], deferred=True,
            )]
        return []
    want = release_tuple(BF16_MIN_CC)
    low = [(g, cc) for g, cc in gpus if release_tuple(cc) is not None and release_tuple(cc) < want]
    if not low:
        return []
    project = ctx.project.info.title if ctx.project else "this recipe"
    return [Finding(
        id="gpu.bf16-unsupported", severity="error",
        title="The recipe trains in bf16, which this GPU does not support natively",
        seen=f"{describe_gpus(low)}; {project} variants {names} use bf16",
        why="bf16 needs compute capability 8.0 (A100, H100, RTX 30xx+). Older GPUs refuse --bf16 or emulate it very slowly.",
        fix="Train with --bf16 False --fp16 True (and fp16 in the DeepSpeed config), or use sm_80+ GPUs.",
        sources=[SRC_BF16],
    )]


# ---------------------------------------------------------------- GPU memory vs the variant's recipe


def _gpu_family(name: str, ctx: Context):
    """The matrix's [[gpu]] row whose longest pattern the name contains (None when no row matches)."""
    best = None
    for fam in ctx.matrix.gpus:
        for pat in fam.match:
            if pat and pat.lower() in name.lower() and (best is None or len(pat) > len(best[0])):
                best = (pat, fam)
    return best[1] if best else None


@generic("gpu-memory")
def gpu_memory(ctx: Context) -> List[Finding]:
    """The variant's recipe names a per-GPU memory floor ([[variant]] min_gpu_memory_gib); probed GPUs below it."""
    needing = [v for v in ctx.variants if v.min_gpu_memory_gib > 0]
    if not needing:
        return []
    need = max(v.min_gpu_memory_gib for v in needing)
    gpus = [g for g in ctx.env.host.gpus if g.memory_mib]
    sources: List[str] = []
    if gpus:
        small = [g for g in gpus if g.memory_mib < need * 1024 * 0.95]  # "80 GB" cards report ~81559 MiB; 40 GB ~40960
        seen = ", ".join(sorted({f"{g.name} {g.memory_mib // 1024} GiB" for g in small}))
    else:  # memory unknown (MOE_ENV_GPUS): a GPU family sold only with less memory (V100: 16 or 32 GiB) is judged
        small, parts = [], set()
        for g in ctx.env.host.gpus:
            fam = _gpu_family(g.name or "", ctx)
            if fam is not None and fam.memory_gib and max(fam.memory_gib) < need * 0.95:
                small.append(g)
                parts.add(f"{g.name} ({fam.family}: {' or '.join(str(m) for m in fam.memory_gib)} GiB)")
                sources.extend(fam.source)
        seen = ", ".join(sorted(parts))
    if not small:
        return []
    names = ", ".join(f"{v.id} ({v.min_gpu_memory_gib} GiB)" for v in needing)
    sources += [s for v in needing for s in v.source]
    return [Finding(
        id="gpu.memory-below-recipe", severity="warning",
        title="GPU memory is below what the variant's recipe was run with",
        seen=f"{seen}; {names} per GPU",
        why="The shipped recipe's batch size and ZeRO stage were set for that memory; it will run out of memory as is.",
        fix="Use GPUs with more memory, or lower the micro batch size / raise the ZeRO stage or enable offload.",
        sources=list(dict.fromkeys(sources)),
    )]
