"""Benchmark: the probe's ELF checks alone (the `linkage` section: RECORD scan, DT_NEEDED resolution,
torch symbol lookups through .gnu.hash, libstdc++/glibc versions) on a real torch install.

Builds (once, reused) a venv with the local torch 2.13 CPU wheel (/opt/wheels, installed --no-deps:
only its files matter here) and adds one test-built extension that links torch/lib and needs
SYMBOLS real torch symbols plus a few that torch does not export, as an extension built against
another torch would. Then, inside that venv's interpreter, times `target.linkage()` alone.

    python benchmarks/elf_bench.py                       # venv in /tmp/elfbench, 21 runs
    python benchmarks/elf_bench.py --venv /tmp/env --symbols 2000

Goal (issue 11): a few milliseconds, inside doctor's 0.1 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = "/opt/wheels/torch-2.13.0*.whl"

# Runs inside the target interpreter: load target.py as the runner does, scan once, time linkage() alone.
_MEASURE = r"""
import importlib.util, json, statistics, sys, time
spec = importlib.util.spec_from_file_location("moe_env_probe_target", sys.argv[1])
t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
runs = int(sys.argv[2])
errors = []
site = t.target_site_paths(errors)[0] if sys.flags.no_site else []
paths = [p for p in list(sys.path) + site if p]
dists, _ = t.scan_distributions(paths, errors)
torch = t.torch_build(t.SourceIndex(paths), dists, errors)
start = time.perf_counter(); t._sibling("linkage"); t._sibling("elf"); load = time.perf_counter() - start
wall, cpu = [], []
for _ in range(runs):
    w, c = time.perf_counter(), time.process_time()
    out = t.linkage(dists, torch, errors)
    wall.append(time.perf_counter() - w); cpu.append(time.process_time() - c)
files = [f for d in out["compiled"].values() for f in d["files"]]
print(json.dumps({"wall": statistics.median(wall), "cpu": statistics.median(cpu), "min": min(wall), "load": load,
                  "files_read": out["files_read"], "torch_symbols": sum(f.get("torch_symbols", 0) for f in files),
                  "missing": sum(f.get("missing_symbol_count", 0) for f in files), "errors": errors[:3]}))
"""


def build_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if (path / ".elf-bench-ready").exists():
        return python
    wheels = sorted(glob.glob(WHEELS))
    if not wheels:
        raise SystemExit(f"bench: no torch wheel matches {WHEELS}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    if not list(path.glob("lib/python3*/site-packages/torch/lib/libtorch_cpu.so")):
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", wheels[0]], check=True)
    (path / ".elf-bench-ready").write_text("ok\n")
    return python


def add_extension(python: Path, count: int) -> str:
    """bench-ext: one .so needing `count` real torch symbols and 3 absent ones, written as a dist with a RECORD."""
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    lib = site / "torch" / "lib"
    names = []
    for so in ("libc10.so", "libtorch_cpu.so"):
        out = subprocess.run(["nm", "-D", "--defined-only", str(lib / so)], capture_output=True, text=True, check=True).stdout
        names += [l.split()[-1] for l in out.splitlines() if l.split()[1] in "TW" and l.split()[-1].startswith(("_ZN3c10", "_ZN2at"))]
    step = max(1, len(names) // count)
    chosen = names[::step][:count] + ["_ZN3c1012absent_benchEv", "_ZN2at12absent_benchEv", "_ZN3c104cuda9SetDeviceEi"]
    src = "".join(f'extern char s{i} __asm__("{n}");\n' for i, n in enumerate(chosen))
    src += "void *moe_bench_refs[] = {" + ", ".join(f"&s{i}" for i in range(len(chosen))) + "};\n"
    with tempfile.TemporaryDirectory() as tmp:
        c = Path(tmp) / "ext.c"
        c.write_text(src)
        out = site / "bench_ext" / "_C.cpython-311-x86_64-linux-gnu.so"
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(c), "-L", str(lib), "-Wl,--no-as-needed",
                        "-lc10", "-ltorch_cpu", "-Wl,-rpath,$ORIGIN/../torch/lib"], check=True)
    info = site / "bench_ext-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-ext\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"bench_ext/{out.name},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return str(out)


def remove_extension(python: Path) -> None:
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for rel in ("bench_ext", "bench_ext-1.0.dist-info"):
        shutil.rmtree(site / rel, ignore_errors=True)


def measure(python: Path, runs: int = 21) -> dict:
    target = ROOT / "moe_env" / "probe" / "target.py"
    res = subprocess.run([str(python), "-I", "-S", "-c", _MEASURE, str(target), str(runs)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def describe(m: dict) -> str:
    return (f"ELF checks alone (probe's linkage section): median {m['wall'] * 1000:.1f} ms wall, "
            f"{m['cpu'] * 1000:.1f} ms CPU (min {m['min'] * 1000:.1f} ms); {m['files_read']} shared objects read, "
            f"{m['torch_symbols']} torch symbols looked up ({m['missing']} missing); "
            f"+{m['load'] * 1000:.1f} ms to load elf.py/linkage.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path("/tmp/elfbench"))
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--symbols", type=int, default=500, help="real torch symbols the test extension needs")
    args = ap.parse_args()
    if not shutil.which("gcc") or not shutil.which("nm"):
        raise SystemExit("bench: needs gcc and nm")
    python = build_venv(args.venv)
    ext = add_extension(python, args.symbols)
    print(f"environment: torch 2.13.0+cpu ({args.venv}), test extension {ext}")
    print(describe(measure(python, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
