"""The two ends of doctor's text report: what the environment is (as collect_env and ds_report print it)
and the one install command that applies every fix that is a requirement.

Both read only the Environment, the matrix and the Findings; render.py lays them out.
"""

from __future__ import annotations

import shlex
from typing import Dict, List, Optional, Tuple

from moe_env.environment import Environment, normalize_name
from moe_env.findings import SEVERITY_ORDER, Finding


def _torch_archs(env: Environment, matrix) -> str:
    from moe_env.checks.facts import cuda_major_minor, sm, spec_contains

    t = env.torch
    cuda = cuda_major_minor(t.cuda) if t and t.cuda else None
    if cuda is None:
        return ""
    for row in getattr(matrix, "torch_archs", []) or []:
        if spec_contains(row.torch, t.version) and cuda in [cuda_major_minor(c) for c in row.cuda]:
            return " ".join(sm(a) for a in row.archs) + (f" +PTX {sm(row.ptx)}" if row.ptx else "")
    return ""


def environment_summary(env: Environment, matrix=None) -> List[Tuple[str, str]]:
    """(label, value) rows: python, torch, deepspeed, transformers, accelerate, flash-attn, NCCL, driver, GPUs, nvcc,
    CUDA_HOME, /dev/shm. Values are facts as probed; unknowns say so."""
    rows: List[Tuple[str, str]] = []
    py = env.python
    rows.append(("python", f"{py.version} ({py.executable})"))
    t = env.torch
    if t is None:
        rows.append(("torch", "not installed"))
    else:
        if t.cuda:
            build = f"CUDA {t.cuda}"
        elif t.hip:
            build = f"ROCm/HIP {t.hip}, no CUDA"
        else:
            build = "CPU-only, no CUDA"
        extra = []
        archs = _torch_archs(env, matrix) if matrix is not None else ""
        if archs:
            extra.append(f"archs {archs}")
        if t.cudnn:
            extra.append(f"cuDNN {t.cudnn}")
        if t.cxx11_abi is not None:
            extra.append(f"C++11 ABI {int(bool(t.cxx11_abi))}")
        rows.append(("torch", f"{t.version} ({build}{'; ' + '; '.join(extra) if extra else ''})"))
    ds = env.deepspeed
    if ds is None:
        rows.append(("deepspeed", "not installed"))
    else:
        ops = sorted(op for op, on in ds.installed_ops.items() if on)
        built = ""
        if ds.built_torch and ds.built_torch != "0.0":
            built = f"; built for torch {ds.built_torch}" + (f", CUDA {ds.built_cuda}" if ds.built_cuda and ds.built_cuda != "0.0" else "")
        if not ds.build_info_found:
            opstext = "build info not found"
        else:
            opstext = f"pre-built ops: {', '.join(ops)}" if ops else "no pre-built ops, JIT-compiled at first use"
        rows.append(("deepspeed", f"{ds.version} ({opstext}{built})"))
    for name in ("transformers", "accelerate"):
        rows.append((name, env.version_of(name) or "not installed"))
    fa = env.dist("flash-attn")
    ext = env.extensions.get("flash-attn")
    rows.append(("flash-attn", fa.version if fa else (ext.version or "present") if ext and ext.present else "not installed"))
    if t is not None and t.cuda:
        rows.append(("NCCL", f"{t.nccl} ({t.nccl_source})" if t.nccl else "unknown (no nvidia-nccl-cu* wheel, none in torch/lib)"))
    host = env.host
    rows.append(("driver", f"{host.driver_version} ({host.driver_source})" if host.driver_version else
                 ("none (--build)" if host.build_mode else "none found")))
    if host.gpus:
        from collections import Counter

        groups = Counter((g.name, g.compute_capability, g.memory_mib) for g in host.gpus)
        parts = []
        for (name, cc, mem), n in groups.items():
            bits = [b for b in (f"sm_{cc.replace('.', '')}" if cc else "", f"{mem // 1024} GiB" if mem else "") if b]
            parts.append(f"{n}x {name}" + (f" ({', '.join(bits)})" if bits else ""))
        rows.append(("GPUs", ", ".join(parts) + (f" [{host.gpu_source}]" if host.gpu_source else "")))
    else:
        rows.append(("GPUs", "none (--build)" if host.build_mode else "none found"))
    rows.append(("nvcc", f"{host.nvcc_version} ({host.nvcc_path or 'MOE_ENV_NVCC_VERSION'})" if host.nvcc_version else "not found"))
    if host.cuda_home:
        state = "" if host.cuda_home_exists is not False else ", does not exist"
        rows.append(("CUDA_HOME", f"{host.cuda_home} ({host.cuda_home_source or 'found'}{state})"))
    else:
        rows.append(("CUDA_HOME", "unset, no /usr/local/cuda"))
    if host.shm_bytes is not None:
        size = host.shm_bytes
        text = f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"
        rows.append(("/dev/shm", text + (f" (container: {host.container})" if host.container else "")))
    return rows


def combined_fix(findings: List[Finding], env: Environment) -> Optional[str]:
    """One install command for every error/warning whose fix is a requirement (one per package, the most severe).

    `uv pip install --python X` when the target has no pip (uv-made venvs), else `X -m pip install`.
    """
    from moe_env.checks.merge import split_requirement

    chosen: Dict[str, Finding] = {}
    order = sorted((f for f in findings if f.requirement and not f.deferred and f.severity in ("error", "warning")),
                   key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), 0 if f.index_url else 1))
    for f in order:
        req = split_requirement(f.requirement)
        if req is not None:
            chosen.setdefault(req[0], f)
    # a package the command itself changes brings its own requirements: what the installed release asks for
    # (deepspeed 0.19's pydantic>=2 while the fix moves deepspeed to 0.14) would only fight the change
    changed = {name for name, f in chosen.items() if f.required_by is None}
    chosen = {name: f for name, f in chosen.items() if f.required_by is None or normalize_name(f.required_by) not in changed}
    if not chosen:
        return None
    reqs = [shlex.quote(f.requirement) for f in chosen.values()]
    indexes = list(dict.fromkeys(f.index_url for f in chosen.values() if f.index_url))
    exe = shlex.quote(env.python.executable or "python")
    head = f"{exe} -m pip install" if env.dist("pip") is not None else f"uv pip install --python {exe}"
    tail = "".join(f" --extra-index-url {shlex.quote(i)}" for i in indexes)
    return f"{head} {' '.join(reqs)}{tail}"
