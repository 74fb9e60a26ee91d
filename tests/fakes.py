"""Build real virtual environments and write tiny fake distributions into them.

A fake distribution is real on disk: a `<name>-<version>.dist-info` with METADATA, RECORD and
INSTALLER, plus whatever package files the test gives. Nothing upstream is copied; the tests write
the few lines that matter (a `set_z3_leaf_modules` re-export, a torch/version.py saying CUDA 12.1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, Optional


class Venv:
    def __init__(self, root: Path):
        self.root = root
        self.python = root / "bin" / "python"
        matches = list((root / "lib").glob("python3*/site-packages"))
        if not matches:
            raise RuntimeError(f"no site-packages under {root}")
        self.site = matches[0]

    def add_dist(
        self,
        name: str,
        version: str,
        requires: Iterable[str] = (),
        files: Optional[Dict[str, str]] = None,
        metadata: Optional[str] = None,
        installer: str = "pip",
    ) -> Path:
        return write_dist(self.site, name, version, requires, files, metadata, installer)


def make_venv(path: Path, python: Optional[str] = None) -> Venv:
    """A real venv, made by uv when available (milliseconds), else by the stdlib venv module."""
    python = python or sys.executable
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "venv", "--quiet", "--python", python, str(path)], check=True,
                       env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    else:
        subprocess.run([python, "-m", "venv", "--without-pip", str(path)], check=True)
    return Venv(path)


def write_dist(
    site: Path,
    name: str,
    version: str,
    requires: Iterable[str] = (),
    files: Optional[Dict[str, str]] = None,
    metadata: Optional[str] = None,
    installer: str = "pip",
) -> Path:
    """Write package files and a dist-info. `metadata=None` writes a normal METADATA; a string writes it verbatim."""
    files = files or {}
    for rel, content in files.items():
        target = site / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content), encoding="utf-8")
    dist_name = name.replace("-", "_")
    info = site / f"{dist_name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    if metadata is None:
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in requires]
        metadata = "\n".join(lines) + "\n"
    if metadata != "":  # "" means: no METADATA file at all
        (info / "METADATA").write_text(metadata, encoding="utf-8")
    (info / "INSTALLER").write_text(installer + "\n", encoding="utf-8")
    record = [f"{rel},," for rel in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")
    return info
