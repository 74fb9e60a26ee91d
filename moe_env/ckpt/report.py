"""The result of one inspection (CkptReport) and the wording helpers every format uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

from moe_env.ckpt._untrusted import printable
from moe_env.findings import Finding


@dataclass
class CkptReport:
    path: str
    # "hf-safetensors", "hf-bin", "hf-trainer", "megatron-legacy", "megatron-torch-dist", "torch-file",
    # "deepspeed", "xtuner"
    format: str
    layout: str = "dense"  # one of LAYOUTS' ids, "mixed", or "dense" when no expert keys were found
    tensors: int = 0
    shards: int = 0
    layers_with_experts: int = 0
    experts_per_layer: Dict[int, int] = field(default_factory=dict)
    expected: Dict[str, Any] = field(default_factory=dict)  # from config.json / args: layers, experts, moe layers
    facts: Dict[str, Any] = field(default_factory=dict)  # iteration, ranks, model_type...
    findings: List[Finding] = field(default_factory=list)
    loader: str = ""  # what loads this folder: "transformers", "megatron", "deepspeed", "xtuner"

    @property
    def complete(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def add(self, **kw: Any) -> Finding:
        f = Finding(**kw)
        self.findings.append(f)
        return f

    def to_dict(self) -> Dict[str, Any]:
        from moe_env.ckpt.layouts import LAYOUT_TITLES

        return {
            "schema": "moe-env.ckpt/1",
            "path": self.path,
            "format": self.format,
            "loader": self.loader,
            "layout": self.layout,
            "layout_title": LAYOUT_TITLES.get(self.layout, self.layout),
            "complete": self.complete,
            "tensors": self.tensors,
            "shards": self.shards,
            "layers_with_experts": self.layers_with_experts,
            "experts_per_layer": {str(k): v for k, v in sorted(self.experts_per_layer.items())},
            "expected": self.expected,
            "facts": self.facts,
            "findings": [f.to_dict() for f in self.findings],
        }

    def sanitize(self) -> "CkptReport":
        """Escape control characters in every string that came from the checkpoint (names, pickled values):
        the one place all printed and --json text passes, so no format can forget it."""
        self.path = printable(self.path)
        self.facts = plain(self.facts)
        self.expected = plain(self.expected)
        for f in self.findings:
            f.title, f.seen, f.why, f.fix = (printable(f.title), printable(f.seen), printable(f.why), printable(f.fix))
            f.sources = [printable(s) for s in f.sources]
        return self


def plain(value: Any, depth: int = 0, budget: Optional[List[int]] = None) -> Any:
    """JSON-safe, bounded copy of facts: str/int/float/bool/None, lists and dicts of those; strings escaped.
    Anything else (a pickled Record) becomes its type name; cycles, shared-reference blow-ups and deep
    nesting are cut (at most 8 levels, 200 items per container, 5000 values in all)."""
    if budget is None:
        budget = [5000]
    budget[0] -= 1
    if depth > 8 or budget[0] < 0:
        return "..."
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 1 << 63 else "<a very large integer>"
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, str):
        return printable(value[:2000])
    if isinstance(value, dict):
        return {_key(k): plain(v, depth + 1, budget) for k, v in list(value.items())[:200]}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1, budget) for v in list(value)[:200]]
    return f"<{type(value).__name__}>"


def brief(v: Any, limit: int = 40) -> str:
    """A short, safe rendering of an untrusted value for a message: never str()/repr() of a container
    (a pickled shared-reference structure can be exponentially large when printed)."""
    if v is None or isinstance(v, (bool, int, float)):
        text = str(v) if not isinstance(v, int) or abs(v) < 10 ** 30 else "<a very large integer>"
    elif isinstance(v, str):
        text = repr(v[:limit])
    elif isinstance(v, (list, tuple, dict, set, frozenset)):
        text = f"<{type(v).__name__} of {len(v)}>"
    else:
        text = f"<{type(v).__name__}>"
    return printable(text[:limit + 10])


def _key(k: Any) -> str:
    if isinstance(k, str):
        return printable(k[:200])
    if isinstance(k, (int, float, bool)) or k is None:
        return str(k)[:40]
    return f"<{type(k).__name__}>"


def plural(n: int, word: str, many: str = "") -> str:
    """'1 layer', '2 layers' (many: the irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def and_list(items: Sequence[Any], limit: int = 8) -> str:
    """'5', '5 and 7', '1, 3 and 5', '1, 2, ... and 9 more'."""
    items = [str(i) for i in items]
    if len(items) > limit:
        return ", ".join(items[:limit]) + f" and {len(items) - limit} more"
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def short(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    head = ", ".join(items[:n])
    return head + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def ranges(nums: Iterable[int]) -> str:
    """'0-3, 5, 7-9' for a set of ranks."""
    xs = sorted(set(nums))
    out: List[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)
