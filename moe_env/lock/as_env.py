"""A lockfile is an Environment too: the pins, as if installed on a host, for the same checks as doctor.

`doctor --from-lock FILE` and `lock` (before it writes) both judge through here, so the two can never
disagree about a host. The facts a probe would read from installed files come from the matrix instead:
torch's CUDA from its local tag (`+cu118`) or, without one, from the `[[torch]]` row's default-index
build; its C++ ABI from that row; API surfaces from the `[[api]]` tables by release. Packages the
lockfile's header says are built from source afterwards count as installed (the lockfile and its build
steps are one environment). Pure apart from reading the lockfile text it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from moe_env.environment import (
    ApiSymbol,
    DeepSpeedBuild,
    Distribution,
    Environment,
    Extension,
    HostInfo,
    PythonInfo,
    TorchBuild,
    normalize_name,
)
from moe_env.errors import UsageError
from moe_env.findings import Finding
from moe_env.matrix.model import Matrix

_HEAD = re.compile(r"^# moe-env lockfile: (?P<project>\S+) \((?:variant (?P<variant>[^),]+)|variants (?P<variants>[^)]*))\), stack (?P<stack>\S+)")
_TARGET_PY = re.compile(r"^# target: .*CPython (?P<py>3\.\d+)")
_LOCAL_CUDA = re.compile(r"^cu(\d+)(\d)$")

# extension keys the probe uses for compiled packages (moe_env/probe/target.py reads the same names)
_EXTENSION_KEYS = {"flash-attn": "flash-attn", "nv-grouped-gemm": "grouped_gemm", "grouped-gemm": "grouped_gemm",
                   "transformer-engine-torch": "transformer-engine", "apex": "apex"}


@dataclass
class LockedSet:
    """What a lockfile says: exact pins, the source builds it defers, and whom it was made for."""

    pins: Dict[str, str]  # normalised name -> version ("torch" -> "2.0.1+cu118")
    source_builds: Dict[str, str] = field(default_factory=dict)
    python: Optional[str] = None  # "3.10" from a moe-env header
    project: Optional[str] = None
    variant: Optional[str] = None
    stack: Optional[str] = None
    origin: str = "lockfile"
    variants: List[str] = field(default_factory=list)  # the variants the header names (one, or the stack's)


def read_locked(text: str, origin: str, python: Optional[str] = None) -> LockedSet:
    """Parse a requirements-style lockfile or a pylock.toml into exact pins (markers judged for `python`)."""
    head = {}
    for line in text.splitlines()[:60]:
        m = _HEAD.match(line)
        if m:
            head.update({k: v for k, v in m.groupdict().items() if v})
        m = _TARGET_PY.match(line)
        if m:
            head["python"] = m.group("py")
    py = python or head.get("python")
    if origin.endswith(".toml") or re.search(r"(?m)^lock-version\s*=", text):
        pins, later = _read_pylock(text, origin, py), {}
    else:
        pins, later = _read_requirements(text, origin, py)
    named = [head["variant"]] if head.get("variant") else [v.strip() for v in head.get("variants", "").split(",") if v.strip()]
    return LockedSet(pins=pins, source_builds=later, python=py, project=head.get("project"),
                     variant=head.get("variant"), stack=head.get("stack"), origin=origin,
                     variants=[v for v in named if v != "all"])


def _marker_env(python: Optional[str]) -> dict:
    env = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    if python:
        env.update(python_version=python, python_full_version=python + ".0")
    return env


def _applies(req, python: Optional[str]) -> bool:
    if req.marker is None:
        return True
    try:
        return bool(req.marker.evaluate(_marker_env(python)))
    except Exception:  # noqa: BLE001 - an undecidable marker: keep the pin
        return True


def _read_requirements(text: str, origin: str, python: Optional[str]) -> Tuple[Dict[str, str], Dict[str, str]]:
    from moe_env.checks.lockfile import parse_lockfile

    lock = parse_lockfile(text, origin)
    pins = {}
    for name, pin in lock.pins.items():
        version = _exact(pin.requirement)
        if version is None:
            raise UsageError(f"{origin}:{pin.line}: {pin.requirement} is not an exact pin (==VERSION)")
        if _applies(pin.requirement, python):
            pins[name] = version
    later = {n: v for n, p in lock.source_builds.items() if (v := _exact(p.requirement))}
    return pins, later


def _exact(req) -> Optional[str]:
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "==="):
        return specs[0].version
    return None


def _read_pylock(text: str, origin: str, python: Optional[str]) -> Dict[str, str]:
    from packaging.markers import InvalidMarker, Marker

    data = _toml(text, origin)
    pins = {}
    for pkg in data.get("packages") or []:
        if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str) or not isinstance(pkg.get("version"), str):
            continue
        marker = pkg.get("marker")
        if isinstance(marker, str) and marker:
            try:
                if not Marker(marker).evaluate(_marker_env(python)):
                    continue
            except (InvalidMarker, Exception):  # noqa: BLE001
                pass
        pins[normalize_name(pkg["name"])] = pkg["version"]
    if not pins:
        raise UsageError(f"{origin}: no [[packages]] with name and version; is it a pylock.toml?")
    return pins


def _toml(text: str, origin: str) -> dict:
    from moe_env.untrusted import UntrustedInput, toml_loads

    try:
        return toml_loads(text, what=origin)
    except UntrustedInput as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------- the Environment


def torch_build(matrix: Matrix, version: str) -> TorchBuild:
    """torch's build from its pin: the local tag names the CUDA; none means the default index's build."""
    base, _, local = version.partition("+")
    rel = matrix.torch_release(base)
    cuda: Optional[str] = None
    if local:
        m = _LOCAL_CUDA.match(local)
        cuda = f"{m.group(1)}.{m.group(2)}" if m else None
    elif rel is not None:
        cuda = rel.default_cuda
    abi = None
    if rel is not None and (not local or rel.cxx11_abi):
        abi = rel.cxx11_abi
    return TorchBuild(version=version, local=local or None, cuda=cuda, cxx11_abi=abi,
                      location="lockfile", cxx11_abi_source="matrix [[torch]] row" if abi is not None else None)


def api_surface(matrix: Matrix, versions: Dict[str, str]) -> Dict[str, ApiSymbol]:
    """What the probe would read with ast, from the matrix's [[api]] tables: symbol and parameters by release."""
    from packaging.version import InvalidVersion, Version

    def within(v, e) -> Optional[bool]:
        try:
            ver = Version(v.split("+", 1)[0])
            if ver < Version(e.first):
                return False
            if e.last:
                return ver <= Version(e.last)
            if e.newest_checked and ver > Version(e.newest_checked):
                return None  # newer than anything checked: unknown
            return True
        except InvalidVersion:
            return None

    out: Dict[str, ApiSymbol] = {}
    params: Dict[str, List[str]] = {}
    for pkg, entries in matrix.api.items():
        version = versions.get(pkg)
        if version is None:
            continue
        for e in entries:
            has = within(version, e)
            if has is None:
                continue
            if e.param:
                if has:
                    params.setdefault(e.symbol, []).append(e.param)
                continue
            out[e.symbol] = ApiSymbol(symbol=e.symbol, found=has, kind="matrix",
                                      file=(e.source[0] if e.source else None),
                                      error=None if has else f"the matrix's API table: first in {pkg} {e.first}"
                                      + (f", last in {e.last}" if e.last else ""))
    for symbol, names in params.items():
        sym = out.get(symbol)
        if sym is None:
            out[symbol] = sym = ApiSymbol(symbol=symbol, found=True, kind="matrix")
        sym.params = sorted(set(names))
    return out


