"""`moe-env ckpt`: checkpoints built by the tests with real key names and tiny tensors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ckpt_support import (
    Hostile,
    deepseek_tensors,
    megatron_args,
    megatron_state,
    mixtral_tensors,
    split,
    write_hf_folder,
    write_megatron_legacy,
    write_safetensors,
    write_torch_dist,
    write_torch_zip,
)
from moe_env.ckpt import inspect_checkpoint
from moe_env.ckpt_pickle import TensorInfo, UnsafePickleError, read_torch_file, restricted_loads
from moe_env.errors import UsageError

MIXTRAL_CONFIG = {"model_type": "mixtral", "num_hidden_layers": 3, "num_local_experts": 4, "num_experts_per_tok": 2}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "moe_env", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def ids(report):
    return sorted(f.id for f in report.findings)


# ------------------------------------------------------------------ Hugging Face safetensors


def test_complete_mixtral_folder_is_complete(tmp_path):
    write_hf_folder(tmp_path / "m", MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 3))
    r = inspect_checkpoint(str(tmp_path / "m"))
    assert r.complete, r.findings
    assert r.layout == "hf-mixtral"
    assert r.shards == 3
    assert r.experts_per_layer == {0: 4, 1: 4, 2: 4}
    assert r.expected["experts"] == 4 and r.expected["experts_key"] == "num_local_experts"
    p = cli("ckpt", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    assert "Hugging Face Mixtral" in p.stdout and "OK" in p.stdout


def test_missing_shard_is_an_error_and_exit_1(tmp_path):
    write_hf_folder(tmp_path / "m", MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 5), drop_shards=[1, 3])
    r = inspect_checkpoint(str(tmp_path / "m"))
    f = next(f for f in r.findings if f.id == "ckpt.shards-missing")
    assert "2 of 5" in f.title
    assert "model-00002-of-00005.safetensors" in f.seen and "model-00004-of-00005.safetensors" in f.seen
    p = cli("ckpt", str(tmp_path / "m"), "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["complete"] is False and doc["schema"] == "moe-env.ckpt/1"
    assert "ckpt.shards-missing" in [x["id"] for x in doc["findings"]]


def test_missing_experts_named_per_layer(tmp_path):
    # the MGM issue-61 shape: some experts never saved
    write_hf_folder(tmp_path / "m", MIXTRAL_CONFIG, split(mixtral_tensors(3, 4, skip=[(2, 1), (2, 3)]), 2))
    r = inspect_checkpoint(str(tmp_path / "m"))
    f = next(f for f in r.findings if f.id == "ckpt.experts-missing")
    assert "layer 2: experts 1 and 3 missing of 4" in f.seen
    assert r.experts_per_layer[2] == 2 and r.experts_per_layer[0] == 4
    assert not r.complete


def test_dense_save_of_an_moe_config_is_flagged(tmp_path):
    dense = {k: v for k, v in mixtral_tensors(3, 4).items() if ".experts." not in k}
    write_hf_folder(tmp_path / "m", MIXTRAL_CONFIG, [dense])
    r = inspect_checkpoint(str(tmp_path / "m"))
    assert "ckpt.no-experts" in ids(r) and r.layout == "dense"


def test_layers_missing_or_extra_against_num_hidden_layers(tmp_path):
    write_hf_folder(tmp_path / "short", dict(MIXTRAL_CONFIG, num_hidden_layers=5), [mixtral_tensors(3, 4)])
    r = inspect_checkpoint(str(tmp_path / "short"))
    f = next(f for f in r.findings if f.id == "ckpt.layers-missing")
    assert "2 of 5" in f.title and "layers 3 and 4 absent" in f.seen
    write_hf_folder(tmp_path / "long", dict(MIXTRAL_CONFIG, num_hidden_layers=2), [mixtral_tensors(3, 4)])
    assert "ckpt.layers-extra" in ids(inspect_checkpoint(str(tmp_path / "long")))


def test_index_lists_tensor_absent_from_its_shard(tmp_path):
    write_hf_folder(tmp_path / "m", MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 2),
                    index_extra={"model.layers.0.block_sparse_moe.experts.9.w1.weight": 0})
    r = inspect_checkpoint(str(tmp_path / "m"))
    f = next(f for f in r.findings if f.id == "ckpt.tensors-missing")
    assert "experts.9.w1.weight" in f.seen


def test_truncated_shard_detected_from_header_offsets(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, MIXTRAL_CONFIG, split(mixtral_tensors(3, 4), 2))
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    r = inspect_checkpoint(str(folder))
    f = next(f for f in r.findings if f.id == "ckpt.shard-damaged")
    assert "truncated" in f.seen


def test_deepseek_v2_first_k_dense_and_expert_count(tmp_path):
    cfg = {"model_type": "deepseek_v2", "num_hidden_layers": 3, "n_routed_experts": 4, "first_k_dense_replace": 1,
           "moe_layer_freq": 1}
    write_hf_folder(tmp_path / "ok", cfg, split(deepseek_tensors(3, 4), 2))
    ok = inspect_checkpoint(str(tmp_path / "ok"))
    assert ok.complete and ok.layout == "hf-mlp-experts"
    assert ok.expected["moe_layer_count"] == 2 and sorted(ok.experts_per_layer) == [1, 2]
    # a layer the config calls MoE has no experts at all
    t = {k: v for k, v in deepseek_tensors(3, 4).items() if not k.startswith("model.layers.2.mlp.experts.")}
    write_hf_folder(tmp_path / "bad", cfg, [t])
    bad = inspect_checkpoint(str(tmp_path / "bad"))
    f = next(f for f in bad.findings if f.id == "ckpt.experts-missing")
    assert "1 of 2 MoE layers has no experts: 2" in f.seen


def test_qwen_moe_num_experts_and_partial_expert(tmp_path):
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 2, "num_experts": 4, "decoder_sparse_step": 1, "mlp_only_layers": []}
    t = deepseek_tensors(2, 4, first_dense=0)
    del t["model.layers.1.mlp.experts.3.down_proj.weight"]
    write_hf_folder(tmp_path / "q", cfg, [t])
    r = inspect_checkpoint(str(tmp_path / "q"))
    f = next(f for f in r.findings if f.id == "ckpt.experts-missing")
    assert "layer 1 expert 3 lacks down_proj" in f.seen
    assert r.expected["experts_key"] == "num_experts"


def test_xtuner_merged_layout_counts_experts_per_shard(tmp_path):
    # XTuner's ExpertShard: one w1w3 [k, 2F, H] and one w2 [k, H, F] per shard of k experts
    cfg = {"model_type": "deepseek_v2", "num_hidden_layers": 2, "n_routed_experts": 4, "first_k_dense_replace": 0,
           "moe_implementation": "shard", "expert_in_one_shard": 2}
    t = {}
    for layer in range(2):
        for s in range(2):
            t[f"model.layers.{layer}.mlp.experts.{s}.w1w3"] = ("BF16", (2, 16, 4))
            t[f"model.layers.{layer}.mlp.experts.{s}.w2"] = ("BF16", (2, 4, 8))
    write_hf_folder(tmp_path / "x", cfg, [t])
    r = inspect_checkpoint(str(tmp_path / "x"))
    assert r.layout == "xtuner-merged"
    assert r.experts_per_layer == {0: 4, 1: 4}
    assert {"ckpt.xtuner-merged-layout", "ckpt.xtuner-shard-config"} <= set(ids(r))
    assert r.complete  # warnings, not errors: the weights are all there



# XTuner 0.1.23 writes both keys into every DeepSeek-V2/Mixtral config.json (defaults 'origin' and None);
# only moe_implementation == 'shard' selects its shard-MoE block (modeling_deepseek.py:1287-1293).
@pytest.mark.parametrize("moe_implementation, expert_in_one_shard, warned", [
    ("shard", 2, True),
    ("origin", None, False),  # what XTuner's DeepseekV2Config.save_pretrained writes by default
    ("origin", 2, False),  # a leftover shard size does nothing while the implementation is 'origin'
])
def test_xtuner_shard_config_warning_follows_moe_implementation(tmp_path, moe_implementation, expert_in_one_shard, warned):
    cfg = {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "num_hidden_layers": 3,
           "n_routed_experts": 4, "first_k_dense_replace": 1, "moe_layer_freq": 1,
           "moe_implementation": moe_implementation, "expert_in_one_shard": expert_in_one_shard}
    write_hf_folder(tmp_path / "m", cfg, split(deepseek_tensors(3, 4, first_dense=1), 2))
    r = inspect_checkpoint(str(tmp_path / "m"))
    assert r.layout == "hf-mlp-experts" and r.complete, r.findings
    assert ("ckpt.xtuner-shard-config" in ids(r)) is warned
    p = cli("ckpt", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    assert ("still asks for XTuner's shard MoE" in p.stdout) is warned

def test_single_file_safetensors(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", mixtral_tensors(1, 2))
    r = inspect_checkpoint(str(tmp_path / "model.safetensors"))
    assert r.layout == "hf-mixtral" and r.experts_per_layer == {0: 2}


def test_not_a_checkpoint_is_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError):
        inspect_checkpoint(str(tmp_path / "empty"))
    p = cli("ckpt", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.startswith("moe-env: error:") and "Traceback" not in p.stderr


# ------------------------------------------------------------------ Megatron legacy (hand-built torch.save zips)


@pytest.mark.parametrize("layout,expected", [
    ("sequential", "megatron-sequential"),
    ("te-grouped", "megatron-te-grouped"),
    ("grouped", "megatron-grouped"),
])
def test_megatron_legacy_layouts(tmp_path, layout, expected):
    root = write_megatron_legacy(tmp_path / "ckpt", layout, ep=2, experts=4, layers=2)
    r = inspect_checkpoint(str(root))
    assert r.format == "megatron-legacy"
    assert r.layout == expected
    assert r.facts["iteration"] == 100 and r.facts["ep"] == 2
    assert r.experts_per_layer == {0: 2, 1: 2}  # 4 experts over EP=2
    assert r.complete, r.findings
    # which flags load it comes from the matrix (megatron's expert_layout rules)
    from moe_env.matrix.loader import load_matrix

    if load_matrix().project("megatron") is not None:
        advice = [f for f in r.findings if f.severity == "info" and f.id.startswith("megatron.")]
        assert advice and advice[0].sources
        assert "moe-grouped-gemm" in r.facts["loads_with"]["megatron"]
        out = cli("ckpt", str(root)).stdout
        assert "loads with (megatron)" in out


def test_megatron_missing_expert_on_a_rank(tmp_path):
    root = write_megatron_legacy(tmp_path / "ckpt", "te-grouped", ep=1, experts=4, skip_expert=2)
    r = inspect_checkpoint(str(root))
    f = next(f for f in r.findings if f.id == "ckpt.experts-missing")
    assert "layer 0: expert 2 missing of 4" in f.seen


def test_megatron_missing_rank_folder(tmp_path):
    root = write_megatron_legacy(tmp_path / "ckpt", "sequential", ep=4, experts=8, drop_rank=3)
    r = inspect_checkpoint(str(root))
    f = next(f for f in r.findings if f.id == "ckpt.ranks-missing")
    assert "1 of 4" in f.title
    assert cli("ckpt", str(root)).returncode == 1


def test_megatron_tracker_names_absent_iteration(tmp_path):
    root = write_megatron_legacy(tmp_path / "ckpt", "sequential")
    (root / "latest_checkpointed_iteration.txt").write_text("200\n")
    r = inspect_checkpoint(str(root))
    assert "ckpt.iteration-missing" in ids(r)


def test_megatron_grouped_weight_rows_give_expert_count(tmp_path):
    # weight2 holds experts_local * ffn rows; a weight2 for 3 experts when args say 4 is short
    root = tmp_path / "ckpt"
    sd = megatron_state("grouped", 1, 3)
    obj = {"args": megatron_args(num_layers=1, num_experts=4, moe_grouped_gemm=True), "model": sd, "iteration": 5}
    write_torch_zip(root / "iter_0000005" / "mp_rank_00" / "model_optim_rng.pt", obj)
    (root / "latest_checkpointed_iteration.txt").write_text("5")
    r = inspect_checkpoint(str(root))
    assert r.layout == "megatron-grouped" and r.experts_per_layer == {0: 3}
    assert "ckpt.experts-missing" in ids(r)


def test_torch_dist_folder(tmp_path):
    folder = write_torch_dist(tmp_path / "iter_0000010", layers=2, experts=8)
    r = inspect_checkpoint(str(folder))
    assert r.format == "megatron-torch-dist" and r.layout == "megatron-dist"
    assert r.experts_per_layer == {0: 8, 1: 8}
    assert r.facts["metadata"]["sharded_backend"] == "torch_dist"
    assert r.complete


def test_torch_dist_missing_distcp_file(tmp_path):
    folder = write_torch_dist(tmp_path / "d", layers=1, experts=2, files=["__0_0.distcp", "__1_0.distcp"], write_files=False)
    (folder / "__0_0.distcp").write_bytes(b"\0")
    r = inspect_checkpoint(str(folder))
    f = next(f for f in r.findings if f.id == "ckpt.shards-missing")
    assert "__1_0.distcp" in f.seen and "__0_0.distcp" not in f.seen


def test_hand_built_zip_reads_keys_dtypes_shapes_and_args(tmp_path):
    obj = {"args": megatron_args(num_experts=8), "model": megatron_state("sequential", 1, 2), "iteration": 7}
    write_torch_zip(tmp_path / "model_optim_rng.pt", obj)
    archive = read_torch_file(str(tmp_path / "model_optim_rng.pt"))
    t = archive.obj["model"]["decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight"]
    assert isinstance(t, TensorInfo) and t.dtype == "bfloat16" and t.shape == (16, 4)
    assert archive.obj["args"].state["num_experts"] == 8
    assert any(m.endswith("data.pkl") for m in archive.members)


# ------------------------------------------------------------------ hostile pickles


def test_hostile_pickle_in_pt_is_refused_without_running(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"model": {"x": Hostile(sentinel)}}, protocol=2)
    pt = tmp_path / "ckpt" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    pt.parent.mkdir(parents=True)
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("archive/data.pkl", payload)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("1")
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        read_torch_file(str(pt))
    r = inspect_checkpoint(str(tmp_path / "ckpt"))
    assert "ckpt.unsafe-pickle" in ids(r)
    p = cli("ckpt", str(tmp_path / "ckpt"))
    assert p.returncode == 1 and "refused" in p.stdout
    assert not sentinel.exists()


def test_hostile_dcp_metadata_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (folder / ".metadata").write_bytes(pickle.dumps(Hostile(sentinel)))
    r = inspect_checkpoint(str(folder))
    assert "ckpt.unsafe-pickle" in ids(r)
    assert not sentinel.exists()


def test_refuses_builtins_eval_and_getattr_tricks(tmp_path):
    # GLOBAL builtins.eval / builtins.getattr: classic gadget chains
    for mod, name in (("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"), ("torch", "load")):
        data = b"\x80\x02c" + f"{mod}\n{name}\n".encode() + b"X\x03\x00\x00\x001+1\x85R."
        with pytest.raises(UnsafePickleError):
            restricted_loads(data)


# ------------------------------------------------------------------ written by real torch


def _torch_python():
    exe = os.environ.get("MOE_ENV_TEST_TORCH_PYTHON")
    if exe and Path(exe).exists():
        return exe
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            return sys.executable
    except (ImportError, ValueError):
        pass
    return None


TORCH_WRITER = r"""
import argparse, collections, sys, torch
layout, out = sys.argv[1], sys.argv[2]
sd = collections.OrderedDict()
for layer in range(2):
    p = f"decoder.layers.{layer}.mlp"
    sd[f"{p}.router.weight"] = torch.zeros(4, 8, dtype=torch.bfloat16)
    if layout == "sequential":
        for e in range(4):
            sd[f"{p}.experts.local_experts.{e}.linear_fc1.weight"] = torch.zeros(32, 8, dtype=torch.bfloat16)
            sd[f"{p}.experts.local_experts.{e}.linear_fc2.weight"] = torch.zeros(8, 16, dtype=torch.bfloat16)
    elif layout == "te-grouped":
        for e in range(4):
            sd[f"{p}.experts.linear_fc1.weight{e}"] = torch.zeros(32, 8, dtype=torch.bfloat16)
            sd[f"{p}.experts.linear_fc2.weight{e}"] = torch.zeros(8, 16, dtype=torch.bfloat16)
    else:
        sd[f"{p}.experts.weight1"] = torch.nn.Parameter(torch.zeros(8, 4 * 32, dtype=torch.bfloat16))
        sd[f"{p}.experts.weight2"] = torch.zeros(4 * 16, 8, dtype=torch.bfloat16)
