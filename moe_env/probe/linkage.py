"""Compiled files of the target judged the way the dynamic linker would load them, read and never loaded.

Loaded by target.py beside it, inside the target interpreter (stdlib only, Python 3.8-3.14), with
elf.py handed in. For every distribution it reads RECORD and:

- partial installs: compiled files RECORD lists that are gone;
- extensions linking torch (a DT_NEEDED on libc10 / libtorch* / torch/lib's libraries): where each
  DT_NEEDED resolves, in glibc's order (already loaded by `import torch`; DT_RPATH of the object and
  of the executable when the object has no DT_RUNPATH; LD_LIBRARY_PATH; DT_RUNPATH; /etc/ld.so.cache;
  the default directories), which torch symbols it needs that the installed torch libraries of its
  load scope do not define (looked up through their hash tables), the CUDA major it links, its
  C++ ABI, and the GLIBCXX_/GLIBC_ versions it needs;
- the libstdc++ and libc the process will load, with the versions they define, and the versions
  torch's own libraries need.

"Already loaded by `import torch`" is modelled as the closure of torch/_C's and
libtorch_global_deps' DT_NEEDED, resolved by the same rules. The checks (moe_env/checks/extensions.py)
turn the facts into findings; this file decides nothing.
"""

import os
import re
import sys

MAX_FILES = 4000  # compiled files whose ELF headers are read, over all distributions
MAX_SCOPE = 64  # objects of one extension's load scope
MAX_MISSING = 10  # missing symbols / files kept per item
# libraries a torch build ships in torch/lib (today's and older ones: libtorch_cuda_cu.so in 1.9-1.12)
_TORCH_LIB = re.compile(r"lib(c10|c10_cuda|c10_hip|torch|torch_\w+|shm|caffe2_nvrtc)\.so$")
# mangled names in torch's namespaces (c10::, at::, torch::, caffe2::), their vtables/typeinfo, THP* globals
_TORCH_SYMBOL = re.compile(rb"(?:_Z(?:T[IVST])?N?[rVKLO]*(?:3c10|2at|5torch|6caffe2|\d+THP))|THP")
_CUDA_SONAME = re.compile(r"lib(cudart|cublas|cublasLt|nvrtc)\.so\.(\d+)")
_OLD_ABI = re.compile(rb"(?:^_ZNK?Ss|[EKRPI]Ss(?![a-z]))")
_VERSIONED = ("GLIBCXX_", "CXXABI_", "GLIBC_")
_SKIP_DISTS = ("torch", "triton", "pytorch-triton")
_COMPILED = (".so", ".pyd", ".dylib")


def _compiled(rel):
    base = os.path.basename(rel)
    return base.endswith(_COMPILED) or ".so." in base


def _compiled_files(dist, record_files, elf):
    """Compiled files (relative to the dist's location) its RECORD lists, or None without a RECORD.

    Only the lines holding ".so" are split, in bytes: torch's RECORD has ~15,000 lines, 60 of them
    compiled. (.pyd/.dylib files cannot load on Linux; a RECORD with quoted paths takes the slow way.)"""
    record = os.path.join(dist.get("path") or "", "RECORD")
    if os.path.isfile(record):
        try:
            data = elf._read_head(record, 64 << 20)
        except (OSError, elf.ElfError):
            return None
        if b'"' not in data:
            out, pos = [], 0
            while True:
                at = data.find(b".so", pos)
                if at < 0:
                    return out
                start = data.rfind(b"\n", 0, at) + 1
                end = data.find(b"\n", at)
                end = len(data) if end < 0 else end
                rel = data[start:end].rsplit(b",", 2)[0].decode("utf-8", "replace")
                if _compiled(rel):
                    out.append(rel)
                pos = end
    files = record_files(dist, None)
    return None if files is None else [rel for rel in files if _compiled(rel)]


