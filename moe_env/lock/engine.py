"""Lock one resolution: the shipped lockfile when it covers the target (offline), else a fresh one.

The lockfile text is a header of comments (stack, why, sources, target, the command, backend and
date, how to install, what is built from source afterwards) over the backend's pins and hashes.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from moe_env.lock.backends import resolve_fresh
from moe_env.lock.indexes import torch_index_url
from moe_env.lock.inputs import LockInput, lock_input
from moe_env.lock.shipped import shipped_lockfile
from moe_env.resolver import Resolution


@dataclass
class LockResult:
    resolution: Resolution
    text: str  # the whole lockfile
    origin: str  # "shipped", "uv" or "pip-tools"
    format: str  # "requirements" or "pylock"
    shipped: Optional[Path] = None  # the shipped file, when that is the origin
    backend_version: str = ""
    seconds: float = 0.0  # time spent in the backend
    excluded: List[str] = field(default_factory=list)


def command_line(resolution: Resolution, extra: str = "") -> str:
    t = resolution.target
    parts = ["moe-env lock", resolution.project.name]
    if resolution.variant:
        parts += ["--model", resolution.variant.id]
    parts += ["--cuda", t.cuda, "--python", t.python]
    if extra:
        parts.append(extra)
    return " ".join(parts)


def offline_hint(resolution: Resolution) -> str:
    p = resolution.project
    shipped = [s for s in p.stacks if shipped_lockfile(p.name, s)]
    if shipped:
        ways = "; ".join(
            f"`moe-env lock {p.name}" + (f" --model {s.variants[0]}" if s.variants else "") + f" --cuda {s.cuda}` ({s.id})"
            for s in shipped[:4])
        return f"; offline, shipped lockfiles still work: {ways}; `moe-env build-steps` works offline too"
    return "; offline, `moe-env build-steps` and `moe-env doctor` still work"


def lock(
    resolution: Resolution,
    refresh: bool = False,
    backend: str = "uv",
    fmt: str = "requirements",
    index_url: Optional[str] = None,
    torch_index: Optional[str] = None,
    timeout: float = 600.0,
    date: Optional[str] = None,
    command: Optional[str] = None,
) -> LockResult:
    if not refresh and fmt == "requirements" and resolution.native:
        path = shipped_lockfile(resolution.project.name, resolution.stack)
        if path is not None:
            return LockResult(resolution, path.read_text(encoding="utf-8"), "shipped", fmt, shipped=path)
    inp = lock_input(resolution, index_url=index_url, torch_index=torch_index)
    result = resolve_fresh(inp, backend=backend, fmt=fmt, timeout=timeout, offline_hint=offline_hint(resolution))
    head = header(resolution, inp, f"{result.backend} {result.version}", command or command_line(resolution, "--refresh"),
                  date or _dt.date.today().isoformat(), torch_index)
    return LockResult(resolution, head + result.text, result.backend, fmt, backend_version=result.version,
                      seconds=result.seconds, excluded=list(inp.excluded))


def header(resolution: Resolution, inp: LockInput, backend: str, command: str, date: str,
           torch_index: Optional[str] = None) -> str:
    from moe_env.build_steps import build_later

    r, s, t = resolution, resolution.stack, resolution.target
    who = f"variant {r.variant.id}" if r.variant else "variants " + (", ".join(s.variants) or "all")
    lines = [
        f"moe-env lockfile: {r.project.name} ({who}), stack {s.id}",
        f"target: Linux x86_64 (glibc >= {inp.platform.rsplit('_', 2)[-2]}.{inp.platform.rsplit('_', 1)[-1]}), CPython {t.python}, "
        + (f"CUDA {t.cuda}" if t.cuda != "cpu" else "CPU") + (f", torch {t.torch}" if t.torch else ""),
        f"why: {s.why}",
    ]
    lines += [f"source: {src}" for src in s.source]
    lines += [f"departs from upstream: {d}" for d in s.departs]
    from moe_env.resolver import gpu_coverage

    lines += gpu_coverage(resolution)
    lines += [f"note: {reason}" for reason in r.reasons[1:]]
    lines.append(f"command: {command}")
    lines.append(f"resolved: {date} by {backend} --generate-hashes, for Python {inp.python} on {inp.platform}")
    install = "pip install --require-hashes -r requirements.txt"
    if t.torch_index:
        install += f" --extra-index-url {torch_index_url(t.torch_index, torch_index)}"
    lines.append(f"install: {install}")
    later = build_later(resolution)
    if later:
        from moe_env.build_steps import build_steps

        lines.append(f"then install with build steps (not in this file): {', '.join(later)}; "
                     f"run `moe-env build-steps {r.project.name}" + (f" --model {r.variant.id}" if r.variant else "")
                     + f" --cuda {t.cuda} --python {t.python}`")
        lines += [f"build step: {s.package} {s.version}: {s.summary}" for s in build_steps(resolution) if s.summary]
    return "".join(f"# {ln}\n" for ln in lines) + "\n"
