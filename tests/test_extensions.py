"""Compiled extensions judged against the installed torch, read from ELF across the real process boundary.

A real venv holds a fake-but-real torch (torch/lib/libc10.so compiled here, C++11 ABI, CPU build) and
extensions compiled here, each broken one way. `moe-env doctor --python VENV --json` runs in a
subprocess; nothing in the venv may be imported or dlopened (every .so has a constructor that writes
a sentinel file). Where the finding quotes an ImportError, a separate throwaway interpreter really
imports the module to prove the quoted text is what Python says.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from doctor_support import moe_env_cli
from elf_support import (EXT_MISSING_SYMBOL, EXT_NEEDS_HELPER, EXT_NEW_GLIBCXX, EXT_OK, EXT_OLD_ABI, HELPER, LIBC10,
                         PY_TAG, compile_so, fake_libstdcxx, needs_compiler)
from fakes import torch_files

pytestmark = needs_compiler

HOST = {"MOE_ENV_GPUS": "none", "MOE_ENV_NVCC_VERSION": "12.1"}


def _wheel(info: Path, tag: str = "cp311-cp311-linux_x86_64") -> None:
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n")


def _so(build: Path, name: str, source: str, args=(), cxx: bool = True) -> bytes:
    return compile_so(build / name, source, cxx=cxx, args=list(args)).read_bytes()


@pytest.fixture(scope="module")
def ext_env(tmp_path_factory):
    """One venv with torch 2.13.0+cpu and seven distributions shipping compiled files."""
    from fakes import make_venv

    root = tmp_path_factory.mktemp("ext")
    venv = make_venv(root / "venv")
    build = root / "build"
    libc10 = compile_so(build / "torchlib" / "libc10.so", LIBC10, soname="libc10.so")
    torch_lib = ["-L", str(libc10.parent), "-Wl,--no-as-needed", "-lc10"]
    at_root = ["-Wl,-rpath,$ORIGIN/torch/lib"]  # extensions at site-packages' top, as flash_attn_2_cuda is
    in_pkg = ["-Wl,-rpath,$ORIGIN/../torch/lib"]

    venv.add_dist("torch", "2.13.0+cpu", files={**torch_files("2.13.0+cpu", cuda=None, cxx11_abi=1),
                                                 "torch/lib/libc10.so": libc10.read_bytes()})
    venv.add_dist("good-ext", "1.0", files={f"good_ext/_C{PY_TAG}": _so(build, "good.so", EXT_OK, torch_lib + in_pkg)})
    info = venv.add_dist("flash-attn", "2.0.4+cu117torch2.0cxx11abiTRUE", files={
        f"flash_attn_2_cuda{PY_TAG}": _so(build, "fa.so", EXT_MISSING_SYMBOL, torch_lib + at_root),
        "flash_attn/__init__.py": "import flash_attn_2_cuda\n"})
    _wheel(info)
    venv.add_dist("old-abi-ext", "0.3", files={
        f"old_abi_ext/_C{PY_TAG}": _so(build, "old.so", EXT_OLD_ABI, ["-D_GLIBCXX_USE_CXX11_ABI=0"] + torch_lib + in_pkg)})
    cudart = compile_so(build / "cuda11" / "libcudart.so.11.0", HELPER, cxx=False, soname="libcudart.so.11.0")
    venv.add_dist("cuda11-ext", "1.2", files={
        f"cuda11_ext/_C{PY_TAG}": _so(build, "cu11.so", EXT_NEEDS_HELPER.replace("moe_helper", "moe_helper"),
                                      torch_lib + in_pkg + [str(cudart)])})
    gone = compile_so(build / "gone" / "libmoe_gone.so", HELPER, cxx=False, soname="libmoe_gone.so")
    venv.add_dist("helper-ext", "0.9", files={
        f"helper_ext/_C{PY_TAG}": _so(build, "helper.so", EXT_NEEDS_HELPER, torch_lib + in_pkg + [str(gone)])})
    venv.add_dist("partial-pkg", "4.0", files={"partial_pkg/__init__.py": "", "partial_pkg/_core.so": b"\x7fELF..."})
    (venv.site / "partial_pkg" / "_core.so").unlink()
    good = (venv.site / "good_ext" / f"_C{PY_TAG}").read_bytes()
    venv.add_dist("broken-so", "1.0", files={"broken_so/_C.so": good[:300]})
    return venv


def _doctor(venv, tmp_path, env=None):
    log = tmp_path / "imported.log"
    res = moe_env_cli(["doctor", "--python", str(venv.python), "--json"],
                      env={**HOST, "MOE_ENV_TEST_IMPORTED": str(log), **(env or {})})
    assert res.returncode in (0, 1), res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert not log.exists(), "the probe loaded a shared object: " + log.read_text()
    return json.loads(res.stdout)


def _by(doc, fid, text):
    return [f for f in doc["findings"] if f["id"] == fid and text in f["title"] + f["seen"]]


def _real_import(venv, module: str, tmp_path) -> str:
    """What importing `module` really raises, in a separate interpreter (never the probe's)."""
    res = subprocess.run([str(venv.python), "-c", f"import {module}"], capture_output=True, text=True,
                         env={**os.environ, "MOE_ENV_TEST_IMPORTED": str(tmp_path / "real-import.log")})
    assert res.returncode != 0
    return res.stderr.strip().splitlines()[-1]


def test_extension_findings_across_the_process_boundary(ext_env, tmp_path):
    doc = _doctor(ext_env, tmp_path)
    link = doc["environment"]["linkage"]
    assert sorted(link["compiled"]) == ["cuda11-ext", "flash-attn", "good-ext", "helper-ext", "old-abi-ext"]

    # a symbol libc10 does not export: the finding quotes what `import` says, word for word
    (fa,) = _by(doc, "ext.undefined-symbol", "flash-attn")
    assert fa["severity"] == "error"
    real = _real_import(ext_env, "flash_attn_2_cuda", tmp_path)
    assert real.startswith("ImportError: ") and "undefined symbol: _ZN3c10" in real
    assert f"`{real}`" in fa["seen"]
    assert "CUDA 11.7, torch 2.0, cxx11abiTRUE" in fa["seen"] and "cp311-cp311-linux_x86_64" in fa["seen"]
    assert "2 of 3 torch symbols" in fa["seen"]
    assert "flash-attn==2.0.4" in fa["fix"] and "moe-env build-steps" in fa["fix"]
    assert any("flash-attention#" in s for s in fa["sources"])

    # the other C++ ABI: one finding (its undefined symbol folded in), with the real ImportError
    (abi,) = _by(doc, "ext.cxx11-abi-mismatch", "old-abi-ext")
    assert not _by(doc, "ext.undefined-symbol", "old-abi-ext")
    assert "pre-C++11 ABI" in abi["seen"] and "`+torch2.13cxx11abiTRUE`" in abi["fix"]
    assert f"`{_real_import(ext_env, 'old_abi_ext._C', tmp_path)}`" in abi["seen"]

    # built for CUDA 11 next to a CPU torch: the missing libcudart.so.11.0 is explained by the mismatch
    (cu,) = _by(doc, "ext.cuda-major-mismatch", "cuda11-ext")
    assert cu["severity"] == "error" and "CPU only" in cu["title"]
    assert not _by(doc, "ext.missing-library", "cuda11-ext")
    real = _real_import(ext_env, "cuda11_ext._C", tmp_path)
    assert real == "ImportError: libcudart.so.11.0: cannot open shared object file: No such file or directory"
    assert f"`{real}`" in cu["seen"]

    (miss,) = _by(doc, "ext.missing-library", "helper-ext")
    assert "libmoe_gone.so" in miss["title"]
    assert f"`{_real_import(ext_env, 'helper_ext._C', tmp_path)}`" in miss["seen"]

    (part,) = _by(doc, "dist.partial-install", "partial-pkg")
    assert part["severity"] == "error" and "partial_pkg/_core.so" in part["seen"]
    assert part["fix"] == "pip install --force-reinstall --no-deps partial-pkg==4.0"
    (broken,) = _by(doc, "dist.partial-install", "broken-so")
    assert broken["severity"] == "warning" and "broken_so/_C.so" in broken["seen"]

    assert not [f for f in doc["findings"] if "good-ext" in f["title"] + f["seen"]]
    assert not [f for f in doc["findings"] if f["id"].startswith("sys.")]
    assert len([f for f in doc["findings"] if f["id"].startswith(("ext.", "dist."))]) == 6


def test_newer_glibcxx_than_the_loaded_libstdcxx(ext_env, tmp_path):
    """An extension linked against a libstdc++ defining GLIBCXX_3.4.29, a process that loads one stopping at 3.4.20."""
    build = tmp_path / "build"
    newer = fake_libstdcxx(build / "newer", "GLIBCXX_3.4.29")
    older = fake_libstdcxx(tmp_path / "older", "GLIBCXX_3.4.20")
    site = ext_env.site
    ext = site / "glibcxx_ext" / f"_C{PY_TAG}"
    compile_so(ext, EXT_NEW_GLIBCXX, cxx=False,
               args=[str(newer), "-L", str(site / "torch" / "lib"), "-Wl,--no-as-needed", "-lc10",
                     "-Wl,--allow-shlib-undefined", "-Wl,-rpath,$ORIGIN/../torch/lib"])
    info = ext_env.add_dist("glibcxx-ext", "1.0", files={})
    (info / "RECORD").write_text(f"glibcxx_ext/_C{PY_TAG},,\n{info.name}/RECORD,,\n")
    try:
        doc = _doctor(ext_env, tmp_path, env={"LD_LIBRARY_PATH": str(older.parent)})
        link = doc["environment"]["linkage"]
        assert link["libstdcxx"] == str(older)
        assert "GLIBCXX_3.4.29" not in link["libstdcxx_versions"]
        (f,) = [f for f in doc["findings"] if f["id"] == "sys.glibcxx-too-old"]
        assert f["severity"] == "error" and "GLIBCXX_3.4.29" in f["title"]
        assert f"glibcxx-ext 1.0 (glibcxx_ext/_C{PY_TAG}) needs GLIBCXX_3.4.29" in f["seen"]
        assert f"{older}: version `GLIBCXX_3.4." in f["seen"] and "not found (required by " in f["seen"]
        # without the old copy on LD_LIBRARY_PATH the system's libstdc++ is loaded, and it is new enough
        doc = _doctor(ext_env, tmp_path)
        assert doc["environment"]["linkage"]["libstdcxx"] != str(older)
    finally:
        import shutil

        shutil.rmtree(site / "glibcxx_ext")
        shutil.rmtree(info)


def test_saved_report_is_judged_again(ext_env, tmp_path):
    """`--from-json` reads the linkage section back: the same findings without probing."""
    doc = _doctor(ext_env, tmp_path)
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(doc))
    res = moe_env_cli(["doctor", "--from-json", str(saved), "--json"], env=HOST)
    again = json.loads(res.stdout)
    pick = lambda d: sorted((f["id"], f["seen"]) for f in d["findings"] if f["id"].startswith(("ext.", "dist.")))  # noqa: E731
    assert pick(again) == pick(doc) and pick(doc)


