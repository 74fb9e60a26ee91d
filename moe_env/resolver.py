"""Project + variant + target → one known-good stack, and the reasons it was picked.

A stack in the matrix is a set of exact pins for one CUDA build and one Python. The target may ask
for another CUDA build of the same torch (the PyTorch index carries several per release); the
resolver retargets the stack when the torch release has that build, and says so. With `--cuda
auto` the host decides: the driver bounds the newest CUDA the build may use, and every GPU's
compute capability must be compiled into the build (SASS of the same major and a lower-or-equal
minor runs; PTX runs on anything newer). Pure: reads the Matrix and an Environment, probes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from moe_env.errors import UsageError
from moe_env.lock.shipped import shipped_lockfile
from moe_env.matrix.model import Matrix, Project, Stack, TorchRelease, Variant

_CUDA_RE = re.compile(r"^\d+\.\d+$")
_PY_RE = re.compile(r"^3\.\d+$")


@dataclass
class Target:
    """What the lock is for."""

    cuda: str  # "12.1", or "cpu"
    python: str  # "3.10"
    torch: str = ""  # the torch pin as locked: "2.1.2" (PyPI default build) or "2.1.2+cu118"; "" if unpinned
    torch_index: str = ""  # "cu118": the PyTorch index folder torch comes from; "" = the default index
    gpu_archs: List[str] = field(default_factory=list)  # compute capabilities the build must carry
    driver: Optional[str] = None  # the host driver, when known
    cuda_from: str = "stack"  # "--cuda", "auto", "stack"
    platform: str = "linux-x86_64"
    glibc: str = ""  # the torch wheels' glibc floor ("2.17", "2.28"); "" when unknown
    cxx11_abi: Optional[bool] = None  # the torch build's C++ ABI, when the matrix knows it
    build_archs: List[str] = field(default_factory=list)  # archs compiled into this torch build ([] unknown)


@dataclass
class Resolution:
    project: Project
    variant: Optional[Variant]  # None: the project's default (MoE) variants
    stack: Stack
    target: Target
    reasons: List[str] = field(default_factory=list)
    matrix: Optional[Matrix] = field(default=None, repr=False, compare=False)  # for build steps' look-ups

    @property
    def native(self) -> bool:
        """True when the target is the stack's own CUDA and Python: its shipped lockfile applies."""
        return self.target.cuda == self.stack.cuda and self.target.python == self.stack.python

    def to_dict(self) -> dict:
        return {
            "project": self.project.name,
            "variant": self.variant.id if self.variant else None,
            "stack": self.stack.id,
            "stack_cuda": self.stack.cuda,
            "stack_python": self.stack.python,
            "pins": dict(self.stack.pins),
            "source_builds": list(self.stack.source_builds),
            "target": {
                "cuda": self.target.cuda,
                "python": self.target.python,
                "torch": self.target.torch,
                "torch_index": self.target.torch_index,
                "gpu_archs": list(self.target.gpu_archs),
                "driver": self.target.driver,
                "cuda_from": self.target.cuda_from,
                "platform": self.target.platform,
                "glibc": self.target.glibc,
            },
            "native": self.native,
            "reasons": list(self.reasons),
            "sources": list(self.stack.source),
        }


# ---------------------------------------------------------------- small parsers


def _vtuple(text: str) -> Tuple[int, ...]:
    out = []
    for part in text.split("."):
        m = re.match(r"\d+", part)
        out.append(int(m.group(0)) if m else 0)
    return tuple(out)


def cuda_local_tag(cuda: str) -> str:
    """"12.1" → "cu121"; "cpu" → "cpu"."""
    if cuda == "cpu":
        return "cpu"
    major, minor = cuda.split(".")[:2]
    return f"cu{major}{minor}"


