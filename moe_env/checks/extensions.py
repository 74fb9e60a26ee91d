"""Generic checks on compiled files: what `import` would say, read from ELF by the probe, never loaded.

The probe (moe_env/probe/linkage.py) records, for every distribution shipping shared objects that
link torch, where each DT_NEEDED resolves, which torch symbols no installed torch library defines,
the CUDA major and C++ ABI it was built with, and the GLIBCXX_/GLIBC_ versions it needs; and, for
every distribution, the compiled files its RECORD lists that are gone. These checks turn that into
one finding per distribution and problem class, each with the error text the dynamic linker
gives (glibc's wording; Python's ImportError carries dlerror()'s text unchanged).

Order of failure, as ld.so loads: a missing library stops the load first, then a missing symbol
version, then an undefined symbol. A CUDA-major or C++-ABI mismatch is the cause of the missing
libraries / symbols it explains, so those are folded into it (one problem, one fix).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from moe_env.checks.registry import Context, generic
from moe_env.environment import CompiledDistribution, LinkedFile, TorchBuild
from moe_env.findings import Finding
from moe_env.untrusted import printable

# What the loader prints (glibc) and how Python passes it on.
SRC_DLOPEN_MISSING = ("bminor/glibc@630da022cb07d67ab53b4e9335352e44e9b7c5e2:elf/dl-load.c "
                      "_dl_map_object: \"cannot open shared object file\" with strerror, named by the DT_NEEDED string")
SRC_DLOPEN_VERSION = ("bminor/glibc@630da022cb07d67ab53b4e9335352e44e9b7c5e2:elf/dl-version.c "
                      "match_symbol: \"version `%s' not found (required by %s)\", object = the providing library")
SRC_SEARCH_ORDER = ("https://man7.org/linux/man-pages/man8/ld.so.8.html search order: DT_RPATH (without DT_RUNPATH), "
                    "LD_LIBRARY_PATH, DT_RUNPATH, /etc/ld.so.cache, /lib and /usr/lib")
SRC_PY_IMPORTERROR = ("python/cpython@1113472faa669d5db366ef237a82b7a313f21f46:Python/dynload_shlib.c "
                      "_PyImport_FindSharedFuncptr raises ImportError with dlerror()'s text")
# Issue threads showing the errors on real installs.
SRC_FA_UNDEFINED = ("Dao-AILab/flash-attention#966 flash_attn_2_cuda...so: undefined symbol: _ZN3c104cuda9SetDeviceEi "
                    "after building against another torch")
SRC_FA_ABI = ("Dao-AILab/flash-attention#1691 a cxx11abiTRUE wheel under a torch of the other ABI: undefined symbol "
              "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_string...")
SRC_CUDART_MISSING = ("NVIDIA/TensorRT#4350 ImportError: libcudart.so.11.0: cannot open shared object file: "
                      "No such file or directory (an extension built for CUDA 11)")
SRC_GLIBCXX = ("nicknochnack/TFODCourse#50 ImportError: .../anaconda3/bin/../lib/libstdc++.so.6: version "
               "`GLIBCXX_3.4.29' not found: the env's own older libstdc++ is loaded first")

_CUDA_SONAME = re.compile(r"lib(cudart|cublas|cublasLt|nvrtc)\.so\.(\d+)")
_TORCH_CUDA_LIB = re.compile(r"lib(c10_cuda|torch_cuda\w*|c10_hip|torch_hip)\.so$")
_FA_LOCAL = re.compile(r"cu(\d+)torch(\d+\.\d+)cxx11abi(TRUE|FALSE)", re.I)


def _finding(**kw) -> Finding:
    """A Finding whose texts carry names read from the target (RECORD paths, METADATA names, ELF symbol and
    library names): escaped with printable(), so none can move the cursor or recolour the report."""
    for key in ("title", "seen", "fix"):
        kw[key] = printable(kw.get(key, ""))
    return Finding(**kw)


# ---------------------------------------------------------------- what the user would see


def _raised(lf: LinkedFile) -> str:
    """ImportError for a Python extension module; OSError for a library loaded with ctypes / torch.ops."""
    base = lf.file.rsplit("/", 1)[-1]
    return "OSError" if base.startswith("lib") else "ImportError"


def _missing_library_text(lf: LinkedFile, lib: str) -> str:
    return f"{_raised(lf)}: {lib}: cannot open shared object file: No such file or directory"


def _undefined_text(lf: LinkedFile, symbol: str) -> str:
    return f"{_raised(lf)}: {lf.path or lf.file}: undefined symbol: {symbol}"


def _version_text(lf_path: str, raised: str, provider: str, version: str) -> str:
    return f"{raised}: {provider}: version `{version}' not found (required by {lf_path})"


# ---------------------------------------------------------------- what it was built for, and the fix


def _torch_variant(t: Optional[TorchBuild]) -> str:
    if t is None:
        return "no torch"
    if t.cuda:
        kind = f"CUDA {t.cuda}"
    elif t.hip:
        kind = f"ROCm {t.hip}"
    else:
        kind = "CPU only"
    abi = "" if t.cxx11_abi is None else f", cxx11abi{'TRUE' if t.cxx11_abi else 'FALSE'}"
    return f"torch {t.version} ({kind}{abi})"


def built_for(ctx: Context, dist: CompiledDistribution) -> str:
    """What the distribution records about the build it was made for, as one phrase ('' when nothing)."""
    parts = []
    m = _FA_LOCAL.search(dist.version or "")
    if m:
        cuda = m.group(1)
        parts.append(f"version {dist.version}: CUDA {cuda[:2] if len(cuda) > 2 else cuda}"
                     f"{'.' + cuda[2:] if len(cuda) > 2 else ''}, torch {m.group(2)}, cxx11abi{m.group(3).upper()}")
    ds = ctx.env.deepspeed
    if dist.distribution.lower() == "deepspeed" and ds is not None and (ds.built_torch or ds.built_cuda):
        parts.append(f"deepspeed's build info: torch {ds.built_torch or '?'}, CUDA {ds.built_cuda or '?'}")
    if dist.wheel_tags:
        parts.append("wheel tag " + ", ".join(dist.wheel_tags[:2]))
    if dist.direct_url:
        parts.append(f"installed from {dist.direct_url}")
    return "; ".join(parts)


def _wheel_tag(t: Optional[TorchBuild]) -> str:
    """The local-version tag prebuilt extension wheels carry (flash-attn, mamba-ssm, causal-conv1d, grouped_gemm
    name theirs `+cu{CUDA}torch{major.minor}cxx11abi{TRUE|FALSE}`), for the installed torch."""
    if t is None or t.cxx11_abi is None:
        return ""
    mm = ".".join(t.version.split("+", 1)[0].split(".")[:2])
    cuda = f"cu{t.cuda.split('.', 1)[0]}" if t.cuda else ""
    return f"{cuda}torch{mm}cxx11abi{'TRUE' if t.cxx11_abi else 'FALSE'}"


def _fix(ctx: Context, dist: CompiledDistribution, reason: str) -> str:
    t = ctx.env.torch
    name, ver = dist.distribution, dist.version.split("+", 1)[0]
    steps = f"`moe-env build-steps {ctx.project.name}`" if ctx.project is not None else "`moe-env build-steps PROJECT`"
    tag = _wheel_tag(t)
    wheel = f"a wheel made for it (prebuilt ones say so in their name: `+{tag}`)" if tag else "a wheel made for it"
    return (f"Reinstall {name} built for the installed {_torch_variant(t)}: {wheel}, or a build against it "
            f"(`pip install --force-reinstall --no-deps --no-build-isolation --no-cache-dir {name}=={ver}`; "
            f"{steps} writes the steps). {reason}").strip()


# ---------------------------------------------------------------- the checks


def _dists(ctx: Context) -> List[Tuple[str, CompiledDistribution]]:
    link = ctx.env.linkage
    if link is None or ctx.env.torch is None:  # no torch: the import fails earlier ("No module named torch")
        return []
    return sorted(link.compiled.items())


def _torch_major(t: TorchBuild) -> Optional[str]:
    return t.cuda.split(".", 1)[0] if t.cuda else None


def _cuda_mismatch(t: TorchBuild, lf: LinkedFile) -> bool:
    if lf.cuda_major is None:
        return False
    return _torch_major(t) != lf.cuda_major


def _explained_by_cuda(t: TorchBuild, lib: str) -> bool:
    """A missing library a CUDA-major mismatch explains: the other major's CUDA libraries, torch's CUDA libraries."""
    m = _CUDA_SONAME.match(lib)
    if m:
        return True
    return not t.cuda and bool(_TORCH_CUDA_LIB.match(lib))


def _abi_mismatch(t: TorchBuild, lf: LinkedFile) -> bool:
    return t.cxx11_abi is not None and lf.cxx11_abi is not None and t.cxx11_abi != lf.cxx11_abi


def _abi_word(value: bool) -> str:
    return "the C++11 ABI (_GLIBCXX_USE_CXX11_ABI=1)" if value else "the pre-C++11 ABI (_GLIBCXX_USE_CXX11_ABI=0)"


def _first_error(ctx: Context, lf: LinkedFile) -> Optional[str]:
    """The error the first import of this file raises, in the loader's order."""
    if lf.missing_libraries:
        return _missing_library_text(lf, lf.missing_libraries[0])
    missing = _missing_versions(ctx, lf)
    if missing:
        provider, version = missing[0]
        return _version_text(lf.path or lf.file, _raised(lf), provider, version)
    if lf.missing_symbols:
        return _undefined_text(lf, lf.missing_symbols[0])
    return None


