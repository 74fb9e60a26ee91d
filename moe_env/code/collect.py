"""What a user's checkout uses from libraries, read with `ast`: never imported, never run.

One pass per file. Imported names are tracked per scope (module, function); a use is a dotted name
rooted at an imported name: the import itself, an attribute chain (`deepspeed.utils.set_z3_leaf_modules`),
a call (with its keyword names and positional count), a library base class, or a `super().m(...)` call in
a method of a class deriving from one. Imports under `try: ... except ImportError`, `if` branches or
`TYPE_CHECKING` are marked guarded. Access the reader cannot name (`getattr(mod, var)`,
`import_module(var)`, star imports) is counted as dynamic, never guessed.

Statements whose text mentions none of the names in scope are skipped without a walk: that keeps a
50,000-line checkout well under a second.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

MAX_FILE_BYTES = 2 * 1024 * 1024  # a generated or vendored blob, not code someone edits
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_FILES = 50000
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".tox", ".nox", ".eggs", "site-packages",
              ".mypy_cache", ".pytest_cache", ".venv", "venv"}
_SKIP_TOP = {"build", "dist"}
_GUARD_EXCEPTIONS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_CODE_CHARS = 200


@dataclass
class Use:
    """One reference to a library name at one place in the code."""

    symbol: str  # dotted, absolute: "transformers.deepspeed.HfDeepSpeedConfig"
    file: str  # relative to the checkout
    line: int
    kind: str  # "import" (a module or a name imported), "attr", "call", "base", "super", "override"
    code: str = ""  # the source line, stripped (not yet escaped: render through printable())
    guarded: str = ""  # why a failure here would not stop the program: "except ImportError", "if", "TYPE_CHECKING"
    positional: Optional[int] = None  # calls: number of positional arguments (None when *args is passed)
    keywords: List[str] = field(default_factory=list)  # calls: keyword names passed explicitly
    star_kwargs: bool = False  # calls: **kwargs passed, so missing required arguments cannot be judged
    arg_names: List[str] = field(default_factory=list)  # calls: positional arguments that are plain names ("" else)
    bound: bool = False  # calls: the first parameter (self/cls) is supplied implicitly (super(), Class(...))
    owner: str = ""  # super()/override: the class in the checkout
    # override: the names the overriding def accepts (its first parameter left out); `positional` is then how
    # many it takes positionally (None with *args) and `star_kwargs` whether it has **kwargs
    accepts: List[str] = field(default_factory=list)


@dataclass
class Dynamic:
    file: str
    line: int
    what: str  # "getattr(torch, name)", "from transformers import *"


@dataclass
class FileProblem:
    file: str
    problem: str  # "syntax error line 3: invalid syntax", "10.0 MB, larger than the 2 MB read limit"
    severity: str = "warning"


@dataclass
class CodeScan:
    root: str
    single_file: bool = False
    files: int = 0
    lines: int = 0
    uses: List[Use] = field(default_factory=list)
    dynamic: List[Dynamic] = field(default_factory=list)
    problems: List[FileProblem] = field(default_factory=list)
    local_modules: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def symbols(self) -> List[str]:
        """Every dotted name to ask the probe about (once each), with the parents of calls' targets."""
        out: Set[str] = set()
        for u in self.uses:
            out.add(u.symbol)
        return sorted(out)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- walking the checkout


def _stdlib() -> Set[str]:
    names = set(getattr(sys, "stdlib_module_names", ()) or ())
    names |= set(sys.builtin_module_names)
    if not names or len(names) < 50:  # Python 3.8/3.9: a short list of the usual ones is enough to save probe work
        names |= {"os", "sys", "re", "json", "math", "time", "typing", "collections", "functools", "itertools",
                  "dataclasses", "pathlib", "logging", "argparse", "subprocess", "shutil", "copy", "random",
                  "abc", "enum", "io", "glob", "warnings", "contextlib", "importlib", "inspect", "types"}
    names.discard("__future__")
    return names


