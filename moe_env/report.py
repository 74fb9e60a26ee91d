"""`doctor --json` documents: build one, read one back.

Schema `moe-env.doctor/1` (README "Report schema"):

    {"schema": "moe-env.doctor/1",
     "moe_env": "0.1.0",                       # the writer's version
     "environment": {...},                     # Environment.to_dict(): the whole probe
     "project": {"name": "minigemini", "variants": ["8x7b"], "detected": false} | null,
     "findings": [{"id", "severity", "title", "seen", "why", "fix", "sources", "deferred"}, ...],
     "summary": {"error": N, "warning": N, "info": N, "deferred": N, "exit_code": 0|1},
     "code": {"path", "commit", "files", "lines", "symbols", ...}}   # only with --code; findings then
                                                                   # may carry "file", "line", "code"

Readers accept unknown extra keys (newer writers may add some) and refuse another schema
version, a truncated document or a JSON value that is not a report, with one line naming the file.
`moe-env diff` (fleet) and `doctor --from-json` read through here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from moe_env import __version__
from moe_env.environment import REPORT_SCHEMA, Environment
from moe_env.environment import _build as typed_build
from moe_env.errors import UsageError
from moe_env.findings import Finding, exit_code, summarize
from moe_env.record import Record, field, record
from moe_env.untrusted import UntrustedInput, json_loads, printable, read_bytes


@record
class Report(Record):
    environment: Environment
    findings: List[Finding] = field(default_factory=list)
    project: Optional[str] = None
    variants: List[str] = field(default_factory=list)
    detected: bool = False
    origin: str = ""  # the file (or stream) it was read from
    writer: Optional[str] = None  # moe-env version that wrote it
    summary: Dict[str, int] = field(default_factory=dict)
    code: Optional[Dict[str, Any]] = None  # doctor --code: what was read from the checkout (moe_env/code/run.py)

    def to_dict(self, strict: bool = False) -> Dict[str, Any]:
        summary: Dict[str, Any] = dict(summarize(self.findings))
        summary["exit_code"] = exit_code(self.findings, strict)
        data = {
            "schema": REPORT_SCHEMA,
            "moe_env": __version__,
            "environment": self.environment.to_dict(),
            "project": ({"name": self.project, "variants": list(self.variants), "detected": self.detected}
                        if self.project else None),
            "findings": [f.to_dict() for f in self.findings],
            "summary": summary,
        }
        if self.code is not None:
            data["code"] = self.code
        return data

    def to_json(self, strict: bool = False) -> str:
        return json.dumps(self.to_dict(strict), indent=2, sort_keys=False) + "\n"


MAX_REPORT_BYTES = 256 * 1024 * 1024  # a report of 5,000 distributions is ~5 MB


def parse_report_text(text, origin: str) -> Report:
    """One report from its JSON text (str or bytes); `origin` names the file (or stream) in every error."""
    if not text.strip():
        raise UsageError(f"{origin}: empty file, not a moe-env doctor report")
    try:
        data = json_loads(text, what=origin, max_bytes=MAX_REPORT_BYTES)
    except UntrustedInput as exc:
        raise UsageError(f"{exc}; expected a `moe-env doctor --json` report") from None
    return report_from_dict(data, origin)


def environment_section(data: Any, origin: str) -> Dict[str, Any]:
    """The checked `environment` dict of a parsed report document; shared with `moe-env diff`,
    which reads a thousand reports and cannot afford building dataclasses for each."""
    if not isinstance(data, dict) or "schema" not in data:
        raise UsageError(f"{origin}: not a moe-env doctor report (no \"schema\" key); "
                         "produce one with `moe-env doctor --json`")
    schema = data.get("schema")
    if schema != REPORT_SCHEMA:
        if isinstance(schema, str) and schema.startswith("moe-env.doctor/"):
            raise UsageError(f"{origin}: report schema {schema!r} is not one this moe-env reads ({REPORT_SCHEMA}); "
                             "rewrite it with this moe-env's `doctor --json`, or upgrade moe-env")
        raise UsageError(f"{origin}: not a moe-env doctor report (schema {schema!r}, expected {REPORT_SCHEMA!r})")
    env_data = data.get("environment")
    if not isinstance(env_data, dict) or not isinstance(env_data.get("python"), dict):
        raise UsageError(f"{origin}: report has no environment section; was it written by `moe-env doctor --json`?")
    return env_data


def report_from_dict(data: Any, origin: str) -> Report:
    env_data = environment_section(data, origin)
    try:
        env = Environment.from_dict(env_data)
        raw_findings = data.get("findings") or []
        if not isinstance(raw_findings, list):
            raise ValueError("findings: expected a list")
        findings = [typed_build(Finding, f, f"findings[{i}]") for i, f in enumerate(raw_findings)]
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise UsageError(f"{origin}: malformed report ({printable(exc)})") from None
    project = data.get("project") or None
    if project is not None and not isinstance(project, dict):
        raise UsageError(f"{origin}: malformed report (project must be an object or null)")
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    return Report(
        environment=env,
        findings=findings,
        project=project.get("name") if project else None,
        variants=list(project.get("variants") or []) if project else [],
        detected=bool(project.get("detected")) if project else False,
        origin=origin,
        writer=data.get("moe_env"),
        summary=summary,
    )


def read_report(path: str) -> Report:
    """Read a report file; `-` reads stdin."""
    if path == "-":
        import sys

        return parse_report_text(sys.stdin.buffer.read(MAX_REPORT_BYTES + 1), "stdin")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder; --from-json takes one report file")
    if not os.path.lexists(path):
        raise UsageError(f"{path}: report file not found")
    try:
        data = read_bytes(path, max_bytes=MAX_REPORT_BYTES, what=path)
    except UntrustedInput as exc:
        raise UsageError(f"cannot read report: {exc}") from None
    return parse_report_text(data, path)
