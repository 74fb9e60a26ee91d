"""Load compat_matrix/ into a Matrix, validating as it goes.

A bad file is one MatrixError naming the file and the key (`projects/mgm.toml: stack[2].pins: ...`).
Validation is structural (types, required keys, unknown keys, a source on every entry, versions and
specifiers that packaging parses, regexes that compile, references between entries); whether a
check or rule kind is registered is checked by `moe-env matrix validate`, which knows the registries.
"""

from __future__ import annotations

import functools
import re
import sys
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from moe_env.errors import MatrixError
from moe_env.matrix import model as m
from moe_env.paths import matrix_root
from moe_env.record import MISSING
from moe_env.record import fields as record_fields
from moe_env.record import hints as record_hints
from moe_env.record import is_record
from moe_env.untrusted import UntrustedInput, read_text, toml_loads

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib

SEVERITIES = ("error", "warning", "info")
MAX_FILE_BYTES = 8 * 1024 * 1024  # the largest shipped file is ~60 kB; an override past this is a mistake

# Accepted forms of a source (compat_matrix/README.md documents them):
#   OWNER/NAME@REF:PATH[:LINE[-LINE]]   a file of an upstream repo at a commit or tag
#   OWNER/NAME#N                        an issue or pull request
#   release:NAME==VERSION[:PATH]        a release artifact's metadata or files (pip download --no-deps)
#   https://...                         a vendor's documentation page
SOURCE_RE = re.compile(
    r"^(?:"
    r"[\w.-]+/[\w.-]+@[\w.+-]+:\S+"
    r"|[\w.-]+/[\w.-]+#\d+"
    r"|release:[A-Za-z0-9][\w.-]*==[\w.+!-]+(?::\S+)?"
    r"|https://\S+"
    r")(?:\s.*)?$"
)

# top-level array-of-tables key -> (entry class, where it goes)
_FLAT: Dict[str, Tuple[type, str]] = {
    "torch": (m.TorchRelease, "torch_releases"),
    "torch_arch": (m.TorchArch, "torch_archs"),
    "cuda_driver": (m.CudaDriver, "cuda_drivers"),
    "cuda_minor_compat": (m.CudaMinorCompat, "cuda_minor_compat"),
    "gpu": (m.GpuFamily, "gpus"),
    "arch_toolkit": (m.ArchToolkit, "arch_toolkits"),
    "conflict": (m.Conflict, "conflicts"),
    "wheels": (m.FlashAttnWheels, "flash_attn_wheels"),
    "cuda_image": (m.CudaImage, "cuda_images"),
    "fleet_fact": (m.FleetFact, "fleet_facts"),
    "launcher_arg": (m.LauncherArg, "launcher_args"),
}
_PACKAGE: Dict[str, type] = {"release": m.PackageRelease, "api": m.ApiEntry}
_PROJECT: Dict[str, Tuple[type, str]] = {
    "pin": (m.Pin, "pins"),
    "variant": (m.Variant, "variants"),
    "check": (m.Check, "checks"),
    "stack": (m.Stack, "stacks"),
    "rule": (m.Rule, "rules"),
    "known_issue": (m.KnownIssue, "known_issues"),
    "entry_point": (m.EntryPoint, "entry_points"),
}
_TOP_SCALARS = {"package", "schema", "description", "class"}
DECODERS = ("cuda_api", "cuda_min")  # KnownIssue.decode values the triage understands

# fields holding versions or specifiers, checked with packaging
_VERSION_FIELDS = {
    m.TorchRelease: ("versions",),
    m.PackageRelease: ("version",),
    m.ApiEntry: ("first", "last", "newest_checked"),
    m.FlashAttnWheels: ("version",),
    m.CudaImage: ("version",),
}
_SPEC_FIELDS = {
    m.TorchRelease: ("python", "setuptools"),
    m.TorchArch: ("torch",),
    m.PackageRelease: ("python", "requires"),
    m.Conflict: ("when",),
    m.Pin: ("spec",),
}

_cache: Dict[str, m.Matrix] = {}


def load_matrix(root: Optional[Path] = None) -> m.Matrix:
    """Load (once per process) and validate the matrix at `root` (default: the shipped one)."""
    root = Path(root) if root else matrix_root()
    key = str(root.resolve())
    if key not in _cache:
        _cache[key] = _load(root)
    return _cache[key]


def _load(root: Path) -> m.Matrix:
    if not root.is_dir():
        raise MatrixError(f"{root}: compat_matrix folder not found (set MOE_ENV_MATRIX or reinstall moe-env)")
    matrix = m.Matrix(root=str(root))
    files = sorted(p for p in root.rglob("*.toml") if p.is_file())
    if not files:
        raise MatrixError(f"{root}: no .toml files in the compat_matrix folder")
    parsed = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            data = toml_loads(read_text(path, max_bytes=MAX_FILE_BYTES, what=rel), what=rel)
        except UntrustedInput as exc:
            raise MatrixError(str(exc)) from None
        parsed.append((rel, data))
    # files that `extends` a project load after the files that define projects
    for rel, data in sorted(parsed, key=lambda item: "extends" in item[1]):
        _load_file(matrix, rel, data)
    _cross_check(matrix)
    return matrix


