"""How long `doctor --code` adds to doctor: a generated 50,000-line checkout with 2,000 library references.

Goal: under 1 s on top of doctor. Prints the collector's time, the probe's time with and without the
code's names (one probe run each, as doctor makes), the judge's time, and the sum of the added parts.

    python benchmarks/code_bench.py [--lines 50000] [--refs 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes import deepspeed_files, make_venv  # noqa: E402

_LIB_NAMES = [f"fn{i}" for i in range(150)]


def _library_files() -> dict:
    """A transformers-like library: 150 functions across modules, re-exported from the package."""
    files = {"fakelib/__init__.py": "".join(f"from .mod{i % 10} import fn{i}\n" for i in range(150))}
    for m in range(10):
        body = "".join(f"def fn{i}(a, b=None, *, c=1, d=2):\n    return a\n\n\n" for i in range(150) if i % 10 == m)
        files[f"fakelib/mod{m}.py"] = body + "class Base:\n    def step(self, x, y=None):\n        pass\n"
    return files


def generate(root: Path, lines: int, refs: int) -> None:
    rng = random.Random(0)
    files = max(1, lines // 250)
    per_file = max(1, refs // files)
    for n in range(files):
        out = ["import os", "import deepspeed", "import fakelib", "from fakelib.mod0 import Base", ""]
        out += [f"class Model{n}(Base):", "    def step(self, x, y=None):", "        return super().step(x, y)", ""]
        used = 0
        while len(out) < 244:
            if used < per_file:
                name = rng.choice(_LIB_NAMES)
                kw = rng.choice(["", ", c=3", ", d=4", ", e=5"])
                out += [f"def f{len(out)}(x):", f"    y = fakelib.{name}(x{kw})", "    return y", ""]
                used += 1
            else:
                out += [f"def g{len(out)}(x):", "    total = 0", "    for i in range(x):",
                        "        total += i * 2", "    return os.path.join(str(total), 'a')", ""]
        out += ["# padding"] * (250 - len(out))
        path = root / f"pkg{n % 20}" / f"m{n}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(out) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50000)
    ap.add_argument("--refs", type=int, default=2000)
    opts = ap.parse_args()

    from moe_env.code.collect import collect
    from moe_env.code.judge import judge, probe_request
    from moe_env.matrix.cache import load_matrix_cached
    from moe_env.probe.runner import probe_environment

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        venv = make_venv(tmp_path / "venv")
        venv.add_dist("deepspeed", "0.13.1", files=deepspeed_files("0.13.1", z3_leaf=True))
        venv.add_dist("fakelib", "1.0", files=_library_files())
        code = tmp_path / "checkout"
        generate(code, opts.lines, opts.refs)
        matrix = load_matrix_cached()

        t0 = time.perf_counter()
        scan = collect(str(code))
        t_collect = time.perf_counter() - t0

        best_plain = best_code = float("inf")
        env = None
        for _ in range(3):
            t0 = time.perf_counter()
            probe_environment(str(venv.python))
            best_plain = min(best_plain, time.perf_counter() - t0)
            t0 = time.perf_counter()
            env = probe_environment(str(venv.python), code=probe_request(scan))
            best_code = min(best_code, time.perf_counter() - t0)

        t0 = time.perf_counter()
        result = judge(scan, env, matrix)
        t_judge = time.perf_counter() - t0

    added = t_collect + max(0.0, best_code - best_plain) + t_judge
    print(f"checkout: {scan.files} files, {scan.lines} lines, {len(scan.uses)} library references "
          f"({len(scan.symbols())} distinct names)")
    print(f"collect (ast, no import):        {t_collect * 1000:8.1f} ms")
    print(f"probe without / with the names:  {best_plain * 1000:8.1f} / {best_code * 1000:.1f} ms")
    print(f"judge:                           {t_judge * 1000:8.1f} ms "
          f"({len(result.findings)} findings, {result.judged} judged, {len(result.not_judged)} not judged)")
    print(f"added to doctor:                 {added * 1000:8.1f} ms  (goal: < 1000 ms)")
    return 0 if added < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