class Linker(object):
    """Where ld.so would find a DT_NEEDED name (glibc's _dl_map_object search order)."""

    def __init__(self, elf, errors):
        self.elf = elf
        self.errors = errors
        self.loaded = {}  # soname -> path: what `import torch` has loaded already
        self._roots = None  # set by preload(): the closure is computed when first needed
        self._cache = None
        self._objects = {}
        self._found = {}
        self._fit = {}
        self.ld_library_path = [p for p in (os.environ.get("LD_LIBRARY_PATH") or "").split(":") if p.startswith("/")]
        self.exe = os.path.realpath(sys.executable) if sys.executable else ""
        self.exe_rpath, self.exe_has_runpath = [], False
        obj, err = self.object(self.exe) if self.exe else (None, "no sys.executable")
        if obj is not None:
            self.exe_rpath = self.expand(obj.rpath, os.path.dirname(self.exe), obj.bits)
            self.exe_has_runpath = bool(obj.runpath)
            self.bits, self.machine, self.little = obj.bits, obj.machine, obj.little
        else:
            self.bits, self.machine, self.little = (64 if sys.maxsize > 2 ** 32 else 32), None, sys.byteorder == "little"

    def object(self, path):
        """(ElfFile, None) or (None, reason), parsed once per path."""
        if path not in self._objects:
            self._objects[path] = self.elf.open_elf(path)
        return self._objects[path]

    def close(self):
        for obj, _ in self._objects.values():
            if obj is not None:
                obj.close()
        self._objects.clear()

    def cache(self):
        if self._cache is None:
            self._cache, err = self.elf.read_ldcache()
            if err and os.path.exists("/etc/ld.so.cache"):
                self.errors.append(err)
        return self._cache

    @staticmethod
    def expand(entries, origin, bits):
        out = []
        for entry in entries:
            e = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            e = e.replace("${LIB}", "lib64" if bits == 64 else "lib").replace("$LIB", "lib64" if bits == 64 else "lib")
            if "$" in e or not e.startswith("/"):
                continue  # $PLATFORM, relative entries: depend on the process; not modelled
            out.append(os.path.normpath(e))
        return out

    def _fits(self, path, obj):
        key = (path, obj.bits, obj.machine, obj.little)
        fits = self._fit.get(key)
        if fits is None:
            fits = self._fit[key] = self.elf.header_matches(path, obj.bits, obj.machine, obj.little)
        return fits

    def find(self, name, obj, path, loaded=True):
        """The path ld.so would map for DT_NEEDED `name` of `obj` (at `path`), or None.

        `loaded=False` leaves out what `import torch` loaded (for the first library a process maps)."""
        if "/" in name:
            return name if self._fits(name, obj) else None
        key = (name, os.path.dirname(path), tuple(obj.rpath), tuple(obj.runpath), obj.bits, obj.machine, loaded,
               self._roots is None)
        if key in self._found:
            return self._found[key]
        found = self._found[key] = self._search(name, obj, path, loaded)
        return found

    def _search(self, name, obj, path, loaded):
        if loaded:
            if self._roots is not None:  # what `import torch` loads, worked out on the first extension
                roots, self._roots = self._roots, None
                self.load_closure(roots)
            if name in self.loaded:
                return self.loaded[name]
        origin = os.path.dirname(path)
        dirs = []
        if not obj.runpath:
            dirs += self.expand(obj.rpath, origin, obj.bits)
            if not self.exe_has_runpath:
                dirs += self.exe_rpath
        dirs += self.ld_library_path
        dirs += self.expand(obj.runpath, origin, obj.bits)
        for d in dirs:
            candidate = os.path.join(d, name)
            if self._fits(candidate, obj):
                return candidate
        for candidate in self.cache().get(name, ()):
            if self._fits(candidate, obj):
                return candidate
        for d in self.elf.default_dirs(obj.bits):
            candidate = os.path.join(d, name)
            if self._fits(candidate, obj):
                return candidate
        return None

    def preload(self, roots):
        self._roots = list(roots)

    def load_closure(self, roots, limit=256):
        """Mark the breadth-first DT_NEEDED closure of `roots` as loaded (as `import torch` leaves it)."""
        queue = [r for r in roots if os.path.isfile(r)]
        seen = set()
        while queue and len(seen) < limit:
            path = queue.pop(0)
            if path in seen:
                continue
            seen.add(path)
            obj, _err = self.object(path)
            if obj is None:
                continue
            if obj.soname and obj.soname not in self.loaded:
                self.loaded[obj.soname] = path
            self.loaded.setdefault(os.path.basename(path), path)
            for name in obj.needed:
                if name in self.loaded:
                    continue
                found = self.find(name, obj, path)
                if found is not None:
                    self.loaded[name] = found
                    queue.append(found)


