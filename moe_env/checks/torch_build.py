"""Generic checks on torch itself: missing, or a build that cannot drive the host's NVIDIA GPUs.

The other platform checks (driver, architectures, nvcc) judge a CUDA build; these run first and
speak for the cases where there is none: no torch at all, a `+cpu` build, a ROCm build. The fix
names the CUDA build to install instead: what `pip install torch==X` gives from the default index
(the matrix's `[[torch]] default_cuda`) when this host's driver runs it, else the PyTorch index
folder of the newest `cuda_builds` variant the driver does run (URL from moe_env/lock/indexes.py).
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from moe_env.checks.facts import cuda_major_minor, parse_version, release_tuple, spec_contains
from moe_env.checks.registry import Context, generic
from moe_env.environment import normalize_name
from moe_env.findings import Finding

SRC_NOT_COMPILED = ("release:torch==2.13.0:torch/cuda/__init__.py:522 _lazy_init raises "
                    "AssertionError('Torch not compiled with CUDA enabled') in a build without CUDA")
SRC_REQUIRES_DIST = ("https://packaging.python.org/en/latest/specifications/core-metadata/#requires-dist "
                     "each Requires-Dist must be installed for the distribution to import")

_EXTRA_ONLY = re.compile(r";.*\bextra\s*==")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def torch_missing(ctx: Context) -> bool:
    return ctx.env.torch is None and ctx.env.dist("torch") is None


def _requirers(ctx: Context) -> List[str]:
    """Installed distributions whose (non-extra) Requires-Dist names torch."""
    out = []
    for d in sorted(ctx.env.distributions.values(), key=lambda d: d.name):
        for line in d.requires:
            m = _NAME.match(line)
            if m and normalize_name(m.group(1)) == "torch" and not (_EXTRA_ONLY.search(line) and " or " not in line):
                out.append(f"{d.name} {d.version}")
                break
    return out


@generic("torch-missing")
def torch_missing_check(ctx: Context) -> List[Finding]:
    if not torch_missing(ctx):
        return []
    pin = next((p for p in ctx.project.pins if normalize_name(p.package) == "torch"), None) if ctx.project else None
    needers = _requirers(ctx)
    if ctx.project is None and not needers:
        return []
    want = f"torch{pin.spec}" if pin and pin.spec else "torch"
    if ctx.project is not None:
        seen = f"no torch in {ctx.env.python.executable}'s site-packages; {ctx.project.info.title} trains with torch"
        if pin and pin.spec:
            seen += f" (its pin: {want})"
        sources = list(pin.source) if pin else []
    else:
        seen = f"no torch installed; {', '.join(needers[:6])}{' ...' if len(needers) > 6 else ''} require it"
        sources = [SRC_REQUIRES_DIST]
    if needers and ctx.project is not None:
        seen += f"; {', '.join(needers[:6])}{' ...' if len(needers) > 6 else ''} require it"
    return [Finding(
        id="torch.missing", severity="error",
        title="torch is not installed",
        seen=seen,
        why="Every `import torch` fails with ModuleNotFoundError: No module named 'torch'; nothing trains.",
        fix=f"pip install '{want}'  (a CUDA build for this host: `moe-env lock{' ' + ctx.project.name if ctx.project else ''}` pins one)",
        sources=sources or [SRC_REQUIRES_DIST],
        requirement=want,
    )]


# ---------------------------------------------------------------- a CPU or ROCm build where NVIDIA GPUs train


def _driver_support(ctx: Context, cuda: str) -> Optional[str]:
    """'full' when the host's driver meets CUDA `cuda`'s minimum, 'compat' under minor-version compatibility,
    'no' when it meets neither, None when the driver is unknown."""
    from moe_env.checks.platform import _driver_row

    driver = parse_version(ctx.env.host.driver_version)
    if driver is None:
        return None
    row = _driver_row(ctx, cuda)
    if row is not None and parse_version(row.min_driver) is not None and driver >= parse_version(row.min_driver):
        return "full"
    major = (release_tuple(cuda) or (0, 0))[0]
    compat = next((c for c in ctx.matrix.cuda_minor_compat if c.cuda_major == major), None)
    if compat is not None and parse_version(compat.min_driver) is not None and driver >= parse_version(compat.min_driver):
        return "compat"
    return "no"


def _arch_ok(ctx: Context, version: str, cuda: str) -> bool:
    """Whether the official build for `cuda` carries kernels for every probed GPU (True when unknown)."""
    from moe_env.checks.facts import gpu_capabilities
    from moe_env.checks.platform import _arch_row, _runs_on

    row = _arch_row(ctx, version, cuda)
    if row is None:
        return True
    for _, cc in gpu_capabilities(ctx.env, ctx.matrix):
        t = release_tuple(cc)
        if t is not None and not _runs_on(t, row.archs, row.ptx):
            return False
    return True


def cuda_replacement(ctx: Context, version: str) -> Tuple[Optional[str], Optional[str], str]:
    """(local tag like "cu126", CUDA "12.6", a sentence) for the CUDA build of torch `version` to install instead.

    The default index's build (`pip install torch==X`) is preferred when the driver runs it fully;
    else the newest PyTorch-index variant it runs fully, else one it runs under minor-version compatibility.
    """
    release = ctx.matrix.torch_release(version)
    public = version.split("+", 1)[0]
    if release is None:
        return None, None, f"the matrix has no [[torch]] row for {public}"
    default = cuda_major_minor(release.default_cuda) or release.default_cuda
    builds = sorted({cuda_major_minor(c) or c for c in list(release.cuda_builds) + [release.default_cuda]},
                    key=lambda c: release_tuple(c) or (0, 0), reverse=True)
    said = f"`pip install torch=={public}` from the default index gives its CUDA {default} build"
    support = {c: _driver_support(ctx, c) for c in builds}
    if all(s is None for s in support.values()):  # no driver to judge (build mode): the default build
        return "cu" + default.replace(".", ""), default, said
    fits = [c for c in builds if support[c] == "full" and _arch_ok(ctx, version, c)]
    compat = [c for c in builds if support[c] == "compat" and _arch_ok(ctx, version, c)]
    if default in fits:
        return "cu" + default.replace(".", ""), default, said + f", which driver {ctx.env.host.driver_version} runs"
    pick = (fits or compat or [None])[0]
    if pick is None:
        return None, None, said + f"; driver {ctx.env.host.driver_version} runs none of its CUDA builds ({', '.join(builds)})"
    how = "" if pick in fits else " (under CUDA minor-version compatibility)"
    return ("cu" + pick.replace(".", ""), pick,
            said + f", which driver {ctx.env.host.driver_version} is too old for; the newest CUDA build on the PyTorch "
                   f"index it runs is CUDA {pick}{how}")


@generic("torch-build-vs-host")
def torch_build_vs_host(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    if t is None or t.cuda:
        return []
    rocm = bool(t.hip) or (t.local or "").startswith("rocm")
    host = ctx.env.host
    nvidia = bool(host.gpus) or bool(host.driver_version)
    build_for_gpus = ctx.build_mode and ctx.project is not None
    kind = f"a ROCm (HIP {t.hip}) build" if rocm and t.hip else ("a ROCm build" if rocm else "a CPU-only build (no CUDA)")
    fid = "torch.rocm-build-on-nvidia-host" if rocm else "torch.cpu-build-on-gpu-host"
    if not nvidia and not build_for_gpus:
        if ctx.project is None:
            return []
        return [Finding(
            id="torch.rocm-build-for-gpu-project" if rocm else "torch.cpu-build-for-gpu-project", severity="warning",
            title=f"torch {t.version} is {kind}; {ctx.project.info.title} trains on NVIDIA GPUs",
            seen=f"torch {t.version} (torch/version.py: cuda = None{', hip = ' + t.hip if t.hip else ''}); no NVIDIA GPU on this host",
            why="Fine for a login or CPU node; on a GPU node this torch cannot use the GPUs.",
            fix="Install a CUDA build of torch on the GPU nodes (`moe-env lock` pins one), or run doctor there.",
            sources=[SRC_NOT_COMPILED],
        )]
    tag, cuda, said = cuda_replacement(ctx, t.version)
    public = t.version.split("+", 1)[0]
    where = (f"this host has {len(host.gpus)} NVIDIA GPU(s)" if host.gpus else f"this host has NVIDIA driver {host.driver_version}") \
        if nvidia else f"--build: the image is for {ctx.project.info.title}, which trains on NVIDIA GPUs"
    requirement, index = "", ""
    if tag:
        from moe_env.lock.indexes import torch_index_url

        index = torch_index_url(tag)
        requirement = f"torch=={public}+{tag}"
        fix = f"pip install '{requirement}' --index-url {index}"
    elif ctx.matrix.torch_release(t.version) is None:
        fix = (f"Install a CUDA build of torch {public} from the PyTorch index (one folder per CUDA build, "
               f"e.g. {_example_index()}), or a torch release the matrix knows (`moe-env lock` pins one)")
    else:
        fix = (f"Upgrade the NVIDIA driver, then install a CUDA build of torch {public} from the PyTorch index "
               f"(one folder per CUDA build, e.g. {_example_index()})")
    return [Finding(
        id=fid, severity="error",
        title=f"torch {t.version} is {kind}, but the GPUs here are NVIDIA's",
        seen=f"torch {t.version} (torch/version.py: cuda = None{', hip = ' + t.hip if t.hip else ''}); {where}; {said}",
        why=("torch.cuda.is_available() is False and the first .cuda() raises 'Torch not compiled with CUDA enabled'"
             + (" (a HIP build drives AMD GPUs only)" if rocm else "") + "; nothing trains on the GPUs."),
        fix=fix,
        sources=[SRC_NOT_COMPILED],
        requirement=requirement,
        index_url=index,
    )]


def _example_index() -> str:
    from moe_env.lock.indexes import torch_index_url

    return torch_index_url("cu126")



@generic("torch-setuptools")
def torch_setuptools(ctx: Context) -> List[Finding]:
    """torch releases whose cpp_extension imports pkg_resources need a setuptools that still has it.

    The range is the matrix's `[[torch]] setuptools` (torch 1.13-2.1 import `packaging` from it); an
    out-of-range setuptools makes `import torch.utils.cpp_extension` fail, so every build against torch
    fails: a deepspeed sdist's setup.py, DeepSpeed's JIT ops at first use, flash-attn's and apex's setup.py.
    The sources: the torch row's, then the artifact sources of the known issues (the two error lines)
    that name this finding.
    """
    fid = "torch.setuptools-without-pkg-resources"
    version = ctx.env.torch.version if ctx.env.torch is not None else ctx.env.version_of("torch")
    row = ctx.matrix.torch_release(version) if version else None
    setuptools = ctx.env.version_of("setuptools")
    if row is None or not row.setuptools or setuptools is None:
        return []
    if spec_contains(row.setuptools, setuptools) is not False:
        return []
    issues = [k for k in ctx.matrix.known_issues if fid in k.doctor]
    lines = " or ".join(f"`{k.patterns[0]}`" for k in issues)
    own = [s for s in row.source if "pkg_resources" in s or "setuptools" in s]
    builders = [s for k in issues for s in k.source if "torch.utils.cpp_extension" in s and s not in own]
    return [Finding(
        id=fid,
        severity="error",
        title=f"torch {version} cannot build extensions with setuptools {setuptools}",
        seen=f"torch {version} with setuptools {setuptools}; torch {row.minor}'s cpp_extension needs setuptools{row.setuptools}",
        why=("torch.utils.cpp_extension runs `from pkg_resources import packaging` when imported, and this "
             "setuptools has no pkg_resources or no `packaging` in it: the import fails"
             + (f" ({lines})" if lines else "")
             + ", so a deepspeed sdist installed after torch fails in its setup.py, DeepSpeed's JIT ops "
             "(fused Adam, ...) fail at first use, and flash-attn's and apex's setup.py fail."),
        fix=f"pip install 'setuptools{row.setuptools}'",
        requirement=f"setuptools{row.setuptools}",
        sources=own + builders,
    )]


def no_setuptools_reasons(ctx: Context) -> List[str]:
    """Why something must compile against a torch that has no setuptools beside it; [] when nothing must
    (or setuptools is there). The requirements check leaves a missing setuptools to torch.no-setuptools then."""
    from moe_env.checks.platform import _must_compile

    version = ctx.env.torch.version if ctx.env.torch is not None else ctx.env.version_of("torch")
    if not version or ctx.env.dist("setuptools") is not None:
        return []
    if not any("torch.no-setuptools" in k.doctor and k.source for k in ctx.matrix.known_issues):
        return []  # a matrix without the cited facts (compat_matrix/generic/extensions.toml) claims nothing
    return _must_compile(ctx)


@generic("torch-no-setuptools")
def torch_no_setuptools(ctx: Context) -> List[Finding]:
    """torch without setuptools, where something must still compile against it (DeepSpeed's JIT ops, a flash-attn
    source build): torch/utils/cpp_extension.py imports setuptools first thing. Quiet when nothing compiles."""
    fid = "torch.no-setuptools"
    reasons = no_setuptools_reasons(ctx)
    if not reasons:
        return []
    version = ctx.env.torch.version if ctx.env.torch is not None else ctx.env.version_of("torch")
    row = ctx.matrix.torch_release(version)
    from moe_env.checks.dependencies import applicable_requirements

    # the torch row's range, and what installed packages declare (torch 2.13: setuptools>=77.0.3), as one spec
    parts = [row.setuptools] if row is not None and row.setuptools else []
    for d, req, name in applicable_requirements(ctx.env):
        if name == "setuptools" and req.specifier and str(req.specifier) not in parts:
            parts.append(str(req.specifier))
    spec = ",".join(parts)
    issues = [k for k in ctx.matrix.known_issues if fid in k.doctor]
    dist = ctx.env.dist("torch")
    error = "\"ModuleNotFoundError: No module named 'setuptools'\""
    wanted = f"setuptools{spec}"
    if dist is not None and dist.installer == "lockfile":
        # a lockfile leaves setuptools to the venv it goes into: `python -m venv` of 3.11 and older seeds one
        severity, fix = "warning", f"Add {wanted} to the lock's input and re-lock"
        title = f"The lockfile pins torch {version} but no setuptools, and something must compile against it"
        seen = f"torch {version} pinned, setuptools not; "
        why = ("torch/utils/cpp_extension.py imports setuptools first thing; installed into an environment made by "
               f"uv, or a venv of Python 3.12+, which start without it, that build stops with {error} "
               "(`python -m venv` of 3.11 and older seeds one).")
    else:
        severity, fix = "error", f"pip install '{wanted}'" if spec else "pip install setuptools"
        title = f"torch {version} without setuptools: nothing can be compiled against it"
        seen = f"torch {version}, no setuptools distribution; "
        why = (f"torch/utils/cpp_extension.py imports setuptools first thing, so that build stops with {error} "
               "(uv-made environments and venvs of Python 3.12+ start without it).")
    return [Finding(id=fid, severity=severity, title=title, seen=seen + "; ".join(reasons), why=why, fix=fix,
                    requirement=wanted, sources=[s for k in issues for s in k.source])]
