"""`moe-env lock PROJECT`: a hash-pinned lockfile of the known-good stack for the target.

The shipped lockfile of the stack when one covers the target (offline); else, or with `--refresh` or
`--format pylock`, a fresh resolution through uv (default) or pip-tools, announced on stderr. Either way
doctor's checks judge it for the host first (moe_env.lock.gate), and `--offline` never resolves.
"""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  moe-env lock minigemini                      MGM-8x7B's shipped lockfile (offline), judged by doctor for this host
  moe-env lock minigemini --model 8x7b -o requirements.lock
  moe-env lock moe-llava --cuda 11.8           torch's cu118 build from the PyTorch index (fresh resolution, network)
  moe-env lock xtuner --cuda auto              the stack and CUDA build this host's driver, GPUs and nvcc pass
  moe-env lock megatron --cuda 13.0 --offline  exit 3 at once: names the lockfiles that ship and the command to resolve
  MOE_ENV_GPUS=V100x8 moe-env lock mgm         judge for other GPUs (refused: MGM-8x7B trains in bf16)
  moe-env lock mgm --refresh --backend pip-tools
  moe-env lock mgm --refresh --format pylock -o pylock.toml
  moe-env lock mgm --explain                   which stack and why, which GPUs it serves, doctor's findings
  moe-env lock mgm --json                      the resolution, findings, lockfile text and build steps as JSON

