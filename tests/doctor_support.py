"""Helpers for the doctor tests: a small matrix the tests write, Environments built in memory, and fake dists.

The matrix here is test data (its own TOML files under tmp_path, loaded by the real loader), so the
check tests do not depend on what the shipped matrix holds today; the scenario tests use the shipped one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from moe_env.environment import (
    GPU,
    ApiSymbol,
    DeepSpeedBuild,
    Distribution,
    Environment,
    Extension,
    HostInfo,
    PythonInfo,
    TorchBuild,
    normalize_name,
)

PLATFORM_TOML = '''
[[torch]]
minor = "2.1"
versions = ["2.1.0", "2.1.1", "2.1.2"]
python = ">=3.8,<3.12"
default_cuda = "12.1"
cuda_builds = ["11.8", "12.1"]
glibc_min = "2.17"
cxx11_abi = false
source = ["release:torch==2.1.2"]

[[torch_arch]]
torch = ">=2.1,<2.9"
cuda = ["12.1", "12.4", "12.6"]
archs = ["5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"]
source = ["pytorch/pytorch@v2.8.0:.ci/manywheel/build_cuda.sh"]

[[torch_arch]]
torch = ">=2.9"
cuda = ["13.0"]
archs = ["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]
ptx = "12.0"
source = ["pytorch/pytorch#164471"]

[[cuda_driver]]
cuda = "12.1"
min_driver = "530.30.02"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html table 3"]

[[cuda_driver]]
cuda = "13.0"
min_driver = "580.65.06"
source = ["https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html table 3"]

[[cuda_minor_compat]]
cuda_major = 12
min_driver = "525.60.13"
source = ["https://docs.nvidia.com/deploy/cuda-compatibility/index.html"]

[[cuda_minor_compat]]
cuda_major = 13
min_driver = "580.65.06"
source = ["https://docs.nvidia.com/deploy/cuda-compatibility/index.html"]

[[gpu]]
match = ["T4"]
family = "Turing"
compute_capability = "7.5"
source = ["https://developer.nvidia.com/cuda-gpus"]

[[gpu]]
match = ["A100"]
family = "Ampere"
compute_capability = "8.0"
source = ["https://developer.nvidia.com/cuda-gpus"]

[[gpu]]
match = ["P100"]
family = "Pascal"
compute_capability = "6.0"
source = ["https://developer.nvidia.com/cuda-gpus"]

[[conflict]]
id = "numpy2-old-torch"
when = { numpy = ">=2", torch = "<2.3" }
severity = "error"
title = "numpy 2 with torch older than 2.3"
why = "torch < 2.3 was compiled against NumPy 1.x"
fix = "pip install 'numpy<2'"
source = ["pytorch/pytorch#132179"]
'''

DEEPSPEED_TOML = '''
package = "deepspeed"

[[api]]
symbol = "deepspeed.utils.set_z3_leaf_modules"
first = "0.13.0"
newest_checked = "0.19.8"
source = ["release:deepspeed==0.13.0:deepspeed/utils/__init__.py"]

[[api]]
symbol = "deepspeed.moe.layer.MoE.__init__"
param = "top2_2nd_expert_sampling"
first = "0.14.0"
source = ["release:deepspeed==0.14.0:deepspeed/moe/layer.py"]
'''

PROJECT_TOML = '''
[project]
name = "toyproj"
title = "Toy MoE project"
repo = "example/toyproj"
commit = "0123456789abcdef0123456789abcdef01234567"
aliases = ["toy"]
detect = ["toyproj-dist"]
source = ["example/toyproj@0123456789abcdef0123456789abcdef01234567:pyproject.toml"]

[[pin]]
package = "flash-attn"
spec = ""
source = ["example/toyproj@0123456:pyproject.toml"]

[[variant]]
id = "8x7b"
title = "Toy 8x7B"
moe = true
bf16 = true
source = ["example/toyproj@0123456:README.md"]

[[variant]]
id = "7b"
title = "Toy 7B (dense)"
moe = false
source = ["example/toyproj@0123456:README.md"]

[[check]]
id = "deepspeed-bound"
kind = "version_bound"
severity = "error"
title = "deepspeed must be >= 0.13"
why = "needs set_z3_leaf_modules"
fix = "pip install 'deepspeed>=0.13.0,<=0.14.5'"
source = ["example/toyproj@0123456:train.py:10"]
params = { package = "deepspeed", spec = ">=0.13.0", required = true }
variants = ["8x7b"]

[[check]]
id = "z3-leaf"
kind = "api_symbol"
severity = "error"
title = "deepspeed.utils.set_z3_leaf_modules is missing"
why = "MoE blocks under ZeRO-3 hang or save partial checkpoints"
fix = "pip install 'deepspeed>=0.13.0,<=0.14.5'"
source = ["example/toyproj@0123456:train.py:11"]
params = { symbol = "deepspeed.utils.set_z3_leaf_modules", package = "deepspeed" }
variants = ["8x7b"]

[[check]]
id = "moe-param"
kind = "api_symbol"
severity = "warning"
title = "MoE lacks top2_2nd_expert_sampling"
why = "gate differs"
fix = "upgrade deepspeed"
source = ["example/toyproj@0123456:model.py:3"]
params = { symbol = "deepspeed.moe.layer.MoE.__init__", param = "top2_2nd_expert_sampling", package = "deepspeed" }

[[check]]
id = "needs-gg"
kind = "requires"
severity = "error"
title = "grouped_gemm is needed"
why = "legacy GroupedMLP"
fix = "pip install nv-grouped-gemm"
source = ["example/toyproj@0123456:model.py:4"]
params = { any_of = ["grouped_gemm", "nv-grouped-gemm", "grouped-gemm"] }

[[check]]
id = "py"
kind = "python"
severity = "error"
title = "Python must be >= 3.9"
why = "xtuner"
fix = "use 3.10"
source = ["example/toyproj@0123456:setup.py:3"]
params = { spec = ">=3.9" }

[[check]]
id = "cu"
kind = "torch_cuda"
severity = "warning"
title = "torch must be a CUDA 12 build"
why = "kernels"
fix = "install cu121"
source = ["example/toyproj@0123456:setup.py:4"]
params = { spec = ">=12,<13" }

[[check]]
id = "no-apex"
kind = "absent"
severity = "warning"
title = "apex must not be installed"
why = "shadows fused ops"
fix = "pip uninstall apex"
source = ["example/toyproj@0123456:README.md:5"]
params = { package = "apex" }

[[check]]
id = "sm80"
kind = "gpu_capability"
severity = "error"
title = "bf16 needs sm_80"
why = "bf16"
fix = "use fp16"
source = ["example/toyproj@0123456:scripts/train.sh:3"]
params = { min = "8.0" }
variants = ["8x7b"]
'''

OTHER_PROJECT_TOML = '''
[project]
name = "otherproj"
title = "Other project"
repo = "example/other"
commit = "0123456789abcdef0123456789abcdef01234567"
source = ["example/other@0123456:pyproject.toml"]

[[variant]]
id = "base"
title = "base"
moe = true
source = ["example/other@0123456:README.md"]
'''


def write_matrix(root: Path, with_project: bool = True, with_other: bool = False) -> Path:
    (root / "platform").mkdir(parents=True, exist_ok=True)
    (root / "packages").mkdir(parents=True, exist_ok=True)
    (root / "projects").mkdir(parents=True, exist_ok=True)
    (root / "platform" / "facts.toml").write_text(PLATFORM_TOML)
    (root / "packages" / "deepspeed.toml").write_text(DEEPSPEED_TOML)
    if with_project:
        (root / "projects" / "toyproj.toml").write_text(PROJECT_TOML)
    if with_other:
        (root / "projects" / "otherproj.toml").write_text(OTHER_PROJECT_TOML)
    return root


def make_env(
    dists: Optional[Dict[str, str]] = None,
    requires: Optional[Dict[str, List[str]]] = None,
    torch: Optional[str] = None,
    torch_cuda: Optional[str] = None,
    deepspeed: Optional[DeepSpeedBuild] = None,
    api: Optional[List[ApiSymbol]] = None,
    gpus: Optional[List[str]] = None,
    driver: Optional[str] = None,
    nvcc: Optional[str] = None,
    build_mode: bool = False,
    python: str = "3.10.14",
    extensions: Optional[List[Extension]] = None,
) -> Environment:
    """An Environment as the probe would report it. `gpus` entries are "NAME:CC" or "NAME" (capability unknown)."""
    dists = dict(dists or {})
    if torch and "torch" not in dists:
        dists["torch"] = torch
    if deepspeed and "deepspeed" not in dists:
        dists["deepspeed"] = deepspeed.version
    env = Environment(python=PythonInfo(version=python, implementation="cpython", executable="/x/bin/python",
                                        prefix="/x", platform="linux-x86_64", machine="x86_64", glibc="2.36"))
    for name, version in dists.items():
        n = normalize_name(name)
        env.distributions[n] = Distribution(name=n, version=version, requires=list((requires or {}).get(name, [])))
    if torch:
        local = torch.split("+", 1)[1] if "+" in torch else None
        env.torch = TorchBuild(version=torch, local=local, cuda=torch_cuda)
    env.deepspeed = deepspeed
    for sym in api or []:
        env.api[sym.symbol] = sym
    for ext in extensions or []:
        env.extensions[ext.key] = ext
    host = HostInfo(driver_version=driver, driver_source="test" if driver else None, nvcc_version=nvcc,
                    build_mode=build_mode)
    for i, spec in enumerate(gpus or []):
        name, _, cc = spec.partition(":")
        host.gpus.append(GPU(index=i, name=name, compute_capability=cc or None))
    env.host = host
    return env


_CACHE: List[str] = []


def _cache_dir() -> str:
    if not _CACHE:
        import atexit
        import shutil
        import tempfile

        _CACHE.append(tempfile.mkdtemp(prefix="moe-env-test-cache-"))
        atexit.register(shutil.rmtree, _CACHE[0], True)
    return _CACHE[0]


def hermetic_host() -> Dict[str, str]:
    """Host facts that do not depend on the machine the tests run on: an empty host root (no /sys, /proc,
    /dev/shm or container markers) and a CUDA_HOME with the two headers a JIT build needs (no nvcc in it)."""
    base = Path(_cache_dir())
    root, toolkit = base / "host-root", base / "cuda-home"
    if not (toolkit / "include" / "curand_kernel.h").exists():
        root.mkdir(parents=True, exist_ok=True)
        (toolkit / "include").mkdir(parents=True, exist_ok=True)
        for header in ("cuda_runtime.h", "curand_kernel.h"):
            (toolkit / "include" / header).write_text("/* test header */\n")
    return {"MOE_ENV_HOST_ROOT": str(root), "CUDA_HOME": str(toolkit)}


def moe_env_cli(args: List[str], env: Optional[Dict[str, str]] = None, matrix: Optional[Path] = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m moe_env ARGS` in a real subprocess, as a user would (host facts: hermetic_host())."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_") and k not in ("CUDA_HOME", "CUDA_PATH")}
    full_env.update(hermetic_host())
    full_env["NO_COLOR"] = "1"
    full_env["MOE_ENV_CACHE_DIR"] = _cache_dir()  # the matrix cache, kept out of the user's ~/.cache
    if matrix is not None:
        full_env["MOE_ENV_MATRIX"] = str(matrix)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "moe_env", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


# ---------------------------------------------------------------- fake distributions with real-looking files


def add_torch(venv, version: str = "2.1.2+cu121", cuda: Optional[str] = "12.1", requires=("filelock", "numpy")) -> None:
    """torch's dist-info and the torch/version.py its build writes (the probe reads the file, never imports torch)."""
    cuda_line = f"cuda: Optional[str] = {cuda!r}" if cuda else "cuda: Optional[str] = None"
    venv.add_dist("torch", version, requires=list(requires), files={
        "torch/__init__.py": "raise ImportError('a fake torch: the probe must never import me')\n",
        "torch/version.py": (
            "from typing import Optional\n\n"
            "__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']\n"
            f"__version__ = {version!r}\n"
            "debug = False\n"
            f"{cuda_line}\n"
            "git_version = '0123456789abcdef0123456789abcdef01234567'\n"
            "hip: Optional[str] = None\n"
        ),
    })