def test_cuda_torch_libraries_come_from_the_nvidia_wheels(venv, tmp_path):
    """An extension without RUNPATH finds libc10/libcudart because `import torch` loaded them (torch/lib, and
    nvidia/cuda_runtime/lib through libc10_cuda's RUNPATH); without the nvidia wheel it cannot."""
    build = tmp_path / "build"
    libc10 = compile_so(build / "lib" / "libc10.so", LIBC10, soname="libc10.so")
    cudart12 = compile_so(build / "cu12" / "libcudart.so.12", HELPER, cxx=False, soname="libcudart.so.12")
    cudart11 = compile_so(build / "cu11" / "libcudart.so.11.0", HELPER, cxx=False, soname="libcudart.so.11.0")
    c10_cuda = compile_so(build / "lib" / "libc10_cuda.so", "int c10_cuda_x(void) { return 0; }\n", cxx=False,
                          soname="libc10_cuda.so",
                          args=["-L", str(libc10.parent), "-Wl,--no-as-needed", "-lc10", str(cudart12),
                                "-Wl,-rpath,$ORIGIN:$ORIGIN/../../nvidia/cuda_runtime/lib"])
    c_ext = compile_so(build / "_C.so", "int torch_c(void) { return 0; }\n", cxx=False,
                       args=["-L", str(libc10.parent), "-Wl,--no-as-needed", "-lc10_cuda", "-Wl,-rpath,$ORIGIN/lib"])
    venv.add_dist("torch", "2.1.2+cu121", files={
        **torch_files("2.1.2+cu121", cuda="12.1", cxx11_abi=0), f"torch/_C{PY_TAG}": c_ext.read_bytes(),
        "torch/lib/libc10.so": libc10.read_bytes(), "torch/lib/libc10_cuda.so": c10_cuda.read_bytes()})
    venv.add_dist("nvidia-cuda-runtime-cu12", "12.1.105",
                  files={"nvidia/cuda_runtime/lib/libcudart.so.12": cudart12.read_bytes()})
    venv.add_dist("nvidia-cuda-runtime-cu11", "11.8.89",
                  files={"nvidia/cuda_runtime_cu11/lib/libcudart.so.11.0": cudart11.read_bytes()})
    plain = ["-L", str(libc10.parent), "-Wl,--no-as-needed", "-lc10", "-lc10_cuda"]
    venv.add_dist("cu12-ext", "1.0", files={
        f"cu12_ext/_C{PY_TAG}": _so(build, "e12.so", EXT_OK.replace("c10::describe(\"x\").size()", "0"),
                                    ["-D_GLIBCXX_USE_CXX11_ABI=0"] + plain + [str(cudart12)])})
    venv.add_dist("cu11-ext", "1.0", files={
        f"cu11_ext/_C{PY_TAG}": _so(build, "e11.so", EXT_OK.replace("c10::describe(\"x\").size()", "0"),
                                    ["-D_GLIBCXX_USE_CXX11_ABI=0"] + plain + [
                                        str(cudart11), "-Wl,-rpath,$ORIGIN/../nvidia/cuda_runtime_cu11/lib"])})
    doc = _doctor(venv, tmp_path)
    ext = [f for f in doc["findings"] if f["id"].startswith(("ext.", "dist."))]
    # cu12-ext: everything resolves through what torch loaded; cu11-ext: its CUDA 11 runtime is there (its RUNPATH),
    # a second runtime beside torch's: a warning, not an error
    assert [(f["id"], f["severity"]) for f in ext] == [("ext.cuda-major-mismatch", "warning")], ext
    assert "cu11-ext" in ext[0]["title"]

    import shutil

    shutil.rmtree(venv.site / "nvidia" / "cuda_runtime")
    doc = _doctor(venv, tmp_path)
    (f,) = _by(doc, "ext.missing-library", "cu12-ext")
    assert "`ImportError: libcudart.so.12: cannot open shared object file: No such file or directory`" in f["seen"]
    (p,) = _by(doc, "dist.partial-install", "nvidia-cuda-runtime-cu12")
    assert "nvidia/cuda_runtime/lib/libcudart.so.12" in p["seen"]


