"""How fast `moe-env explain` streams a big training log: prints lines/s and MB/s.

Builds a synthetic log (ordinary DeepSpeed / trainer / Megatron / XTuner lines, a few known errors and a
traceback sprinkled in) in a temporary folder, then times the triage over it with the shipped matrix,
and again with the matrix padded with synthetic generic known issues up to PATTERNS patterns (default
250), to show the scan does not grow with the number of patterns. Usage:
    python benchmarks/explain_bench.py [MILLION_LINES] [PATTERNS]   (defaults 1 and 250)
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time

from moe_env.matrix.loader import load_matrix
from moe_env.matrix.model import KnownIssue
from moe_env.triage import Triage

LINES = [
    "[2024-02-03 10:12:05,456] [INFO] [logging.py:96:log_dist] [Rank 0] step=1200, skipped=0, lr=[1.9e-05], mom=[(0.9, 0.999)]",
    "{'loss': 1.9384, 'learning_rate': 1.99e-05, 'epoch': 0.02}",
    " iteration       10/ 1000 | consumed samples: 1280 | lm loss: 1.734215E+00 | grad norm: 1.021 |",
    "11/22 10:15:00 - mmengine - INFO - Iter(train) [  10/3000]  lr: 2.0000e-05  eta: 1:00:00  loss: 1.2345",
    "model.layers.7.mlp.experts.3.w1w3 not in state_dict, loading /models/DeepSeek-V2-Lite/model-00002-of-000004.safetensors",
]
ERROR = "AssertionError: The model has moe layers, but None of the param groups are marked as MoE."
TRACEBACK = [
    "[rank3]: Traceback (most recent call last):",
    '[rank3]:   File "/work/train.py", line 13, in <module>',
    "[rank3]:     import flash_attn_2_cuda",
    "[rank3]: ImportError: /venv/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
]


def padded(matrix, patterns: int):
    """A copy of the matrix with synthetic generic issues (distinct literals) up to `patterns` patterns."""
    m = copy.copy(matrix)
    m.known_issues = list(matrix.known_issues)
    have = sum(len(i.patterns) for i in m.known_issues) + sum(len(i.patterns) for p in m.projects.values() for i in p.known_issues)
    n = 0
    while have < patterns:
        word = "".join(chr(ord("a") + (n // 26 ** k) % 26) for k in range(3))
        m.known_issues.append(KnownIssue(
            id=f"synthetic-{n}", title="synthetic", cause="c", fix="f", source=["o/r#1"],
            patterns=[rf"Synthetic{word.title()}Error: the {word} backend failed \(code \d+\)",
                      rf"{word}_kernel\.cu:\d+: {word} launch failed"]))
        have += 2
        n += 1
    return m


def run(matrix, path: str):
    start = time.perf_counter()
    triage = Triage(matrix)
    with open(path, encoding="utf-8", errors="replace") as fh:
        triage.feed_all(fh)
    return time.perf_counter() - start, triage


def main() -> None:
    millions = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    target = int(sys.argv[2]) if len(sys.argv) > 2 else 250
    n = int(millions * 1_000_000)
    matrix = load_matrix()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.log")
        with open(path, "w") as fh:
            for i in range(n):
                if i % 250_000 == 7:
                    fh.write(ERROR + "\n")
                elif i % 400_000 == 9:
                    fh.write("\n".join(TRACEBACK) + "\n")
                else:
                    fh.write(LINES[i % 4 if i % 1000 else 4] + "\n")
        size = os.path.getsize(path)
        for label, m in (("shipped matrix", matrix), (f"padded to {target} patterns", padded(matrix, target))):
            secs, triage = run(m, path)
            print(f"explain ({label}): {n} lines ({size / 1e6:.0f} MB), {triage.issue_count} known issues, "
                  f"{triage.pattern_count} patterns, {len(triage.results())} matched, {triage.tracebacks} tracebacks, "
                  f"{secs:.2f} s = {n / secs / 1e6:.2f} M lines/s, {size / secs / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
