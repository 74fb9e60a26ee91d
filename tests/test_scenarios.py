"""The five scenarios of issue 3, the doctor part of each, end to end through `moe-env doctor --python`.

Each test builds a real venv holding fake distributions with real-looking files, probes it across the
process boundary with the shipped matrix, and asserts on the check ids the project files define.
(The checkpoint, launch-config and log parts of the scenarios belong to ckpt / check-config / explain.)
"""

from __future__ import annotations

import json

import pytest

from doctor_support import add_deepspeed, add_plain, add_torch, moe_env_cli
from moe_env.matrix.loader import load_matrix

A100 = {"MOE_ENV_CUDA_DRIVER_VERSION": "535.104.05", "MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_NVCC_VERSION": "12.1"}


def shipped_project(name):
    project = load_matrix().project(name)
    if project is None:
        pytest.fail(f"the shipped matrix has no project {name!r} (compat_matrix/projects/)")
    return project


def doctor_json(args, env=None):
    res = moe_env_cli(["doctor", *args, "--json"], env={**A100, **(env or {})})
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def findings(doc):
    return {f["id"]: f for f in doc["findings"]}


def errors(doc):
    return sorted(f["id"] for f in doc["findings"] if f["severity"] == "error" and not f["deferred"])


# ---------------------------------------------------------------- MiniGemini


def mgm_venv(venv, deepspeed="0.12.6", z3_leaf=False, torch="2.1.2+cu121", cuda="12.1"):
    """MGM installed from its checkout (dist `mgm`) on its pinned stack, with the deepspeed under test."""
    add_torch(venv, torch, cuda, requires=[])
    add_deepspeed(venv, deepspeed, z3_leaf=z3_leaf, built_torch=".".join(torch.split(".")[:2]), built_cuda=cuda,
                  requires=[])
    add_plain(venv, "transformers", "4.36.2")
    add_plain(venv, "accelerate", "0.21.0")
    add_plain(venv, "flash-attn", "2.5.8", package="flash_attn")
    add_plain(venv, "open-clip-torch", "2.24.0", package="open_clip")
    add_plain(venv, "pydantic", "1.10.13")
    add_plain(venv, "mgm", "1.0.0")
    add_plain(venv, "setuptools", "75.8.0", package="setuptools")  # as `python -m venv` seeds it; torch.no-setuptools else
    return venv


def test_scenario_mgm_8x7b_zero3_deepspeed_without_set_z3_leaf_modules(venv_factory):
    project = shipped_project("minigemini")
    assert project.variant("8x7b") is not None
    broken = mgm_venv(venv_factory(), deepspeed="0.12.6", z3_leaf=False)
    code, doc = doctor_json(["--model", "8x7b", "--python", str(broken.python)])  # project detected from `mgm`
    assert doc["project"]["name"] == "minigemini" and doc["project"]["detected"] is True
    assert code == 1
    found = findings(doc)
    leaf = found["minigemini.mgm-ds-set-z3-leaf-modules"]
    assert leaf["severity"] == "error"
    assert "deepspeed 0.12.6" in leaf["seen"] and "set_z3_leaf_modules" in leaf["seen"]
    assert any(s.startswith("dvlab-research/MGM@") and "mgm/train/train.py:1130" in s for s in leaf["sources"])
    assert any(s.startswith("release:deepspeed==0.13.0") for s in leaf["sources"])
    # one finding for the one problem: the known-good range check is merged into it, with one range and one fix
    assert "deepspeed>=0.13.2,<=0.14.5" in leaf["fix"] and leaf["requirement"] == "deepspeed>=0.13.2,<=0.14.5"
    assert "minigemini.mgm-deepspeed-8x7b-range" in leaf["seen"]
    assert "minigemini.mgm-deepspeed-8x7b-range" not in found

    # the fix the finding gives: 0.13.2, which re-exports the function from z3_leaf_module.py
    fixed = mgm_venv(venv_factory(), deepspeed="0.13.2", z3_leaf=True)
    code, doc = doctor_json(["mgm", "--model", "8x7b", "--python", str(fixed.python)])
    assert doc["environment"]["api"]["deepspeed.utils.set_z3_leaf_modules"]["found"] is True
    assert errors(doc) == [], doc["findings"]
    assert code == 0


