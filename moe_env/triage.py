"""Log triage: match log lines against every `[[known_issue]]` pattern in the matrix.

Matching is per line (`re.search` on each line, as the matrix documents), but a big log is not fed
to the regex engine line by line: the stream is read in chunks, and each pattern's longest literal
run (found once, from the parsed pattern) is looked up in the chunk with `str.find`, which scans in
C. Only the lines holding a literal are searched with the full patterns, so a multi-gigabyte log is
read in constant memory at disk-like speed. Patterns without a usable literal fall back to a
per-line search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, TextIO, Tuple

from moe_env.findings import Finding
from moe_env.matrix.model import KnownIssue, Matrix, Project

try:  # Python >= 3.11
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.9/3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

MAX_EXAMPLES = 3
MAX_LINE = 4096  # longer lines are matched on their first 4 KiB (tracebacks can carry huge reprs)
CHUNK = 4 * 1024 * 1024
MIN_LITERAL = 3


@dataclass
class Match:
    """One known issue seen in the log: where, how often, the first lines that matched."""

    project: str
    issue: KnownIssue
    count: int = 0
    first_line: int = 0
    examples: List[str] = field(default_factory=list)

    @property
    def harmful(self) -> bool:
        return not self.issue.benign

    def to_dict(self) -> Dict[str, Any]:
        i = self.issue
        return {
            "project": self.project, "id": i.id, "title": i.title, "benign": i.benign,
            "severity": "info" if i.benign else i.severity, "cause": i.cause, "fix": i.fix,
            "source": list(i.source), "count": self.count, "first_line": self.first_line,
            "examples": list(self.examples),
        }

    def finding(self) -> Finding:
        i = self.issue
        where = f"line {self.first_line}" + (f" (+{self.count - 1} more)" if self.count > 1 else "")
        example = self.examples[0] if self.examples else ""
        title = ("Benign: " if i.benign else "") + i.title
        return Finding(
            id=f"{self.project}.{i.id}", severity="info" if i.benign else i.severity, title=title,
            seen=f"{where}: {example}", why=i.cause, fix=i.fix, sources=list(i.source))


def required_literals(pattern: str) -> Optional[Tuple[List[str], bool]]:
    """Strings one of which every match of `pattern` contains, and whether to look for them in
    lower case (a global (?i)); None when no literal of MIN_LITERAL+ characters is certain."""
    try:
        parsed = _sre_parse.parse(pattern)
    except Exception:  # re.error and parser internals; the loader already compiled it
        return None
    flags = getattr(getattr(parsed, "state", None), "flags", 0)
    lower = bool(flags & re.IGNORECASE)
    found = _seq_literals(list(parsed))
    if not found:
        return None
    return ([s.lower() for s in found] if lower else found), lower


def _seq_literals(items: List[Any]) -> Optional[List[str]]:
    """Best literal set of a parsed sequence: its longest run of literals, or a lone group/branch's set."""
    best: Optional[List[str]] = None
    run = ""
    for op, av in items + [(None, None)]:
        if op is _sre_parse.LITERAL:
            run += chr(av)
            continue
        if len(run) >= MIN_LITERAL and (best is None or min(map(len, best)) < len(run)):
            best = [run]
        run = ""
        sub = None
        if op is _sre_parse.SUBPATTERN and av[1] == 0 and av[2] == 0:  # a plain group: (add_flags, del_flags) unset
            sub = _seq_literals(list(av[-1]))
        elif op is _sre_parse.BRANCH:
            parts = [_seq_literals(list(b)) for b in av[1]]
            if all(parts):
                sub = [s for p in parts for s in p]  # type: ignore[union-attr]
        if sub and (best is None or min(map(len, sub)) > min(map(len, best))):
            best = sub
    return best


