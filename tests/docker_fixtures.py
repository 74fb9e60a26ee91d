"""A toy MoE project for the Dockerfile tests: its matrix, tiny real wheels and a hashed lockfile.

The project `toymoe` has one variant that needs `deepspeed.utils.set_z3_leaf_modules` (as MGM-8x7B
does) and two stacks: `toy-good` pins a fake deepspeed 0.13.2 that has it, `toy-broken` a fake
0.12.6 that lacks it. Everything is written by the test; nothing upstream is copied.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Dict, List

from fakes import build_wheel, sha256  # noqa: F401  (sha256: used here and by the tests)

REPO = Path(__file__).resolve().parent.parent
SRC = "release:toymoe==0.1 test fixture"

TOY_PROJECT = f"""
[project]
name = "toymoe"
title = "Toy MoE"
repo = "example/toymoe"
commit = "0000000000000000000000000000000000000000"
source = ["{SRC}"]
aliases = ["toy"]
detect = ["toymoe"]

[[variant]]
id = "8x1b"
title = "Toy 8x1B"
moe = true
num_experts = 8
source = ["{SRC}"]

[[check]]
id = "toy-z3-leaf"
kind = "api_symbol"
severity = "error"
title = "deepspeed lacks set_z3_leaf_modules"
why = "ZeRO-3 hangs on MoE layers unless they are leaf modules"
fix = "pip install 'deepspeed>=0.13.0'"
source = ["{SRC}"]
params = {{ symbol = "deepspeed.utils.set_z3_leaf_modules", package = "deepspeed" }}

[[stack]]
id = "toy-good"
variants = ["8x1b"]
cuda = "12.1"
python = "{{python}}"
pins = {{ torch = "2.1.2", deepspeed = "0.13.2" }}
why = "deepspeed 0.13.2 has set_z3_leaf_modules"
source = ["{SRC}"]

[[stack]]
id = "toy-broken"
variants = ["8x1b"]
cuda = "12.1"
python = "{{python}}"
pins = {{ torch = "2.1.2", deepspeed = "0.12.6" }}
why = "deliberately broken: deepspeed 0.12.6 predates set_z3_leaf_modules"
source = ["{SRC}"]

[[stack]]
id = "toy-compiled"
variants = ["8x1b"]
cuda = "12.1"
python = "{{python}}"
pins = {{ torch = "2.1.2", deepspeed = "0.13.2" }}
why = "source builds: deepspeed with pre-built ops, and toyext"
source = ["{SRC}"]
source_builds = ["deepspeed", "toyext"]
gpu_archs = ["8.0"]
"""

TOY_TORCH = f"""
[[torch]]
minor = "2.1"
versions = ["2.1.2"]
python = ">=3.8,<3.13"
default_cuda = "12.1"
cuda_builds = ["11.8", "12.1"]
glibc_min = "2.17"
cxx11_abi = false
source = ["{SRC}"]
"""

TOY_DEEPSPEED_API = f"""
package = "deepspeed"

[[api]]
symbol = "deepspeed.utils.set_z3_leaf_modules"
first = "0.13.0"
source = ["{SRC}"]
"""

# stacks -> the fake distributions their lockfiles pin
STACK_DISTS = {
    "toy-good": [("torch", "2.1.2+cu121"), ("deepspeed", "0.13.2")],
    "toy-broken": [("torch", "2.1.2+cu121"), ("deepspeed", "0.12.6")],
    "toy-compiled": [("torch", "2.1.2+cu121"), ("deepspeed", "0.13.2")],
}


def write_toy_matrix(root: Path, python: str) -> Path:
    """A compat_matrix with the shipped nvidia/cuda image and driver tables, and the toy project."""
    (root / "platform").mkdir(parents=True, exist_ok=True)
    (root / "packages").mkdir(parents=True, exist_ok=True)
    (root / "projects").mkdir(parents=True, exist_ok=True)
    for name in ("cuda_images.toml", "cuda.toml"):  # the real image tags and driver minimums
        shipped = REPO / "compat_matrix" / "platform" / name
        (root / "platform" / name).write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    (root / "packages" / "deepspeed.toml").write_text(TOY_DEEPSPEED_API, encoding="utf-8")
    (root / "platform" / "torch.toml").write_text(TOY_TORCH, encoding="utf-8")
    (root / "projects" / "toymoe.toml").write_text(TOY_PROJECT.replace("{python}", python), encoding="utf-8")
    return root


def _dist_files(name: str, version: str) -> Dict[str, str]:
    if name == "torch":
        public, _, local = version.partition("+")
        cuda = f"{local[2:-1]}.{local[-1]}" if local.startswith("cu") else None
        return {
            "torch/__init__.py": "from torch.version import __version__\n",
            "torch/version.py": f"__version__ = {version!r}\ncuda = {cuda!r}\ngit_version = 'test'\n",
        }
    if name == "deepspeed":
        has_leaf = tuple(int(x) for x in version.split(".")[:2]) >= (0, 13)
        utils = "def set_z3_leaf_modules(model, leaf_module_classes):\n    return model\n" if has_leaf else "def see_memory_usage(message):\n    pass\n"
        return {
            "deepspeed/__init__.py": f"__version__ = {version!r}\n",
            "deepspeed/utils/__init__.py": utils,
            "deepspeed/git_version_info_installed.py": (
                f"version = {version!r}\ngit_hash = 'test'\ngit_branch = 'test'\n"
                "installed_ops = {'fused_adam': True}\ncompatible_ops = {'fused_adam': True}\ntorch_info = {'version': '2.1', 'bf16_support': False, "
                "'cuda_version': '12.1', 'nccl_version': '2.18', 'hip_version': '0.0'}\n"
            ),
        }
    module = name.replace("-", "_")
    return {f"{module}/__init__.py": f"__version__ = {version!r}\n"}


def make_wheel(dest: Path, name: str, version: str, files: Dict[str, str] = None, requires: List[str] = ()) -> Path:
    return build_wheel(dest, name, version, requires=requires, files=files if files is not None else _dist_files(name, version))


def write_toy_lockfiles(lock_root: Path, wheelhouse: Path) -> Dict[str, Path]:
    """Wheels for every toy stack into `wheelhouse`, and lockfiles/<project>/<stack>/requirements.txt."""
    out = {}
    for stack, dists in STACK_DISTS.items():
        lines = [f"# toy lockfile for stack {stack} (test fixture)"]
        for name, version in dists:
            wheel = make_wheel(wheelhouse, name, version)
            lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha256(wheel)}")
        path = lock_root / "toymoe" / stack / "requirements.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out[stack] = path
    return out


def toy_env(matrix: Path, lockfiles: Path) -> Dict[str, str]:
    return {"MOE_ENV_MATRIX": str(matrix), "MOE_ENV_LOCKFILES": str(lockfiles)}


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
