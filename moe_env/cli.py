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
  moe-env lock minigemini --cuda 12.1 -o requirements.lock
  moe-env explain train.log                    match a log against known issues
  moe-env matrix list                          projects, variants and known-good stacks

exit codes: 0 ok, 1 problems found, 2 bad usage or input, 3 network failure, 4 internal error
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, with a pointer to --help
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moe-env",
        description="Know whether an environment can train a Mixture-of-Experts project, and pin one that can.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"moe-env {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"moe_env.commands.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MoeEnvError as exc:
        print(f"moe-env: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moe-env: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`moe-env ... | head`); not an error worth a message
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:  # never a traceback for a user; MOE_ENV_DEBUG=1 shows it
        if os.environ.get("MOE_ENV_DEBUG"):
            raise
        print(
            f"moe-env: internal error: {type(exc).__name__}: {exc} "
            "(rerun with MOE_ENV_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        return 4


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
