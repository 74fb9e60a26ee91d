"""Fleet drift: read many `doctor --json` reports (one per node) and group nodes by every fact that differs.

moe-env never reaches the nodes itself: Slurm's srun, pdsh or the deepspeed launcher run
`moe-env doctor --json` everywhere and this module reads what comes back, from files, folders or
a stream where pdsh prefixed every line with `host: `. A single node with another deepspeed or NCCL
hangs a whole job without a useful error, so drift in what must match for training together
(`matters`) fails the command; the rest is shown for information.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from moe_env.environment import normalize_name
from moe_env.errors import UsageError
from moe_env.report import environment_section

DIFF_SCHEMA = "moe-env.diff/1"

# Packages whose versions must agree on every node of one job (the list, plus NCCL's wheels).
MATTERING_PACKAGES = {"torch", "deepspeed", "transformers", "accelerate"}
_NCCL_PACKAGE = re.compile(r"^nvidia-nccl-cu\d+$")

# `host: text` as pdsh prints it (dshbak-style names), or `0: text` as `srun --label` does.
_PREFIX = re.compile(r"^([A-Za-z0-9_.\-\[\]]+): ?(.*)$")


@dataclass
class NodeReport:
    node: str  # the name the node goes by in the output
    origin: str  # where it came from: a file, "stdin", "stdin (host n01)"
    facts: Dict[str, Tuple[str, bool, Optional[str]]]  # node_facts() of its environment


@dataclass
class Drift:
    fact: str  # "package deepspeed", "torch.cuda", "driver"...
    matters: bool  # must agree for nodes to train together
    groups: List[Tuple[str, List[str]]]  # (value, nodes), largest group first

    def to_dict(self) -> Dict[str, Any]:
        return {
            "fact": self.fact,
            "matters": self.matters,
            "groups": [{"value": value, "nodes": nodes} for value, nodes in self.groups],
        }


@dataclass
class FleetDiff:
    nodes: List[str]
    drifts: List[Drift] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    @property
    def mattering(self) -> List[Drift]:
        return [d for d in self.drifts if d.matters]

    def exit_code(self) -> int:
        return 1 if self.mattering else 0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": DIFF_SCHEMA,
            "nodes": self.nodes,
            "drift": [d.to_dict() for d in self.drifts],
            "ignored": self.ignored,
            "summary": {
                "nodes": len(self.nodes),
                "facts_differing": len(self.drifts),
                "facts_that_matter": len(self.mattering),
            },
        }


# ---------------------------------------------------------------- reading


# Reading is JSON decoding of ~75 KiB per node; past this many files it is spread over processes.
PARALLEL_FROM = 64


def read_reports(paths: Sequence[str], stdin_text: Optional[str] = None) -> List[NodeReport]:
    """Reports from files, folders (their *.json and *.jsonl files) and, for "-", stdin's text."""
    reports: List[NodeReport] = []
    files: List[Path] = []
    for raw in paths:
        if raw == "-":
            reports.extend(parse_stream(stdin_text or "", "stdin"))
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".log"))
            if not found:
                raise UsageError(f"{path}: folder holds no reports (*.json, *.jsonl); write one per node with `moe-env doctor --json > DIR/$(hostname).json`")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    workers = min(os.cpu_count() or 1, 8)
    if len(files) >= PARALLEL_FROM and workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for parsed in pool.map(_parse_file, [str(f) for f in files], chunksize=32):
                reports.extend(parsed)
    else:
        for file in files:
            reports.extend(_parse_file(str(file)))
    if not reports:
        raise UsageError("no reports read; pass files or folders, or pipe `srun ... moe-env doctor --json` into `moe-env diff -`")
    return _unique_names(reports)


def _parse_file(name: str) -> List[NodeReport]:
    path = Path(name)
    return parse_stream(_read(path), name, default_node=path.stem)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None


