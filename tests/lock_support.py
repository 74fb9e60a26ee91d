"""Test fixtures for lock/resolver/build-steps: a small matrix and a real local package index.

The index is PEP 503 "simple" HTML served over http://127.0.0.1 by a thread in the test process, so
uv and pip-compile run for real against it. Its wheels are tiny but real (METADATA, WHEEL, RECORD),
including torch-like `+cu118` builds on a second index laid out like the PyTorch one (`<root>/cu118/`).
"""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

from fakes import build_wheel, sha256

# ---------------------------------------------------------------- matrix

PLATFORM_TOML = '''
[[torch]]
minor = "2.1"
versions = ["2.1.2"]
python = ">=3.8,<3.12"
default_cuda = "12.1"
cuda_builds = ["11.8", "12.1"]
glibc_min = "2.17"
cxx11_abi = false
source = ["release:torch==2.1.2 test fixture"]

[[torch]]
minor = "2.8"
versions = ["2.8.0"]
python = ">=3.9,<3.14"
default_cuda = "12.8"
cuda_builds = ["12.6", "12.8", "12.9"]
glibc_min = "2.28"
cxx11_abi = true
source = ["release:torch==2.8.0 test fixture"]

[[torch_arch]]
torch = ">=2.1,<2.2"
cuda = ["11.8"]
archs = ["3.7", "5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"]
source = ["release:torch==2.1.2 test fixture"]

[[torch_arch]]
torch = ">=2.1,<2.2"
cuda = ["12.1"]
archs = ["5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"]
source = ["release:torch==2.1.2 test fixture"]

[[torch_arch]]
torch = ">=2.8,<2.9"
cuda = ["12.6"]
archs = ["5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"]
source = ["release:torch==2.8.0 test fixture"]

[[torch_arch]]
torch = ">=2.8,<2.9"
cuda = ["12.8"]
archs = ["7.0", "7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]
source = ["release:torch==2.8.0 test fixture"]

[[torch_arch]]
torch = ">=2.8,<2.9"
cuda = ["12.9"]
archs = ["7.0", "7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]
ptx = "12.0"
source = ["release:torch==2.8.0 test fixture"]

[[cuda_driver]]
cuda = "11.8"
min_driver = "520.61.05"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ fixture"]

[[cuda_driver]]
cuda = "12.1"
min_driver = "530.30.02"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ fixture"]

[[cuda_driver]]
cuda = "12.6"
min_driver = "560.28.03"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ fixture"]

[[cuda_driver]]
cuda = "12.8"
min_driver = "570.26"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ fixture"]

[[cuda_driver]]
cuda = "12.9"
min_driver = "575.51.03"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ fixture"]

[[cuda_minor_compat]]
cuda_major = 11
min_driver = "450.80.02"
source = ["https://docs.nvidia.com/deploy/cuda-compatibility/ fixture"]

[[cuda_minor_compat]]
cuda_major = 12
min_driver = "525.60.13"
source = ["https://docs.nvidia.com/deploy/cuda-compatibility/ fixture"]
'''

FLASH_TOML = '''
package = "flash-attn"

[[wheels]]
version = "2.5.8"
torch = ["2.2", "2.3"]
cuda = ["11.8", "12.2"]
python = ["3.8", "3.9", "3.10", "3.11"]
cxx11_abi = [true, false]
source = ["Dao-AILab/flash-attention@v2.5.8:.github/workflows/publish.yml fixture"]

[[wheels]]
version = "2.8.3"
torch = ["2.4", "2.5", "2.6", "2.7", "2.8"]
cuda = ["12.9"]
python = ["3.9", "3.10", "3.11", "3.12", "3.13"]
cxx11_abi = [true, false]
source = ["Dao-AILab/flash-attention@v2.8.3:.github/workflows/publish.yml fixture"]
'''

DEEPSPEED_TOML = '''
package = "deepspeed"

[[release]]
version = "0.13.2"
sdist_only = true
build_imports_torch = true
source = ["release:deepspeed==0.13.2:setup.py fixture"]
'''

PROJECT_TOML = '''
[project]
name = "toymoe"
title = "Toy MoE"
repo = "example/toymoe"
commit = "0123456789abcdef0123456789abcdef01234567"
aliases = ["toy"]
default_variants = ["8x7b"]
source = ["example/toymoe@0123456789abcdef0123456789abcdef01234567:pyproject.toml"]

[[variant]]
id = "8x7b"
title = "Toy 8x7B"
moe = true
bf16 = true
source = ["example/toymoe#1"]

[[variant]]
id = "new"
title = "Toy new"
moe = true
source = ["example/toymoe#2"]

[[variant]]
id = "dense"
title = "Toy dense (no stack)"
moe = false
source = ["example/toymoe#3"]

[[stack]]
id = "toy-8x7b-cu121"
variants = ["8x7b"]
cuda = "12.1"
python = "3.11"
pins = { torch = "2.1.2", fakelib = "1.0", flash-attn = "2.5.8" }
why = "the fixture's known-good set"
source = ["example/toymoe#4"]

[[stack]]
id = "toy-new-cu128"
variants = ["new"]
cuda = "12.8"
python = "3.11"
pins = { torch = "2.8.0", fakelib = "1.0", flash-attn = "2.8.3", deepspeed = "0.13.2" }
source_builds = ["deepspeed", "megatron-core@0123456789abcdef0123456789abcdef01234567"]
why = "the fixture's newer set"
source = ["example/toymoe#5"]
'''


