"""Time `moe-env diff` over 1,000 node reports (goal: under 1 s).

The template is a real `moe-env doctor --json` of this interpreter's environment, padded to a
training environment's size (--packages); 1,000 copies are
written to a folder, a few with drift (another deepspeed, another driver), and the diff is timed
in-process (read + parse + group) and end to end through the CLI. Prints the figures.

    python benchmarks/fleet_bench.py [--nodes 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packages", type=int, default=250,
                        help="pad each report to this many distributions (a CUDA training env has ~200-300)")
    args = parser.parse_args()

    env = {**os.environ, "MOE_ENV_CUDA_DRIVER_VERSION": "550.54.15", "MOE_ENV_GPUS": "H100:9.0x8"}
    proc = subprocess.run([sys.executable, "-m", "moe_env", "doctor", "--json"], capture_output=True, text=True, env=env)
    template = json.loads(proc.stdout)
    dists = template["environment"]["distributions"]
    for i in range(len(dists), args.packages):
        dists[f"padding-package-{i}"] = {"name": f"padding-package-{i}", "version": f"1.{i}.0",
                                         "requires": ["numpy>=1.20", "typing-extensions; python_version < '3.10'"],
                                         "location": "/opt/venv/lib/python3.11/site-packages", "installer": "pip", "metadata_error": None}
    text = json.dumps(template, indent=2)
    size = len(text)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "reports"
        folder.mkdir()
        for i in range(args.nodes):
            doc = json.loads(text)
            doc["environment"]["host"]["hostname"] = f"gpu{i:04d}"
            if i % 97 == 5:
                doc["environment"]["distributions"].setdefault("deepspeed", {"name": "deepspeed", "version": "0"})["version"] = "0.14.5"
            if i % 211 == 7:
                doc["environment"]["host"]["driver_version"] = "535.104.05"
            (folder / f"gpu{i:04d}.json").write_text(json.dumps(doc, indent=2))

        from moe_env import fleet

        in_process = []
        for _ in range(args.runs):
            start = time.perf_counter()
            result = fleet.diff_reports(fleet.read_reports([str(folder)]))
            in_process.append(time.perf_counter() - start)
        cli = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "moe_env", "diff", str(folder), "--json"], capture_output=True)
            cli.append(time.perf_counter() - start)

    print(f"reports: {args.nodes} x {size / 1024:.0f} KiB ({len(template['environment']['distributions'])} distributions each)")
    print(f"drift found: {len(result.drifts)} facts, {len(result.mattering)} that matter")
    print(f"diff in-process: median {statistics.median(in_process):.3f} s (min {min(in_process):.3f})")
    print(f"diff CLI end to end: median {statistics.median(cli):.3f} s (min {min(cli):.3f})")
    text = fleet.render_text(result)
    print(f"text report: {len(text.splitlines())} lines for {args.nodes} nodes; last: {text.splitlines()[-1][:100]}")
    verdict = ("met" if statistics.median(cli) < 1.0 else "NOT met") if args.nodes >= 1000 else f"not judged ({args.nodes} reports)"
    print(f"goal: < 1 s for 1,000 reports -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
