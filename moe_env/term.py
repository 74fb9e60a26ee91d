"""Terminal conventions: colour only on a terminal and without NO_COLOR; progress on stderr only on a terminal."""

from __future__ import annotations

import os
import sys
from typing import TextIO

_CODES = {"red": "31", "yellow": "33", "green": "32", "blue": "34", "bold": "1", "dim": "2"}


def use_color(stream: TextIO = sys.stdout) -> bool:
    if "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != "":
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, color: str, enabled: bool) -> str:
    return f"\033[{_CODES[color]}m{text}\033[0m" if enabled else text


class Progress:
    """One-line progress messages on stderr, silent when stderr is not a terminal or quiet is set (--json)."""

    def __init__(self, quiet: bool = False, stream: TextIO = None):  # type: ignore[assignment]
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()

    def say(self, message: str) -> None:
        if self.enabled:
            self.stream.write(f"moe-env: {message}\n")
            self.stream.flush()