def test_scenario_mgm_pinned_deepspeed_0_11_1_is_fine_for_dense_variants(venv_factory):
    shipped_project("minigemini")
    env = mgm_venv(venv_factory(), deepspeed="0.11.1", z3_leaf=False)
    code, doc = doctor_json(["minigemini", "--model", "7b", "--python", str(env.python)])
    assert "minigemini.mgm-ds-set-z3-leaf-modules" not in findings(doc)
    code, doc = doctor_json(["minigemini", "--python", str(env.python)])  # default: the MoE variant
    assert "minigemini.mgm-ds-set-z3-leaf-modules" in errors(doc)


def test_scenario_mgm_bf16_on_sm75(venv_factory):
    shipped_project("minigemini")
    env = mgm_venv(venv_factory(), deepspeed="0.13.2", z3_leaf=True)
    code, doc = doctor_json(["mgm", "--python", str(env.python)], {"MOE_ENV_GPUS": "Tesla T4:7.5x8"})
    bf16 = findings(doc)["minigemini.mgm-gpu-bf16"]
    assert bf16["severity"] == "error" and "sm_75" in bf16["seen"] and "8x Tesla T4" in bf16["seen"]
    assert code == 1
    # the same environment on A100s passes that check; in a Docker build it is deferred, not failed
    code, doc = doctor_json(["mgm", "--python", str(env.python)])
    assert "minigemini.mgm-gpu-bf16" not in findings(doc) and code == 0
    res = moe_env_cli(["doctor", "mgm", "--python", str(env.python), "--build", "--json"], env={"MOE_ENV_NVCC_VERSION": "12.1"})
    doc = json.loads(res.stdout)
    assert findings(doc)["minigemini.mgm-gpu-bf16"]["deferred"] is True
    assert res.returncode == 0


# ---------------------------------------------------------------- MoE-LLaVA


def moellava_venv(venv, deepspeed="0.9.5", accelerate="0.21.0", transformers="4.37.0", moe_param_groups=True):
    add_torch(venv, "2.0.1+cu117", "11.7", requires=[])
    add_deepspeed(venv, deepspeed, z3_leaf=False, built_torch="2.0", built_cuda="11.7", requires=[],
                  moe_param_groups=moe_param_groups)
    add_plain(venv, "transformers", transformers)
    add_plain(venv, "accelerate", accelerate)
    add_plain(venv, "flash-attn", "2.5.8", package="flash_attn")
    add_plain(venv, "pydantic", "1.10.13")
    add_plain(venv, "moellava", "1.0.0")
    add_plain(venv, "setuptools", "75.8.0", package="setuptools")
    return venv


MOELLAVA_HOST = {"MOE_ENV_NVCC_VERSION": "11.7"}


def test_scenario_moellava_loss_zero_after_deepspeed_accelerate_upgrade(venv_factory):
    shipped_project("moe-llava")
    pinned = moellava_venv(venv_factory())
    code, doc = doctor_json(["--python", str(pinned.python)], MOELLAVA_HOST)
    assert doc["project"]["name"] == "moe-llava" and doc["project"]["detected"] is True
    assert not [f for f in doc["findings"] if f["severity"] in ("error", "warning")], doc["findings"]
    assert code == 0

    upgraded = moellava_venv(venv_factory(), deepspeed="0.12.6", accelerate="0.27.2")
    code, doc = doctor_json(["moe-llava", "--python", str(upgraded.python)], MOELLAVA_HOST)
    found = findings(doc)
    pin = found["moe-llava.moellava-deepspeed-pin"]
    assert pin["severity"] == "warning" and "0.12.6" in pin["seen"]
    assert "PKU-YuanGroup/MoE-LLaVA#1" in pin["sources"]  # the loss-0.0 report
    assert "deepspeed==0.9.5" in pin["fix"]
    assert found["moe-llava.moellava-accelerate-pin"]["severity"] == "info"
    assert code == 0  # warnings only ...
    strict = moe_env_cli(["doctor", "moe-llava", "--python", str(upgraded.python), "--strict"],
                         env={**A100, **MOELLAVA_HOST})
    assert strict.returncode == 1, strict.stdout  # ... which --strict turns into a failure
    assert "moellava-deepspeed-pin" in strict.stdout


