"""moe-env probe: runs INSIDE the target interpreter and prints what it finds as JSON.

Started as `python -I -S target.py [--stdin] [SYMBOL ...]` (see target_site_paths) (stdin: {"symbols": [...], "extra_paths": [...]}).
It must stay ONE stdlib-only entry point that parses and runs on Python 3.8 to 3.14 (elf.py and linkage.py
beside it are loaded by path, under the same rules), and it never imports or dlopens the packages it
inspects: a broken torch or a deepspeed whose import hangs must not stop the probe.
It reads files only:

- distributions: every *.dist-info / *.egg-info on sys.path (METADATA / PKG-INFO headers, RECORD);
- torch: torch/version.py (ast, literals only); cuDNN from the installed nvidia-cudnn-cu* distribution
  (the library torch loads at run time) or, for builds that bundle it, torch/lib/libcudnn.so.X[.Y.Z];
  the C++11 ABI from share/cmake/Torch/TorchConfig.cmake (`-D_GLIBCXX_USE_CXX11_ABI=N`: present in
  the torch 2.1.2 wheel, gone from 2.13.0) or, when that line is absent, from how libc10.so mangles
  c10::Error's std::string parameter (`Ss` old ABI, `NSt7__cxx11...` new ABI);
- deepspeed: deepspeed/git_version_info_installed.py, written by its setup.py at install time;
- extensions: presence, version, compiled files listed in RECORD;
- linkage (linkage.py + elf.py): every compiled file RECORD lists, the ELF dynamic sections of those that
  link torch (DT_NEEDED resolved as ld.so would, torch symbols looked up in torch's libraries, CUDA
  major, C++ ABI), the libstdc++/libc the process will load and the GLIBCXX_/GLIBC_ versions needed;
- API surface: module source parsed with `ast`, following re-exports, executing nothing.

Every failure becomes a line in `probe_errors`; the script itself never raises.
The output is the last stdout line, prefixed with MARKER, so noise from .pth files cannot confuse it.
"""

import ast
import json
import os
import re
import sys
import time

MARKER = "MOE_ENV_PROBE_JSON:"
PROBE_SCHEMA = 1
_SOURCE_LIMIT = 8 * 1024 * 1024  # never parse a "module" bigger than this
_NAME_RE = re.compile(r"[-_.]+")

# key -> (import names, distributions that provide it, in order of preference)
EXTENSIONS = [
    ("flash-attn", ["flash_attn"], ["flash-attn"]),
    ("transformer-engine", ["transformer_engine"],
     ["transformer-engine", "transformer-engine-torch", "transformer-engine-cu12", "transformer-engine-cu13"]),
    ("apex", ["apex"], ["apex"]),
    # three distributions ship the import name grouped_gemm: fanshiqing's git tags (`grouped_gemm`, which
    # normalises like tgale96's PyPI `grouped-gemm`) and NVIDIA's PyPI `nv-grouped-gemm`.
    ("grouped_gemm", ["grouped_gemm"], ["nv-grouped-gemm", "grouped-gemm"]),
    ("bitsandbytes", ["bitsandbytes"], ["bitsandbytes"]),
    ("megatron-core", ["megatron.core"], ["megatron-core"]),
    ("xtuner", ["xtuner"], ["xtuner"]),
    ("mmengine", ["mmengine"], ["mmengine"]),
]
_COMPILED_SUFFIXES = (".so", ".pyd", ".dylib")
# bounds on what a distribution's metadata may make the probe (and the checks after it) chew on: real
# METADATA is under 1 MB (transformers: ~80 kB, ~500 Requires-Dist); versions are under 64 characters
_METADATA_LIMIT = 8 * 1024 * 1024
_MAX_REQUIRES = 5000
_MAX_VERSION = 128


def normalize_name(name):
    return _NAME_RE.sub("-", name).lower()


_READ_LIMIT = 64 * 1024 * 1024


def _read_bytes(path, errors, what=None, limit=_READ_LIMIT):
    """A regular file's first `limit` bytes, or None: a FIFO, device or socket is refused without blocking
    (opened O_NONBLOCK, judged by fstat), so a planted pipe cannot hang the probe nor /dev/zero fill memory."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if errors is not None:
            errors.append("%s: cannot read (%s)" % (what or path, exc.strerror or exc))
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            if errors is not None:
                errors.append("%s: not a regular file" % (what or path))
            return None
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if errors is not None:
            errors.append("%s: cannot read (%s)" % (what or path, exc.strerror or exc))
        return None
    finally:
        os.close(fd)


def _read_text(path, errors, what=None, limit=None):
    """File text (utf-8, undecodable bytes replaced) or None; unreadable files are noted in `errors`."""
    data = _read_bytes(path, errors, what, limit or _READ_LIMIT)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if errors is not None:
            errors.append("%s: not valid UTF-8" % (what or path))
        return data.decode("utf-8", "replace")


# ---------------------------------------------------------------- python


def _python_version():
    """platform.python_version() ("3.13.0rc1") from sys.version_info: importing platform costs ~1.5 ms."""
    v = sys.version_info
    tag = {"alpha": "a", "beta": "b", "candidate": "rc"}.get(v.releaselevel)
    return "%d.%d.%d" % tuple(v[:3]) + ("%s%d" % (tag, v.serial) if tag else "")


def python_info(search_paths, prefix=None):
    import sysconfig

    glibc = None
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
        if value and value.startswith("glibc "):
            glibc = value.split(" ", 1)[1]
    except (AttributeError, ValueError, OSError):
        pass
    if glibc is None:
        try:
            import platform

            lib, ver = platform.libc_ver()
            if lib == "glibc" and ver:
                glibc = ver
        except Exception:  # platform.libc_ver reads the executable; never let it end the probe
            pass
    return {
        "version": _python_version(),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "prefix": prefix or sys.prefix,
        "platform": sysconfig.get_platform(),
        "machine": os.uname().machine,  # what platform.machine() returns on POSIX
        "glibc": glibc,
        "sys_path": list(search_paths),
    }


# ---------------------------------------------------------------- the target's search path, computed
#
# The probe runs with -I -S: no site.py, so no .pth `import` line, sitecustomize or usercustomize of
# the target ever runs (a hostile venv once executed code that way, and a .pth that sleeps hung the
# probe). What site.py would have put on sys.path is computed here instead, in its order: the venv
# (pyvenv.cfg beside or above the executable, as site.venv() finds it), then the user site where the
# target would enable it, then the prefixes' site-packages (site.getsitepackages, which also knows a
# distribution's own layout such as Debian's dist-packages), each followed by the path lines of its
# .pth files read as text.


def _pyvenv_cfg(executable):
    """(prefix, include-system-site-packages) of the venv `executable` belongs to, or None."""
    exe_dir = os.path.dirname(os.path.abspath(executable))
    site_prefix = os.path.dirname(exe_dir)
    for conf in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(site_prefix, "pyvenv.cfg")):
        if not os.path.isfile(conf):
            continue
        system_site = "false"
        text = _read_text(conf, None, limit=64 * 1024) or ""
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "include-system-site-packages":
                system_site = value.strip().lower()
        return site_prefix, system_site == "true"
    return None


def _pth_paths(sitedir, errors):
    """The directories a sitedir's .pth files add, as site.addpackage() would, without running `import` lines."""
    try:
        names = sorted(n for n in os.listdir(sitedir) if n.endswith(".pth") and not n.startswith("."))
    except OSError:
        return []
    out = []
    for name in names[:1000]:
        text = _read_text(os.path.join(sitedir, name), None, limit=1024 * 1024)
        if text is None:
            continue
        for line in text.splitlines()[:10000]:
            if not line or line.startswith("#") or line.startswith(("import ", "import\t")):
                continue
            path = os.path.abspath(os.path.join(sitedir, line.rstrip()))
            if os.path.exists(path):
                out.append(path)
    return out


def _user_site_enabled(venv):
    if venv is not None and not venv[1]:
        return False  # a venv without system site packages disables the user site (site.venv)
    if os.environ.get("PYTHONNOUSERSITE"):
        return False
    if hasattr(os, "getuid") and hasattr(os, "geteuid") and os.geteuid() != os.getuid():
        return False
    if hasattr(os, "getgid") and hasattr(os, "getegid") and os.getegid() != os.getgid():
        return False
    return True