def _norm_arch(arch: str) -> str:
    """"sm_80", "8.0", "80", "8.0+PTX" → "8.0"."""
    a = arch.strip().lower().replace("sm_", "").replace("+ptx", "")
    if re.match(r"^\d+\.\d+$", a):
        return a
    if re.match(r"^\d{2,3}$", a):
        return f"{a[:-1]}.{a[-1]}"
    raise UsageError(f"--gpu-arch {arch!r}: expected a compute capability such as 8.0 or sm_90")


def parse_archs(archs: Optional[Sequence[str]]) -> List[str]:
    out: List[str] = []
    for item in archs or ():
        for a in re.split(r"[;,\s]+", item):
            if a:
                n = _norm_arch(a)
                if n not in out:
                    out.append(n)
    return out


# ---------------------------------------------------------------- matrix look-ups


def known_cudas(matrix: Matrix) -> List[str]:
    seen = set()
    for r in matrix.torch_releases:
        seen.update(r.cuda_builds)
        seen.add(r.default_cuda)
    seen.update(d.cuda for d in matrix.cuda_drivers)
    return sorted(seen, key=_vtuple)


def torch_builds(matrix: Matrix, torch_version: str) -> Tuple[Optional[TorchRelease], List[str]]:
    """The torch release row and the CUDA builds that exist for it (default first)."""
    rel = matrix.torch_release(torch_version) if torch_version else None
    if rel is None:
        return None, []
    builds = [rel.default_cuda] + [c for c in rel.cuda_builds if c != rel.default_cuda]
    return rel, builds


def build_archs(matrix: Matrix, torch_version: str, cuda: str) -> Optional[Tuple[List[str], str]]:
    """(archs with SASS, ptx arch or "") compiled into torch `torch_version` for `cuda`; None when unknown."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if not torch_version or cuda == "cpu":
        return None
    v = Version(torch_version.split("+", 1)[0])
    for row in matrix.torch_archs:
        if cuda in row.cuda and v in SpecifierSet(row.torch):
            return list(row.archs), row.ptx
    return None


def arch_runs(gpu: str, archs: List[str], ptx: str) -> bool:
    """A GPU runs a build that has SASS for its major at a lower-or-equal minor, or PTX at or below it."""
    g = _vtuple(gpu)
    for a in archs:
        t = _vtuple(a)
        if t[0] == g[0] and t[1:] <= g[1:]:
            return True
    return bool(ptx) and _vtuple(ptx) <= g


def min_driver(matrix: Matrix, cuda: str) -> Tuple[Optional[str], str]:
    """(minimum driver, how) for a CUDA build: the toolkit's own floor, else the major's minor-compat floor."""
    for row in matrix.cuda_drivers:
        if row.cuda == cuda:
            return row.min_driver, "toolkit"
    major = int(cuda.split(".")[0])
    for row in matrix.cuda_minor_compat:
        if row.cuda_major == major:
            return row.min_driver, "minor-version compatibility"
    return None, "unknown"


def driver_allows(matrix: Matrix, driver: str, cuda: str) -> Tuple[bool, str]:
    """Can this driver run a torch build of `cuda`? PyTorch wheels carry their own runtime, so the
    major's minor-version-compatibility floor is enough; the toolkit floor is reported when known."""
    if cuda == "cpu":
        return True, "CPU build"
    major = int(cuda.split(".")[0])
    compat = next((r.min_driver for r in matrix.cuda_minor_compat if r.cuda_major == major), None)
    own = next((r.min_driver for r in matrix.cuda_drivers if r.cuda == cuda), None)
    d = _vtuple(driver)
    if own and d >= _vtuple(own):
        return True, f"driver {driver} >= {own} (CUDA {cuda})"
    if compat and d >= _vtuple(compat):
        return True, f"driver {driver} >= {compat} (CUDA {major}.x minor-version compatibility)"
    floor = compat or own
    if floor is None:
        return True, f"no driver floor for CUDA {cuda} in the matrix"
    return False, f"driver {driver} < {floor}, the oldest that runs CUDA {cuda} builds"


