"""`moe-env ckpt` on DeepSpeed saves, HF Trainer checkpoint-N/ folders, XTuner work dirs and stubs.

The saves are written by the tests with DeepSpeed's own file names and state keys (torch.save zips
built by hand, see ckpt_support; with MOE_ENV_TEST_TORCH_PYTHON, by real torch.save as well).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_support import (
    LFS_POINTER,
    mixtral_tensors,
    split,
    write_deepspeed_save,
    write_hf_folder,
    write_trainer_checkpoint,
    write_xtuner_file,
    write_xtuner_work_dir,
)
from moe_env.ckpt import inspect_checkpoint

MIXTRAL_CONFIG = {"model_type": "mixtral", "num_hidden_layers": 3, "num_local_experts": 4}


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "moe_env", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def ids(report):
    return sorted(f.id for f in report.findings)


def finding(report, fid):
    return next(f for f in report.findings if f.id == fid)


# ------------------------------------------------------------------ DeepSpeed


def test_complete_deepspeed_moe_zero2_save(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", dp=4, moe_layers=2, experts=4, ep=2, stage=2, bf16=True)
    r = inspect_checkpoint(str(root))
    assert r.complete, r.findings
    assert r.format == "deepspeed" and r.loader == "deepspeed" and r.layout == "deepspeed-moe"
    f = r.facts
    assert (f["zero_stage"], f["dp_world_size"], f["mp_world_size"], f["ep_world_size"]) == (2, 4, 1, 2)
    assert f["ds_version"] == "0.16.9" and f["precision"] == "bf16"
    assert f["moe_layers"] == 2 and f["num_experts"] == [4, 4] and f["tag"] == "global_step100"
    assert r.experts_per_layer == {0: 4, 1: 4}
    assert "ckpt.ds-moe-no-zero-to-fp32" in ids(r)  # an info: zero_to_fp32 globs the MoE files too
    p = cli("ckpt", str(root))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "loads with: deepspeed engine.load_checkpoint" in p.stdout and "zero_stage: 2" in p.stdout
    assert "2 layers with experts" in p.stdout


def test_deepspeed_expert_file_missing_named_by_id(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", experts=8, moe_layers=4, drop=[
        "layer_3_expert_5_mp_rank_00_model_states.pt", "layer_3_expert_7_mp_rank_00_model_states.pt"])
    r = inspect_checkpoint(str(root))
    f = finding(r, "ckpt.ds-experts-missing")
    assert "layer 3: experts 5 and 7 missing of 8" in f.seen
    assert f.title == "2 of 32 expert files absent"
    assert ids(r).count("ckpt.ds-experts-missing") == 1 and f.sources
    p = cli("ckpt", str(root), "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["complete"] is False and "ckpt.ds-experts-missing" in [x["id"] for x in doc["findings"]]


def test_deepspeed_one_expert_missing_is_singular(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", drop=["layer_0_expert_2_mp_rank_00_model_states.pt"])
    f = finding(inspect_checkpoint(str(root)), "ckpt.ds-experts-missing")
    assert "layer 0: expert 2 missing of 4" in f.seen and f.title == "1 of 8 expert files absent"


def test_deepspeed_zero_shard_missing_for_one_dp_rank(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", dp=8, drop=["bf16_zero_pp_rank_5_mp_rank_00_optim_states.pt"])
    r = inspect_checkpoint(str(root))
    f = finding(r, "ckpt.ds-zero-shards-missing")
    assert "1 of 8 ZeRO optimizer shards absent" == f.title
    assert "dp rank 5" in f.seen and "bf16_zero_pp_rank_5_mp_rank_00_optim_states.pt" in f.seen
    assert "dp_world_size=8" in f.seen
    assert cli("ckpt", str(root)).returncode == 1


def test_deepspeed_latest_names_missing_tag(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", tag="global_step100")
    (root / "latest").write_text("global_step200")
    r = inspect_checkpoint(str(root))
    f = finding(r, "ckpt.ds-latest-missing")
    assert "global_step200" in f.title and "newest complete: global_step100" in f.seen
    assert "tag='global_step100'" in f.fix
    p = cli("ckpt", str(root))
    assert p.returncode == 1 and "global_step200" in p.stdout


def test_deepspeed_latest_names_an_empty_tag_folder(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", tag="global_step100")
    (root / "global_step200").mkdir()
    (root / "latest").write_text("global_step200")
    f = finding(inspect_checkpoint(str(root)), "ckpt.ds-latest-missing")
    assert "holds no DeepSpeed files" in f.title and "global_step100" in f.fix


def test_deepspeed_latest_names_partial_tag_and_newest_complete_is_named(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", tag="global_step100")
    write_deepspeed_save(root, tag="global_step200", drop=["mp_rank_00_model_states.pt"])
    r = inspect_checkpoint(str(root))
    assert r.facts["tag"] == "global_step200"
    assert "ckpt.ds-model-missing" in ids(r)
    assert r.facts["newest_complete_tag"] == "global_step100"
    assert "global_step100" in finding(r, "ckpt.ds-older-tag-complete").title


def test_deepspeed_without_latest_inspects_newest_tag_and_warns(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", tag="global_step50", latest=None)
    write_deepspeed_save(root, tag="global_step150", latest=None)
    r = inspect_checkpoint(str(root))
    assert r.facts["tag"] == "global_step150"
    assert finding(r, "ckpt.ds-no-latest").severity == "warning"


def test_deepspeed_tag_folder_given_directly(tmp_path):
    root = write_deepspeed_save(tmp_path / "save")
    r = inspect_checkpoint(str(root / "global_step100"))
    assert r.complete and r.facts["dp_world_size"] == 4


@pytest.mark.parametrize("version, out, tag_flag", [("0.16.9", "OUTPUT_DIR", True), ("0.14.5", "OUTPUT_FILE", True),
                                                    ("0.10.0", "OUTPUT_FILE", False)])
def test_dense_zero_save_says_how_to_consolidate(tmp_path, version, out, tag_flag):
    root = write_deepspeed_save(tmp_path / "save", moe_layers=0, stage=2, bf16=False, version=version)
    r = inspect_checkpoint(str(root))
    assert r.complete, r.findings
    f = finding(r, "ckpt.ds-consolidate")
    assert f.fix.startswith(f"python {root}/zero_to_fp32.py {root} {out}")
    assert ("-t global_step100" in f.fix) is tag_flag
    assert r.facts["precision"] == "fp32"


def test_zero3_save_expects_model_states_per_dp_rank(tmp_path):
    root = write_deepspeed_save(tmp_path / "save", moe_layers=0, stage=3, bf16=False, dp=2)
    tag = root / "global_step100"
    # ZeRO-3: every dp rank writes zero_pp_rank_R_mp_rank_00_model_states.pt besides its optimizer shard
    (tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes((tag / "mp_rank_00_model_states.pt").read_bytes())
    r = inspect_checkpoint(str(root))
    assert r.facts["zero_stage"] == 3
    f = finding(r, "ckpt.ds-model-missing")
    assert "zero_pp_rank_1_mp_rank_00_model_states.pt" in f.seen


def test_deepspeed_num_experts_not_a_number(tmp_path):
    from ckpt_support import write_torch_zip

    root = write_deepspeed_save(tmp_path / "save")
    write_torch_zip(root / "global_step100" / "mp_rank_00_model_states.pt",
                    {"module": {}, "dp_world_size": 4, "mp_world_size": 1, "num_experts": ["eight", 4]})
    r = inspect_checkpoint(str(root))
    assert "ckpt.ds-metadata-unreadable" in ids(r)
    p = cli("ckpt", str(root))
    assert p.returncode == 1 and "Traceback" not in p.stderr


def test_installed_deepspeed_older_than_writer(tmp_path):
    from fakes import make_venv

    root = write_deepspeed_save(tmp_path / "save", moe_layers=0, version="0.16.9")
    venv = make_venv(tmp_path / "venv")
    venv.add_dist("deepspeed", "0.12.6")
    p = cli("ckpt", str(root), "--python", str(venv.python), "--json")
    doc = json.loads(p.stdout)
    f = next(x for x in doc["findings"] if x["id"] == "ckpt.ds-older-than-writer")
    assert "0.12.6" in f["title"] and "0.16.9" in f["title"]
    venv.add_dist("deepspeed", "0.17.1")
    for old in venv.site.glob("deepspeed-0.12.6.dist-info"):
        import shutil

        shutil.rmtree(old)
    p = cli("ckpt", str(root), "--python", str(venv.python), "--json")
    doc = json.loads(p.stdout)
    assert "ckpt.ds-older-than-writer" not in [x["id"] for x in doc["findings"]]
    assert doc["facts"]["installed_deepspeed"] == "0.17.1"


def test_universal_checkpoint(tmp_path):
    import shutil

    from ckpt_support import write_torch_zip

    root = write_deepspeed_save(tmp_path / "save", moe_layers=0, stage=2, bf16=True, latest=None)
    uni = root / "global_step100_universal"
    uni.mkdir()
    shutil.copy(root / "global_step100" / "mp_rank_00_model_states.pt", uni)
    for param in ("model.embed_tokens.weight", "model.layers.0.mlp.gate_proj.weight"):
        for state in ("fp32", "exp_avg", "exp_avg_sq"):
            write_torch_zip(uni / "zero" / param / f"{state}.pt", {"param": None})
    (root / "latest_universal").write_text(uni.name)
    r = inspect_checkpoint(str(root))
    assert r.complete, r.findings
    assert r.facts["tag"] == uni.name and r.facts["universal"] and r.facts["universal_params"] == 2
    assert "load_universal" in r.facts["loads_with_text"]
    (uni / "zero" / "model.embed_tokens.weight" / "exp_avg.pt").unlink()
    f = finding(inspect_checkpoint(str(root)), "ckpt.ds-universal-incomplete")
    assert "model.embed_tokens.weight lacks exp_avg.pt" in f.seen


def test_symlinked_tag_outside_the_save_is_not_followed(tmp_path):
    write_deepspeed_save(tmp_path / "elsewhere")
    root = tmp_path / "save"
    root.mkdir()
    (root / "global_step100").symlink_to(tmp_path / "elsewhere" / "global_step100")
    (root / "latest").write_text("global_step100")
    r = inspect_checkpoint(str(root))
    assert "ckpt.ds-latest-missing" in ids(r)


# ------------------------------------------------------------------ HF Trainer checkpoint-N


def test_trainer_checkpoint_with_deepspeed_part(tmp_path):
    folder = write_trainer_checkpoint(tmp_path / "checkpoint-100", step=100)
    r = inspect_checkpoint(str(folder))
    assert r.format == "hf-trainer" and r.loader == "transformers"
    assert r.complete, r.findings
    assert r.facts["global_step"] == 100 and r.facts["deepspeed"]["zero_stage"] == 2
    assert r.layout == "hf-mixtral"
    p = cli("ckpt", str(folder))
    assert p.returncode == 0, p.stdout
    assert "loads with: transformers" in p.stdout and "loads with (xtuner)" not in p.stdout


def test_trainer_checkpoint_with_deepspeed_expert_missing(tmp_path):
    folder = write_trainer_checkpoint(tmp_path / "checkpoint-100", drop=["layer_1_expert_0_mp_rank_00_model_states.pt"])
    r = inspect_checkpoint(str(folder))
    f = finding(r, "ckpt.ds-experts-missing")
    assert f.seen.startswith("DeepSpeed part (global_step100): layer 1: expert 0 missing of 4")
    assert not r.complete


def test_trainer_checkpoint_without_deepspeed(tmp_path):
    folder = write_trainer_checkpoint(tmp_path / "checkpoint-40", step=40, deepspeed=False, world=1)
    r = inspect_checkpoint(str(folder))
    assert r.complete, r.findings
    (folder / "scheduler.pt").unlink()
    (folder / "trainer_state.json").unlink()
    r = inspect_checkpoint(str(folder))
    assert {"ckpt.trainer-optimizer-missing", "ckpt.trainer-state-missing"} <= set(ids(r))
    assert "scheduler.pt absent" in finding(r, "ckpt.trainer-optimizer-missing").title
    assert r.complete  # warnings: resume silently resets, nothing fails


def test_trainer_staging_folder_is_an_unfinished_save(tmp_path):
    folder = write_trainer_checkpoint(tmp_path / "tmp-checkpoint-300", step=300, deepspeed=False, world=1)
    r = inspect_checkpoint(str(folder))
    assert "ckpt.trainer-staging-folder" in ids(r) and not r.complete


def test_trainer_step_mismatch(tmp_path):
    folder = write_trainer_checkpoint(tmp_path / "checkpoint-500", step=400, deepspeed=False, world=1)
    assert "ckpt.trainer-step-mismatch" in ids(inspect_checkpoint(str(folder)))


# ------------------------------------------------------------------ XTuner


def test_xtuner_deepspeed_work_dir(tmp_path):
    work = write_xtuner_work_dir(tmp_path / "work_dirs" / "mixtral", it=500)
    r = inspect_checkpoint(str(work))
    assert r.format == "xtuner" and r.loader == "xtuner"
    assert r.complete, r.findings
    assert r.facts["save"] == "iter_500.pth" and r.facts["iteration"] == 500
    assert "ckpt.ds-no-latest" not in ids(r)  # mmengine saves with save_latest=False
    assert "xtuner convert pth_to_hf" in finding(r, "ckpt.xtuner-convert").fix
    r2 = inspect_checkpoint(str(work / "iter_500.pth"))
    assert r2.complete and r2.facts["dp_world_size"] == 4


def test_xtuner_last_checkpoint_names_missing_save(tmp_path):
    work = write_xtuner_work_dir(tmp_path / "w", it=500)
    (work / "last_checkpoint").write_text(str(work / "iter_900.pth"))
    r = inspect_checkpoint(str(work))
    assert "ckpt.xtuner-last-missing" in ids(r) and "iter_500.pth" in finding(r, "ckpt.xtuner-last-missing").fix


def test_xtuner_single_file(tmp_path):
    pth = write_xtuner_file(tmp_path / "iter_10.pth", it=10)
    r = inspect_checkpoint(str(pth))
    assert r.format == "xtuner" and r.layout == "hf-mixtral"
    assert r.facts["iteration"] == 10 and r.experts_per_layer == {0: 4, 1: 4}


# ------------------------------------------------------------------ stubs and damage, said once


def test_git_lfs_pointer_shards_said_once(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 3))
    for name in ("model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"):
        (folder / name).write_bytes(LFS_POINTER)
    r = inspect_checkpoint(str(folder))
    assert [f.id for f in r.findings if f.severity == "error"] == ["ckpt.lfs-pointer"]
    f = finding(r, "ckpt.lfs-pointer")
    assert "git lfs pull" in f.fix and "2 files not downloaded" in f.title
    assert any("skipped" in s for s in r.facts["skipped"])
    p = cli("ckpt", str(folder))
    assert p.returncode == 1 and "header length" not in p.stdout


def test_truncated_shard_is_one_error(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 3))
    shard = folder / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])
    r = inspect_checkpoint(str(folder))
    assert [f.id for f in r.findings if f.severity == "error"] == ["ckpt.shard-damaged"]


def test_zero_length_and_html_files(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 3))
    (folder / "model-00001-of-00003.safetensors").write_bytes(b"")
    (folder / "model-00002-of-00003.safetensors").write_bytes(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")
    r = inspect_checkpoint(str(folder))
    titles = [f.title for f in r.findings if f.severity == "error"]
    assert titles == ["model-00001-of-00003.safetensors is empty (zero bytes)",
                      "model-00002-of-00003.safetensors is an HTML page, not a checkpoint file"]


def test_deepspeed_damaged_files_said_once_each(tmp_path):
    root = write_deepspeed_save(tmp_path / "save")
    tag = root / "global_step100"
    shard = tag / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short
    (tag / "layer_0_expert_3_mp_rank_00_model_states.pt").write_bytes(b"")
    (tag / "layer_1_expert_0_mp_rank_00_model_states.pt").write_bytes(LFS_POINTER)
    r = inspect_checkpoint(str(root))
    errors = sorted(f.id for f in r.findings if f.severity == "error")
    assert errors == ["ckpt.file-damaged", "ckpt.file-damaged", "ckpt.lfs-pointer"]
    assert "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt is damaged" in [f.title for f in r.findings]


# ------------------------------------------------------------------ written by real torch


TORCH_DS_WRITER = r"""
import collections, enum, os, sys, types, torch
root, dp, experts = sys.argv[1], 2, 4
# DeepSpeed pickles its ZeroStageEnum by reference; give it the module name DeepSpeed uses
for name in ("deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero", "deepspeed.runtime.zero.config"):
    sys.modules[name] = types.ModuleType(name)