def target_site_paths(errors):
    """(site directories and their .pth paths in site.py's order, the target's sys.prefix)."""
    import site

    venv = _pyvenv_cfg(sys.executable)
    prefixes = [sys.prefix, sys.exec_prefix]
    ordered = []
    if venv is not None:
        # as site.venv() does, so a patched getsitepackages (Debian's) sees a venv, not the base install
        sys.prefix = sys.exec_prefix = venv[0]
        ordered.append([venv[0]])
        prefixes = [venv[0]] + prefixes if venv[1] else []
    user = []
    if _user_site_enabled(venv):
        try:
            user = [site._get_path(site._getuserbase())]
        except Exception:  # a patched site.py without these helpers: no user site, said once
            errors.append("site.py has no user-site helpers; the user site (~/.local) was not read")
    out = []
    groups = ordered + [user] + ([prefixes] if prefixes else [])
    for i, group in enumerate(groups):
        is_user = group is user
        dirs = group if is_user else site.getsitepackages(list(dict.fromkeys(group)))
        for sitedir in dirs:
            if sitedir in out or not os.path.isdir(sitedir):
                continue
            out.append(sitedir)
            out.extend(p for p in _pth_paths(sitedir, errors) if p not in out)
    return out, (venv[0] if venv else sys.prefix)


# ---------------------------------------------------------------- distributions


def parse_headers(text):
    """RFC 822-style headers of METADATA / PKG-INFO (the part before the first blank line)."""
    headers = []  # (key, [value lines]): folded lines are joined once at the end, not per line (quadratic)
    end = text.find("\n\n")
    if end >= 0:
        text = text[:end]
    for line in text.splitlines():
        if not line:  # only a truly empty line ends the headers: "        " continues a folded License
            break
        if line[:1] in (" ", "\t") and headers:
            headers[-1][1].append(line.strip())
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        headers.append((key.strip().lower(), [value.strip()]))
    return [(key, "\n".join(values)) for key, values in headers]


def _split_info_name(entry):
    """`foo_bar-1.0.dist-info` / `foo-1.0-py3.8.egg-info` -> (name, version or None)."""
    stem = entry.rsplit(".", 1)[0]
    parts = stem.split("-")
    name = parts[0]
    version = parts[1] if len(parts) > 1 else None
    return name, version


def _egg_requires(text):
    """requires.txt of an egg-info ([extra] / [:marker] sections) as Requires-Dist lines."""
    out, extra, marker = [], None, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            extra, _, marker = section.partition(":")
            extra, marker = extra.strip() or None, marker.strip() or None
            continue
        conds = []
        if marker:
            conds.append("(%s)" % marker if extra else marker)
        if extra:
            conds.append('extra == "%s"' % extra)
        out.append(line + ("; " + " and ".join(conds) if conds else ""))
    return out


def read_distribution(location, entry, errors):
    """One .dist-info / .egg-info (directory or file) -> dict as Distribution, never raising."""
    path = os.path.join(location, entry)
    dir_name, dir_version = _split_info_name(entry)
    is_dir = os.path.isdir(path)
    if entry.endswith(".dist-info"):
        meta_path = os.path.join(path, "METADATA")
    else:
        meta_path = os.path.join(path, "PKG-INFO") if is_dir else path
    dist = {"name": normalize_name(dir_name), "version": dir_version or "", "requires": [],
            "location": location, "installer": None, "metadata_error": None, "path": path}
    text = None
    undecodable = []  # _read_text notes a failed strict decode; a U+FFFD the author wrote is valid UTF-8
    if os.path.isfile(meta_path):
        text = _read_text(meta_path, undecodable, limit=_METADATA_LIMIT)
        if text is None:
            dist["metadata_error"] = "%s unreadable" % os.path.basename(meta_path)
    else:
        dist["metadata_error"] = "%s missing" % os.path.basename(meta_path)
    if text is not None:
        if undecodable:
            dist["metadata_error"] = "%s is not valid UTF-8" % os.path.basename(meta_path)
        name = version = None
        requires = []
        for key, value in parse_headers(text):
            if key == "name" and name is None:
                name = value
            elif key == "version" and version is None:
                version = value
            elif key == "requires-dist" and len(requires) < _MAX_REQUIRES:
                requires.append(value[:1000])
        if name:
            dist["name"] = normalize_name(name)
            dist["raw_name"] = name
        if version and len(version) > _MAX_VERSION:
            dist["metadata_error"] = "%s has a Version of %d characters" % (os.path.basename(meta_path), len(version))
            version = version[:_MAX_VERSION]
        if version:
            dist["version"] = version
        if not name or not version:
            missing = " and ".join(k for k, v in (("Name", name), ("Version", version)) if not v)
            dist["metadata_error"] = dist["metadata_error"] or "%s has no %s" % (os.path.basename(meta_path), missing)
        dist["requires"] = requires
    if is_dir:
        if entry.endswith(".egg-info"):
            req = os.path.join(path, "requires.txt")
            if os.path.isfile(req):
                text = _read_text(req, errors)
                if text is not None:
                    dist["requires"] = _egg_requires(text)
        inst = os.path.join(path, "INSTALLER")
        if os.path.isfile(inst):
            value = _read_text(inst, None, limit=200)
            if value and value.strip():
                dist["installer"] = value.strip().splitlines()[0]
    if dist["metadata_error"]:
        errors.append("%s: %s" % (path, dist["metadata_error"]))
    return dist


def scan_distributions(search_paths, errors):
    """All distributions on the path, first one wins per normalised name (as importlib.metadata does)."""
    found = {}
    editable = {}
    for location in search_paths:
        try:
            entries = sorted(os.listdir(location))
        except OSError:
            continue
        for entry in entries:
            if entry.endswith((".dist-info", ".egg-info")):
                dist = read_distribution(location, entry, errors)
                if not dist["name"]:
                    continue
                first = found.get(dist["name"])
                if first is None:
                    found[dist["name"]] = dist
                elif first["location"] == location:
                    # importlib.metadata would pick one of them arbitrarily: a half-done upgrade or uninstall
                    errors.append("%s: two installs of %s (%s and %s); the first is reported, reinstall it to be sure" % (
                        location, dist["name"], os.path.basename(first["path"]), entry))
            elif entry.startswith("__editable__") and entry.endswith("_finder.py"):
                editable.update(_editable_mapping(os.path.join(location, entry), errors))
    return found, editable


def _editable_mapping(path, errors):
    """setuptools' editable finder (`__editable___pkg_finder.py`): MAPPING = {'pkg': '/src/pkg'}, read with ast."""
    text = _read_text(path, errors)
    if text is None:
        return {}
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as exc:
        errors.append("%s: cannot parse (%s)" % (path, exc))
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MAPPING" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError):
                return {}
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    return {}


def _record_files(dist, errors):
    """Paths (relative to the dist's location) listed in RECORD, or None without a RECORD."""
    path = dist.get("path") or ""
    record = os.path.join(path, "RECORD")
    if not os.path.isfile(record):
        record = os.path.join(path, "installed-files.txt")  # egg-info installed by pip
        if not os.path.isfile(record):
            return None
        text = _read_text(record, errors)
        if text is None:
            return None
        rels = []
        for line in text.splitlines():
            line = line.strip()
            if line:
                rels.append(os.path.normpath(os.path.relpath(os.path.join(path, line), dist["location"])))
        return rels
    text = _read_text(record, errors)
    if text is None:
        return None
    rels = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith('"'):
            rel = line[1:].split('",', 1)[0]
        else:
            rel = line.rsplit(",", 2)[0]
        rels.append(rel)
    return rels


def _public(dist):
    return {k: dist[k] for k in ("name", "version", "requires", "location", "installer", "metadata_error")}


# ---------------------------------------------------------------- module source index (API surface)