def _versions(obj, library_prefixes):
    """{library: version names, in .gnu.version_r order} of the GLIBCXX_/CXXABI_/GLIBC_ versions an object needs.

    The order is the one ld.so checks them in, so the first missing one is the one its error names."""
    out = {}
    for lib, names in obj.version_needs().items():
        if lib.startswith(library_prefixes):
            keep = []
            for n, weak in names:
                if not weak and n.startswith(_VERSIONED) and n not in keep:
                    keep.append(n)
            if keep:
                out[lib] = keep
    return out


_GLIBC_LIBS = ("libstdc++.so", "libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libgcc_s.so")


def _dist_facts(dist, read_text):
    """What a distribution records about its build: WHEEL tags, direct_url.json's URL."""
    tags, url = [], None
    path = dist.get("path") or ""
    wheel = os.path.join(path, "WHEEL")
    if os.path.isfile(wheel):
        text = read_text(wheel, None, limit=64 * 1024) or ""
        tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.lower().startswith("tag:")][:16]
    direct = os.path.join(path, "direct_url.json")
    if os.path.isfile(direct):
        text = read_text(direct, None, limit=64 * 1024) or ""
        m = re.search(r'"url"\s*:\s*"([^"]{1,2000})"', text)
        if m:
            url = m.group(1)
            c = re.search(r'"commit_id"\s*:\s*"([0-9a-fA-F]{4,64})"', text)
            if c:
                url += "@" + c.group(1)
    return tags, url


class _Scope(object):
    """The torch libraries an extension's symbols resolve against: the breadth-first closure of its DT_NEEDED over
    torch's library names (libc10, libtorch*, torch/lib's files), wherever the linker finds them."""

    def __init__(self, linker, torch_lib, torch_names):
        self.linker = linker
        self.torch_lib = torch_lib
        self.torch_names = torch_names
        self._hits = {}
        self._hashes = {}

    def objects(self, obj, path):
        out, queue, seen = [], [(obj, path)], {path}
        while queue and len(out) < MAX_SCOPE:
            cur, cur_path = queue.pop(0)
            for name in cur.needed:
                if name not in self.torch_names and not _TORCH_LIB.match(name):
                    continue  # libstdc++, libc, CUDA...: not where torch's symbols live
                found = self.linker.find(name, cur, cur_path)
                if found is None or found in seen:
                    continue
                seen.add(found)  # torch's libraries wherever ld.so finds them: another torch's are what loads
                lib, _err = self.linker.object(found)
                if lib is not None:
                    out.append((found, lib))
                    queue.append((lib, found))
        return out

    def defined(self, name, scope):
        """Whether a library of `scope` defines `name`. The library that answered last is asked first
        (c10:: names live in libc10, at:: ones in libtorch_cpu), which halves the lookups."""
        for i, (found, lib) in enumerate(scope):
            key = (found, name)
            hit = self._hits.get(key)
            if hit is None:
                try:
                    hit = self._hits[key] = lib.defines(name, self._hashes)
                except self.linker.elf.ElfError:
                    hit = self._hits[key] = True  # a damaged torch library: cannot tell, so do not accuse
            if hit:
                if i:
                    scope.insert(0, scope.pop(i))
                return True
        return False