def environment_from_locked(matrix: Matrix, locked: LockedSet, host: HostInfo, python: Optional[str] = None) -> Environment:
    """The Environment a lockfile (and the source builds its header names) would be once installed on `host`."""
    import sys

    py = python or locked.python
    if not py:  # a lockfile without moe-env's header: judged for the Python running moe-env, and said so
        py = f"{sys.version_info[0]}.{sys.version_info[1]}"
        host.notes.append(f"{locked.origin} does not name its Python; judged for Python {py}")
    versions = dict(locked.pins)
    for name, v in locked.source_builds.items():
        versions.setdefault(name, v)
    dists = {n: Distribution(name=n, version=v, location="lockfile", installer="lockfile")
             for n, v in sorted(versions.items())}
    env = Environment(
        python=PythonInfo(version=py, implementation="cpython", executable=f"(lockfile {locked.origin})",
                          prefix="", platform="linux-x86_64", machine="x86_64"),
        distributions=dists,
        host=host,
    )
    if "torch" in versions:
        env.torch = torch_build(matrix, versions["torch"])
    if "deepspeed" in versions:
        # a pip install of the deepspeed sdist pre-builds no ops (DS_BUILD_OPS unset): they JIT-compile at first use
        env.deepspeed = DeepSpeedBuild(version=versions["deepspeed"], build_info_found=False)
    for name, key in _EXTENSION_KEYS.items():
        if name in versions:
            env.extensions[key] = Extension(key=key, present=True, distribution=name, version=versions[name],
                                            providers=[name])
    env.api = api_surface(matrix, {normalize_name(k): v for k, v in versions.items()})
    return env


