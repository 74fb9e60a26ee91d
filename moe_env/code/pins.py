"""The checkout's own declared requirements and identity, read as files (setup.py is parsed, never run).

pyproject.toml `[project] dependencies` and `name`; setup.py `setup(name=..., install_requires=[...])` when
they are literals (or names bound to literals at module level); requirements*.txt at the top of the checkout.
The git commit comes from .git/HEAD and the ref it names (loose or packed), read as text.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from moe_env.checks.facts import marker_environment, spec_contains
from moe_env.environment import Environment, normalize_name
from moe_env.findings import Finding

_MAX = 4 * 1024 * 1024


@dataclass
class Pin:
    requirement: str  # as written
    file: str  # "pyproject.toml", "setup.py", "requirements.txt"
    line: int = 0


@dataclass
class Identity:
    name: Optional[str] = None  # the package name it declares
    commit: Optional[str] = None  # 40 hex digits, when a git checkout
    pins: List[Pin] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)  # (file, why it could not be read)


def _read(path: str) -> Optional[str]:
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > _MAX:
            return None
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def read_identity(root: str) -> Identity:
    ident = Identity()
    if os.path.isfile(root):
        return ident
    _pyproject(root, ident)
    _setup_py(root, ident)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    for entry in names:
        if entry.startswith("requirements") and entry.endswith(".txt"):
            _requirements(root, entry, ident)
    ident.commit = git_commit(root)
    return ident


def _pyproject(root: str, ident: Identity) -> None:
    text = _read(os.path.join(root, "pyproject.toml"))
    if text is None:
        return
    from moe_env.untrusted import UntrustedInput, toml_loads

    try:
        data = toml_loads(text, what="pyproject.toml")
    except (UntrustedInput, ValueError, RecursionError) as exc:
        ident.problems.append(("pyproject.toml", f"not valid TOML ({str(exc)[:100]})"))
        return
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    if isinstance(project.get("name"), str):
        ident.name = project["name"]
    for req in project.get("dependencies") or []:
        if isinstance(req, str):
            ident.pins.append(Pin(req, "pyproject.toml", _line_of(text, req)))


def _line_of(text: str, needle: str) -> int:
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else 0


def _setup_py(root: str, ident: Identity) -> None:
    text = _read(os.path.join(root, "setup.py"))
    if text is None:
        return
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError) as exc:
        ident.problems.append(("setup.py", f"cannot parse ({type(exc).__name__})"))
        return
    literals = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                literals[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError, RecursionError):
                pass
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and (getattr(node.func, "id", None) == "setup"
                                                or getattr(node.func, "attr", None) == "setup")):
            continue
        for kw in node.keywords:
            value = None
            try:
                value = ast.literal_eval(kw.value)
            except (ValueError, SyntaxError, TypeError, RecursionError):
                if isinstance(kw.value, ast.Name):
                    value = literals.get(kw.value.id)
            if kw.arg == "name" and isinstance(value, str) and ident.name is None:
                ident.name = value
            elif kw.arg == "install_requires" and isinstance(value, (list, tuple)):
                for req in value:
                    if isinstance(req, str):
                        ident.pins.append(Pin(req, "setup.py", getattr(kw.value, "lineno", 0)))


def _requirements(root: str, entry: str, ident: Identity) -> None:
    text = _read(os.path.join(root, entry))
    if text is None:
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line or line.startswith(("-", "git+", "http:", "https:", "file:", ".", "/")):
            continue  # options, nested files, URLs and paths are not version pins
        ident.pins.append(Pin(line, entry, number))


def git_commit(root: str) -> Optional[str]:
    """HEAD's commit, read from files: .git/HEAD, the ref it names (loose, else packed-refs); worktrees too."""
    git = os.path.join(root, ".git")
    if os.path.isfile(git):  # a worktree or submodule: "gitdir: PATH"
        text = _read(git) or ""
        if not text.startswith("gitdir:"):
            return None
        git = os.path.normpath(os.path.join(root, text[len("gitdir:"):].strip()))
    head = (_read(os.path.join(git, "HEAD")) or "").strip()
    if re.fullmatch(r"[0-9a-f]{40}", head):
        return head
    if not head.startswith("ref:"):
        return None
    ref = head[4:].strip()
    if ".." in ref:
        return None
    common = git
    common_file = _read(os.path.join(git, "commondir"))
    if common_file:
        common = os.path.normpath(os.path.join(git, common_file.strip()))
    for base in (git, common):
        value = (_read(os.path.join(base, ref)) or "").strip()
        if re.fullmatch(r"[0-9a-f]{40}", value):
            return value
    for line in (_read(os.path.join(common, "packed-refs")) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == ref and re.fullmatch(r"[0-9a-f]{40}", parts[0]):
            return parts[0]
    return None


def pin_findings(ident: Identity, env: Environment) -> List[Finding]:
    """The environment against the checkout's declared pins: warnings (a declared pin, no cited failure)."""
    out: List[Finding] = []
    seen = set()
    markers = marker_environment(env)
    for pin in ident.pins:
        try:
            req = Requirement(pin.requirement)
        except InvalidRequirement:
            continue
        if req.marker is not None:
            try:
                if not req.marker.evaluate(dict(markers, extra="")):
                    continue
            except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
                continue
        name = normalize_name(req.name)
        spec = str(req.specifier)
        if (name, spec) in seen:
            continue
        seen.add((name, spec))
        version = env.version_of(name)
        where = f"{pin.file}:{pin.line}" if pin.line else pin.file
        if version is None:
            out.append(Finding(
                id="code.pin-not-installed", severity="warning",
                title=f"The checkout requires {req.name}, which is not installed",
                seen=f"{where} declares {pin.requirement}; {name} is not installed",
                why="The project declares it; the code that imports it fails where it runs.",
                fix=f"pip install '{name}{spec}'", file=pin.file, line=pin.line or None, code=pin.requirement))
            continue
        if spec and spec_contains(spec, version) is False:
            out.append(Finding(
                id="code.pin-mismatch", severity="warning",
                title=f"{name} {version} is outside the checkout's pin {name}{spec}",
                seen=f"{where} declares {pin.requirement}; {name} {version} is installed",
                why="The project was written and tested against the pinned releases; others are untested by it.",
                fix=f"pip install '{name}{spec}'", file=pin.file, line=pin.line or None, code=pin.requirement))
    return out
