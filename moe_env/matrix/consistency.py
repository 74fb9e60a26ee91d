"""Cross-file checks of the matrix that the loader cannot do entry by entry.

The loader validates each file's shape; these functions ask whether the facts agree with each other:
a known-good stack must fit the platform facts (its Python inside its torch's range, its CUDA a build
torch publishes), its deepspeed must have every API symbol its variants' checks need (per the API
table), and no pin may contradict a requirement another pinned package declares. `moe-env matrix
validate` prints these; the tests run them over every project file.
"""

from __future__ import annotations

from typing import List, Optional

from moe_env.matrix.model import ApiEntry, Matrix, PackageRelease, Project, Stack


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def api_entry(matrix: Matrix, package: str, symbol: str, param: str = "") -> Optional[ApiEntry]:
    for e in matrix.api.get(_norm(package), []):
        if e.symbol == symbol and (e.param or "") == (param or ""):
            return e
    return None


def api_has(entry: ApiEntry, version: str) -> Optional[bool]:
    """Whether a release has the entry's symbol per the table; None when the version is past what was checked."""
    from packaging.version import Version

    v = Version(version)
    if v < Version(entry.first):
        return False
    if entry.last:
        return v <= Version(entry.last)
    if entry.newest_checked and v > Version(entry.newest_checked):
        return None
    return True


def release_facts(matrix: Matrix, package: str, version: str) -> Optional[PackageRelease]:
    from packaging.version import Version

    want = Version(version)
    for r in matrix.releases.get(_norm(package), []):
        if Version(r.version) == want:
            return r
    return None


def _runs_on(cc: str, archs: List[str], ptx: str) -> bool:
    """SASS runs on the same major at an equal or higher minor; PTX JIT-compiles for anything newer."""
    try:
        want = tuple(int(x) for x in cc.split(".")[:2])
        for a in archs:
            have = tuple(int(x) for x in a.split(".")[:2])
            if have[0] == want[0] and have[1] <= want[1]:
                return True
        return bool(ptx) and tuple(int(x) for x in ptx.split(".")[:2]) <= want
    except ValueError:
        return True  # unreadable: cannot judge


def flash_attn_wheel(matrix: Matrix, version: str, torch: str, cuda: str, python: str) -> Optional[bool]:
    """Whether flash-attn `version` publishes the prebuilt wheel setup.py would pick (moe_env.wheels decides)."""
    from moe_env.wheels import flash_attn_wheel as answer

    row = matrix.torch_release(torch)
    return answer(matrix, version, torch, cuda, python, row.cxx11_abi if row is not None else None).exists


def _stack_checks(project: Project, stack: Stack):
    wanted = set(stack.variants)
    for c in project.checks:
        if not c.variants or wanted & set(c.variants):
            yield c


