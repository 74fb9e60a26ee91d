"""The command line: parse, call one command module, turn errors into one line and an exit code.

Exit codes (README "Exit codes"): 0 ok; 1 problems found (errors, or warnings with --strict; drift;
an incomplete checkpoint; a harmful log match); 2 bad usage or input; 3 network failure; 4 internal error.
Command modules keep heavy imports inside their run functions so `doctor` stays fast.
"""

from __future__ import annotations

import os
import sys

from moe_env.errors import MoeEnvError

# typing's constant without importing typing (nor argparse): doctor starts its probe before either loads
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import List, Optional

# subcommand module names under moe_env.commands, in --help order
COMMANDS = [
    "doctor",
    "lock",
    "build_steps",
    "dockerfile",
    "check_config",
    "ckpt",
    "explain",
    "diff",
    "matrix",
]


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser (moe_env/parser.py: argparse loads only after doctor's probe has started)."""
    from moe_env.parser import build_parser as build

    return build(only)


def _command_of(argv: List[str]) -> Optional[str]:
    """The command module a command line names (`build-steps` -> build_steps), when it is the first word."""
    if not argv:
        return None
    name = argv[0].replace("-", "_")
    return name if name in COMMANDS else None


def main(argv: Optional[List[str]] = None) -> int:
    _guard_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    only = _command_of(argv)
    early = None
    if only == "doctor":
        # a short run that frees nothing worth collecting: the cyclic collector would only walk the ~6,000
        # matrix records and the probe's JSON over and over while they are built (~3 ms of CPU)
        import gc

        gc.disable()
        # start the probe before anything else: its interpreter boots while this one imports argparse,
        # builds the parser and loads the matrix and the checks
        from moe_env.probe.runner import start_from_argv

        try:
            early = start_from_argv(argv[1:])
        except MoeEnvError:
            early = None  # the same error is raised again, in order, by the normal path
    try:
        parser = build_parser(only)
        args = parser.parse_args(argv)
    except BaseException:
        if early is not None:
            early.kill()
        raise
    if early is not None:
        args.early_probe = early
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except MoeEnvError as exc:
        _error(f"moe-env: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _error("moe-env: interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (`moe-env ... | head`): not an error worth a message
        _silence_stdout()
        return 0
    except OSError as exc:
        if _is_stdout_failure(exc):
            _silence_stdout()
            _error(f"moe-env: error: cannot write to standard output ({exc.strerror or exc})")
            return 2
        return _internal(exc)
    except Exception as exc:  # never a traceback for a user; MOE_ENV_DEBUG=1 shows it
        return _internal(exc)


def _guard_streams() -> None:
    """A closed stdout/stderr (`>&-`) becomes /dev/null, and text that the terminal's encoding cannot show
    is escaped instead of raising UnicodeEncodeError halfway through a report."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def _is_stdout_failure(exc: OSError) -> bool:
    """An OSError that came from writing stdout (a full disk, /dev/full, a closed descriptor)."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EDQUOT, errno.EFBIG):
        return False
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return exc.filename is None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's own flush at exit does not print a second error."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    except OSError:
        pass


def _error(message: str) -> None:
    from moe_env.untrusted import printable

    try:
        print(printable(message), file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _internal(exc: BaseException) -> int:
    if os.environ.get("MOE_ENV_DEBUG"):
        raise exc
    _error(f"moe-env: internal error: {type(exc).__name__}: {exc} "
           "(rerun with MOE_ENV_DEBUG=1 for a traceback, and please report it)")
    return 4


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
