"""`doctor --lockfile`: what an environment has that differs from a requirements-style lockfile.

Reads what `moe-env lock`, pip-compile and `uv pip compile` write: `name==version \\` lines with
`--hash=` continuations, markers, comments and pip options. Parsing is separate from judging so
the judging stays a pure function of (Environment, Lockfile).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Dict, List, Optional

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from moe_env.checks.facts import marker_environment, spec_contains
from moe_env.environment import Environment, normalize_name
from moe_env.errors import UsageError
from moe_env.findings import Finding

# Installers and moe-env itself are in every environment and in no lockfile (pip-compile leaves
# them out unless --allow-unsafe); reporting them as extra would be noise.
NOT_EXTRA = {"pip", "setuptools", "wheel", "moe-env", "distribute"}


@dataclass
class LockedPin:
    name: str  # normalised
    requirement: Requirement
    line: int


@dataclass
class Lockfile:
    path: str
    pins: Dict[str, LockedPin] = field(default_factory=dict)
    editables: List[str] = field(default_factory=list)
    # packages moe-env's own lockfiles name in their header as built from source afterwards
    # ("# then build from source (not in this file): flash-attn==2.5.8; run ..."): expected, not extra
    source_builds: Dict[str, LockedPin] = field(default_factory=dict)


_SOURCE_BUILDS = re.compile(r"^#\s*then (?:build from source|install with build steps) \(not in this file\):\s*([^;]+)")


def parse_lockfile(text: str, origin: str) -> Lockfile:
    lock = Lockfile(path=origin)
    for lineno, logical in _logical_lines(text):
        m = _SOURCE_BUILDS.match(logical.strip())
        if m:
            for item in m.group(1).split(","):
                try:
                    req = Requirement(item.strip())
                except InvalidRequirement:
                    continue
                lock.source_builds[normalize_name(req.name)] = LockedPin(normalize_name(req.name), req, lineno)
            continue
        body = logical.split(" #", 1)[0].strip() if not logical.lstrip().startswith("#") else ""
        if not body:
            continue
        if body.startswith(("-e ", "--editable ")):
            lock.editables.append(body.split(None, 1)[1])
            continue
        if body.startswith("-"):
            continue  # --hash alone, --index-url, --extra-index-url, -c, -r: not pins
        text_req = " ".join(tok for tok in body.split() if not tok.startswith("--hash"))
        try:
            req = Requirement(text_req)
        except InvalidRequirement as exc:
            raise UsageError(f"{origin}:{lineno}: not a requirement line ({exc})") from None
        if req.url:
            raise UsageError(f"{origin}:{lineno}: direct URL requirements are not pins ({req.name} @ ...)")
        lock.pins[normalize_name(req.name)] = LockedPin(normalize_name(req.name), req, lineno)
    if not lock.pins and not lock.editables:
        raise UsageError(f"{origin}: no pinned requirements found; is it a requirements-style lockfile?")
    return lock


def _logical_lines(text: str):
    """Join backslash continuations; yield (first line number, logical line)."""
    buf: List[str] = []
    start = 0
    for i, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = i
        line = raw.rstrip()
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        yield start, " ".join(buf)
        buf = []
    if buf:
        yield start, " ".join(buf)


def lockfile_findings(env: Environment, lock: Lockfile) -> List[Finding]:
    marker_env = marker_environment(env)
    source = [f"{lock.path} (lockfile)"]
    out: List[Finding] = []
    expected = set()
    for name, pin in sorted(lock.pins.items()):
        req = pin.requirement
        if req.marker is not None:
            try:
                if not req.marker.evaluate(marker_env):
                    continue
            except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
                pass
        expected.add(name)
        version = _installed(env, name)
        want = f"{req.name}{req.specifier}"
        if version is None:
            out.append(Finding(
                id="lock.missing", severity="error", title=f"{req.name}: in the lockfile, not installed",
                seen=f"{lock.path}:{pin.line} pins {want}; not installed",
                why="The environment is not the one the lockfile describes.",
                fix=f"pip install --no-deps --require-hashes -r {lock.path}  (or: uv pip sync {lock.path})",
                sources=source,
                requirement=f"{name}{req.specifier}",
            ))
        elif spec_contains(str(req.specifier), version) is False:
            out.append(Finding(
                id="lock.version", severity="error", title=f"{req.name}: {version} installed, lockfile pins {want}",
                seen=f"{lock.path}:{pin.line} pins {want}; {req.name} {version} is installed",
                why="The environment drifted from the lockfile; results may differ from the tested stack.",
                fix=f"uv pip sync {lock.path}  (or: pip install --no-deps --require-hashes -r {lock.path})",
                sources=source,
            ))
    for name, pin in sorted(lock.source_builds.items()):
        expected.add(name)
        version = _installed(env, name)
        if version is not None and spec_contains(str(pin.requirement.specifier), version) is False:
            want = f"{pin.requirement.name}{pin.requirement.specifier}"
            out.append(Finding(
                id="lock.version", severity="error", title=f"{pin.requirement.name}: {version} installed, lockfile builds {want}",
                seen=f"{lock.path}:{pin.line} names {want} as built from source after the install; {pin.requirement.name} {version} is installed",
                why="The environment drifted from the lockfile; results may differ from the tested stack.",
                fix="Rebuild it with the build steps the lockfile's header names (moe-env build-steps ...).",
                sources=source,
            ))
    editable_names = {normalize_name(PurePath(e.rstrip("/")).name) for e in lock.editables}
    for name, d in sorted(env.distributions.items()):
        if name in expected or name in lock.pins or name in NOT_EXTRA or name in editable_names:
            continue
        out.append(Finding(
            id="lock.extra", severity="warning", title=f"{name}: installed, not in the lockfile",
            seen=f"{name} {d.version} is installed; {lock.path} does not pin it",
            why="Packages outside the lock can shadow or break locked ones and make nodes differ.",
            fix=f"pip uninstall {name}  (or add it to the lock's inputs and relock)",
            sources=source,
        ))
    return out


def _installed(env: Environment, name: str) -> Optional[str]:
    d = env.dist(name)
    if d is not None:
        return d.version
    if name == "torch" and env.torch is not None:
        return env.torch.version
    return None
