"""`moe-env check-config`: launch lines and DeepSpeed configs for each rule of the shipped matrix, good and bad.

Rules are found in the shipped matrix by kind (and a distinguishing param), so the tests follow the
data the project files carry rather than hard-coding rule ids.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ckpt_support import write_hf_folder, write_megatron_legacy, write_torch_dist
from moe_env.checks import resolve_variants
from moe_env.config_rules import KINDS, LaunchConfig, parse_launch, run_rules
from moe_env.launch import entry_point_for, judge_flags, split_launch
from moe_env.launch_ckpt import read_checkpoints
from moe_env.matrix.loader import load_matrix


def project(name):
    p = load_matrix().project(name)
    if p is None:
        pytest.skip(f"project {name} not in the shipped matrix")
    return p


def rule_id(name, kind, **params):
    for r in project(name).rules:
        if r.kind == kind and all(r.params.get(k) == v for k, v in params.items()):
            return f"{project(name).name}.{r.id}"
    pytest.skip(f"{name} has no {kind} rule with {params}")


def judge(name, launch, ds=None, installed=None, gpus=(), world=None, env=None, variants=None):
    p = project(name)
    line = split_launch(launch.split() if isinstance(launch, str) else launch)
    flags, positional = parse_launch(line.args)
    cfg = LaunchConfig(project=p, variants=resolve_variants(p, variants or []), flags=flags,
                       positional=line.positional() + positional, launcher_flags=parse_launch(line.launcher_args)[0],
                       deepspeed=ds, deepspeed_path="ds.json" if ds is not None else None, installed=installed,
                       gpu_capabilities=list(gpus), world_size=world, env=env or {})
    cfg.checkpoints = read_checkpoints(cfg, None)
    findings, unknown = run_rules(cfg)
    assert not unknown, f"rule kinds without a function: {unknown}"
    return {f.id for f in findings}


def test_every_shipped_rule_kind_is_registered():
    kinds = {r.kind for p in load_matrix().projects.values() for r in p.rules}
    assert kinds, "the shipped matrix has no [[rule]] entries"
    assert kinds <= set(KINDS), kinds - set(KINDS)


def test_parse_launch_multi_value_equals_and_bare_flags():
    flags, pos = parse_launch(["deepspeed", "train.py", "--train_modules", "fc1", "fc2", "wg", "--bf16",
                               "--lr=2e-5", "--moe-grouped-gemm"])
    assert pos == ["deepspeed", "train.py"]
    assert flags["train_modules"] == ["fc1", "fc2", "wg"] and flags["bf16"] == [] and flags["lr"] == ["2e-5"]
    assert "moe_grouped_gemm" in flags


# ------------------------------------------------------------------ MoE-LLaVA / DeepSpeed-MoE

MOE = "--moe_enable True --num_experts 4 --top_k_experts 2 --model_name_or_path ./checkpoints/llavaphi-2.7b-finetune --train_modules fc1 fc2 wg"
ZERO2 = {"zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True}, "bf16": {"enabled": "auto"}}
ZERO3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}


def test_zero3_with_moe_layers_refused():
    rid = rule_id("moe-llava", "zero_stage")
    assert rid in judge("moe-llava", MOE, ds=ZERO3)
    assert rid not in judge("moe-llava", MOE, ds=ZERO2)
    assert rid not in judge("moe-llava", MOE.replace("--moe_enable True", "--moe_enable False"), ds=ZERO3)


def test_moe_stage2_needs_contiguous_gradients_and_reduce_scatter():
    cg = rule_id("moe-llava", "deepspeed_value", key="zero_optimization.contiguous_gradients")
    rs = rule_id("moe-llava", "deepspeed_value", key="zero_optimization.reduce_scatter")
    bad = {"zero_optimization": {"stage": 2, "contiguous_gradients": False, "reduce_scatter": False}}
    got = judge("moe-llava", MOE, ds=bad)
    assert cg in got and rs in got
    fine = judge("moe-llava", MOE, ds={"zero_optimization": {"stage": 2}})  # DeepSpeed's defaults are true
    assert cg not in fine and rs not in fine


def test_optimizer_block_bypasses_moe_param_groups():
    rid = rule_id("moe-llava", "deepspeed_has_key", key="optimizer")
    ds = dict(ZERO2, optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    assert rid in judge("moe-llava", MOE, ds=ds, installed={"deepspeed": "0.9.5"})
    assert rid in judge("moe-llava", MOE, ds=ds, installed=None)  # version unknown: still warned
    assert rid not in judge("moe-llava", MOE, ds=ds, installed={"deepspeed": "0.16.4"})  # regroups itself
    assert rid not in judge("moe-llava", MOE, ds=ZERO2, installed={"deepspeed": "0.9.5"})


@pytest.mark.parametrize("path,modules,bad", [
    ("./checkpoints/llavaphi-2.7b-finetune", "fc1 fc2 wg", False),
    ("./checkpoints/llavaphi-2.7b-finetune", "mlp.w1 mlp.w2 mlp.c_proj wg", True),
    # issue 17: the qwen script shipped with the phi names
    ("./checkpoints/llavaqwen-1.8b-finetune", "fc1 fc2 wg", True),
    ("./checkpoints/llavaqwen-1.8b-finetune", "mlp.w1 mlp.w2 mlp.c_proj wg", False),
    # issue 44: Qwen1.5 with the Qwen v1 names
    ("./checkpoints/llavaqwen1.5-1.8b-finetune", "mlp.w1 mlp.w2 mlp.c_proj wg", True),
    ("./checkpoints/llavaqwen1.5-1.8b-finetune", "gate_proj up_proj down_proj wg", False),
    ("./checkpoints/llavastablelm-1.6b-finetune", "wg", True),
])
def test_train_modules_against_backbone(path, modules, bad):
    rid = rule_id("moe-llava", "train_modules_match")
    got = judge("moe-llava", f"--moe_enable True --model_name_or_path {path} --train_modules {modules}", ds=ZERO2)
    assert (rid in got) is bad


def test_bf16_on_pre_ampere():
    rid = rule_id("moe-llava", "bf16_capability")
    assert rid in judge("moe-llava", MOE + " --bf16 True", gpus=["7.0"] * 8)
    assert rid not in judge("moe-llava", MOE + " --bf16 True", gpus=["8.0"] * 8)
    assert rid not in judge("moe-llava", MOE + " --bf16 False --fp16 True", gpus=["7.0"])
    assert rid in judge("moe-llava", MOE, ds={"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, gpus=["7.5"])
    assert rid not in judge("moe-llava", MOE + " --bf16 True")  # no GPU known: nothing claimed


def test_ep_size_divides_experts_and_world():
    rid = rule_id("moe-llava", "ep_divides")
    assert rid in judge("moe-llava", MOE + " --ep_size 3", world=6)
    assert rid in judge("moe-llava", MOE + " --ep_size 2", world=3)
    assert rid not in judge("moe-llava", MOE + " --ep_size 2", world=8)
    assert rid not in judge("moe-llava", MOE + " --ep_size 1", world=3)


def test_plain_python_launch_instead_of_deepspeed():
    rid = rule_id("moe-llava", "launcher")
    assert rid in judge("moe-llava", "python moellava/serve/cli.py --model-path x")
    assert rid not in judge("moe-llava", "deepspeed --include localhost:0 moellava/serve/cli.py --model-path x")
    assert rid not in judge("moe-llava", "--model-path x")  # only the script's arguments: not judged


# ------------------------------------------------------------------ MiniGemini model-path rules


@pytest.mark.parametrize("path,kind_params,hit", [
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", {"matches": "(?i)mistral"}, True),
    ("model_zoo/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1", {"matches": "(?i)mistral"}, False),
    ("model_zoo/LLM/Mixtral-8x7B-Instruct-v0.1", {"not_matches": "mixtral"}, True),  # case rule (pre PR 62)
    ("model_zoo/LLM/mixtral-8x7b-instruct", {"not_matches": "mixtral"}, False),
    ("lmsys/vicuna-7b-v1.5", {}, True),  # 8x7b recipe on a path without mixtral
])
def test_mgm_model_path_rules(path, kind_params, hit):
    p = project("minigemini")
    if kind_params:
        rid = rule_id("minigemini", "arg_regex", flag="model_name_or_path", **kind_params)
    else:
        rid = next(f"{p.name}.{r.id}" for r in p.rules if r.kind == "arg_regex"
                   and r.params.get("flag") == "model_name_or_path" and "gemma" in r.params.get("not_matches", ""))
    got = judge("minigemini", f"--model_name_or_path {path} --vision_tower model_zoo/OpenAI/clip-vit-large-patch14-336",
                variants=["8x7b"])
    assert (rid in got) is hit


def test_mgm_zero3_gather_on_save():
    rid = rule_id("minigemini", "deepspeed_value", key="zero_optimization.stage3_gather_16bit_weights_on_model_save")
    assert rid in judge("minigemini", "--model_name_or_path model_zoo/mixtral", ds={"zero_optimization": {"stage": 3}})
    assert rid not in judge("minigemini", "--model_name_or_path model_zoo/mixtral", ds=ZERO3)
    assert rid not in judge("minigemini", "--model_name_or_path model_zoo/mixtral", ds=ZERO2)


# ------------------------------------------------------------------ Megatron


TE_NEW = {"transformer-engine": "1.10.0", "megatron-core": "0.10.0", "nv-grouped-gemm": "1.1.4.post8"}
TE_OLD = {"transformer-engine": "1.7.0", "megatron-core": "0.10.0", "grouped-gemm": "1.1.4"}


@pytest.mark.parametrize("layout,flags,installed,hit", [
    ("sequential", "--moe-grouped-gemm --bf16", TE_NEW, True),  # issue 924: converter output + example script
    ("sequential", "--bf16", TE_NEW, False),
    ("sequential", "--moe-grouped-gemm --bf16", None, True),  # TE unknown: any grouped class mismatches
    ("te-grouped", "--moe-grouped-gemm --bf16", TE_NEW, False),
    ("te-grouped", "--moe-grouped-gemm --bf16", TE_OLD, True),  # old TE builds legacy GroupedMLP
    ("te-grouped", "--bf16", TE_NEW, True),
    ("grouped", "--moe-grouped-gemm --bf16", TE_OLD, False),
    ("grouped", "--moe-grouped-gemm --moe-use-legacy-grouped-gemm --bf16", TE_NEW, False),
    ("grouped", "--moe-grouped-gemm --bf16", TE_NEW, True),
    # Transformer Engine known to be absent: --moe-grouped-gemm builds the legacy GroupedMLP (core < 0.17) ...
    ("grouped", "--moe-grouped-gemm --bf16", {"megatron-core": "0.10.0", "grouped-gemm": "1.1.4"}, False),
    ("te-grouped", "--moe-grouped-gemm --bf16", {"megatron-core": "0.10.0", "grouped-gemm": "1.1.4"}, True),
    # ... and SequentialMLP from core 0.17, which has no GroupedMLP any more
    ("sequential", "--moe-grouped-gemm --bf16", {"megatron-core": "0.17.0"}, False),
])
def test_grouped_gemm_flag_against_checkpoint_layout(tmp_path, layout, flags, installed, hit):
    rid = rule_id("megatron", "megatron_grouped_gemm_layout")
    root = write_megatron_legacy(tmp_path / "ckpt", layout, experts=8)
    got = judge("megatron", f"pretrain_gpt.py --num-experts 8 {flags} --load {root}", installed=installed)
    assert (rid in got) is hit


def test_torch_dist_checkpoint_loads_across_layouts(tmp_path):
    rid = rule_id("megatron", "megatron_grouped_gemm_layout")
    root = tmp_path / "ckpt"
    write_torch_dist(root / "iter_0000010", layers=2, experts=8)
    (root / "latest_checkpointed_iteration.txt").write_text("10")
    for flags in ("--moe-grouped-gemm --bf16", "--bf16"):
        assert rid not in judge("megatron", f"--num-experts 8 {flags} --load {root}", installed=TE_NEW)


def test_grouped_gemm_backend_installed():
    rid = rule_id("megatron", "megatron_grouped_gemm_backend")
    assert rid in judge("megatron", "--moe-grouped-gemm --bf16", installed={"megatron-core": "0.10.0"})
    assert rid not in judge("megatron", "--moe-grouped-gemm --bf16", installed=TE_NEW)
    assert rid not in judge("megatron", "--moe-grouped-gemm --bf16", installed={"grouped-gemm": "1.1.4", "megatron-core": "0.10.0"})
    assert rid in judge("megatron", "--moe-grouped-gemm --bf16", installed={"grouped-gemm": "1.1.4", "megatron-core": "0.17.0"})
    assert rid not in judge("megatron", "--bf16", installed={})


def test_grouped_gemm_needs_bf16_on_older_core():
    rid = rule_id("megatron", "flag_requires_flag", flag="--moe-grouped-gemm")
    assert rid in judge("megatron", "--moe-grouped-gemm --fp16", installed={"megatron-core": "0.10.0"})
    assert rid not in judge("megatron", "--moe-grouped-gemm --bf16", installed={"megatron-core": "0.10.0"})
    assert rid not in judge("megatron", "--moe-grouped-gemm --fp16", installed={"megatron-core": "0.16.0"})


def test_tp_and_ep_need_sequence_parallel():
    rid = next(f"megatron.{r.id}" for r in project("megatron").rules
               if r.kind == "flag_requires_flag" and r.params.get("when_arg_gt"))
    assert rid in judge("megatron", "--tensor-model-parallel-size 2 --expert-model-parallel-size 4")
    assert rid not in judge("megatron", "--tensor-model-parallel-size 2 --expert-model-parallel-size 4 --sequence-parallel")
    assert rid not in judge("megatron", "--tensor-model-parallel-size 2 --expert-model-parallel-size 1")


def test_bf16_and_grouped_gemm_below_sm80():
    rid = rule_id("megatron", "gpu_capability_for_flags")
    assert rid in judge("megatron", "--moe-grouped-gemm --bf16", gpus=["7.0"])
    assert rid not in judge("megatron", "--moe-grouped-gemm --bf16", gpus=["9.0"])
    assert rid not in judge("megatron", "--fp16", gpus=["7.0"])


def test_expert_parallel_with_fp16():
    rid = rule_id("megatron", "flag_conflict")
    assert rid in judge("megatron", "--fp16 --expert-model-parallel-size 2", installed={"megatron-core": "0.10.0"})
    assert rid not in judge("megatron", "--fp16 --expert-model-parallel-size 1", installed={"megatron-core": "0.10.0"})
    assert rid not in judge("megatron", "--fp16 --expert-model-parallel-size 2", installed={"megatron-core": "0.16.0"})


def test_legacy_grouped_flag_removed_in_new_core():
    rid = rule_id("megatron", "flag_version")
    assert rid in judge("megatron", "--moe-grouped-gemm --moe-use-legacy-grouped-gemm", installed={"megatron-core": "0.17.0"})
    assert rid not in judge("megatron", "--moe-grouped-gemm --moe-use-legacy-grouped-gemm", installed={"megatron-core": "0.12.0"})
    assert rid not in judge("megatron", "--moe-grouped-gemm --moe-use-legacy-grouped-gemm", installed=None)


def test_cuda_device_max_connections():
    rid = rule_id("megatron", "env_required")
    assert rid in judge("megatron", "--tensor-model-parallel-size 2", env={})
    assert rid not in judge("megatron", "--tensor-model-parallel-size 2", env={"CUDA_DEVICE_MAX_CONNECTIONS": "1"})
    assert rid not in judge("megatron", "--tensor-model-parallel-size 1", env={})
    assert rid not in judge("megatron", "--tensor-model-parallel-size 2", env={}, gpus=["10.0"])


def test_megatron_ep_divides_experts_and_world():
    rid = rule_id("megatron", "ep_divides")
    assert rid in judge("megatron", "--num-experts 8 --expert-model-parallel-size 3")
    assert rid in judge("megatron", "--num-experts 8 --expert-model-parallel-size 8 --pipeline-model-parallel-size 4", world=16)
    assert rid not in judge("megatron", "--num-experts 8 --expert-model-parallel-size 8 --pipeline-model-parallel-size 4", world=32)
    # world size from torchrun's own flags: 4 GPUs x 1 node cannot hold EP 8
    assert rid in judge("megatron", "torchrun --nproc_per_node 4 --nnodes 1 pretrain_gpt.py --num-experts 8 --expert-model-parallel-size 8")
    assert rid not in judge("megatron", "torchrun --nproc_per_node 8 --nnodes 2 pretrain_gpt.py --num-experts 8 --expert-model-parallel-size 8")


# ------------------------------------------------------------------ XTuner (Python training configs read with ast)

XTUNER_CONFIG = """\
from xtuner.engine.hooks import EvaluateChatHook, HFCheckpointHook
from xtuner.model.transformers_models.deepseek_v2 import DeepseekV2ForCausalLM
use_varlen_attn = {varlen}
sequence_parallel_size = {sp}
model = dict(type=SupervisedFinetune, use_varlen_attn=use_varlen_attn,
             llm=dict(type=DeepseekV2ForCausalLM.from_pretrained, pretrained_model_name_or_path='deepseek-ai/DeepSeek-V2-Lite',
                      moe_implementation='shard', expert_in_one_shard={shard}, n_routed_experts=64))
