"""The committed lockfiles: `lockfiles/<project>/<stack id>/requirements.txt`, read offline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from moe_env.matrix.model import Stack
from moe_env.paths import lockfiles_root

LOCK_NAME = "requirements.txt"


def shipped_path(project_name: str, stack: Stack) -> Path:
    """Where the shipped lockfile of a stack lives (whether or not it exists)."""
    return lockfiles_root() / project_name / stack.id / LOCK_NAME


def shipped_lockfile(project_name: str, stack: Stack) -> Optional[Path]:
    """The shipped lockfile of `stack`, or None when the repository ships none for it."""
    path = shipped_path(project_name, stack)
    return path if path.is_file() else None