def test_scenario_moellava_moe_param_groups_not_marked(venv_factory):
    shipped_project("moe-llava")
    env = moellava_venv(venv_factory(), deepspeed="0.9.5", moe_param_groups=False)
    code, doc = doctor_json(["moe-llava", "--python", str(env.python)], MOELLAVA_HOST)
    split = findings(doc)["moe-llava.moellava-ds-split-moe-groups"]
    assert split["severity"] == "error"
    assert "split_params_into_different_moe_groups_for_optimizer" in split["seen"]
    assert any("moellava/train/llava_trainer.py" in s for s in split["sources"])
    assert code == 1


# ---------------------------------------------------------------- Megatron-LM (Mixtral)


def megatron_venv(venv, mcore="0.12.0", te=None, grouped_gemm=None):
    """megatron-core with, optionally, Transformer Engine and one of the grouped_gemm distributions.

    `grouped_gemm` is the distribution name: nv-grouped-gemm (PyPI, NVIDIA), grouped_gemm (fanshiqing's
    git tags) or grouped-gemm (tgale96); all three install the import name grouped_gemm.
    """
    add_torch(venv, "2.6.0+cu124", "12.4", requires=[])
    add_plain(venv, "megatron-core", mcore, package="megatron/core")
    if te:
        venv.add_dist("transformer-engine", te, files={"transformer_engine/__init__.py": "",
                                                       "transformer_engine/pytorch/__init__.py": ""})
    if grouped_gemm:
        venv.add_dist(grouped_gemm, "1.1.4", files={
            "grouped_gemm/__init__.py": "import grouped_gemm.ops, grouped_gemm.backend\n",
            "grouped_gemm/ops.py": "def gmm(a, b, batch_sizes, trans_b=False):\n    pass\n",
            "grouped_gemm/backend.py": "",
            "grouped_gemm_backend.cpython-311-x86_64-linux-gnu.so": b"\x7fELF fake",
        })
    return venv


MEGATRON_HOST = {"MOE_ENV_NVCC_VERSION": "12.4", "MOE_ENV_GPUS": "H100:9.0x8"}


def test_scenario_megatron_grouped_gemm_needs_te_or_grouped_gemm(venv_factory):
    shipped_project("megatron")
    bare = megatron_venv(venv_factory())
    code, doc = doctor_json(["--python", str(bare.python)], MEGATRON_HOST)
    assert doc["project"] == {"name": "megatron", "variants": ["mixtral-8x7b"], "detected": True}
    errs = errors(doc)
    assert "megatron.grouped-gemm-backend" in errs and "megatron.te-installed" in errs
    assert code == 1
    gg = findings(doc)["megatron.grouped-gemm-backend"]
    assert "grouped_gemm" in gg["seen"] and gg["sources"]

    with_te = megatron_venv(venv_factory(), te="1.12.0")
    code, doc = doctor_json(["megatron", "--python", str(with_te.python)], MEGATRON_HOST)
    assert "megatron.grouped-gemm-backend" not in findings(doc) and "megatron.te-installed" not in findings(doc)

    old_te = megatron_venv(venv_factory(), te="1.8.0")
    code, doc = doctor_json(["megatron", "--python", str(old_te.python)], MEGATRON_HOST)
    assert findings(doc)["megatron.te-for-te-grouped-mlp"]["severity"] == "warning"


@pytest.mark.parametrize("dist", ["nv-grouped-gemm", "grouped_gemm", "grouped-gemm"])
def test_scenario_megatron_legacy_grouped_mlp_accepts_every_grouped_gemm_distribution(venv_factory, dist):
    shipped_project("megatron")
    env = megatron_venv(venv_factory(), grouped_gemm=dist)
    code, doc = doctor_json(["megatron", "--model", "mixtral-8x7b-legacy-grouped", "--python", str(env.python)],
                            MEGATRON_HOST)
    assert doc["environment"]["extensions"]["grouped_gemm"]["present"] is True
    assert "megatron.grouped-gemm-for-legacy" not in findings(doc)
    assert "megatron.grouped-gemm-backend" not in findings(doc)


def test_scenario_megatron_legacy_grouped_mlp_gone_in_mcore_0_17(venv_factory):
    shipped_project("megatron")
    env = megatron_venv(venv_factory(), mcore="0.17.0")
    code, doc = doctor_json(["megatron", "--model", "mixtral-8x7b-legacy-grouped", "--python", str(env.python)],
                            MEGATRON_HOST)
    errs = errors(doc)
    assert "megatron.legacy-grouped-removed" in errs and "megatron.grouped-gemm-for-legacy" in errs
    assert code == 1


