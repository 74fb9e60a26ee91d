"""The registries of check functions, and the context every check reads.

Project `[[check]]` entries name a *kind*; each kind is one small function registered here under
that name, so a matrix file can only ask for rules the code knows (`moe-env matrix validate` looks
them up in `KINDS`). Generic checks (any project) are registered by name in `GENERIC`, in order.
Checks are pure: they read an Environment and the Matrix and return Findings; they never touch the
file system, the network or the target interpreter.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from moe_env.environment import Environment
from moe_env.findings import Finding
from moe_env.matrix.model import Check, Matrix, Project, Variant
from moe_env.record import Record, field, record

KindFn = Callable[["Context", Check], List[Finding]]
GenericFn = Callable[["Context"], List[Finding]]

KINDS: Dict[str, KindFn] = {}
GENERIC: Dict[str, GenericFn] = {}


def kind(name: str) -> Callable[[KindFn], KindFn]:
    """Register a project check kind (the `kind` of a `[[check]]` entry)."""

    def deco(fn: KindFn) -> KindFn:
        if name in KINDS:
            raise ValueError(f"check kind {name!r} registered twice")
        KINDS[name] = fn
        return fn

    return deco


def generic(name: str) -> Callable[[GenericFn], GenericFn]:
    """Register a check that holds for every project (run in registration order)."""

    def deco(fn: GenericFn) -> GenericFn:
        if name in GENERIC:
            raise ValueError(f"generic check {name!r} registered twice")
        GENERIC[name] = fn
        return fn

    return deco


@record
class Context(Record):
    """What a check may read: the probed environment, the matrix, and the project/variants judged."""

    env: Environment
    matrix: Matrix
    project: Optional[Project] = None
    variants: List[Variant] = field(default_factory=list)

    @property
    def build_mode(self) -> bool:
        return bool(self.env.host.build_mode)

    def needs_bf16(self) -> List[Variant]:
        return [v for v in self.variants if v.bf16]
