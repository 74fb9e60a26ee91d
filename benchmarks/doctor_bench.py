"""Benchmark: `moe-env doctor minigemini --python ENV` against `python -m torch.utils.collect_env` on the same env.

Builds (once, reused afterwards) a venv holding torch 2.13.0 (the local CPU wheel in /opt/wheels here,
or whatever `pip install torch==2.13.0` finds), deepspeed, transformers and accelerate, then times
each command several times in fresh processes and prints the medians and their ratio.

    python benchmarks/doctor_bench.py                    # venv in ./.venv-bench, 7 runs each
    python benchmarks/doctor_bench.py --venv /tmp/env --runs 11
    python benchmarks/doctor_bench.py --moe-env "python -m moe_env"   # this checkout as it is imported here

Goal (issue 11): doctor median <= 0.1 s and at least 20x faster than collect_env, measured side by side
(interleaved runs, so both see the same background load). The matrix cache lives in a folder of the
benchmark's own (next to the venv), so other moe-env versions on the machine cannot evict it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_WHEELS = Path("/opt/wheels")


def build_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    marker = path / ".bench-ready"
    if marker.exists():
        return python
    if path.exists():
        shutil.rmtree(path)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    links = ["--find-links", str(LOCAL_WHEELS)] if LOCAL_WHEELS.is_dir() else []
    print("bench: installing torch==2.13.0 ...", file=sys.stderr)
    # the local CPU build when it is there (no multi-GB CUDA download); the index's wheel otherwise
    if LOCAL_WHEELS.is_dir() and list(LOCAL_WHEELS.glob("torch-2.13.0*.whl")):
        deps = subprocess.run(
            [str(python), "-c", "import sys, zipfile, glob; w = zipfile.ZipFile(sorted(glob.glob(sys.argv[1]))[0]); "
             "m = [n for n in w.namelist() if n.endswith('.dist-info/METADATA')][0]; "
             "print('\\n'.join(l[15:] for l in w.read(m).decode().splitlines() if l.startswith('Requires-Dist: ') "
             "and 'extra ==' not in l))", str(LOCAL_WHEELS / "torch-2.13.0*.whl")],
            capture_output=True, text=True, check=True).stdout.split("\n")
        # torch's own requirements from the index (CUDA libraries excluded by their markers on a CPU wheel)
        subprocess.run(pip + [d for d in deps if d.strip()], check=True)
        subprocess.run(pip + ["--no-index", *links, "torch==2.13.0"], check=True)
    else:
        subprocess.run(pip + ["torch==2.13.0"], check=True)
    print("bench: installing deepspeed, transformers, accelerate ...", file=sys.stderr)
    # --no-deps: doctor reads their files and metadata (their missing requirements become findings, as they
    # would for a user); deepspeed is sdist-only and imports torch while building, so no build isolation
    subprocess.run(pip + ["setuptools", "wheel"], check=True)
    subprocess.run(pip + ["--no-deps", "--no-build-isolation", "deepspeed", "transformers", "accelerate"], check=True,
                   env={**os.environ, "DS_BUILD_OPS": "0"})
    marker.write_text("ok\n")
    return python


def build_tool(path: Path) -> Path:
    """moe-env installed as a user installs it (a wheel of this checkout, not the editable install), reinstalled
    on every run so it measures the current code: an editable install's import hook alone costs ~13 ms."""
    python = path / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run(pip + ["setuptools>=64", "wheel", "packaging>=22"], check=True)
    subprocess.run(pip + ["--no-deps", "--no-build-isolation", "--force-reinstall", str(ROOT)], check=True,
                   capture_output=True)
    return path / "bin" / "moe-env"


def time_runs(cmd, runs: int, env=None):
    """Wall-clock seconds of each run, and CPU seconds (user+sys of the command and its children).

    CPU time is printed too because wall time on a shared, loaded machine mostly measures the others.
    """
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        if res.returncode not in (0, 1):
            raise SystemExit(f"bench: {' '.join(cmd)} exited {res.returncode}:\n{res.stderr[-2000:]}")
    return times, cpu


def print_elf_checks(python: Path) -> None:
    """The ELF checks alone (the probe's linkage section), on this venv with a test-built torch extension (elf_bench.py)."""
    import shutil as _shutil

    if not (_shutil.which("gcc") and _shutil.which("nm")):
        print("ELF checks alone: skipped (needs gcc and nm to build the test extension)")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import elf_bench

    elf_bench.add_extension(python, 200)
    try:
        print(elf_bench.describe(elf_bench.measure(python)))
    finally:
        elf_bench.remove_extension(python)  # the doctor runs above judge the venv as built


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-bench", help="where to build (or reuse) the environment")
    ap.add_argument("--runs", type=int, default=7, help="runs of each command (median reported)")
    ap.add_argument("--moe-env", default=None,
                    help="moe-env command (default: the console script of a wheel of this checkout, in ./.venv-bench-tool)")
    args = ap.parse_args()

    python = build_venv(args.venv)
    versions = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                              capture_output=True, text=True).stdout
    wanted = ("torch", "deepspeed", "transformers", "accelerate")
    print("environment: " + ", ".join(l for l in versions.split() if l.split("==")[0].lower() in wanted))

    moe_env = args.moe_env.split() if args.moe_env else [str(build_tool(ROOT / ".venv-bench-tool"))]
    print(f"moe-env: {' '.join(moe_env)}")
    # An installed moe-env has bytecode (pip compiles it, as it did torch's); this sandbox sets
    # PYTHONDONTWRITEBYTECODE, which would make every timed run recompile moe-env from source.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["NO_COLOR"] = "1"
    env["MOE_ENV_CACHE_DIR"] = str(args.venv.resolve() / "moe-env-cache")
    doctor = moe_env + ["doctor", "minigemini", "--python", str(python), "--json"]
    collect = [str(python), "-m", "torch.utils.collect_env"]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    time_runs(doctor, 1, env)  # warm the page cache (and moe-env's matrix cache) before timing
    time_runs(collect, 1, env)
    cold, cold_cpu = time_runs(doctor, 3, {**env, "MOE_ENV_NO_CACHE": "1"})  # every run parses the TOML matrix
    # interleaved, so both see the same background load
    d, dc, c, cc = [], [], [], []
    for _ in range(args.runs):
        w, u = time_runs(doctor, 1, env)
        d += w
        dc += u
        w, u = time_runs(collect, 1, env)
        c += w
        cc += u
    dm, cm = statistics.median(d), statistics.median(c)
    print(f"load average before: {load}")
    print(f"moe-env doctor minigemini --json: median {dm * 1000:.0f} ms wall (min {min(d) * 1000:.0f}, max {max(d) * 1000:.0f}), "
          f"{statistics.median(dc) * 1000:.0f} ms CPU, over {args.runs} runs")
    print(f"  without the matrix cache (MOE_ENV_NO_CACHE=1): median {statistics.median(cold) * 1000:.0f} ms wall, "
          f"{statistics.median(cold_cpu) * 1000:.0f} ms CPU, over 3 runs")
    print(f"torch.utils.collect_env:   median {cm * 1000:.0f} ms wall (min {min(c) * 1000:.0f}, max {max(c) * 1000:.0f}), "
          f"{statistics.median(cc) * 1000:.0f} ms CPU, over {args.runs} runs")
    print(f"ratio: doctor is {cm / dm:.1f}x faster by wall time, {statistics.median(cc) / statistics.median(dc):.1f}x by CPU time "
          "(goal: <= 100 ms and >= 20x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_elf_checks(python)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
