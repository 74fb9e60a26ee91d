"""Fleet drift: read many `doctor --json` reports (one per node) and group nodes by every fact that differs.

moe-env never reaches the nodes itself: Slurm's srun, pdsh or the deepspeed launcher run
`moe-env doctor --json` everywhere and this module reads what comes back, from files, folders or
a stream where pdsh prefixed every line with `host: `. A single node with another deepspeed or NCCL
hangs a whole job without a useful error, so drift in what must match for training together fails
the command; what only should match is a warning; the rest is shown for information. Which is which,
and why, is the matrix's [[fleet_fact]] table (compat_matrix/fleet.toml).
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
from moe_env.untrusted import printable

DIFF_SCHEMA = "moe-env.diff/1"

# Packages whose versions must agree on every node of one job, plus NCCL's wheels.
MATTERING_PACKAGES = {"torch", "deepspeed", "transformers", "accelerate"}
_NCCL_PACKAGE = re.compile(r"^nvidia-nccl-cu\d+$")


def fact_rules() -> List[Any]:
    """The matrix's [[fleet_fact]] table (compat_matrix/fleet.toml): what must or should agree, and why."""
    from moe_env.matrix.cache import load_matrix_cached

    return list(load_matrix_cached().fleet_facts)


def fact_rule(fact: str, rules: Sequence[Any]) -> Optional[Any]:
    import fnmatch

    for r in rules:
        if r.fact == fact or ("*" in r.fact and fnmatch.fnmatchcase(fact, r.fact)):
            return r
    return None


def _agree_part(value: str, how: str) -> str:
    if how == "exact" or value in ("-", "absent"):
        return value
    parts = value.split("+", 1)[0].split(".")
    return ".".join(parts[:1 if how == "major" else 2])


# `host: text` as pdsh prints it (dshbak-style names), or `0: text` as `srun --label` does.
_PREFIX = re.compile(r"^([A-Za-z0-9_.\-\[\]]+): ?(.*)$")


@dataclass
class NodeReport:
    node: str  # the name the node goes by in the output
    origin: str  # where it came from: a file, "stdin", "stdin (host n01)"
    facts: Dict[str, Tuple[str, bool, Optional[str]]]  # node_facts() of its environment
    hostname: Optional[str] = None  # what the report says (environment.host.hostname)
    digest: str = ""  # of the whole document, to spot the same report passed twice


@dataclass
class Drift:
    fact: str  # "package deepspeed", "torch.cuda", "driver"...
    matters: bool  # must agree for nodes to train together
    groups: List[Tuple[str, List[str]]]  # (value, nodes), largest group first
    severity: str = "note"  # "error" (must agree), "warning" (should), "note"
    why: str = ""
    sources: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "fact": self.fact,
            "matters": self.matters,
            "severity": self.severity,
            "groups": [{"value": value, "nodes": nodes} for value, nodes in self.groups],
            "why": self.why,
            "sources": self.sources,
        }


@dataclass
class FleetDiff:
    nodes: List[str]
    drifts: List[Drift] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    duplicates: List[Dict[str, Any]] = field(default_factory=list)  # {"kind": "hostname"|"report", "value", "nodes"}

    @property
    def mattering(self) -> List[Drift]:
        return [d for d in self.drifts if d.matters]

    @property
    def warnings(self) -> List[Drift]:
        return [d for d in self.drifts if d.severity == "warning"]

    def exit_code(self) -> int:
        return 1 if (self.mattering or any(d["severity"] == "error" for d in self.duplicates)) else 0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": DIFF_SCHEMA,
            "nodes": self.nodes,
            "drift": [d.to_dict() for d in self.drifts],
            "ignored": self.ignored,
            "duplicates": self.duplicates,
            "summary": {
                "nodes": len(self.nodes),
                "facts_differing": len(self.drifts),
                "facts_that_matter": len(self.mattering),
                "warnings": len(self.warnings),
                "duplicates": len(self.duplicates),
                "duplicate_reports": sum(1 for d in self.duplicates if d["severity"] == "error"),
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
    import zlib

    reports: List[NodeReport] = []
    for index, doc in enumerate(documents):
        env = environment_section(doc, printable(where))
        # a prefix names the node; a one-report file is named after the file (reports/$(hostname).json);
        # several reports in one file or stream go by the hostname each report carries
        if host is not None:
            node = host
        elif len(documents) == 1 and default_node:
            node = default_node
        else:
            node = _hostname(env) or f"{default_node or where}#{index + 1}"
        facts = node_facts(env, printable(where))
        # the same report twice: same hostname and same facts (cheap: no re-serialising of the document)
        flat = "\0".join(f"{k}\1{v[0]}" for k, v in sorted(facts.items()))
        digest = f"{zlib.crc32(((_hostname(env) or '') + chr(0) + flat).encode('utf-8', 'surrogatepass')):08x}"
        reports.append(NodeReport(node=node, origin=where, facts=facts, hostname=_hostname(env), digest=digest))
    return reports


def _documents(text: str, where: str) -> List[Any]:
    """The JSON documents of a text, each read with untrusted.json_loads (depth, size, number limits)."""
    from moe_env.untrusted import UntrustedInput, json_loads

    try:
        return [json_loads(text, what=where)]
    except UntrustedInput as exc:
        if "Extra data" not in str(exc):
            raise UsageError(f"{printable(str(exc))}; is this `moe-env doctor --json` output, complete?") from None
    decoder = json.JSONDecoder()
    documents: List[Any] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            break
        start = position
        try:
            _doc, position = decoder.raw_decode(text, position)  # only to find where the document ends
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, exc.pos) + 1
            at_end = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated")
            what = "truncated JSON" if at_end else "invalid JSON"
            raise UsageError(f"{printable(where)}: {what} at line {line} ({exc.msg}); is this `moe-env doctor --json` output, complete?") from None
        except (RecursionError, MemoryError, ValueError) as exc:
            raise UsageError(f"{printable(where)}: cannot be read ({type(exc).__name__})") from None
        try:
            documents.append(json_loads(text[start:position], what=where))
        except UntrustedInput as exc:
            raise UsageError(printable(str(exc))) from None
    return documents


