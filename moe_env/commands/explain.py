"""`moe-env explain [FILE|-]`: match a training log or a pasted error against the matrix's known issues."""

from __future__ import annotations

import argparse

EPILOG = """\
Every line is matched against the [[known_issue]] patterns of the matrix: the generic ones
(compat_matrix/generic/: extensions vs torch, driver and GPU, DeepSpeed, transformers drift, system
libraries, NCCL, checkpoints, wheels) and the four projects'. A Python traceback is reported once,
by its root exception and the frame that raised it. For each issue: the cause, the fix and the
source. Messages known to be harmless are reported as benign. With --python, the doctor checks that
predict an issue run on that environment and say whether they see its cause there. A message that
means "too old" in one release and "removed" in another is printed with both readings; with --python
the installed release and the matrix's API tables pick one ("picked: removed - ...") or say why not.

examples:
  moe-env explain train.log                     a whole log, streamed
  tail -n 200 slurm-1234.out | moe-env explain  from stdin
  moe-env explain --project xtuner run.log      only XTuner's and the generic known issues
  moe-env explain train.log --python /opt/venv/bin/python   confirm the cause in that environment
  moe-env explain train.log --json              machine-readable matches

exit codes: 0 nothing harmful matched (benign matches or none); 1 a harmful known issue matched;
2 bad usage or unreadable file; 4 internal error.
"""

FIFO_WAIT = 10  # seconds to wait for a writer on a FIFO before giving up ($MOE_ENV_EXPLAIN_WAIT)


def _fifo_wait() -> int:
    import os

    from moe_env.untrusted import UntrustedInput, as_int

    raw = os.environ.get("MOE_ENV_EXPLAIN_WAIT")
    if not raw:
        return FIFO_WAIT
    try:
        return as_int(raw, lo=0, hi=3600, what="MOE_ENV_EXPLAIN_WAIT")
    except UntrustedInput:
        return FIFO_WAIT


def register(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="explain errors in a training log: cause, fix and source of each known issue",
        description="Match a log or a pasted error against the known issues in the matrix.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="log file ('-' or nothing = stdin)")
    p.add_argument("--project", metavar="PROJECT", help="only this project's (and the generic) known issues")
    p.add_argument("--python", metavar="PATH",
                   help="probe this interpreter's environment (never imported) to confirm or rule out each cause")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema moe-env.explain/1)")
    p.set_defaults(func=run)


def open_log(path: str):
    """A text stream of the log: regular files and pipes (FIFOs, process substitution); devices and
    folders are refused, and a FIFO nobody writes to is given up after FIFO_WAIT seconds, not waited on forever."""
    import io
    import os
    import select
    import stat

    from moe_env.errors import UsageError

    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a folder; give a log file")
    if stat.S_ISREG(st.st_mode):
        try:
            return open(path, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        raise UsageError(f"{path}: is a device, not a log file (pipe a log in with `... | moe-env explain`)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    wait = _fifo_wait()
    try:
        ready, _, _ = select.select([fd], [], [], wait)
    except (OSError, ValueError) as exc:
        os.close(fd)
        raise UsageError(f"{path}: cannot read ({exc})") from None
    if not ready:
        os.close(fd)
        raise UsageError(f"{path}: a pipe with nothing written to it in {wait} s (no writer?)")
    os.set_blocking(fd, True)
    return io.TextIOWrapper(io.FileIO(fd, "rb", closefd=True), encoding="utf-8", errors="replace")


def confirm(triage, python: str, matrix) -> str:
    """Probe `python`'s environment, run doctor's checks, and say per match whether its doctor ids were seen."""
    from moe_env.checks import detect_projects, run_checks, symbols_needed
    from moe_env.probe.runner import probe_environment
    from moe_env.readings import pick, probe_symbols

    wanted = set(symbols_needed(matrix))
    for m in triage.matches.values():
        wanted.update(probe_symbols(m.issue, m.groups, matrix))
    env = probe_environment(python, sorted(wanted))
    for p, _ in detect_projects(env, matrix):
        triage.relevant.add(p.name)
    findings = run_checks(env, matrix)
    by_id = {}
    for f in findings:
        by_id.setdefault(f.id, f)
        by_id.setdefault(f.id.split(".", 1)[-1] if f.id.count(".") > 1 else f.id, f)
    for m in triage.matches.values():
        if m.issue.readings:  # a message with several readings: the installed release picks one, or says it cannot
            m.picked = pick(m.issue, m.groups, env, matrix, python)
        if not m.issue.doctor:
            continue
        seen = [by_id[d] for d in m.issue.doctor if d in by_id]
        if seen:
            f = seen[0]
            m.confirmation = f"confirmed in {python}: {f.id}: {f.title}" + (f" ({f.seen})" if f.seen else "")
        else:
            m.confirmation = f"not seen in {python}: doctor's {', '.join(m.issue.doctor)} found nothing"
    return python


def run(args) -> int:
    import io
    import json
    import sys

    from moe_env.errors import UsageError
    from moe_env.matrix.loader import load_matrix
    from moe_env.term import use_color
    from moe_env.triage import Triage
    from moe_env.untrusted import printable

    matrix = load_matrix()
    projects = None
    named = []
    if args.project:
        p = matrix.project(args.project)
        if p is None:
            known = ", ".join(sorted(matrix.projects)) or "none in this matrix"
            raise UsageError(f"unknown project {args.project!r} (known: {known})")
        projects, named = [p], [p.name]
    triage = Triage(matrix, projects, named=named)
    if args.file == "-":
        if sys.stdin is None or (hasattr(sys.stdin, "isatty") and sys.stdin.isatty()):
            raise UsageError("no log given: name a FILE, or pipe a log into 'moe-env explain -'")
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace") \
            if hasattr(sys.stdin, "buffer") else sys.stdin
        triage.feed_all(stream)
    else:
        with open_log(args.file) as fh:
            try:
                triage.feed_all(fh)
            except OSError as exc:
                raise UsageError(f"{args.file}: cannot read ({exc.strerror or exc})") from None
    if args.python:
        confirm(triage, args.python, matrix)
    results = triage.results()
    harmful = triage.harmful()
    if args.json:
        doc = {"schema": "moe-env.explain/1", "file": args.file, "lines": triage.lines,
               "tracebacks": triage.tracebacks, "issues_checked": triage.issue_count,
               "patterns_checked": triage.pattern_count, "projects_detected": sorted(triage.relevant),
               "python": args.python, "harmful": harmful, "matches": [m.to_dict() for m in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from moe_env.render import render_findings

        color = use_color(sys.stdout)
        name = printable(args.file) if args.file != "-" else "stdin"
        header = (f"moe-env explain: {name} ({triage.lines} lines, {triage.tracebacks} tracebacks, "
                  f"{triage.issue_count} known issues checked)")
        if not results:
            sys.stdout.write(f"{header}\n\nNo known issue matched.\n")
        else:
            sys.stdout.write(render_findings([m.finding() for m in results], color=color, header=header, keep_order=True))
    return 1 if harmful else 0
