"""Log triage: match log lines against the `[[known_issue]]` patterns of the matrix.

Matching is per line (`re.search`), but a big log is not fed to the regex engine line by line: the
stream is read in chunks, each pattern's longest certain literal (found once, from the parsed
pattern) is looked up in the chunk with `str.find`, which scans in C, and only lines holding a
literal are searched with the full patterns. A multi-gigabyte log is read in constant memory.

Python tracebacks are units: from "Traceback (most recent call last):" to the exception line (and
chained tracebacks after it) the lines are followed one by one, and the issues they match are
reported once per traceback, root exception first, with the frame that raised it. Lines from
several ranks (`[rank3]:`, `[default0]:`, `0: `) interleave; each rank's traceback is followed on
its own. At most MAX_PER_LINE issues are credited to one line (or one traceback), most specific
first; a project's issue outranks a generic one only when that project is named or detected.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, TextIO, Tuple

from moe_env.findings import Finding
from moe_env.matrix.model import KnownIssue, Matrix, Project

try:  # Python >= 3.11
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.9/3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

MAX_EXAMPLES = 3
MAX_PER_LINE = 3
MAX_LINE = 4096  # longer lines are matched on their first 4 KiB (tracebacks can carry huge reprs)
CHUNK = 4 * 1024 * 1024
MIN_LITERAL = 3
CONTEXT_LINES = 60  # a context pattern counts when it matched this many lines before (or in the same traceback)
MAX_UNIT_LINES = 400  # a traceback longer than this is closed (a log that never prints its exception line)
UNIT_IDLE = 200  # a traceback with no line of its own in this many lines is closed
GENERIC = ""  # Match.project of a generic known issue

TRACEBACK = "Traceback (most recent call last)"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# prefixes that launchers and loggers put before each line: [rank3]: [default0]: 0: [1,0]<stderr>:
# (VllmWorkerProcess pid=12) ERROR 09-25 06:40:46 file.py:226] and ISO timestamps
_PREFIX = re.compile(
    r"(?:[ \t]*(?:\[(?:rank|default|Rank )?\d+\]:?|\[\d+,\d+\]<\w+>:|\d{1,5}:(?=\s)|\(\w+ pid=\d+\)"
    r"|(?:ERROR|WARNING|INFO|DEBUG) \d\d-\d\d \d\d:\d\d:\d\d [\w.]+:\d+\]"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?(?: -)?)[ \t]?)*")
_RANK = re.compile(r"\[(?:rank|default|Rank )?(\d+)\]|\[(\d+,\d+)\]<|^\s*(\d{1,5}):\s|pid=(\d+)")
_FRAME = re.compile(r'^\s*File "([^"]*)", line (\d+)(?:, in (\S+))?')


@dataclass
class Match:
    """One known issue seen in the log: where, how often, the first lines that matched."""

    project: str  # "" for a generic known issue
    issue: KnownIssue
    count: int = 0
    first_line: int = 0
    examples: List[str] = field(default_factory=list)
    frame: str = ""  # the frame that raised it, when it came from a traceback
    notes: List[str] = field(default_factory=list)  # decoded facts ("found version 11040 = CUDA 11.4 ...")
    confirmation: str = ""  # set by explain --python: "confirmed: ..." or "not seen in this environment"
    rank: int = 0  # order among the issues of the same line: most specific first
    groups: Dict[str, str] = field(default_factory=dict)  # named groups of its first match (the name a message quotes)
    picked: Any = None  # explain --python: the readings.Pick of an issue with readings
    matrix: Any = field(default=None, repr=False, compare=False)  # the Matrix it was matched against (readings fill their conditions from its API tables)

    @property
    def harmful(self) -> bool:
        return not self.issue.benign

    @property
    def key(self) -> str:
        return f"{self.project}.{self.issue.id}" if self.project else self.issue.id

    def to_dict(self) -> Dict[str, Any]:
        i = self.issue
        return {
            "project": self.project or None, "id": i.id, "title": i.title, "class": i.failure_class or None,
            "benign": i.benign, "severity": "info" if i.benign else i.severity, "cause": i.cause, "fix": i.fix,
            "source": list(i.source), "count": self.count, "first_line": self.first_line,
            "examples": list(self.examples), "frame": self.frame or None, "notes": list(self.notes),
            "doctor": list(i.doctor), "confirmation": self.confirmation or None,
            "readings": [{"id": r.id, "when": r.when, "condition": self._condition(r), "cause": r.cause, "fix": r.fix,
                          "source": list(r.source)} for r in i.readings],
            "picked": self.picked.to_dict() if self.picked is not None else None,
        }

    def _condition(self, r) -> str:
        from moe_env.readings import shown_when

        return shown_when(self.issue, r, self.groups, self.matrix) if self.matrix is not None else r.when

    def reading(self):
        """The picked reading (explain --python), or None."""
        if self.picked is None or not self.picked.reading:
            return None
        return next((r for r in self.issue.readings if r.id == self.picked.reading), None)

    def finding(self) -> Finding:
        from moe_env.untrusted import printable

        i = self.issue
        where = f"line {self.first_line}" + (f" (+{self.count - 1} more)" if self.count > 1 else "")
        example = printable(self.examples[0]) if self.examples else ""
        seen = f"{where}: {example}"
        if self.frame:
            seen += f"\n  raised at {printable(self.frame)}"
        title = ("Benign: " if i.benign else "") + i.title
        why, fix, sources = i.cause, i.fix, list(i.source)
        picked = self.reading()
        if picked is not None:  # --python picked one reading: its cause, fix and source
            why, fix = picked.cause, picked.fix
            sources = list(picked.source) + [s for s in sources if s not in picked.source]
        elif i.readings:  # both readings, each with its condition and fix
            from moe_env.readings import shown_when

            why += "".join(f" Reading {r.id} ({shown_when(i, r, self.groups, self.matrix)}): {r.cause} Fix: {r.fix}"
                           if self.matrix is not None else f" Reading {r.id} ({r.when}): {r.cause} Fix: {r.fix}"
                           for r in i.readings)
        why += "".join(f" {n}" for n in self.notes)
        if self.picked is not None:
            why += f" [{printable(self.picked.why)}]"
        if self.confirmation:
            why += f" [{self.confirmation}]"
        return Finding(id=self.key, severity="info" if i.benign else i.severity, title=title,
                       seen=seen, why=why, fix=fix, sources=sources)


# ------------------------------------------------------------------ patterns


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


_NO_DIGITS = {c: None for c in range(ord("0"), ord("9") + 1)}


def _specificity(pattern: str) -> int:
    """How much fixed text a pattern demands: the number of literal characters anywhere in it."""
    try:
        parsed = _sre_parse.parse(pattern)
    except Exception:
        return 0

    def count(items: Any) -> int:
        n = 0
        for op, av in items:
            if op is _sre_parse.LITERAL:
                n += 1
            elif op is _sre_parse.SUBPATTERN:
                n += count(av[-1])
            elif op is _sre_parse.BRANCH:
                n += min(count(b) for b in av[1])
            elif op in (_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT) and av[0] > 0:
                n += count(av[2])
        return n

    return count(parsed)


_LEADING_REPEAT = re.compile(r"^(\\[SsWwDd]|\.|\[[^\]\\]*\])([+*])(?![?+*{])")


def search_form(pattern: str) -> str:
    """The pattern as it is searched: a leading unbounded repeat (`\\S+`, `.*`) is cut to what it
    demands, since `re.search` succeeds iff the shorter form does, and the long form backtracks
    quadratically on long lines without spaces (`\\S+ not in state_dict` on 4 KB lines)."""
    m = _LEADING_REPEAT.match(pattern)
    if not m or "(?P" in pattern[: m.end()]:
        return pattern
    atom, rep = m.group(1), m.group(2)
    return (atom if rep == "+" else "") + pattern[m.end():]


def split_prefix(line: str) -> Tuple[str, str]:
    """(rank key, the line without launcher/logger prefixes)."""
    m = _PREFIX.match(line)
    prefix = line[: m.end()] if m else ""
    key = ""
    if prefix:
        r = _RANK.search(prefix)
        if r:
            key = next(g for g in r.groups() if g is not None)
    return key, line[len(prefix):]


def decode_cuda_api(value: str, matrix: Matrix) -> str:
    """The driver's CUDA version in torch's "found version 11040", and the minimum driver of newer CUDAs."""
    try:
        n = int(value)
    except ValueError:
        return ""
    if not 1000 <= n < 100000:
        return ""
    major, minor = n // 1000, (n % 1000) // 10
    have = (major, minor)
    rows = []
    for row in matrix.cuda_drivers:
        try:
            v = tuple(int(x) for x in row.cuda.split(".")[:2])
        except ValueError:
            continue
        if v > have and row.cuda in ("11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0"):
            rows.append(f"CUDA {row.cuda} >= {row.min_driver}")
    compat = [f"any CUDA {c.cuda_major}.x >= {c.min_driver}" for c in matrix.cuda_minor_compat if c.cuda_major > major]
    text = f"\"found version {n}\" means this driver supports CUDA {major}.{minor} at most."
    if rows:
        text += " Minimum Linux drivers (GA, from the matrix): " + ", ".join(rows) + "."
    if compat:
        text += " With minor-version compatibility: " + ", ".join(compat) + "."
    return text


def decode_cuda_min(value: str, matrix: Matrix) -> str:
    """The driver a CUDA X.Y image needs, from the matrix."""
    row = next((r for r in matrix.cuda_drivers if r.cuda == value), None)
    if row is None:
        return ""
    return f"A CUDA {value} image needs a host driver >= {row.min_driver} (Linux x86_64, from the matrix)."


_DECODERS = {"cuda_api": decode_cuda_api, "cuda_min": decode_cuda_min}


# ------------------------------------------------------------------ the engine


@dataclass
class _Issue:
    project: str
    issue: KnownIssue
    rxs: List["re.Pattern[str]"]
    spec: List[int]  # specificity per pattern
    context: List["re.Pattern[str]"]


@dataclass
class _Unit:
    """A traceback being followed: its lines' matches and the frame before each exception line."""

    start: int
    indent: int
    state: str = "frames"  # frames -> exc (after an exception line) -> closed
    lines: int = 0
    blanks: int = 0
    last_frame: str = ""
    exc_frame: str = ""
    exc_line: str = ""
    hits: List[Tuple[int, int, int, int, str, str, Dict[str, str]]] = field(default_factory=list)
    last: int = 0  # number of its last line: a traceback other ranks' lines have buried for UNIT_IDLE lines is over
    cont: int = 0  # continuation lines of the exception message
    open: bool = False  # the last exception line does not end a sentence: the message goes on
    ctx_issues: Set[int] = field(default_factory=set)  # issues whose context pattern matched inside it


