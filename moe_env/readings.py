"""Readings of an ambiguous message, and picking one from static evidence of an installed environment.

"cannot import name 'X'" means "X was removed, the code is older than the library" in one era and
"X is not there yet, the library is older than the code" in another. A known issue lists its readings,
each with a version condition (`[[known_issue.readings]]`, compat_matrix/README.md). Without an
environment explain prints them all; with `--python` this module picks the one whose condition the
installed release meets, and only when the static evidence agrees: the API table's row for the name
(when it was added and removed, read from real wheels) and the probe's reading of the installed source
(is the name there, read with ast, nothing imported). When the evidence cannot decide, it says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from moe_env.matrix.model import ApiEntry, KnownIssue, Matrix

PLACEHOLDERS = ("package", "first", "last")
_PH = re.compile(r"\{([^{}]*)\}")
NAME_GROUPS = ("module", "name")  # cannot import name '{name}' from '{module}'
ATTR_GROUPS = ("module", "attr")  # module '{module}' has no attribute '{attr}'
_DOTTED = re.compile(r"[A-Za-z_]\w{0,100}(?:\.[A-Za-z_]\w{0,100}){0,12}")
KWARG_GROUPS = ("param",)  # {func}() got an unexpected keyword argument '{param}'


def condition(when: str, values: Dict[str, str]) -> Requirement:
    """`when` with its placeholders filled in; ValueError unless it is NAME plus a version specifier."""
    unknown = [n for n in _PH.findall(when) if n not in PLACEHOLDERS]
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: {', '.join('{%s}' % p for p in PLACEHOLDERS)})")
    text = _PH.sub(lambda m: values.get(m.group(1), ""), when)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"not a requirement ({str(exc).splitlines()[0] if str(exc) else 'unparsable'})") from None
    if req.url or req.extras or req.marker:
        raise ValueError("only a package name and a version specifier (no extras, URL or marker)")
    if not str(req.specifier):
        raise ValueError("names no version condition (e.g. transformers>=4.38)")
    for spec in req.specifier:
        try:
            Version(spec.version.rstrip(".*"))
        except InvalidVersion:
            raise ValueError(f"{spec.version!r} is not a version") from None
    return req


def uses_api(issue: KnownIssue) -> bool:
    """Whether the readings' conditions are relative to the API-table row of the name in the message."""
    return any(_PH.search(r.when) for r in issue.readings)


def validate(issue: KnownIssue) -> Optional[Tuple[str, str]]:
    """(key, reason) of the first problem of an issue's readings, or None."""
    if not issue.readings:
        if issue.symbol or issue.param:
            return "symbol", "symbol/param say which API row tells readings apart; the issue has no readings"
        return None
    if len(issue.readings) < 2:
        return "readings", "an ambiguous message has two or more readings (one reading belongs in cause/fix)"
    seen = set()
    for i, r in enumerate(issue.readings):
        if not re.fullmatch(r"[a-z][a-z0-9-]*", r.id):
            return f"readings[{i}].id", f"{r.id!r} is not a lower-case id (too-new, removed...)"
        if r.id in seen:
            return f"readings[{i}].id", f"duplicate reading id {r.id!r}"
        seen.add(r.id)
        if not r.cause.strip() or not r.fix.strip():
            return f"readings[{i}]", "a reading needs a cause and a fix"
        try:
            condition(r.when, {"package": "pkg", "first": "1.0", "last": "2.0"})
        except ValueError as exc:
            return f"readings[{i}].when", f"{r.when!r}: {exc}"
    if issue.param and not issue.symbol:
        return "param", "param needs symbol"
    if uses_api(issue) and not issue.symbol:
        for j, pat in enumerate(issue.patterns):
            groups = set(re.compile(pat).groupindex)
            if not any(set(g) <= groups for g in (NAME_GROUPS, ATTR_GROUPS, KWARG_GROUPS)):
                return (f"patterns[{j}]", "readings with {package}/{first}/{last} need `symbol`, or patterns with the "
                        "named groups (?P<module>..) and (?P<name>..) or (?P<attr>..), or (?P<param>..), that say "
                        "which name the message quotes")
    return None


# ---------------------------------------------------------------- the name the message is about


@dataclass
class Subject:
    """The API-table row (when known) of the name a matched message quotes, and what to probe."""

    package: str  # normalised distribution name ("" when the message names no known package)
    symbol: str  # dotted symbol to look up in the installed source
    param: str
    shown: str  # as printed: "shard_checkpoint", "MoE.__init__(top2_2nd_expert_sampling=)"
    direct: bool  # the message says this very name is missing (vs a library passing it to the user's code)
    row: Optional[ApiEntry] = None
    why_no_row: str = ""


def _rows(matrix: Matrix, package: str) -> List[ApiEntry]:
    return matrix.api.get(canonicalize_name(package), [])


