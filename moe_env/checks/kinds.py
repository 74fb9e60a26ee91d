"""Project rule kinds: one function per `kind` a `[[check]]` entry may name.

Each gets the Context and the Check and returns the Findings it raises (usually none or one). The
check's own title/why/fix/sources travel into the Finding; the function adds what it *saw*.
"""

from __future__ import annotations

from typing import List, Optional

from moe_env.checks.facts import describe_gpus, gpu_capabilities, release_tuple, sm, spec_contains
from moe_env.checks.registry import Context, kind
from moe_env.environment import normalize_name
from moe_env.findings import Finding
from moe_env.matrix.model import Check


def finding_id(ctx: Context, check: Check) -> str:
    """`<project>.<check id>`; an id that already has a dot is taken as written."""
    if "." in check.id or ctx.project is None:
        return check.id
    return f"{ctx.project.name}.{check.id}"


def make(ctx: Context, check: Check, seen: str, *, fix: Optional[str] = None, sources: Optional[List[str]] = None,
         severity: Optional[str] = None, deferred: bool = False, requirement: str = "") -> Finding:
    return Finding(
        id=finding_id(ctx, check),
        severity=severity or check.severity,
        title=check.title,
        seen=seen,
        why=check.why,
        fix=check.fix if fix is None else fix,
        sources=list(check.source) + [s for s in (sources or []) if s not in check.source],
        deferred=deferred,
        requirement=requirement,
    )


def _param(check: Check, name: str, default=None):
    return check.params.get(name, default)


def _installed(ctx: Context, package: str) -> Optional[str]:
    """The installed version of `package` (a distribution, or an extension key such as grouped_gemm)."""
    d = ctx.env.dist(package)
    if d is not None:
        return d.version
    ext = ctx.env.extensions.get(package) or ctx.env.extensions.get(normalize_name(package))
    if ext is not None and ext.present:
        return ext.version or "?"
    return None


def when_holds(ctx: Context, check: Check) -> bool:
    """`when = {PACKAGE = SPECIFIER}`: the check applies only while every named package is installed and matches."""
    when = _param(check, "when", None) or {}
    if not isinstance(when, dict):
        return True
    for pkg, spec in when.items():
        version = _installed(ctx, str(pkg))
        if version is None and normalize_name(str(pkg)) == "torch" and ctx.env.torch is not None:
            version = ctx.env.torch.version
        if version is None or spec_contains(str(spec), version) is not True:
            return False
    return True


@kind("version_bound")
def version_bound(ctx: Context, check: Check) -> List[Finding]:
    package = str(_param(check, "package", ""))
    spec = str(_param(check, "spec", ""))
    if not when_holds(ctx, check):
        return []
    version = _installed(ctx, package)
    want = f"{normalize_name(package)}{spec}"
    if version is None:
        if _param(check, "required", False):
            return [make(ctx, check, f"{package} is not installed (needs {package}{spec})", requirement=want)]
        return []
    ok = spec_contains(spec, version)
    if ok is None:
        return [make(ctx, check, f"{package} {version} installed; its version cannot be read, so {package}{spec} "
                                 "cannot be confirmed", severity="warning" if check.severity == "error" else check.severity)]
    if ok:
        return []
    return [make(ctx, check, f"{package} {version} installed; needs {package}{spec}", requirement=want)]


@kind("requires")
def requires(ctx: Context, check: Check) -> List[Finding]:
    names = list(_param(check, "any_of", []) or [])
    if _param(check, "package"):
        names.insert(0, str(_param(check, "package")))
    if any(_installed(ctx, n) is not None for n in names):
        return []
    module = _param(check, "module")
    if module and (ctx.env.api.get(str(module)) is not None and ctx.env.api[str(module)].found):
        return []  # importable without a distribution (a checkout on PYTHONPATH)
    what = names[0] if len(names) == 1 else "any of " + ", ".join(names)
    where = f" (and `{module}` is not importable from sys.path or PYTHONPATH)" if module else ""
    return [make(ctx, check, f"{what}: not installed{where}", requirement=_plain_install(check, names))]


def _plain_install(check: Check, names: List[str]) -> str:
    """The requirement of a fix that is a plain `pip install NAME[==V]` of one of `names` (no flags), else ""."""
    import re

    m = re.match(r"^pip install '?([A-Za-z0-9][A-Za-z0-9._-]*(?:[=<>!~]=?[^\s']+)?)'?\s*(?:\(.*\))?$", check.fix or "")
    if not m:
        return ""
    want = m.group(1)
    name = re.match(r"[A-Za-z0-9._-]+", want).group(0)
    return want if normalize_name(name) in {normalize_name(n) for n in names} else ""


