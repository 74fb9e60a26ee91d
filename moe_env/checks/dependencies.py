"""Generic checks on installed distributions: `pip check` without pip, known-bad combinations, unreadable metadata.

Requirements come from each distribution's Requires-Dist as the probe read it; markers are
evaluated for the *target* interpreter (not the one running moe-env), extras as not requested,
exactly as `pip check` judges them.
"""

from __future__ import annotations

import re
from typing import List

from moe_env.checks.facts import marker_environment, parse_version, spec_contains
from moe_env.checks.requirements import Unparsed, evaluate, parse
from moe_env.checks.registry import Context, generic
from moe_env.environment import normalize_name
from moe_env.findings import Finding

# Requirements that only apply with an extra (`; extra == "dev"`) are never checked, as in `pip check`;
# skipping them before parsing saves most of the parsing (transformers declares hundreds).
_EXTRA_ONLY = re.compile(r";.*\bextra\s*==")

SRC_PIP_CHECK = "https://pip.pypa.io/en/stable/cli/pip_check/ the same judgement: every Requires-Dist of every installed distribution"


@generic("probe-errors")
def probe_errors(ctx: Context) -> List[Finding]:
    return [Finding(
        id="probe.error", severity="warning", title="The probe could not read part of the environment",
        seen=msg, why="Checks that need this fact cannot judge it.",
        fix="Fix or reinstall the package named; rerun with MOE_ENV_DEBUG=1 for details.",
    ) for msg in ctx.env.probe_errors]


@generic("metadata")
def metadata_errors(ctx: Context) -> List[Finding]:
    out = []
    for d in sorted(ctx.env.distributions.values(), key=lambda d: d.name):
        if d.metadata_error:
            out.append(Finding(
                id="dist.metadata-unreadable", severity="warning",
                title=f"{d.name}: installed metadata is broken",
                seen=f"{d.name} in {d.location or '?'}: {d.metadata_error}",
                why="pip and every resolver misjudge a distribution without readable METADATA; "
                    "its requirements are unknown.",
                fix=f"pip install --force-reinstall --no-deps {d.name}" + (f"=={d.version}" if parse_version(d.version) else ""),
            ))
    return out


def applicable_requirements(env):
    """(distribution, Requirement, normalised name) for every Requires-Dist whose marker holds here, sorted by
    distribution; unparsable lines and extra-only ones are skipped."""
    marker_env = marker_environment(env)
    for d in sorted(env.distributions.values(), key=lambda d: d.name):
        for line in d.requires:
            if _EXTRA_ONLY.search(line) and " or " not in line:
                continue
            try:
                req = parse(line)
            except Unparsed:
                continue  # garbage in someone's METADATA is not this environment's problem
            if req.marker is not None and not evaluate(req.marker, marker_env):
                continue  # False, or a marker that cannot be judged
            yield d, req, normalize_name(req.name)  # huggingface_hub and huggingface-hub are one distribution


@generic("requirements")
def unsatisfied_requirements(ctx: Context) -> List[Finding]:
    from moe_env.checks.torch_build import no_setuptools_reasons

    env = ctx.env
    checked: List[List[str]] = []

    def no_setuptools(ctx: Context) -> bool:
        if not checked:
            checked.append(no_setuptools_reasons(ctx))
        return bool(checked[0])

    out: List[Finding] = []
    for d, req, name in applicable_requirements(env):
        dep = env.dist(req.name)
        wanted = f"{name}{req.specifier}"
        if dep is None and name == "torch" and env.torch is None:
            continue  # torch.missing speaks for it, once
        if dep is None and name == "setuptools" and no_setuptools(ctx):
            continue  # torch.no-setuptools speaks for it, once, with what must compile
        if dep is None:
            out.append(Finding(
                id="deps.missing", severity="warning",
                title=f"The package `{d.name}` requires `{wanted}`, but it's not installed",
                seen=f"{d.name} {d.version} requires {wanted}, which is not installed",
                why="Imports of the missing package fail at run time (`pip check` reports the same).",
                fix=f"pip install '{wanted}'",
                sources=[SRC_PIP_CHECK],
                requirement=wanted,
                required_by=d.name,
            ))
            continue
        if not req.specifier:
            continue
        ok = spec_contains(req.specifier, dep.version)
        if ok is False:
            out.append(Finding(
                id="deps.conflict", severity="warning",
                title=f"The package `{d.name}` requires `{wanted}`, but `{dep.name}=={dep.version}` is installed",
                seen=f"{d.name} {d.version} requires {wanted}, but {dep.name} {dep.version} is installed",
                why="The package was released against other versions; it may fail or misbehave "
                    "(`pip check` reports the same).",
                fix=f"pip install '{wanted}'  (or a {d.name} release that accepts {dep.name} {dep.version})",
                sources=[SRC_PIP_CHECK],
                requirement=wanted,
                required_by=d.name,
            ))
    return out


def _fired_conflicts(ctx: Context):
    """(conflict, what was seen) for each [[conflict]] row whose every `when` entry matches."""
    for c in ctx.matrix.conflicts:
        seen = []
        for pkg, spec in c.when.items():
            version = ctx.env.version_of(pkg)
            if version is None and normalize_name(pkg) == "torch" and ctx.env.torch is not None:
                version = ctx.env.torch.version
            if version is None or spec_contains(spec, version) is not True:
                break
            seen.append(f"{pkg} {version}")
        else:
            yield c, seen


