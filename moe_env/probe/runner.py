"""Run the probe script inside a target interpreter and turn its JSON into an Environment.

The script (target.py) runs as `PYTHON -I -S -c <load target.py> --stdin`, the way uv queries interpreters:
isolated from the user's PYTHON* variables and the current directory, and without site.py, so no
`.pth` line, sitecustomize or usercustomize of the target runs; target.py computes the search path
site.py would have built (target_site_paths). The caller's PYTHONPATH is handed over explicitly (as `extra_paths`),
because a training run started from the same shell would see it.
"""

from __future__ import annotations

import os
import sys
import time

from moe_env.errors import MoeEnvError, UsageError
from moe_env.spawn import Child, SpawnTimeout

# Nothing heavier than os before the probe starts (json, typing: imported where used, after it):
# typing's own constant, as a local
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, List, Optional

    from moe_env.environment import Environment

# imports stay few here: doctor starts the probe with this module before loading anything else
TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "target.py")
MARKER = "MOE_ENV_PROBE_JSON:"
DEFAULT_TIMEOUT = 20.0
# Load target.py through importlib rather than as a script: the target interpreter then keeps its bytecode in
# __pycache__ (one file per Python version) instead of compiling ~1000 lines on every run (~13 ms of ~45 ms).
# importlib.machinery's loader, not importlib.util: that one imports contextlib (~1 ms of the probe's start).
_BOOTSTRAP = ("import importlib.machinery as i, sys; n = 'moe_env_probe_target'; m = type(sys)(n); "
              "m.__file__ = {path!r}; i.SourceFileLoader(n, m.__file__).exec_module(m); sys.exit(m.main())")


def resolve_python(python: Optional[str]) -> str:
    """An interpreter path from `--python`: a file, a name on PATH, or a virtual environment's folder."""
    if not python:
        return sys.executable
    path = os.path.expanduser(python)
    if os.path.isdir(path):
        for rel in ("bin/python", "bin/python3", "Scripts/python.exe"):
            candidate = os.path.join(path, rel)
            if os.path.isfile(candidate):
                return candidate
        raise UsageError(f"--python {python}: a folder without bin/python; give an interpreter or a virtual environment")
    if os.sep not in path and not os.path.exists(path):
        import shutil

        found = shutil.which(path)
        if found is None:
            raise UsageError(f"--python {python}: no such interpreter on PATH; give its full path")
        return found
    if not os.path.exists(path):
        raise UsageError(f"--python {python}: no such file; give the target interpreter (e.g. /opt/venv/bin/python)")
    if not os.access(path, os.X_OK):
        raise UsageError(f"--python {python}: not executable; give the target interpreter")
    return path


def _extra_paths() -> List[str]:
    value = os.environ.get("PYTHONPATH") or ""
    return [os.path.abspath(p) for p in value.split(os.pathsep) if p]


def probe_command(python: str) -> List[str]:
    """The command line that runs target.py under `python` (it reads its request on stdin).

    The host's PYTHONPATH (which -I hides from the target) goes along joined by os.pathsep, as
    PYTHONPATH itself is: no entry can hold the separator."""
    return [python, "-I", "-S", "-c", _BOOTSTRAP.format(path=str(TARGET)), "--stdin",
            "--extra-paths=" + os.pathsep.join(_extra_paths())]


def start_from_argv(argv: List[str]) -> Optional["ProbeRun"]:
    """doctor's probe, started from its raw arguments before argparse loads (see cli.main); None when
    they do not say yet which interpreter.

    Only `--python X` / `--python=X` are read here; anything unusual (help, --from-json, an abbreviated
    option) leaves it to the normal path, and doctor checks the interpreter is the one parsed.
    """
    if any(a in ("-h", "--help") or a.startswith("--from") for a in argv):
        return None
    python = None
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--python" and i + 1 < len(argv):
            python = argv[i + 1]
        elif a.startswith("--python="):
            python = a.split("=", 1)[1]
    return ProbeRun(resolve_python(python))