def _check_file(linker, scope, torch_lib, torch_names, location, rel, errors):
    """Facts of one compiled file, or None when it does not link torch."""
    path = os.path.join(location, rel)
    try:
        first = linker.elf.needed_names(path)  # a few small reads: most compiled files do not link torch
    except linker.elf.ElfError as exc:
        return {"file": rel, "path": path, "error": str(exc)}
    if first is not None and not any(_TORCH_LIB.match(n) or n in torch_names for n in first):
        return None
    obj, err = linker.object(path)
    if obj is None:
        return {"file": rel, "path": path, "error": err}
    torch_libs = [n for n in obj.needed if _TORCH_LIB.match(n) or n in torch_names]
    if not torch_libs:
        return None
    facts = {"file": rel, "path": path, "error": None, "needed": list(obj.needed), "torch_libraries": torch_libs,
             "missing_libraries": [], "missing_symbols": [], "missing_symbol_count": 0, "torch_symbols": 0,
             "cuda_libraries": [], "cuda_major": None, "cxx11_abi": None, "versions_needed": {}}
    for name in obj.needed:
        if linker.find(name, obj, path) is None:
            facts["missing_libraries"].append(name)
        m = _CUDA_SONAME.match(name)
        if m:
            facts["cuda_libraries"].append(name)
            facts["cuda_major"] = facts["cuda_major"] or m.group(2)
    try:
        undefined = obj.undefined()
        facts["versions_needed"] = _versions(obj, _GLIBC_LIBS)
    except linker.elf.ElfError as exc:
        facts["error"] = "symbols unreadable (%s)" % exc
        return facts
    new_abi = old_abi = False
    wanted = []
    for name, version, weak in undefined:
        if b"__cxx11" in name:
            new_abi = True
        elif _OLD_ABI.search(name):
            old_abi = True
        if not weak and version is None and _TORCH_SYMBOL.match(name):
            wanted.append(name)
    facts["cxx11_abi"] = True if new_abi else False if old_abi else None
    facts["torch_symbols"] = len(wanted)
    if torch_lib and wanted:
        libs = scope.objects(obj, path)
        missing = [n for n in wanted if not scope.defined(n, libs)]
        if missing:
            first = None
            try:
                first = obj.first_relocated(set(missing))
            except linker.elf.ElfError:
                pass
            if first is not None:
                missing.remove(first)
                missing.insert(0, first)
            facts["missing_symbols"] = [n.decode("utf-8", "replace") for n in missing[:MAX_MISSING]]
            facts["missing_symbol_count"] = len(missing)
    return facts


def _torch_needs(linker, lib_dir, torch_names, roots):
    """[{"file", "needs"}] for the torch libraries `import torch` loads, in load order (breadth first from
    libtorch_global_deps and torch/_C over the DT_NEEDED found in torch/lib), with the versions each needs."""
    out = []
    queue, seen = [r for r in [roots[-1]] + roots[:-1] if os.path.isfile(r)], set()
    while queue and len(seen) < 64:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        obj, _err = linker.object(path)
        if obj is None:
            continue
        try:
            needs = _versions(obj, _GLIBC_LIBS)
        except linker.elf.ElfError:
            needs = {}
        if needs:
            out.append({"file": path, "needs": needs})
        queue += [os.path.join(lib_dir, n) for n in obj.needed if n in torch_names]
    return out


def _lib_versions(linker, name, errors):
    """(path, [versions it defines]) of library `name` as the process would load it first.

    Searched from the executable's point of view (its DT_RPATH first: conda's python has
    `$ORIGIN/../lib`, which is how an env's own older libstdc++ wins over the system's)."""
    path = None
    exe_obj, _ = linker.object(linker.exe) if linker.exe else (None, None)
    if exe_obj is not None:
        path = linker.find(name, exe_obj, linker.exe, loaded=False)
    if path is None:
        return None, []
    obj, err = linker.object(path)
    if obj is None:
        errors.append("%s: %s" % (path, err))
        return path, []
    try:
        return path, sorted(set(v for v in obj.version_defs() if v.startswith(_VERSIONED)))
    except linker.elf.ElfError as exc:
        errors.append("%s: version definitions unreadable (%s)" % (path, exc))
        return path, []