def stack_problems(matrix: Matrix, project: Project, stack: Stack) -> List[str]:
    """One line per contradiction between `stack` and the rest of the matrix."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    where = f"{project.file}: stack {stack.id}"
    out: List[str] = []
    pins = {_norm(k): v for k, v in stack.pins.items()}
    torch = pins.get("torch")
    if torch:
        row = matrix.torch_release(torch)
        if row is None:
            out.append(f"{where}: torch {torch} has no [[torch]] row in platform/torch.toml")
        else:
            if stack.python and not SpecifierSet(row.python).contains(Version(stack.python), prereleases=True):
                out.append(f"{where}: python {stack.python} is outside torch {row.minor}'s wheels ({row.python})")
            base = torch.split("+", 1)[0]
            if row.versions and base not in row.versions:
                out.append(f"{where}: torch {torch} is not a published {row.minor} release ({', '.join(row.versions)})")
            if stack.cuda not in ("", "cpu") and stack.cuda not in row.cuda_builds and stack.cuda != row.default_cuda:
                out.append(
                    f"{where}: cuda {stack.cuda} is not an official torch {row.minor} build ({', '.join(row.cuda_builds)})"
                )
            arch_row = next((a for a in matrix.torch_archs
                             if stack.cuda in a.cuda and SpecifierSet(a.torch).contains(Version(base), prereleases=True)), None)
            for cc in stack.gpu_archs if arch_row else []:
                if not _runs_on(cc, arch_row.archs, arch_row.ptx):
                    out.append(f"{where}: gpu arch {cc} has no kernels in torch {base}+cu{stack.cuda.replace('.', '')} "
                               f"(builds {', '.join(arch_row.archs)})")
    fa = pins.get("flash-attn")
    if fa and torch and stack.cuda not in ("", "cpu") and "flash-attn" not in stack.source_builds:
        if flash_attn_wheel(matrix, fa, torch, stack.cuda, stack.python) is False:
            out.append(f"{where}: flash-attn {fa} has no prebuilt wheel for torch {torch}, CUDA {stack.cuda}, "
                       f"python {stack.python}; list it in source_builds")
    for c in _stack_checks(project, stack):
        if c.kind != "api_symbol":
            continue
        symbol = str(c.params.get("symbol", ""))
        param = str(c.params.get("param", "") or "")
        package = _norm(str(c.params.get("package", "") or symbol.split(".", 1)[0]))
        version = pins.get(package)
        if not version:
            continue
        entry = api_entry(matrix, package, symbol, param)
        shown = f"{symbol}({param})" if param else symbol
        if entry is None and package == "deepspeed":  # the scanner covers every check's symbol; others may lack rows
            out.append(f"{where}: check {c.id} needs {shown} but packages/{package}.toml has no [[api]] row for it")
        elif entry is not None and api_has(entry, version) is False:
            span = f"{entry.first}..{entry.last}" if entry.last else f">={entry.first}"
            out.append(f"{where}: {package} {version} lacks {shown} (check {c.id}; the API table says {span})")
    for pkg, version in pins.items():
        rel = release_facts(matrix, pkg, version)
        if rel is None:
            continue
        if rel.python and stack.python and not SpecifierSet(rel.python).contains(Version(stack.python), prereleases=True):
            out.append(f"{where}: {pkg} {version} requires python {rel.python}, the stack has {stack.python}")
        for dep, spec in rel.requires.items():
            have = pins.get(_norm(dep))
            if have is None:
                continue
            if not SpecifierSet(spec).contains(Version(have.split("+", 1)[0]), prereleases=True):
                out.append(f"{where}: {pkg} {version} requires {dep}{spec}, the stack pins {dep} {have}")
    return out


def matrix_problems(matrix: Matrix) -> List[str]:
    out: List[str] = []
    for project in sorted(matrix.projects.values(), key=lambda p: p.name):
        for stack in project.stacks:
            out.extend(stack_problems(matrix, project, stack))
    out.extend(conflict_problems(matrix))
    return out


def _known_distributions(matrix: Matrix) -> set:
    """Distribution names the matrix already stands behind: package tables, torch, declared requirements, pins."""
    names = set(matrix.releases) | set(matrix.api) | {"torch"}
    for rows in matrix.releases.values():
        for row in rows:
            names.update(_norm(k) for k in row.requires)
    for project in matrix.projects.values():
        names.update(_norm(p.package) for p in project.pins)
        for stack in project.stacks:
            names.update(_norm(k.split("[", 1)[0]) for k in stack.pins)
    return names


def conflict_problems(matrix: Matrix) -> List[str]:
    """Each [[conflict]]: `when` names real distributions (canonical names, each known to the matrix or named by a
    `release:NAME==VER` source of the row, the artifact that was opened), every range parses, and the fix's
    `requirement` is on one of those packages and leaves the conflict (no version satisfies both)."""
    import re

    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from moe_env.checks.merge import intersect, split_requirement

    known = _known_distributions(matrix)
    out: List[str] = []
    for c in matrix.conflicts:
        where = f"generic.toml: conflict {c.id}"
        opened = {_norm(m) for s in c.source for m in re.findall(r"^release:([A-Za-z0-9][A-Za-z0-9._-]*)==", s)}
        if len(c.when) < 2:
            out.append(f"{where}: `when` names {len(c.when)} package(s); a conflict is between two or more")
        for pkg, spec in c.when.items():
            if pkg != _norm(pkg):
                out.append(f"{where}: `when` package {pkg!r} is not a canonical distribution name (write {_norm(pkg)!r})")
            elif pkg not in known and pkg not in opened:
                out.append(f"{where}: `when` package {pkg!r} is no distribution the matrix knows, and no release: source names it")
            try:
                if not str(SpecifierSet(spec)):
                    out.append(f"{where}: `when` {pkg} has an empty range")
            except InvalidSpecifier:
                out.append(f"{where}: `when` {pkg} = {spec!r} is not a version specifier")
        if c.requirement:
            req = split_requirement(c.requirement)
            if req is None or req[0] not in c.when:
                out.append(f"{where}: requirement {c.requirement!r} is not a plain requirement on a `when` package")
            elif intersect([req[1], c.when[req[0]]]) is not None:
                out.append(f"{where}: requirement {c.requirement!r} overlaps `when` {req[0]}{c.when[req[0]]}: "
                           "installing it may keep the conflict")
        if c.alternative:
            alt = split_requirement(c.alternative)
            req = split_requirement(c.requirement) if c.requirement else None
            if req is None:
                out.append(f"{where}: alternative {c.alternative!r} without a requirement")
            elif alt is None or alt[0] not in c.when or alt[0] == req[0]:
                out.append(f"{where}: alternative {c.alternative!r} is not a plain requirement on another `when` package")
            elif intersect([alt[1], c.when[alt[0]]]) is not None:
                out.append(f"{where}: alternative {c.alternative!r} overlaps `when` {alt[0]}{c.when[alt[0]]}: "
                           "installing it may keep the conflict")
    return out


def registry_problems(matrix: Matrix) -> List[str]:
    """Check kinds (and rule kinds, when a registry for them is importable) that no code implements."""
    out: List[str] = []
    try:
        import moe_env.checks  # noqa: F401  (registers the kinds)
        from moe_env.checks.registry import KINDS
    except ImportError:  # pragma: no cover - the checks package is part of moe-env
        return out
    rule_kinds = _rule_kinds()
    for project in sorted(matrix.projects.values(), key=lambda p: p.name):
        for c in project.checks:
            if c.kind not in KINDS:
                out.append(f"{project.file}: check {c.id}: kind {c.kind!r} is not registered (known: {', '.join(sorted(KINDS))})")
        if rule_kinds is not None:
            for r in project.rules:
                if r.kind not in rule_kinds:
                    out.append(f"{project.file}: rule {r.id}: kind {r.kind!r} is not registered (known: {', '.join(sorted(rule_kinds))})")
    return out


def _rule_kinds():
    import importlib

    for name in ("moe_env.config_rules", "moe_env.check_config", "moe_env.rules"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        kinds = getattr(mod, "RULE_KINDS", None) or getattr(mod, "KINDS", None)
        if isinstance(kinds, dict):
            return kinds
    return None