class Triage:
    """Compiled patterns of the chosen projects and the generic issues; feed it a stream, then read the matches."""

    def __init__(self, matrix: Matrix, projects: Optional[List[Project]] = None, generic: bool = True,
                 named: Sequence[str] = ()):
        self.matrix = matrix
        chosen = projects if projects is not None else sorted(matrix.projects.values(), key=lambda p: p.name)
        self._issues: List[_Issue] = []
        entries: List[Tuple[str, KnownIssue]] = [(p.name, i) for p in chosen for i in p.known_issues]
        if generic:
            entries += [(GENERIC, i) for i in matrix.known_issues]
        # literal -> [(issue index, pattern index or -1-context index)], per case mode
        self._lit_map: Dict[Tuple[str, bool], List[Tuple[int, int]]] = {}
        self._slow: List[Tuple[int, int]] = []  # patterns without a literal: searched on every line
        for project, issue in entries:
            if not issue.patterns:
                continue
            idx = len(self._issues)
            forms = [search_form(p) for p in issue.patterns]
            self._issues.append(_Issue(project, issue, [re.compile(f) for f in forms],
                                       [_specificity(p) for p in issue.patterns],
                                       [re.compile(search_form(c)) for c in issue.context]))
            for j, pat in enumerate(forms + [search_form(c) for c in issue.context]):
                role = j if j < len(forms) else -1 - (j - len(forms))
                lit = required_literals(pat)
                if lit is None:
                    self._slow.append((idx, role))
                    continue
                for s in lit[0]:
                    self._lit_map.setdefault((s, lit[1]), []).append((idx, role))
        self._literals = list(self._lit_map)
        self._need_lower = any(lower for _, lower in self._literals)
        # Before scanning a chunk for every literal, its lines are reduced to their distinct shapes (digits
        # deleted, duplicates dropped: a training log is mostly the same few lines with other numbers), and
        # a literal is looked for in the chunk only when its digit-free form is in those shapes.
        self._shaped: List[Tuple[str, str, bool]] = []  # (digit-free literal, literal, lower)
        self._always: List[Tuple[str, bool]] = []
        for lit, lower in self._literals:
            shape = lit.translate(_NO_DIGITS)
            if len(shape) >= MIN_LITERAL:
                self._shaped.append((shape, lit, lower))
            else:
                self._always.append((lit, lower))
        self._tb_lit = TRACEBACK
        # projects named on the command line or detected (in the log, or by --python)
        self.relevant: Set[str] = {p for p in named}
        self._detect: List[Tuple[str, str]] = []
        for p in chosen:
            words = {p.name, *p.info.aliases, *p.info.detect, p.info.repo.rsplit("/", 1)[-1]}
            for w in sorted(words):
                if w and len(w) >= 3:
                    self._detect.append((w.lower(), p.name))
        self.matches: Dict[Tuple[str, str], Match] = {}
        self.lines = 0
        self.tracebacks = 0
        self._units: Dict[str, _Unit] = {}
        self._ctx_last: Dict[int, int] = {}

    @property
    def issue_count(self) -> int:
        return len(self._issues)

    @property
    def pattern_count(self) -> int:
        return sum(len(i.rxs) for i in self._issues)

    # ---------------------------------------------------------------- feeding

    def feed_all(self, lines: Iterable[str]) -> "Triage":
        if hasattr(lines, "read"):
            return self.feed_stream(lines)  # type: ignore[arg-type]
        return self.feed_stream(io.StringIO("".join(l if l.endswith("\n") else l + "\n" for l in lines)))

    def feed(self, line: str) -> None:
        """One line (tests and callers that already split)."""
        self._feed_chunk(line.rstrip("\r\n") + "\n")

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
        self.finish()
        return self

    def finish(self) -> None:
        """Close the tracebacks still open at the end of the log."""
        for key in list(self._units):
            self._close(key)

    # ---------------------------------------------------------------- chunks

    def _feed_chunk(self, chunk: str) -> None:
        """`chunk` holds whole lines, each ending in a newline."""
        if "\x1b" in chunk:
            chunk = _ANSI.sub("", chunk)
        base = self.lines
        n_lines = chunk.count("\n")
        lowered = chunk.lower() if (self._need_lower or self._detect) else chunk
        if lowered is not chunk and len(lowered) != len(chunk):  # case folding changed lengths (rare scripts): judge line by line
            for line in chunk.splitlines():
                self._feed_chunk_lines(line)
            return
        cand: Dict[int, Set[Tuple[int, int]]] = {}
        if len(self._shaped) > 8:
            shapes = "\n".join(set(chunk.translate(_NO_DIGITS).split("\n")))
            shapes_low = shapes.lower() if (self._need_lower or self._detect) else shapes
            if self._detect:
                self._detect_projects(shapes_low)
            todo = self._always + [(lit, lower) for shape, lit, lower in self._shaped
                                   if shape in (shapes_low if lower else shapes)]
        else:
            todo = self._literals
            if self._detect:
                self._detect_projects(lowered)
        for lit, lower in todo:
            hay = lowered if lower else chunk
            pos = hay.find(lit)
            while pos != -1:
                start = chunk.rfind("\n", 0, pos) + 1
                cand.setdefault(start, set()).update(self._lit_map[(lit, lower)])
                end = chunk.find("\n", pos)
                pos = hay.find(lit, end)
        heads = []
        pos = chunk.find(self._tb_lit)
        while pos != -1:
            heads.append(chunk.rfind("\n", 0, pos) + 1)
            pos = chunk.find(self._tb_lit, chunk.find("\n", pos))
        if self._slow:
            start = 0
            while start < len(chunk):
                cand.setdefault(start, set()).update(self._slow)
                start = chunk.find("\n", start) + 1
        events = sorted(set(cand) | set(heads))
        counted, number, pos, k = 0, base, 0, 0
        while True:
            if self._units:  # inside a traceback: every line, in order
                if pos >= len(chunk):
                    break
                start = pos
            else:
                while k < len(events) and events[k] < pos:
                    k += 1
                if k == len(events):
                    break
                start = events[k]
            number += chunk.count("\n", counted, start)
            counted = start
            end = chunk.find("\n", start)
            self._line(chunk[start:end], number + 1, cand.get(start))
            pos = end + 1
        self.lines = base + n_lines

    def _feed_chunk_lines(self, line: str) -> None:
        self.lines += 1
        low = line.lower()
        roles: Set[Tuple[int, int]] = set(self._slow)
        for (lit, lower), items in self._lit_map.items():
            if lit in (low if lower else line):
                roles.update(items)
        self._line(line, self.lines, roles or None)

    def _detect_projects(self, lowered: str) -> None:
        if not self._detect:
            return
        for word, name in self._detect:
            if name not in self.relevant and word in lowered:
                self.relevant.add(name)
        self._detect = [(w, n) for w, n in self._detect if n not in self.relevant]

    # ---------------------------------------------------------------- one line

    def _line(self, raw: str, number: int, roles: Optional[Set[Tuple[int, int]]]) -> None:
        text = raw[:MAX_LINE].rstrip("\r\n")
        if self._detect:
            self._detect_projects(text.lower())
        key, body = split_prefix(text)
        unit_role = self._structure(key, body, number)
        if not roles:
            return
        hits: List[Tuple[int, int, int, Dict[str, str]]] = []  # (rank, issue index, pattern index, groups)
        for idx in sorted({i for i, _ in roles}):
            it = self._issues[idx]
            for ci, crx in enumerate(it.context):
                if (idx, -1 - ci) in roles and crx.search(text):
                    self._ctx_last[idx] = number
                    if key in self._units:
                        self._units[key].ctx_issues.add(idx)
            pats = sorted(j for i, j in roles if i == idx and j >= 0)
            for j in pats:
                m = it.rxs[j].search(text)
                if m is None:
                    continue
                if it.context and not self._context_ok(idx, key, number):
                    break
                groups = {k: v for k, v in m.groupdict().items() if v is not None}
                hits.append((self._rank(idx, j), idx, j, groups))
                break
        if not hits:
            return
        hits.sort(key=lambda h: h[0])
        if unit_role is not None and key in self._units:
            u = self._units[key]
            for rank, idx, _, groups in hits:
                u.hits.append((0 if unit_role == "exc" else 1, rank, idx, number, body.strip(),
                               u.exc_frame if unit_role == "exc" else u.last_frame, groups))
            return
        for rank, idx, _, groups in hits[:MAX_PER_LINE]:
            self._record(idx, number, body.strip(), "", groups, rank)

    def _context_ok(self, idx: int, key: str, number: int) -> bool:
        if key in self._units and idx in self._units[key].ctx_issues:
            return True
        last = self._ctx_last.get(idx)
        return last is not None and number - last <= CONTEXT_LINES

    def _rank(self, idx: int, j: int) -> int:
        """Sort key: project issues of named/detected projects first, then generic, then other projects; then specificity."""
        it = self._issues[idx]
        if it.project == GENERIC:
            tier = 1
        else:
            tier = 0 if it.project in self.relevant else 2
        bonus = 500 if it.context else 0
        return tier * 100000 - bonus - it.spec[j]

    def _record(self, idx: int, number: int, example: str, frame: str, groups: Dict[str, str], rank: int = 0) -> None:
        it = self._issues[idx]
        key = (it.project, it.issue.id)
        m = self.matches.get(key)
        if m is None:
            m = self.matches[key] = Match(it.project, it.issue, first_line=number, frame=frame, rank=rank,
                                          matrix=self.matrix)
        m.count += 1
        if groups and not m.groups:
            m.groups = {k: v[:200] for k, v in groups.items()}
        if len(m.examples) < MAX_EXAMPLES:
            m.examples.append(example[:300])
        if it.issue.decode and groups and len(m.notes) < 2:
            value = groups.get(it.issue.decode) or next(iter(groups.values()), "")
            note = _DECODERS[it.issue.decode](value, self.matrix) if it.issue.decode in _DECODERS else ""
            if note and note not in m.notes:
                m.notes.append(note)

    # ---------------------------------------------------------------- tracebacks

    def _structure(self, key: str, body: str, number: int) -> Optional[str]:
        """Follow the traceback of this rank: returns "frame", "exc" when the line belongs to one, else None."""
        stripped = body.lstrip()
        indent = len(body) - len(stripped)
        if len(self._units) > 1 or key not in self._units:
            for k in [k for k, v in self._units.items() if number - v.last > UNIT_IDLE]:
                self._close(k)
        u = self._units.get(key)
        if u is not None:
            u.last = number
        if stripped.startswith(TRACEBACK):
            if u is not None and u.state == "chain":  # "During handling of the above exception..."
                u.state, u.blanks, u.indent = "frames", 0, indent
                return "frame"
            if u is not None:
                self._close(key)
            self.tracebacks += 1
            self._units[key] = _Unit(start=number, indent=indent, last=number)
            return "frame"
        if u is None:
            return None
        u.lines += 1
        if u.lines > MAX_UNIT_LINES:
            self._close(key)
            return None
        if not stripped:
            u.blanks += 1
            if u.state == "exc" and u.blanks > 2:
                self._close(key)
                return None
            return "exc" if u.state == "exc" else "frame"
        if stripped.startswith(_CHAINED):
            u.state, u.blanks = "chain", 0
            return "frame"
        if u.state == "chain":
            return "frame"
        if u.state == "frames":
            fm = _FRAME.match(stripped)
            if fm:
                u.last_frame = f"{fm.group(1)}:{fm.group(2)}" + (f" in {fm.group(3)}" if fm.group(3) else "")
                return "frame"
            if indent > u.indent or stripped.startswith(("^", "~", "...", "[Previous line repeated")):
                return "frame"
            u.state, u.blanks, u.cont = "exc", 0, 0
            u.exc_frame, u.exc_line = u.last_frame, stripped
            u.open = not stripped.rstrip().endswith((".", ")", "'", '"', "]", "}"))
            return "exc"
        # state exc: the exception's message may go on over a few lines (indented, or after "Error:")
        if u.blanks == 0 and u.cont < 10 and (indent > u.indent or u.open):
            u.cont += 1
            u.open = not stripped.rstrip().endswith((".", ")", "'", '"', "]", "}"))
            return "exc"
        self._close(key)
        return None

    def _close(self, key: str) -> None:
        u = self._units.pop(key, None)
        if u is None or not u.hits:
            return
        # root exception first (exception lines in order), then the frames' own lines; each issue once
        u.hits.sort(key=lambda h: (h[0], h[1]))
        seen: Set[int] = set()
        for n, (role, rank, idx, number, text, frame, groups) in enumerate(u.hits):
            if idx in seen:
                continue
            seen.add(idx)
            if len(seen) > MAX_PER_LINE:
                break
            self._record(idx, u.start, text, frame, groups, n)

    # ---------------------------------------------------------------- results

    def results(self) -> List[Match]:
        """Harmful matches first (by first line, most specific first), then the benign ones."""
        def order(m: Match) -> Tuple[Any, ...]:
            tier = 1 if m.project == GENERIC else (0 if m.project in self.relevant else 2)
            return (m.issue.benign, m.first_line, tier, m.rank, m.issue.id)
        return sorted(self.matches.values(), key=order)

    def harmful(self) -> bool:
        return any(m.harmful for m in self.matches.values())


def explain_stream(stream: TextIO, matrix: Matrix, projects: Optional[List[Project]] = None) -> Triage:
    return Triage(matrix, projects).feed_stream(stream)


def explain_text(text: str, matrix: Matrix, projects: Optional[List[Project]] = None, **kw: Any) -> Triage:
    return Triage(matrix, projects, **kw).feed_stream(io.StringIO(text, newline=None))