def _load_file(matrix: m.Matrix, rel: str, data: Dict[str, Any]) -> None:
    package = data.get("package")
    if package is not None and not isinstance(package, str):
        raise MatrixError(f"{rel}: package: must be a string")
    project: Optional[m.Project] = None
    if "extends" in data:
        if "project" in data or not isinstance(data["extends"], str):
            raise MatrixError(f"{rel}: extends: must be a project name, in a file without a [project] table")
        project = matrix.project(data["extends"])
        if project is None:
            raise MatrixError(f"{rel}: extends: no project named {data['extends']!r}")
    if "project" in data:
        info = _entry(m.ProjectInfo, data["project"], rel, "project")
        if info.name in matrix.projects:
            raise MatrixError(f"{rel}: project.name: {info.name!r} is already defined in {matrix.projects[info.name].file}")
        project = m.Project(info=info, file=rel)
        matrix.projects[info.name] = project
    for key, value in data.items():
        if key in _TOP_SCALARS or key in ("project", "extends"):
            continue
        if key in _FLAT:
            cls, attr = _FLAT[key]
            getattr(matrix, attr).extend(_entries(cls, value, rel, key))
        elif key in _PACKAGE:
            if not package:
                raise MatrixError(f"{rel}: {key}: a file with [[{key}]] entries needs a top-level `package = \"NAME\"`")
            attr = "releases" if key == "release" else "api"
            norm = _norm(package)
            getattr(matrix, attr).setdefault(norm, []).extend(_entries(_PACKAGE[key], value, rel, key))
        elif key == "known_issue" and project is None:
            cls_name = data.get("class", "")
            if not isinstance(cls_name, str) or not cls_name:
                raise MatrixError(f"{rel}: class: a file of generic [[known_issue]] entries needs `class = \"NAME\"` (its failure class)")
            for issue in _entries(m.KnownIssue, value, rel, key):
                issue.failure_class = issue.failure_class or cls_name
                matrix.known_issues.append(issue)
        elif key in _PROJECT:
            if project is None:
                raise MatrixError(f"{rel}: {key}: [[{key}]] entries belong in a project file ([project] or extends = \"NAME\")")
            cls, attr = _PROJECT[key]
            getattr(project, attr).extend(_entries(cls, value, rel, key))
        else:
            known = sorted(set(_FLAT) | set(_PACKAGE) | set(_PROJECT) | _TOP_SCALARS | {"project", "extends"})
            raise MatrixError(f"{rel}: {key}: unknown top-level key (known: {', '.join(known)})")


def _entries(cls: type, value: Any, rel: str, key: str) -> List[Any]:
    if not isinstance(value, list):
        raise MatrixError(f"{rel}: {key}: must be an array of tables ([[{key}]])")
    return [_entry(cls, item, rel, f"{key}[{i}]") for i, item in enumerate(value)]


def _entry(cls: type, item: Any, rel: str, where: str) -> Any:
    if not isinstance(item, dict):
        raise MatrixError(f"{rel}: {where}: must be a table")
    hints = _type_hints(cls)
    fields = {f.name: f for f in record_fields(cls)}
    unknown = sorted(set(item) - set(fields))
    if unknown:
        raise MatrixError(f"{rel}: {where}.{unknown[0]}: unknown key for {cls.__name__} (known: {', '.join(fields)})")
    values: Dict[str, Any] = {}
    for name, f in fields.items():
        required = f.default is MISSING and f.default_factory is MISSING
        if name not in item:
            if required:
                raise MatrixError(f"{rel}: {where}.{name}: missing (required for {cls.__name__})")
            continue
        raw = item[name]
        if name == "source" and isinstance(raw, str):
            raw = [raw]
        values[name] = _typed(raw, hints[name], rel, f"{where}.{name}")
    obj = cls(**values)
    _validate_entry(obj, rel, where)
    return obj


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> Dict[str, Any]:
    """The evaluated annotations, once per class."""
    return record_hints(cls)


