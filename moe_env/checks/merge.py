"""One finding per problem: findings whose fixes install the same package become one, with one range.

Several rules can judge one package (MGM-8x7B: set_z3_leaf_modules needs deepspeed >= 0.13.0, the
tested range is 0.13.2-0.14.5, the pydantic<2 pin caps it below 0.15.0). Reported apart they give
overlapping fixes; merged they give the intersection, the strongest severity and every reason.
Findings whose fix needs another index (a torch CUDA build) are never merged: their requirement is exact.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from moe_env.checks.facts import parse_version
from moe_env.environment import Environment, normalize_name
from moe_env.findings import SEVERITY_ORDER, Finding

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")
_CLAUSE = re.compile(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*([^\s,]+)\s*$")


def split_requirement(text: str) -> Optional[Tuple[str, str]]:
    """"deepspeed>=0.13.0,<=0.14.5" -> ("deepspeed", ">=0.13.0,<=0.14.5"); None when it is not that shape."""
    m = _REQ.match(text or "")
    if not m or ";" in text or "@" in text or "[" in text:
        return None
    return normalize_name(m.group(1)), m.group(2).replace(" ", "")


def intersect(specs: List[str]) -> Optional[str]:
    """The simplest specifier meaning all of `specs` (tightest bounds kept); None when no version could satisfy
    it or a clause is not understood (then the findings stay apart)."""
    lower = upper = None  # (Version, inclusive, text)
    pins, others = [], []
    for spec in specs:
        for clause in filter(None, (c.strip() for c in spec.split(","))):
            m = _CLAUSE.match(clause)
            if not m:
                return None
            op, text = m.groups()
            v = parse_version(text.rstrip(".*")) if op in ("==", "!=") else parse_version(text)
            if v is None:
                return None
            if op in (">=", ">"):
                cand = (v, op == ">=", clause)
                if lower is None or v > lower[0] or (v == lower[0] and not cand[1]):
                    lower = cand
            elif op in ("<=", "<"):
                cand = (v, op == "<=", clause)
                if upper is None or v < upper[0] or (v == upper[0] and not cand[1]):
                    upper = cand
            elif op in ("==", "==="):
                if clause not in pins:
                    pins.append(clause)
            elif clause not in others:
                others.append(clause)
    if len(pins) > 1:
        return None
    if lower and upper and (lower[0] > upper[0] or (lower[0] == upper[0] and not (lower[1] and upper[1]))):
        return None
    if pins:
        pinned = parse_version(pins[0].lstrip("=").rstrip(".*"))
        if pinned is not None and "*" not in pins[0]:
            if lower and (pinned < lower[0] or (pinned == lower[0] and not lower[1])):
                return None
            if upper and (pinned > upper[0] or (pinned == upper[0] and not upper[1])):
                return None
            return ",".join(pins + others)
    parts = [b[2] for b in (lower, upper) if b] + pins + others
    return ",".join(parts)


# one line per unmet Requires-Dist, as `uv pip check` prints them: never merged
_NOT_MERGED = ("deps.", "lock.")


def merge_findings(findings: List[Finding], env: Environment, project_title: Optional[str] = None,
                   bounds: Optional[Dict[str, List[str]]] = None) -> List[Finding]:
    """Merge error/warning findings that install the same package into one (order otherwise kept).

    `bounds` are the specifiers every applicable rule puts on a package (fired or not): a merged fix
    keeps inside them too, so following it does not trade one finding for another.
    """
    groups: Dict[str, List[int]] = {}
    for i, f in enumerate(findings):
        if f.deferred or f.index_url or f.severity not in ("error", "warning") or not f.requirement \
                or f.id.startswith(_NOT_MERGED):
            continue
        req = split_requirement(f.requirement)
        if req is not None:
            groups.setdefault(req[0], []).append(i)
    replace: Dict[int, Optional[Finding]] = {}
    for name, idx in groups.items():
        if len(idx) < 2:
            continue
        # by severity, then in the order the checks ran (a project file lists the cause first)
        members = sorted((findings[i] for i in idx), key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
        spec = intersect([split_requirement(f.requirement)[1] for f in members])
        if spec is None:
            continue
        spec = intersect([spec] + list((bounds or {}).get(name, []))) or spec
        merged = _merged(name, spec, members, env, project_title)
        replace[idx[0]] = merged
        for i in idx[1:]:
            replace[i] = None
    out = []
    for i, f in enumerate(findings):
        if i in replace:
            if replace[i] is not None:
                out.append(replace[i])
        else:
            out.append(f)
    return out


def _merged(name: str, spec: str, members: List[Finding], env: Environment, project_title: Optional[str]) -> Finding:
    first = members[0]
    installed = env.version_of(name)
    have = f"{name} {installed} is installed" if installed else f"{name} is not installed"
    who = project_title or "this environment"
    sources: List[str] = []
    for f in members:
        sources.extend(s for s in f.sources if s not in sources)
    return Finding(
        id=first.id,
        severity=first.severity,
        title=f"{who} needs {name}{spec}; {have}",
        seen="; ".join(f"[{f.id}] {f.title}: {f.seen}" for f in members),
        why=" Also: ".join(f.why for f in members if f.why),
        fix=f"pip install '{name}{spec}'",
        sources=sources,
        requirement=f"{name}{spec}",
    )
