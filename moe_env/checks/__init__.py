"""Checks: an Environment judged against the matrix, as Findings.

`run_checks` runs the generic checks (any project) and then the project's `[[check]]` rules that
apply to the variants judged. Project kinds live in kinds.py, generic checks in platform.py and
dependencies.py; all register themselves by name in registry.py.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

from moe_env.checks import torch_build, dependencies, extensions, kinds, platform, host  # noqa: F401  (registration; generic checks run in this order)
from moe_env.checks.registry import GENERIC, KINDS, Context
from moe_env.environment import Environment
from moe_env.errors import UsageError
from moe_env.findings import Finding, sort_findings
from moe_env.matrix.model import Check, Matrix, Project, Variant

__all__ = ["run_checks", "symbols_needed", "served_variants", "detect_projects", "resolve_project", "resolve_variants", "KINDS", "GENERIC", "Context"]


def symbols_needed(matrix: Matrix, project: Optional[Project] = None) -> List[str]:
    """The API symbols the checks will ask about: the project's api_symbol checks, or every project's.

    Not the whole API table (Matrix.api_symbols()): parsing a module such as deepspeed/runtime/engine.py
    costs more than the rest of doctor, and only project checks read the API surface.
    """
    projects = [project] if project is not None else list(matrix.projects.values())
    seen = set()
    for p in projects:
        for c in p.checks:
            if c.kind == "api_symbol" and isinstance(c.params.get("symbol"), str):
                seen.add(c.params["symbol"])
            if c.kind == "requires" and isinstance(c.params.get("module"), str):
                seen.add(c.params["module"])
    return sorted(seen)


def detect_projects(env: Environment, matrix: Matrix) -> List[Tuple[Project, str]]:
    """Projects whose distributions are installed, with the distribution that gave each away.

    A project's `detect` list names them (xtuner -> xtuner, megatron-core -> megatron); without
    one, its name and aliases are tried as distribution names.
    """
    found = []
    for p in sorted(matrix.projects.values(), key=lambda p: p.info.name):
        names = list(p.info.detect) or [p.info.name] + list(p.info.aliases)
        for n in names:
            if env.dist(n) is not None:
                found.append((p, n))
                break
    return found


def resolve_project(matrix: Matrix, project: Union[str, Project, None]) -> Optional[Project]:
    if project is None or isinstance(project, Project):
        return project
    p = matrix.project(project)
    if p is None:
        known = ", ".join(sorted(matrix.projects)) or "none in this matrix"
        raise UsageError(f"unknown project {project!r} (known: {known}; see 'moe-env matrix list')")
    return p


def resolve_variants(project: Optional[Project], variants: Optional[Sequence[Union[str, Variant]]]) -> List[Variant]:
    """The variants to judge: those named, else the project's MoE variants (why people use this tool)."""
    if project is None:
        if variants:
            raise UsageError("--model needs a project (name it, or install the project so doctor can detect it)")
        return []
    if not variants:
        chosen = project.moe_variants()
        return chosen or list(project.variants)
    out = []
    for v in variants:
        if isinstance(v, Variant):
            out.append(v)
            continue
        found = project.variant(v)
        if found is None:
            known = ", ".join(x.id for x in project.variants) or "none"
            raise UsageError(f"{project.name} has no model variant {v!r} (variants: {known})")
        out.append(found)
    return out


def served_variants(env: Environment, matrix: Matrix, project: Project) -> Tuple[List[Variant], List[Variant]]:
    """(served, not served) among the project's default variants: a variant is served when none of the error
    rules written for it alone (a `variants` list naming it) fails on this stack. Used without --model, so a
    Mixtral user is not judged against DeepSeek-V2's needs."""
    served, unserved = [], []
    for v in resolve_variants(project, None):
        ctx = Context(env=env, matrix=matrix, project=project, variants=[v])
        failed = False
        for check in project.checks:
            if check.severity != "error" or not check.variants or v.id not in check.variants:
                continue
            fn = KINDS.get(check.kind)
            if fn is not None and any(f.severity == "error" and not f.deferred for f in fn(ctx, check)):
                failed = True
                break
        (unserved if failed else served).append(v)
    return served, unserved


def applies(check: Check, variants: List[Variant]) -> bool:
    return not check.variants or any(v.id in check.variants for v in variants)


def run_checks(env: Environment, matrix: Matrix, project: Union[str, Project, None] = None,
               variants: Optional[Sequence[Union[str, Variant]]] = None, detect: bool = True) -> List[Finding]:
    """Judge `env`: generic checks, then the project's checks for `variants` (default: its MoE variants).

    With no project, the project is detected from installed distributions (unless `detect` is
    False); when none is found only the generic checks run.
    """
    proj = resolve_project(matrix, project)
    if proj is None and detect:
        found = detect_projects(env, matrix)
        if len(found) == 1:
            proj = found[0][0]
    chosen = resolve_variants(proj, variants)
    ctx = Context(env=env, matrix=matrix, project=proj, variants=chosen)
    findings: List[Finding] = []
    for fn in GENERIC.values():
        findings.extend(fn(ctx))
    if proj is not None:
        for check in proj.checks:
            if not applies(check, chosen):
                continue
            fn = KINDS.get(check.kind)
            if fn is None:
                findings.append(Finding(
                    id=kinds.finding_id(ctx, check), severity="warning",
                    title=f"Check kind {check.kind!r} is unknown to this moe-env",
                    seen=f"{proj.file}: check {check.id!r} has kind {check.kind!r}",
                    why="The matrix asks for a rule this version cannot run; it was skipped.",
                    fix="Upgrade moe-env, or fix the kind in the matrix (moe-env matrix validate).",
                    sources=list(check.source),
                ))
                continue
            findings.extend(fn(ctx, check))
    from moe_env.checks.merge import merge_findings

    return sort_findings(merge_findings(findings, env, proj.info.title if proj else None, _bounds(ctx)))


def _bounds(ctx: Context):
    """{package: [specifier, ...]} of the project's applicable version_bound rules (errors and warnings)."""
    out = {}
    if ctx.project is None:
        return out
    from moe_env.environment import normalize_name

    for c in ctx.project.checks:
        if c.kind != "version_bound" or c.severity not in ("error", "warning") or not applies(c, ctx.variants):
            continue
        if not kinds.when_holds(ctx, c):
            continue
        pkg, spec = c.params.get("package"), c.params.get("spec")
        if isinstance(pkg, str) and isinstance(spec, str) and spec:
            out.setdefault(normalize_name(pkg), []).append(spec)
    return out
