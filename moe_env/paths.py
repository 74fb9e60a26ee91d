"""Where the shipped data lives: inside the wheel (moe_env/_data/...) or beside the package in a checkout.

Strings first (`*_dir`), Path objects for callers that want them: doctor's path never imports pathlib.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_PKG = os.path.dirname(os.path.realpath(__file__))


def _data_dir(name: str, env: str) -> str:
    override = os.environ.get(env)
    if override:
        return override
    installed = os.path.join(_PKG, "_data", name)
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(_PKG), name)  # source checkout or editable install


def matrix_dir() -> str:
    """compat_matrix/ (override: MOE_ENV_MATRIX)."""
    return _data_dir("compat_matrix", "MOE_ENV_MATRIX")


def matrix_root() -> Path:
    from pathlib import Path

    return Path(matrix_dir())


def lockfiles_root() -> Path:
    """lockfiles/ (override: MOE_ENV_LOCKFILES)."""
    from pathlib import Path

    return Path(_data_dir("lockfiles", "MOE_ENV_LOCKFILES"))