# ---------------------------------------------------------------- resolve


def resolve(
    matrix: Matrix,
    project: str,
    variant: Optional[str] = None,
    cuda: Optional[str] = None,
    python: Optional[str] = None,
    env=None,
    gpu_archs: Optional[Sequence[str]] = None,
    exclude: Sequence[Tuple[str, str]] = (),
) -> Resolution:
    """Pick the known-good stack for `project`/`variant` on the target; raise UsageError when none fits.

    `cuda`: "X.Y", "cpu", "auto" (from env.host) or None (the stack's own). `python`: "X.Y" or None
    (the stack's own). `gpu_archs`: compute capabilities; default: env.host's GPUs when env is given.
    `exclude`: (stack id, CUDA) pairs already refused (by doctor's judgement of the host): not chosen again.
    """
    proj = matrix.project(project)
    if proj is None:
        names = ", ".join(sorted(matrix.projects)) or "none"
        raise UsageError(f"unknown project {project!r} (known: {names})")
    var: Optional[Variant] = None
    if variant:
        var = proj.variant(variant)
        if var is None:
            ids = ", ".join(v.id for v in proj.variants) or "none"
            raise UsageError(f"{proj.name}: unknown model variant {variant!r} (variants: {ids})")
    if python is not None and not _PY_RE.match(python):
        raise UsageError(f"--python {python!r}: expected a CPython minor such as 3.10")
    if cuda is not None and cuda not in ("auto", "cpu") and not _CUDA_RE.match(cuda):
        raise UsageError(f"--cuda {cuda!r}: expected X.Y (e.g. 12.1), cpu or auto")
    if cuda not in (None, "auto", "cpu") and cuda not in known_cudas(matrix):
        raise UsageError(
            f"--cuda {cuda}: no torch build for CUDA {cuda} is known to the matrix (known: {', '.join(known_cudas(matrix))})"
        )

    reasons: List[str] = []
    # which stacks serve the variant(s)
    if var is not None:
        wanted = [var.id]
        stacks = [s for s in proj.stacks if not s.variants or var.id in s.variants]
    else:
        wanted = [v.id for v in proj.moe_variants()]
        stacks = [s for s in proj.stacks if not s.variants or not wanted or set(wanted) & set(s.variants)]
    if not stacks:
        what = f"variant {var.id}" if var else "its default variants"
        raise UsageError(f"{proj.name}: no known-good stack in the matrix for {what}")

    # the GPUs the build must carry, and the driver
    archs = parse_archs(gpu_archs)
    archs_from = "--gpu-arch" if archs else ""
    host = getattr(env, "host", None)
    if not archs and host is not None:
        archs = parse_archs([g.compute_capability for g in host.gpus if g.compute_capability])
        archs_from = "the host's GPUs" if archs else ""
    driver = host.driver_version if host is not None else None
    if cuda == "auto" and host is None:
        raise UsageError("--cuda auto needs the host's facts (probe failed); give --cuda X.Y")

    # python filter
    if python is not None:
        fits = [s for s in stacks if _python_ok(matrix, s, python)]
        if not fits:
            runs = ", ".join(sorted({f"{s.id} (Python {s.python})" for s in stacks}))
            raise UsageError(f"--python {python}: no known-good {proj.name} stack runs on Python {python} (stacks: {runs})")
        stacks = fits

    # score every (stack, cuda build) pair
    candidates = []  # (rank tuple, stack, cuda, notes)
    rejected: List[str] = []
    for order, s in enumerate(stacks):
        rel, builds = torch_builds(matrix, s.pins.get("torch", ""))
        options = [s.cuda] + [c for c in builds if c != s.cuda]
        if cuda == "cpu":
            options = ["cpu"]  # every torch release has a +cpu build on the PyTorch index
        elif cuda not in (None, "auto"):
            options = [c for c in options if c == cuda]
            if not options:
                rejected.append(f"{s.id}: torch {s.pins.get('torch', '?')} has no CUDA {cuda} build (builds: {', '.join(builds) or s.cuda})")
                continue
        elif cuda is None:
            # the stack's own build; another build of its torch only when the GPUs need one
            options = [s.cuda] + ([c for c in builds if c != s.cuda] if archs else [])
        for c in options:
            if (s.id, c) in exclude:
                continue
            notes: List[str] = []
            ok = True
            if cuda == "auto" and driver and c != "cpu":
                allowed, why = driver_allows(matrix, driver, c)
                if not allowed:
                    rejected.append(f"{s.id} on CUDA {c}: {why}")
                    ok = False
                else:
                    notes.append(why)
            if ok and archs and c != "cpu":
                carried = build_archs(matrix, s.pins.get("torch", ""), c)
                if carried is None:
                    notes.append(f"the matrix does not list the GPU architectures of torch {s.pins.get('torch', '?')} CUDA {c}")
                else:
                    missing = [a for a in archs if not arch_runs(a, carried[0], carried[1])]
                    if missing:
                        rejected.append(
                            f"{s.id} on CUDA {c}: torch {s.pins.get('torch', '?')} cu{c.replace('.', '')} has no kernels for "
                            f"sm_{missing[0].replace('.', '')} (it carries {', '.join(carried[0])}{' +PTX ' + carried[1] if carried[1] else ''})"
                        )
                        ok = False
                    else:
                        notes.append(f"torch CUDA {c} carries kernels for {', '.join('sm_' + a.replace('.', '') for a in archs)} ({archs_from})")
            if not ok:
                continue
            native = c == s.cuda
            py_native = python is None or python == s.python
            # prefer: the stack's own build, then (no --cuda given) a stack that ships a lockfile, so that
            # `moe-env lock PROJECT` answers offline; then the newest CUDA; then file order
            newest = tuple(-x for x in _vtuple(c)) if cuda == "auto" and c != "cpu" else (0,)
            no_lockfile = 0 if (cuda is not None or shipped_lockfile(proj.name, s) is not None) else 1
            rank = (0 if native and py_native else 1, no_lockfile, newest, order)
            if native and py_native and cuda is None and not no_lockfile:
                notes.append(f"{s.id} ships a lockfile (offline, hash-verified), so it goes before stacks that do not")
            candidates.append((rank, s, c, notes))
    if not candidates:
        detail = "; ".join(rejected[:4]) if rejected else "no stack matches"
        what = (f"CUDA {cuda}" if cuda not in (None, "auto") else "this host" if cuda == "auto"
                else f"GPUs {', '.join('sm_' + a.replace('.', '') for a in archs)}")
        raise UsageError(f"{proj.name}: no known-good stack fits {what}: {detail}")
    candidates.sort(key=lambda c: c[0])
    _, stack, chosen_cuda, notes = candidates[0]

    target_python = python or stack.python
    rel, _ = torch_builds(matrix, stack.pins.get("torch", ""))
    torch_pin = stack.pins.get("torch", "")
    torch_index = ""
    if torch_pin:
        base, _, pinned_local = torch_pin.partition("+")
        if chosen_cuda == "cpu":
            torch_index = "cpu"
        elif rel is not None:
            torch_index = "" if chosen_cuda == rel.default_cuda else cuda_local_tag(chosen_cuda)
        else:
            torch_index = pinned_local if chosen_cuda == stack.cuda else cuda_local_tag(chosen_cuda)
        torch_pin = f"{base}+{torch_index}" if torch_index else base

    who = f"variant {var.id}" if var else f"default variants ({', '.join(wanted) or 'all'})"
    reasons.append(f"stack {stack.id} serves {proj.name} {who}: {stack.why}")
    if cuda is None:
        if chosen_cuda == stack.cuda:
            reasons.append(f"CUDA {chosen_cuda}: the stack's own build (no --cuda given)")
        else:
            reasons.append(f"CUDA {chosen_cuda}: the stack's own build ({stack.cuda}) lacks kernels for the GPUs ({archs_from})")
    elif cuda == "auto":
        if driver:
            reasons.append(f"CUDA {chosen_cuda} chosen for this host ({driver and 'driver ' + driver})")
        else:
            reasons.append(f"CUDA {chosen_cuda}: no NVIDIA driver found, so the driver does not bound the build")
    else:
        reasons.append(f"CUDA {chosen_cuda}: asked for with --cuda")
    reasons.extend(notes)
    if chosen_cuda != stack.cuda:
        reasons.append(f"retargeted from the stack's CUDA {stack.cuda} to {chosen_cuda}: torch {torch_pin} from the PyTorch index ({torch_index})")
    elif torch_index:
        reasons.append(f"torch {torch_pin} comes from the PyTorch index ({torch_index}), not the default index")
    if python is None:
        reasons.append(f"Python {target_python}: the stack's own")
    elif python != stack.python:
        reasons.append(f"Python {python} instead of the stack's {stack.python}: torch {torch_pin or '?'} has wheels for it; no shipped lockfile, resolve afresh")
    for other in rejected[:3]:
        reasons.append(f"not chosen: {other}")
    if var is not None and var.bf16 and archs and any(_vtuple(a) < (8, 0) for a in archs):
        reasons.append(f"warning: the {var.id} recipe trains in bf16, which needs sm_80 or newer")

    target = Target(
        cuda=chosen_cuda,
        python=target_python,
        torch=torch_pin,
        torch_index=torch_index,
        gpu_archs=archs,
        driver=driver,
        cuda_from="stack" if cuda is None else ("auto" if cuda == "auto" else "--cuda"),
        glibc=rel.glibc_min if rel else "",
        cxx11_abi=rel.cxx11_abi if rel else None,
        build_archs=(build_archs(matrix, torch_pin, chosen_cuda) or ([], ""))[0],
    )
    return Resolution(project=proj, variant=var, stack=stack, target=target, reasons=reasons, matrix=matrix)