def parse_stream(text: str, origin: str, default_node: Optional[str] = None) -> List[NodeReport]:
    """One or more JSON documents, pretty or one per line, possibly with pdsh/srun line prefixes.

    Lines with a `host: ` prefix are regrouped per host first (pdsh interleaves hosts line by line),
    then each host's text is read as a sequence of JSON documents.
    """
    if text.lstrip().startswith("{"):
        try:  # fast path: plain reports, pretty or one per line, no prefixes
            documents = _documents(text, origin)
        except UsageError:
            documents = None  # maybe prefixed lines after all; the slow path says what is wrong
        if documents is not None:
            return _node_reports(documents, None, origin, default_node)
    buffers: Dict[Optional[str], List[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        host = None
        if not stripped.startswith(("{", "}", "[", "]", '"')):
            match = _PREFIX.match(stripped)
            if match:
                host, line = match.group(1), match.group(2)
        buffers.setdefault(host, []).append(line)
    if not buffers:
        raise UsageError(f"{origin}: empty; expected `moe-env doctor --json` output")
    reports: List[NodeReport] = []
    for host, lines in buffers.items():
        where = origin if host is None else f"{origin} (host {host})"
        reports.extend(_node_reports(_documents("\n".join(lines), where), host, where, default_node))
    return reports


def _node_reports(documents: List[Any], host: Optional[str], where: str, default_node: Optional[str]) -> List[NodeReport]:
    reports: List[NodeReport] = []
    for index, doc in enumerate(documents):
        env = environment_section(doc, where)
        # a prefix names the node; a one-report file is named after the file (reports/$(hostname).json);
        # several reports in one file or stream go by the hostname each report carries
        if host is not None:
            node = host
        elif len(documents) == 1 and default_node:
            node = default_node
        else:
            node = _hostname(env) or f"{default_node or where}#{index + 1}"
        reports.append(NodeReport(node=node, origin=where, facts=node_facts(env)))
    return reports


def _documents(text: str, where: str) -> List[Any]:
    decoder = json.JSONDecoder()
    documents: List[Any] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            break
        try:
            doc, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, exc.pos) + 1
            at_end = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated")
            what = "truncated JSON" if at_end else "invalid JSON"
            raise UsageError(f"{where}: {what} at line {line} ({exc.msg}); is this `moe-env doctor --json` output, complete?") from None
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting deeper than the stack
            raise UsageError(f"{where}: unreadable JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
        documents.append(doc)
    return documents


def _hostname(env: Dict[str, Any]) -> Optional[str]:
    host = env.get("host") or {}
    return host.get("hostname") or None


def _unique_names(reports: List[NodeReport]) -> List[NodeReport]:
    seen: Dict[str, int] = {}
    for report in reports:
        count = seen.get(report.node, 0)
        seen[report.node] = count + 1
        if count:
            report.node = f"{report.node}#{count + 1}"
    return reports


# ---------------------------------------------------------------- facts


def _major(version: Optional[str]) -> Optional[str]:
    return version.split(".")[0] if version else version


def _minor(version: Optional[str]) -> Optional[str]:
    return ".".join(version.split(".")[:2]) if version else version


def node_facts(env: Dict[str, Any]) -> Dict[str, Tuple[str, bool, Optional[str]]]:
    """fact -> (shown value, matters, the part of it that must agree)."""
    facts: Dict[str, Tuple[str, bool, Optional[str]]] = {}

    def put(name: str, value: Any, matters: bool = False, agree: Optional[Callable[[str], Optional[str]]] = None) -> None:
        shown = "-" if value is None or value == "" else str(value)
        facts[name] = (shown, matters, agree(shown) if (agree and shown != "-") else shown)

    python = env.get("python") or {}
    put("python", python.get("version"), True, _minor)
    put("python.implementation", python.get("implementation"))
    put("glibc", python.get("glibc"))

    # the hot loop for 1,000 reports of ~250 packages: no closure, no regex for already-normal names
    for name, dist in (env.get("distributions") or {}).items():
        key = name if (name.islower() and "_" not in name and "." not in name) else normalize_name(name)
        version = (dist or {}).get("version") or "-"
        matters = key in MATTERING_PACKAGES or (key.startswith("nvidia-nccl-") and bool(_NCCL_PACKAGE.match(key)))
        facts["package " + key] = (version, matters, version)

    torch = env.get("torch") or {}
    put("torch.build", torch.get("version"), True)
    put("torch.cuda", torch.get("cuda"), True)
    put("torch.cudnn", torch.get("cudnn"))
    put("torch.cxx11_abi", torch.get("cxx11_abi"))

    deepspeed = env.get("deepspeed") or {}
    if deepspeed:
        put("deepspeed.built_torch", deepspeed.get("built_torch"), True)
        put("deepspeed.built_cuda", deepspeed.get("built_cuda"), True)
        put("deepspeed.built_nccl", deepspeed.get("built_nccl"), True)
        ops = sorted(k for k, v in (deepspeed.get("installed_ops") or {}).items() if v)
        put("deepspeed.prebuilt_ops", ",".join(ops) or "none")

    host = env.get("host") or {}
    put("driver", host.get("driver_version"), True, _major)
    gpus = host.get("gpus") or []
    put("gpu.model", ",".join(sorted({str(g.get("name")) for g in gpus})) or None)
    put("gpu.architecture", ",".join(sorted({str(g.get("compute_capability")) for g in gpus})) or None, True)
    put("gpu.count", len(gpus))
    put("nvcc", host.get("nvcc_version"))
    return facts


def diff_reports(reports: Sequence[NodeReport], ignore: Iterable[str] = ()) -> FleetDiff:
    """Every fact whose value is not the same on all nodes, nodes grouped by value."""
    ignored = sorted({normalize_name(i) for i in ignore})
    ignored_facts = set()
    for item in ignored:
        ignored_facts.update({f"package {item}", item})
    nodes = [r.node for r in reports]
    per_node = [r.facts for r in reports]
    names = sorted({name for facts in per_node for name in facts})
    drifts: List[Drift] = []
    for name in names:
        if name in ignored_facts or name.split(".")[0] in ignored_facts:
            continue
        absent = ("absent", name.startswith("package ") and _package_matters(name), "absent")
        values: Dict[str, List[str]] = {}
        agree_parts = set()
        matters = False
        for node, facts in zip(nodes, per_node):
            shown, fact_matters, agree = facts.get(name, absent)
            members = values.get(shown)
            if members is None:
                values[shown] = [node]
            else:
                members.append(node)
            agree_parts.add(agree)
            matters = matters or fact_matters
        if len(values) < 2:
            continue
        groups = sorted(values.items(), key=lambda item: (-len(item[1]), item[0]))
        drifts.append(Drift(fact=name, matters=matters and len(agree_parts) > 1, groups=groups))
    drifts.sort(key=lambda d: (not d.matters, d.fact))
    return FleetDiff(nodes=nodes, drifts=drifts, ignored=ignored)


def _package_matters(fact: str) -> bool:
    key = fact.split(" ", 1)[1]
    return key in MATTERING_PACKAGES or bool(_NCCL_PACKAGE.match(key))


# ---------------------------------------------------------------- rendering


def render_text(result: FleetDiff, color: bool = False, max_nodes: int = 8) -> str:
    from moe_env.term import paint

    lines: List[str] = []
    n = len(result.nodes)
    if not result.drifts:
        lines.append(paint(f"{n} node{'s' if n != 1 else ''}: no drift", "green", color))
        return "\n".join(lines) + "\n"
    lines.append(
        f"{n} nodes; {len(result.drifts)} fact{'s' if len(result.drifts) != 1 else ''} differ, "
        f"{len(result.mattering)} of them must agree for training together"
    )
    for drift in result.drifts:
        label = paint("DRIFT", "red", color) if drift.matters else paint("note ", "dim", color)
        lines.append(f"\n{label} {paint(drift.fact, 'bold', color)}")
        width = max(len(value) for value, _ in drift.groups)
        for value, members in drift.groups:
            shown = ", ".join(members[:max_nodes])
            if len(members) > max_nodes:
                shown += f", ... ({len(members)} nodes)"
            lines.append(f"  {value.ljust(width)}  {shown}")
    if result.mattering:
        lines.append(
            "\nNodes in the smaller groups above will hang or diverge in a joint job: "
            "install the same lockfile everywhere (`moe-env lock PROJECT`), or `--ignore PKG` a known-harmless difference."
        )
    if result.ignored:
        lines.append(f"ignored: {', '.join(result.ignored)}")
    return "\n".join(lines) + "\n"


def render_json(result: FleetDiff) -> str:
    return json.dumps(result.to_dict(), indent=2) + "\n"