@generic("conflicts")
def known_conflicts(ctx: Context) -> List[Finding]:
    """The matrix's [[conflict]] table: combinations that break for any project (numpy 2 with torch < 2.3...)."""
    out = []
    for c, seen in _fired_conflicts(ctx):
        requirement, fix = _conflict_fix(ctx, c)
        out.append(Finding(
            id=c.id, severity=c.severity, title=c.title,
            seen=" with ".join(seen) + " installed", why=c.why, fix=fix, sources=list(c.source),
            requirement=requirement,
        ))
    return out


def _conflict_fix(ctx: Context, c) -> tuple:
    """(requirement, fix) of a fired conflict: its own, or its `alternative` where the project's version rules
    exclude the requirement and allow the alternative (following the fix must not trade one finding for another)."""
    if not (c.requirement and c.alternative and ctx.project is not None):
        return c.requirement, c.fix
    from moe_env.checks import _bounds
    from moe_env.checks.merge import intersect, split_requirement

    bounds = _bounds(ctx)
    req, alt = split_requirement(c.requirement), split_requirement(c.alternative)
    if req is None or alt is None:
        return c.requirement, c.fix
    against = [b for b in bounds.get(req[0], []) if intersect([req[1], b]) is None]
    if not against or any(intersect([alt[1], b]) is None for b in bounds.get(alt[0], [])):
        return c.requirement, c.fix
    return c.alternative, (f"pip install '{c.alternative}'  ({ctx.project.info.title} keeps {req[0]}{against[0]}, "
                           f"which {c.requirement} would leave)")


SRC_RECORD = ("https://packaging.python.org/en/latest/specifications/recording-installed-packages/ "
              "each distribution's RECORD owns its files; a second installer run overwrites them")


@generic("import-collisions")
def import_collisions(ctx: Context) -> List[Finding]:
    """Two distributions installing the same import package (grouped_gemm: nv-grouped-gemm vs grouped-gemm)."""
    out = []
    for key, ext in sorted(ctx.env.extensions.items()):
        providers = list(dict.fromkeys(ext.providers or []))
        if len(providers) < 2:
            continue
        name = ext.import_name or key
        out.append(Finding(
            id="dist.import-name-collision", severity="warning",
            title=f"{len(providers)} distributions install the import name {name}",
            seen=f"{', '.join(providers)} all provide `{name}`" + (f" (kept: {ext.distribution} {ext.version})" if ext.distribution else ""),
            why="The last one installed overwrote the others' files; which code `import "
                f"{name}` runs depends on install order, and uninstalling one breaks the other.",
            fix=f"pip uninstall {' '.join(providers)} && pip install --no-build-isolation {providers[0]}  (keep one)",
            sources=[SRC_RECORD],
        ))
    return out


def _release_row(ctx: Context, name: str, version: str):
    v = parse_version(version)
    if v is None:
        return None
    for row in ctx.matrix.releases.get(name, []):
        rv = parse_version(row.version)
        if rv is not None and rv == parse_version(v.public):
            return row
    return None


@generic("release-requirements")
def release_requirements(ctx: Context) -> List[Finding]:
    """The matrix's [[release]] `requires` of each installed release, where its METADATA is silent.

    Requires-Dist is judged by the `requirements` check; this one adds what the curated release
    rows know beyond it: extras the package enforces at run time (transformers' torch and
    accelerate floors, accelerate's deepspeed floor) and runtime gates.
    """
    out = []
    # a pair a fired [[conflict]] row names is that row's problem, said once (with its cited failure)
    conflicting = {frozenset(normalize_name(p) for p in c.when) for c, _ in _fired_conflicts(ctx)}
    for name, d in sorted(ctx.env.distributions.items()):
        row = _release_row(ctx, name, d.version)
        if row is None:
            continue
        declared = set()
        for line in d.requires:
            if _EXTRA_ONLY.search(line):
                continue
            try:
                declared.add(normalize_name(parse(line).name))
            except Unparsed:
                continue
        for dep, spec in sorted(row.requires.items()):
            dep_n = normalize_name(dep)
            if dep_n in declared or not spec or any({name, dep_n} <= pair for pair in conflicting):
                continue
            version = ctx.env.version_of(dep_n)
            if version is None and dep_n == "torch" and ctx.env.torch is not None:
                version = ctx.env.torch.version
            if version is None or spec_contains(spec, version) is not False:
                continue
            out.append(Finding(
                id="release.requirement", severity="warning",
                title=f"{d.name} {d.version} wants {dep}{spec}; {dep} {version} is installed",
                seen=f"{d.name} {d.version} (matrix release row) wants {dep}{spec}; {dep} {version} is installed",
                why=(row.notes or "An optional or run-time requirement of this release that its Requires-Dist "
                     "does not enforce; the feature that needs it fails or is disabled."),
                fix=f"pip install '{dep}{spec}'  (or another {d.name} release)",
                sources=list(row.source),
            ))
    return out
