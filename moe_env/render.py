"""Presentation of findings: text for people (grouped by severity, coloured only on a terminal), JSON for machines.

Nothing here decides anything; it only lays out what checks returned. Every text that came from the
environment (versions, names, paths in `seen`, facts, the fix command) goes through printable() first, so a
METADATA field cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import textwrap
from typing import Iterable, List, Optional, Sequence, Tuple

from moe_env.findings import SEVERITY_ORDER, Finding, sort_findings, summarize
from moe_env.term import paint
from moe_env.untrusted import printable

_GROUPS = [
    ("error", "Errors", "red", "✗"),
    ("warning", "Warnings", "yellow", "!"),
    ("info", "Notes", "blue", "i"),
]


# findings printed as one line each, like `uv pip check` (their why and source are the same for all)
COMPACT = ("deps.missing", "deps.conflict")


def render_findings(findings: Iterable[Finding], color: bool = False, header: Optional[str] = None,
                    width: int = 100, facts: Sequence[Tuple[str, str]] = (), fix_all: Optional[str] = None,
                   keep_order: bool = False) -> str:
    """The text report: a header line, the environment's facts, findings grouped by severity (deferred ones
    last), a summary line, and the one command that applies every requirement fix.

    keep_order: within a severity, the caller's order (explain's: by line, most specific issue first)
    instead of by id."""
    if keep_order:
        items = sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
    else:
        items = sort_findings(findings)
    lines: List[str] = []
    if header:
        lines.append(paint(printable(header), "bold", color))
        lines.append("")
    if facts:
        wide = max(len(k) for k, _ in facts)
        lines.extend(f"  {k + ':':<{wide + 1}} {printable(v)}" for k, v in facts)
        lines.append("")
    active = [f for f in items if not f.deferred and not f.file]
    deferred = [f for f in items if f.deferred]
    in_code = [f for f in items if f.file and not f.deferred]
    for severity, label, colour, mark in _GROUPS:
        group = [f for f in active if f.severity == severity]
        if not group:
            continue
        lines.append(paint(f"{label} ({len(group)})", colour, color))
        compact = [f for f in group if f.id in COMPACT]
        for f in group:
            if f.id in COMPACT:
                continue
            lines.extend(_finding_lines(f, mark, colour, color, width))
        if compact:
            for f in compact:
                lines.append(f"  {paint(mark, colour, color)} {printable(f.title)}  {paint('[' + printable(f.id) + ']', 'dim', color)}")
            lines.extend(_wrapped("why", compact[0].why, width))
            for src in dict.fromkeys(s for f in compact for s in f.sources):
                lines.extend(_wrapped("source", src, width))
        lines.append("")
    if in_code:
        lines.extend(_code_lines(in_code, color, width))
    if deferred:
        lines.append(paint(f"Deferred to the node ({len(deferred)}): no driver/GPU at build time", "dim", color))
        for f in deferred:
            lines.extend(_finding_lines(f, "…", "dim", color, width))
        lines.append("")
    lines.append(summary_line(items, color))
    if fix_all:
        lines.append("")
        lines.append(paint("Fix (all requirement fixes above, in one command):", "bold", color))
        lines.append(f"  {printable(fix_all)}")
    return "\n".join(lines) + "\n"


def _finding_lines(f: Finding, mark: str, colour: str, color: bool, width: int) -> List[str]:
    out = [f"  {paint(mark, colour, color)} {paint(printable(f.title), 'bold', color)}  "
           f"{paint('[' + printable(f.id) + ']', 'dim', color)}"]
    for label, text in (("seen", f.seen), ("why", f.why), ("fix", f.fix)):
        if text:
            out.extend(_wrapped(label, text, width))
    for s in f.sources:
        out.extend(_wrapped("source", s, width))
    return out


def _code_lines(findings: List[Finding], color: bool, width: int) -> List[str]:
    """doctor --code: the checkout's findings grouped by file, in line order, each with its source line."""
    from moe_env.untrusted import printable

    marks = {s: (m, c) for s, _, c, m in _GROUPS}
    out = [paint(f"In the code ({len(findings)})", "bold", color)]
    files = sorted({f.file or "" for f in findings})
    for name in files:
        out.append(f"  {paint(printable(name), 'bold', color)}")
        group = sorted((f for f in findings if f.file == name),
                       key=lambda f: (f.line or 0, SEVERITY_ORDER.get(f.severity, 9), f.id))
        for f in group:
            mark, colour = marks.get(f.severity, ("?", "dim"))
            at = f"{f.line}: " if f.line else ""
            out.append(f"    {paint(mark, colour, color)} {at}{paint(printable(f.title), 'bold', color)}  "
                       f"{paint('[' + f.id + ']', 'dim', color)}")
            if f.code:
                out.append(f"      {'code:':<8}{printable(f.code)}")
            for label, text in (("seen", f.seen), ("why", f.why), ("fix", f.fix)):
                if text:
                    out.extend(_wrapped(label, printable(text), width))
            for s in f.sources:
                out.extend(_wrapped("source", s, width))
    out.append("")
    return out


def _wrapped(label: str, text: str, width: int) -> List[str]:
    text = printable(text)
    prefix = f"      {label + ':':<8}"
    if label in ("fix", "source"):  # commands and references: never re-flowed
        return [prefix + text]
    return textwrap.wrap(text, width=width, initial_indent=prefix, subsequent_indent=" " * len(prefix)) or [prefix]


def summary_line(findings: Iterable[Finding], color: bool = False) -> str:
    counts = summarize(findings)
    parts = []
    for key, colour in (("error", "red"), ("warning", "yellow"), ("info", "blue"), ("deferred", "dim")):
        n = counts.get(key, 0)
        word = {"error": "error", "warning": "warning", "info": "note", "deferred": "deferred"}[key]
        text = f"{n} {word}{'s' if n != 1 and key != 'deferred' else ''}"
        parts.append(paint(text, colour, color and n > 0))
    if counts.get("error", 0) == 0 and counts.get("warning", 0) == 0:
        verdict = paint("OK", "green", color)
    elif counts.get("error", 0) == 0:
        verdict = paint("OK with warnings", "yellow", color)
    else:
        verdict = paint("PROBLEMS", "red", color)
    return f"{verdict}: " + ", ".join(parts)