class SourceIndex(object):
    """Find modules' source files on a path and parse them with ast, once each, importing nothing."""

    def __init__(self, search_paths, editable=None):
        self.search_paths = [p for p in search_paths if p and os.path.isdir(p)]
        self.editable = dict(editable or {})
        self._modules = {}
        self._trees = {}
        self._sources = {}
        self._stripped = {}
        self._mentions = {}
        self._lines = {}
        self._tops = {}
        self._listings = {}

    # --- locating modules

    def _listing(self, directory):
        if directory not in self._listings:
            try:
                self._listings[directory] = set(os.listdir(directory))
            except OSError:
                self._listings[directory] = set()
        return self._listings[directory]

    def _find_in(self, directories, name):
        """The first module or package `name` in `directories`: (kind, file, dirs, root)."""
        namespace_dirs = []
        for directory in directories:
            names = self._listing(directory)
            if name in names:
                pkg = os.path.join(directory, name)
                if "__init__.py" in self._listing(pkg):
                    return ("package", os.path.join(pkg, "__init__.py"), [pkg], directory)
                if os.path.isdir(pkg):
                    namespace_dirs.append(pkg)
            if name + ".py" in names:
                return ("module", os.path.join(directory, name + ".py"), [], directory)
            for entry in names:
                if entry.startswith(name + ".") and entry.endswith(_COMPILED_SUFFIXES) and \
                        entry.split(".", 1)[0] == name:
                    return ("extension", os.path.join(directory, entry), [], directory)
        if namespace_dirs:
            return ("namespace", None, namespace_dirs, None)
        return None

    def module(self, dotted):
        """{'name', 'kind', 'file', 'dirs', 'root'} for a dotted module name, or None."""
        if dotted in self._modules:
            return self._modules[dotted]
        parts = dotted.split(".")
        if len(parts) == 1:
            found = None
            if dotted in self.editable:
                target = self.editable[dotted]
                if os.path.isfile(os.path.join(target, "__init__.py")):
                    found = ("package", os.path.join(target, "__init__.py"), [target], os.path.dirname(target))
                elif os.path.isfile(target) and target.endswith(".py"):
                    found = ("module", target, [], os.path.dirname(target))
            if found is None:
                found = self._find_in(self.search_paths, dotted)
        else:
            parent = self.module(".".join(parts[:-1]))
            found = self._find_in(parent["dirs"], parts[-1]) if parent and parent["dirs"] else None
            if found and found[3] is None and parent:
                found = (found[0], found[1], found[2], parent["root"])
        result = None
        if found:
            kind, path, dirs, root = found
            if root is None:
                root = os.path.dirname(dirs[0]) if dirs else None
                for _ in range(len(parts) - 1):
                    root = os.path.dirname(root) if root else root
            result = {"name": dotted, "kind": kind, "file": path, "dirs": dirs, "root": root}
        self._modules[dotted] = result
        return result

    def source(self, mod):
        """(bytes or None, error or None): a module's source, comments stripped, for cheap textual checks."""
        path = mod["file"]
        if path in self._sources:
            return self._sources[path]
        if mod["kind"] == "namespace" or path is None:
            result = (b"", None)
        elif mod["kind"] == "extension":
            result = (None, "compiled extension %s (no source to read)" % os.path.basename(path))
        else:
            problems = []
            data = _read_bytes(path, problems, self.rel(path), _SOURCE_LIMIT + 1)
            if data is None:
                result = (None, "cannot read %s (%s)" % (self.rel(path), (problems or ["unreadable"])[0].rsplit(": ", 1)[-1]))
            elif len(data) > _SOURCE_LIMIT:
                result = (None, "cannot read %s (larger than %d bytes)" % (self.rel(path), _SOURCE_LIMIT))
            else:
                result = (data, None)
        self._sources[path] = result
        return result

    def mentions(self, mod, name):
        """False when `name` cannot be bound in the module: it never occurs as a bare word outside comments.

        Bindings (def/class NAME, NAME =, import NAME, ... as NAME) always show the bare word, while
        `"models.x"` strings and `.models.x` paths do not; this spares parsing a 300 kB `__init__.py`
        (transformers 4.36) just to learn that `models` is the submodule.
        """
        data, _ = self.source(mod)
        if data is None:
            return True
        key = (mod["file"], name)
        if key not in self._mentions:
            if mod["file"] not in self._stripped:
                self._stripped[mod["file"]] = re.sub(r"#[^\n]*", "", data.decode("utf-8", "replace"))
            self._mentions[key] = has_word(self._stripped[mod["file"]], name)
        return self._mentions[key]

    def lines(self, mod):
        """The module's source as a list of lines (decoded, undecodable bytes replaced), or None."""
        path = mod["file"]
        if path not in self._lines:
            data, _ = self.source(mod)
            self._lines[path] = data.decode("utf-8", "replace").split("\n") if data is not None else None
        return self._lines[path]

    def tops(self, mod):
        path = mod["file"]
        if path not in self._tops:
            lines = self.lines(mod)
            self._tops[path] = _enclosing_top(lines) if lines is not None else None
        return self._tops[path]

    def tree(self, mod):
        """(ast.Module or None, error or None) for a module dict."""
        path = mod["file"]
        if path in self._trees:
            return self._trees[path]
        data, error = self.source(mod)
        if data is None:
            result = (None, error)
        elif not data:
            result = (ast.Module(body=[], type_ignores=[]), None)
        else:
            try:
                result = (ast.parse(data, filename=path), None)
            except SyntaxError as exc:
                result = (None, "syntax error in %s line %s: %s" % (self.rel(path), exc.lineno, exc.msg))
            except ValueError as exc:  # null bytes
                result = (None, "cannot parse %s (%s)" % (self.rel(path), exc))
        self._trees[path] = result
        return result

    def rel(self, path):
        """A file's path relative to the search-path entry holding it (stable across machines)."""
        if not path:
            return path
        best = None
        for root in self.search_paths + [os.path.dirname(v) for v in self.editable.values()]:
            if root and path.startswith(root.rstrip(os.sep) + os.sep):
                if best is None or len(root) > len(best):
                    best = root
        return os.path.relpath(path, best) if best else path


def _params(fn):
    a = fn.args
    names = [x.arg for x in getattr(a, "posonlyargs", [])] + [x.arg for x in a.args]
    if a.vararg is not None:
        names.append("*" + a.vararg.arg)
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg is not None:
        names.append("**" + a.kwarg.arg)
    return names


def _decorator_name(node):
    """`torch.no_grad()` -> "torch.no_grad"; "?" for anything that is not a dotted name (or a call of one)."""
    if isinstance(node, ast.Call):
        node = node.func
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return "?"
    parts.append(node.id)
    return ".".join(reversed(parts))


def _signature(fn):
    """What a call needs to be judged against `fn`: parameter kinds, defaults and decorators (which may change them)."""
    a = fn.args
    return {"posonly": [x.arg for x in getattr(a, "posonlyargs", [])], "args": [x.arg for x in a.args],
            "vararg": a.vararg.arg if a.vararg is not None else None,
            "kwonly": [x.arg for x in a.kwonlyargs],
            "kwonly_required": [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None],
            "kwarg": a.kwarg.arg if a.kwarg is not None else None,
            "defaults": len(a.defaults), "decorators": [_decorator_name(d) for d in fn.decorator_list],
            "method": False}


def _class_may_replace_init(node):
    """A decorated class (@dataclass...) or one with a metaclass may get its constructor from elsewhere."""
    if node.decorator_list or any(k.arg == "metaclass" for k in node.keywords):
        return True
    block = getattr(node, "_moe_block", None)  # a header-only node: its decorators are on the lines above
    if block is not None:
        lines, at = block[0], block[1]
        i = at - 1
        while i >= 0 and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
            i -= 1
        if i >= 0 and lines[i].lstrip().startswith("@"):
            return True
    return False


def _bindings(body, name, conditional=False):
    """Statements in `body` (recursing into if/try/with) that bind `name`: [(node, conditional)]."""
    out = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                out.append((node, conditional))
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if _target_binds(t, name):
                    out.append((node, conditional))
                    break
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            if node.value is not None and _target_binds(node.target, name):
                out.append((node, conditional))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound = alias.asname or (alias.name.split(".")[0] if isinstance(node, ast.Import) else alias.name)
                if bound == name:
                    out.append((node, conditional))
        elif isinstance(node, ast.If):
            out += _bindings(node.body, name, True) + _bindings(node.orelse, name, True)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            out += _bindings(node.body, name, conditional)
            for handler in node.handlers:
                out += _bindings(handler.body, name, True)
            out += _bindings(node.orelse, name, conditional) + _bindings(node.finalbody, name, conditional)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            out += _bindings(node.body, name, conditional)
    return out