def _hostname(env: Dict[str, Any]) -> Optional[str]:
    host = env.get("host")
    name = host.get("hostname") if isinstance(host, dict) else None
    return name if isinstance(name, str) and name else None


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


def _section(env: Dict[str, Any], key: str, where: str, kind: type = dict) -> Any:
    """environment.KEY of a report, of the type the schema gives it; else a one-line usage error."""
    value = env.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise UsageError(f"{where}: malformed report (environment.{key} is {type(value).__name__}, expected "
                         f"{'an object' if kind is dict else 'a list'})")
    return value


def _text(value: Any) -> Optional[str]:
    """A scalar of a report as text (numbers too); containers are not facts."""
    if value is None or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value)


def node_facts(env: Dict[str, Any], where: str = "report") -> Dict[str, Tuple[str, bool, Optional[str]]]:
    """fact -> (shown value, matters, the part of it that must agree)."""
    facts: Dict[str, Tuple[str, bool, Optional[str]]] = {}

    def put(name: str, value: Any, matters: bool = False, agree: Optional[Callable[[str], Optional[str]]] = None) -> None:
        value = _text(value)
        shown = "-" if value is None or value == "" else value
        facts[name] = (shown, matters, agree(shown) if (agree and shown != "-") else shown)

    python = _section(env, "python", where)
    put("python", python.get("version"), True, _minor)
    put("python.implementation", python.get("implementation"))
    put("glibc", python.get("glibc"))

    # the hot loop for 1,000 reports of ~250 packages: no closure, no regex for already-normal names
    for name, dist in _section(env, "distributions", where).items():
        key = name if (name.islower() and "_" not in name and "." not in name) else normalize_name(name)
        if type(dist) is not dict:
            if dist is not None:
                raise UsageError(f"{where}: malformed report (environment.distributions[{printable(name)!r}] is "
                                 f"{type(dist).__name__}, expected an object)")
            dist = {}
        version = dist.get("version")
        if type(version) is not str:
            version = _text(version)
        version = version or "-"
        matters = key in MATTERING_PACKAGES or (key.startswith("nvidia-nccl-") and bool(_NCCL_PACKAGE.match(key)))
        facts["package " + key] = (version, matters, version)

    torch = _section(env, "torch", where)
    put("torch.build", torch.get("version"), True)
    put("torch.cuda", torch.get("cuda"), True)
    put("torch.cudnn", torch.get("cudnn"))
    put("torch.cxx11_abi", torch.get("cxx11_abi"))

    deepspeed = _section(env, "deepspeed", where)
    if deepspeed:
        put("deepspeed.built_torch", deepspeed.get("built_torch"), True)
        put("deepspeed.built_cuda", deepspeed.get("built_cuda"), True)
        put("deepspeed.built_nccl", deepspeed.get("built_nccl"), True)
        ops_table = deepspeed.get("installed_ops")
        ops = sorted(str(k) for k, v in (ops_table.items() if isinstance(ops_table, dict) else ()) if v)
        put("deepspeed.prebuilt_ops", ",".join(ops) or "none")

    host = _section(env, "host", where)
    put("driver", host.get("driver_version"), True, _major)
    gpus = host.get("gpus") or []
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        raise UsageError(f"{where}: malformed report (environment.host.gpus must be a list of objects)")
    put("gpu.model", ",".join(sorted({str(g.get("name")) for g in gpus})) or None)
    put("gpu.architecture", ",".join(sorted({str(g.get("compute_capability")) for g in gpus})) or None, True)
    put("gpu.count", len(gpus))
    put("nvcc", host.get("nvcc_version"))
    return facts


