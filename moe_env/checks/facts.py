"""Small readers shared by the checks: tolerant version parsing, marker environments, GPU capabilities.

Installed metadata is hostile (versions like `0.0.0`, `2.1.0a0+git1234`, or garbage), so every
parse here returns None instead of raising, and the checks treat None as "cannot judge".
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from moe_env.environment import GPU, Environment
from moe_env.matrix.model import Matrix


def parse_version(text: Optional[str]) -> Optional[Version]:
    if not text:
        return None
    try:
        return Version(str(text).strip())
    except ValueError:  # InvalidVersion, and int()'s digit limit on a 5,000-digit release number
        return None


def parse_spec(text: str) -> Optional[SpecifierSet]:
    try:
        return SpecifierSet(text or "")
    except InvalidSpecifier:
        return None


def spec_contains(spec: str, version: Optional[str]) -> Optional[bool]:
    """Whether `version` satisfies `spec` (pre-releases and local tags allowed); None when either is unreadable."""
    s = parse_spec(spec)
    v = parse_version(version)
    if s is None or v is None:
        return None
    return s.contains(v, prereleases=True)


def release_tuple(text: Optional[str], parts: int = 2) -> Optional[Tuple[int, ...]]:
    """"12.1.105" -> (12, 1); "8.0" -> (8, 0); None when unreadable. Used for CUDA and compute capability."""
    v = parse_version(text)
    if v is None:
        return None
    rel = tuple(v.release) + (0,) * parts
    return rel[:parts]


def cuda_major_minor(text: Optional[str]) -> Optional[str]:
    t = release_tuple(text)
    return f"{t[0]}.{t[1]}" if t else None


def marker_environment(env: Environment) -> Dict[str, str]:
    """The PEP 508 marker variables of the *target* interpreter, from what the probe saw."""
    py = env.python
    full = py.version or ""
    parts = full.split(".")
    short = ".".join(parts[:2])
    plat = (py.platform or "").lower()
    if plat.startswith("linux"):
        sys_platform, system, os_name = "linux", "Linux", "posix"
    elif plat.startswith("macosx") or plat.startswith("darwin"):
        sys_platform, system, os_name = "darwin", "Darwin", "posix"
    elif plat.startswith("win"):
        sys_platform, system, os_name = "win32", "Windows", "nt"
    else:
        sys_platform, system, os_name = plat.split("-")[0] or "linux", "", "posix"
    impl = (py.implementation or "cpython").lower()
    impl_pretty = {"cpython": "CPython", "pypy": "PyPy"}.get(impl, impl)
    return {
        "python_version": short,
        "python_full_version": full,
        "implementation_name": impl,
        "implementation_version": full,
        "platform_python_implementation": impl_pretty,
        "platform_machine": py.machine or "",
        "platform_system": system,
        "platform_release": "",
        "platform_version": "",
        "sys_platform": sys_platform,
        "os_name": os_name,
        "extra": "",
    }


def gpu_capability(gpu: GPU, matrix: Matrix) -> Tuple[Optional[str], str]:
    """A GPU's compute capability and where it came from: probed, or matched by name in the matrix's [[gpu]] table."""
    if gpu.compute_capability and release_tuple(gpu.compute_capability):
        return gpu.compute_capability, "probed"
    name = (gpu.name or "").lower()
    best = None
    for fam in matrix.gpus:
        for pat in fam.match:
            if pat and pat.lower() in name and (best is None or len(pat) > len(best[0])):
                best = (pat, fam)
    if best:
        return best[1].compute_capability, f"matrix [[gpu]] {best[1].family}"
    return None, "unknown"


def gpu_capabilities(env: Environment, matrix: Matrix) -> List[Tuple[GPU, Optional[str]]]:
    return [(g, gpu_capability(g, matrix)[0]) for g in env.host.gpus]


def describe_gpus(gpus: List[Tuple[GPU, Optional[str]]]) -> str:
    """"2x NVIDIA A100 (sm_80), 1x Tesla T4 (sm_75)": GPUs grouped by name and capability."""
    groups: Dict[Tuple[str, Optional[str]], int] = {}
    for g, cc in gpus:
        key = (g.name or "GPU", cc)
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{n}x {name} ({sm(cc)})" for (name, cc), n in groups.items())


def sm(cc: Optional[str]) -> str:
    t = release_tuple(cc)
    return f"sm_{t[0]}{t[1]}" if t else "sm_?"
