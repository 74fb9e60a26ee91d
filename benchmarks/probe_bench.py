"""Benchmark: the probe alone (target.py in the target interpreter + host facts), median of several runs.

    python benchmarks/probe_bench.py                       # a synthetic venv: 300 distributions + fake torch/deepspeed
    python benchmarks/probe_bench.py --python /opt/venv    # a real environment (e.g. doctor_bench.py's .venv-bench)
    python benchmarks/probe_bench.py --runs 21 --dists 1000

Prints, per environment: the bare interpreter start (`python -I -c pass`), the script's own time
(as it reports it), and probe_environment() end to end, each as the median of --runs runs. The symbols
looked up are the shipped matrix's (Matrix.api_symbols(), as doctor does), else a short built-in list.
Goal: end to end under 100 ms on a typical environment; the script itself a small part of it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SYMBOLS = [
    "deepspeed.utils.set_z3_leaf_modules",
    "deepspeed.moe.layer.MoE.__init__",
    "deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer",
    "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock",
    "transformers.deepspeed",
    "transformers.integrations.deepspeed.HfDeepSpeedConfig",
]


def matrix_symbols() -> list:
    """Every symbol the shipped matrix makes doctor look up (what a real run probes); the short list without it."""
    try:
        from moe_env.matrix.loader import load_matrix

        return load_matrix().api_symbols() or SYMBOLS
    except Exception:  # the matrix is optional here: a broken one must not stop the benchmark
        return SYMBOLS


def synthetic_venv(where: Path, n_dists: int) -> Path:
    from fakes import deepspeed_files, make_venv, torch_files

    venv = make_venv(where / "venv")
    venv.add_dist("torch", "2.1.2+cu121", requires=["filelock", "nvidia-cudnn-cu12==8.9.2.26"],
                  files=torch_files("2.1.2+cu121", "12.1", cxx11_abi=0))
    venv.add_dist("deepspeed", "0.13.2", requires=["torch", "pydantic"], files=deepspeed_files("0.13.2", True))
    body = "\n".join(f"def f{i}(a, b=1, *args, **kw):\n    return a\n" for i in range(400))
    venv.add_dist("transformers", "4.36.2", requires=["numpy>=1.17", "tokenizers<0.19,>=0.14"], files={
        "transformers/__init__.py": "from .utils import x\n" + body,
        "transformers/utils.py": "x = 1\n",
        "transformers/models/__init__.py": "",
        "transformers/models/mixtral/__init__.py": "",
        "transformers/models/mixtral/modeling_mixtral.py": body + "\n\nclass MixtralSparseMoeBlock:\n"
                                                          "    def __init__(self, config):\n        pass\n",
        "transformers/deepspeed.py": "from .integrations.deepspeed import HfDeepSpeedConfig\n",
        "transformers/integrations/__init__.py": "",
        "transformers/integrations/deepspeed.py": "class HfDeepSpeedConfig:\n    def __init__(self, config_file_or_dict):\n"
                                                  "        pass\n",
    })
    for i in range(n_dists):
        venv.add_dist(f"package-{i}", f"1.{i}.0", requires=[f"package-{(i + 1) % n_dists}>=1.0", "numpy; extra == 'np'"],
                      files={f"package_{i}/__init__.py": ""})
    return venv.python


def median_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(python: str, runs: int) -> None:
    from moe_env.probe.host import gather_host
    from moe_env.probe.runner import probe_environment, resolve_python

    python = resolve_python(python)
    symbols = matrix_symbols()

    start = median_of(runs, lambda: subprocess.run([python, "-I", "-c", "pass"], check=True))
    inner = []

    def probe():
        env = probe_environment(python, symbols)
        inner.append(env)

    total = median_of(runs, probe)
    env = inner[-1]
    host = median_of(runs, gather_host)
    script = []
    for _ in range(runs):
        out = subprocess.run([python, "-I", str(ROOT / "moe_env" / "probe" / "target.py"), *symbols],
                             capture_output=True, text=True, check=True)
        import json

        script.append(json.loads(out.stdout.strip().splitlines()[-1].split(":", 1)[1])["probe_seconds"])
    found = sum(1 for s in env.api.values() if s.found)
    print(f"environment        {python}")
    print(f"distributions      {len(env.distributions)}; symbols {len(symbols)} ({found} found); "
          f"probe_errors {len(env.probe_errors)}")
    print(f"interpreter start  {start * 1000:7.1f} ms  (python -I -c pass, median of {runs})")
    print(f"target.py itself   {statistics.median(script) * 1000:7.1f} ms  (its own clock, run as a script)")
    print(f"host facts         {host * 1000:7.1f} ms  (gather_host)")
    print(f"probe_environment  {total * 1000:7.1f} ms  (end to end, median of {runs})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", help="probe this interpreter or venv instead of a synthetic one")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--dists", type=int, default=300, help="distributions in the synthetic venv (default 300)")
    args = ap.parse_args()
    if args.python:
        bench(args.python, args.runs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        python = synthetic_venv(Path(tmp), args.dists)
        bench(str(python), args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