Without a shipped lockfile for the target (or with --refresh / --format pylock) lock says so on stderr
and resolves online; an unreachable index fails in seconds (exit 3). Before it writes, lock judges the
lockfile as doctor --from-lock would on this host (probed, or stated with MOE_ENV_GPUS,
MOE_ENV_CUDA_DRIVER_VERSION, MOE_ENV_NVCC_VERSION=X.Y|none; --build defers driver and GPUs): a stack
doctor fails is passed over; when none passes it exits 1 with doctor's finding and writes nothing.
Install with `pip install --require-hashes -r FILE` (its header names the PyTorch index when torch is a
+cuXXX build), then run `moe-env build-steps PROJECT ...` for the packages the header names.
Configuration: MOE_ENV_TORCH_INDEX (PyTorch index root), MOE_ENV_INDEX_URL (main index; default: the
backend's own). Exit codes: 0 ok, 1 refused or no versions satisfy the stack, 2 bad usage, 3 network.
"""


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT", help="minigemini, moe-llava, megatron, xtuner (or an alias)")
    p.add_argument("--model", "-m", metavar="VARIANT", help="model variant (default: the project's MoE variants)")
    p.add_argument("--cuda", metavar="X.Y|cpu|auto",
                   help="CUDA build of torch (default: the stack's; auto: from this host's driver and GPUs)")
    p.add_argument("--python", metavar="X.Y|PATH",
                   help="target CPython minor, or an interpreter whose minor to use (default: the stack's)")
    p.add_argument("--gpu-arch", action="append", metavar="CC",
                   help="compute capability the build must carry, e.g. 8.0 or sm_90 (repeatable; default: the host's GPUs with --cuda auto)")


def register(sub) -> None:
    p = sub.add_parser(
        "lock",
        help="hash-pinned lockfile of a known-good stack (shipped ones offline), judged by doctor for the host",
        description="Emit a hash-pinned, requirements-style lockfile of the known-good stack for a project, "
                    "model variant and target (CUDA build, Python).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(p)
    p.add_argument("--format", choices=["requirements", "pylock"], default="requirements",
                   help="requirements.txt (default) or PEP 751 pylock.toml (fresh resolution through uv)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing, different output file")
    p.add_argument("--refresh", action="store_true", help="resolve afresh against the index instead of the shipped lockfile")
    p.add_argument("--offline", action="store_true",
                   help="never touch the network: a shipped lockfile or exit 3 naming those that ship")
    p.add_argument("--build", action="store_true",
                   help="judge for a Docker build: the driver and GPU checks are deferred to the node")
    p.add_argument("--backend", choices=["uv", "pip-tools"], default="uv", help="resolver for fresh lockfiles (default uv)")
    p.add_argument("--index-url", metavar="URL", help="main package index (default: the backend's own configuration)")
    p.add_argument("--torch-index", metavar="URL", help="root of the PyTorch index holding +cuXXX builds")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds a fresh resolution may take (600)")
    p.add_argument("--explain", action="store_true", help="say which stack fits and why; lock nothing")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.set_defaults(func=run)


def resolve_args(args):
    """Shared by lock and build-steps: load the matrix, read the host when asked, resolve."""
    from moe_env.matrix.cache import load_matrix_cached
    from moe_env.resolver import resolve

    matrix = load_matrix_cached()  # the validated matrix, pickled per user: `lock` answers in well under 0.2 s
    if args.python and ("/" in args.python or args.python.startswith("python")):
        args.python = interpreter_minor(args.python)
    env = None
    if args.cuda == "auto":
        from moe_env.lock.host import host_environment

        env = host_environment()
    return resolve(matrix, args.project, variant=args.model, cuda=args.cuda, python=args.python, env=env,
                   gpu_archs=args.gpu_arch)


def interpreter_minor(python: str) -> str:
    """`--python /opt/venv/bin/python`: the target interpreter's CPython minor, asked with -I."""
    import shutil
    import subprocess

    from moe_env.errors import UsageError

    exe = python if "/" in python else shutil.which(python)
    if not exe:
        raise UsageError(f"--python {python}: no such interpreter on PATH")
    try:
        out = subprocess.run([exe, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--python {python}: cannot run it ({exc})") from None
    if out.returncode != 0 or not out.stdout.strip():
        raise UsageError(f"--python {python}: cannot run it (exit {out.returncode})")
    return out.stdout.strip()


def explain_text(resolution, steps, shipped, why_fresh=None, findings=()) -> str:
    from moe_env.resolver import gpu_coverage

    r, t = resolution, resolution.target
    lines = [
        f"project  {r.project.name} ({r.project.info.title})",
        f"variant  {r.variant.id if r.variant else 'default: ' + ', '.join(v.id for v in r.project.moe_variants())}",
        f"stack    {r.stack.id}",
        f"target   CUDA {t.cuda}, Python {t.python}, torch {t.torch or '?'}"
        + (f" from the PyTorch index ({t.torch_index})" if t.torch_index else ""),
        f"lockfile {'shipped: ' + str(shipped) if shipped else 'fresh resolution needed (network): ' + (why_fresh or '')}",
    ]
    lines += [f"gpus     {x.replace('GPUs: ', '', 1)}" for x in gpu_coverage(r)]
    lines.append("why:")
    lines += [f"  - {x}" for x in r.reasons]
    lines.append("pins:")
    lines += [f"  {k}=={v}" for k, v in r.stack.pins.items()]
    if steps:
        lines.append("source builds after install (moe-env build-steps):")
        lines += [f"  - {s.package} {s.version}: {s.reason}" for s in steps]
    if findings:
        lines.append("doctor on this host (as if this lock were installed):")
        lines += [f"  - {f.severity} {f.id}: {f.title}" for f in findings]
    lines.append("sources:")
    lines += [f"  - {s}" for s in r.stack.source]
    return "\n".join(lines) + "\n"


def lock_host(args):
    """The host the lock is judged for, as doctor --from-lock sees it (moe_env.lock.as_env.target_host)."""
    from moe_env.lock.as_env import target_host

    return target_host(bool(getattr(args, "build", False)))


def fresh_reason(resolution, args, shipped):
    """Why this lock needs the network (None when a shipped lockfile answers)."""
    r, t, s = resolution, resolution.target, resolution.stack
    if args.refresh:
        return "--refresh asks for a fresh resolution"
    if args.format != "requirements":
        return "--format pylock: the shipped lockfiles are requirements files"
    if shipped is not None:
        return None
    from moe_env.lock.shipped import shipped_lockfile

    if not r.native and shipped_lockfile(r.project.name, s) is not None:
        return (f"the target (CUDA {t.cuda}, Python {t.python}) is not stack {s.id}'s own (CUDA {s.cuda}, "
                f"Python {s.python}), whose lockfile ships")
    if t.torch_index:
        return f"stack {s.id} takes torch {t.torch} from the PyTorch index ({t.torch_index}); lockfiles ship only for default-index stacks"
    return f"no lockfile ships for stack {s.id}"


def shipped_list(resolution) -> str:
    from moe_env.lock.shipped import shipped_lockfile

    p = resolution.project
    ways = [f"{s.id} (`moe-env lock {p.name}" + (f" --model {s.variants[0]}" if s.variants else "") + f" --cuda {s.cuda}`)"
            for s in p.stacks if shipped_lockfile(p.name, s)]
    return "; ".join(ways) or "none"


def run(args) -> int:
    import json
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from moe_env.build_steps import build_steps
    from moe_env.errors import NetworkError
    from moe_env.lock.engine import command_line, lock
    from moe_env.lock.gate import check_text, choose, errors
    from moe_env.lock.output import write_atomic
    from moe_env.lock.shipped import shipped_lockfile
    from moe_env.matrix.cache import load_matrix_cached
    from moe_env.term import Progress

    matrix = load_matrix_cached()
    if args.python and ("/" in args.python or args.python.startswith("python")):
        args.python = interpreter_minor(args.python)
    host = lock_host(args)
    env = SimpleNamespace(host=host) if args.cuda == "auto" else None
    usable = None
    if args.offline and not args.refresh and args.format == "requirements":
        def usable(r):
            return r.native and shipped_lockfile(r.project.name, r.stack) is not None
    judged = choose(matrix, args.project, host, variant=args.model, cuda=args.cuda, python=args.python, env=env,
                    gpu_archs=args.gpu_arch, usable=usable)
    resolution = judged.resolution
    live = None
    if args.refresh and not args.explain and not args.offline:
        # the live release-asset check runs beside the resolution, not after it
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1)
        live = pool.submit(build_steps, resolution, args.gpu_arch, True)
        pool.shutdown(wait=False)
        steps = []
    else:
        steps = build_steps(resolution, args.gpu_arch)
    shipped = shipped_lockfile(resolution.project.name, resolution.stack) if resolution.native else None
    why_fresh = fresh_reason(resolution, args, shipped)
    if args.explain:
        if args.json:
            print(json.dumps({"schema": "moe-env.lock/1", "resolution": resolution.to_dict(),
                              "shipped": str(shipped) if shipped else None, "fresh_reason": why_fresh,
                              "findings": [f.to_dict() for f in judged.findings],
                              "build_steps": [s.to_dict() for s in steps]}, indent=2))
        else:
            sys.stdout.write(explain_text(resolution, steps, shipped, why_fresh, judged.findings))
        return 0
    if why_fresh and args.offline:
        raise NetworkError(
            f"--offline: {resolution.stack.id} needs a fresh resolution ({why_fresh}); lockfiles ship for "
            f"{resolution.project.name}: {shipped_list(resolution)} (all projects: `moe-env matrix list`); "
            f"resolve this one online with `{command_line(resolution, '--refresh' if args.refresh else '')}`"
        )
    if why_fresh and not args.json:
        print(f"moe-env: resolving {resolution.stack.id} online with {args.backend} ({why_fresh})", file=sys.stderr)
    progress = Progress(quiet=args.json)
    if why_fresh:
        progress.say(f"resolving {resolution.stack.id} afresh with {args.backend} ...")
    result = lock(resolution, refresh=args.refresh, backend=args.backend, fmt=args.format,
                  index_url=args.index_url, torch_index=args.torch_index, timeout=args.timeout)
    findings = check_text(matrix, resolution, result.text,
                          "pylock.toml" if args.format == "pylock" else "requirements.txt", host)
    if live is not None:
        steps = live.result()
    wrote = None
    if args.output:
        changed = write_atomic(Path(args.output), result.text, force=args.force)
        wrote = str(args.output)
        if not args.json:
            state = "wrote" if changed else "unchanged"
            print(f"moe-env: {state} {args.output} (stack {resolution.stack.id}, {result.origin})", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "schema": "moe-env.lock/1",
            "resolution": resolution.to_dict(),
            "origin": result.origin,
            "format": result.format,
            "shipped": str(result.shipped) if result.shipped else None,
            "fresh_reason": why_fresh,
            "output": wrote,
            "backend_seconds": round(result.seconds, 3),
            "excluded": result.excluded,
            "findings": [f.to_dict() for f in findings],
            "build_steps": [s.to_dict() for s in steps],
            "text": result.text,
        }, indent=2))
        return 0
    if not args.output:
        sys.stdout.write(result.text)
    _say_findings(findings, args, host)
    if steps:
        names = "; ".join(f"{s.package} {s.version}".strip() + (f" ({s.summary})" if s.summary else "") for s in steps)
        t = resolution.target
        cmd = (f"moe-env build-steps {resolution.project.name}" + (f" --model {resolution.variant.id}" if resolution.variant else "")
               + f" --cuda {t.cuda} --python {t.python}")
        print(f"moe-env: after installing, run the build steps ({cmd}): {names}", file=sys.stderr)
    assert not errors(findings)
    return 0


def _say_findings(findings, args, host) -> None:
    """doctor's warnings (and, for --cuda auto, what it could not see) about this lock on this host, on stderr."""
    import sys

    from moe_env.untrusted import printable

    for f in findings:
        if f.severity == "warning" or (args.cuda == "auto" and f.id in ("host.no-driver",)):
            print(printable(f"moe-env: doctor on this host: {f.severity} {f.id}: {f.title} ({f.seen})"), file=sys.stderr)