def _typed(value: Any, hint: Any, rel: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _typed(value, inner[0], rel, where)
    if hint is Any:
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise MatrixError(f"{rel}: {where}: must be a list")
        return [_typed(v, args[0], rel, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise MatrixError(f"{rel}: {where}: must be a table")
        return {str(k): _typed(v, args[1], rel, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise MatrixError(f"{rel}: {where}: must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MatrixError(f"{rel}: {where}: must be an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise MatrixError(f"{rel}: {where}: must be a string (quote version numbers: \"12.1\")")
        return value
    if isinstance(hint, type) and is_record(hint):  # a nested array of tables ([[known_issue.readings]])
        return _entry(hint, value, rel, where)
    return value


def _validate_entry(obj: Any, rel: str, where: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    sources = getattr(obj, "source", None)
    if sources is not None:
        if not sources or not all(isinstance(s, str) and s.strip() for s in sources):
            raise MatrixError(f"{rel}: {where}.source: every entry needs a non-empty source")
        for s in sources:
            if not SOURCE_RE.match(s.strip()):
                raise MatrixError(
                    f"{rel}: {where}.source: {s!r} is not OWNER/REPO@REF:PATH, OWNER/REPO#N, "
                    "release:NAME==VERSION[:PATH] or https://..."
                )
    severity = getattr(obj, "severity", None)
    if severity is not None and severity not in SEVERITIES:
        raise MatrixError(f"{rel}: {where}.severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    for name in _VERSION_FIELDS.get(type(obj), ()):
        vals = getattr(obj, name)
        for v in vals if isinstance(vals, list) else [vals]:
            if v == "":
                continue
            try:
                Version(v)
            except ValueError:  # InvalidVersion, or a release number past int()'s digit limit
                raise MatrixError(f"{rel}: {where}.{name}: {v!r} is not a valid version") from None
    for name in _SPEC_FIELDS.get(type(obj), ()):
        vals = getattr(obj, name)
        items = vals.items() if isinstance(vals, dict) else [(None, vals)]
        for k, v in items:
            try:
                SpecifierSet(v)
            except ValueError:  # InvalidSpecifier, or a number past int()'s digit limit
                key = f"{name}.{k}" if k else name
                raise MatrixError(f"{rel}: {where}.{key}: {v!r} is not a valid version specifier") from None
    if isinstance(obj, m.FleetFact) and obj.agree not in ("exact", "major", "minor"):
        raise MatrixError(f"{rel}: {where}.agree: {obj.agree!r} is not exact, major or minor")
    if isinstance(obj, m.KnownIssue):
        for key in ("patterns", "context"):
            for i, pat in enumerate(getattr(obj, key)):
                try:
                    re.compile(pat)
                except re.error as exc:
                    raise MatrixError(f"{rel}: {where}.{key}[{i}]: bad regular expression: {exc}") from None
        if obj.decode and obj.decode not in DECODERS:
            raise MatrixError(f"{rel}: {where}.decode: {obj.decode!r} is not one of {', '.join(DECODERS)}")
        for d in obj.doctor:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", d):
                raise MatrixError(f"{rel}: {where}.doctor: {d!r} is not a doctor finding id")
        from moe_env.readings import validate as validate_readings

        bad = validate_readings(obj)
        if bad is not None:
            raise MatrixError(f"{rel}: {where}.{bad[0]}: {bad[1]}")
    if isinstance(obj, m.Stack):
        for pkg, ver in obj.pins.items():
            try:
                Version(ver)
            except ValueError:  # InvalidVersion, or a release number past int()'s digit limit
                raise MatrixError(f"{rel}: {where}.pins.{pkg}: {ver!r} must be an exact version") from None


def _cross_check(matrix: m.Matrix) -> None:
    """References between entries: variants named by stacks, checks, rules and defaults exist; ids are unique."""
    generic_ids: Dict[str, str] = {}
    for issue in matrix.known_issues:
        if issue.id in generic_ids:
            raise MatrixError(f"generic known_issue id {issue.id!r} is defined twice (class {generic_ids[issue.id]} and {issue.failure_class})")
        generic_ids[issue.id] = issue.failure_class
    for issue in matrix.known_issues + [i for p in matrix.projects.values() for i in p.known_issues]:
        if issue.symbol:
            rows = matrix.api.get(_norm(issue.symbol.split(".", 1)[0]), [])
            if not any(e.symbol == issue.symbol and e.param == issue.param for e in rows):
                shown = f"{issue.symbol} param {issue.param!r}" if issue.param else issue.symbol
                raise MatrixError(f"known_issue {issue.id!r}: symbol: no [[api]] row for {shown} in packages/")
    for p in matrix.projects.values():
        ids = {v.id for v in p.variants}
        rel = p.file

        def known(names: List[str], where: str) -> None:
            for n in names:
                if n not in ids:
                    raise MatrixError(f"{rel}: {where}: unknown variant {n!r} (variants: {', '.join(sorted(ids))})")

        known(p.info.default_variants, "project.default_variants")
        for kind, entries in (("stack", p.stacks), ("check", p.checks), ("rule", p.rules), ("known_issue", p.known_issues),
                              ("entry_point", p.entry_points)):
            seen = set()
            for i, e in enumerate(entries):
                known(getattr(e, "variants", []), f"{kind}[{i}].variants")
                if e.id in seen:
                    raise MatrixError(f"{rel}: {kind}[{i}].id: duplicate id {e.id!r}")
                seen.add(e.id)
        for i, e in enumerate(p.entry_points):
            if e.parser not in ("hf", "argparse"):
                raise MatrixError(f"{rel}: entry_point[{i}].parser: {e.parser!r} is not hf or argparse")
            bad = [f for f in e.flags + e.conditional_flags if not f.startswith("-")]
            if bad:
                raise MatrixError(f"{rel}: entry_point[{i}].flags: {bad[0]!r} is not an option string")
        if sum(1 for e in p.entry_points if e.default) > 1:
            raise MatrixError(f"{rel}: entry_point: more than one has default = true")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