def _python_ok(matrix: Matrix, stack: Stack, python: str) -> bool:
    """The stack runs on `python` if it is the stack's own, or torch and every pinned release the
    matrix knows declares support for it."""
    if python == stack.python:
        return True
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    v = Version(python)
    rel = matrix.torch_release(stack.pins.get("torch", "")) if stack.pins.get("torch") else None
    if rel is None or v not in SpecifierSet(rel.python):
        return False
    for pkg, ver in stack.pins.items():
        for r in matrix.releases.get(_norm(pkg), []):
            if r.version == ver and r.python and v not in SpecifierSet(r.python):
                return False
    return True


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_stack(matrix: Matrix, project: str, stack_id: str) -> Resolution:
    """The resolution of one named stack on its own CUDA and Python (what its shipped lockfile is for)."""
    proj = matrix.project(project)
    if proj is None:
        raise UsageError(f"unknown project {project!r} (known: {', '.join(sorted(matrix.projects)) or 'none'})")
    stack = next((s for s in proj.stacks if s.id == stack_id), None)
    if stack is None:
        raise UsageError(f"{proj.name}: unknown stack {stack_id!r} (stacks: {', '.join(s.id for s in proj.stacks)})")
    only = Project(info=proj.info, pins=proj.pins, variants=proj.variants, checks=proj.checks, stacks=[stack],
                   rules=proj.rules, known_issues=proj.known_issues, file=proj.file)
    from moe_env import record

    sub = record.replace(matrix, projects={proj.name: only})
    variant = stack.variants[0] if stack.variants else None
    r = resolve(sub, proj.name, variant=variant)  # the only stack, on its own CUDA and Python
    r.project = proj
    r.matrix = matrix
    if len(stack.variants) != 1:
        r.variant = None  # the stack serves several variants; name none
    return r


