"""`moe-env build-steps PROJECT`: a runnable script that builds what no wheel serves on the target."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  moe-env build-steps minigemini                      steps for MGM's default stack
  moe-env build-steps minigemini --gpu-arch 8.0 --gpu-arch 9.0 -o build.sh
  moe-env build-steps xtuner --cuda auto              arch list from this host's GPUs
  moe-env build-steps megatron --json                 the steps as data (env, preconditions, commands, verify)

Run the script after `pip install --require-hashes -r <lockfile>`, in that environment:
  PYTHON=/path/to/venv/bin/python bash build.sh
Each step checks its preconditions first (torch as locked, nvcc's major equal to torch's CUDA major,
ninja), builds without isolation against the installed torch, then proves the build imports.
MAX_JOBS is sized from free memory when unset. Exit codes: 0 ok, 2 bad usage.
"""


def register(sub) -> None:
    from moe_env.commands.lock import add_target_args

    p = sub.add_parser(
        "build-steps",
        help="source-build script for packages with no wheel for the target",
        description="Print the exact source-build steps (environment, preconditions, commands, verification) "
                    "for the packages of a project's stack that no prebuilt wheel serves on the target.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write the script here (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing, different output file")
    p.add_argument("--json", action="store_true", help="the steps as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import sys
    from pathlib import Path

    from moe_env.build_steps import build_steps, render_script
    from moe_env.commands.lock import resolve_args
    from moe_env.lock.output import write_atomic

    resolution = resolve_args(args)
    steps = build_steps(resolution, args.gpu_arch)
    if args.json:
        text = json.dumps({"schema": "moe-env.build-steps/1", "resolution": resolution.to_dict(),
                           "steps": [s.to_dict() for s in steps]}, indent=2) + "\n"
    else:
        t = resolution.target
        title = (f"moe-env build steps: {resolution.project.name} stack {resolution.stack.id}, "
                 f"CUDA {t.cuda}, Python {t.python}, torch {t.torch or '?'}")
        text = render_script(steps, title)
    if args.output:
        changed = write_atomic(Path(args.output), text, force=args.force)
        if not args.json:
            os.chmod(args.output, os.stat(args.output).st_mode | 0o111)
        print(f"moe-env: {'wrote' if changed else 'unchanged'} {args.output} ({len(steps)} steps)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
