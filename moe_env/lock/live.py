"""`lock --refresh`: check live whether flash-attn's release publishes a prebuilt wheel for the target.

The matrix's [[wheels]] table answers offline; this asks the project's release assets (GitHub's
release API; MOE_ENV_FLASH_ATTN_RELEASES overrides the URL template, e.g. for a mirror) with a timeout
and retries. A failure never fails the lock: the matrix answer stands and the step says so.
"""

from __future__ import annotations

import os
import re
import time
from typing import List, Optional, Tuple

RELEASES_API = "https://api.github.com/repos/Dao-AILab/flash-attention/releases/tags/v{version}"
_ASSET = re.compile(r"^flash_attn-[^+]+\+cu(\d+)torch(\d+\.\d+)cxx11abi(TRUE|FALSE)-cp(\d)(\d+)-cp\d+-linux_x86_64\.whl$")


def release_assets(version: str, timeout: float = 10.0, retries: int = 2) -> Tuple[Optional[List[str]], str]:
    """(asset file names, "") or (None, why the check failed)."""
    try:
        import requests
    except ImportError:
        return None, "requests is not installed"
    url = (os.environ.get("MOE_ENV_FLASH_ATTN_RELEASES") or RELEASES_API).format(version=version)
    last = ""
    for attempt in range(retries + 1):
        try:
            resp = requests.get(url, timeout=timeout, headers={"Accept": "application/vnd.github+json"})
            if resp.status_code == 404:
                return [], ""  # no such release: no assets
            if resp.status_code >= 500 or resp.status_code == 429:
                last = f"HTTP {resp.status_code}"
            elif resp.status_code != 200:
                return None, f"HTTP {resp.status_code} from {url}"
            else:
                return [a.get("name", "") for a in resp.json().get("assets", [])], ""
        except requests.Timeout as exc:
            last = type(exc).__name__  # slow: worth another try
        except (requests.RequestException, ValueError) as exc:
            return None, f"{type(exc).__name__} from {url}"  # unreachable or garbled: retrying will not help
        if attempt < retries:
            time.sleep(0.5 * (2 ** attempt))
    return None, f"{last} from {url}"


def matching_asset(names: List[str], version: str, torch_minor: str, cuda: str, python: str,
                   cxx11_abi: Optional[bool]) -> Optional[str]:
    """The asset flash-attn's setup.py would download for this target, if any."""
    from packaging.version import InvalidVersion, Version

    try:
        exact = Version(version) < Version("2.3.6")  # until 2.3.5 the cu tag is torch's exact CUDA
    except InvalidVersion:
        exact = False
    want_cu = cuda.replace(".", "")
    major = cuda.split(".")[0]
    for name in names:
        m = _ASSET.match(name)
        if not m:
            continue
        cu, tminor, abi, pmaj, pmin = m.groups()
        cu_major = cu[:-1] if len(cu) >= 3 else cu  # "122" -> "12", "118" -> "11", "12" -> "12"
        cu_ok = cu == want_cu if exact else cu_major == major
        if (cu_ok and tminor == torch_minor and f"{pmaj}.{pmin}" == python
                and (cxx11_abi is None or (abi == "TRUE") == cxx11_abi)):
            return name
    return None