def iter_python_files(root: str) -> Iterable[Tuple[str, str]]:
    """(absolute path, path relative to root) of the .py files under root; symlinked folders are not followed
    (no loops, no leaving the checkout), symlinked files only when they stay inside it."""
    real_root = os.path.realpath(root)
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    if entry.name.endswith(".py"):
                        target = os.path.realpath(entry.path)
                        if target.startswith(real_root + os.sep) and os.path.isfile(target):
                            yield entry.path, os.path.relpath(entry.path, root)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name in _SKIP_DIRS or entry.name.startswith(".") or entry.name.endswith(".egg-info"):
                        continue
                    if directory == root and entry.name in _SKIP_TOP:
                        continue  # setup.py's build/ and dist/ copies, not packages named build or dist
                    if os.path.exists(os.path.join(entry.path, "pyvenv.cfg")):
                        continue  # a virtual environment inside the checkout
                    subdirs.append(entry.path)
                elif entry.name.endswith(".py") and entry.is_file(follow_symlinks=False):
                    yield entry.path, os.path.relpath(entry.path, root)
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def local_modules(root: str) -> Set[str]:
    """Top-level names the checkout itself provides (run from its root, or installed from src/)."""
    names: Set[str] = set()
    for base in (root, os.path.join(root, "src")):
        try:
            entries = os.listdir(base)
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(base, entry)
            if entry.endswith(".py"):
                names.add(entry[:-3])
            elif entry.isidentifier() and os.path.isdir(path) and not os.path.islink(path):
                names.add(entry)
    return names


def collect(path: str) -> CodeScan:
    """Scan a checkout (or one .py file); problems with single files become FileProblems, never exceptions."""
    import time

    started = time.perf_counter()
    path = os.path.abspath(path)
    single = os.path.isfile(path)
    root = os.path.dirname(path) if single else path
    scan = CodeScan(root=path, single_file=single)
    local = local_modules(root)
    if not single and os.path.isfile(os.path.join(root, "__init__.py")):
        local.add(os.path.basename(root))  # --code pointed at a package: it imports itself by name
    stdlib = _stdlib()
    files = [(path, os.path.basename(path))] if single else iter_python_files(root)
    total = 0
    siblings: Dict[str, Set[str]] = {}
    for full, rel in files:
        if scan.files >= MAX_FILES:
            scan.problems.append(FileProblem(rel, f"more than {MAX_FILES} Python files; the rest were not read", "info"))
            break
        data, problem = _read(full)
        if problem:
            scan.problems.append(FileProblem(rel, problem, "info" if "larger than" in problem else "warning"))
            continue
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            scan.problems.append(FileProblem(rel, f"the checkout has more than {MAX_TOTAL_BYTES >> 20} MB of Python; "
                                                  "the rest was not read", "info"))
            break
        scan.files += 1
        folder = os.path.dirname(full)
        if folder not in siblings:
            siblings[folder] = _folder_modules(folder)
        _scan_file(scan, rel, data, local | siblings[folder], stdlib)
    scan.local_modules = sorted(local)
    scan.seconds = round(time.perf_counter() - started, 4)
    return scan


def _folder_modules(folder: str) -> Set[str]:
    """A script's own folder is sys.path[0] when it runs: its siblings shadow libraries."""
    try:
        return {e[:-3] if e.endswith(".py") else e for e in os.listdir(folder)
                if e.endswith(".py") or os.path.isfile(os.path.join(folder, e, "__init__.py"))}
    except OSError:
        return set()


def _read(path: str) -> Tuple[bytes, Optional[str]]:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return b"", "not a regular file"
        if st.st_size > MAX_FILE_BYTES:
            return b"", f"{st.st_size / 1e6:.1f} MB, larger than the {MAX_FILE_BYTES >> 20} MB read limit; not read"
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1), None
    except OSError as exc:
        return b"", f"cannot read ({exc.strerror or exc})"


_IMPORT_LINE = re.compile(rb"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import|import[ \t]+([\w., \t]+))", re.M)


