"""lock asks doctor before it writes: a stack whose pins doctor would fail on the host is not chosen.

The candidates come from the resolver, best first; each is judged as an Environment made from its
pins (moe_env.lock.as_env) on the probed or stated host, through doctor's own checks. The first one
without errors is locked; when every candidate fails, the lock is refused with doctor's finding of
the best one. After the lockfile text exists (shipped or fresh) it is judged once more, in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from moe_env.environment import HostInfo
from moe_env.errors import MoeEnvError, UsageError
from moe_env.findings import Finding
from moe_env.lock.as_env import LockedSet, environment_from_locked, judge, read_locked
from moe_env.matrix.model import Matrix
from moe_env.resolver import Resolution, resolve


class LockRefused(MoeEnvError):
    """doctor would fail the lock on this host (a problem found: exit 1)."""

    exit_code = 1

    def __init__(self, message: str, findings: Sequence[Finding] = ()):
        super().__init__(message)
        self.findings = list(findings)


@dataclass
class Judged:
    resolution: Resolution
    findings: List[Finding]  # doctor's findings of the chosen stack on the host (no errors among them)
    refused: List[Tuple[Resolution, List[Finding]]] = field(default_factory=list)  # better-ranked candidates doctor failed


def errors(findings: Sequence[Finding]) -> List[Finding]:
    return [f for f in findings if f.severity == "error" and not f.deferred]


def locked_from_resolution(resolution: Resolution) -> LockedSet:
    """The stack's pins as the lock will pin them (torch's build for the target), before any resolution."""
    from moe_env.build_steps import build_later
    from moe_env.lock.inputs import lock_input, norm

    inp = lock_input(resolution)
    pins = {}
    for req in inp.requirements:
        name, _, version = req.partition("==")
        pins[norm(name.split("[", 1)[0])] = version
    later = {}
    for item in build_later(resolution):
        name, _, version = item.partition("==")
        later[norm(name)] = version
    for item in inp.excluded:
        name, _, version = item.partition("==")
        later.setdefault(norm(name.split("[", 1)[0]), version)
    for item in inp.constraints:  # asked for by range: in the lock, at a version the resolver picks
        name = norm(re.split(r"[<>=!~;\[ ]", item, 1)[0])
        if name not in pins and name not in later:
            pins[name] = ""
    return LockedSet(pins=pins, source_builds=later, python=resolution.target.python,
                     project=resolution.project.name, variant=resolution.variant.id if resolution.variant else None,
                     stack=resolution.stack.id, origin=f"stack {resolution.stack.id}")


def judge_resolution(matrix: Matrix, resolution: Resolution, host: HostInfo) -> List[Finding]:
    locked = locked_from_resolution(resolution)
    env = environment_from_locked(matrix, locked, host, resolution.target.python)
    return judge(matrix, env, resolution.project.name, _variants(resolution))


def judge_text(matrix: Matrix, resolution: Resolution, text: str, origin: str, host: HostInfo) -> List[Finding]:
    locked = read_locked(text, origin, resolution.target.python)
    env = environment_from_locked(matrix, locked, host, resolution.target.python)
    return judge(matrix, env, resolution.project.name, _variants(resolution))


def _variants(resolution: Resolution) -> List[str]:
    if resolution.variant is not None:
        return [resolution.variant.id]
    moe = [v.id for v in resolution.project.moe_variants()]
    served = [v for v in moe if not resolution.stack.variants or v in resolution.stack.variants]
    return served or list(resolution.stack.variants[:1])


def choose(matrix: Matrix, project: str, host: HostInfo, *, variant: Optional[str] = None, cuda: Optional[str] = None,
           python: Optional[str] = None, env=None, gpu_archs: Optional[Sequence[str]] = None,
           usable: Optional[Callable[[Resolution], bool]] = None) -> Judged:
    """The best-ranked resolution doctor passes on `host`, or LockRefused with doctor's own finding.

    `usable` (lock --offline: has a shipped lockfile) passes over candidates first; when none is usable the
    best unusable one is returned, so the caller can say why it cannot be had.
    """
    refused: List[Tuple[Resolution, List[Finding]]] = []
    exclude: List[Tuple[str, str]] = []
    unusable: List[Judged] = []
    while True:
        try:
            r = resolve(matrix, project, variant=variant, cuda=cuda, python=python, env=env, gpu_archs=gpu_archs,
                        exclude=exclude)
        except UsageError:
            if unusable:
                return unusable[0]
            if not refused:
                raise
            raise refusal(refused, host) from None
        if usable is not None and not usable(r):
            findings = judge_resolution(matrix, r, host)
            if not errors(findings):
                unusable.append(Judged(r, findings, list(refused)))
            else:
                refused.append((r, findings))
            exclude.append((r.stack.id, r.target.cuda))
            continue
        findings = judge_resolution(matrix, r, host)
        if not errors(findings):
            for other, fs in refused:
                e = errors(fs)[0]
                r.reasons.append(f"not chosen: {other.stack.id} on CUDA {other.target.cuda}: doctor would fail it on this "
                                 f"host ({e.id}: {e.title})")
            return Judged(r, findings, refused)
        refused.append((r, findings))
        exclude.append((r.stack.id, r.target.cuda))
        if len(exclude) > 64:  # more candidates than any matrix has: stop rather than loop
            raise refusal(refused, host)


def host_words(host: HostInfo) -> str:
    gpus = sorted({("sm_" + g.compute_capability.replace(".", "")) if g.compute_capability else (g.name or "?")
                   for g in host.gpus})
    parts = [f"driver {host.driver_version}" if host.driver_version else "no driver",
             ("GPUs " + ", ".join(gpus)) if gpus else "no GPU",
             f"nvcc {host.nvcc_version}" if host.nvcc_version else "no nvcc"]
    if host.build_mode:
        parts.append("--build")
    if host.overrides:
        parts.append("stated by " + ", ".join(host.overrides))
    return "; ".join(parts)


def refusal(refused: List[Tuple[Resolution, List[Finding]]], host: HostInfo) -> LockRefused:
    r, findings = refused[0]
    e = errors(findings)[0]
    others = ", ".join(f"{x.stack.id} (CUDA {x.target.cuda}: {errors(fs)[0].id})" for x, fs in refused[1:4])
    msg = (f"{r.project.name}: doctor would fail every stack that fits this host ({host_words(host)}); "
           f"best candidate {r.stack.id} (CUDA {r.target.cuda}): {e.id}: {e.title}: {e.seen}. Fix: {e.fix}"
           + (f". Also refused: {others}" if others else "")
           + ". " + _elsewhere(e))
    return LockRefused(msg, findings)


def _elsewhere(e: Finding) -> str:
    """How to lock for a machine other than this one, for the fact the finding is about."""
    if e.id.startswith("build.nvcc"):
        return "To lock for another machine, state its toolkit: MOE_ENV_NVCC_VERSION=X.Y, or =none where nothing compiles"
    if e.id.startswith(("torch.driver", "torch.gpu", "gpu.", "host.")):
        return ("To lock for another machine, state its GPUs and driver (MOE_ENV_GPUS, MOE_ENV_CUDA_DRIVER_VERSION), "
                "or use --build for an image judged on its nodes")
    return "To lock for another machine, state its facts (MOE_ENV_GPUS, MOE_ENV_CUDA_DRIVER_VERSION, MOE_ENV_NVCC_VERSION)"


def check_text(matrix: Matrix, resolution: Resolution, text: str, origin: str, host: HostInfo) -> List[Finding]:
    """Judge the finished lockfile; raise LockRefused when doctor would fail it."""
    findings = judge_text(matrix, resolution, text, origin, host)
    bad = errors(findings)
    if bad:
        e = bad[0]
        raise LockRefused(f"{resolution.project.name}: the lockfile of {resolution.stack.id} would fail doctor on this host "
                          f"({host_words(host)}): {e.id}: {e.title}: {e.seen}. Fix: {e.fix}. {_elsewhere(e)}", findings)
    return findings
