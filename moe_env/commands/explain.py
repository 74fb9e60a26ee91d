"""`moe-env explain [FILE|-]`: match a training log or a pasted error against the matrix's known issues."""

from __future__ import annotations

import argparse

EPILOG = """\
Every line is matched against the [[known_issue]] patterns of the matrix (all projects, or the one
named with --project). For each issue found: the cause, the fix and the source. Messages known to
be harmless (XTuner's "... not in state_dict, loading ..." lines) are reported as benign.

examples:
  moe-env explain train.log                     a whole log, streamed
  tail -n 200 slurm-1234.out | moe-env explain  from stdin
  moe-env explain --project xtuner run.log      only XTuner's known issues
  moe-env explain train.log --json              machine-readable matches

exit codes: 0 nothing harmful matched (benign matches or none); 1 a harmful known issue matched;
2 bad usage or unreadable file; 4 internal error.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="explain errors in a training log: cause, fix and source of each known issue",
        description="Match a log or a pasted error against the known issues in the matrix.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="log file ('-' or nothing = stdin)")
    p.add_argument("--project", metavar="PROJECT", help="only this project's known issues (name or alias)")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema moe-env.explain/1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import io
    import json
    import sys

    from moe_env.errors import UsageError
    from moe_env.matrix.loader import load_matrix
    from moe_env.term import use_color
    from moe_env.triage import Triage

    matrix = load_matrix()
    projects = None
    if args.project:
        p = matrix.project(args.project)
        if p is None:
            known = ", ".join(sorted(matrix.projects)) or "none in this matrix"
            raise UsageError(f"unknown project {args.project!r} (known: {known})")
        projects = [p]
    triage = Triage(matrix, projects)
    if args.file == "-":
        if sys.stdin is None or (hasattr(sys.stdin, "isatty") and sys.stdin.isatty()):
            raise UsageError("no log given: name a FILE, or pipe a log into 'moe-env explain -'")
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace") \
            if hasattr(sys.stdin, "buffer") else sys.stdin
        triage.feed_all(stream)
    else:
        try:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                triage.feed_all(fh)
        except IsADirectoryError:
            raise UsageError(f"{args.file}: is a folder; give a log file") from None
        except OSError as exc:
            raise UsageError(f"{args.file}: cannot read ({exc.strerror or exc})") from None
    results = triage.results()
    harmful = triage.harmful()
    if args.json:
        doc = {"schema": "moe-env.explain/1", "file": args.file, "lines": triage.lines,
               "issues_checked": triage.issue_count, "harmful": harmful,
               "matches": [m.to_dict() for m in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from moe_env.render import render_findings

        color = use_color(sys.stdout)
        header = (f"moe-env explain: {args.file if args.file != '-' else 'stdin'} "
                  f"({triage.lines} lines, {triage.issue_count} known issues checked)")
        if not results:
            sys.stdout.write(f"{header}\n\nNo known issue matched.\n")
        else:
            sys.stdout.write(render_findings([m.finding() for m in results], color=color, header=header))
    return 1 if harmful else 0
