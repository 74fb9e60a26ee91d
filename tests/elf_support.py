"""Tiny real ELF shared objects, compiled by the tests with the machine's gcc/g++.

A fake torch (`torch/lib/libc10.so` exporting a few c10:: functions, C++11 ABI) and "extensions"
that link it, each broken one way: a symbol libc10 does not export, a DT_NEEDED that is not
installed, the other C++ ABI, a CUDA 11 runtime, a GLIBCXX_ version newer than a fake libstdc++
defines. Every extension has a constructor that appends to $MOE_ENV_TEST_IMPORTED when loaded, so a
test can prove the probe never dlopens it. Nothing here is upstream code.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Sequence

import pytest

CXX = shutil.which("g++")
CC = shutil.which("gcc")
needs_compiler = pytest.mark.skipif(not (CXX and CC), reason="needs gcc and g++ to build test shared objects")

PY_TAG = ".cpython-311-x86_64-linux-gnu.so"  # any Python-extension-looking name: nothing imports it

SENTINEL = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void moe_env_loaded(void) {
    const char *p = getenv("MOE_ENV_TEST_IMPORTED");
    if (p) { FILE *f = fopen(p, "a"); if (f) { fputs("shared object loaded\n", f); fclose(f); } }
}
"""

LIBC10 = r"""
#include <string>
namespace c10 {
void present(int) {}
std::string describe(const std::string &s) { return s + "!"; }
}
"""

EXT_OK = SENTINEL + r"""
#include <string>
namespace c10 { void present(int); std::string describe(const std::string &); }
extern "C" int moe_touch() { c10::present(1); return (int)c10::describe("x").size(); }
"""

EXT_MISSING_SYMBOL = SENTINEL + r"""
#include <string>
namespace c10 { void present(int); void absent(int); void absent_too(long); }
extern "C" void moe_touch() { c10::present(1); c10::absent(2); c10::absent_too(3); }
"""

# built with -D_GLIBCXX_USE_CXX11_ABI=0: c10::describe(std::string const&) mangles as ...ERKSs
EXT_OLD_ABI = EXT_OK

HELPER = r"""
int moe_helper(void) { return 1; }
"""

EXT_NEEDS_HELPER = SENTINEL + r"""
namespace c10 { void present(int); }
extern "C" int moe_helper(void);
extern "C" int moe_touch() { c10::present(1); return moe_helper(); }
"""

FAKE_STDCXX = r"""
int moe_old_fn(void) { return 1; }
int moe_new_fn(void) { return 2; }
"""

EXT_NEW_GLIBCXX = SENTINEL + r"""
int moe_new_fn(void);
int moe_touch(void) { return moe_new_fn(); }
"""


def _run(cmd: List[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")


def compile_so(out: Path, source: str, *, cxx: bool = True, soname: str = "", args: Sequence[str] = (),
               suffix: str = ".cpp") -> Path:
    """Compile `source` into the shared object `out` (sources written beside a build folder, not into the venv)."""
    build = Path(str(out) + ".src")
    build.mkdir(parents=True, exist_ok=True)
    src = build / ("src" + (suffix if cxx else ".c"))
    src.write_text(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [CXX if cxx else CC, "-shared", "-fPIC", "-O0", "-o", str(out), str(src)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    _run(cmd + list(args))
    shutil.rmtree(build)
    return out


def version_script(path: Path, nodes: Sequence[str], symbols: Sequence[str]) -> Path:
    """A linker version script: node i exports symbols[i] (or nothing), each node inheriting the previous one."""
    lines = []
    for i, node in enumerate(nodes):
        body = f"global: {symbols[i]};" if i < len(symbols) and symbols[i] else ""
        if i == 0:
            body += " local: *;"
        parent = f" {nodes[i - 1]}" if i else ""
        lines.append(f"{node} {{ {body} }}{parent};")
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_libstdcxx(folder: Path, newest: str) -> Path:
    """A `libstdc++.so.6` whose version definitions stop at `newest` (GLIBCXX_3.4, CXXABI_1.3, `newest`)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = version_script(folder.parent / f"{folder.name}.map", ["GLIBCXX_3.4", "CXXABI_1.3", newest],
                            ["moe_old_fn", "", "moe_new_fn"])
    out = compile_so(folder / "libstdc++.so.6", FAKE_STDCXX, cxx=False, soname="libstdc++.so.6",
                     args=[f"-Wl,--version-script={script}"])
    script.unlink()
    return out