# ---------------------------------------------------------------- XTuner (DeepSeek-V2)


def _python310():
    """A working Python 3.10 (pyenv shims may exist without the version being selected)."""
    import shutil
    import subprocess

    for candidate in ("/root/.pyenv/versions/3.10.13/bin/python3.10", shutil.which("python3.10")):
        if not candidate:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            continue
        if out == "True":
            return candidate
    return None


def xtuner_venv(venv, xtuner="0.1.23", transformers="4.45.2", torch_1_13_flag=True, torch="2.3.1+cu121"):
    add_torch(venv, torch, "12.1", requires=[])
    add_deepspeed(venv, "0.14.4", z3_leaf=True, built_torch=".".join(torch.split(".")[:2]), requires=[])
    flag = "is_torch_greater_or_equal_than_1_13 = True\n" if torch_1_13_flag else ""
    venv.add_dist("transformers", transformers, files={
        "transformers/__init__.py": f"__version__ = {transformers!r}\n",
        "transformers/pytorch_utils.py": "is_torch_greater_or_equal_than_2_0 = True\n" + flag,
    })
    add_plain(venv, "mmengine", "0.10.6")
    add_plain(venv, "flash-attn", "2.5.8", package="flash_attn")
    add_plain(venv, "xtuner", xtuner)
    add_plain(venv, "setuptools", "75.8.0", package="setuptools")
    return venv


XTUNER_HOST = {"MOE_ENV_NVCC_VERSION": "12.1"}


def test_scenario_xtuner_deepseek_v2_versions(venv_factory):
    shipped_project("xtuner")
    # XTuner 0.2.0 with its own pin transformers==4.48.0: DeepSeek-V2 cannot run at all
    new = xtuner_venv(venv_factory(), xtuner="0.2.0", transformers="4.48.0", torch_1_13_flag=False)
    code, doc = doctor_json(["--model", "deepseek-v2-lite", "--python", str(new.python)], XTUNER_HOST)
    assert doc["project"]["name"] == "xtuner" and doc["project"]["detected"] is True
    errs = errors(doc)
    for check_id in ("xtuner.xtuner-version-deepseek-v2", "xtuner.transformers-deepseek-v2-shard",
                     "xtuner.transformers-has-torch-1-13-flag"):
        assert check_id in errs, (check_id, errs)
    assert "0.2.0" in findings(doc)["xtuner.xtuner-version-deepseek-v2"]["seen"]
    flag = findings(doc)["xtuner.transformers-has-torch-1-13-flag"]
    assert "transformers 4.48.0" in flag["seen"] and any("modeling_deepseek.py" in s for s in flag["sources"])
    assert code == 1

    # XTuner 0.1.23 with transformers 4.45.2: runs; on Python 3.11+ with a warning (0.1.23 declares Python < 3.11)
    ok = xtuner_venv(venv_factory())
    code, doc = doctor_json(["xtuner", "--model", "deepseek-v2-lite", "--python", str(ok.python)], XTUNER_HOST)
    assert errors(doc) == [], doc["findings"]
    py = tuple(int(x) for x in doc["environment"]["python"]["version"].split(".")[:2])
    if py >= (3, 11):
        assert findings(doc)["xtuner.python-deepseek-v2"]["severity"] == "warning"
    else:
        assert "xtuner.python-deepseek-v2" not in findings(doc)
    assert code == 0


def test_scenario_xtuner_deepseek_v2_on_python_3_10_is_clean(tmp_path):
    shipped_project("xtuner")
    py310 = _python310()
    if py310 is None:
        pytest.skip("needs a Python 3.10 interpreter to build the venv")
    from fakes import make_venv

    env = xtuner_venv(make_venv(tmp_path / "py310", python=py310))
    code, doc = doctor_json(["xtuner", "--model", "deepseek-v2", "--python", str(env.python)], XTUNER_HOST)
    assert doc["environment"]["python"]["version"].startswith("3.10.")
    assert [f["id"] for f in doc["findings"] if f["severity"] in ("error", "warning")] == []
    assert code == 0


