"""What a fresh resolution is asked for: the stack's pins as requirements, the target, the indexes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

from moe_env.lock.indexes import default_index, torch_index_url
from moe_env.resolver import Resolution

# packages published per CUDA build beside torch, with the same local tag (+cu118)
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")


@dataclass
class LockInput:
    requirements: List[str]  # "torch==2.1.2+cu118", "deepspeed==0.13.2"
    python: str  # "3.10"
    platform: str  # uv's --python-platform: "x86_64-manylinux_2_17"
    index_url: Optional[str] = None  # None: the backend's default index
    extra_index_urls: List[str] = field(default_factory=list)
    excluded: List[str] = field(default_factory=list)  # source builds, installed after the lockfile
    constraints: List[str] = field(default_factory=list)  # ranges, not pins: "setuptools<82,!=70.*"

    def requirements_in(self) -> str:
        return "".join(r + "\n" for r in self.requirements + self.constraints)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_input(resolution: Resolution, index_url: Optional[str] = None, torch_index: Optional[str] = None) -> LockInput:
    from moe_env.build_steps import excluded_from_lock

    target = resolution.target
    skip = set(excluded_from_lock(resolution))
    reqs: List[str] = []
    excluded: List[str] = []
    for pkg, ver in resolution.stack.pins.items():
        n = norm(pkg.split("[", 1)[0])  # a pin key may carry extras: "transformer-engine[core_cu13]"
        if n in skip:
            excluded.append(f"{pkg}=={ver}")
            continue
        if n == "torch" and target.torch:
            ver = target.torch
        elif n in TORCH_FAMILY and target.torch_index:
            ver = f"{ver.split('+', 1)[0]}+{target.torch_index}"
        reqs.append(f"{pkg}=={ver}")
    extra = [torch_index_url(target.torch_index, torch_index)] if target.torch_index else []
    constraints = []
    torch_pin = next((v for k, v in resolution.stack.pins.items() if norm(k) == "torch"), None)
    torch_version = target.torch or torch_pin
    release = resolution.matrix.torch_release(torch_version) if resolution.matrix and torch_version else None
    pinned = {norm(k.split("[", 1)[0]) for k in resolution.stack.pins}
    if "setuptools" not in pinned and (release is not None and release.setuptools or compiles(resolution, excluded)):
        # the .in asks for it, so the lock pins it: torch/utils/cpp_extension.py imports setuptools (and 1.13-2.1
        # pkg_resources), and uv-made or Python 3.12+ venvs start without one (doctor: torch.no-setuptools)
        constraints.append(f"setuptools{(release.setuptools or '') if release is not None else ''}")
    # what a build-step package installs with it goes into the lockfile (hash-checked, in an air-gapped
    # wheelhouse); the step itself then finds everything installed
    from moe_env.matrix.consistency import release_facts

    for item in excluded:
        name, _, version = item.partition("==")
        row = release_facts(resolution.matrix, name.split("[", 1)[0], version) if resolution.matrix and version else None
        for dep, spec in sorted((row.requires if row else {}).items()):
            if norm(dep) not in pinned and norm(dep) not in skip and f"{dep}{spec}" not in constraints:
                constraints.append(f"{dep}{spec}")
    return LockInput(
        requirements=reqs,
        python=target.python,
        platform=_platform(resolution),
        index_url=default_index(index_url),
        extra_index_urls=extra,
        excluded=excluded,
        constraints=constraints,
    )


def compiles(resolution: Resolution, excluded: List[str]) -> bool:
    """Something installed from this lock compiles against torch: DeepSpeed's ops JIT-build at first use (a pip
    install of deepspeed pre-builds none), and every source build the lock leaves to build steps."""
    return bool(excluded) or any(norm(k.split("[", 1)[0]) == "deepspeed" for k in resolution.stack.pins)


# The oldest glibc a lockfile targets: RHEL/Rocky 8 and Ubuntu 20.04 have it. Some stacks' packages only
# ship manylinux_2_24+ wheels (bitsandbytes 0.45), so torch's own floor (2.17 until 2.6) is too low.
GLIBC_FLOOR = (2, 28)


def _platform(resolution: Resolution) -> str:
    torch_floor = tuple(int(x) for x in (resolution.target.glibc or "2.17").split("."))
    major, minor = max(torch_floor, GLIBC_FLOOR)
    return f"x86_64-manylinux_{major}_{minor}"