def test_glibc_and_glibcxx_findings_from_a_saved_report():
    """The checks are pure: a report naming versions this host's libraries lack is judged without probing."""
    from moe_env.checks import run_checks
    from moe_env.environment import Environment
    from moe_env.matrix.loader import load_matrix

    ext = {"file": "fa/_C.so", "path": "/env/site/fa/_C.so", "needed": ["libc10.so", "libc.so.6"],
           "torch_libraries": ["libc10.so"], "versions_needed": {"libc.so.6": ["GLIBC_2.17", "GLIBC_2.38"],
                                                                 "libstdc++.so.6": ["GLIBCXX_3.4.32"]}}
    env = Environment.from_dict({
        "python": {"version": "3.11.7", "implementation": "cpython", "executable": "/env/bin/python",
                   "prefix": "/env", "platform": "linux-x86_64", "machine": "x86_64", "glibc": "2.35"},
        "torch": {"version": "2.3.1+cu121", "cuda": "12.1", "cxx11_abi": False},
        "linkage": {"torch_lib": "/env/site/torch/lib", "libstdcxx": "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
                    "libstdcxx_versions": ["GLIBCXX_3.4", "GLIBCXX_3.4.30", "CXXABI_1.3"],
                    "libc": "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    "torch_versions_needed": [{"file": "/env/site/torch/lib/libc10.so",
                                               "needs": {"libstdc++.so.6": ["GLIBCXX_3.4"]}}],
                    "compiled": {"fa": {"distribution": "fa", "version": "1.0", "files": [ext]}}}})
    found = {f.id: f for f in run_checks(env, load_matrix(), detect=False)}
    glibc = found["sys.glibc-too-old"]
    assert glibc.severity == "error" and "glibc 2.35 is older than GLIBC_2.38" in glibc.title
    assert ("`ImportError: /usr/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found "
            "(required by /env/site/fa/_C.so)`") in glibc.seen
    cxx = found["sys.glibcxx-too-old"]
    assert "fa 1.0 (fa/_C.so) needs GLIBCXX_3.4.32" in cxx.seen and "torch" not in cxx.seen.split(";")[1]
    # the extension's own finding (undefined symbols etc.) does not exist: nothing else is missing
    assert not [i for i in found if i.startswith("ext.")]


