"""The command line: parse, call one command module, turn errors into one line and an exit code.

Exit codes (README "Exit codes"): 0 ok; 1 problems found (errors, or warnings with --strict; drift;
an incomplete checkpoint; a harmful log match); 2 bad usage or input; 3 network failure; 4 internal error.
Command modules keep heavy imports inside their run functions so `doctor` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from moe_env import __version__
from moe_env.errors import MoeEnvError

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

EPILOG = """\
examples:
  moe-env doctor minigemini --model 8x7b       judge this interpreter's environment for MGM-8x7B
  moe-env doctor --python /opt/venv/bin/python  probe another interpreter (never imports torch)
  moe-env lock minigemini -o requirements.lock  MGM-8x7B's shipped lockfile, judged for this host
  moe-env explain train.log                    match a log against known issues
  moe-env matrix list                          projects, variants and known-good stacks

exit codes: 0 ok, 1 problems found, 2 bad usage or input, 3 network failure, 4 internal error
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, with a pointer to --help
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with `only` (a command's module name) just that command's subparser, which is all
    a run of that command needs (building all nine imports every command module)."""
    parser = _Parser(
        prog="moe-env",
        description="Know whether an environment can train a Mixture-of-Experts project, and pin one that can.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"moe-env {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in ([only] if only else COMMANDS):
        importlib.import_module(f"moe_env.commands.{name}").register(sub)
    return parser


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
        # start the probe before anything else: its interpreter boots while this one builds the parser
        # and loads the matrix and the checks (the commands module is light; it imports inside run())
        from moe_env.commands import doctor

        try:
            early = doctor.start_early(argv[1:])
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
