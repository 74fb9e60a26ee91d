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


# ---------------------------------------------------------------- files of fake torch / deepspeed installs (probe tests)


def torch_files(version: str = "2.1.2+cu121", cuda: Optional[str] = "12.1", cxx11_abi: Optional[int] = 0,
                cudnn_lib: Optional[str] = None, libc10: Optional[bytes] = None) -> Dict[str, object]:
    """What a torch wheel leaves that the probe reads: torch/version.py, TorchConfig.cmake, torch/lib entries.

    `cxx11_abi=None` writes a TorchConfig.cmake without the ABI line (as torch 2.13 wheels have it);
    `libc10` then gives the bytes of torch/lib/libc10.so; `cudnn_lib` names a bundled libcudnn.so.X.
    torch/__init__.py writes a file and raises if anything ever imports it.
    """
    files: Dict[str, object] = {
        "torch/__init__.py": (
            "import os\n"
            "open(os.environ.get('MOE_ENV_TEST_IMPORTED', '/dev/null'), 'a').write('torch imported\\n')\n"
            "raise ImportError('a fake torch: the probe must never import me')\n"
        ),
        "torch/version.py": (
            "from typing import Optional\n\n"
            "__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']\n"
            f"__version__ = {version!r}\n"
            "debug = False\n"
            f"cuda: Optional[str] = {cuda!r}\n"
            "git_version = '0123456789abcdef0123456789abcdef01234567'\n"
            "hip: Optional[str] = None\n"
        ),
    }
    abi_line = (f'if(CMAKE_SYSTEM_NAME STREQUAL "Linux")\n  set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}")\nendif()\n'
                if cxx11_abi is not None else "")
    files["torch/share/cmake/Torch/TorchConfig.cmake"] = "# FindTorch\n" + abi_line + "if(TORCH_CXX_FLAGS)\nendif()\n"
    if libc10 is not None:
        files["torch/lib/libc10.so"] = libc10
    if cudnn_lib:
        files[f"torch/lib/{cudnn_lib}"] = b"\x7fELF fake"
    return files


def deepspeed_files(version: str, z3_leaf: bool, moe_params: Iterable[str] = (
        "self", "hidden_size", "expert", "num_experts", "ep_size", "k", "capacity_factor", "eval_capacity_factor",
        "min_capacity", "use_residual", "noisy_gate_policy", "drop_tokens", "use_rts", "use_tutel",
        "enable_expert_tensor_parallelism"),
        build_info: Optional[str] = "old", built_torch: str = "2.1", built_cuda: str = "12.1",
        ops: Optional[Dict[str, bool]] = None) -> Dict[str, object]:
    """A deepspeed install as its setup.py leaves it (source + git_version_info_installed.py).

    `z3_leaf=False` is the 0.12.6 layout (no set_z3_leaf_modules); True the 0.13.x one, re-exporting it from
    z3_leaf_module.py. `build_info`: "old" (0.9-0.14.0 fields, compatible_ops), "new" (0.14.1+, accelerator_name),
    None (no file), or a string written verbatim. deepspeed/__init__.py hangs and writes a file if imported.
    """
    ops = dict(ops if ops is not None else {"fused_adam": False, "cpu_adam": True})
    utils_init = "from .logging import logger, log_dist\n"
    if z3_leaf:
        utils_init += "from .z3_leaf_module import set_z3_leaf_modules, unset_z3_leaf_modules, z3_leaf_module\n"
    files: Dict[str, object] = {
        "deepspeed/__init__.py": (
            "import os, time\n"
            "open(os.environ.get('MOE_ENV_TEST_IMPORTED', '/dev/null'), 'a').write('deepspeed imported\\n')\n"
            "time.sleep(60)\n"
        ),
        "deepspeed/utils/__init__.py": utils_init,
        "deepspeed/utils/logging.py": "logger = None\n\n\ndef log_dist(message, ranks=None):\n    pass\n",
        "deepspeed/moe/__init__.py": "",
        "deepspeed/moe/layer.py": (
            "import torch\n\nfrom .experts import Experts\n\n\nclass MoE(torch.nn.Module):\n"
            '    """Mixture of experts."""\n\n'
            f"    def __init__({', '.join(moe_params)}):\n        super().__init__()\n\n"
            "    def forward(self, hidden_states, used_token=None):\n        return hidden_states\n"
        ),
        "deepspeed/moe/experts.py": "class Experts(object):\n    pass\n",
        "deepspeed/moe/utils.py": (
            "def split_params_into_different_moe_groups_for_optimizer(param_groups, max_group_size=178956971):\n"
            "    return param_groups\n"
        ),
    }
    if z3_leaf:
        files["deepspeed/utils/z3_leaf_module.py"] = (
            "import torch\n\n\ndef z3_leaf_module(model):\n    return False\n\n\n"
            "def set_z3_leaf_modules(model, leaf_module_classes):\n    return []\n\n\n"
            "def unset_z3_leaf_modules(model, leaf_module_classes):\n    return []\n"
        )
    torch_info = (f"torch_info={{'version': '{built_torch}', 'bf16_support': False, 'cuda_version': '{built_cuda}', "
                  "'nccl_version': '2.18', 'hip_version': '0.0'}\n")
    if build_info == "old":
        files["deepspeed/git_version_info_installed.py"] = (
            f"version='{version}'\ngit_hash='abc1234'\ngit_branch='HEAD'\ninstalled_ops={ops!r}\n"
            f"compatible_ops={ {k: True for k in ops}!r}\n" + torch_info)
    elif build_info == "new":
        files["deepspeed/git_version_info_installed.py"] = (
            f"version='{version}'\ngit_hash='abc1234'\ngit_branch='HEAD'\ninstalled_ops={ops!r}\n"
            "accelerator_name='cuda'\n" + torch_info)
    elif build_info is not None:
        files["deepspeed/git_version_info_installed.py"] = build_info
    return files


def build_wheel(dest: Path, name: str, version: str, requires: Iterable[str] = (),
                files: Optional[Dict[str, object]] = None) -> Path:
    """A real, installable (tiny) py3-none-any wheel: METADATA, WHEEL and a RECORD of sha256 digests.

    `files` maps archive paths to str or bytes; by default one `<module>/__init__.py` with __version__.
    Dates are fixed so the same call gives the same bytes (and hashes) every time.
    """
    import base64
    import hashlib
    import zipfile

    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents: Dict[str, bytes] = {}
    for rel, content in (files if files is not None else {f"{dist}/__init__.py": f"__version__ = {version!r}\n"}).items():
        contents[rel] = content if isinstance(content, bytes) else str(content).encode("utf-8")
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"] + [f"Requires-Dist: {r}" for r in requires]
    contents[f"{info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    contents[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: moe-env-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for rel, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel in sorted(contents):
            entry = zipfile.ZipInfo(rel, date_time=(2024, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, contents[rel])
    return path


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
