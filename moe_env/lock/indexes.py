"""Where torch's CUDA builds come from. Configured here (flag > environment > default), not in the logic.

The default package index is never named: the backends use their own default (or the user's pip/uv
configuration) unless `--index-url` / MOE_ENV_INDEX_URL says otherwise. Builds of torch other than
the default index's one (`+cu118`, `+cpu`) live on the PyTorch index, one folder per build.
"""

from __future__ import annotations

import os
from typing import Optional

PYTORCH_INDEX = "https://download.pytorch.org/whl"


def torch_index_base(override: Optional[str] = None) -> str:
    """The PyTorch index root; `--torch-index` > MOE_ENV_TORCH_INDEX > the PyTorch download index."""
    return (override or os.environ.get("MOE_ENV_TORCH_INDEX") or PYTORCH_INDEX).rstrip("/")


def torch_index_url(local_tag: str, override: Optional[str] = None) -> str:
    """The index folder of one build: `<root>/cu118`."""
    return f"{torch_index_base(override)}/{local_tag}"


def default_index(override: Optional[str] = None) -> Optional[str]:
    """An explicit main index (`--index-url` > MOE_ENV_INDEX_URL); None: the backend's own default."""
    return override or os.environ.get("MOE_ENV_INDEX_URL") or None