def probe_linkage(elf, dists, torch, record_files, read_text, errors):
    """The `linkage` section of the probe's report (see Linkage in moe_env/environment.py).

    Problems reading files are appended to `errors` (the probe's probe_errors)."""
    linker = Linker(elf, errors)
    try:
        return _probe(linker, dists, torch, record_files, read_text, errors)
    finally:
        linker.close()


def _probe(linker, dists, torch, record_files, read_text, errors):
    out = {"torch_lib": None, "libstdcxx": None, "libstdcxx_versions": [], "libc": None, "libc_versions": [],
           "torch_versions_needed": [], "compiled": {}, "partial_installs": {}, "unreadable": {}, "files_read": 0}
    torch_lib = None
    torch_names = set()
    if torch and torch.get("location"):
        candidate = os.path.join(torch["location"], "lib")
        if os.path.isdir(candidate):
            torch_lib = os.path.realpath(candidate)
            out["torch_lib"] = candidate
            try:
                torch_names = {e for e in os.listdir(candidate) if _compiled(e)}
            except OSError:
                pass
            roots = []
            try:
                roots = [os.path.join(torch["location"], e) for e in sorted(os.listdir(torch["location"]))
                         if e.startswith("_C.") and e.endswith(".so")]
            except OSError:
                pass
            roots.append(os.path.join(candidate, "libtorch_global_deps.so"))
            linker.preload(roots)
            out["torch_versions_needed"] = _torch_needs(linker, candidate, torch_names, roots)
    out["libstdcxx"], out["libstdcxx_versions"] = _lib_versions(linker, "libstdc++.so.6", errors)
    # glibc's own version is the probe's confstr value (python.glibc); the file is named for the error text
    exe_obj, _ = linker.object(linker.exe) if linker.exe else (None, None)
    out["libc"] = linker.find("libc.so.6", exe_obj, linker.exe, loaded=False) if exe_obj is not None else None
    scope = _Scope(linker, torch_lib, torch_names)
    budget = MAX_FILES
    for key in sorted(dists):
        dist = dists[key]
        compiled = _compiled_files(dist, record_files, linker.elf)
        if not compiled:
            continue
        location = dist["location"]
        present, missing = [], []
        for rel in compiled:
            (present if os.path.exists(os.path.join(location, rel)) else missing).append(rel)
        if missing:
            out["partial_installs"][key] = {"distribution": dist.get("raw_name") or key, "version": dist["version"],
                                            "missing": missing[:MAX_MISSING], "missing_count": len(missing),
                                            "compiled_count": len(compiled), "record": os.path.join(dist["path"], "RECORD")}
        if key in _SKIP_DISTS or key.startswith("nvidia-"):
            continue
        checked = []
        for rel in present:
            if budget <= 0:
                errors.append("linkage: more than %d compiled files; the rest were not read" % MAX_FILES)
                break
            if not rel.endswith(".so") and ".so." not in os.path.basename(rel):
                continue
            budget -= 1
            out["files_read"] += 1
            facts = _check_file(linker, scope, torch_lib, torch_names, location, rel, errors)
            if facts is None:
                continue
            if "needed" not in facts:  # not a readable ELF shared object: dlopen would refuse it too
                out["unreadable"].setdefault(key, []).append([rel, facts["error"]])
            else:
                checked.append(facts)
        if checked:
            tags, url = _dist_facts(dist, read_text)
            out["compiled"][key] = {"distribution": dist.get("raw_name") or key, "version": dist["version"],
                                      "location": location, "wheel_tags": tags, "direct_url": url,
                                      "files": checked}
        if budget <= 0:
            break
    return out