def _others(files: List[LinkedFile], first: LinkedFile, what: str) -> str:
    n = sum(1 for f in files if f is not first)
    return f"; {n} more of its files {what}" if n else ""


@generic("ext-cuda-major")
def ext_cuda_major(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    out = []
    for _key, dist in _dists(ctx):
        bad = [f for f in dist.files if _cuda_mismatch(t, f)]
        if not bad:
            continue
        lf = bad[0]
        built = built_for(ctx, dist)
        seen = (f"{dist.distribution} {dist.version}: {lf.file} links {', '.join(lf.cuda_libraries)} (CUDA {lf.cuda_major}); "
                f"the installed torch is {_torch_variant(t)}{_others(bad, lf, 'link it too')}"
                + (f"; built for: {built}" if built else ""))
        err = _first_error(ctx, lf)
        if err:
            seen += f"; importing it raises `{err}`"
        fails = bool(lf.missing_libraries)
        why = (f"An extension runs on the CUDA runtime of the major it was compiled with; next to a torch for "
               f"{'CUDA ' + _torch_major(t) if t.cuda else 'no CUDA at all'} "
               + ("the libraries it needs are not there, so the import fails." if fails else
                  "it loads a second CUDA runtime beside torch's, a combination neither is built or tested for."))
        out.append(_finding(
            id="ext.cuda-major-mismatch", severity="error" if fails else "warning",
            title=f"{dist.distribution} was built for CUDA {lf.cuda_major}; the installed {_torch_variant(t)} is not",
            seen=seen, why=why,
            fix=(_fix(ctx, dist, "") if t.cuda else
                 f"Install a torch built for CUDA {lf.cuda_major} (the build {dist.distribution} was made for; a CPU-only "
                 f"torch runs no CUDA extension), or: " + _fix(ctx, dist, "")),
            sources=[SRC_CUDART_MISSING, SRC_DLOPEN_MISSING, SRC_PY_IMPORTERROR],
        ))
    return out


@generic("ext-missing-library")
def ext_missing_library(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    out = []
    for _key, dist in _dists(ctx):
        bad = []
        for f in dist.files:
            libs = [lib for lib in f.missing_libraries if not (_cuda_mismatch(t, f) and _explained_by_cuda(t, lib))]
            if libs:
                bad.append((f, libs))
        if not bad:
            continue
        lf, libs = bad[0]
        built = built_for(ctx, dist)
        where = ctx.env.linkage.torch_lib if ctx.env.linkage else None
        seen = (f"{dist.distribution} {dist.version}: {lf.file} needs {', '.join(libs)}, which the dynamic linker finds "
                f"nowhere (among what `import torch` has loaded from {where or 'torch/lib'} and the nvidia-* wheels, "
                f"its RPATH/RUNPATH, LD_LIBRARY_PATH, /etc/ld.so.cache, /lib, /usr/lib)"
                f"{_others([b[0] for b in bad], lf, 'miss libraries too')}; "
                f"importing it raises `{_missing_library_text(lf, lf.missing_libraries[0])}`"
                + (f"; built for: {built}" if built else ""))
        torch_libs = [lib for lib in libs if re.match(r"lib(c10|torch|shm)", lib)]
        why = ("The import fails before any code runs. " + (
            f"{', '.join(torch_libs)} {'is' if len(torch_libs) == 1 else 'are'} not part of the installed "
            f"{_torch_variant(t)}: the extension was built against another torch build." if torch_libs else
            "A library it was linked with is not installed, or is installed where this process does not look."))
        out.append(_finding(
            id="ext.missing-library", severity="error",
            title=f"{dist.distribution}: {libs[0]} cannot be found; importing it fails",
            seen=seen, why=why,
            fix=_fix(ctx, dist, "" if torch_libs else f"Or install what provides {libs[0]} (or add its folder to LD_LIBRARY_PATH)."),
            sources=[SRC_DLOPEN_MISSING, SRC_SEARCH_ORDER, SRC_PY_IMPORTERROR],
        ))
    return out


@generic("ext-cxx11-abi")
def ext_cxx11_abi(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    out = []
    for _key, dist in _dists(ctx):
        bad = [f for f in dist.files if _abi_mismatch(t, f)]
        if not bad:
            continue
        lf = bad[0]
        built = built_for(ctx, dist)
        seen = (f"{dist.distribution} {dist.version}: {lf.file} uses {_abi_word(lf.cxx11_abi)} in the symbols it needs; "
                f"torch {t.version} is built with {_abi_word(t.cxx11_abi)} ({t.cxx11_abi_source or 'probed'})"
                f"{_others(bad, lf, 'too')}" + (f"; built for: {built}" if built else ""))
        err = _first_error(ctx, lf)
        if err:
            seen += f"; importing it raises `{err}`"
        if lf.missing_symbol_count:
            n = lf.missing_symbol_count
            seen += f" ({n} torch symbol{'s' if n > 1 else ''} it needs {'are' if n > 1 else 'is'} not defined by this torch)"
        out.append(_finding(
            id="ext.cxx11-abi-mismatch", severity="error",
            title=f"{dist.distribution} was built with the other C++ ABI than torch",
            seen=seen,
            why=("Every torch function taking or returning a std::string has a different mangled name under each ABI, "
                 "so the import fails with `undefined symbol` on the first of them."),
            fix=_fix(ctx, dist, ""),
            sources=[SRC_FA_ABI, SRC_PY_IMPORTERROR],
        ))
    return out


@generic("ext-undefined-symbol")
def ext_undefined_symbol(ctx: Context) -> List[Finding]:
    t = ctx.env.torch
    out = []
    for _key, dist in _dists(ctx):
        bad = [f for f in dist.files if f.missing_symbols and not _abi_mismatch(t, f)]
        if not bad:
            continue
        lf = bad[0]
        built = built_for(ctx, dist)
        seen = (f"{dist.distribution} {dist.version}: {lf.file} needs {lf.missing_symbol_count} of "
                f"{lf.torch_symbols} torch symbols that no torch library it loads defines ({', '.join(lf.torch_libraries)} "
                f"of {_torch_variant(t)}), first {lf.missing_symbols[0]}{_others(bad, lf, 'too')}; "
                f"importing it raises `{_first_error(ctx, lf) or _undefined_text(lf, lf.missing_symbols[0])}`"
                + (f"; built for: {built}" if built else ""))
        out.append(_finding(
            id="ext.undefined-symbol", severity="error",
            title=f"{dist.distribution} was built against another torch: importing it fails with `undefined symbol`",
            seen=seen,
            why=("torch has no stable C++ ABI between releases: an extension compiled against one torch needs functions "
                 "another torch does not export, and Python refuses the module at import."),
            fix=_fix(ctx, dist, ""),
            sources=[SRC_FA_UNDEFINED, SRC_PY_IMPORTERROR],
        ))
    return out


# ---------------------------------------------------------------- partial installs


@generic("dist-partial-install")
def dist_partial_install(ctx: Context) -> List[Finding]:
    link = ctx.env.linkage
    if link is None:
        return []
    out = []
    for _key, p in sorted(link.partial_installs.items()):
        more = f" (and {p.missing_count - 1} more of its {p.compiled_count} compiled files)" if p.missing_count > 1 else ""
        out.append(_finding(
            id="dist.partial-install", severity="error",
            title=f"{p.distribution} {p.version} is partly installed: compiled files are missing",
            seen=f"{p.record} lists {p.missing[0]}, which is not on disk{more}",
            why=("The installer wrote these files and something removed them (an interrupted install or upgrade, a cleanup "
                 "of .so files, a second install over the first); importing the package fails where it needs them."),
            fix=f"pip install --force-reinstall --no-deps {p.distribution}=={p.version}",
        ))
    for key, items in sorted(link.unreadable.items()):
        rel, reason = items[0][0], items[0][1] if len(items[0]) > 1 else "unreadable"
        name = link.compiled[key].distribution if key in link.compiled else key
        version = ctx.env.version_of(key) or ""
        out.append(_finding(
            id="dist.partial-install", severity="warning",
            title=f"{name} {version}: a compiled file is not a readable shared object",
            seen=f"{rel}: {reason}" + (f" ({len(items) - 1} more)" if len(items) > 1 else ""),
            why="A truncated or damaged .so (an interrupted download or copy) fails to load; dlopen refuses it.",
            fix=f"pip install --force-reinstall --no-deps {name}=={version}" if version else f"Reinstall {name}.",
        ))
    return out


# ---------------------------------------------------------------- libstdc++ / glibc


def _vkey(version: str) -> Tuple[int, ...]:
    tail = version.split("_", 1)[1] if "_" in version else version
    out = []
    for part in tail.split("."):
        if not part.isdigit():
            return ()
        out.append(int(part))
    return tuple(out)


def _missing_versions(ctx: Context, lf: LinkedFile) -> List[Tuple[str, str]]:
    """[(providing library path, version)] this file needs that the loaded libstdc++ / libc do not define."""
    link = ctx.env.linkage
    if link is None:
        return []
    out = []
    need = lf.versions_needed.get("libstdc++.so.6") or []
    if link.libstdcxx and link.libstdcxx_versions:
        have = set(link.libstdcxx_versions)
        out += [(link.libstdcxx, v) for v in need if v not in have]  # in .gnu.version_r order: the first is ld.so's
    glibc = _glibc(ctx)
    if glibc:
        for lib in ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1"):
            for v in lf.versions_needed.get(lib) or []:
                if v.startswith("GLIBC_") and _vkey(v) and _vkey(v) > glibc:
                    out.append((link.libc if lib == "libc.so.6" and link.libc else lib, v))
    return out


def _glibc(ctx: Context) -> Optional[Tuple[int, ...]]:
    """The glibc version the process runs: the probe's confstr value, else the newest GLIBC_ the libc defines."""
    if ctx.env.python.glibc:
        k = _vkey("GLIBC_" + ctx.env.python.glibc)
        if k:
            return k
    link = ctx.env.linkage
    versions = [_vkey(v) for v in (link.libc_versions if link else []) if _vkey(v)]
    return max(versions) if versions else None


def _consumers(ctx: Context) -> List[Tuple[str, str, Dict[str, List[str]]]]:
    """(who, path for the error text, versions needed) for torch and every compiled distribution's files."""
    link = ctx.env.linkage
    out = []
    t = ctx.env.torch
    if link is not None and t is not None:
        for v in link.torch_versions_needed:
            out.append((f"torch {t.version} ({v.file.rsplit('/', 1)[-1]})", v.file, v.needs))
    for _key, dist in _dists(ctx):
        for f in dist.files:
            if f.versions_needed:
                out.append((f"{dist.distribution} {dist.version} ({f.file})", f.path or f.file, f.versions_needed))
    return out


def _highest(versions: List[str]) -> str:
    return max(versions, key=_vkey)


@generic("sys-glibcxx")
def sys_glibcxx(ctx: Context) -> List[Finding]:
    link = ctx.env.linkage
    if link is None or not link.libstdcxx or not link.libstdcxx_versions:
        return []
    have = set(link.libstdcxx_versions)
    newest = _highest([v for v in have if v.startswith("GLIBCXX_") and _vkey(v)] or ["GLIBCXX_0"])
    short = []
    for who, path, needs in _consumers(ctx):
        missing = [v for v in needs.get("libstdc++.so.6") or [] if v not in have]
        if missing:
            short.append((who, path, missing))
    if not short:
        return []
    top = _highest([v for _w, _p, m in short for v in m])
    who, path, first = short[0][0], short[0][1], short[0][2][0]
    names = "; ".join(f"{w} needs {_highest(m)}" for w, _p, m in short[:6]) + (
        f"; {len(short) - 6} more" if len(short) > 6 else "")
    raised = "ImportError"
    return [_finding(
        id="sys.glibcxx-too-old", severity="error",
        title=f"The libstdc++ this process loads is older than {top} needs",
        seen=(f"{link.libstdcxx} defines up to {newest}; {names}; importing raises "
              f"`{_version_text(path, raised, link.libstdcxx, first)}`"),
        why=("Each GLIBCXX_ version node is a set of C++ runtime functions added by a GCC release; a library built with a "
             "newer GCC refuses to load against an older libstdc++, and the first one loaded wins for the whole process."),
        fix=(f"Load a libstdc++ that defines {top}: in a conda env `conda install -c conda-forge 'libstdcxx-ng>=12'`, or "
             "upgrade the system's libstdc++6 (e.g. a newer base image); if an older copy is picked up first, remove it from "
             "LD_LIBRARY_PATH (or the env's lib/)."),
        sources=[SRC_DLOPEN_VERSION, SRC_GLIBCXX, SRC_SEARCH_ORDER],
    )]


@generic("sys-glibc")
def sys_glibc(ctx: Context) -> List[Finding]:
    glibc = _glibc(ctx)
    link = ctx.env.linkage
    if glibc is None or link is None:
        return []
    short = []
    for who, path, needs in _consumers(ctx):
        missing = [(lib, v) for lib, versions in needs.items() if lib != "libstdc++.so.6" for v in versions
                   if v.startswith("GLIBC_") and _vkey(v) and _vkey(v) > glibc]
        if missing:
            short.append((who, path, missing))
    if not short:
        return []
    top = _highest([v for _w, _p, m in short for _l, v in m])
    who, path = short[0][0], short[0][1]
    lib, first = short[0][2][0]
    provider = link.libc if lib == "libc.so.6" and link.libc else lib
    have = ".".join(str(x) for x in glibc)
    names = "; ".join(f"{w} needs {_highest([v for _l, v in m])}" for w, _p, m in short[:6])
    return [_finding(
        id="sys.glibc-too-old", severity="error",
        title=f"glibc {have} is older than {top} needs",
        seen=(f"the process runs glibc {have} ({link.libc or 'libc.so.6'}); {names}; importing raises "
              f"`{_version_text(path, 'ImportError', provider, first)}`"),
        why="glibc is the system's C library: binaries built on a newer system refuse to load on an older one.",
        fix=("Use a build of these packages for this system's glibc (manylinux wheels name the oldest glibc they need), "
             "or run on a newer OS / base image."),
        sources=[SRC_DLOPEN_VERSION],
    )]