def _target_binds(target, name):
    if isinstance(target, ast.Name):
        return target.id == name
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_target_binds(e, name) for e in target.elts)
    return False


def _pick(bindings):
    """The binding Python would most likely leave: the last unconditional one, else the first conditional one."""
    plain = [n for n, cond in bindings if not cond]
    if plain:
        return plain[-1]
    return bindings[0][0] if bindings else None


_MODULE_IMPLICIT = frozenset(["__file__", "__name__", "__doc__", "__path__", "__spec__", "__loader__", "__package__",
                              "__dict__", "__builtins__", "__cached__", "__annotations__"])
# members every class has from object and type (read from this interpreter's builtins, not the target's code)
_CLASS_IMPLICIT = frozenset(dir(object)) | frozenset(dir(type))


def _unsure(result, bindings):
    """Several bindings, none unconditional (`if new: def f(a, b) else: def f(a)`): which one runs is not
    known statically, so the signature is not given (the name exists either way)."""
    if result.get("signature") and len(bindings) > 1 and all(cond for _, cond in bindings):
        result = dict(result, signature=None)
    return result


def _star_imports(tree):
    return [n for n in tree.body if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]


def _dunder_all(tree):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError):
                return None
            if isinstance(value, (list, tuple)):
                return set(str(v) for v in value)
    return None


def _absolute(mod, level, module_name):
    """Resolve `from ..x import y` seen in module `mod` to an absolute module name."""
    if not level:
        return module_name or ""
    package = mod["name"] if mod["kind"] in ("package", "namespace") else mod["name"].rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[:len(parts) - (level - 1)] if level > 1 else parts
    if module_name:
        base = base + module_name.split(".")
    return ".".join(base)


# ---- the fast path: parse only the block that defines a name
#
# ast.parse of a whole module costs ~1 ms per 10 kB; transformers' trainer.py (235 kB), deepspeed's
# engine.py (170 kB) and the modeling files would make the probe take most of a second. When a name is
# bound exactly once, by a `def`/`class` line, and nothing else in the file could rebind it, only that
# block is parsed (a method: only the method). Anything unusual falls back to parsing the whole file.


def _indent(line):
    return len(line) - len(line.lstrip(" \t"))


def _block_end(lines, start, indent):
    """Index just past the block whose header is lines[start] (indented by `indent`)."""
    end = start + 1
    for i in range(start + 1, len(lines)):
        text = lines[i].strip()
        if not text or text.startswith("#"):
            continue
        if _indent(lines[i]) <= indent and not text.startswith((")", "]", "}")):
            break
        end = i + 1
    return end


def _parse_block(lines, start, end, indent):
    """ast node of lines[start:end] (dedented by `indent`), line numbers as in the file; None if it does not parse."""
    chunk = "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[start:end])
    try:
        tree = ast.parse(chunk)
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1:
        return None
    ast.increment_lineno(tree, start)
    return tree.body[0]


def _header_only(lines, start, indent):
    """A ClassDef from the `class X(...):` header alone (bases, no body): for classes thousands of lines long."""
    for stop in range(start + 1, min(start + 40, len(lines)) + 1):
        node = _parse_block(lines[:stop] + [" " * (indent + 4) + "pass"], start, stop + 1, indent)
        if isinstance(node, ast.ClassDef):
            return node
    return None


_HEADER = re.compile(r"(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)")
_ASSIGN = re.compile(r"^[ \t]*([\w, \t()\[\]]+?)[ \t]*(?::[^=\n]*)?=(?!=)")
_AFTER_IMPORT = re.compile(r"\bimport\b(.*)")
_IDENT = re.compile(r"(?<![.\w])(\w+)")


def has_word(text, name):
    """`name` occurs in `text` as a bare word: not part of a longer name, a dotted path, or a quoted string."""
    at = text.find(name)
    while at >= 0:
        before = text[at - 1] if at > 0 else " "
        after = text[at + len(name)] if at + len(name) < len(text) else " "
        if not (before.isalnum() or before in "_.'\"") and not (after.isalnum() or after in "_'\""):
            return True
        at = text.find(name, at + 1)
    return False


def _may_rebind(line, name):
    """Whether a line that mentions `name` could bind it. Only statement shapes count (an assignment, a line
    that starts with import/from/for/with/global/except...), so docstring prose such as "for the model" or
    ">>> from transformers import X" does not force a full parse."""
    m = _ASSIGN.match(line)
    if m and name in _IDENT.findall(m.group(1)):
        return True
    if m and re.search(r"=[ \t]*" + re.escape(name) + r"[ \t]*=(?!=)", line):
        return True  # a chained assignment: `__version__ = version = "1.0"` binds both
    stripped = line.lstrip(" \t")
    if stripped.startswith(("import ", "from ")):
        m = _AFTER_IMPORT.search(stripped)
        if m and name in _IDENT.findall(m.group(1)):
            return True
    if stripped.startswith(("for ", "with ", "async ", "global ", "nonlocal ", "except ")):
        return has_word(stripped, name)
    return (name + " :=") in line or (name + ":=") in line


_AMBIGUOUS = -1


def _enclosing_top(lines):
    """For each line, the first word of the column-0 statement it belongs to ("def", "class", "@", "if"...)."""
    out, current = [], ""
    for line in lines:
        if line[:1] not in ("", " ", "\t", "#", ")", "]", "}"):
            current = line.split(None, 1)[0] if line.split() else ""
            if current.startswith("@"):
                current = "@"
        out.append(current)
    return out


def _quick_find(lines, name, indent, lo=0, hi=None, tops=None):
    """Line index of the one statement at exactly `indent` in lines[lo:hi] that binds `name` (a def/class
    header, or at module level a one-line import); None when no line there binds `name` at all;
    _AMBIGUOUS when something else might bind it too (the caller then parses properly)."""
    hi = len(lines) if hi is None else hi
    found = None
    for i in range(lo, hi):
        line = lines[i]
        if name not in line or not has_word(line, name):
            continue
        stripped = line.lstrip(" \t")
        if stripped.startswith("#"):
            continue
        level = _indent(line)
        m = _HEADER.match(stripped)
        if m and m.group(1) == name:
            if level > indent > 0:
                continue  # a nested function's or class's own member, not the class attribute
            if level != indent or found is not None:
                return _AMBIGUOUS
            found = i
            continue
        if indent > 0 and level > indent and not _import_list_line(stripped, name):
            continue  # inside a method: a local variable, not the class attribute
        if indent == 0 and level > 0 and tops is not None and tops[i] in ("def", "class", "async", "@"):
            continue  # inside a module-level function or class: cannot bind a module attribute (global aside)
        if indent == 0 and level == 0 and stripped.startswith(("from ", "import ")) and \
                not stripped.rstrip().endswith(("(", "\\")) and _may_rebind(line, name):
            if found is not None:
                return _AMBIGUOUS
            found = i  # a one-line import: parsed on its own by the caller
            continue
        if _may_rebind(line, name) or _import_list_line(stripped, name) or stripped.startswith("global "):
            return _AMBIGUOUS
    return found


def _import_list_line(stripped, name):
    """Whether a line looks like part of `from x import (a, NAME as b,` (items, commas, parentheses only)."""
    items = [x.strip() for x in stripped.strip("(),\\ \t").split(",")]
    return any(x.split()[:1] == [name] for x in items) and all(
        re.match(r"^\w+(?:[ \t]+as[ \t]+\w+)?$", x) for x in items if x)