def test_scenario_megatron_two_grouped_gemm_distributions_collide(venv_factory):
    shipped_project("megatron")
    env = megatron_venv(venv_factory(), grouped_gemm="nv-grouped-gemm")
    env.add_dist("grouped-gemm", "0.3.0", files={"grouped_gemm/__init__.py": "# tgale96's grouped_gemm\n",
                                                 "grouped_gemm/ops.py": "def gmm(a, b, batch_sizes):\n    pass\n"})
    code, doc = doctor_json(["megatron", "--model", "mixtral-8x7b-legacy-grouped", "--python", str(env.python)],
                            MEGATRON_HOST)
    collision = findings(doc)["dist.import-name-collision"]
    assert "grouped_gemm" in collision["title"] and "nv" in collision["seen"]


# ---------------------------------------------------------------- issue 11: one finding per problem, calibrated


def _deepspeed_findings(doc):
    return [f for f in doc["findings"] if f.get("requirement", "").startswith("deepspeed")
            or f["id"].startswith("minigemini.mgm-deepspeed") or f["id"] == "minigemini.mgm-ds-set-z3-leaf-modules"]


@pytest.mark.parametrize("version, z3_leaf, severity", [
    ("0.12.6", False, "error"),   # no set_z3_leaf_modules: cited ImportError
    ("0.13.0", True, "warning"),  # has it, below the known-good 0.13.2 (no range gap: 0.13.0/0.13.1 are judged)
    ("0.13.1", True, "warning"),
    ("0.13.2", True, None),
    ("0.14.5", True, None),
    ("0.16.2", True, "warning"),  # against MGM's pydantic<2 pin, no cited failure: not an error
])
def test_mgm_8x7b_deepspeed_is_one_finding_with_one_range(venv_factory, version, z3_leaf, severity):
    v = mgm_venv(venv_factory(), deepspeed=version, z3_leaf=z3_leaf)
    if version == "0.16.2":  # installed with its own requirements, as pip leaves it: pydantic 2
        (v.site / "pydantic-1.10.13.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pydantic\nVersion: 2.9.2\n")
    code, doc = doctor_json(["mgm", "--model", "8x7b", "--python", str(v.python)])
    found = _deepspeed_findings(doc)
    if severity is None:
        assert found == [], found
        return
    assert len(found) == 1, [f["id"] for f in found]
    f = found[0]
    assert f["severity"] == severity
    assert f["requirement"] == "deepspeed>=0.13.2,<=0.14.5" and f["fix"] == "pip install 'deepspeed>=0.13.2,<=0.14.5'"
    assert f"deepspeed {version}" in f["seen"]
    assert code == (1 if severity == "error" else 0), doc["findings"]


def test_mgm_deepspeed_0_16_with_pydantic_1_is_the_conflict_error_said_once(venv_factory):
    v = mgm_venv(venv_factory(), deepspeed="0.16.2", z3_leaf=True)  # pydantic 1.10.13: deepspeed 0.16 cannot import
    code, doc = doctor_json(["mgm", "--model", "8x7b", "--python", str(v.python)])
    assert errors(doc) == ["deepspeed-0.15-needs-pydantic2"] and code == 1
    assert not [f for f in doc["findings"] if f["id"] == "release.requirement" and "pydantic" in f["title"]]


def test_text_report_ends_with_one_fix_command_uv_without_pip_and_pip_with_it(venv_factory):
    v = mgm_venv(venv_factory(), deepspeed="0.12.6", z3_leaf=False)
    add_plain(v, "hjson-user", "1.0", requires=["hjson", "huggingface_hub>=0.20"])
    res = moe_env_cli(["doctor", "mgm", "--model", "8x7b", "--python", str(v.python)], env=A100)
    lines = res.stdout.rstrip().splitlines()
    assert lines[-1] == f"  uv pip install --python {v.python} 'deepspeed>=0.13.2,<=0.14.5' hjson 'huggingface-hub>=0.20'"
    # one line each, as `uv pip check` prints them, with the PEP 503 name (huggingface_hub is huggingface-hub)
    assert "  ! The package `hjson-user` requires `huggingface-hub>=0.20`, but it's not installed  [deps.missing]" in lines
    add_plain(v, "pip", "24.0")
    res = moe_env_cli(["doctor", "mgm", "--model", "8x7b", "--python", str(v.python)], env=A100)
    assert res.stdout.rstrip().splitlines()[-1].startswith(f"  {v.python} -m pip install 'deepspeed>=0.13.2,<=0.14.5'")