class ProbeRun:
    """A probe started early: the target interpreter boots while the host side loads the matrix and its checks.

    `start` launches it (its start-up is most of a probe's time); `finish` sends the request, which
    needs the matrix (the API symbols to look up), and collects the JSON. Always finish or `kill` it.
    """

    def __init__(self, python: str):
        self.python = python
        self.started = time.perf_counter()
        try:
            self.proc: Optional[Child] = Child(probe_command(python))
        except PermissionError:
            raise UsageError(f"--python {python}: permission denied; give an interpreter you may run") from None
        except OSError as exc:
            raise UsageError(f"--python {python}: cannot run it ({exc.strerror or exc}); "
                             "is it a Python interpreter?") from None

    def finish(self, symbols: Iterable[str], timeout: float, code: Optional[dict] = None) -> dict:
        """Send the request, wait for the JSON; a one-line MoeEnvError when the target is not a working Python.

        `code` ({"symbols": [...], "libraries": [...]}) asks, in the same run, about the names a checkout uses."""
        proc = self.proc
        if proc is None:
            raise MoeEnvError("internal: the probe was already collected")
        import json

        payload = {"symbols": list(symbols)}  # the extra paths went on the command line (see probe_command)
        if code is not None:
            payload["code"] = code
        request = json.dumps(payload)
        try:
            stdout, stderr = proc.communicate(request, timeout=timeout)
        except SpawnTimeout:
            self.proc = None
            raise UsageError(f"--python {self.python}: the probe did not finish within {timeout:g}s "
                             "(a hung file system or .pth file?); retry with a larger --timeout") from None
        finally:
            self.seconds = time.perf_counter() - self.started
        self.proc = None
        result = ProbeExit(proc.returncode or 0, stderr)
        data = _parse_output(stdout)
        if data is None:
            raise UsageError(f"--python {self.python}: {_failure(result)}")
        return data

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()


def run_target(python: str, symbols: Iterable[str], timeout: float, code: Optional[dict] = None) -> dict:
    """Run target.py under `python`; return its JSON object or raise a one-line MoeEnvError."""
    return ProbeRun(python).finish(symbols, timeout, code)


def _parse_output(stdout: str) -> Optional[dict]:
    import json

    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                data = json.loads(line[len(MARKER):])
            except ValueError:
                return None
            return data if isinstance(data, dict) and isinstance(data.get("python"), dict) else None
    return None


class ProbeExit:
    """How the probe ended (a plain class: typing.NamedTuple would import typing before the probe starts)."""

    __slots__ = ("returncode", "stderr")

    def __init__(self, returncode: int, stderr: str):
        self.returncode = returncode
        self.stderr = stderr


def _failure(proc: ProbeExit) -> str:
    err = (proc.stderr or "").strip()
    last = err.splitlines()[-1].strip() if err else ""
    if "Unknown option: -I" in err or "unknown option -I" in err.lower():
        return "does not accept -I, so it is not Python 3 (the probe needs Python 3.8 or newer)"
    if "moe-env probe: Python" in err:
        return last.replace("moe-env probe: ", "")
    if "SyntaxError" in err or "invalid syntax" in err:
        return "not a Python 3.8+ interpreter (the probe needs Python 3.8 or newer)"
    if proc.returncode != 0 and last:
        if len(last) > 200:
            last = last[:200] + "..."
        return f"the probe failed (exit {proc.returncode}: {last}); is it a working Python 3.8+ interpreter?"
    if proc.returncode != 0:
        return f"the probe failed (exit {proc.returncode}, no output); is it a Python 3.8+ interpreter?"
    return "did not print the probe's JSON; is it a Python 3.8+ interpreter?"


def probe_environment(python: Optional[str] = None, symbols: Iterable[str] = (), build_mode: bool = False,
                      timeout: float = DEFAULT_TIMEOUT, started: Optional[ProbeRun] = None,
                      code: Optional[dict] = None) -> Environment:
    """Probe the interpreter `python` (default: this one) and this host; never imports the target's packages.

    With `started` (a ProbeRun begun earlier for the same interpreter), the host facts are gathered
    while the target still runs, and its result is collected last.
    """
    from moe_env.environment import Environment
    from moe_env.probe.host import gather_host

    run = started if started is not None else ProbeRun(resolve_python(python))
    try:
        host = gather_host(build_mode=build_mode)
    except BaseException:
        run.kill()
        raise
    data = run.finish(symbols, timeout, code)
    try:
        env = Environment.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MoeEnvError(f"--python {run.python}: the probe's report does not fit this moe-env ({exc}); "
                          "is target.py from the same moe-env version?") from None
    env.host = host
    env.probe_seconds = round(run.seconds, 4)
    return env
