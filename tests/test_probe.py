"""The probe across the process boundary: real venvs, fake but real-on-disk installs, hostile inputs."""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes import deepspeed_files, make_venv, torch_files
from moe_env.environment import Environment
from moe_env.errors import MoeEnvError, UsageError
from moe_env.probe import runner
from moe_env.probe.runner import probe_environment
from moe_env.probe.target import find_symbol

TARGET = Path(runner.__file__).with_name("target.py")

Z3 = "deepspeed.utils.set_z3_leaf_modules"
MOE_INIT = "deepspeed.moe.layer.MoE.__init__"
SPLIT = "deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer"
SYMBOLS = [Z3, MOE_INIT, SPLIT]


@pytest.fixture(autouse=True)
def _quiet_host(monkeypatch, tmp_path):
    """Host facts from overrides, so the tests do not depend on this machine's GPU or nvcc."""
    monkeypatch.setenv("MOE_ENV_GPUS", "none")
    monkeypatch.setenv("MOE_ENV_NVCC_VERSION", "12.1")
    monkeypatch.delenv("MOE_ENV_CUDA_DRIVER_VERSION", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("MOE_ENV_TEST_IMPORTED", str(tmp_path / "imported.log"))


def imported(tmp_path) -> str:
    log = tmp_path / "imported.log"
    return log.read_text() if log.exists() else ""


# ---------------------------------------------------------------- deepspeed API surface across releases


def test_deepspeed_0_12_6_lacks_set_z3_leaf_modules(venv, tmp_path):
    venv.add_dist("deepspeed", "0.12.6", requires=["torch", "pydantic"], files=deepspeed_files("0.12.6", z3_leaf=False))
    env = probe_environment(str(venv.python), SYMBOLS)
    z3 = env.api[Z3]
    assert z3.found is False
    assert "deepspeed/utils/__init__.py does not define set_z3_leaf_modules" in z3.error
    assert env.version_of("deepspeed") == "0.12.6"
    assert env.api[SPLIT].found and env.api[SPLIT].params == ["param_groups", "max_group_size"]
    assert imported(tmp_path) == ""


def test_deepspeed_0_13_2_reexports_set_z3_leaf_modules(venv, tmp_path):
    venv.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", z3_leaf=True))
    env = probe_environment(str(venv.python), SYMBOLS)
    z3 = env.api[Z3]
    assert (z3.found, z3.kind, z3.file, z3.params) == (
        True, "function", "deepspeed/utils/z3_leaf_module.py", ["model", "leaf_module_classes"])
    source = (venv.site / z3.file).read_text().splitlines()
    assert source[z3.line - 1].startswith("def set_z3_leaf_modules(")
    assert imported(tmp_path) == ""


def test_moe_init_parameters(venv):
    params = ("self", "hidden_size", "expert", "num_experts", "ep_size", "k", "*args",
              "top2_2nd_expert_sampling", "**kwargs")
    files = deepspeed_files("0.14.0", z3_leaf=True, moe_params=params[:6] + ("*args", "top2_2nd_expert_sampling=True",
                                                                              "**kwargs"))
    venv.add_dist("deepspeed", "0.14.0", files=files)
    env = probe_environment(str(venv.python), [MOE_INIT, "deepspeed.moe.layer.MoE", "deepspeed.moe.layer.MoE.nothing"])
    init = env.api[MOE_INIT]
    assert init.found and init.kind == "function" and init.file == "deepspeed/moe/layer.py"
    assert init.params == list(params)
    cls = env.api["deepspeed.moe.layer.MoE"]
    assert cls.kind == "class" and cls.params == list(params)
    missing = env.api["deepspeed.moe.layer.MoE.nothing"]
    assert not missing.found and "class MoE" in missing.error


def test_deepspeed_build_info_old_and_new_layouts(venv_factory):
    old = venv_factory()
    old.add_dist("deepspeed", "0.12.6", files=deepspeed_files("0.12.6", False, build_info="old", built_torch="2.1",
                                                              built_cuda="12.1", ops={"fused_adam": True}))
    ds = probe_environment(str(old.python)).deepspeed
    assert ds.build_info_found and (ds.version, ds.built_torch, ds.built_cuda, ds.built_nccl) == ("0.12.6", "2.1", "12.1", "2.18")
    assert ds.installed_ops == {"fused_adam": True} and ds.compatible_ops == {"fused_adam": True}
    assert ds.git_hash == "abc1234" and ds.accelerator is None

    new = venv_factory()
    new.add_dist("deepspeed", "0.16.4", files=deepspeed_files("0.16.4", True, build_info="new", built_torch="0.0",
                                                              built_cuda="0.0"))
    ds = probe_environment(str(new.python)).deepspeed
    assert ds.accelerator == "cuda" and ds.built_torch == "0.0" and ds.compatible_ops == {}
    assert ds.installed_ops == {"fused_adam": False, "cpu_adam": True}


def test_deepspeed_without_or_with_broken_build_info(venv_factory):
    none = venv_factory()
    none.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", True, build_info=None))
    ds = probe_environment(str(none.python)).deepspeed
    assert not ds.build_info_found and "git_version_info_installed.py missing" in ds.build_info_error

    broken = venv_factory()
    broken.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", True, build_info="version='0.13.2'\ninstalled_ops={\n"))
    env = probe_environment(str(broken.python))
    assert not env.deepspeed.build_info_found and "syntax error" in env.deepspeed.build_info_error
    assert any("git_version_info_installed.py" in e for e in env.probe_errors)


# ---------------------------------------------------------------- torch build facts


def test_torch_cuda_121_build(venv, tmp_path):
    venv.add_dist("torch", "2.1.2+cu121", requires=["filelock", "nvidia-cudnn-cu12==8.9.2.26; platform_system == \"Linux\""],
                  files=torch_files("2.1.2+cu121", "12.1", cxx11_abi=0))
    venv.add_dist("nvidia-cudnn-cu12", "8.9.2.26", files={"nvidia/cudnn/__init__.py": ""})
    env = probe_environment(str(venv.python))
    t = env.torch
    assert (t.version, t.local, t.cuda, t.hip, t.debug) == ("2.1.2+cu121", "cu121", "12.1", None, False)
    assert t.git_version == "0123456789abcdef0123456789abcdef01234567"
    assert (t.cudnn, t.cudnn_source) == ("8.9.2.26", "distribution nvidia-cudnn-cu12")
    assert (t.cxx11_abi, t.cxx11_abi_source) == (False, "torch/share/cmake/Torch/TorchConfig.cmake")
    assert env.dist("torch").requires[1].startswith("nvidia-cudnn-cu12==8.9.2.26")
    assert imported(tmp_path) == ""


def test_cudnn_from_torch_pin_when_its_wheel_is_missing(venv):
    # the Requires-Dist form of the real torch 2.1.2 wheel
    venv.add_dist("torch", "2.1.2+cu121", requires=[
        'nvidia-cudnn-cu12 (==8.9.2.26) ; platform_system == "Linux" and platform_machine == "x86_64"'],
        files=torch_files("2.1.2+cu121", "12.1"))
    t = probe_environment(str(venv.python)).torch
    assert (t.cudnn, t.cudnn_source) == ("8.9.2.26", "torch's Requires-Dist (nvidia-cudnn-cu12 is not installed)")


def test_torch_abi_from_libc10_and_bundled_cudnn(venv_factory):
    new = venv_factory()
    symbols = b"\x7fELF..._ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE..."
    new.add_dist("torch", "2.13.0+cu130", files=torch_files("2.13.0+cu130", "13.0", cxx11_abi=None, libc10=symbols,
                                                           cudnn_lib="libcudnn.so.9.1.0"))
    t = probe_environment(str(new.python)).torch
    assert (t.cxx11_abi, t.cxx11_abi_source) == (True, "torch/lib/libc10.so symbols")
    assert (t.cudnn, t.cudnn_source) == ("9.1.0", "torch/lib/libcudnn.so.9.1.0")

    old = venv_factory()
    old.add_dist("torch", "2.0.1", files=torch_files("2.0.1", "11.7", cxx11_abi=None, libc10=b"\x7fELF..._ZN3c105ErrorC2ENS_14SourceLocationESs..."))
    assert probe_environment(str(old.python)).torch.cxx11_abi is False


def test_odd_versions_are_kept_verbatim(venv):
    venv.add_dist("torch", "2.1.0a0+git1234", files=torch_files("2.1.0a0+git1234", None, cxx11_abi=1))
    venv.add_dist("megatron-core", "0.0.0", files={"megatron/core/__init__.py": ""})
    env = probe_environment(str(venv.python))
    assert (env.torch.version, env.torch.local, env.torch.cuda, env.torch.cudnn) == ("2.1.0a0+git1234", "git1234", None, None)
    assert env.torch.cxx11_abi is True
    assert env.version_of("megatron_core") == "0.0.0"
    ext = env.extensions["megatron-core"]
    assert ext.present and ext.version == "0.0.0" and ext.import_name == "megatron.core"


# ---------------------------------------------------------------- hostile inputs


def test_broken_and_missing_metadata(venv):
    venv.add_dist("goodpkg", "1.0", requires=["numpy>=1.17"])
    venv.add_dist("nometa", "2.0", metadata="")
    venv.add_dist("garbage", "3.0", metadata="\x00\x01 this is not : a header\n")
    bad = venv.site / "badbytes-4.0.dist-info"
    bad.mkdir()
    (bad / "METADATA").write_bytes(b"Metadata-Version: 2.1\nName: badbytes\nVersion: 4.0\nSummary: \xff\xfe\n")
    fine = venv.site / "replacement-6.0.dist-info"  # U+FFFD written by the author, encoded as valid UTF-8
    fine.mkdir()
    (fine / "METADATA").write_bytes("Metadata-Version: 2.1\nName: replacement\nVersion: 6.0\nSummary: \ufffd ok\n".encode())
    unreadable = venv.site / "locked-5.0.dist-info"
    (unreadable / "METADATA").mkdir(parents=True)  # a directory where the file should be
    env = probe_environment(str(venv.python))
    assert env.dist("goodpkg").requires == ["numpy>=1.17"] and env.dist("goodpkg").metadata_error is None
    assert env.dist("nometa").version == "2.0" and "METADATA missing" in env.dist("nometa").metadata_error
    assert env.dist("garbage").version == "3.0" and "no Name and Version" in env.dist("garbage").metadata_error
    assert env.dist("badbytes").version == "4.0" and "UTF-8" in env.dist("badbytes").metadata_error
    assert env.dist("locked").version == "5.0" and env.dist("locked").metadata_error
    assert env.dist("replacement").version == "6.0" and env.dist("replacement").metadata_error is None
    joined = "\n".join(env.probe_errors)
    for name in ("nometa-2.0", "garbage-3.0", "badbytes-4.0", "locked-5.0"):
        assert name in joined
    assert "goodpkg" not in joined


def test_folded_license_header_does_not_hide_requirements(venv):
    # as bitsandbytes 0.45.5's METADATA: a multi-line License whose blank lines are indented, then Requires-Dist
    venv.add_dist("bitsandbytes", "0.45.5", metadata=(
        "Metadata-Version: 2.4\nName: bitsandbytes\nVersion: 0.45.5\nLicense: MIT License\n        \n"
        "        Copyright (c) Facebook, Inc.\n        \nRequires-Python: >=3.8\nRequires-Dist: torch<3,>=2.0\n"
        "Requires-Dist: numpy>=1.17\nProject-URL: homepage, https://example.invalid/bnb\n\nlong description\n"
        "Requires-Dist: not-a-header\n"))
    env = probe_environment(str(venv.python))
    assert env.dist("bitsandbytes").requires == ["torch<3,>=2.0", "numpy>=1.17"]
    assert env.extensions["bitsandbytes"].origin == "https://example.invalid/bnb"


def test_module_that_hangs_or_raises_on_import_is_never_imported(venv, tmp_path):
    venv.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", True))  # __init__ sleeps 60 s
    venv.add_dist("transformers", "4.36.2", files={
        "transformers/__init__.py": "raise RuntimeError('boom on import')\n",
        "transformers/models/__init__.py": "raise RuntimeError('boom')\n",
        "transformers/models/mixtral/__init__.py": "import sys; sys.exit(3)\n",
        "transformers/models/mixtral/modeling_mixtral.py": (
            "import torch\n\n\nclass MixtralSparseMoeBlock(torch.nn.Module):\n"
            "    def __init__(self, config):\n        super().__init__()\n"),
    })
    started = time.perf_counter()
    env = probe_environment(str(venv.python), [Z3, "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock"],
                            timeout=20)
    assert time.perf_counter() - started < 15
    assert env.api[Z3].found
    block = env.api["transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock"]
    assert block.found and block.kind == "class" and block.params == ["self", "config"] and block.line == 4
    assert imported(tmp_path) == ""


def test_syntax_error_in_a_probed_module(venv):
    files = deepspeed_files("0.13.2", True)
    files["deepspeed/utils/__init__.py"] = "from .z3_leaf_module import (set_z3_leaf_modules,\n"
    files["deepspeed/moe/layer.py"] = "class MoE:\n    def __init__(self, hidden_size:\n"
    venv.add_dist("deepspeed", "0.13.2", files=files)
    env = probe_environment(str(venv.python), SYMBOLS)
    z3, init = env.api[Z3], env.api[MOE_INIT]
    assert not z3.found and z3.error.startswith("syntax error in deepspeed/utils/__init__.py line 1")
    assert not init.found and "syntax error in deepspeed/moe/layer.py" in init.error
    assert env.api[SPLIT].found  # one bad file does not spoil the others
    assert sum("syntax error" in e for e in env.probe_errors) == 2


def test_missing_interpreter():
    with pytest.raises(UsageError, match="no such file"):
        probe_environment("/nonexistent/bin/python")
    with pytest.raises(UsageError, match="no such interpreter on PATH"):
        probe_environment("python-that-does-not-exist-3.99")


def test_non_python_executables(tmp_path):
    echo = tmp_path / "not-python"
    echo.write_text("#!/bin/sh\necho 'hello, I am a shell script'\n")
    echo.chmod(0o755)
    with pytest.raises(UsageError, match="did not print the probe's JSON") as info:
        probe_environment(str(echo))
    assert "\n" not in str(info.value)

    crash = tmp_path / "crash"
    crash.write_text("#!/bin/sh\necho 'Traceback: it broke' >&2\nexit 7\n")
    crash.chmod(0o755)
    with pytest.raises(UsageError, match=r"exit 7: Traceback: it broke"):
        probe_environment(str(crash))

    binary = tmp_path / "binary"
    binary.write_bytes(b"\x00\x01\x02garbage")
    binary.chmod(0o755)
    with pytest.raises(UsageError, match="cannot run it"):
        probe_environment(str(binary))

    data = tmp_path / "data.txt"
    data.write_text("x")
    with pytest.raises(UsageError, match="not executable"):
        probe_environment(str(data))

    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\necho '  File \"target.py\", line 40' >&2\necho 'SyntaxError: invalid syntax' >&2\nexit 1\n")
    old.chmod(0o755)
    with pytest.raises(UsageError, match="not a Python 3.8\\+ interpreter"):
        probe_environment(str(old))


def test_hanging_interpreter_times_out(tmp_path):
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    started = time.perf_counter()
    with pytest.raises(UsageError, match="did not finish within 1s"):
        probe_environment(str(hang), timeout=1)
    assert time.perf_counter() - started < 10


def test_garbage_json_from_target(tmp_path):
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\necho 'MOE_ENV_PROBE_JSON:{\"python\": 3}'\n")
    fake.chmod(0o755)
    with pytest.raises(MoeEnvError):
        probe_environment(str(fake))


def test_venv_folder_as_python(venv):
    venv.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", True))
    env = probe_environment(str(venv.root), [Z3])
    assert env.api[Z3].found
    assert Path(env.python.prefix).resolve() == venv.root.resolve()
    assert env.python.sys_path[-1].endswith("site-packages")


def test_environment_round_trip_and_host_merge(venv, monkeypatch):
    monkeypatch.setenv("MOE_ENV_GPUS", "A100:8.0x2")
    monkeypatch.setenv("MOE_ENV_CUDA_DRIVER_VERSION", "535.104.05")
    venv.add_dist("torch", "2.1.2+cu121", files=torch_files())
    venv.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", True))
    env = probe_environment(str(venv.python), SYMBOLS, build_mode=True)
    assert env.host.build_mode and env.host.driver_version == "535.104.05"
    assert [g.compute_capability for g in env.host.gpus] == ["8.0", "8.0"]
    assert env.probe_seconds and env.probe_seconds > 0
    again = Environment.from_dict(json.loads(json.dumps(env.to_dict())))
    assert again == env


# ---------------------------------------------------------------- what the target sees


def test_pythonpath_of_the_caller_is_searched(venv, tmp_path, monkeypatch):
    src = tmp_path / "Megatron-LM"
    (src / "megatron" / "core").mkdir(parents=True)
    (src / "megatron" / "core" / "__init__.py").write_text("from .parallel_state import initialize_model_parallel\n")
    (src / "megatron" / "core" / "parallel_state.py").write_text("def initialize_model_parallel(tensor_model_parallel_size=1):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(src))
    env = probe_environment(str(venv.python), ["megatron.core.initialize_model_parallel"])
    sym = env.api["megatron.core.initialize_model_parallel"]
    assert sym.found and sym.file == "megatron/core/parallel_state.py"
    assert env.extensions["megatron-core"].present and env.extensions["megatron-core"].distribution is None
    assert env.python.sys_path[0] == str(src)


def test_setuptools_editable_finder_is_followed(venv, tmp_path):
    src = tmp_path / "DeepSpeed"
    for rel, text in deepspeed_files("0.14.4", True).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (venv.site / "__editable___deepspeed_0_14_4_finder.py").write_text(
        f"import sys\nMAPPING = {{'deepspeed': {str(src / 'deepspeed')!r}}}\nNAMESPACES = {{}}\n")
    venv.add_dist("deepspeed", "0.14.4")
    env = probe_environment(str(venv.python), [Z3])
    assert env.api[Z3].found and env.api[Z3].file == "deepspeed/utils/z3_leaf_module.py"
    assert env.deepspeed.build_info_found


def test_extensions_compiled_files_and_grouped_gemm_providers(venv):
    venv.add_dist("flash-attn", "2.5.8", files={
        "flash_attn/__init__.py": "__version__ = '2.5.8'\n",
        "flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
    })
    venv.add_dist("nv-grouped-gemm", "1.1.4.post8", files={
        "grouped_gemm/__init__.py": "import grouped_gemm.ops, grouped_gemm.backend\n",
        "grouped_gemm_backend.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
    })
    info = venv.add_dist("grouped_gemm", "0.0.1", metadata="Metadata-Version: 2.1\nName: grouped_gemm\nVersion: 0.0.1\n")
    (info / "direct_url.json").write_text(json.dumps({"url": "https://example.invalid/fanshiqing/grouped_gemm",
                                                      "vcs_info": {"vcs": "git", "commit_id": "abc"}}))
    venv.add_dist("apex", "0.1", files={"apex/__init__.py": ""})  # pure-python install: no amp_C
    env = probe_environment(str(venv.python))
    fa = env.extensions["flash-attn"]
    assert fa.present and fa.version == "2.5.8" and fa.compiled_files == ["flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so"]
    gg = env.extensions["grouped_gemm"]
    assert gg.distribution == "nv-grouped-gemm" and gg.version == "1.1.4.post8"
    assert gg.providers == ["nv-grouped-gemm", "grouped_gemm"]
    assert gg.compiled_files == ["grouped_gemm_backend.cpython-311-x86_64-linux-gnu.so"]
    apex = env.extensions["apex"]
    assert apex.present and apex.compiled_files == []
    assert not env.extensions["transformer-engine"].present and not env.extensions["bitsandbytes"].present
    assert set(env.extensions) == {"flash-attn", "transformer-engine", "apex", "grouped_gemm", "bitsandbytes",
                                   "megatron-core", "xtuner", "mmengine"}


def test_fork_origin_from_direct_url(venv):
    info = venv.add_dist("grouped_gemm", "1.1.4", files={"grouped_gemm/__init__.py": ""})
    (info / "direct_url.json").write_text(json.dumps({"url": "https://example.invalid/fanshiqing/grouped_gemm",
                                                      "vcs_info": {"vcs": "git", "commit_id": "abc123"}}))
    gg = probe_environment(str(venv.python)).extensions["grouped_gemm"]
    assert gg.origin == "https://example.invalid/fanshiqing/grouped_gemm@abc123" and gg.distribution == "grouped_gemm"


def test_egg_info_requires_and_extras(venv):
    egg = venv.site / "oldpkg-0.9-py3.11.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: oldpkg\nVersion: 0.9\n")
    (egg / "requires.txt").write_text("torch>=1.10\n\n[deepspeed]\ndeepspeed>=0.9\n\n[:python_version < \"3.9\"]\nimportlib_resources\n")
    d = probe_environment(str(venv.python)).dist("oldpkg")
    assert d.version == "0.9" and d.metadata_error is None
    assert d.requires == ["torch>=1.10", 'deepspeed>=0.9; extra == "deepspeed"', 'importlib_resources; python_version < "3.9"']


# ---------------------------------------------------------------- find_symbol on a source tree (the sdist scanner's entry)


def _tree(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_find_symbol_follows_reexports(tmp_path):
    root = _tree(tmp_path / "sdist", {
        "pkg/__init__.py": "from . import sub\nfrom .a import *\nimport pkg.deep.mod as dm\nfrom pkg.alias import real as renamed\n",
        "pkg/a.py": "__all__ = ['public']\n\ndef public(x, *, y=1):\n    pass\n\ndef hidden():\n    pass\n",
        "pkg/alias.py": "def real(a, b=2, **kw):\n    pass\n",
        "pkg/sub/__init__.py": "from ..base import Derived\n",
        "pkg/base.py": ("class Base:\n    def save(self, path, exclude_frozen_parameters=False):\n        pass\n\n\n"
                        "class Derived(Base):\n    pass\n"),
        "pkg/deep/__init__.py": "",
        "pkg/deep/mod.py": "VALUE = 3\n",
        "pkg/cyc.py": "from .cyc2 import loop\n",
        "pkg/cyc2.py": "from .cyc import loop\n",
        "pkg/lazy.py": "def __getattr__(name):\n    raise AttributeError(name)\n",
        "pkg/ext.cpython-311-x86_64-linux-gnu.so": "",
    })
    paths = [str(root)]
    assert find_symbol(paths, "pkg.public")["params"] == ["x", "y"]
    assert not find_symbol(paths, "pkg.hidden")["found"]
    assert find_symbol(paths, "pkg.renamed")["params"] == ["a", "b", "**kw"]
    derived_save = find_symbol(paths, "pkg.sub.Derived.save")
    assert derived_save["found"] and derived_save["file"] == "pkg/base.py" and derived_save["line"] == 2
    assert find_symbol(paths, "pkg.dm.VALUE")["kind"] == "assignment"
    assert find_symbol(paths, "pkg.deep.mod")["kind"] == "module"
    loop = find_symbol(paths, "pkg.cyc.loop")
    assert not loop["found"] and "cycle" in loop["error"]
    lazy = find_symbol(paths, "pkg.lazy.thing")
    assert not lazy["found"] and "__getattr__" in lazy["error"]
    ext = find_symbol(paths, "pkg.ext.fn")
    assert not ext["found"] and "compiled extension" in ext["error"]
    assert "no module nothere" in find_symbol(paths, "nothere.x")["error"]
    assert find_symbol(paths, "pkg.public.attr")["error"].startswith("pkg.public is a function")
    assert set(find_symbol(paths, "pkg.public")) == {"symbol", "found", "kind", "params", "file", "line", "error",
                                                     "signature", "undecided"}
    # doctor --code: a miss the source could still supply at run time is "undecided", a plain miss is not
    assert ext["undecided"] and loop["undecided"]
    assert lazy["undecided"] is None  # its __getattr__ names nothing: `thing` is not written anywhere in the file
    assert find_symbol(paths, "pkg.hidden")["undecided"] is None
    assert find_symbol(paths, "pkg.renamed")["signature"]["kwarg"] == "kw"


def test_find_symbol_reports_reexport_of_missing_name(tmp_path):
    root = _tree(tmp_path / "src", {
        "deepspeed/__init__.py": "",
        "deepspeed/utils/__init__.py": "from .z3_leaf_module import set_z3_leaf_modules\n",
        "deepspeed/utils/z3_leaf_module.py": "def other():\n    pass\n",
        "deepspeed/uses_torch.py": "from torch.nn import Module\n",
    })
    r = find_symbol([str(root)], Z3)
    assert not r["found"] and "re-exports set_z3_leaf_modules from deepspeed.utils.z3_leaf_module" in r["error"]
    imp = find_symbol([str(root)], "deepspeed.uses_torch.Module")
    assert imp["found"] and imp["kind"] == "import" and "torch.nn" in imp["error"]


# ---------------------------------------------------------------- the script itself: one file, stdlib, Python 3.8+


def test_target_is_stdlib_only_and_parses_as_python_3_8():
    source = TARGET.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported_modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported_modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "target.py must not import siblings"
            imported_modules.add(node.module.split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib:
        assert imported_modules <= set(stdlib), imported_modules - set(stdlib)
    assert "removeprefix" not in source and "removesuffix" not in source  # 3.9+ str methods


def _other_pythons():
    found = {}
    candidates = glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*")
    candidates += glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python"))
    uv = shutil.which("uv")
    if uv:
        out = subprocess.run([uv, "python", "list", "--only-installed", "--output-format", "json"],
                             capture_output=True, text=True, timeout=30)
        try:
            candidates += [p["path"] for p in json.loads(out.stdout or "[]") if p.get("path")]
        except ValueError:
            pass
    for path in candidates:
        if not os.path.isfile(path) or not os.access(path, os.X_OK) or path.endswith("-config"):
            continue
        real = os.path.realpath(path)
        if real == os.path.realpath(sys.executable) or real in found.values():
            continue
        found[path] = real
    return sorted(found)


OTHER_PYTHONS = _other_pythons()


@pytest.mark.parametrize("python", OTHER_PYTHONS or ["<none>"])
def test_target_runs_under_other_pythons(python, tmp_path):
    if python == "<none>":
        pytest.skip("no other Python interpreter on this machine")
    version = _version_of(python)
    if version < [3, 6]:
        with pytest.raises(UsageError, match=r"not Python 3 \(the probe needs Python 3\.8 or newer\)"):
            probe_environment(python)
        return
    # 3.8+ is the promise; 3.6 and 3.7 happen to work too, and are checked so that stays known
    venv = make_venv(tmp_path / "v", python=python)
    venv.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", True))
    env = probe_environment(str(venv.python), [Z3])
    assert env.api[Z3].found and env.python.version.split(".")[:2] == [str(x) for x in _version_of(python)[:2]]


def _version_of(python):
    out = subprocess.run([python, "-c", "import sys; sys.stdout.write('%d %d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30)
    return [int(x) for x in out.stdout.split()]


def test_target_cli_by_hand(venv):
    """`python -I target.py SYMBOL` works without the runner (handy on a cluster node)."""
    venv.add_dist("deepspeed", "0.12.6", files=deepspeed_files("0.12.6", False))
    out = subprocess.run([str(venv.python), "-I", str(TARGET), Z3], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    line = out.stdout.strip().splitlines()[-1]
    data = json.loads(line.split(":", 1)[1])
    assert data["api"][Z3]["found"] is False and data["distributions"]["deepspeed"]["version"] == "0.12.6"


def test_big_lazy_init_is_not_parsed_for_a_submodule(tmp_path):
    """transformers-style __init__: names only in strings / dotted paths → the submodule, without parsing the file."""
    from moe_env.probe.target import SourceIndex, lookup_symbol

    lines = ['_import_structure = {"models.mixtral": ["MixtralConfig"], "deepspeed": []}  # models deepspeed']
    lines += [f'_import_structure["models.m{i}"] = ["C{i}"]' for i in range(2000)]
    lines += ["if TYPE_CHECKING:", "    from .models.mixtral import MixtralConfig"]
    root = _tree(tmp_path / "site", {
        "transformers/__init__.py": "\n".join(lines) + "\n",
        "transformers/deepspeed.py": "from .integrations.deepspeed import HfDeepSpeedConfig\n",
        "transformers/integrations/__init__.py": "",
        "transformers/integrations/deepspeed.py": "class HfDeepSpeedConfig:\n    def __init__(self, config_file_or_dict):\n        pass\n",
        "transformers/models/__init__.py": "",
        "transformers/models/mixtral/__init__.py": "",
        "transformers/models/mixtral/modeling_mixtral.py": "class MixtralSparseMoeBlock:\n    pass\n",
    })
    index = SourceIndex([str(root)])
    block = lookup_symbol(index, "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock")
    shim = lookup_symbol(index, "transformers.deepspeed.HfDeepSpeedConfig")
    assert block["found"] and block["params"] is None
    assert shim["found"] and shim["file"] == "transformers/integrations/deepspeed.py"
    assert str(root / "transformers" / "__init__.py") not in index._trees
    gone = lookup_symbol(index, "transformers.nothing_here")
    assert not gone["found"] and "no module transformers.nothing_here" in gone["error"]


def test_base_classes_are_followed_inside_the_package_only(tmp_path):
    root = _tree(tmp_path / "site", {
        "torch/__init__.py": "this is not python (and must not be read)\n",
        "torch/nn/__init__.py": "class Module:\n    def __init__(self, *args, **kwargs):\n        pass\n",
        "pkg/__init__.py": "",
        "pkg/base.py": "import torch\n\n\nclass Base(torch.nn.Module):\n    def __init__(self, hidden_size, k=1):\n        pass\n",
        "pkg/moe.py": "import torch\nfrom torch import nn\nfrom .base import Base\n\n\nclass Plain(nn.Module):\n    pass\n\n\n"
                      "class Child(Base):\n    pass\n",
    })
    child = find_symbol([str(root)], "pkg.moe.Child.__init__")
    assert child["found"] and child["file"] == "pkg/base.py" and child["params"] == ["self", "hidden_size", "k"]
    assert find_symbol([str(root)], "pkg.moe.Child")["params"] == ["self", "hidden_size", "k"]
    plain = find_symbol([str(root)], "pkg.moe.Plain.__init__")
    assert not plain["found"] and "syntax error" not in plain["error"]


def test_duplicate_dist_info_and_noisy_pth(venv):
    venv.add_dist("deepspeed", "0.12.6", files={"deepspeed/__init__.py": ""})
    venv.add_dist("deepspeed", "0.14.4")  # a half-done upgrade leaves two dist-info folders
    (venv.site / "noise.pth").write_text("import sys; sys.stdout.write('hello from a .pth file\\n')\n")
    env = probe_environment(str(venv.python))
    assert env.version_of("deepspeed") == "0.12.6"  # the first by name, as listed
    assert any("two installs of deepspeed (deepspeed-0.12.6.dist-info and deepspeed-0.14.4.dist-info)" in e
               for e in env.probe_errors)


TRICKY = {
    "tp/__init__.py": "from .a import (\n    one,\n    two as deux,\n)\nfrom .b import *\n",
    "tp/a.py": (
        '"""Docs: for one in many, with two as the rest.\n>>> from tp.a import one\n"""\n'
        "import os\n\n\ndef one(x, y=1):\n    two = 3\n    return two\n\n\n"
        "try:\n    from os.path import join as two\nexcept ImportError:\n    def two(*parts):\n        pass\n\n\n"
        "def three(a):\n    pass\n\n\nthree = one\n\n\n"
        "class Model(object):\n    '''for forward in layers: forward = 1'''\n\n"
        "    def forward(self, hidden, mask=None):\n        forward = self.step\n        return forward\n\n"
        "    @property\n    def size(self):\n        return 1\n\n    @size.setter\n    def size(self, value):\n        pass\n\n"
        "    def helper(self):\n        def forward(inner):\n            pass\n        return forward\n\n"
        "    attr = 3\n\n\nclass Child(Model):\n    pass\n"
    ),
    "tp/b.py": "__all__ = ['four']\n\n\ndef four(n):\n    pass\n\n\ndef five():\n    pass\n",
}
TRICKY_SYMBOLS = ["tp.one", "tp.deux", "tp.four", "tp.five", "tp.a.one", "tp.a.two", "tp.a.three", "tp.a.Model",
                  "tp.a.Model.forward", "tp.a.Model.size", "tp.a.Model.helper", "tp.a.Model.attr", "tp.a.Child.forward",
                  "tp.a.Child.missing", "tp.a.os", "tp.a.nothing", "tp.b.four"]


def test_fast_path_agrees_with_full_parse(tmp_path, monkeypatch):
    """The block-only fast path must give what parsing whole files gives, on prose, fallbacks and rebinding."""
    from moe_env.probe import target

    root = _tree(tmp_path / "src", TRICKY)
    quick = {s: find_symbol([str(root)], s) for s in TRICKY_SYMBOLS}
    monkeypatch.setattr(target._Resolver, "_quick", lambda self, mod, name, *a: None)
    full = {s: find_symbol([str(root)], s) for s in TRICKY_SYMBOLS}
    assert quick == full
    assert full["tp.a.Model.forward"]["params"] == ["self", "hidden", "mask"]
    assert full["tp.a.three"]["kind"] == "assignment"  # rebound after the def
    assert full["tp.a.Model.size"]["line"] == 38  # the setter, defined last
    assert full["tp.deux"]["kind"] == "import" or full["tp.deux"]["found"]
    assert full["tp.four"]["params"] == ["n"] and not full["tp.five"]["found"]
    assert full["tp.a.Child.forward"]["file"] == "tp/a.py"