# ---------------------------------------------------------------- which GPUs a resolution serves


def gpu_coverage(resolution: Resolution) -> List[str]:
    """Lines saying which GPUs the resolved torch build runs on (the matrix's [[torch_arch]] table) and
    what to run for the newer GPU families it lacks (another stack or CUDA build of this project)."""
    m, t = resolution.matrix, resolution.target
    if m is None or t.cuda == "cpu" or not t.torch:
        return [] if t.cuda != "cpu" else ["GPUs: none (a CPU build of torch)"]
    carried = build_archs(m, t.torch, t.cuda)
    if carried is None:
        return [f"GPUs: the matrix does not list the architectures of torch {t.torch} (CUDA {t.cuda})"]
    archs, ptx = carried
    kernels = " ".join("sm_" + a.replace(".", "") for a in archs) + (f" +PTX sm_{ptx.replace('.', '')}" if ptx else "")
    newest = max(_vtuple(a) for a in archs)
    by_cc: dict = {}
    for fam in sorted(m.gpus, key=lambda g: _vtuple(g.compute_capability)):
        cc = fam.compute_capability
        if _vtuple(cc) > newest and not arch_runs(cc, archs, ptx):
            names = sorted(fam.match, key=lambda n: (len(n), n))[:3]  # H100 before GH200
            by_cc.setdefault(cc, []).extend(n for n in names if n not in by_cc.get(cc, []))
    missing = [f"sm_{cc.replace('.', '')} ({', '.join(names[:3])})" for cc, names in by_cc.items()]
    lines = [f"GPUs: torch {t.torch} (CUDA {t.cuda}) carries kernels for {kernels}"
             + (f"; none for {', '.join(missing)}" if missing else "")]
    if missing:
        lines.extend(_alternatives(resolution, archs, ptx))
    return lines


