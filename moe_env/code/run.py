"""The one entry doctor calls for `--code PATH`: read the checkout, shape the probe's request, judge, merge.

Merging: where a curated project check already reports a problem (an api_symbol check on the same name, a
version_bound on the same package), the code's finding is folded into it as a location, not repeated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from moe_env.code.collect import CodeScan, collect
from moe_env.code.judge import Judgement, judge, probe_request
from moe_env.code.pins import Identity, pin_findings, read_identity
from moe_env.environment import Environment, normalize_name
from moe_env.errors import UsageError
from moe_env.findings import Finding
from moe_env.matrix.model import Matrix, Project


@dataclass
class CodeCheck:
    path: str
    scan: CodeScan
    identity: Identity
    judgement: Optional[Judgement] = None
    merged: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def request(self) -> dict:
        return probe_request(self.scan)

    def project(self, matrix: Matrix) -> Optional[Project]:
        """The matrix project this checkout is, by the package name it declares (or a distribution it detects as)."""
        name = self.identity.name
        if not name:
            return None
        found = matrix.project(name)
        if found is not None:
            return found
        key = normalize_name(name)
        for p in matrix.projects.values():
            if key in (normalize_name(d) for d in p.info.detect):
                return p
        return None

    def findings(self, curated: List[Finding], env: Environment, matrix: Matrix, project: Optional[Project],
                 saved: bool = False) -> List[Finding]:
        """`curated` plus the code's own findings, the duplicates folded into the curated ones."""
        self.judgement = judge(self.scan, env, matrix, saved=saved)
        code = list(self.judgement.findings) + pin_findings(self.identity, env)
        code += [Finding(id="code.unreadable-file", severity="warning", title="A file of the checkout was not judged",
                         seen=f"{f}: {why}", why="The pins it declares were not read.", file=f)
                 for f, why in self.identity.problems]
        by_id = {f.id: f for f in curated}
        symbol_checks, package_checks, required = _curated_keys(project)
        kept = []
        for f in code:
            target = None
            symbol = self.judgement.symbol_of.get(id(f))
            if symbol and f.id == "code.missing-module":
                fid = required.get(normalize_name(_distribution(env, symbol)))
                target = by_id.get(fid) if fid else None
            elif symbol:
                for (root, last), fid in symbol_checks.items():
                    if fid in by_id and symbol.split(".")[0] == root and symbol.split(".")[-1] == last:
                        target = by_id[fid]
                        break
                if target is None:
                    target = _naming(curated, symbol)
            elif f.id.startswith("code.pin-"):
                package = normalize_name(f.title.split()[0]) if f.id == "code.pin-mismatch" else ""
                fid = package_checks.get(package)
                target = by_id.get(fid) if fid else None
            if target is not None:
                where = f"{f.file}:{f.line}" if f.line else (f.file or "")
                target.seen += f" [in the code: {where}]"
                self.merged += 1
            else:
                kept.append(f)
        return curated + kept

    def section(self) -> Dict[str, Any]:
        """The `code` object of the doctor report (new in moe-env.doctor/1; readers ignore it)."""
        s = self.scan
        j = self.judgement
        return {
            "path": self.path,
            "name": self.identity.name,
            "commit": self.identity.commit,
            "files": s.files,
            "lines": s.lines,
            "library_references": j.libraries if j else None,
            "judged": j.judged if j else None,
            "not_judged": len(j.not_judged) if j else None,
            "merged_into_project_findings": self.merged,
            "pins": [{"requirement": p.requirement, "file": p.file, "line": p.line} for p in self.identity.pins],
            "symbols": s.symbols(),
            "scan_seconds": s.seconds,
        }

    def header(self) -> str:
        s, j = self.scan, self.judgement
        head = f"code {self.path}"
        if self.identity.commit:
            head += f" at {self.identity.commit[:12]}"
        head += f": {s.files} file{'s' if s.files != 1 else ''}, {s.lines} lines"
        if j is not None:
            head += f", {j.libraries} library references ({j.judged} judged, {len(j.not_judged)} not judged)"
        return head


def _distribution(env: Environment, symbol: str) -> str:
    from moe_env.code.judge import distribution_of

    return distribution_of(env, symbol)[0]


def _naming(curated: List[Finding], symbol: str) -> Optional[Finding]:
    """The curated finding (error or warning) whose title or why names this symbol by two or more of its dotted
    parts (`transformers.deepspeed` for transformers.deepspeed.HfDeepSpeedConfig, `Trainer._save_checkpoint`)."""
    import re

    parts = symbol.split(".")
    tokens = {".".join(parts[:n]) for n in range(2, len(parts) + 1)} | \
             {".".join(parts[-n:]) for n in range(2, len(parts) + 1)}
    for f in curated:
        if f.severity == "info" or f.id.startswith("code.") or f.file:
            continue
        text = f"{f.title} {f.why}"
        for token in tokens:
            if re.search(r"(?<![\w.])" + re.escape(token) + r"(?![\w])", text):
                return f
    return None


def _curated_keys(project: Optional[Project]):
    from moe_env.checks.kinds import finding_id
    from moe_env.checks.registry import Context

    symbols: Dict[tuple, str] = {}
    packages: Dict[str, str] = {}
    required: Dict[str, str] = {}
    if project is None:
        return symbols, packages, required
    ctx = Context(env=None, matrix=None, project=project, variants=[])  # type: ignore[arg-type]
    for c in project.checks:
        if c.kind == "api_symbol" and isinstance(c.params.get("symbol"), str):
            sym = c.params["symbol"]
            symbols[(sym.split(".")[0], sym.split(".")[-1])] = finding_id(ctx, c)
        elif c.kind == "version_bound" and isinstance(c.params.get("package"), str):
            packages.setdefault(normalize_name(c.params["package"]), finding_id(ctx, c))
        elif c.kind == "requires":
            names = [c.params.get("package")] + list(c.params.get("any_of") or [])
            for n in names:
                if isinstance(n, str):
                    required.setdefault(normalize_name(n), finding_id(ctx, c))
    return symbols, packages, required


def prepare(path: str) -> CodeCheck:
    """Read the checkout at `path` (a folder or one .py file); a path that is neither is bad usage."""
    expanded = os.path.expanduser(path)
    if not os.path.exists(expanded):
        raise UsageError(f"--code {path}: no such file or folder; give a checkout or a .py file")
    if os.path.isfile(expanded) and not expanded.endswith(".py"):
        raise UsageError(f"--code {path}: not a Python file; give a checkout folder or a .py file")
    if not os.path.isdir(expanded) and not os.path.isfile(expanded):
        raise UsageError(f"--code {path}: not a regular file or folder")
    if os.path.isdir(expanded) and not os.access(expanded, os.R_OK | os.X_OK):
        raise UsageError(f"--code {path}: permission denied")
    scan = collect(expanded)
    ident = read_identity(os.path.abspath(expanded))
    return CodeCheck(path=os.path.abspath(expanded), scan=scan, identity=ident)