mod = sys.modules["deepspeed.runtime.zero.config"]
class ZeroStageEnum(int, enum.Enum):
    disabled = 0; optimizer_states = 1; gradients = 2; weights = 3
ZeroStageEnum.__module__ = mod.__name__; mod.ZeroStageEnum = ZeroStageEnum
tag = os.path.join(root, "global_step7"); os.makedirs(tag)
module = collections.OrderedDict({"model.layers.1.mlp.deepspeed_moe.gate.wg.weight": torch.zeros(experts, 8, dtype=torch.bfloat16)})
torch.save({"module": module, "lr_scheduler": None, "sparse_tensor_module_names": set(), "skipped_steps": 0,
            "global_steps": 7, "global_samples": 56, "dp_world_size": dp, "mp_world_size": 1, "num_experts": [experts]},
           os.path.join(tag, "mp_rank_00_model_states.pt"))
for e in range(experts):
    sd = {f"model.layers.1.mlp.deepspeed_moe.experts.deepspeed_experts.{e}.{p}.weight": torch.zeros(16, 8, dtype=torch.bfloat16)
          for p in ("gate_proj", "up_proj", "down_proj")}
    torch.save(sd, os.path.join(tag, f"layer_0_expert_{e}_mp_rank_00_model_states.pt"))