def write_matrix(root: Path) -> Path:
    (root / "platform").mkdir(parents=True, exist_ok=True)
    (root / "packages").mkdir(parents=True, exist_ok=True)
    (root / "projects").mkdir(parents=True, exist_ok=True)
    (root / "platform" / "torch.toml").write_text(PLATFORM_TOML, encoding="utf-8")
    (root / "packages" / "flash-attn.toml").write_text(FLASH_TOML, encoding="utf-8")
    (root / "packages" / "deepspeed.toml").write_text(DEEPSPEED_TOML, encoding="utf-8")
    (root / "projects" / "toymoe.toml").write_text(PROJECT_TOML, encoding="utf-8")
    return root


# ---------------------------------------------------------------- wheels and a local index


def make_wheel(dest: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """A tiny, installable py3-none-any wheel with real metadata and RECORD (tests/fakes.py builds it)."""
    return build_wheel(dest, name, version, requires)


# (index, name, version, requires): "main" is the default index, "cu118" the PyTorch-like folder
PACKAGES: List[Tuple[str, str, str, Tuple[str, ...]]] = [
    ("main", "torch", "2.1.2", ("fake-cuda-runtime==12.1.0", "typing-extensions-fake>=4")),
    ("main", "torch", "2.8.0", ("fake-cuda-runtime==12.8.0", "typing-extensions-fake>=4")),
    ("main", "fake-cuda-runtime", "11.8.0", ()),
    ("main", "fake-cuda-runtime", "12.1.0", ()),
    ("main", "fake-cuda-runtime", "12.8.0", ()),
    ("main", "typing-extensions-fake", "4.0.0", ()),
    ("main", "typing-extensions-fake", "4.1.0", ()),
    ("main", "fakelib", "1.0", ("helperlib>=1.0", "torch")),
    ("main", "helperlib", "1.0", ()),
    ("main", "helperlib", "1.1", ()),
    ("main", "deepspeed", "0.13.2", ("torch", "helperlib")),
    ("main", "setuptools", "80.9.0", ()),  # locks with deepspeed or a source build pin one (torch.no-setuptools)
    ("cu118", "torch", "2.1.2+cu118", ("fake-cuda-runtime==11.8.0", "typing-extensions-fake>=4")),
    ("cu126", "torch", "2.8.0+cu126", ("typing-extensions-fake>=4",)),
]


class LocalIndex:
    def __init__(self, root: Path, base_url: str):
        self.root = root
        self.base_url = base_url
        self.files: Dict[str, Path] = {}  # file name -> path

    @property
    def index_url(self) -> str:
        return f"{self.base_url}/main/"

    @property
    def torch_root(self) -> str:
        return self.base_url

    def hashes_of(self, name: str, version: str) -> List[str]:
        dist = name.replace("-", "_")
        return [sha256(p) for f, p in self.files.items() if f.startswith(f"{dist}-{version}-")]


def build_index(root: Path, packages=PACKAGES) -> Dict[str, Path]:
    """Write wheels and PEP 503 pages under root/<index>/<name>/index.html; returns file name -> path."""
    by_project: Dict[Tuple[str, str], List[Path]] = {}
    files: Dict[str, Path] = {}
    for index, name, version, requires in packages:
        whl = make_wheel(root / index / "_files", name, version, requires)
        by_project.setdefault((index, name), []).append(whl)
        files[whl.name] = whl
    for (index, name), wheels in by_project.items():
        page = root / index / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../_files/{w.name}#sha256={sha256(w)}">{w.name}</a>\n' for w in wheels)
        page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n", encoding="utf-8")
    for index in {i for i, *_ in packages}:
        names = sorted({n for i, n, *_ in packages if i == index})
        (root / index / "index.html").write_text(
            "<html><body>" + "".join(f'<a href="{n}/">{n}</a>' for n in names) + "</body></html>", encoding="utf-8")
    return files


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def serve_index(root: Path) -> Iterator[LocalIndex]:
    files = build_index(root)
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    socketserver.TCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        idx = LocalIndex(root, f"http://127.0.0.1:{server.server_address[1]}")
        idx.files = files
        yield idx
    finally:
        server.shutdown()
        server.server_close()


def isolated_env(tmp: Path) -> Dict[str, str]:
    """Environment for backends that must see only the local index: no pip/uv config, private caches."""
    env = dict(os.environ)
    env.update({
        "PIP_CONFIG_FILE": "/dev/null",
        "UV_NO_CONFIG": "1",
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "UV_CACHE_DIR": str(tmp / "cache" / "uv"),
        "PIP_NO_INPUT": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    })
    for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL",
              "UV_INDEX", "UV_DEFAULT_INDEX", "UV_FIND_LINKS", "MOE_ENV_INDEX_URL", "MOE_ENV_TORCH_INDEX"):
        env.pop(k, None)
    return env