def subject(issue: KnownIssue, groups: Dict[str, str], matrix: Matrix) -> Optional[Subject]:
    """What to look for, from the issue's `symbol` or the message's named groups; None when neither says."""
    if issue.symbol:
        package = issue.symbol.split(".", 1)[0]
        rows = [e for e in _rows(matrix, package) if e.symbol == issue.symbol and e.param == issue.param]
        shown = f"{_tail(issue.symbol)}({issue.param}=)" if issue.param else _tail(issue.symbol)
        return Subject(canonicalize_name(package), issue.symbol, issue.param, shown, False, rows[0] if rows else None,
                       "" if rows else f"no API-table row for {issue.symbol}")
    if (groups.get("name") or groups.get("attr")) and groups.get("module"):
        module, name = groups["module"].rstrip("."), groups.get("name") or groups["attr"]
        if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(name):
            return None  # log text: only a plain dotted name is looked up
        package = module.split(".", 1)[0]
        symbol = f"{module}.{name}"
        rows = [e for e in _rows(matrix, package) if not e.param and e.symbol == symbol]
        if not rows:  # `from transformers import X` of a name the table keeps under its module
            rows = [e for e in _rows(matrix, package) if not e.param and e.symbol.startswith(module + ".")
                    and e.symbol.endswith("." + name)]
        if len({e.symbol for e in rows}) > 1:
            return Subject(canonicalize_name(package), symbol, "", name, True, None,
                           f"the API table has {len(rows)} rows named {name} under {module}")
        row = rows[0] if rows else None
        return Subject(canonicalize_name(package), row.symbol if row else symbol, "", name, True, row,
                       "" if row else f"the matrix's API tables have no row for {symbol}")
    if groups.get("param"):
        param, func = groups["param"], groups.get("func", "")
        if not _DOTTED.fullmatch(param) or (func and not _DOTTED.fullmatch(func)):
            return None
        rows = [e for entries in matrix.api.values() for e in entries if e.param == param]
        direct = [e for e in rows if func and "." in func and (e.symbol == func or e.symbol.endswith("." + func))]
        named = [e for e in rows if func and func.endswith(".".join(e.symbol.split(".")[-2:]))]
        pick, is_direct = (direct, True) if direct else (named, False) if named else (rows, False)
        shown = f"{func or '...'}({param}=)"
        if len({e.symbol for e in pick}) == 1:
            e = pick[0]
            return Subject(_package_of(matrix, e), e.symbol, param, shown, is_direct, e)
        why = (f"the matrix's API tables have no row for a parameter {param!r}" if not pick else
               f"the API tables have {len({e.symbol for e in pick})} functions with a parameter {param!r}; "
               "the message does not say which")
        return Subject("", "", param, shown, bool(direct), None, why)
    return None


def _tail(symbol: str) -> str:
    parts = symbol.split(".")
    return ".".join(parts[-2:]) if parts[-1] in ("__init__", "forward") else parts[-1]


def _package_of(matrix: Matrix, entry: ApiEntry) -> str:
    return next((pkg for pkg, rows in matrix.api.items() if any(e is entry for e in rows)), "")


def probe_symbols(issue: KnownIssue, groups: Dict[str, str], matrix: Matrix) -> List[str]:
    """The symbols `explain --python` must ask the probe about for this match."""
    if not issue.readings:
        return []
    s = subject(issue, groups, matrix)
    return [s.symbol] if s is not None and s.symbol else []


# ---------------------------------------------------------------- picking


@dataclass
class Pick:
    """The reading picked for one match, or none, and the evidence either way."""

    reading: str  # the picked reading's id; "" when undecided
    why: str

    def to_dict(self) -> Dict[str, object]:
        return {"reading": self.reading or None, "decided": bool(self.reading), "why": self.why}


def _oldest_first(matrix: Matrix, package: str) -> Optional[Version]:
    """The oldest release the package's API table was read from: a row starting there may be older still."""
    versions = []
    for e in _rows(matrix, package):
        try:
            versions.append(Version(e.first))
        except InvalidVersion:
            continue
    return min(versions) if versions else None