custom_hooks = [dict(type=HFCheckpointHook){hooks}]
"""


def xtuner_judge(tmp_path, varlen=False, sp=1, shard=8, hooks="", installed=None, world=None, ds=None, extra=""):
    from moe_env.config_rules import read_training_config

    cfg_file = tmp_path / "deepseek_v2_lite_chat_full_alpaca_e3.py"
    cfg_file.write_text(XTUNER_CONFIG.format(varlen=varlen, sp=sp, shard=shard, hooks=hooks))
    p = project("xtuner")
    flags, positional = parse_launch(f"xtuner train {cfg_file} {extra}".split())
    cfg = LaunchConfig(project=p, variants=resolve_variants(p, ["deepseek-v2-lite"]), flags=flags, positional=positional,
                       installed=installed, world_size=world, deepspeed=ds, deepspeed_path="ds.json" if ds else None)
    cfg.training_config, cfg.config_names = read_training_config(str(cfg_file))
    cfg.training_config_path = str(cfg_file)
    findings, unknown = run_rules(cfg)
    assert not unknown
    return {f.id for f in findings}


def test_xtuner_config_is_read_without_running_it(tmp_path):
    from moe_env.config_rules import read_training_config

    f = tmp_path / "c.py"
    f.write_text("import os\nos.system('touch ' + 'PWNED')\n" + XTUNER_CONFIG.format(varlen=True, sp=2, shard=8, hooks=""))
    values, names = read_training_config(str(f))
    assert values["use_varlen_attn"] is True and values["moe_implementation"] == "shard" and values["expert_in_one_shard"] == 8
    assert "HFCheckpointHook" in names and not (tmp_path / "PWNED").exists()


def test_xtuner_varlen_needs_flash_attn(tmp_path):
    rid = rule_id("xtuner", "config_requires_package")
    assert rid in xtuner_judge(tmp_path, varlen=True, installed={"xtuner": "0.1.23"})
    assert rid in xtuner_judge(tmp_path, varlen=True, installed={"flash-attn": "2.1.1"})  # no window_size yet
    assert rid not in xtuner_judge(tmp_path, varlen=True, installed={"flash-attn": "2.5.8"})
    assert rid in xtuner_judge(tmp_path, sp=2, installed={})
    assert rid not in xtuner_judge(tmp_path, installed={})


def test_xtuner_shard_and_sequence_parallel_divisibility(tmp_path):
    shard = rule_id("xtuner", "config_divides", numerator="n_routed_experts")
    sp = rule_id("xtuner", "config_divides", numerator="world_size")
    assert shard in xtuner_judge(tmp_path, shard=6)
    assert shard not in xtuner_judge(tmp_path, shard=8)
    assert sp in xtuner_judge(tmp_path, sp=3, world=8)
    assert sp not in xtuner_judge(tmp_path, sp=4, world=8)
    assert sp in xtuner_judge(tmp_path, sp=3, extra="--nproc_per_node 8")


def test_xtuner_shard_moe_cannot_run_eval_hook(tmp_path):
    rid = rule_id("xtuner", "config_forbids")
    assert rid in xtuner_judge(tmp_path, hooks=", dict(type=EvaluateChatHook, every_n_iters=500)")
    assert rid not in xtuner_judge(tmp_path)


def test_xtuner_deepspeed_name_and_zero3_gather(tmp_path):
    name = rule_id("xtuner", "deepspeed_config_choice")
    gather = rule_id("xtuner", "deepspeed_config_value")
    assert name in xtuner_judge(tmp_path, extra="--deepspeed deepspeed_zero4")
    assert name not in xtuner_judge(tmp_path, extra="--deepspeed deepspeed_zero3")
    assert gather in xtuner_judge(tmp_path, ds={"zero_optimization": {"stage": 3}})
    assert gather not in xtuner_judge(tmp_path, ds=ZERO3)
    assert gather not in xtuner_judge(tmp_path, ds=ZERO2)


def test_cli_xtuner_named_deepspeed_config_found_in_installed_package(tmp_path, venv):
    # `--deepspeed deepspeed_zero3` is resolved inside the installed xtuner (a fake one in a real venv)
    project("xtuner")
    venv.add_dist("xtuner", "0.1.23", files={
        "xtuner/__init__.py": "",
        "xtuner/configs/deepspeed/deepspeed_zero3.json": json.dumps({"zero_optimization": {"stage": 3}}),
    })
    cfg_file = tmp_path / "deepseek_v2_lite_chat_full_alpaca_e3.py"
    cfg_file.write_text(XTUNER_CONFIG.format(varlen=True, sp=1, shard=8, hooks=""))
    p = cli("check-config", "xtuner", "--model", "deepseek-v2-lite", "--python", str(venv.python), "--json", "--",
            "xtuner", "train", str(cfg_file), "--deepspeed", "deepspeed_zero3")
    doc = json.loads(p.stdout)
    assert doc["deepspeed_config"].endswith("xtuner/configs/deepspeed/deepspeed_zero3.json")
    ids = {f["id"] for f in doc["findings"]}
    assert rule_id("xtuner", "deepspeed_config_value") in ids  # the fake zero3 lacks the gather option
    assert rule_id("xtuner", "config_requires_package") in ids  # varlen without flash-attn in that venv
    assert p.returncode == 1


# ------------------------------------------------------------------ the command


def cli(*args, env=None, cwd=None):
    import os

    e = dict(os.environ)
    e.pop("MOE_ENV_GPUS", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "moe_env", *args], capture_output=True, text=True, timeout=120, env=e,
                          cwd=cwd)


def dense_model(folder):
    """A small dense Hugging Face folder (config.json + one safetensors shard) for --model_name_or_path."""
    write_hf_folder(folder, {"model_type": "phi", "num_hidden_layers": 2},
                    [{"model.layers.0.mlp.fc1.weight": ("F16", (8, 4)), "model.layers.1.mlp.fc1.weight": ("F16", (8, 4))}])
    return folder


def test_cli_zero3_moe_llava_exits_1_with_json(tmp_path):
    project("moe-llava")
    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps(ZERO3))
    p = cli("check-config", "moe-llava", "--json", "--", "deepspeed", "moellava/train/train_mem.py",
            "--deepspeed", str(ds), *MOE.split())
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    assert doc["schema"] == "moe-env.check-config/1" and doc["deepspeed_config"] == str(ds)
    hit = [f for f in doc["findings"] if f["id"] == rule_id("moe-llava", "zero_stage")]
    assert hit and hit[0]["sources"] and "stage = 3" in hit[0]["seen"]


def test_cli_good_launch_exits_0(tmp_path):
    project("moe-llava")
    ds = tmp_path / "zero2.json"
    ds.write_text(json.dumps(ZERO2))
    dense_model(tmp_path / "checkpoints" / "llavaphi-2.7b-finetune")
    p = cli("check-config", "moe-llava", "--deepspeed-config", str(ds), "--", *MOE.split(), "--bf16", "True",
            env={"MOE_ENV_GPUS": "A100:8.0x8"}, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK" in p.stdout


def test_cli_bf16_on_v100_via_gpu_override():
    project("moe-llava")
    p = cli("check-config", "moe-llava", "--", *MOE.split(), "--bf16", "True", env={"MOE_ENV_GPUS": "V100:7.0x8"})
    assert p.returncode == 1 and rule_id("moe-llava", "bf16_capability") in p.stdout


def test_cli_launch_deepspeed_file_elsewhere_is_a_warning_not_an_error(tmp_path):
    project("minigemini")
    dense_model(tmp_path / "model_zoo" / "LLM" / "mixtral" / "x")
    p = cli("check-config", "mgm", "--model", "8x7b", "--json", "--", "--model_name_or_path", "model_zoo/LLM/mixtral/x",
            "--deepspeed", str(tmp_path / "scripts" / "zero3.json"), cwd=tmp_path)
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["deepspeed_config"] is None
    assert "check-config.deepspeed-not-found" in {f["id"] for f in doc["findings"]}


def test_cli_bad_inputs_are_usage_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args in (("check-config", "no-such-project", "--", "--x"),
                 ("check-config", "moe-llava", "--deepspeed-config", str(bad)),
                 ("check-config", "moe-llava", "--deepspeed-config", str(tmp_path / "missing.json"))):
        p = cli(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert p.stderr.startswith("moe-env: error:") and "Traceback" not in p.stderr


# ------------------------------------------------------------------ flags of each project's entry point (issue 15)


def flags_of(name):
    p = project(name)
    assert p.entry_points, f"{name}: the matrix lists no entry point"
    return p, next(e for e in p.entry_points if e.default)


@pytest.mark.parametrize("name,line,typo,want", [
    ("moe-llava", "deepspeed --num_gpus 8 moellava/train/train_mem.py --moe_enabel True --bf16 True", "--moe_enabel", "--moe_enable"),
    ("minigemini", "deepspeed --num_gpus 8 mgm/train/train_mem.py --model_name_or_pth x --bf16 True", "--model_name_or_pth", "--model_name_or_path"),
    ("megatron", "torchrun --nproc_per_node 8 pretrain_gpt.py --num-layers 32 --moe-grouped-gem --bf16", "--moe-grouped-gem", "--moe-grouped-gemm"),
    ("megatron", "pretrain_gpt.py --num_experts 8", "--num_experts", "--num-experts"),
    ("xtuner", "xtuner train mixtral_8x7b_instruct_full_oasst1_e3 --deepspeed deepspeed_zero3 --sed 1", "--sed", "--seed"),
])
def test_misspelt_flags_are_errors_with_the_closest_flag(name, line, typo, want):
    p, ep = flags_of(name)
    assert want in ep.flags and typo not in ep.flags  # the lists come from the matrix
    launch = split_launch(line.split())
    got, why = entry_point_for(p, launch)
    assert got is ep, why
    findings = judge_flags(p, ep, launch.args)
    errors = [f for f in findings if f.severity == "error"]
    assert len(errors) == 1 and f"did you mean {want}?" in errors[0].title and errors[0].sources
    # every other flag of the line is one the parser defines: no finding for them
    assert judge_flags(p, ep, [w.replace(typo, want) for w in launch.args]) == []


def test_launcher_options_are_not_script_flags():
    p, ep = flags_of("moe-llava")
    launch = split_launch("deepspeed --num_gpus 8 --master_port 29501 --hostfile hf moellava/train/train_mem.py --bf16 True".split())
    assert launch.launcher_args == ["--num_gpus", "8", "--master_port", "29501", "--hostfile", "hf"]
    assert judge_flags(p, ep, launch.args) == []
    t = split_launch("torchrun --nnodes 2 --nproc-per-node 8 pretrain_gpt.py --bf16".split())
    assert t.script == "pretrain_gpt.py" and t.args == ["--bf16"]


def test_abbreviations_follow_each_parser():
    p, ep = flags_of("moe-llava")  # HfArgumentParser keeps argparse's allow_abbrev=True
    assert not ep.allow_abbrev is False
    got = judge_flags(p, ep, ["--train_module", "fc1"])
    assert [f.severity for f in got] == ["info"] and "--train_modules" in got[0].title
    mp, mep = flags_of("megatron")  # ArgumentParser(allow_abbrev=False)
    assert mep.allow_abbrev is False
    assert [f.severity for f in judge_flags(mp, mep, ["--num-exp", "8"])] == ["error"]
    amb = judge_flags(p, ep, ["--moe", "x"])
    assert amb and amb[0].severity == "error" and "ambiguous" in amb[0].title


def test_cli_typo_and_missing_load_exit_1(tmp_path):
    p = cli("check-config", "megatron", "--json", "--", "pretrain_gpt.py", "--num-layers", "2", "--moe-grouped-gem",
            "--pretrained-checkpoint", str(tmp_path / "nope"), "--load", str(tmp_path / "also-nope"))
    assert p.returncode == 1, p.stderr
    ids = {f["id"] for f in json.loads(p.stdout)["findings"]}
    assert "megatron.unknown-flag:--moe-grouped-gem" in ids and "megatron.pretrained-checkpoint-missing" in ids


def test_missing_local_model_path_is_an_error_and_a_hub_id_is_not(tmp_path):
    rid = rule_id("moe-llava", "checkpoint_arg", judge="missing")
    assert rid in judge("moe-llava", f"--model_name_or_path {tmp_path}/checkpoints/none")
    assert rid not in judge("moe-llava", "--model_name_or_path microsoft/phi-2")
    assert rid not in judge("moe-llava", f"--model_name_or_path {dense_model(tmp_path / 'm')}")


def test_load_missing_warns_unless_it_is_also_the_save_folder(tmp_path):
    rid = rule_id("megatron", "checkpoint_arg", judge="missing", flags=["--load"])
    assert rid in judge("megatron", f"pretrain_gpt.py --load {tmp_path}/ck")
    assert rid not in judge("megatron", f"pretrain_gpt.py --load {tmp_path}/ck --save {tmp_path}/ck")


def test_legacy_checkpoint_against_launch_sizes(tmp_path):
    rid = rule_id("megatron", "checkpoint_arg", judge="matches", formats=["megatron-legacy"])
    root = write_megatron_legacy(tmp_path / "ckpt", "sequential", experts=4, layers=2)
    ok = f"pretrain_gpt.py --num-experts 4 --num-layers 2 --bf16 --load {root}"
    assert rid not in judge("megatron", ok)
    assert rid in judge("megatron", ok.replace("--num-experts 4", "--num-experts 8"))
    assert rid in judge("megatron", ok.replace("--num-layers 2", "--num-layers 4"))
    assert rid in judge("megatron", ok + " --tensor-model-parallel-size 2")


def test_ep_3_is_one_finding():
    got = judge("megatron", "pretrain_gpt.py --num-experts 8 --expert-model-parallel-size 3", world=16)
    assert sum(1 for i in got if i.endswith("experts-divisible-by-ep")) == 1


def test_cli_unicode_digits_and_zero_ep_are_not_internal_errors():
    for env, extra in (({"WORLD_SIZE": "²"}, []), ({}, ["--expert-model-parallel-size", "0"]),
                       ({}, ["--expert-model-parallel-size", "３"])):
        p = cli("check-config", "megatron", "--", "pretrain_gpt.py", "--num-experts", "8", *extra, env=env)
        assert p.returncode in (0, 1), p.stdout + p.stderr
        assert "Traceback" not in p.stderr


def test_xtuner_named_config_from_the_release_table():
    p = cli("check-config", "xtuner", "--json", "--", "xtuner", "train", "mixtral_8x7b_instruct_full_oasst1_e3")
    ids = {f["id"] for f in json.loads(p.stdout)["findings"]}
    assert "xtuner.config-name" in ids
    p = cli("check-config", "xtuner", "--json", "--", "xtuner", "train", "mixtral_8x7b_instruct_ful_oasst1_e3")
    bad = [f for f in json.loads(p.stdout)["findings"] if f["id"] == "xtuner.config-name-unknown"]
    assert bad and "mixtral_8x7b_instruct_full_oasst1_e3" in bad[0]["fix"]


# ------------------------------------------------------------------ hostile inputs (issue 16): one-line errors or findings


def _no_crash(p):
    assert p.returncode in (0, 1, 2), p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    if p.returncode == 2:
        assert p.stderr.startswith("moe-env: error:") and p.stderr.count("\n") == 1


def test_hostile_checkpoint_args_are_not_internal_errors(tmp_path):
    from ckpt_support import megatron_args, megatron_state, write_torch_zip

    for i, kw in enumerate(({"expert_model_parallel_size": "0"}, {"num_experts": "eight"},
                            {"pipeline_model_parallel_size": "\u00b2"}, {"num_layers": 10 ** 50},
                            {"tensor_model_parallel_size": "\u0663"})):
        root = tmp_path / f"c{i}"
        root.mkdir()
        (root / "latest_checkpointed_iteration.txt").write_text("100\n")
        obj = {"args": megatron_args(**kw), "iteration": 100, "model": megatron_state("sequential", 2, 4)}
        write_torch_zip(root / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt", obj)
        p = cli("check-config", "megatron", "--", "pretrain_gpt.py", "--num-experts", "4", "--load", str(root))
        _no_crash(p)


def test_hostile_training_config_and_deepspeed_config(tmp_path):
    deep = tmp_path / "deep.py"
    deep.write_text("x = " + "(" * 5000 + "1" + ")" * 5000 + "\ny = " + "+".join(["a"] * 200000) + "\n")
    _no_crash(cli("check-config", "xtuner", "--", "xtuner", "train", str(deep)))
    ds = tmp_path / "ds.json"
    ds.write_text("[" * 100000 + "]" * 100000)
    p = cli("check-config", "moe-llava", "--deepspeed-config", str(ds), "--", "--bf16", "True")
    assert p.returncode == 2
    _no_crash(p)
    ds.write_text('{"zero_optimization": {"stage": 1' + "0" * 5000 + "}}")
    _no_crash(cli("check-config", "moe-llava", "--deepspeed-config", str(ds), "--", "--bf16", "True"))


def test_fifo_and_escapes_in_launch_paths(tmp_path):
    import os

    fifo = tmp_path / "ckpt-fifo"
    os.mkfifo(fifo)
    p = cli("check-config", "megatron", "--", "pretrain_gpt.py", "--load", str(fifo), "--moe-grouped-gemm", "--bf16")
    _no_crash(p)
    evil = str(tmp_path / "x\x1b]0;owned\x07") + "/model"
    p = cli("check-config", "moe-llava", "--", "--model_name_or_path", evil, "--moe_enabel\x1b[2J")
    _no_crash(p)
    assert p.returncode == 1 and "\x1b" not in p.stdout and "\\x1b" in p.stdout


# ------------------------------------------------------------------ --python: doctor's checks for the variant the launch selects


def test_python_runs_doctor_checks_for_the_selected_variant_once(tmp_path):
    from fakes import deepspeed_files, make_venv

    venv = make_venv(tmp_path / "venv")
    venv.add_dist("deepspeed", "0.12.6", files=deepspeed_files("0.12.6", z3_leaf=False))
    venv.add_dist("transformers", "4.36.2", files={"transformers/__init__.py": ""})
    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    dense_model(tmp_path / "model_zoo" / "LLM" / "mixtral" / "Mixtral-8x7B-Instruct-v0.1")
    line = ["deepspeed", "--num_gpus", "8", "mgm/train/train_mem.py", "--model_name_or_path",
            "model_zoo/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1", "--deepspeed", str(ds), "--bf16", "True"]
    sentinel = tmp_path / "imported"
    p = cli("check-config", "mgm", "--json", "--python", str(venv.python), "--", *line,
            env={"MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_TEST_IMPORTED": str(sentinel)}, cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["variants"] == ["8x7b"]  # from the model path, not --model
    ids = [f["id"] for f in doc["findings"]]
    assert ids.count("minigemini.mgm-ds-set-z3-leaf-modules") == 1
    titles = [f["title"] for f in doc["findings"]]
    assert len(titles) == len(set(titles))  # one finding per problem
    assert not sentinel.exists()  # the target's deepspeed was read, never imported
    # without --python, doctor's package checks do not run against moe-env's own interpreter
    q = cli("check-config", "mgm", "--json", "--", *line, env={"MOE_ENV_GPUS": "A100:8.0x8"}, cwd=tmp_path)
    assert "minigemini.mgm-ds-set-z3-leaf-modules" not in {f["id"] for f in json.loads(q.stdout)["findings"]}


def test_xtuner_on_v100_gets_the_gpu_finding():
    p = cli("check-config", "xtuner", "--json", "--", "xtuner", "train", "mixtral_8x7b_instruct_full_oasst1_e3",
            "--deepspeed", "deepspeed_zero3", env={"MOE_ENV_GPUS": "V100:7.0x8"})
    doc = json.loads(p.stdout)
    assert doc["variants"] == ["mixtral-8x7b"]
    assert "gpu.memory-below-recipe" in {f["id"] for f in doc["findings"]}
    q = cli("check-config", "xtuner", "--json", "--", "xtuner", "train", "mixtral_8x7b_instruct_full_oasst1_e3",
            "--deepspeed", "deepspeed_zero3", env={"MOE_ENV_GPUS": "H100:9.0x8"})
    assert "gpu.memory-below-recipe" not in {f["id"] for f in json.loads(q.stdout)["findings"]}


def test_wrapper_scripts_arguments_are_not_judged_as_the_entry_points():
    p, _ep = flags_of("minigemini")
    launch = split_launch(["bash", "scripts/train.sh", "--foo"])
    ep, why = entry_point_for(p, launch)
    assert ep is None and "bash" in why
    assert entry_point_for(p, split_launch(["--model_name_or_path", "x"]))[0] is not None  # args alone: the default


def test_xtuner_world_size_from_its_environment_words(tmp_path):
    cfg_py = tmp_path / "sp.py"
    cfg_py.write_text("sequence_parallel_size = 4\nmodel = dict(type='x')\n")
    rid = rule_id("xtuner", "config_divides", numerator="world_size")
    p = cli("check-config", "xtuner", "--json", "--", "NPROC_PER_NODE=6", "xtuner", "train", str(cfg_py))
    assert rid in {f["id"] for f in json.loads(p.stdout)["findings"]}, p.stdout
    p = cli("check-config", "xtuner", "--json", "--", "NPROC_PER_NODE=8", "xtuner", "train", str(cfg_py))
    assert rid not in {f["id"] for f in json.loads(p.stdout)["findings"]}


def test_megatron_load_is_always_a_folder_but_model_name_may_be_a_hub_id(tmp_path):
    rid = rule_id("megatron", "checkpoint_arg", judge="missing", flags=["--load"])
    assert rid in judge("megatron", "pretrain_gpt.py --load ckpt/mixtral")  # one slash: still a folder for Megatron
    hf = rule_id("minigemini", "checkpoint_arg", judge="missing")
    assert hf not in judge("minigemini", "--model_name_or_path mistralai/Mixtral-8x7B-v0.1")
    p = cli("check-config", "mgm", "--json", "--", "--model_name_or_path", "lmsys/vicuna-7b-v1.5", cwd=tmp_path)
    assert "check-config.checkpoint-hub-id" in {f["id"] for f in json.loads(p.stdout)["findings"]}


def test_bf16_on_v100_is_one_finding_with_python(tmp_path):
    from fakes import deepspeed_files, make_venv

    venv = make_venv(tmp_path / "venv")
    venv.add_dist("deepspeed", "0.13.2", files=deepspeed_files("0.13.2", z3_leaf=True))
    p = cli("check-config", "mgm", "--json", "--python", str(venv.python), "--", "--model_name_or_path",
            "model_zoo/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1", "--bf16", "True", env={"MOE_ENV_GPUS": "V100:7.0x8"})
    ids = [f["id"] for f in json.loads(p.stdout)["findings"] if f["severity"] == "error"]
    gpu = [i for i in ids if "bf16" in i or "gpu" in i]
    assert len(gpu) == 1, ids


def test_a_thousand_misspelt_flags_are_bounded():
    p, ep = flags_of("megatron")
    got = judge_flags(p, ep, [f"--no-such-flag-{i}" for i in range(1000)] + ["--moe-grouped-gem"])
    assert len(got) == 21 and got[-1].title.startswith("981 more flags")


def test_deepspeed_launcher_adds_local_rank_that_megatron_refuses():
    p = cli("check-config", "megatron", "--json", "--", "deepspeed", "--num_gpus", "8", "pretrain_gpt.py", "--num-layers", "2")
    assert p.returncode == 1
    hit = [f for f in json.loads(p.stdout)["findings"] if f["id"] == "megatron.launcher-adds-local_rank"]
    assert hit and hit[0]["sources"] and "--no_local_rank" in hit[0]["fix"]
    ok = cli("check-config", "megatron", "--", "deepspeed", "--no_local_rank", "pretrain_gpt.py", "--num-layers", "2")
    assert ok.returncode == 0, ok.stdout
    hf = cli("check-config", "moe-llava", "--", "deepspeed", "moellava/train/train_mem.py", "--moe_enable", "True")
    assert "launcher-adds" not in hf.stdout  # TrainingArguments defines --local_rank


@pytest.mark.parametrize("name,args,bad", [
    ("megatron", ["--bf16", "True", "--num-layers", "2"], "--bf16"),  # store_true: 'True' is left over
    ("megatron", ["--sequence-parallel=1"], "--sequence-parallel"),
    ("megatron", ["--bf16", "--num-layers", "2"], None),
    ("moe-llava", ["--moe_enable", "Ture"], "--moe_enable"),  # string_to_bool refuses it
    ("moe-llava", ["--moe_enable", "True", "--bf16", "--tf32", "false", "--moe_enable=yes"], None),
    ("minigemini", ["--bf16", "1", "--lazy_preprocess", "True"], None),
])
def test_values_the_parser_refuses(name, args, bad):
    from moe_env.launch import judge_values

    p, ep = flags_of(name)
    got = judge_values(p, ep, args)
    if bad is None:
        assert got == []
    else:
        assert len(got) == 1 and got[0].severity == "error" and bad in got[0].title and got[0].sources


def test_rules_read_an_abbreviated_flag_as_the_parser_does(tmp_path):
    rid = rule_id("moe-llava", "train_modules_match")
    p = cli("check-config", "moe-llava", "--json", "--", "--moe_enable", "True", "--model_name_or_path",
            "openchat/openchat_3.5", "--train_module", "wg")  # abbreviation of --train_modules
    ids = {f["id"] for f in json.loads(p.stdout)["findings"]}
    assert rid in ids and "moe-llava.abbreviated-flag" in ids


def test_without_python_moe_envs_own_interpreter_is_not_the_training_env():
    p = cli("check-config", "megatron", "--json", "--", "pretrain_gpt.py", "--moe-grouped-gemm", "--bf16")
    ids = {f["id"] for f in json.loads(p.stdout)["findings"]}
    assert "check-config.no-python" in ids
    assert rule_id("megatron", "megatron_grouped_gemm_backend") not in ids  # TE unknown, not "not installed"


def test_megatron_modelopt_flags_are_a_note_not_an_error():
    p, ep = flags_of("megatron")
    flag = ep.conditional_flags[0]
    got = judge_flags(p, ep, [flag])
    assert [f.severity for f in got] == ["info"] and "nvidia-modelopt" in got[0].title


def test_xtuner_named_config_from_the_installed_xtuner_with_python(tmp_path):
    from fakes import make_venv

    venv = make_venv(tmp_path / "venv")
    cfg_text = "sequence_parallel_size = 3\nmodel = dict(type='x')\n"
    venv.add_dist("xtuner", "0.1.23", files={
        "xtuner/__init__.py": "raise SystemExit('imported')\n",
        "xtuner/configs/mixtral/mixtral_8x7b_instruct/mixtral_8x7b_instruct_full_oasst1_e3.py": cfg_text,
        "xtuner/configs/deepspeed/deepspeed_zero3.json": json.dumps({"zero_optimization": {"stage": 3}}),
    })
    line = ["NPROC_PER_NODE=8", "xtuner", "train", "mixtral_8x7b_instruct_full_oasst1_e3", "--deepspeed", "deepspeed_zero3"]
    p = cli("check-config", "xtuner", "--json", "--python", str(venv.python), "--", *line)
    doc = json.loads(p.stdout)
    assert doc["deepspeed_config"].endswith("deepspeed_zero3.json")  # the installed package's named config
    ids = {f["id"] for f in doc["findings"]}
    assert rule_id("xtuner", "config_divides", numerator="world_size") in ids  # 8 GPUs, sequence_parallel_size 3
    q = cli("check-config", "xtuner", "--json", "--python", str(venv.python), "--", "xtuner", "train", "no_such_config_e3")
    assert "xtuner.config-name-unknown" in {f["id"] for f in json.loads(q.stdout)["findings"]}
    assert q.returncode == 1
