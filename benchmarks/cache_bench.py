"""How long the matrix takes to load: from the TOML files (validated), and from the per-user JSON Lines cache.

The cache replaced a pickle (issue 16: a planted pickle ran code); this prints what reading plain JSON
back into the typed dataclasses costs, so the doctor path's budget can be judged. Not a test.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fn, runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    from moe_env.matrix import cache, loader

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MOE_ENV_CACHE_DIR"] = folder
        os.environ.pop("MOE_ENV_NO_CACHE", None)
        cache.load_matrix_cached()  # write it once
        hit = median_ms(cache.load_matrix_cached)
        # what a command that reads everything pays: the deferred sections (known issues, rules) as well
        def everything():
            m = cache.load_matrix_cached()
            return m.known_issues, m.cuda_images, [(p.rules, p.known_issues, p.entry_points) for p in m.projects.values()]

        full = median_ms(everything)
        size = sum(p.stat().st_size for p in Path(folder).glob("matrix-*.jsonl"))
        fresh = median_ms(lambda: loader._load(loader.matrix_root()), runs=10)
    print(f"matrix from TOML (parse + validate): {fresh:7.1f} ms median")
    print(f"matrix from the JSON Lines cache:    {hit:7.1f} ms median  ({size / 1024:.0f} KiB cache file; what doctor reads)")
    print(f"  ... with every deferred section:   {full:7.1f} ms median")


if __name__ == "__main__":
    main()