class Triage:
    """Compiled patterns of the chosen projects; feed it a stream or lines, then read the matches."""

    def __init__(self, matrix: Matrix, projects: Optional[List[Project]] = None):
        chosen = projects if projects is not None else sorted(matrix.projects.values(), key=lambda p: p.name)
        self._issues: List[Tuple[str, KnownIssue, List["re.Pattern[str]"]]] = []
        self._literals: List[Tuple[str, bool]] = []  # (literal, lower-case search)
        self._slow: List[int] = []  # issues with a pattern that has no literal: searched on every line
        for p in chosen:
            for issue in p.known_issues:
                if not issue.patterns:
                    continue
                idx = len(self._issues)
                self._issues.append((p.name, issue, [re.compile(pat) for pat in issue.patterns]))
                for pat in issue.patterns:
                    lit = required_literals(pat)
                    if lit is None:
                        if idx not in self._slow:
                            self._slow.append(idx)
                        continue
                    for s in lit[0]:
                        if (s, lit[1]) not in self._literals:
                            self._literals.append((s, lit[1]))
        self._need_lower = any(lower for _, lower in self._literals)
        self.matches: Dict[Tuple[str, str], Match] = {}
        self.lines = 0

    @property
    def issue_count(self) -> int:
        return len(self._issues)

    # ---------------------------------------------------------------- per line

    def feed(self, line: str) -> None:
        """One line (the slow path: every pattern is searched)."""
        self.lines += 1
        self._match_line(line, self.lines, range(len(self._issues)))

    def feed_all(self, lines: Iterable[str]) -> "Triage":
        if hasattr(lines, "read"):
            return self.feed_stream(lines)  # type: ignore[arg-type]
        for line in lines:
            self.feed(line)
        return self

    def _match_line(self, line: str, number: int, which: Iterable[int]) -> None:
        text = line[:MAX_LINE].rstrip("\r\n")
        for i in which:
            project, issue, rxs = self._issues[i]
            if any(rx.search(text) for rx in rxs):
                key = (project, issue.id)
                m = self.matches.get(key)
                if m is None:
                    m = self.matches[key] = Match(project, issue, first_line=number)
                m.count += 1
                if len(m.examples) < MAX_EXAMPLES:
                    m.examples.append(text.strip()[:300])

    # ---------------------------------------------------------------- streams

    def feed_stream(self, stream: TextIO, chunk_size: int = CHUNK) -> "Triage":
        """Read a text stream in chunks; only lines holding a pattern's literal are searched in full."""
        pending = ""
        skipping = False  # inside the tail of an enormous line whose head was already judged
        while True:
            data = stream.read(chunk_size)
            if not data:
                break
            buf = pending + data
            if skipping:
                nl = buf.find("\n")
                if nl == -1:
                    pending = ""
                    continue
                buf, skipping = buf[nl + 1:], False
            cut = buf.rfind("\n")
            if cut == -1:
                if len(buf) < max(4 * chunk_size, 2 * MAX_LINE):
                    pending = buf
                    continue
                self._feed_chunk(buf[:MAX_LINE] + "\n")  # an enormous line: judge its head, skip the rest
                pending, skipping = "", True
                continue
            self._feed_chunk(buf[:cut + 1])
            pending = buf[cut + 1:]
        if pending:
            self._feed_chunk(pending + "\n")
        return self

    def _feed_chunk(self, chunk: str) -> None:
        """`chunk` holds whole lines, each ending in a newline."""
        base = self.lines
        n_lines = chunk.count("\n")
        if self._slow:
            for i, line in enumerate(chunk.splitlines(), start=1):
                self._match_line(line, base + i, self._slow)
        starts: Set[int] = set()
        lowered = chunk.lower() if self._need_lower else chunk
        if len(lowered) != len(chunk):  # case folding changed lengths (rare scripts): judge line by line
            for i, line in enumerate(chunk.splitlines(), start=1):
                self._match_line(line, base + i, [j for j in range(len(self._issues)) if j not in self._slow])
            self.lines = base + n_lines
            return
        for lit, lower in self._literals:
            hay = lowered if lower else chunk
            pos = hay.find(lit)
            while pos != -1:
                start = chunk.rfind("\n", 0, pos) + 1
                starts.add(start)
                end = chunk.find("\n", pos)
                pos = hay.find(lit, end)
        if starts:
            fast = [i for i in range(len(self._issues)) if i not in self._slow]
            counted, number = 0, base
            for start in sorted(starts):
                number += chunk.count("\n", counted, start)
                counted = start
                end = chunk.find("\n", start)
                self._match_line(chunk[start:end], number + 1, fast)
        self.lines = base + n_lines

    # ---------------------------------------------------------------- results

    def results(self) -> List[Match]:
        """Harmful matches first (by first line), then the benign ones."""
        return sorted(self.matches.values(), key=lambda m: (m.issue.benign, m.first_line, m.issue.id))

    def harmful(self) -> bool:
        return any(m.harmful for m in self.matches.values())


def explain_stream(stream: TextIO, matrix: Matrix, projects: Optional[List[Project]] = None) -> Triage:
    return Triage(matrix, projects).feed_stream(stream)


def explain_text(text: str, matrix: Matrix, projects: Optional[List[Project]] = None) -> Triage:
    import io

    return Triage(matrix, projects).feed_stream(io.StringIO(text))