def diff_reports(reports: Sequence[NodeReport], ignore: Iterable[str] = ()) -> FleetDiff:
    """Every fact whose value is not the same on all nodes, nodes grouped by value, each with how much it matters."""
    ignored = sorted({normalize_name(i) for i in ignore})
    ignored_facts = set()
    for item in ignored:
        ignored_facts.update({f"package {item}", item})
    nodes = [r.node for r in reports]
    per_node = [r.facts for r in reports]
    names = sorted({name for facts in per_node for name in facts})
    has_torch_build = any("torch.build" in f and f["torch.build"][0] != "-" for f in per_node)
    rules = fact_rules()
    drifts: List[Drift] = []
    for name in names:
        if name in ignored_facts or name.split(".")[0] in ignored_facts:
            continue
        if name == "package torch" and has_torch_build:
            continue  # the same problem as torch.build: one finding
        absent = ("absent", name.startswith("package ") and _package_matters(name), "absent")
        values: Dict[str, List[str]] = {}
        for node, facts in zip(nodes, per_node):
            shown = facts.get(name, absent)[0]
            members = values.get(shown)
            if members is None:
                values[shown] = [node]
            else:
                members.append(node)
        if len(values) < 2:
            continue
        groups = sorted(values.items(), key=lambda item: (-len(item[1]), item[0]))
        rule = fact_rule(name, rules)
        severity, why, sources = "note", "", []
        if rule is not None and len({_agree_part(v, rule.agree) for v in values}) > 1:
            severity, why, sources = rule.severity, rule.why, list(rule.source)
        drifts.append(Drift(fact=name, matters=severity == "error", groups=groups, severity=severity, why=why,
                            sources=sources))
    for d in drifts:
        if d.fact == "driver":
            _judge_driver(d, reports)
    drifts.sort(key=lambda d: ({"error": 0, "warning": 1}.get(d.severity, 2), d.fact))
    return FleetDiff(nodes=nodes, drifts=drifts, ignored=ignored, duplicates=_duplicates(reports))


def _judge_driver(drift: Drift, reports: Sequence[NodeReport]) -> None:
    """Each node's driver against its torch's CUDA with doctor's own check (checks.platform.torch_vs_driver,
    the matrix's cuda_driver and minor-version tables): a node whose driver cannot start CUDA makes the
    drift an error; otherwise differing branches only should agree (a warning)."""
    try:
        from moe_env.checks.platform import torch_vs_driver
        from moe_env.checks.registry import Context
        from moe_env.environment import Environment, HostInfo, PythonInfo, TorchBuild
        from moe_env.matrix.cache import load_matrix_cached

        matrix = load_matrix_cached()
    except Exception:  # noqa: BLE001 - without the matrix the drift stays a warning
        return
    low, sources = [], list(drift.sources)
    for r in reports:
        driver, torch, cuda = (r.facts.get(k, ("-",))[0] for k in ("driver", "torch.build", "torch.cuda"))
        if "-" in (driver, torch, cuda):
            continue
        env = Environment(python=PythonInfo("", "", "", "", "", ""), torch=TorchBuild(version=torch, cuda=cuda),
                          host=HostInfo(driver_version=driver))
        for f in torch_vs_driver(Context(env=env, matrix=matrix)):
            if f.severity == "error":
                low.append(f"{r.node} (driver {driver}, torch {torch})")
                sources.extend(s for s in f.sources if s not in sources)
    if low:
        drift.severity, drift.matters, drift.sources = "error", True, sources
        drift.why = ("A driver too old for the CUDA that torch was built with (even under minor-version "
                     "compatibility) cannot start CUDA on that node: " + ", ".join(low) + ".")


def _duplicates(reports: Sequence[NodeReport]) -> List[Dict[str, Any]]:
    """The same hostname in two reports, or the same report twice: the fleet is not what it looks like."""
    out: List[Dict[str, Any]] = []
    by_digest: Dict[str, List[str]] = {}
    by_host: Dict[str, List[NodeReport]] = {}
    for r in reports:
        by_digest.setdefault(r.digest, []).append(r.node)
        if r.hostname:
            by_host.setdefault(r.hostname, []).append(r)
    same_report = set()
    for digest, members in by_digest.items():
        if digest and len(members) > 1:  # the same node counted twice: one node of the job has no report
            out.append({"kind": "report", "value": digest, "nodes": members, "severity": "error"})
            same_report.update(members)
    for host, members in by_host.items():
        names = [m.node for m in members]
        if len(members) > 1 and not set(names) <= same_report:  # two reports, one name: which node is which?
            out.append({"kind": "hostname", "value": host, "nodes": names, "severity": "warning"})
    return out