def _scan_file(scan: CodeScan, rel: str, data: bytes, local: Set[str], stdlib: Set[str]) -> None:
    lines_count = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    scan.lines += lines_count
    # cheap filter: a file importing nothing outside the standard library and the checkout uses no library
    roots = set()
    for m in _IMPORT_LINE.finditer(data):
        if m.group(1):
            roots.add(m.group(1).split(b".")[0].decode("ascii", "replace"))
        else:
            for part in m.group(2).split(b","):
                roots.add(part.strip().split(b".")[0].split()[0].decode("ascii", "replace") if part.strip() else "")
    if not (roots - stdlib - local - {""}) and b"import_module" not in data and b"__import__" not in data:
        return
    try:
        tree = ast.parse(data, filename=rel)
    except SyntaxError as exc:
        scan.problems.append(FileProblem(rel, f"syntax error line {exc.lineno}: {exc.msg}"))
        return
    except (ValueError, RecursionError, MemoryError) as exc:
        scan.problems.append(FileProblem(rel, f"cannot parse ({type(exc).__name__}: {str(exc)[:100]})"))
        return
    text_lines = data.decode("utf-8", "replace").splitlines()
    try:
        _Visitor(scan, rel, text_lines, local | stdlib).run(tree)
    except RecursionError:
        scan.problems.append(FileProblem(rel, "nested too deeply to read"))
    except Exception as exc:  # a construct this reader does not know must cost one file, not the run
        scan.problems.append(FileProblem(rel, f"not read ({type(exc).__name__}: {str(exc)[:100]}); please report it"))


# ---------------------------------------------------------------- the visitor