def judge(matrix: Matrix, env: Environment, project: Optional[str], variants: Optional[List[str]] = None) -> List[Finding]:
    """doctor's own judgement (moe_env.checks.run_checks), nothing else."""
    from moe_env.checks import run_checks

    return run_checks(env, matrix, project, variants or None, detect=project is None)


def read_lockfile(path: str) -> str:
    """The lockfile's text through the shared bounded reader (regular files only, 16 MiB), or a one-line UsageError."""
    from moe_env.untrusted import UntrustedInput, read_text

    try:
        return read_text(path, max_bytes=16 * 1024 * 1024, what=f"lockfile {path}")
    except UntrustedInput as exc:
        raise UsageError(str(exc)) from None


def doctor_from_lock(path: str, matrix: Matrix, host: HostInfo, python: Optional[str] = None):
    """For `doctor --from-lock`: (Environment, project name or None, variant ids) of a lockfile on `host`."""
    locked = read_locked(read_lockfile(path), path, python)
    env = environment_from_locked(matrix, locked, host, python)
    return env, locked.project, list(locked.variants)


def target_host(build_mode: bool = False) -> HostInfo:
    """The host a lockfile is judged for (lock and doctor --from-lock alike): this machine as probed, with
    the MOE_ENV_* overrides. A machine with neither a driver nor a GPU (a login node, CI, a build box) is
    not where the lock trains, so its own CUDA toolkit is not judged unless MOE_ENV_NVCC_VERSION states one."""
    import os

    from moe_env.probe import host as probe

    steps = [getattr(probe, n, None) for n in ("_driver", "_gpus", "_nvcc")]
    if None in steps:  # the probe changed shape: take all of it, then drop what is not judged
        host = probe.gather_host(build_mode)
    else:
        host = HostInfo(build_mode=build_mode)
        steps[0](host, os.environ, "/")
        steps[1](host, os.environ, "/")
    stated = bool((os.environ.get("MOE_ENV_NVCC_VERSION") or "").strip())
    if host.driver_version or host.gpus or stated:
        if None not in steps:
            steps[2](host, os.environ, "/")
    elif host.nvcc_version or None not in steps:
        host.notes.append("the CUDA toolkit of this GPU-less machine is not judged for a lockfile; "
                          "state the target's with MOE_ENV_NVCC_VERSION")
        host.nvcc_version = host.nvcc_path = host.cuda_home = None
    return host


def doctor_from_lock_args(args, matrix: Matrix, project):
    """doctor's one call for --from-lock: (Environment, Project or None, variant ids) on the probed/stated host."""
    if args.python or args.from_json:
        raise UsageError("--from-lock judges a lockfile; it cannot be combined with --python or --from-json")
    host = target_host(bool(args.build))
    env, name, variants = doctor_from_lock(args.from_lock, matrix, host)
    if project is None and name:
        project = matrix.project(name)
    chosen = list(args.model) or (variants if project is not None and name == project.name else [])
    return env, project, chosen