def test_the_one_fix_command_leaves_out_what_a_package_it_replaces_requires(venv_factory):
    """deepspeed 0.16.2 as pip leaves it asks for pydantic>=2 (its real requirements/requirements.txt); the command moves
    deepspeed to 0.13.2-0.14.5, whose own install brings what it needs, so `pydantic>=2` must not fight MGM's pin.
    A missing requirement of a package the command keeps stays in it."""
    v = mgm_venv(venv_factory(), deepspeed="0.16.2", z3_leaf=True)
    (v.site / "pydantic-1.10.13.dist-info").rename(v.site / "unrelated-1.0.dist-info")
    meta = v.site / "deepspeed-0.16.2.dist-info" / "METADATA"
    meta.write_text(meta.read_text() + "Requires-Dist: pydantic>=2.0.0\nRequires-Dist: hjson\n")
    add_plain(v, "hjson-user", "1.0", requires=["msgpack"])
    res = moe_env_cli(["doctor", "mgm", "--model", "8x7b", "--python", str(v.python)], env=A100)
    listed = {f["requirement"] for f in json.loads(moe_env_cli(
        ["doctor", "mgm", "--model", "8x7b", "--python", str(v.python), "--json"], env=A100).stdout)["findings"]}
    assert {"pydantic>=2.0.0", "hjson", "msgpack"} <= listed  # each still reported, as `pip check` would
    command = res.stdout.rstrip().splitlines()[-1]
    assert "deepspeed>=" in command and "msgpack" in command, command
    assert "pydantic" not in command and "hjson" not in command.replace("hjson-user", ""), command


def test_lockfile_and_deps_report_a_missing_package_once(venv_factory, tmp_path):
    v = mgm_venv(venv_factory(), deepspeed="0.14.4", z3_leaf=True)
    add_plain(v, "needs-hjson", "1.0", requires=["hjson"])
    lock = tmp_path / "requirements.lock"
    lock.write_text("hjson==3.1.0\n")
    code, doc = doctor_json(["mgm", "--python", str(v.python), "--lockfile", str(lock)])
    about_hjson = [f["id"] for f in doc["findings"] if "hjson" in f["title"] and f["id"] in ("deps.missing", "lock.missing")]
    assert about_hjson == ["lock.missing"]


def test_xtuner_without_model_judges_the_variants_the_stack_serves(venv_factory):
    # transformers 4.48: Mixtral and Qwen-MoE run, DeepSeek-V2 (4.40-4.45 only) does not
    v = xtuner_venv(venv_factory(), xtuner="0.2.0", transformers="4.48.0", torch_1_13_flag=False)
    code, doc = doctor_json(["xtuner", "--python", str(v.python)], XTUNER_HOST)
    assert not [x for x in doc["project"]["variants"] if x.startswith("deepseek")], doc["project"]
    assert "mixtral-8x7b" in doc["project"]["variants"]
    assert not [f for f in doc["findings"] if "deepseek-v2" in f["id"]]
    note = findings(doc)["doctor.variants-served"]
    assert note["severity"] == "info" and "--model deepseek-v2" in note["fix"]


def test_xtuner_mmengine_titles_agree_with_their_fixes():
    project = shipped_project("xtuner")
    for c in project.checks:
        if c.params.get("package") == "mmengine" and c.kind == "version_bound":
            floor = c.params["spec"].lstrip(">=")
            assert floor in c.title and f"mmengine{c.params['spec']}" in c.fix.replace("'", ""), (c.id, c.title, c.fix)


def test_xtuner_old_mmengine_with_new_torch_is_one_error(venv_factory):
    v = xtuner_venv(venv_factory(), torch="2.5.1+cu121")
    (v.site / "mmengine-0.10.6.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mmengine\nVersion: 0.10.4\n")
    code, doc = doctor_json(["xtuner", "--model", "mixtral-8x7b", "--python", str(v.python)], XTUNER_HOST)
    mm = [f for f in doc["findings"] if "mmengine" in f["id"]]
    assert len(mm) == 1 and mm[0]["severity"] == "error" and mm[0]["requirement"] == "mmengine>=0.10.6"