args = argparse.Namespace(num_layers=2, num_experts=4, expert_model_parallel_size=1, tensor_model_parallel_size=1,
                          pipeline_model_parallel_size=1, ffn_hidden_size=16, moe_grouped_gemm=layout != "sequential",
                          params_dtype=torch.bfloat16)
torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 42, "model": sd,
            "rng_state": [{"torch_rng_state": torch.get_rng_state()}]}, out)
"""


@pytest.mark.parametrize("layout", ["sequential", "te-grouped", "grouped"])
def test_checkpoint_written_by_real_torch(tmp_path, layout):
    exe = _torch_python()
    if exe is None:
        pytest.skip("torch not importable here; set MOE_ENV_TEST_TORCH_PYTHON to an interpreter with torch")
    pt = tmp_path / "ckpt" / "iter_0000042" / "mp_rank_00" / "model_optim_rng.pt"
    pt.parent.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("42")
    subprocess.run([exe, "-c", TORCH_WRITER, layout, str(pt)], check=True, timeout=300, capture_output=True)
    r = inspect_checkpoint(str(tmp_path / "ckpt"))
    assert r.layout == f"megatron-{layout}"
    assert r.experts_per_layer == {0: 4, 1: 4}
    assert r.facts["iteration"] == 42 and r.complete, r.findings


def test_torch_dist_written_by_real_torch(tmp_path):
    exe = _torch_python()
    if exe is None:
        pytest.skip("torch not importable here; set MOE_ENV_TEST_TORCH_PYTHON to an interpreter with torch")
    code = ("import sys, warnings, torch, torch.distributed.checkpoint as dcp\n"
            "warnings.simplefilter('ignore')\n"
            "dcp.save({'decoder.layers.mlp.experts.experts.linear_fc1.weight': torch.zeros(2, 8, 32, 8),"
            " 'decoder.layers.mlp.experts.experts.linear_fc2.weight': torch.zeros(2, 8, 8, 16)}, checkpoint_id=sys.argv[1])\n")
    folder = tmp_path / "iter_0000003"
    subprocess.run([exe, "-c", code, str(folder)], check=True, timeout=300, capture_output=True)
    (folder / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1}')
    r = inspect_checkpoint(str(folder))
    assert r.layout == "megatron-dist" and r.experts_per_layer == {0: 8, 1: 8}
    assert r.shards >= 1 and r.complete
    for f in folder.glob("*.distcp"):
        f.unlink()
    assert "ckpt.shards-missing" in ids(inspect_checkpoint(str(folder)))


def test_pre_zip_torch_format_written_by_real_torch(tmp_path):
    exe = _torch_python()
    if exe is None:
        pytest.skip("torch not importable here; set MOE_ENV_TEST_TORCH_PYTHON to an interpreter with torch")
    code = ("import collections, sys, torch\n"
            "sd = collections.OrderedDict({'decoder.layers.0.mlp.experts.linear_fc1.weight0': torch.zeros(4, 2, dtype=torch.bfloat16)})\n"
            "torch.save({'model': sd, 'iteration': 3}, sys.argv[1], _use_new_zipfile_serialization=False)\n")
    pt = tmp_path / "model_optim_rng.pt"
    subprocess.run([exe, "-c", code, str(pt)], check=True, timeout=300, capture_output=True)
    r = inspect_checkpoint(str(pt))
    assert r.layout == "megatron-te-grouped" and r.facts["iteration"] == 3 and r.tensors == 1
