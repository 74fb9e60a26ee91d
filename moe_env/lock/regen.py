"""Maintainer tool: regenerate the shipped lockfiles from the real index.

    python -m moe_env.lock.regen                      every stack of every project in compat_matrix/
    python -m moe_env.lock.regen --project minigemini --stack mgm-8x7b-cu121
    python -m moe_env.lock.regen --check              re-resolve and compare pins; write nothing

Writes lockfiles/<project>/<stack id>/requirements.txt (into MOE_ENV_LOCKFILES when set), replacing
what is there; a stack that fails to resolve is reported and skipped (exit 1 at the end). Rerun it
whenever a stack is added or changed; commit the files with the matrix change.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional


def _pins(text: str) -> dict:
    from moe_env.checks.lockfile import parse_lockfile

    return {n: str(p.requirement.specifier) for n, p in parse_lockfile(text, "lock").pins.items()}


def main(argv: Optional[List[str]] = None) -> int:
    from moe_env.errors import MoeEnvError
    from moe_env.lock.engine import lock
    from moe_env.lock.output import write_atomic
    from moe_env.lock.shipped import shipped_lockfile, shipped_path
    from moe_env.matrix.loader import load_matrix
    from moe_env.resolver import resolve_stack

    ap = argparse.ArgumentParser(prog="python -m moe_env.lock.regen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", action="append", help="only these projects (repeatable)")
    ap.add_argument("--stack", action="append", help="only these stack ids (repeatable)")
    ap.add_argument("--backend", choices=["uv", "pip-tools"], default="uv")
    ap.add_argument("--check", action="store_true", help="re-resolve and compare pins with the shipped files; write nothing")
    ap.add_argument("--missing", action="store_true", help="only stacks without a shipped lockfile")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)

    matrix = load_matrix()
    failures = 0
    done = 0
    for pname in sorted(matrix.projects):
        if args.project and pname not in args.project:
            continue
        project = matrix.projects[pname]
        for stack in project.stacks:
            if args.stack and stack.id not in args.stack:
                continue
            existing = shipped_lockfile(pname, stack)
            if args.missing and existing:
                continue
            start = time.perf_counter()
            try:
                r = resolve_stack(matrix, pname, stack.id)
                result = lock(r, refresh=True, backend=args.backend, timeout=args.timeout,
                              command=f"python -m moe_env.lock.regen --project {pname} --stack {stack.id}")
                secs = time.perf_counter() - start
                if args.check:
                    if existing is None:
                        print(f"MISSING {pname}/{stack.id}: no shipped lockfile")
                        failures += 1
                        continue
                    old, new = _pins(existing.read_text(encoding="utf-8")), _pins(result.text)
                    drift = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
                    stack_pins = {n.lower() for n in stack.pins}
                    key = [n for n in drift if n in stack_pins]
                    state = "DRIFT " if key else "ok    "
                    failures += bool(key)
                    print(f"{state} {pname}/{stack.id}: {len(new)} pins, {len(drift)} transitive changes"
                          + (f", stack pins changed: {', '.join(key)}" if key else "") + f" ({secs:.1f} s)")
                    continue
                path = shipped_path(pname, stack)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, result.text, force=True)
                print(f"wrote   {path} ({len(_pins(result.text))} pins, {secs:.1f} s)")
                done += 1
            except MoeEnvError as exc:
                failures += 1
                print(f"FAILED  {pname}/{stack.id}: {exc}", file=sys.stderr)
    if not args.check:
        print(f"{done} lockfiles written, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