def pick(issue: KnownIssue, groups: Dict[str, str], env, matrix: Matrix, python: str) -> Pick:
    """Which reading holds in `env` (an Environment the probe made), from its installed versions, the API
    table and the installed source; undecided, with the reason, when those do not single one out."""
    s = subject(issue, groups, matrix) if (uses_api(issue) or issue.symbol) else None
    seen = _seen(s, env) if s is not None and s.symbol else None
    row = s.row if s is not None else None
    values = {"package": s.package, "first": row.first, "last": row.last} if s is not None and row else {}
    conds = {}
    for r in issue.readings:
        if _PH.search(r.when) and not values:
            continue
        if "{last}" in r.when and not values.get("last"):
            continue  # the name is still in the newest release the table read: it was not removed
        conds[r.id] = condition(r.when, values)
    package = canonicalize_name(next(iter(conds.values())).name) if conds else (s.package if s is not None else "")
    installed = env.version_of(package) if package else None
    if installed is None:
        return Pick("", f"cannot pick: {package or 'the package the message names'} is not installed in {python}")
    try:
        v = Version(installed)
    except InvalidVersion:
        return Pick("", f"cannot pick: {package} {installed} in {python} is not a version packaging reads")
    facts = [f"{package} {installed} is installed"]
    if seen is not None and s is not None:
        facts.append(f"{s.shown} is {'present in' if seen[0] else 'absent from'} it{seen[1]}")
    elif s is not None and s.symbol:
        facts.append(f"whether {s.shown} is in it cannot be read statically")
    if s is not None and s.direct and seen is not None and seen[0] and groups.get("attr") and seen[2] == "module":
        return Pick("", "ruled out here: " + "; ".join(facts) + f": {s.shown} is a submodule there, an attribute of its "
                    f"parent only once something imports it (import {s.symbol} explicitly)")
    if s is not None and s.direct and seen is not None and seen[0]:
        return Pick("", "ruled out here: " + "; ".join(facts) + ": the failing process ran another environment "
                    f"(or another copy of {package} shadows this one)")
    if s is not None and row is None and uses_api(issue):
        return Pick("", "cannot pick: " + "; ".join(facts) + f"; {s.why_no_row}, so when it was added or removed is not known")
    if s is not None and row is not None:
        facts.append(_table_text(s, _oldest_first(matrix, s.package)))
        expected = _expected(row, v)
        if expected is None:
            return Pick("", "cannot pick: " + "; ".join(facts) + f": {installed} is newer than the table read")
        if seen is not None and seen[0] != expected:
            return Pick("", "cannot pick: " + "; ".join(facts) + ": the installed source disagrees with the table "
                        "(a patched or unusual install)")
    holding = [rid for rid, req in conds.items() if req.specifier.contains(v, prereleases=True)]
    if len(holding) != 1:
        what = "no reading's condition holds" if not holding else "more than one reading's condition holds"
        return Pick("", "cannot pick: " + "; ".join(facts) + f": {what} ("
                    + "; ".join(f"{rid}: {req}" for rid, req in conds.items()) + ")")
    chosen = holding[0]
    when = next(r.when for r in issue.readings if r.id == chosen)
    oldest = _oldest_first(matrix, s.package) if s is not None and row is not None else None
    if row is not None and "{first}" in when and oldest is not None and Version(row.first) <= oldest and v < oldest:
        return Pick("", "cannot pick: " + "; ".join(facts) + f": {row.first} is the oldest release the table read, "
                    "so whether older ones had it is not known")
    return Pick(chosen, f"picked: {chosen} — " + "; ".join(facts) + f" ({conds[chosen]} holds)")


def _expected(row: ApiEntry, v: Version) -> Optional[bool]:
    """Whether the table says release `v` has the row's name; None when v is past what it checked."""
    first = Version(row.first)
    last = Version(row.last) if row.last else None
    newest = Version(row.newest_checked) if row.newest_checked else last
    if v < first:
        return False
    if last is not None and v > last:
        return False
    if newest is not None and v > newest:
        return None
    return True


def _table_text(s: Subject, oldest: Optional[Version]) -> str:
    e = s.row
    assert e is not None
    since = " (the oldest release it read)" if oldest is not None and Version(e.first) <= oldest else ""
    span = f"first in {e.first}{since}" + (f", last in {e.last}" if e.last else
                                    f", still in {e.newest_checked}" if e.newest_checked else "")
    return f"matrix API table: {s.shown} {span} ({e.source[-1] if e.last else e.source[0]})"


def _seen(s: Subject, env) -> Optional[Tuple[bool, str, str]]:
    """(present, where, kind) from the probe's static reading of the installed source; None when undecided."""
    info = env.api.get(s.symbol)
    if info is None or info.undecided:
        return None
    if not info.found:
        return False, f" ({info.file} read)" if info.file else " (no such module)", ""
    loc = f" ({info.file}:{info.line})" if info.file and info.line else f" ({info.file})" if info.file else ""
    if s.param:
        return s.param in (info.params or []), loc, info.kind or ""
    return True, loc, info.kind or ""


def shown_when(issue: KnownIssue, reading, groups: Dict[str, str], matrix: Matrix) -> str:
    """A reading's condition as printed: placeholders filled from the API-table row of the name the
    message quotes (the matrix alone says that, no environment needed), else said in words."""
    if not _PH.search(reading.when):
        return reading.when
    s = subject(issue, groups, matrix)
    if s is not None and s.row is not None:
        if "{last}" in reading.when and not s.row.last:
            return f"never so far: {s.shown} is still in {s.row.newest_checked or s.row.first}"
        try:
            text = str(condition(reading.when, {"package": s.package, "first": s.row.first, "last": s.row.last}))
        except ValueError:
            return reading.when
        oldest = _oldest_first(matrix, s.package)
        if "{first}" in reading.when and oldest is not None and Version(s.row.first) <= oldest:
            text += f" ({s.row.first} is the oldest release the table read; older ones were not checked)"
        return text
    if "{last}" in reading.when:
        return "installed release newer than the last one that has it"
    if "{first}" in reading.when and "<" in reading.when:
        return "installed release older than the first one that has it"
    if "{first}" in reading.when:
        return "installed release at or past the first one that has it"
    return reading.when
