"""`moe-env diff`: drift across the nodes of a cluster, from their `doctor --json` reports."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
input: report files, folders of them (*.json, *.jsonl), or '-' for stdin, where the lines may carry
pdsh's 'host: ' prefix or srun --label's 'N: ' prefix. With no REPORT and a pipe on stdin, stdin is read.

examples:
  srun --label --ntasks-per-node=1 moe-env doctor --json | moe-env diff
  pdsh -w 'gpu[01-16]' moe-env doctor --json | moe-env diff -
  moe-env diff reports/                       one file per node, named after the node
  moe-env diff reports/ --ignore nvidia-ml-py --json

exit codes: 0 nothing that must agree differs (a driver branch that differs is a warning); 1 drift
in what must agree (torch build, NCCL, torch's CUDA major, deepspeed, transformers, accelerate, Python
minor, GPU architecture; a driver that cannot start torch's CUDA), or the same report twice; 2 bad
or unreadable input. The same hostname in reports that differ is a warning.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "diff",
        help="group nodes by every fact that differs across doctor --json reports",
        description="Compare `moe-env doctor --json` reports from many nodes and show what differs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("reports", nargs="*", metavar="REPORT", help="report file, folder of reports, or '-' for stdin")
    p.add_argument("--ignore", action="append", default=[], metavar="PKG",
                   help="a package (or fact, e.g. 'driver') whose differences are known to be harmless; repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema moe-env.diff/1)")
    p.set_defaults(func=run)


def run(args) -> int:
    from moe_env import fleet
    from moe_env.errors import UsageError
    from moe_env.term import use_color

    paths = list(args.reports)
    stdin_text = None
    if not paths:
        if sys.stdin.isatty():
            raise UsageError("no reports given; pass report files or folders, or pipe reports in (see 'moe-env diff --help')")
        paths = ["-"]
    if "-" in paths:
        stdin_text = sys.stdin.read()
    ignore = [item for value in args.ignore for item in value.split(",") if item]
    reports = fleet.read_reports(paths, stdin_text=stdin_text)
    result = fleet.diff_reports(reports, ignore=ignore)
    if args.json:
        sys.stdout.write(fleet.render_json(result))
    else:
        sys.stdout.write(fleet.render_text(result, color=use_color(sys.stdout)))
    return result.exit_code()
