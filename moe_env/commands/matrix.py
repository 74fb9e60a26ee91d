"""`moe-env matrix`: read, validate and maintain the compatibility matrix (compat_matrix/)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

from moe_env.errors import UsageError

EPILOG = """\
examples:
  moe-env matrix list                               projects, their variants and known-good stacks
  moe-env matrix show minigemini                    everything the matrix knows about one project
  moe-env matrix validate                           load every file, check sources, stacks and kinds
  moe-env matrix api set_z3_leaf_modules            which deepspeed releases have it
  moe-env matrix api deepspeed.moe.layer.MoE.__init__ --param top2_2nd_expert_sampling
  moe-env matrix scan-deepspeed 0.12.6 0.13.0 0.14.5   read real sdists, print the API table
  moe-env matrix scan-deepspeed --since 0.9.0 --write compat_matrix/packages/deepspeed.toml

exit codes: 0 ok; 1 validate found problems; 2 bad usage or a matrix file that does not load;
3 network failure (scan-deepspeed)
"""


def register(sub) -> None:
    p = sub.add_parser(
        "matrix",
        help="list, show, validate and maintain the compatibility matrix",
        description="Read the compatibility matrix (compat_matrix/, or MOE_ENV_MATRIX), check it, and "
        "regenerate deepspeed's API table from real releases.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_no_action, _parser=p)
    msub = p.add_subparsers(dest="matrix_command", metavar="ACTION", parser_class=type(p))

    def add(name: str, help_: str, epilog: str = "") -> argparse.ArgumentParser:
        q = msub.add_parser(name, help=help_, description=help_, epilog=epilog or None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        q.add_argument("--matrix", metavar="DIR", help="a compat_matrix folder other than the shipped one")
        return q

    q = add("list", "projects, their variants and known-good stacks",
            "example:\n  moe-env matrix list --json | jq '.projects[].stacks[].id'")
    q.set_defaults(func=run_list)

    q = add("show", "everything the matrix knows about one project",
            "examples:\n  moe-env matrix show mgm\n  moe-env matrix show xtuner --json")
    q.add_argument("project", metavar="PROJECT", help="project name or alias (see `moe-env matrix list`)")
    q.set_defaults(func=run_show)

    q = add("validate", "load every matrix file and check it: sources, stacks against platform facts, kinds",
            "exit 0 when clean, 1 when a stack contradicts the facts or a kind is unknown,\n"
            "2 when a file does not load (the message names file and key).\n\n"
            "example:\n  MOE_ENV_MATRIX=./my_matrix moe-env matrix validate")
    q.set_defaults(func=run_validate)

    q = add("api", "which releases of a package have a symbol (or one of its parameters), per the API table",
            "examples:\n  moe-env matrix api deepspeed.utils.set_z3_leaf_modules\n"
            "  moe-env matrix api set_z3_leaf_modules          (a unique suffix is enough)\n"
            "  moe-env matrix api MoE.__init__ --param top2_2nd_expert_sampling")
    q.add_argument("symbol", metavar="SYMBOL", help="dotted symbol, or a suffix of one")
    q.add_argument("--param", default=None, help="one parameter of the symbol")
    q.add_argument("--package", default="deepspeed", help="whose API table (default: deepspeed)")
    q.set_defaults(func=run_api)

    q = add("scan-deepspeed",
            "maintainer tool: download deepspeed sdists with pip and read them statically into the API table",
            "Tracks every symbol of packages/deepspeed.toml's [[api]] rows, every deepspeed symbol a project's\n"
            "api_symbol check names, every parameter of deepspeed.moe.layer.MoE.__init__, and --symbol extras.\n"
            "first/last are exact only when every release in between was scanned: use --since for the table.\n\n"
            "examples:\n"
            "  moe-env matrix scan-deepspeed 0.11.1 0.13.0 0.19.8\n"
            "  moe-env matrix scan-deepspeed --since 0.9.0 --write compat_matrix/packages/deepspeed.toml\n"
            "  moe-env matrix scan-deepspeed 0.14.5 --symbol deepspeed.utils.z3_leaf_module.set_z3_leaf_modules:raise_if_not_found")
    q.add_argument("versions", nargs="*", metavar="VERSION", help="deepspeed releases to scan")
    q.add_argument("--since", metavar="VERSION", help="also scan every final release >= VERSION the index lists")
    q.add_argument("--symbol", action="append", default=[], metavar="SYMBOL[:PARAM]", help="track one more symbol (repeatable)")
    q.add_argument("--cache-dir", metavar="DIR", help="where unpacked sdists are kept (default ~/.cache/moe-env/sdists)")
    q.add_argument("--write", metavar="FILE", help="replace the generated [[api]] section of FILE (atomically)")
    q.set_defaults(func=run_scan)


def _no_action(args) -> int:
    args._parser.print_help(sys.stderr)
    return 2


def _load(args):
    from pathlib import Path

    from moe_env.matrix.loader import load_matrix

    return load_matrix(Path(args.matrix) if getattr(args, "matrix", None) else None)


def _emit(data: Dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


# ---------------------------------------------------------------- list / show


def run_list(args) -> int:
    from moe_env.lock.shipped import shipped_lockfile

    matrix = _load(args)
    projects = sorted(matrix.projects.values(), key=lambda p: p.name)
    if args.json:
        _emit({"projects": [{
            "name": p.name, "title": p.info.title, "aliases": p.info.aliases, "file": p.file,
            "variants": [{"id": v.id, "title": v.title, "moe": v.moe} for v in p.variants],
            "stacks": [{"id": s.id, "variants": s.variants, "cuda": s.cuda, "python": s.python, "pins": s.pins,
                        "shipped": shipped_lockfile(p.name, s) is not None}
                       for s in p.stacks],
        } for p in projects]})
        return 0
    if not projects:
        print("no projects in the matrix")
        return 0
    for p in projects:
        alias = f" (aliases: {', '.join(p.info.aliases)})" if p.info.aliases else ""
        print(f"{p.name}: {p.info.title}{alias}")
        print("  variants: " + (", ".join(f"{v.id}{'' if v.moe else ' (dense)'}" for v in p.variants) or "none"))
        for s in p.stacks:
            key = ", ".join(f"{k} {v}" for k, v in s.pins.items() if k in ("torch", "deepspeed", "transformers", "megatron-core", "xtuner"))
            ships = "ships a lockfile (offline)" if shipped_lockfile(p.name, s) else "fresh resolution (network)"
            print(f"  stack {s.id}: {', '.join(s.variants)} | cuda {s.cuda} | python {s.python} | {key} | {ships}")
    return 0


def run_show(args) -> int:
    from moe_env import record

    matrix = _load(args)
    project = matrix.project(args.project)
    if project is None:
        known = ", ".join(sorted(matrix.projects)) or "none"
        raise UsageError(f"no project {args.project!r} in the matrix (known: {known})")
    if args.json:
        data = record.asdict(project)
        data["name"] = project.name
        _emit(data)
        return 0
    i = project.info
    print(f"{i.title} [{i.name}]  {i.repo} @ {i.commit}")
    if i.notes:
        print(f"  {i.notes}")
    _section("upstream pins", [f"{p.package}{p.spec or ' (unpinned)'}{f' [{p.extra}]' if p.extra else ''}" for p in project.pins])
    _section("variants", [
        f"{v.id}: {v.title}" + (f", {v.num_experts} experts" if v.num_experts else "")
        + (f", ZeRO-{v.zero_stage}" if v.zero_stage >= 0 else "") + (f", {v.launcher}" if v.launcher else "")
        + (", bf16" if v.bf16 else "") for v in project.variants])
    _section("known-good stacks", [
        f"{s.id} ({', '.join(s.variants)}; cuda {s.cuda}; python {s.python}): "
        + ", ".join(f"{k}=={v}" for k, v in s.pins.items()) + (f"\n      why: {s.why}" if s.why else "")
        + "".join(f"\n      departs: {d}" for d in s.departs) for s in project.stacks])
    _section("checks", [f"{c.id} [{c.kind}, {c.severity}]: {c.title}" for c in project.checks])
    _section("launch/config rules", [f"{r.id} [{r.kind}, {r.severity}]: {r.title}" for r in project.rules])
    _section("known issues", [f"{k.id}{' (benign)' if k.benign else ''}: {k.title}" for k in project.known_issues])
    return 0


def _section(title: str, lines: List[str]) -> None:
    print(f"\n{title} ({len(lines)}):")
    for line in lines:
        print(f"  - {line}")


# ---------------------------------------------------------------- validate


def run_validate(args) -> int:
    from moe_env.matrix.consistency import matrix_problems, registry_problems

    matrix = _load(args)  # a file that does not load raises MatrixError: one line, exit 2
    problems = registry_problems(matrix) + matrix_problems(matrix)
    counts = {
        "files": len({p.file for p in matrix.projects.values()}),
        "torch": len(matrix.torch_releases), "torch_arch": len(matrix.torch_archs),
        "cuda_driver": len(matrix.cuda_drivers), "gpu": len(matrix.gpus),
        "releases": sum(len(v) for v in matrix.releases.values()), "api": sum(len(v) for v in matrix.api.values()),
        "conflicts": len(matrix.conflicts), "projects": len(matrix.projects),
        "stacks": sum(len(p.stacks) for p in matrix.projects.values()),
    }
    if args.json:
        _emit({"root": matrix.root, "ok": not problems, "counts": counts, "problems": problems})
    else:
        for line in problems:
            print(line)
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "files")
        verdict = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{matrix.root}: {verdict} ({summary})")
    return 1 if problems else 0


# ---------------------------------------------------------------- api


def run_api(args) -> int:
    import re

    from packaging.version import Version

    matrix = _load(args)
    package = re.sub(r"[-_.]+", "-", args.package).lower()
    entries = matrix.api.get(package, [])
    if not entries:
        raise UsageError(f"no [[api]] table for {args.package!r} (tables: {', '.join(sorted(matrix.api)) or 'none'})")
    symbols = sorted({e.symbol for e in entries})
    if args.symbol in symbols:
        symbol = args.symbol
    else:
        cands = [s for s in symbols if s.endswith("." + args.symbol)]
        if len(cands) != 1:
            hint = f"matches: {', '.join(cands)}" if cands else "see `moe-env matrix show` or packages/*.toml"
            raise UsageError(f"{args.symbol!r} is {'ambiguous' if cands else 'not in the ' + package + ' API table'} ({hint})")
        symbol = cands[0]
    rows = [e for e in entries if e.symbol == symbol and (args.param is None or e.param == args.param)]
    if not rows:
        params = sorted(e.param for e in entries if e.symbol == symbol and e.param)
        raise UsageError(f"{symbol} has no parameter {args.param!r} in the API table (known: {', '.join(params) or 'none'})")
    released = sorted((r.version for r in matrix.releases.get(package, [])), key=Version)
    out = []
    for e in rows:
        have = [v for v in released if Version(v) >= Version(e.first) and (not e.last or Version(v) <= Version(e.last))
                and (e.last or not e.newest_checked or Version(v) <= Version(e.newest_checked))]
        out.append({"symbol": e.symbol, "param": e.param, "first": e.first, "last": e.last,
                    "newest_checked": e.newest_checked, "releases": have, "source": e.source, "notes": e.notes})
    if args.json:
        _emit({"package": package, "entries": out})
        return 0
    for o in out:
        name = f"{o['symbol']}({o['param']}=...)" if o["param"] else o["symbol"]
        span = f"{o['first']} .. {o['last']}" if o["last"] else f"{o['first']} .. newest (checked up to {o['newest_checked'] or '?'})"
        print(f"{name}\n  in {package} {span}")
        if o["notes"]:
            print(f"  {o['notes']}")
        if o["releases"]:
            print(f"  releases in the matrix that have it: {', '.join(o['releases'])}")
        for s in o["source"]:
            print(f"  source: {s}")
    return 0


# ---------------------------------------------------------------- scan-deepspeed


def run_scan(args) -> int:
    import dataclasses
    from pathlib import Path

    from moe_env.matrix import scan
    from moe_env.term import Progress

    if not args.versions and not args.since:
        raise UsageError("name deepspeed releases to scan (e.g. 0.12.6 0.13.0) or --since VERSION")
    from packaging.version import InvalidVersion, Version

    for given in list(args.versions) + ([args.since] if args.since else []):
        try:
            if len(given) > 64:
                raise InvalidVersion(given)
            Version(given)
        except (InvalidVersion, ValueError):
            shown = given[:40] + ("..." if len(given) > 40 else "")
            raise UsageError(f"{shown!r} is not a release version (e.g. 0.13.0)") from None
    matrix = _load(args)
    symbols, keys = scan.tracked_keys(matrix, args.symbol)
    versions = list(args.versions)
    progress = Progress(quiet=args.json)
    if args.since:
        progress.say(f"asking the index for deepspeed releases >= {args.since}")
        versions += scan.available_versions(args.since)
    scans = scan.scan_versions(versions, symbols, Path(args.cache_dir) if args.cache_dir else None, progress=progress.say)
    rows, missing = scan.build_rows(scans, keys)
    if args.write:
        changed = scan.write_api_section(Path(args.write), scan.render_api_section(rows, scans))
        print(f"{args.write}: {'updated' if changed else 'unchanged'} ({len(rows)} [[api]] rows from {len(scans)} releases)",
              file=sys.stderr)
    if args.json:
        _emit({
            "versions": [s.version for s in scans],
            "releases": [{"version": s.version, "metadata_failed": s.metadata_failed, "requirements": s.requirements,
                          "symbols": {k: dataclasses.asdict(h) for k, h in s.hits.items()}} for s in scans],
            "api": [dataclasses.asdict(r) for r in rows],
            "never_found": [{"symbol": k[0], "param": k[1]} for k in missing],
        })
        return 0
    if not args.write:
        width = max((len(r.symbol) + len(r.param) + 3 for r in rows), default=10)
        print(f"{'symbol (param)':<{width}}  first     last")
        for r in rows:
            name = f"{r.symbol} ({r.param})" if r.param else r.symbol
            print(f"{name:<{width}}  {r.first:<8}  {r.last or '-'}")
        print(f"scanned: {', '.join(s.version for s in scans)}")
    for k in missing:
        print(f"never found in the scanned releases: {k[0]}{' (' + k[1] + ')' if k[1] else ''}", file=sys.stderr)
    return 0