class _Resolver(object):
    def __init__(self, index):
        self.index = index
        self.fence = None  # while resolving base classes: the only top-level package imports may lead into
        self.open_bases = False  # set by member(): a base class could not be followed, so a miss is not certain

    def _result(self, kind, mod, node=None, params=None, error=None, found=True, signature=None):
        line = getattr(node, "lineno", None) if node is not None else (1 if mod and mod.get("file") else None)
        if signature is None and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            signature = _signature(node)
        return {"found": found, "kind": kind, "params": params, "file": self.index.rel(mod["file"]) if mod else None,
                "line": line, "error": error, "_mod": mod, "_node": node, "signature": signature}

    def attr(self, mod, name, depth=0, seen=None):
        """Look up `name` in module `mod` the way `from mod import name` would, statically."""
        seen = seen if seen is not None else set()
        key = (mod["name"], name)
        if depth > 25 or key in seen:
            return self._submodule(mod, name) or self._missing(mod, name, "re-export cycle")
        seen.add(key)
        if not self.index.mentions(mod, name):
            sub = self._submodule(mod, name)
            if sub is not None:
                return sub
            data, _ = self.index.source(mod)
            if data is not None and not re.search(rb"import\s*\*|import\s*\(\s*\*", data):
                lazy = re.search(rb"def\s+__getattr__\s*\(", data) is not None
                return self._missing(mod, name, "module defines __getattr__ (lazy names cannot be read statically)"
                                     if lazy else None)
        quick = self._quick(mod, name, depth, seen)
        if quick is not None:
            return quick
        tree, error = self.index.tree(mod)
        if tree is None:
            sub = self._submodule(mod, name)
            return sub or {"found": False, "kind": None, "params": None, "file": self.index.rel(mod["file"]),
                           "line": None, "error": error}
        bindings = _bindings(tree.body, name)
        node = _pick(bindings)
        if node is not None:
            return _unsure(self._binding(mod, node, name, depth, seen), bindings)
        sub = self._submodule(mod, name)
        if sub is not None:
            return sub
        for star in _star_imports(tree):
            target_name = _absolute(mod, star.level, star.module)
            target = self.index.module(target_name) if target_name else None
            if target is None:
                continue
            t_tree, _ = self.index.tree(target)
            exported = _dunder_all(t_tree) if t_tree is not None else None
            if exported is not None and name not in exported:
                continue
            if exported is None and name.startswith("_"):
                continue
            r = self.attr(target, name, depth + 1, seen)
            if r["found"]:
                return r
        lazy = any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)
        return self._missing(mod, name, "module defines __getattr__ (lazy names cannot be read statically)" if lazy else None)

    def _quick(self, mod, name, depth=0, seen=None):
        """The result for a module-level def/class found by the fast path, or None to parse the whole file."""
        if mod["kind"] not in ("module", "package") or mod["file"] in self.index._trees:
            return None
        lines = self.index.lines(mod)
        if not lines:
            return None
        at = _quick_find(lines, name, 0, tops=self.index.tops(mod))
        if at == _AMBIGUOUS:
            return None
        if at is None:  # nothing binds it here: a submodule, a star import, or missing
            sub = self._submodule(mod, name)
            if sub is not None:
                return sub
            data, _ = self.index.source(mod)
            if re.search(rb"import\s*\*|import\s*\(\s*\*|def\s+__getattr__", data or b""):
                return None
            return self._missing(mod, name)
        if lines[at].startswith(("from ", "import ")):
            node = _parse_block(lines, at, at + 1, 0)
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                return None
            return self._binding(mod, node, name, depth, seen if seen is not None else set())
        if lines[at].lstrip().startswith("class"):
            node = _header_only(lines, at, 0)
            if node is None:
                return None
            node._moe_block = (lines, at, _block_end(lines, at, 0))
            return self._binding(mod, node, name, depth, seen if seen is not None else set())
        node = _parse_block(lines, at, _block_end(lines, at, 0), 0)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        return self._result("function", mod, node, params=_params(node))

    def _quick_member(self, mod, cls, name):
        """`name` in a class known only by its header: find the method in the class's lines."""
        lines, start, end = cls._moe_block
        body = None
        for i in range(start + 1, end):
            text = lines[i].strip()
            if text and not text.startswith("#") and _indent(lines[i]) > 0:
                body = _indent(lines[i])
                break
        if body is None:
            return None
        at = _quick_find(lines, name, body, start + 1, end)
        if at is None:
            return False  # certainly not in the class body
        if at == _AMBIGUOUS or lines[at].lstrip().startswith("class"):
            return None
        node = _parse_block(lines, at, _block_end(lines, at, body), body)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        return self._result("function", mod, node, params=_params(node))

    def _full_class(self, mod, cls):
        """The complete ClassDef for a header-only node, from the (cached) parse of the whole file."""
        tree, error = self.index.tree(mod)
        if tree is not None:
            for n, _ in _bindings(tree.body, cls.name):
                if isinstance(n, ast.ClassDef) and n.lineno == cls.lineno:
                    return n, None
            return None, None
        return None, error

    def _missing(self, mod, name, why=None):
        if name in _MODULE_IMPLICIT:
            return self._result("assignment", mod)
        if mod["kind"] in ("package", "namespace"):
            msg = "no module %s.%s, and %s does not define %s" % (
                mod["name"], name, self.index.rel(mod["file"]) or "the namespace package", name)
        else:
            msg = "%s (module %s) does not define %s" % (self.index.rel(mod["file"]), mod["name"], name)
        return {"found": False, "kind": None, "params": None, "file": self.index.rel(mod["file"]), "line": None,
                "error": msg + (" (%s)" % why if why else ""), "undecided": self._dynamic(mod, name)}

    def _names_of(self, mod, expr, name, depth):
        """Why `dir(expr)` in `mod` may yield `name`; None when expr is a readable module that never mentions it."""
        parts = [p for p in expr.split(".") if p]
        if not parts or depth > 10:
            return "module writes its namespace from dir(%s)" % expr
        try:
            r = self.attr(mod, parts[0], depth + 1)
            for part in parts[1:]:
                if not r.get("found"):
                    break
                r = self.step(r, part, depth + 1)
        except RecursionError:
            r = {}
        target = r.get("_mod") if r.get("found") and r.get("kind") == "module" else None
        if target is None or self.index.mentions(target, name):
            return "module writes its namespace from dir(%s)" % expr
        return None

    def _dynamic(self, mod, name, depth=0):
        """Why `name`, missing from `mod`'s source, may still exist at run time; None when its absence is certain.

        Name-agnostic machinery (a star import of a module without readable source, globals().update, loops
        over dir()) may make any name. Name-specific machinery (a module __getattr__, transformers'
        _LazyModule in sys.modules) needs the name written somewhere in the file, as a word or a quoted
        string: where it is not, the name is certainly absent."""
        data, _ = self.index.source(mod)
        if data is None:
            return "no readable source"
        if re.search(rb"globals\(\)\.update|__dict__\.update|setattr\(\s*sys\.modules", data):
            return "module writes its namespace dynamically"
        for source in set(re.findall(rb"in\s+dir\(\s*([\w.]*)\s*\)", data)):
            # `for name in dir(dummy_pt_objects)` (transformers' lazy __init__): the names of another module,
            # which can only give `name` if that module's source has it
            why = self._names_of(mod, source.decode("ascii", "replace"), name, depth)
            if why:
                return why
        if re.search(rb"def\s+__getattr__\s*\(|sys\.modules\[|globals\(\)\[", data):
            word = re.escape(name.encode("ascii", "replace"))
            if re.search(rb"[\"']" + word + rb"[\"']", data) or has_word(data.decode("utf-8", "replace"), name):
                return "module makes names at run time (__getattr__ or a lazy module)"
        if depth > 10:
            return "star imports nested too deeply"
        tree, _ = self.index.tree(mod)
        if tree is None:
            return "module source cannot be parsed"
        for star in _star_imports(tree):
            target_name = _absolute(mod, star.level, star.module)
            target = self.index.module(target_name) if target_name else None
            if target is None or target["kind"] in ("extension", "namespace"):
                return "star import from %s, which has no readable source" % (target_name or "?")
            if target["name"] != mod["name"]:
                why = self._dynamic(target, name, depth + 1)
                if why:
                    return "star import from %s: %s" % (target_name, why)
        return None

    def _implicit(self, mod, name):
        """Attributes every module has (__file__, __name__...): not written in its source, always there."""
        if name in _MODULE_IMPLICIT:
            return self._result("assignment", mod)
        return None

    def _submodule(self, mod, name):
        if mod["kind"] not in ("package", "namespace"):
            return None
        sub = self.index.module(mod["name"] + "." + name)
        return self._result("module", sub) if sub else None

    def _binding(self, mod, node, name, depth, seen):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return self._result("function", mod, node, params=_params(node))
        if isinstance(node, ast.ClassDef):
            saved = self.open_bases
            init = self.member(mod, node, "__init__", depth + 1)
            self.open_bases = saved
            params = init["params"] if init and init.get("found") and init.get("kind") == "function" else None
            signature = None
            if params is not None and init.get("signature") and not _class_may_replace_init(node):
                signature = dict(init["signature"], method=True)
            return self._result("class", mod, node, params=params, signature=signature)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname == name:
                    wanted = alias.name
                elif alias.asname is None and alias.name.split(".")[0] == name:
                    wanted = name
                else:
                    continue
                if self._fenced(wanted):
                    return self._result("import", mod, node, error="imported from %s" % wanted)
                target = self.index.module(wanted)
                if target is not None:
                    return self._result("module", target)
                return self._result("import", mod, node, error="imports %s, which is not installed here" % alias.name)
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) != name:
                    continue
                source = _absolute(mod, node.level, node.module)
                if source and self._fenced(source):
                    return self._result("import", mod, node, error="imported from %s" % source)
                target = self.index.module(source) if source else None
                if target is None:
                    return self._result("import", mod, node,
                                        error="re-exported from %s, which is not installed here" % (source or "?"))
                if target["name"] == mod["name"]:  # `from . import x` inside x's parent package
                    sub = self._submodule(target, alias.name)
                    return sub or self._missing(mod, name)
                r = self.attr(target, alias.name, depth + 1, seen)
                if not r["found"] and r.get("error"):
                    r = dict(r)
                    r["error"] = "%s:%s re-exports %s from %s, but %s" % (
                        self.index.rel(mod["file"]), node.lineno, alias.name, source, r["error"])
                return r
        return self._result("assignment", mod, node)

    def _fenced(self, module_name):
        return self.fence is not None and module_name.split(".")[0] != self.fence

    def member(self, mod, cls, name, depth=0):
        """`name` defined in class `cls` (from module `mod`) or, failing that, in its bases."""
        if depth > 25:
            return None
        if getattr(cls, "_moe_block", None) is not None:
            quick = self._quick_member(mod, cls, name)
            if quick:
                return quick
            if quick is False:
                body = []  # nothing in the class body binds it: only the bases can have it
            else:
                full, error = self._full_class(mod, cls)
                if full is None and error:
                    return {"found": False, "kind": None, "params": None, "file": self.index.rel(mod["file"]),
                            "line": None, "error": error}
                body = full.body if full is not None else []
        else:
            body = cls.body
        bindings = _bindings(body, name)
        node = _pick(bindings)
        if node is not None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return _unsure(self._result("function", mod, node, params=_params(node)), bindings)
            if isinstance(node, ast.ClassDef):
                return self._result("class", mod, node)
            return self._result("assignment", mod, node)
        unfollowed = False
        for base in cls.bases:
            outer = self.fence
            # bases are followed inside the class's own package only: torch.nn.Module's __init__ says nothing
            # about the class, and reading torch's sources would cost more than the whole probe
            self.fence = mod["name"].split(".")[0]
            try:
                resolved = self.expr(mod, base, depth + 1)
            finally:
                self.fence = outer
            if resolved and resolved.get("found") and resolved["kind"] == "class" and resolved.get("_node") is not None:
                r = self.member(resolved["_mod"], resolved["_node"], name, depth + 1)
                if r is not None and r.get("found"):
                    if unfollowed and r.get("signature"):
                        # an earlier base that was not read may define it first (MRO): its signature is unsure
                        r = dict(r, signature=None)
                    return r
            elif not (isinstance(base, ast.Name) and base.id == "object"):
                self.open_bases = True
                unfollowed = True
        return None

    def expr(self, mod, node, depth):
        """A base-class expression (`Base`, `nn.Module`) resolved to a result, or None."""
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        chain.append(node.id)
        chain.reverse()
        r = self.attr(mod, chain[0], depth)
        for part in chain[1:]:
            if not r or not r.get("found"):
                return None
            r = self.step(r, part, depth + 1)
        return r

    def step(self, current, part, depth=0):
        kind = current.get("kind")
        if kind == "module":
            return self.attr(current["_mod"], part, depth)
        if kind == "class" and current.get("_node") is not None:
            self.open_bases = False
            r = self.member(current["_mod"], current["_node"], part, depth)
            if r is not None:
                if r.get("found") and r.get("kind") == "function" and r.get("signature"):
                    r = dict(r, signature=dict(r["signature"], method=True))
                return r
            name = current["_node"].name
            if part in _CLASS_IMPLICIT and not self.open_bases:  # every base read: object/type supply it
                return {"found": True, "kind": "function", "params": None, "file": current["file"],
                        "line": current["line"], "error": None, "signature": None}
            return {"found": False, "kind": None, "params": None, "file": current["file"], "line": current["line"],
                    "error": "class %s (%s:%s) has no %s" % (name, current["file"], current["line"], part),
                    "undecided": "class %s has base classes the static reader does not follow" % name
                    if self.open_bases else None}
        what = {"function": "a function", "assignment": "a variable", "import": "an import"}.get(kind, kind)
        return {"found": False, "kind": None, "params": None, "file": current.get("file"), "line": current.get("line"),
                "error": "%s is %s (%s:%s); it has no attribute %s" % (
                    current.get("_name", "it"), what, current.get("file"), current.get("line"), part),
                "undecided": "attributes of %s are not read statically" % what}