torch.save({"optimizer": None}, os.path.join(tag, "expp_rank_0_mp_rank_00_optim_states.pt"))
for d in range(dp):
    osd = {"zero_stage": ZeroStageEnum.gradients, "partition_count": [dp, dp], "ds_version": "0.14.5",
           "single_partition_of_fp32_groups": [torch.zeros(10)], "base_optimizer_state": {"state": {}, "param_groups": []}}
    torch.save({"optimizer_state_dict": osd, "ds_config": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}},
                "ds_version": "0.14.5"}, os.path.join(tag, f"bf16_zero_pp_rank_{d}_mp_rank_00_optim_states.pt"))
open(os.path.join(root, "latest"), "w").write("global_step7")
"""


def test_deepspeed_moe_save_written_by_real_torch(tmp_path):
    exe = os.environ.get("MOE_ENV_TEST_TORCH_PYTHON")
    if not exe or not Path(exe).exists():
        pytest.skip("set MOE_ENV_TEST_TORCH_PYTHON to an interpreter with torch")
    subprocess.run([exe, "-c", TORCH_DS_WRITER, str(tmp_path / "save")], check=True, timeout=300, capture_output=True)
    r = inspect_checkpoint(str(tmp_path / "save"))
    assert r.complete, r.findings
    assert r.facts["zero_stage"] == 2 and r.facts["ds_version"] == "0.14.5" and r.facts["num_experts"] == [4]
    assert r.layout == "deepspeed-moe" and r.facts["precision"] == "bf16"
    (tmp_path / "save" / "global_step7" / "layer_0_expert_2_mp_rank_00_model_states.pt").unlink()
    f = finding(inspect_checkpoint(str(tmp_path / "save")), "ckpt.ds-experts-missing")
    assert "layer 0: expert 2 missing of 4" in f.seen


def test_wording_singular_and_loader_of_a_plain_hf_folder(tmp_path):
    from ckpt_support import write_safetensors

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mixtral", "num_hidden_layers": 1, "num_local_experts": 2}))
    write_safetensors(folder / "model.safetensors", mixtral_tensors(1, 2))
    p = cli("ckpt", str(folder))
    assert p.returncode == 0, p.stdout
    assert "1 layer with experts" in p.stdout and "1 layers" not in p.stdout
    assert "loads with: transformers" in p.stdout and "loads with (xtuner)" not in p.stdout
    assert "in 1 file" in p.stdout
