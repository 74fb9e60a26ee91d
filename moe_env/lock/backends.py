"""Fresh resolutions through uv (`uv pip compile`) or pip-tools (`pip-compile`), with hashes.

Both run as subprocesses with argument lists and timeouts. Their output is post-processed the same
way: index options are dropped (lockfiles carry no index URLs; the header says where torch comes
from). A failure to reach an index is a NetworkError (exit 3) that says what still works offline;
an unsatisfiable set is a LockError (exit 1) quoting the backend's own explanation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from moe_env.errors import MoeEnvError, NetworkError, UsageError
from moe_env.lock.inputs import LockInput

BACKENDS = ("uv", "pip-tools")
FORMATS = ("requirements", "pylock")

_NETWORK_PATTERNS = re.compile(
    r"(failed to fetch|error sending request|dns error|connection refused|could not connect|tcp connect error"
    r"|network is unreachable|timed out|name or service not known|temporary failure in name resolution"
    r"|max retries exceeded|newconnectionerror|connectionerror|failed to establish a new connection"
    r"|could not fetch url|no route to host)",
    re.IGNORECASE,
)
_INDEX_OPTION = re.compile(r"^\s*(--index-url|--extra-index-url|-i\s|--find-links|-f\s|--trusted-host|--no-index)")


# connect timeout and retries of the backends (read timeouts stay theirs: big wheels take long)
FAIL_FAST = {"UV_HTTP_CONNECT_TIMEOUT": "5", "UV_HTTP_RETRIES": "0", "PIP_RETRIES": "0", "PIP_TIMEOUT": "15"}

_OFFLINE = re.compile(r"network (?:connectivity )?(?:is|was) disabled|--offline|offline mode", re.IGNORECASE)


class LockError(MoeEnvError):
    """The backend found no set of versions satisfying the stack (a problem found: exit 1)."""

    exit_code = 1


@dataclass
class BackendResult:
    text: str  # the lockfile body (no header of ours yet)
    backend: str  # "uv" or "pip-tools"
    version: str  # the backend's version
    command: List[str] = field(default_factory=list)
    seconds: float = 0.0


def uv_binary() -> str:
    """The uv binary the `uv` package ships (never a guess on PATH first)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        import shutil

        found = shutil.which("uv")
        if not found:
            raise UsageError("uv is not installed (pip install uv), or use --backend pip-tools") from None
        return found


def _version(cmd: List[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"\d+(\.\d+)+", out)
    return m.group(0) if m else out or "unknown"


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a missing version is not worth failing a lock
        return "unknown"


def uv_command(inp: LockInput, infile: str, fmt: str = "requirements") -> List[str]:
    cmd = [
        uv_binary(), "pip", "compile", infile,
        "--generate-hashes",
        "--python-version", inp.python,
        "--python-platform", inp.platform,
        "--no-header",
        "--quiet",
    ]
    if fmt == "pylock":
        cmd += ["--format", "pylock.toml"]
    if inp.index_url:
        cmd += ["--index-url", inp.index_url]
    for url in inp.extra_index_urls:
        cmd += ["--extra-index-url", url]
    if inp.extra_index_urls:
        # pip's semantics: the best version across indexes (first-index would take numpy & co.
        # from the PyTorch index's partial mirror only)
        cmd += ["--index-strategy", "unsafe-best-match"]
    return cmd


def pip_tools_command(inp: LockInput, infile: str, outfile: str) -> List[str]:
    cmd = [
        sys.executable, "-m", "piptools", "compile", infile,
        "--generate-hashes",
        "--no-header",
        "--no-emit-index-url",
        "--no-emit-trusted-host",
        "--no-emit-find-links",
        "--strip-extras",
        "--allow-unsafe",  # setuptools & co. when something requires them: --require-hashes needs every pin
        "--quiet",
        "--output-file", outfile,
    ]
    if inp.index_url:
        cmd += ["--index-url", inp.index_url]
    for url in inp.extra_index_urls:
        cmd += ["--extra-index-url", url]
    return cmd


def resolve_fresh(inp: LockInput, backend: str = "uv", fmt: str = "requirements", timeout: float = 600.0,
                  offline_hint: str = "") -> BackendResult:
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if backend == "pip-tools":
        if fmt == "pylock":
            raise UsageError("--format pylock needs --backend uv (pip-tools writes requirements files only)")
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if inp.python != here:
            raise UsageError(
                f"pip-tools resolves for the interpreter it runs under (Python {here}), not {inp.python}; "
                "use --backend uv, or run moe-env under that Python"
            )
    with tempfile.TemporaryDirectory(prefix="moe-env-lock-") as tmp:
        # relative names, run in tmp: the backends' `# via -r requirements.in` notes name no temp folder
        infile = "requirements.in"
        outfile = "pylock.toml" if fmt == "pylock" else "requirements.txt"
        (Path(tmp) / infile).write_text(inp.requirements_in(), encoding="utf-8")
        if backend == "uv":
            cmd = uv_command(inp, infile, fmt) + ["--output-file", outfile]
            version = _version([cmd[0], "--version"])
        else:
            cmd = pip_tools_command(inp, infile, outfile)
            version = _dist_version("pip-tools")
        env = dict(os.environ)
        env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        # an unreachable index fails in seconds, not after uv's/pip's retries with back-off (13-19 s); the
        # user's own settings win
        for key, value in FAIL_FAST.items():
            env.setdefault(key, value)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise NetworkError(
                f"{backend} did not finish within {timeout:.0f} s (slow or unreachable index){offline_hint}"
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot run {backend}: {exc}") from None
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            _raise_failure(backend, proc.stderr + proc.stdout, offline_hint)
        text = (Path(tmp) / outfile).read_text(encoding="utf-8")
    return BackendResult(text=clean_output(text, fmt), backend=backend, version=version, command=cmd, seconds=seconds)


def _raise_failure(backend: str, output: str, offline_hint: str) -> None:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    offline_env = [k for k in ("UV_OFFLINE", "PIP_NO_INDEX") if os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")]
    if _OFFLINE.search(output) or (offline_env and re.search(r"not found in the cache|no solution|could not find", output, re.I)):
        said = f" ({'='.join([offline_env[0], os.environ[offline_env[0]]])} is set)" if offline_env else ""
        raise NetworkError(f"{backend} may not use the network{said}, and a fresh resolution needs the package index; "
                           f"unset it or use a shipped lockfile{offline_hint}")
    if _NETWORK_PATTERNS.search(output) and not re.search(r"no solution found|ResolutionImpossible|Could not find a version", output, re.I):
        first = next((ln for ln in lines if _NETWORK_PATTERNS.search(ln)), lines[0] if lines else "")
        raise NetworkError(f"{backend} could not reach the package index ({first[:200]}){offline_hint}")
    why = " ".join(ln.lstrip("×╰─▶ ") for ln in lines if not ln.startswith("Resolved"))[:600]
    if re.search(r"no solution found|ResolutionImpossible|Could not find a version|conflict", output, re.I):
        raise LockError(f"{backend} found no versions satisfying the stack: {why}")
    raise LockError(f"{backend} failed: {why or 'no output'}")


def clean_output(text: str, fmt: str = "requirements") -> str:
    """Drop index options and the backend's own header; keep pins, hashes and `# via` notes."""
    if fmt == "pylock":
        return text if text.endswith("\n") else text + "\n"
    out = [ln for ln in text.splitlines() if not _INDEX_OPTION.match(ln)]
    while out and (not out[0].strip() or (out[0].startswith("#") and not out[0].startswith("#   "))):
        out.pop(0)
    return "\n".join(out).rstrip("\n") + "\n"