def _public_symbol(symbol, r):
    found = bool(r.get("found"))
    return {"symbol": symbol, "found": found, "kind": r.get("kind") if found else None,
            "params": r.get("params"), "file": r.get("file"), "line": r.get("line"), "error": r.get("error"),
            "signature": r.get("signature") if found else None,
            "undecided": None if found else (r.get("undecided") or _undecided_error(r.get("error")))}


def _undecided_error(error):
    """Errors that mean "could not read", not "is not there" (unreadable or unparsable source)."""
    error = error or ""
    for words in ("syntax error", "cannot read", "cannot parse", "compiled extension", "too deeply nested",
                  "re-export cycle", "Error: "):
        if words in error:
            return error
    return None


def lookup_symbol(index, dotted):
    """Resolve a dotted symbol against a SourceIndex; the dict has ApiSymbol's keys."""
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts or not all(p.isidentifier() for p in parts):
        return _public_symbol(dotted, {"found": False, "error": "not a dotted Python name"})
    resolver = _Resolver(index)
    top = index.module(parts[0])
    if top is None:
        return _public_symbol(dotted, {"found": False, "error": "no module %s on the path" % parts[0]})
    current = resolver._result("module", top)
    current["_name"] = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        current = resolver.step(current, part)
        current["_name"] = ".".join(parts[:i + 1])
        if not current.get("found"):
            break
    return _public_symbol(dotted, current)


def find_symbol(search_paths, dotted):
    """Whether `dotted` (e.g. "deepspeed.moe.layer.MoE.__init__") exists in the source under `search_paths`.

    Returns a dict with ApiSymbol's keys: symbol, found, kind, params, file (relative to its search
    path), line, error. Used by the probe and by scanners of unpacked sdists.
    """
    try:
        return lookup_symbol(SourceIndex(list(search_paths)), dotted)
    except RecursionError:
        return _public_symbol(dotted, {"found": False, "error": "source too deeply nested to read"})


# ---------------------------------------------------------------- torch


def _literal_assignments(path, errors, what):
    """Top-level `NAME = literal` / `NAME: T = literal` of a file, read with ast; None when unreadable."""
    text = _read_text(path, errors, what)
    if text is None:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as exc:
        errors.append("%s: syntax error (%s)" % (what, exc))
        return None
    values = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if value is None:
            continue
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    values[t.id] = ast.literal_eval(value)
                except (ValueError, SyntaxError, TypeError):
                    pass
    return values


def _str_or_none(value):
    return value if isinstance(value, str) and value else None