def add_deepspeed(venv, version: str, z3_leaf: bool, built_torch: str = "2.1", built_cuda: str = "12.1",
                  ops: Optional[Dict[str, bool]] = None,
                  moe_params=("self", "hidden_size", "expert", "num_experts", "ep_size", "k", "use_residual"),
                  moe_param_groups: bool = True,
                  requires=("hjson", "ninja", "numpy", "packaging", "psutil", "py-cpuinfo", "pydantic", "torch", "tqdm")) -> None:
    """A deepspeed install as its setup.py leaves it: package source plus git_version_info_installed.py."""
    ops = ops if ops is not None else {"fused_adam": False, "cpu_adam": False}
    utils_init = (
        "from .logging import logger, log_dist\n"
        "from .tensor_fragment import safe_get_full_fp32_param\n"
    )
    files = {
        "deepspeed/__init__.py": "raise ImportError('a fake deepspeed: the probe must never import me')\n",
        "deepspeed/utils/logging.py": "logger = None\n\ndef log_dist(message, ranks=None):\n    pass\n",
        "deepspeed/utils/tensor_fragment.py": "def safe_get_full_fp32_param(param):\n    return None\n",
        "deepspeed/moe/__init__.py": "",
        "deepspeed/moe/layer.py": (
            "import torch\n\n\nclass MoE(torch.nn.Module):\n"
            f"    def __init__({', '.join(moe_params)}):\n        pass\n"
        ),
        "deepspeed/moe/utils.py": (
            "def split_params_into_different_moe_groups_for_optimizer(param_groups, max_group_size=178956971):\n"
            "    return param_groups\n" if moe_param_groups else "def is_moe_param(param):\n    return False\n"),
        "deepspeed/runtime/__init__.py": "",
        "deepspeed/runtime/zero/__init__.py": "from .partition_parameters import ZeroParamStatus\n",
        "deepspeed/runtime/zero/partition_parameters.py": (
            "from enum import Enum\n\n\nclass ZeroParamStatus(Enum):\n"
            "    AVAILABLE = 1\n    NOT_AVAILABLE = 2\n    INFLIGHT = 3\n"),
        "deepspeed/git_version_info_installed.py": (
            f"version='{version}'\n"
            "git_hash='unknown'\n"
            "git_branch='unknown'\n"
            f"installed_ops={ops!r}\n"
            f"compatible_ops={ {k: True for k in ops}!r}\n"
            f"torch_info={{'version': '{built_torch}', 'bf16_support': False, 'cuda_version': '{built_cuda}', "
            "'nccl_version': '2.18', 'hip_version': '0.0'}\n"
        ),
    }
    if z3_leaf:
        utils_init += "from .z3_leaf_module import set_z3_leaf_modules, unset_z3_leaf_modules, z3_leaf_module\n"
        files["deepspeed/utils/z3_leaf_module.py"] = (
            "def z3_leaf_module(model):\n    return False\n\n\n"
            "def set_z3_leaf_modules(model, leaf_module_classes):\n    return []\n\n\n"
            "def unset_z3_leaf_modules(model, leaf_module_classes):\n    return []\n"
        )
    files["deepspeed/utils/__init__.py"] = utils_init
    venv.add_dist("deepspeed", version, requires=list(requires), files=files)


def add_plain(venv, name: str, version: str, requires=(), package: Optional[str] = None) -> None:
    """A pure-Python distribution with one module, enough for metadata-level checks."""
    pkg = package or name.replace("-", "_")
    venv.add_dist(name, version, requires=list(requires), files={f"{pkg}/__init__.py": f"__version__ = {version!r}\n"})