@kind("absent")
def absent(ctx: Context, check: Check) -> List[Finding]:
    package = str(_param(check, "package", ""))
    version = _installed(ctx, package)
    if version is None:
        return []
    return [make(ctx, check, f"{package} {version} is installed")]


@kind("python")
def python(ctx: Context, check: Check) -> List[Finding]:
    spec = str(_param(check, "spec", ""))
    ok = spec_contains(spec, ctx.env.python.version)
    if ok is False:
        return [make(ctx, check, f"Python {ctx.env.python.version} ({ctx.env.python.executable}); needs Python{spec}")]
    return []


@kind("torch_cuda")
def torch_cuda(ctx: Context, check: Check) -> List[Finding]:
    spec = str(_param(check, "spec", ""))
    t = ctx.env.torch
    if t is None:
        return []
    if not t.cuda:
        return [make(ctx, check, f"torch {t.version} is a build without CUDA; needs a CUDA{spec} build")]
    if spec_contains(spec, t.cuda) is False:
        return [make(ctx, check, f"torch {t.version} was built with CUDA {t.cuda}; needs CUDA{spec}")]
    return []


@kind("gpu_capability")
def gpu_capability(ctx: Context, check: Check) -> List[Finding]:
    minimum = str(_param(check, "min", "0"))
    want = release_tuple(minimum)
    gpus = gpu_capabilities(ctx.env, ctx.matrix)
    if not gpus:
        if ctx.build_mode:
            return [make(ctx, check, f"no GPU at build time; judged on the node (needs {sm(minimum)} or newer)",
                         deferred=True)]
        return []
    low = [(g, cc) for g, cc in gpus if want and release_tuple(cc) is not None and release_tuple(cc) < want]
    unknown = [(g, cc) for g, cc in gpus if release_tuple(cc) is None]
    if low:
        return [make(ctx, check, f"{describe_gpus(low)}; needs compute capability {minimum} ({sm(minimum)}) or newer")]
    if unknown:
        return [make(ctx, check, f"{describe_gpus(unknown)}: compute capability unknown; needs {minimum}",
                     severity="warning" if check.severity == "error" else check.severity)]
    return []


@kind("api_symbol")
def api_symbol(ctx: Context, check: Check) -> List[Finding]:
    symbol = str(_param(check, "symbol", ""))
    param = str(_param(check, "param", "") or "")
    top = symbol.split(".", 1)[0]
    package = str(_param(check, "package", "") or top)
    version = _installed(ctx, package)
    if version is None and ctx.env.dist(top) is None:
        return []  # not installed: `requires`/`version_bound` checks speak to presence
    shown = f"{symbol}({param}=...)" if param else symbol
    fix, sources, requirement = _api_fix(ctx, check, package, symbol, param)
    where = f"{package} {version}" if version else package
    info = ctx.env.api.get(symbol)
    if info is None:
        return [make(ctx, check, f"{shown}: not probed in this environment (report from an older matrix?)",
                     severity="info", fix=fix, sources=sources)]
    if not info.found:
        detail = f" ({info.error})" if info.error else ""
        return [make(ctx, check, f"{where} installed; {shown} is not in its source{detail}", fix=fix, sources=sources,
                     requirement=requirement)]
    if param and param not in (info.params or []):
        loc = f" at {info.file}:{info.line}" if info.file else ""
        have = ", ".join(info.params or []) or "none"
        return [make(ctx, check, f"{where} installed; {symbol}{loc} has no parameter {param!r} (has: {have})",
                     fix=fix, sources=sources, requirement=requirement)]
    return []


def _api_fix(ctx: Context, check: Check, package: str, symbol: str, param: str):
    """The check's fix, plus which releases have the symbol according to the package's API table."""
    entries = [e for e in ctx.matrix.api.get(normalize_name(package), []) if e.symbol == symbol and (e.param or "") == param]
    if not entries:
        return check.fix, [], ""
    e = entries[0]
    span = f"{package} {e.first} to {e.last}" if e.last else f"{package} >= {e.first}"
    if e.newest_checked and not e.last:
        span += f" (checked up to {e.newest_checked})"
    note = f"API table: {span} has it."
    fix = f"{check.fix} ({note})" if check.fix else note
    requirement = f"{normalize_name(package)}>={e.first}" + (f",<={e.last}" if e.last else "")
    return fix, list(e.source), requirement

