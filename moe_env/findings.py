"""A Finding: one problem (or note) with what was seen, why it matters, the fix and its sources.

doctor, check-config and explain all produce Findings, so they render and exit the same way.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from moe_env.record import Record, asdict, field, fields, record

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@record
class Finding(Record):
    id: str  # stable, dotted: "torch.driver-too-old", "minigemini.deepspeed-z3-leaf"
    severity: str  # "error" | "warning" | "info"
    title: str
    seen: str  # what was observed, with the versions
    why: str  # why it matters
    fix: str = ""  # a command where one exists
    sources: List[str] = field(default_factory=list)
    deferred: bool = False  # a host check postponed by --build (no driver/GPU at build time)
    # what the fix installs, as one requirement ("deepspeed>=0.13.2,<=0.14.5"), and the index it needs
    # ("" = the default one): the text report ends with one install command made of these
    requirement: str = ""
    index_url: str = ""
    # deps.missing / deps.conflict: the distribution whose Requires-Dist asks for `requirement` (normalised name)
    required_by: Optional[str] = None
    # doctor --code: where in the user's checkout (path relative to it, line, the source line as written)
    file: Optional[str] = None
    line: Optional[int] = None
    code: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for key in ("file", "line", "code", "required_by"):  # only code findings carry a location, deps ones whom
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Finding":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def sort_findings(findings: Iterable[Finding]) -> List[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.id))


def summarize(findings: Iterable[Finding]) -> Dict[str, int]:
    counts = {"error": 0, "warning": 0, "info": 0, "deferred": 0}
    for f in findings:
        if f.deferred:
            counts["deferred"] += 1
        else:
            counts[f.severity] = counts.get(f.severity, 0) + 1
    return counts


def exit_code(findings: Iterable[Finding], strict: bool = False) -> int:
    """0 no errors; 1 errors (with strict, warnings too). Deferred findings never fail."""
    for f in findings:
        if f.deferred:
            continue
        if f.severity == "error" or (strict and f.severity == "warning"):
            return 1
    return 0
