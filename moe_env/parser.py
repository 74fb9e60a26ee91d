"""The argparse parser of the command line (cli.main builds it; doctor's probe is already running by then)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional

from moe_env import __version__
from moe_env.cli import COMMANDS

EPILOG = """\
examples:
  moe-env doctor minigemini --model 8x7b       judge this interpreter's environment for MGM-8x7B
  moe-env doctor --python /opt/venv/bin/python  probe another interpreter (never imports torch)
  moe-env lock minigemini -o requirements.lock  MGM-8x7B's shipped lockfile, judged for this host
  moe-env explain train.log                    match a log against known issues
  moe-env matrix list                          projects, variants and known-good stacks

exit codes: 0 ok, 1 problems found, 2 bad usage or input, 3 network failure, 4 internal error
"""


def _help_width() -> int:
    """The width argparse's formatter would pick (shutil.get_terminal_size, less 2), without importing shutil.

    argparse makes a formatter for every add_argument call and imports shutil (with zlib, bz2, lzma) in
    the first: a few milliseconds of doctor's start-up for a number read the same way here.
    """
    global _WIDTH
    if _WIDTH is None:
        columns = 0
        try:
            columns = int(os.environ.get("COLUMNS", "0"))
        except ValueError:
            pass
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 0
        _WIDTH = (columns if columns > 0 else 80) - 2
    return _WIDTH


_WIDTH: Optional[int] = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, with a pointer to --help
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_help_width())


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