def _package_matters(fact: str) -> bool:
    key = fact.split(" ", 1)[1]
    return key in MATTERING_PACKAGES or bool(_NCCL_PACKAGE.match(key))


# ---------------------------------------------------------------- rendering


def _nodes_text(members: List[str], max_nodes: int) -> str:
    shown = ", ".join(printable(m) for m in members[:max_nodes])
    if len(members) > max_nodes:
        shown += f", ... ({len(members)} nodes)"
    return shown


def render_text(result: FleetDiff, color: bool = False, max_nodes: int = 8) -> str:
    """A table of what must and should agree (fact, value, nodes), one line per other difference, and
    last the one line that says whether the nodes can train together."""
    from moe_env.term import paint

    lines: List[str] = []
    n = len(result.nodes)
    errors = [d for d in result.drifts if d.severity == "error"]
    warnings = [d for d in result.drifts if d.severity == "warning"]
    notes = [d for d in result.drifts if d.severity not in ("error", "warning")]
    lines.append(f"{n} node{'s' if n != 1 else ''}; {len(errors)} must agree and differ{'s' if len(errors) == 1 else ''}, "
                 f"{len(warnings)} should agree and differ{'s' if len(warnings) == 1 else ''}, "
                 f"{len(notes)} other difference{'s' if len(notes) != 1 else ''}")
    for dup in result.duplicates:
        if dup["kind"] == "report":
            lines.append(paint("DUPLICATE", "red", color) + " the same report (hostname and every fact) from "
                         f"{_nodes_text(dup['nodes'], max_nodes)}: one node counted twice, another missing")
        else:
            lines.append(paint("DUPLICATE", "yellow", color) + f" hostname {printable(dup['value'])} in the reports of "
                         f"{_nodes_text(dup['nodes'], max_nodes)}: set MOE_ENV_HOSTNAME per node or check the collection")
    table = errors + warnings
    if table:
        rows = [("", "fact", "value", "nodes")]
        for d in table:
            label = "MUST" if d.severity == "error" else "SHOULD"
            for i, (value, members) in enumerate(d.groups):
                rows.append((label if i == 0 else "", printable(d.fact) if i == 0 else "", printable(value),
                             _nodes_text(members, max_nodes)))
        w = [max(len(r[c]) for r in rows) for c in range(3)]
        lines.append("")
        for r in rows:
            lines.append(f"  {r[0].ljust(w[0])}  {r[1].ljust(w[1])}  {r[2].ljust(w[2])}  {r[3]}".rstrip())
        lines.append("")
        for d in table:
            tag = paint("error", "red", color) if d.severity == "error" else paint("warning", "yellow", color)
            lines.append(f"{tag} {printable(d.fact)}: {d.why}")
            for src in d.sources:
                lines.append(f"    source: {src}")
    if notes:
        lines.append("")
        for d in notes:
            parts = " | ".join(f"{printable(v)} ({_nodes_text(m, 3)})" for v, m in d.groups)
            lines.append(paint("note", "dim", color) + f" {printable(d.fact)}: {parts}")
    if result.ignored:
        lines.append(f"ignored: {', '.join(printable(i) for i in result.ignored)}")
    lines.append("")
    dup_errors = [d for d in result.duplicates if d["severity"] == "error"]
    dup_warnings = [d for d in result.duplicates if d["severity"] != "error"]
    if errors or dup_errors:
        odd = sorted({m for d in errors for _v, members in d.groups[1:] for m in members})
        parts = []
        if errors:
            parts.append(f"{', '.join(printable(d.fact) for d in errors)} must agree"
                         + (f" (odd nodes: {_nodes_text(odd, max_nodes)})" if odd else ""))
        if dup_errors:
            parts.append(f"{len(dup_errors)} duplicate report{'s' if len(dup_errors) != 1 else ''}")
        fixes = []
        if errors:
            fixes.append("install the same lockfile everywhere (`moe-env lock PROJECT`)")
        if dup_errors:
            fixes.append("collect one report per node")
        lines.append(paint("FAIL", "red", color) + ": " + "; ".join(parts) + " — " + " and ".join(fixes))
    elif warnings or dup_warnings:
        what = [printable(d.fact) for d in warnings] + [f"hostname {printable(d['value'])} twice" for d in dup_warnings]
        n_warn = len(what)
        lines.append(paint("OK", "green", color) + f" with {n_warn} warning{'s' if n_warn != 1 else ''}: "
                     f"{', '.join(what)}; nothing that must agree differs")
    else:
        lines.append(paint("OK", "green", color) + f": {n} node{'s' if n != 1 else ''} agree on everything that must agree"
                     + ("" if result.drifts else " (no drift)"))
    return "\n".join(lines) + "\n"


def render_json(result: FleetDiff) -> str:
    return json.dumps(result.to_dict(), indent=2) + "\n"