def _alternatives(resolution: Resolution, archs: List[str], ptx: str) -> List[str]:
    """For the newest GPU family this build misses: the project's stacks (or their other CUDA builds) that carry it."""
    from moe_env.lock.shipped import shipped_lockfile

    m, r = resolution.matrix, resolution
    want = max((g.compute_capability for g in m.gpus), key=_vtuple)
    uncovered = sorted({g.compute_capability for g in m.gpus if not arch_runs(g.compute_capability, archs, ptx)
                        and _vtuple(g.compute_capability) > max(_vtuple(a) for a in archs)}, key=_vtuple)
    target_cc = uncovered[0] if uncovered else want
    served = set(r.stack.variants)
    out: List[str] = []
    seen = set()
    for s in sorted(r.project.stacks, key=lambda s: 0 if shipped_lockfile(r.project.name, s) else 1):
        if served and s.variants and not served & set(s.variants):
            continue
        _, builds = torch_builds(m, s.pins.get("torch", ""))
        for c in [s.cuda] + [b for b in builds if b != s.cuda]:
            carried = build_archs(m, s.pins.get("torch", ""), c)
            if carried and arch_runs(target_cc, carried[0], carried[1]) and not (s.id == r.stack.id and c == r.target.cuda):
                how = "ships a lockfile, offline" if c == s.cuda and shipped_lockfile(r.project.name, s) else "fresh resolution, network"
                cmd = f"moe-env lock {r.project.name}" + (f" --model {r.variant.id}" if r.variant else "") + f" --cuda {c}"
                if cmd in seen:
                    break
                seen.add(cmd)
                which = f"stack {s.id}, " if c == s.cuda else ""
                out.append(f"for sm_{target_cc.replace('.', '')}: `{cmd}` ({which}{how})")
                break
    out.sort(key=lambda line: "network" in line)
    return out[:2] or [f"for sm_{target_cc.replace('.', '')}: no stack of {r.project.name} in the matrix carries it"]