def torch_build(index, dists, errors):
    mod = index.module("torch")
    dist = dists.get("torch")
    if mod is None and dist is None:
        return None
    pkg_dir = mod["dirs"][0] if mod and mod["dirs"] else None
    build = {"version": dist["version"] if dist else "", "local": None, "cuda": None, "cudnn": None, "hip": None,
             "git_version": None, "cxx11_abi": None, "debug": None, "location": pkg_dir or (dist or {}).get("location", ""),
             "cudnn_source": None, "cxx11_abi_source": None, "nccl": None, "nccl_source": None}
    if pkg_dir is None:
        errors.append("torch: distribution %s is installed but the torch package is missing" % build["version"])
        return build
    values = _literal_assignments(os.path.join(pkg_dir, "version.py"), errors, "torch/version.py")
    if values is None:
        errors.append("torch: no readable torch/version.py; build facts unknown")
    else:
        build["version"] = _str_or_none(values.get("__version__")) or build["version"]
        build["cuda"] = _str_or_none(values.get("cuda"))
        build["hip"] = _str_or_none(values.get("hip"))
        build["git_version"] = _str_or_none(values.get("git_version"))
        if isinstance(values.get("debug"), bool):
            build["debug"] = values["debug"]
    if "+" in build["version"]:
        build["local"] = build["version"].split("+", 1)[1]
    _torch_cudnn(build, pkg_dir, dists)
    _torch_nccl(build, pkg_dir, dists)
    _torch_abi(build, pkg_dir, errors)
    return build


def _cuda_library(build, pkg_dir, dists, key, wheel_prefix, lib):
    """A CUDA library torch loads (`key`: cudnn, nccl): the nvidia-*-cu* wheel holding it, else the
    newest lib<name>.so.X[.Y.Z] bundled in torch/lib (file names only). True when one was found."""
    for name in sorted(dists):
        if name.startswith(wheel_prefix):
            build[key] = dists[name]["version"]
            build[key + "_source"] = "distribution %s" % name
            return True
    try:
        entries = sorted(os.listdir(os.path.join(pkg_dir, "lib")))
    except OSError:
        entries = []
    best = None
    for entry in entries:
        m = re.match(r"%s\.so\.(\d+(?:\.\d+)*)$" % re.escape(lib), entry)
        if m and (best is None or len(m.group(1)) > len(best)):
            best = m.group(1)
    if best:
        build[key] = best
        build[key + "_source"] = "torch/lib/%s.so.%s" % (lib, best)
        return True
    return False


def _torch_cudnn(build, pkg_dir, dists):
    """cuDNN: the nvidia-cudnn-cu* wheel torch loads, else a libcudnn bundled in torch/lib, else torch's pin."""
    if not build["cuda"] or _cuda_library(build, pkg_dir, dists, "cudnn", "nvidia-cudnn-cu", "libcudnn"):
        return
    for req in (dists.get("torch") or {}).get("requires") or []:
        # the pin in torch's own metadata (`nvidia-cudnn-cu12 (==8.9.2.26) ; ...` in 2.1.2), when it is not installed
        m = re.match(r"\s*(nvidia[-_]cudnn[-_]cu\d+)\s*\(?\s*==\s*([\w.]+)", req)
        if m:
            build["cudnn"] = m.group(2)
            build["cudnn_source"] = "torch's Requires-Dist (%s is not installed)" % normalize_name(m.group(1))
            return


def _torch_nccl(build, pkg_dir, dists):
    """NCCL: the nvidia-nccl-cu* wheel torch loads, else a libnccl.so.X[.Y.Z] bundled in torch/lib."""
    if build["cuda"]:
        _cuda_library(build, pkg_dir, dists, "nccl", "nvidia-nccl-cu", "libnccl")


def _torch_abi(build, pkg_dir, errors):
    cmake = os.path.join(pkg_dir, "share", "cmake", "Torch", "TorchConfig.cmake")
    if os.path.isfile(cmake):
        text = _read_text(cmake, errors, "torch/share/cmake/Torch/TorchConfig.cmake") or ""
        m = re.search(r"-D_GLIBCXX_USE_CXX11_ABI=([01])", text)
        if m:
            build["cxx11_abi"] = m.group(1) == "1"
            build["cxx11_abi_source"] = "torch/share/cmake/Torch/TorchConfig.cmake"
            return
    lib = os.path.join(pkg_dir, "lib", "libc10.so")
    if os.path.isfile(lib):
        try:
            with open(lib, "rb") as fh:
                data = fh.read(64 * 1024 * 1024)
        except OSError as exc:
            errors.append("torch/lib/libc10.so: cannot read (%s)" % (exc.strerror or exc))
            return
        # c10::Error::Error(c10::SourceLocation, std::string): `...SourceLocationESs` with the old ABI,
        # `...SourceLocationENSt7__cxx11...` with the new one. (A bare "__cxx11" search is not enough:
        # torch 2.1.2's pre-cxx11 libc10.so holds that string 439 times.)
        at = data.find(b"_ZN3c105ErrorC2ENS_14SourceLocationE")
        if at < 0:
            return
        tail = data[at + len(b"_ZN3c105ErrorC2ENS_14SourceLocationE"):][:16]
        if tail.startswith(b"NSt7__cxx11"):
            build["cxx11_abi"] = True
        elif tail.startswith(b"Ss"):
            build["cxx11_abi"] = False
        else:
            return
        build["cxx11_abi_source"] = "torch/lib/libc10.so symbols"


# ---------------------------------------------------------------- deepspeed


def deepspeed_build(index, dists, errors):
    mod = index.module("deepspeed")
    dist = dists.get("deepspeed")
    if mod is None and dist is None:
        return None
    build = {"version": dist["version"] if dist else "", "git_hash": None, "built_torch": None, "built_cuda": None,
             "built_nccl": None, "built_hip": None, "installed_ops": {}, "compatible_ops": {}, "accelerator": None,
             "build_info_found": False, "build_info_error": None}
    if mod is None or not mod["dirs"]:
        build["build_info_error"] = "the deepspeed package is missing"
        errors.append("deepspeed: distribution %s is installed but the deepspeed package is missing" % build["version"])
        return build
    path = os.path.join(mod["dirs"][0], "git_version_info_installed.py")
    if not os.path.isfile(path):
        build["build_info_error"] = "deepspeed/git_version_info_installed.py missing (not installed by its setup.py?)"
        return build
    local_errors = []
    values = _literal_assignments(path, local_errors, "deepspeed/git_version_info_installed.py")
    if values is None:
        build["build_info_error"] = "; ".join(local_errors) or "unreadable"
        errors.extend(local_errors)
        return build
    build["build_info_found"] = True
    if not build["version"]:
        build["version"] = _str_or_none(values.get("version")) or ""
    build["git_hash"] = _str_or_none(values.get("git_hash"))
    for key in ("installed_ops", "compatible_ops"):
        ops = values.get(key)
        if isinstance(ops, dict):
            build[key] = {str(k): bool(v) for k, v in ops.items()}
    build["accelerator"] = _str_or_none(values.get("accelerator_name"))
    info = values.get("torch_info")
    if isinstance(info, dict):
        for key, field in (("version", "built_torch"), ("cuda_version", "built_cuda"), ("nccl_version", "built_nccl"),
                           ("hip_version", "built_hip")):
            if info.get(key) is not None:
                build[field] = str(info[key])
    return build


# ---------------------------------------------------------------- extensions


def _compiled_in_dir(directory, location, limit=5000):
    """Compiled files under a package directory (bounded walk, used only when there is no RECORD)."""
    out, seen = [], 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            seen += 1
            if f.endswith(_COMPILED_SUFFIXES) or ".so." in f:
                out.append(os.path.relpath(os.path.join(root, f), location))
        if seen > limit:
            break
    return out


def extensions(index, dists, errors):
    out = {}
    for key, import_names, dist_names in EXTENSIONS:
        providers = [dists[normalize_name(n)] for n in dist_names if normalize_name(n) in dists]
        module = None
        import_name = None
        for name in import_names:
            module = index.module(name)
            if module is not None:
                import_name = name
                break
        ext = {"key": key, "present": bool(providers) or module is not None,
               "distribution": None, "version": None, "import_name": import_name, "compiled_files": [],
               "providers": [d.get("raw_name") or d["name"] for d in providers], "origin": None}
        if providers:
            main = providers[0]
            ext["distribution"] = main.get("raw_name") or main["name"]
            ext["version"] = main["version"]
            ext["origin"] = _origin(main, errors)
        compiled = []
        for d in providers:
            files = _record_files(d, errors)
            if files is None:
                continue
            for rel in files:
                base = os.path.basename(rel)
                if (base.endswith(_COMPILED_SUFFIXES) or ".so." in base) and \
                        os.path.exists(os.path.join(d["location"], rel)):
                    compiled.append(rel)
        if not compiled and module is not None and module["dirs"] and not any(
                _record_files(d, None) is not None for d in providers):
            compiled = _compiled_in_dir(module["dirs"][0], module["root"] or os.path.dirname(module["dirs"][0]))
        ext["compiled_files"] = sorted(set(compiled))
        out[key] = ext
    return out


