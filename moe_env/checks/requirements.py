"""Requires-Dist lines read the way `pip check` reads them, with a stdlib fast path.

Importing packaging.requirements (and its marker parser) costs more than the rest of doctor's checks
(~25 ms of regular-expression compilation), yet nearly every line installed metadata holds is
`name[extras] specifiers ; simple marker`. Those are parsed here; anything else (URLs, odd spacing,
unknown marker variables, legacy forms) goes to packaging, imported only then, so the judgement is
always packaging's: the fast path only accepts what it reads exactly as PEP 508 does.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

from moe_env.environment import normalize_name
from moe_env.record import Record, record


@record
class Req(Record):
    name: str  # as written
    specifier: str  # "" or ">=1.0,<2"
    marker: Optional[str]  # the text after ';', None when absent


class Unparsed(Exception):
    """The line is not valid PEP 508 (packaging says so too)."""


_LINE = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
    r"(?:\[(?P<extras>[A-Za-z0-9._,\s-]*)\])?\s*"
    r"(?P<paren>\()?\s*(?P<spec>(?:(?:~=|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*)(?(paren)\))\s*"
    r"(?:;\s*(?P<marker>.+?))?\s*$"
)
_CLAUSE = re.compile(r"(~=|==|!=|<=|>=|<|>)\s*([A-Za-z0-9.*+!_-]+)")


def parse(line: str) -> Req:
    """One Requires-Dist line; raises Unparsed when packaging cannot read it either."""
    m = _LINE.match(line)
    if m and "@" not in line:
        # sorted as str(SpecifierSet) writes it, so messages read the same whichever path parsed the line
        spec = ",".join(sorted(a + b for a, b in _CLAUSE.findall(m.group("spec") or "")))
        if (m.group("spec") or "").strip().endswith(","):
            m = None
        else:
            return Req(m.group("name"), spec, m.group("marker"))
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise Unparsed(str(exc)) from None
    return Req(req.name, str(req.specifier), str(req.marker) if req.marker is not None else None)


# ---------------------------------------------------------------- markers

_TOKEN = re.compile(r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b)|"
                    r"(?P<bool>and\b|or\b)|(?P<paren>[()])|(?P<var>[a-z_][a-z_.]*))")
_VERSION_VARS = {"python_version", "python_full_version", "implementation_version", "platform_release"}


class _Fallback(Exception):
    pass


def evaluate(marker: str, env: Dict[str, str]) -> Optional[bool]:
    """Whether `marker` holds in `env` (extras as not requested); None when it cannot be judged."""
    try:
        return _Evaluator(marker, env).run()
    except _Fallback:
        pass
    from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName

    try:
        return bool(Marker(marker).evaluate(env))
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
        return None


class _Evaluator:
    """A recursive-descent reader of `a OP b (and|or ...)` with parentheses; anything else -> _Fallback."""

    def __init__(self, text: str, env: Dict[str, str]):
        self.tokens = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise _Fallback
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        self.env = env

    def run(self) -> bool:
        value = self._or()
        if self.i != len(self.tokens):
            raise _Fallback
        return value

    def _next(self):
        if self.i >= len(self.tokens):
            raise _Fallback
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def _or(self) -> bool:
        value = self._and()
        while self._peek() == ("bool", "or"):
            self.i += 1
            rhs = self._and()
            value = value or rhs
        return value

    def _and(self) -> bool:
        value = self._atom()
        while self._peek() == ("bool", "and"):
            self.i += 1
            rhs = self._atom()
            value = value and rhs
        return value

    def _atom(self) -> bool:
        if self._peek() == ("paren", "("):
            self.i += 1
            value = self._or()
            if self._next() != ("paren", ")"):
                raise _Fallback
            return value
        lhs, op, rhs = self._next(), self._next(), self._next()
        if op[0] != "op":
            raise _Fallback
        return self._compare(lhs, " ".join(op[1].split()), rhs)

    def _value(self, tok):
        kind, text = tok
        if kind == "str":
            return text[1:-1], None
        if kind == "var" and text in self.env:
            return self.env[text], text
        raise _Fallback  # an unknown variable (or a keyword in the wrong place): packaging's error message

    def _compare(self, lhs_tok, op: str, rhs_tok) -> bool:
        lhs, lvar = self._value(lhs_tok)
        rhs, rvar = self._value(rhs_tok)
        if (lvar in _VERSION_VARS or rvar in _VERSION_VARS) and op not in ("in", "not in"):
            from moe_env.checks.facts import spec_contains

            if lvar is not None and rvar is None:
                ok = spec_contains(f"{op}{rhs}", lhs)
                if ok is not None:
                    return ok
            raise _Fallback
        if op in ("==", "==="):
            return lhs == rhs
        if op == "!=":
            return lhs != rhs
        if op == "in":
            return lhs in rhs
        if op == "not in":
            return lhs not in rhs
        raise _Fallback  # ordering of non-version strings: as packaging decides it


def name_of(line: str) -> Optional[str]:
    """The normalised distribution name a line requires, or None when unreadable."""
    try:
        return normalize_name(parse(line).name)
    except Unparsed:
        return None
