"""Where the shipped data lives: inside the wheel (moe_env/_data/...) or beside the package in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override)
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name  # source checkout or editable install


def matrix_root() -> Path:
    """compat_matrix/ (override: MOE_ENV_MATRIX)."""
    return _data_dir("compat_matrix", "MOE_ENV_MATRIX")


def lockfiles_root() -> Path:
    """lockfiles/ (override: MOE_ENV_LOCKFILES)."""
    return _data_dir("lockfiles", "MOE_ENV_LOCKFILES")
