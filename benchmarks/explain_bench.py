"""How fast `moe-env explain` streams a big training log: prints lines/s and MB/s.

Builds a synthetic log (ordinary DeepSpeed / trainer lines, a few known errors sprinkled in) in a
temporary folder, then times the triage over it with the shipped matrix. Usage:
    python benchmarks/explain_bench.py [MILLION_LINES]   (default 1)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from moe_env.matrix.loader import load_matrix
from moe_env.triage import Triage

LINES = [
    "[2024-02-03 10:12:05,456] [INFO] [logging.py:96:log_dist] [Rank 0] step=1200, skipped=0, lr=[1.9e-05], mom=[(0.9, 0.999)]",
    "{'loss': 1.9384, 'learning_rate': 1.99e-05, 'epoch': 0.02}",
    " iteration       10/ 1000 | consumed samples: 1280 | lm loss: 1.734215E+00 | grad norm: 1.021 |",
    "11/22 10:15:00 - mmengine - INFO - Iter(train) [  10/3000]  lr: 2.0000e-05  eta: 1:00:00  loss: 1.2345",
    "model.layers.7.mlp.experts.3.w1w3 not in state_dict, loading /models/DeepSeek-V2-Lite/model-00002-of-000004.safetensors",
]
ERROR = "AssertionError: The model has moe layers, but None of the param groups are marked as MoE."


def main() -> None:
    millions = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    n = int(millions * 1_000_000)
    matrix = load_matrix()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.log")
        with open(path, "w") as fh:
            for i in range(n):
                fh.write((ERROR if i % 250_000 == 7 else LINES[i % 4 if i % 1000 else 4]) + "\n")
        size = os.path.getsize(path)
        start = time.perf_counter()
        triage = Triage(matrix)
        with open(path, encoding="utf-8", errors="replace") as fh:
            triage.feed_all(fh)
        secs = time.perf_counter() - start
    print(f"explain: {n} lines ({size / 1e6:.0f} MB), {triage.issue_count} known issues, "
          f"{len(triage.results())} matched, {secs:.2f} s = {n / secs / 1e6:.2f} M lines/s, {size / secs / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
