"""Lock speed, printed (no pass/fail): the issue's goals are
  - shipped lock (offline, end to end through the console script) under 0.2 s;
  - a fresh uv resolution within 20% of bare `uv pip compile` on the same input;
  - the pip-tools backend measured beside it.
Fresh resolutions run against a local index (tests/lock_support.py) so the figures measure the tools,
not the network. Usage: python benchmarks/lock_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from lock_support import isolated_env, serve_index, write_matrix  # noqa: E402


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def real_index(which: str, runs: int) -> None:
    """Fresh lock of a real stack against the real index: moe-env (console) vs bare uv, same input."""
    from moe_env.lock.backends import uv_command
    from moe_env.lock.inputs import lock_input
    from moe_env.matrix.loader import load_matrix
    from moe_env.resolver import resolve_stack

    project, stack = which.split("/")
    r = resolve_stack(load_matrix(), project, stack)
    inp = lock_input(r)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "requirements.in").write_text(inp.requirements_in())
        bare = uv_command(inp, "requirements.in") + ["--output-file", "out.txt"]
        subprocess.run(bare, check=True, capture_output=True, cwd=tmp)  # warm uv's cache for both
        med_bare, _ = median_time(lambda: subprocess.run(bare, check=True, capture_output=True, cwd=tmp), runs)
        flags = ["--cuda", r.target.cuda, "--python", r.target.python] + (["--model", r.variant.id] if r.variant else [])
        cli = [sys.executable, "-m", "moe_env", "lock", project, *flags, "--refresh"]
        med_cli, _ = median_time(lambda: subprocess.run(cli, check=True, capture_output=True), runs)
    print(f"real index, {which}: bare uv median {med_bare:.2f} s; `moe-env lock --refresh` median {med_cli:.2f} s "
          f"({(med_cli / med_bare - 1) * 100:+.0f}%; goal within +20%)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--real", metavar="PROJECT/STACK",
                    help="also compare against bare uv on the real index for this shipped stack (network)")
    args = ap.parse_args()
    if args.real:
        real_index(args.real, max(2, args.runs // 2))
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        env = isolated_env(tmp)
        os.environ.update(env)
        root = write_matrix(tmp / "matrix")
        proj = root / "projects" / "toymoe.toml"
        proj.write_text(proj.read_text().replace('python = "3.11"', f'python = "{py}"'))
        os.environ["MOE_ENV_MATRIX"] = str(root)
        os.environ["MOE_ENV_LOCKFILES"] = str(tmp / "lockfiles")
        with serve_index(tmp / "index") as idx:
            os.environ["MOE_ENV_INDEX_URL"] = idx.index_url
            os.environ["MOE_ENV_TORCH_INDEX"] = idx.torch_root
            from moe_env.lock import regen

            regen.main(["--project", "toymoe"])  # shipped lockfiles for the fixture's stacks

            # 1. shipped, offline, end to end (a fresh interpreter each time, as a user runs it)
            cmd = [sys.executable, "-m", "moe_env", "lock", "toymoe"]
            med, best = median_time(lambda: subprocess.run(cmd, check=True, capture_output=True), args.runs)
            print(f"shipped lock, `moe-env lock toymoe` end to end: median {med*1000:.0f} ms, best {best*1000:.0f} ms (goal < 200 ms)")
            import resource

            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            for _ in range(args.runs):
                subprocess.run(cmd, check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / args.runs
            base = [sys.executable, "-c", "pass"]
            med0, _ = median_time(lambda: subprocess.run(base, check=True), args.runs)
            print(f"  of which CPU (user+sys) per run: {cpu*1000:.0f} ms; a bare `python -c pass` takes {med0*1000:.0f} ms here")
            console = Path(sys.executable).parent / "moe-env"
            if console.exists():
                med2, best2 = median_time(lambda: subprocess.run([str(console), "lock", "toymoe"], check=True,
                                                                 capture_output=True), args.runs)
                print(f"shipped lock via the console script:            median {med2*1000:.0f} ms, best {best2*1000:.0f} ms")

            # 2. fresh uv vs bare uv on the same input
            from moe_env.lock.backends import uv_command
            from moe_env.lock.engine import lock
            from moe_env.lock.inputs import lock_input
            from moe_env.matrix.loader import load_matrix
            from moe_env.resolver import resolve

            r = resolve(load_matrix(), "toymoe", cuda="11.8")
            inp = lock_input(r)
            work = tmp / "bare"
            work.mkdir()
            (work / "requirements.in").write_text(inp.requirements_in())
            bare = uv_command(inp, "requirements.in") + ["--output-file", "out.txt"]
            subprocess.run(bare, check=True, capture_output=True, cwd=work)  # warm the cache for both
            med_bare, _ = median_time(lambda: subprocess.run(bare, check=True, capture_output=True, cwd=work), args.runs)
            med_ours, _ = median_time(lambda: lock(r, refresh=True, backend="uv"), args.runs)
            cli = [sys.executable, "-m", "moe_env", "lock", "toymoe", "--cuda", "11.8", "--refresh"]
            med_cli, _ = median_time(lambda: subprocess.run(cli, check=True, capture_output=True), args.runs)
            print(f"bare `uv pip compile --generate-hashes`:        median {med_bare*1000:.0f} ms")
            print(f"moe-env fresh lock, uv backend (in process):    median {med_ours*1000:.0f} ms "
                  f"({(med_ours / med_bare - 1) * 100:+.0f}% vs bare; goal within +20%)")
            print(f"moe-env fresh lock, uv backend (console):       median {med_cli*1000:.0f} ms "
                  f"({(med_cli / med_bare - 1) * 100:+.0f}% vs bare, interpreter start-up included)")

            # 3. pip-tools beside it
            med_pt, _ = median_time(lambda: lock(r, refresh=True, backend="pip-tools"), max(3, args.runs // 2))
            print(f"moe-env fresh lock, pip-tools backend:          median {med_pt*1000:.0f} ms "
                  f"({med_pt / med_bare:.1f}x bare uv)")
    network_cut(args.runs)
    return 0


def network_cut(runs: int) -> None:
    """How long a lock takes to say it cannot have what it needs: --offline, and an index behind a closed port."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proxy = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
        env.update({"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "ALL_PROXY": proxy, "UV_CACHE_DIR": f"{tmp}/uv",
                    "UV_NO_CONFIG": "1", "MOE_ENV_NVCC_VERSION": "none"})
        for label, argv in (("--offline, no shipped lockfile (megatron --cuda 13.0)", ["--offline"]),
                            ("index unreachable (proxy at a closed port)", [])):
            cmd = [sys.executable, "-m", "moe_env", "lock", "megatron", "--cuda", "13.0", *argv]
            med, best = median_time(lambda: subprocess.run(cmd, capture_output=True, env=env), max(3, runs // 2))
            print(f"exit 3, {label}: median {med*1000:.0f} ms, best {best*1000:.0f} ms (was 13-19 s of retries)")


if __name__ == "__main__":
    raise SystemExit(main())
