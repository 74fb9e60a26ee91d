"""Host facts for `--cuda auto`: the probe's gather_host when present, else the documented overrides.

The overrides (MOE_ENV_CUDA_DRIVER_VERSION, MOE_ENV_GPUS like `8.0x8` or `H100:9.0,A100:8.0`) let a
build machine without a GPU, and the tests, say what the target host has.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace
from typing import List

from moe_env.environment import GPU, HostInfo


def host_environment(build_mode: bool = False) -> SimpleNamespace:
    """An object with `.host` (HostInfo), which is all the resolver reads of an Environment."""
    try:
        from moe_env.probe.host import gather_host  # the probe owner's host probe
    except ImportError:
        gather_host = None
    if gather_host is not None:
        return SimpleNamespace(host=gather_host(build_mode))
    return SimpleNamespace(host=_from_overrides())


def _from_overrides() -> HostInfo:
    host = HostInfo()
    driver = os.environ.get("MOE_ENV_CUDA_DRIVER_VERSION")
    if driver:
        host.driver_version = driver.strip()
        host.driver_source = "MOE_ENV_CUDA_DRIVER_VERSION"
        host.overrides.append("MOE_ENV_CUDA_DRIVER_VERSION")
    else:
        for path in ("/sys/module/nvidia/version",):
            try:
                with open(path, encoding="utf-8") as fh:
                    host.driver_version = fh.read().strip()
                    host.driver_source = path
            except OSError:
                pass
    gpus = os.environ.get("MOE_ENV_GPUS")
    if gpus:
        host.gpus = parse_gpus(gpus)
        host.gpu_source = "MOE_ENV_GPUS"
        host.overrides.append("MOE_ENV_GPUS")
    return host


def parse_gpus(spec: str) -> List[GPU]:
    """`8.0x8` (eight GPUs of 8.0), `H100:9.0`, `9.0,8.6` → GPUs."""
    out: List[GPU] = []
    for item in re.split(r"[,\s]+", spec.strip()):
        if not item:
            continue
        name, cc = ("", item)
        if ":" in item:
            name, cc = item.split(":", 1)
        count = 1
        m = re.match(r"^(\d+\.\d+)x(\d+)$", cc)
        if m:
            cc, count = m.group(1), int(m.group(2))
        for _ in range(count):
            out.append(GPU(index=len(out), name=name or f"GPU sm_{cc.replace('.', '')}", compute_capability=cc))
    return out