WHEEL_GLOB = "/opt/wheels/torch-2.13.0*cp311*.whl"


@pytest.mark.slow
@pytest.mark.skipif(not __import__("glob").glob(WHEEL_GLOB), reason="needs the local torch 2.13.0 CPU wheel")
def test_real_torch_libraries_and_a_real_import(venv, tmp_path):
    """torch 2.13.0+cpu's own libraries (from the local wheel; libtorch_cpu.so exports ~100,000 symbols): an extension
    needing 100 of its real symbols and two it lacks is reported with the exact ImportError a real import raises."""
    import glob
    import zipfile

    with zipfile.ZipFile(sorted(glob.glob(WHEEL_GLOB))[0]) as whl:
        keep = [n for n in whl.namelist() if n.startswith(("torch/lib/lib", "torch/_C.")) and n.endswith((".so", ".so.1"))
                or n in ("torch/version.py",)]
        files = {n: whl.read(n) for n in keep}
    files["torch/__init__.py"] = "raise ImportError('the probe must never import me')\n"
    venv.add_dist("torch", "2.13.0+cpu", files=files)
    lib = venv.site / "torch" / "lib"
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib / "libtorch_cpu.so")], capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.split()[1] == "T" and line.split()[-1].startswith("_ZN2at")]
    chosen = names[::max(1, len(names) // 100)][:100] + ["_ZN2at15absent_in_2_13Ev", "_ZN3c1015absent_in_2_13Ev"]
    src = "".join(f'extern char s{i} __asm__("{n}");\n' for i, n in enumerate(chosen))
    src += "void *refs[] = {" + ", ".join(f"&s{i}" for i in range(len(chosen))) + "};\n"
    ext = venv.site / "real_ext" / f"_C{PY_TAG}"
    compile_so(ext, src, cxx=False, args=["-L", str(lib), "-Wl,--no-as-needed", "-lc10", "-ltorch_cpu",
                                          "-Wl,-rpath,$ORIGIN/../torch/lib"])
    info = venv.add_dist("real-ext", "0.1", files={})
    (info / "RECORD").write_text(f"real_ext/_C{PY_TAG},,\n{info.name}/RECORD,,\n")
    doc = _doctor(venv, tmp_path)
    (f,) = _by(doc, "ext.undefined-symbol", "real-ext")
    assert "needs 2 of 102 torch symbols" in f["seen"]
    assert f"`{_real_import(venv, 'real_ext._C', tmp_path)}`" in f["seen"]
    link = doc["environment"]["linkage"]
    assert [v["file"].rsplit("/", 1)[-1] for v in link["torch_versions_needed"]][:2] == [
        "libtorch_global_deps.so", "_C.cpython-311-x86_64-linux-gnu.so"]


def _oldest_python_3_8_plus():
    from test_probe import OTHER_PYTHONS, _version_of

    found = sorted((_version_of(p), p) for p in OTHER_PYTHONS)
    return next((p for v, p in found if v >= [3, 8]), None)


def test_the_same_findings_from_the_oldest_python_the_probe_supports(ext_env, tmp_path):
    """elf.py and linkage.py run inside the target interpreter: a Python 3.8+ venv holding the same files."""
    python = _oldest_python_3_8_plus()
    if python is None:
        pytest.skip("no Python 3.8-3.10 interpreter on this machine")
    import shutil

    from fakes import make_venv

    old = make_venv(tmp_path / "old", python=python)
    for entry in ext_env.site.iterdir():
        if entry.name.split("-")[0].split(".")[0] in ("torch", "flash_attn", "flash_attn_2_cuda", "old_abi_ext",
                                                        "cuda11_ext", "helper_ext", "good_ext", "partial_pkg", "broken_so"):
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, old.site / entry.name)
    new_ids = sorted((f["id"], f["title"]) for f in _doctor(ext_env, tmp_path)["findings"] if f["id"].startswith(("ext.", "dist.")))
    doc = _doctor(old, tmp_path)
    from test_probe import _version_of

    assert doc["environment"]["python"]["version"].split(".")[:2] == [str(x) for x in _version_of(python)]
    assert not [e for e in doc["environment"]["probe_errors"] if "linkage" in e]
    assert sorted((f["id"], f["title"]) for f in doc["findings"] if f["id"].startswith(("ext.", "dist."))) == new_ids


def test_names_read_from_the_target_are_escaped():
    """A RECORD path or symbol name with terminal escapes cannot recolour the report."""
    from moe_env.checks import run_checks
    from moe_env.environment import Environment
    from moe_env.matrix.loader import load_matrix

    evil = "pkg/\x1b[2J\x1b[31m_core.so"
    env = Environment.from_dict({
        "python": {"version": "3.11.7", "implementation": "cpython", "executable": "/e/bin/python", "prefix": "/e",
                   "platform": "linux-x86_64", "machine": "x86_64"},
        "torch": {"version": "2.13.0+cpu", "cxx11_abi": True},
        "linkage": {"partial_installs": {"pkg": {"distribution": "pkg\x1b]0;owned\x07", "version": "1.0",
                                                 "missing": [evil], "missing_count": 1, "compiled_count": 1,
                                                 "record": "/e/site/pkg-1.0.dist-info/RECORD"}},
                    "compiled": {"x": {"distribution": "x", "version": "1", "files": [
                        {"file": "x/_C.so", "path": "/e/site/x/_C.so", "needed": ["libc10.so"],
                         "torch_libraries": ["libc10.so"], "missing_symbols": ["_ZN3c10\x1b[31mEv"],
                         "missing_symbol_count": 1, "torch_symbols": 1}]}}}})
    found = run_checks(env, load_matrix(), detect=False)
    texts = " ".join(f.title + f.seen + f.fix for f in found if f.id.startswith(("ext.", "dist.")))
    assert "\x1b" not in texts and "\x07" not in texts
    assert "\\x1b[2J" in texts and "_ZN3c10\\x1b[31mEv" in texts