def _dotted(node: ast.AST) -> Optional[List[str]]:
    """`a.b.c` -> ["a", "b", "c"]; None for anything that is not a plain attribute chain on a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    parts.reverse()
    return parts


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    t = handler.type
    if t is None:
        return True
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    for n in names:
        d = _dotted(n)
        if d and d[-1] in _GUARD_EXCEPTIONS:
            return True
    return False


class _Scope:
    def __init__(self, names: Dict[str, str]):
        self.names = names  # local name -> dotted library name (None: a local that shadows an import)


class _Visitor:
    """Walks statements, skipping those whose text mentions no tracked name; expressions only where relevant."""

    _KEYWORDS = ("import", "super", "getattr", "__import__")

    def __init__(self, scan: CodeScan, rel: str, lines: List[str], excluded: Set[str]):
        self.scan = scan
        self.rel = rel
        self.lines = lines
        self.excluded = excluded
        self.scopes: List[_Scope] = [_Scope({})]
        self.guard: List[str] = []
        self.classes: Dict[str, Tuple[List[object], Set[str]]] = {}  # name -> (bases: dotted str | local name, methods)
        self.cls_stack: List[Optional[str]] = []
        self.pattern: Optional[List[bool]] = None  # per line: mentions a tracked name (for the current scopes)
        self._hits: Dict[frozenset, List[bool]] = {}

    # --- helpers

    def code(self, line: int) -> str:
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        return text if len(text) <= _CODE_CHARS else text[:_CODE_CHARS] + "..."

    def lookup(self, name: str) -> Optional[str]:
        for scope in reversed(self.scopes):
            if name in scope.names:
                return scope.names[name]
        return None

    def bind(self, local: str, dotted: Optional[str]) -> None:
        names = self.scopes[-1].names
        if dotted is None:
            names.pop(local, None)
            if len(self.scopes) > 1:
                names[local] = None  # type: ignore[assignment]  # shadows an outer import
        else:
            names[local] = dotted
        self.pattern = None

    def _tracked(self) -> Set[str]:
        return {n for s in self.scopes for n, d in s.names.items() if d}

    def _relevant(self, node: ast.AST) -> bool:
        """Whether the node's lines mention a tracked name (or import/super/getattr); one regex pass per line
        and set of names, cached, so nested statements cost a slice, not a search."""
        if self.pattern is None:
            key = frozenset(self._tracked())
            hits = self._hits.get(key)
            if hits is None:
                words = sorted(key | set(self._KEYWORDS))
                pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b")
                hits = [pattern.search(line) is not None for line in self.lines]
                self._hits[key] = hits
            self.pattern = hits  # type: ignore[assignment]
        hits = self.pattern
        start = getattr(node, "lineno", 1)
        end = getattr(node, "end_lineno", None) or start
        return any(hits[start - 1:end])  # type: ignore[index]

    def _may_assign(self, node: ast.AST, tracked: Set[str]) -> bool:
        """Text test before the walk: could the function bind one of `tracked` (x =, x, y =, for x, as x...)?"""
        names = "|".join(map(re.escape, sorted(tracked)))
        pattern = re.compile(r"(?<![.\w])(?:" + names + r")\s*(?:[,)\]:]|=(?!=))|\b(?:as|for|global|nonlocal|def|class)\b"
                             r"[^\n]*(?<![.\w])(?:" + names + r")\b")
        start, end = node.lineno, node.end_lineno or node.lineno
        return any(pattern.search(self.lines[i]) for i in range(start, min(end, len(self.lines))))

    def add(self, symbol: str, node: ast.AST, kind: str, **extra) -> None:
        line = getattr(node, "lineno", 0)
        self.scan.uses.append(Use(symbol=symbol, file=self.rel, line=line, kind=kind, code=self.code(line),
                                  guarded=self.guard[-1] if self.guard else "", **extra))

    def dynamic(self, node: ast.AST, what: str) -> None:
        self.scan.dynamic.append(Dynamic(self.rel, getattr(node, "lineno", 0), what))

    def is_library_root(self, name: str) -> bool:
        return name not in self.excluded

    # --- statements

    def run(self, tree: ast.Module) -> None:
        self.body(tree.body)

    def body(self, stmts: List[ast.stmt]) -> None:
        for stmt in stmts:
            self.stmt(stmt)

    def stmt(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            self.import_(node)
        elif isinstance(node, ast.ImportFrom):
            self.import_from(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.function(node)
        elif isinstance(node, ast.ClassDef):
            self.class_(node)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            guarded = any(_catches_import_error(h) for h in node.handlers)
            if guarded:
                self.guard.append("except ImportError")
            self.body(node.body)
            if guarded:
                self.guard.pop()
            for h in node.handlers:
                if h.type is not None and self._relevant(h.type):
                    self.expr(h.type)
                if h.name:
                    self.bind(h.name, None)
                self.body(h.body)
            self.body(node.orelse)
            self.body(node.finalbody)
        elif isinstance(node, ast.If):
            if self._relevant(node.test):
                self.expr(node.test)
            why = _if_guard(node.test, self.code(node.lineno))
            if why:
                self.guard.append(why)
            self.body(node.body)
            self.body(node.orelse)
            if why:
                self.guard.pop()
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            suppress = any(_dotted(i.context_expr.func if isinstance(i.context_expr, ast.Call) else i.context_expr)
                           and _dotted(i.context_expr.func if isinstance(i.context_expr, ast.Call)
                                       else i.context_expr)[-1] == "suppress" for i in node.items)
            for item in node.items:
                if self._relevant(item.context_expr):
                    self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.store(item.optional_vars)
            if suppress:
                self.guard.append("except ImportError")
            self.body(node.body)
            if suppress:
                self.guard.pop()
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            if isinstance(node, ast.While):
                if self._relevant(node.test):
                    self.expr(node.test)
            else:
                if self._relevant(node.iter):
                    self.expr(node.iter)
                self.store(node.target)
            self.body(node.body)
            self.body(node.orelse)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            value = node.value
            if value is not None and self._relevant(value):
                self.expr(value)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    if isinstance(node, ast.Assign) and isinstance(value, (ast.Name, ast.Attribute)):
                        d = self.resolve(value)  # `F = torch.nn.functional`: an alias
                        if d is not None:
                            self.bind(t.id, d)
                            continue
                    if self.lookup(t.id) is not None:
                        self.bind(t.id, None)
                elif isinstance(t, ast.Attribute) and self._relevant(t):
                    self.expr(t.value)  # `lib.Cls.forward = patched`: Cls must exist, forward need not
                elif self._relevant(t):
                    self.expr(t)
        elif type(node).__name__ == "Match":
            if self._relevant(node.subject):  # type: ignore[attr-defined]
                self.expr(node.subject)  # type: ignore[attr-defined]
            for case in node.cases:  # type: ignore[attr-defined]
                self.body(case.body)
        else:
            if self._relevant(node):
                for child in ast.iter_child_nodes(node):
                    self.expr(child)

    def store(self, target: ast.AST) -> None:
        for n in ast.walk(target):
            if isinstance(n, ast.Name) and self.lookup(n.id) is not None:
                self.bind(n.id, None)

    def import_(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if not self.is_library_root(root):
                continue
            self.add(alias.name, node, "import")
            if alias.asname:
                self.bind(alias.asname, alias.name)
            else:
                self.bind(root, root)

    def import_from(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # relative: the checkout's own code
        root = node.module.split(".")[0]
        if not self.is_library_root(root):
            return
        for alias in node.names:
            if alias.name == "*":
                self.add(node.module, node, "import")
                self.dynamic(node, f"from {node.module} import *")
                continue
            full = f"{node.module}.{alias.name}"
            self.add(full, node, "import")
            self.bind(alias.asname or alias.name, full)

    def function(self, node) -> None:
        for d in node.decorator_list:
            if self._relevant(d):
                self.expr(d)
        args = node.args
        for default in list(args.defaults) + [d for d in args.kw_defaults if d is not None]:
            if self._relevant(default):
                self.expr(default)
        if self.cls_stack and self.cls_stack[-1]:
            self.classes[self.cls_stack[-1]][1].add(node.name)
        if self.lookup(node.name) is not None:
            self.bind(node.name, None)
        if not self._relevant(node):
            return
        shadow = {a.arg for a in list(getattr(args, "posonlyargs", [])) + args.args + args.kwonlyargs}
        shadow |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        tracked = self._tracked()
        if tracked and self._may_assign(node, tracked):
            shadow |= _assigned_names(node.body)
        inner = {n: None for n in shadow if self.lookup(n) is not None}
        self.scopes.append(_Scope(inner))  # type: ignore[arg-type]
        self.pattern = None
        self.cls_stack.append(None if not self.cls_stack else self.cls_stack[-1])
        outer_guard, self.guard = self.guard, []  # a guard around a def does not guard what the body does later
        try:
            self.body(node.body)
        finally:
            self.guard = outer_guard
            self.cls_stack.pop()
            self.scopes.pop()
            self.pattern = None

    def class_(self, node: ast.ClassDef) -> None:
        bases: List[object] = []
        for b in node.bases:
            d = self.resolve(b)
            if d is not None:
                self.add(d, b, "base")
                bases.append(d)
            elif isinstance(b, ast.Name):
                bases.append(("local", b.id))
            else:
                bases.append(None)
                if self._relevant(b):
                    self.expr(b)
        for k in node.keywords:
            if self._relevant(k.value):
                self.expr(k.value)
        for d in node.decorator_list:
            if self._relevant(d):
                self.expr(d)
        self.classes[node.name] = (bases, set())
        if self.lookup(node.name) is not None:
            self.bind(node.name, None)
        self.cls_stack.append(node.name)
        self.scopes.append(_Scope({}))
        try:
            # a class body's names are not visible in its methods: methods see the enclosing scopes only
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    saved = self.scopes.pop()
                    try:
                        self.function(stmt)
                    finally:
                        self.scopes.append(saved)
                    self.override(node.name, stmt)
                else:
                    self.stmt(stmt)
        finally:
            self.scopes.pop()
            self.cls_stack.pop()
            self.pattern = None

    # --- expressions

    def resolve(self, node: ast.AST) -> Optional[str]:
        parts = _dotted(node)
        if not parts:
            return None
        base = self.lookup(parts[0])
        if not base:
            return None
        return ".".join([base] + parts[1:])

    def expr(self, node: ast.AST) -> None:
        if isinstance(node, ast.Call):
            self.call(node)
            return
        if isinstance(node, (ast.Attribute, ast.Name)):
            d = self.resolve(node)
            if d is not None:
                if isinstance(node, ast.Attribute):
                    self.add(d, node, "attr")
                return
            if isinstance(node, ast.Attribute):
                self.expr(node.value)
            return
        if isinstance(node, (ast.Lambda, ast.FunctionDef)):
            for child in ast.iter_child_nodes(node):
                self.expr(child)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr_context):
                continue
            self.expr(child)

    def call(self, node: ast.Call) -> None:
        func = node.func
        positional = None if any(isinstance(a, ast.Starred) for a in node.args) else len(node.args)
        keywords = [k.arg for k in node.keywords if k.arg]
        star_kwargs = any(k.arg is None for k in node.keywords)
        names = [a.id if isinstance(a, ast.Name) else "" for a in node.args]
        d = self.resolve(func)
        parts = _dotted(func)
        if d is not None:
            self.add(d, node, "call", positional=positional, keywords=keywords, star_kwargs=star_kwargs, arg_names=names)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) and \
                isinstance(func.value.func, ast.Name) and func.value.func.id == "super":
            self.super_call(node, func.attr, positional, keywords, star_kwargs, names)
        elif parts == ["getattr"] and len(node.args) >= 2 and self.resolve(node.args[0]) is not None:
            target, name = self.resolve(node.args[0]), node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value.isidentifier():
                if len(node.args) == 2:  # getattr(x, "n", default) tolerates a miss
                    self.add(f"{target}.{name.value}", node, "attr")
            else:
                self.dynamic(node, f"getattr({target}, ...)")
            for a in node.args[2:]:
                self.expr(a)
            return
        elif parts and parts[-1] in ("import_module", "__import__") and node.args:
            name = node.args[0]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                mod = name.value
                if mod and all(p.isidentifier() for p in mod.split(".")) and self.is_library_root(mod.split(".")[0]):
                    self.add(mod, node, "import")
            else:
                self.dynamic(node, f"{parts[-1]}(...)")
            self.expr(func)
        else:
            self.expr(func)
        for a in node.args:
            self.expr(a.value if isinstance(a, ast.Starred) else a)
        for k in node.keywords:
            self.expr(k.value)

    def override(self, owner: str, fn) -> None:
        """A method of a class deriving from a library class: the library may call it as its base is called."""
        if fn.name in ("__init__", "__new__", "__init_subclass__") or any(
                (_dotted(d) or ["?"])[-1] in ("staticmethod", "classmethod", "property") for d in fn.decorator_list):
            return
        base = self._library_base(owner, fn.name, 0)
        if not base:
            return
        a = fn.args
        params = [x.arg for x in getattr(a, "posonlyargs", [])] + [x.arg for x in a.args]
        accepts = [x.arg for x in a.args][1:] + [x.arg for x in a.kwonlyargs]
        self.add(f"{base}.{fn.name}", fn, "override", owner=owner, accepts=accepts, star_kwargs=a.kwarg is not None,
                 positional=None if a.vararg is not None else max(0, len(params) - 1))

    def super_call(self, node: ast.Call, attr: str, positional, keywords, star_kwargs, names) -> None:
        owner = self.cls_stack[-1] if self.cls_stack else None
        if not owner:
            return
        base = self._library_base(owner, attr, 0)
        if base:
            self.add(f"{base}.{attr}", node, "super", positional=positional, keywords=keywords,
                     star_kwargs=star_kwargs, bound=True, owner=owner, arg_names=names)

    def _library_base(self, cls: str, attr: str, depth: int) -> Optional[str]:
        """The library class `super().attr` in `cls` reaches, following classes of this file; None if unknown."""
        if depth > 8 or cls not in self.classes:
            return None
        for base in self.classes[cls][0]:
            if isinstance(base, str):
                return base
            if isinstance(base, tuple):
                name = base[1]
                if name in self.classes:
                    if attr in self.classes[name][1]:
                        return None  # the checkout's own class defines it
                    found = self._library_base(name, attr, depth + 1)
                    if found:
                        return found
                    continue
            return None  # a base from elsewhere: its methods are unknown
        return None


_VERSION_TEST = re.compile(r"version|available|hasattr|TYPE_CHECKING|\bis_\w+|getattr|importlib|find_spec")


def _if_guard(test: ast.expr, line: str) -> str:
    """Why an `if` makes its branches conditional on the installed libraries: a TYPE_CHECKING block, or a test of
    versions or availability. Other tests (`if args.deepspeed:`) guard nothing: the branch is the program."""
    d = _dotted(test)
    if d and d[-1] == "TYPE_CHECKING":
        return "TYPE_CHECKING"
    segment = ast.unparse(test) if hasattr(ast, "unparse") else line
    return "if " + segment[:80] if _VERSION_TEST.search(segment) else ""


def _assigned_names(body: List[ast.stmt]) -> Set[str]:
    """Names a function body binds (so they are local there), not looking into nested functions or classes."""
    out: Set[str] = set()
    stack: List[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue  # imports are bound in order by the visitor
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        if isinstance(node, ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out