def _origin(dist, errors):
    """Where a distribution came from: direct_url.json's URL (git installs), else its Home-page."""
    path = dist.get("path") or ""
    direct = os.path.join(path, "direct_url.json")
    if os.path.isfile(direct):
        text = _read_text(direct, errors)
        try:
            data = json.loads(text or "")
            url = data.get("url")
            vcs = data.get("vcs_info") or {}
            if url:
                return url + ("@" + vcs["commit_id"] if vcs.get("commit_id") else "")
        except (ValueError, AttributeError):
            errors.append("%s: direct_url.json is not valid JSON" % path)
    meta = os.path.join(path, "METADATA" if path.endswith(".dist-info") else "PKG-INFO")
    text = _read_text(meta, None) if os.path.isfile(meta) else None
    if text:
        for key, value in parse_headers(text):
            if key in ("home-page", "project-url") and value and value != "UNKNOWN":
                return value.split(",", 1)[-1].strip()
    return None


# ---------------------------------------------------------------- compiled files (elf.py, linkage.py)


def _sibling(name):
    """A stdlib-only helper beside this file, loaded by path (the probe runs with -I: no package, no sys.path)."""
    import importlib.machinery

    module = type(sys)("moe_env_probe_" + name)
    module.__file__ = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    importlib.machinery.SourceFileLoader(module.__name__, module.__file__).exec_module(module)
    return module


def linkage(dists, torch, errors):
    """Compiled files judged as the dynamic linker would load them, read from ELF, never loaded."""
    return _sibling("linkage").probe_linkage(_sibling("elf"), dists, torch, _record_files, _read_text, errors)


# ---------------------------------------------------------------- main


def import_names(dists, editable, errors):
    """{top-level import name: distribution} from top_level.txt, else RECORD (wheels built without setuptools)."""
    out = {}
    for name in sorted(dists):
        dist = dists[name]
        tops = None
        path = dist.get("path") or ""
        top_file = os.path.join(path, "top_level.txt")
        if os.path.isfile(top_file):
            text = _read_text(top_file, errors, limit=100000)
            if text is not None:
                tops = [t.strip().split("/")[0] for t in text.splitlines() if t.strip()]
        if tops is None:
            rels = _record_files(dist, errors) or []
            tops = []
            for rel in rels:
                first = rel.replace("\\", "/").split("/", 1)[0]
                if not first or first.startswith(".") or first.endswith((".dist-info", ".egg-info", ".data", ".pth")) \
                        or first in ("__pycache__", "..", "bin"):
                    continue
                if "/" not in rel.replace("\\", "/"):
                    if not first.endswith((".py",) + _COMPILED_SUFFIXES):
                        continue
                    first = first.split(".", 1)[0]
                if first.isidentifier() and first not in tops:
                    tops.append(first)
        for top in tops:
            if top.isidentifier():
                out.setdefault(top, name)
    for top in editable:
        out.setdefault(top, "")
    return out


def _wanted(symbol, libraries, names):
    root = symbol.split(".", 1)[0]
    return root in names or any(symbol == lib or symbol.startswith(lib + ".") for lib in libraries)


def _lookup_all(index, symbols, api, errors):
    for symbol in symbols:
        if symbol in api:
            continue
        try:
            api[symbol] = lookup_symbol(index, symbol)
        except RecursionError:
            api[symbol] = _public_symbol(symbol, {"found": False, "error": "source too deeply nested to read"})
        except Exception as exc:
            api[symbol] = _public_symbol(symbol, {"found": False, "error": "%s: %s" % (type(exc).__name__, exc)})
        err = api[symbol].get("error") or ""
        if err.startswith(("syntax error", "cannot read")) or " but syntax error" in err or " but cannot read" in err:
            errors.append("%s: %s" % (symbol, err))


def probe(symbols=(), extra_paths=(), code=None):
    state = probe_static(extra_paths)
    return probe_api(state, symbols, code)


def probe_static(extra_paths=()):
    """Everything that needs no request: run while the host side is still loading (see main)."""
    started = time.time()
    errors = []
    search_paths = []
    site_paths, prefix = (target_site_paths(errors) if sys.flags.no_site else ([], sys.prefix))
    for p in list(extra_paths) + list(sys.path) + site_paths:
        if p and p not in search_paths:
            search_paths.append(p)
    dists, editable = scan_distributions(search_paths, errors)
    index = SourceIndex(search_paths, editable)
    result = {"python": python_info(search_paths, prefix),
              "distributions": {name: _public(d) for name, d in sorted(dists.items())}}
    for key, fn in (("torch", torch_build), ("deepspeed", deepspeed_build), ("extensions", extensions)):
        try:
            result[key] = fn(index, dists, errors)
        except Exception as exc:  # a bug or an odd install must not cost the whole report
            errors.append("%s: probe failed (%s: %s)" % (key, type(exc).__name__, exc))
            result[key] = {} if key == "extensions" else None
    try:
        result["linkage"] = linkage(dists, result.get("torch"), errors)
    except Exception as exc:  # as above: a bug or an odd file costs this section only
        errors.append("linkage: probe failed (%s: %s)" % (type(exc).__name__, exc))
        result["linkage"] = None
    return {"extra_paths": list(extra_paths), "errors": errors, "dists": dists, "editable": editable,
            "index": index, "result": result, "seconds": time.time() - started}


def probe_api(state, symbols=(), code=None):
    """The part that needs the request: the API symbols (and `--code`'s names) looked up."""
    started = time.time()
    errors, dists, editable, index, result = (state["errors"], state["dists"], state["editable"], state["index"],
                                              state["result"])
    api = {}
    _lookup_all(index, symbols, api, errors)
    if code is not None:
        # `doctor --code`: the names a user's checkout uses; only those of known libraries and installed
        # distributions are looked up (the rest are the checkout's own modules or the standard library)
        names = import_names(dists, editable, errors)
        result["import_names"] = names
        libraries = [str(x) for x in code.get("libraries") or []]
        wanted = [str(x) for x in code.get("symbols") or [] if _wanted(str(x), libraries, names)]
        _lookup_all(index, wanted, api, [])
    result["api"] = api
    result["probe_errors"] = errors
    # the probe's own work, not the wait for the request
    result["probe_seconds"] = round(state["seconds"] + time.time() - started, 4)
    result["probe_schema"] = PROBE_SCHEMA
    return result


def _extra_paths_arg(argv):
    """`--extra-paths=A:B` (the host's PYTHONPATH, which -I hides, joined by os.pathsep as PYTHONPATH is):
    known before the request is sent."""
    for arg in list(argv):
        if arg.startswith("--extra-paths="):
            argv.remove(arg)
            return [p for p in arg.split("=", 1)[1].split(os.pathsep) if p]
    return []


def main(argv=None):
    if sys.version_info < (3, 6):
        sys.stderr.write("moe-env probe: Python %d.%d is too old; the probe needs Python 3.8 or newer\n"
                         % sys.version_info[:2])
        return 3
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = _extra_paths_arg(argv)
    symbols, code = [], None
    if "--stdin" in argv:
        argv.remove("--stdin")
        # the slow part first: the host is still importing and loading the matrix, which the request needs
        state = probe_static(extra)
        try:
            request = json.loads(sys.stdin.read() or "{}")
        except ValueError as exc:
            request = {}
            sys.stderr.write("moe-env probe: stdin is not JSON (%s)\n" % exc)
        if not isinstance(request, dict):
            request = {}
        symbols += [str(s) for s in request.get("symbols") or []]
        asked = [str(p) for p in request.get("extra_paths") or []]
        if asked and asked != extra:  # a caller that names its paths only in the request: scan again with them
            state = probe_static(asked)
        code = request.get("code") if isinstance(request.get("code"), dict) else None
    else:
        state = probe_static(extra)
    symbols += argv
    result = probe_api(state, symbols, code)
    sys.stdout.write("\n" + MARKER + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
