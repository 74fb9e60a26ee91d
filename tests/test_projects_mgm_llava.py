"""The MiniGemini and MoE-LLaVA project files: key facts load, stacks agree with the project's own
checks and with the platform/API tables, known-issue patterns match real log lines, and the launch
rules judge real launches the way the upstream code would."""

from __future__ import annotations

import re

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from moe_env.matrix.loader import load_matrix

PROJECTS = ("minigemini", "moe-llava")


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def _project(matrix, name):
    p = matrix.project(name)
    assert p is not None, f"project {name} missing from the matrix"
    return p


def _applies(entry_variants, stack_variants):
    return not entry_variants or bool(set(entry_variants) & set(stack_variants))


# ------------------------------------------------------------------ key facts


def test_aliases_resolve_to_the_same_project(matrix):
    mgm = _project(matrix, "mgm")
    assert matrix.project("mini-gemini") is mgm and matrix.project("MiniGemini") is mgm
    assert mgm.info.repo == "dvlab-research/MGM"
    assert re.fullmatch(r"[0-9a-f]{40}", mgm.info.commit)
    llava = _project(matrix, "moellava")
    assert llava.info.name == "moe-llava" and re.fullmatch(r"[0-9a-f]{40}", llava.info.commit)


def test_mgm_upstream_pin_is_the_deepspeed_without_set_z3_leaf_modules(matrix):
    mgm = _project(matrix, "mgm")
    pin = next(p for p in mgm.pins if p.package == "deepspeed")
    assert pin.spec == "==0.11.1" and pin.extra == "train"
    bound = next(c for c in mgm.checks if c.kind == "version_bound" and c.params.get("package") == "deepspeed"
                 and "8x7b" in c.variants)
    spec = SpecifierSet(bound.params["spec"])
    assert "0.11.1" not in spec and "0.12.6" not in spec and "0.13.1" not in spec
    assert "0.13.2" in spec and "0.14.5" in spec and "0.15.0" not in spec
    # a known-good range, not a cited failure: a warning (the api_symbol check is the error below 0.13.0)
    assert bound.severity == "warning" and not bound.params.get("required")


def test_mgm_8x7b_needs_set_z3_leaf_modules(matrix):
    mgm = _project(matrix, "mgm")
    checks = [c for c in mgm.checks if c.kind == "api_symbol"
              and c.params.get("symbol") == "deepspeed.utils.set_z3_leaf_modules"]
    assert checks and all(c.variants == ["8x7b"] for c in checks)
    assert any("mgm/train/train.py:1130" in s for c in checks for s in c.source)
    assert "deepspeed.utils.set_z3_leaf_modules" in matrix.api_symbols()
    v = mgm.variant("mixtral")
    assert v is not None and v.id == "8x7b" and v.moe and v.num_experts == 8 and v.zero_stage == 3
    assert mgm.moe_variants() == [v]


def test_mgm_8x7b_stacks_hold_deepspeed_between_0_13_0_and_0_14_5(matrix):
    mgm = _project(matrix, "mgm")
    stacks = [s for s in mgm.stacks if "8x7b" in s.variants]
    assert len(stacks) >= 2
    for s in stacks:
        ds = Version(s.pins["deepspeed"])
        assert Version("0.13.0") <= ds <= Version("0.14.5"), s.id
        assert any("deepspeed" in d and "0.11.1" in d for d in s.departs), s.id


def test_moe_llava_uses_deepspeed_moe_and_refuses_zero3(matrix):
    llava = _project(matrix, "moe-llava")
    symbols = {(c.params.get("symbol"), c.params.get("param", "")) for c in llava.checks if c.kind == "api_symbol"}
    assert ("deepspeed.moe.layer.MoE.__init__", "ep_size") in symbols
    assert ("deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer", "") in symbols
    rule = next(r for r in llava.rules if r.kind == "zero_stage")
    assert rule.params == {"max": 2, "when_flag": "moe_enable"}
    assert "MoE not supported with Stage 3" in rule.why
    assert {v.id for v in llava.variants} >= {"stablelm-1.6b", "qwen-1.8b", "phi2-2.7b"}
    assert all(v.moe and v.num_experts == 4 and v.zero_stage == 2 for v in llava.variants)


# ------------------------------------------------------------------ stacks against checks and tables


def _stack_cases(matrix):
    for name in PROJECTS:
        p = _project(matrix, name)
        for s in p.stacks:
            yield p, s


def test_stacks_satisfy_their_projects_own_checks(matrix):
    """A known-good stack must pass the doctor checks of every variant it serves."""
    seen = 0
    for p, s in _stack_cases(matrix):
        for c in p.checks:
            if not _applies(c.variants, s.variants):
                continue
            if c.kind == "version_bound" and c.params["package"] in s.pins:
                assert Version(s.pins[c.params["package"]]) in SpecifierSet(c.params["spec"]), (s.id, c.id)
                seen += 1
            elif c.kind == "requires":
                names = [c.params["package"]] if c.params.get("package") else list(c.params.get("any_of", []))
                assert any(n in s.pins for n in names), (s.id, c.id)
            elif c.kind == "python":
                assert Version(s.python) in SpecifierSet(c.params["spec"]), (s.id, c.id)
    assert seen >= 10


def test_stacks_state_why_they_depart_from_upstream_pins(matrix):
    for p, s in _stack_cases(matrix):
        for pin in p.pins:
            if not pin.spec.startswith("==") or pin.package not in s.pins:
                continue
            if s.pins[pin.package] != pin.spec[2:]:
                assert any(pin.package in d for d in s.departs), (s.id, pin.package)


def test_stacks_fit_the_torch_platform_table(matrix):
    checked = 0
    for _, s in _stack_cases(matrix):
        row = matrix.torch_release(s.pins["torch"])
        if row is None:
            continue
        assert Version(s.python) in SpecifierSet(row.python), s.id
        assert s.cuda in row.cuda_builds, s.id
        checked += 1
    if not checked:
        pytest.skip("no platform torch table loaded")


def test_stack_pins_meet_the_requirements_of_pinned_releases(matrix):
    """e.g. deepspeed 0.9.5/0.11.1 require pydantic<2.0.0: the stack's pydantic pin must fit."""
    checked = 0
    for _, s in _stack_cases(matrix):
        for pkg, ver in s.pins.items():
            for rel in matrix.releases.get(pkg, []):
                if rel.version != ver:
                    continue
                for dep, spec in rel.requires.items():
                    if spec and dep in s.pins:
                        assert Version(s.pins[dep]) in SpecifierSet(spec), (s.id, pkg, dep, spec)
                        checked += 1
    if not checked:
        pytest.skip("no package release table covers these stacks yet")


def test_stack_deepspeed_has_every_api_symbol_its_checks_need(matrix):
    """Against the deepspeed API table, where it lists the symbol (the table is generated from sdists)."""
    entries = matrix.api.get("deepspeed", [])
    if not entries:
        pytest.skip("no deepspeed API table loaded")
    checked = 0
    for p, s in _stack_cases(matrix):
        ds = Version(s.pins["deepspeed"])
        for c in p.checks:
            if c.kind != "api_symbol" or not _applies(c.variants, s.variants):
                continue
            rows = [e for e in entries if e.symbol == c.params["symbol"] and (e.param or "") == c.params.get("param", "")]
            for e in rows:
                assert Version(e.first) <= ds, (s.id, c.id, e.first)
                if e.last:
                    assert ds <= Version(e.last), (s.id, c.id, e.last)
                checked += 1
    if not checked:
        pytest.skip("the API table lists none of these symbols yet")


# ------------------------------------------------------------------ known issues


REAL_LINES = [
    ("ImportError: cannot import name 'set_z3_leaf_modules' from 'deepspeed.utils' "
     "(/opt/conda/lib/python3.10/site-packages/deepspeed/utils/__init__.py)", "mgm-set-z3-leaf-import"),
    ("TypeError: MiniGeminiMixtralForCausalLM.forward() got an unexpected keyword argument "
     "'output_router_logits'", "mgm-output-router-logits"),
    ("ModuleNotFoundError: No module named 'open_clip'", "mgm-open-clip-missing"),
    ("You are using a model of type mixtral to instantiate a model of type mgm. This is not supported for "
     "all configurations of models and can yield errors.", "mgm-mixtral-routed-dense"),
    ("ValueError: Not find vision tower: model_zoo/OpenAI/clip-vit-large-patch14-336", "mgm-vision-tower-not-found"),
    ("{'loss': 0.0, 'learning_rate': 1.6877637130801689e-07, 'epoch': 0.0}", "moellava-loss-zero"),
    ("AssertionError: The model has moe layers, but None of the param groups are marked as MoE. Create a "
     "param group with 'moe' key set to True before creating optimizer", "moellava-no-moe-param-groups"),
    ("WARNING: tokenization mismatch: 58 vs. 59. (ignored)", "moellava-tokenization-mismatch"),
    ("AttributeError: 'NoneType' object has no attribute 'all_to_all_single'", "moellava-no-process-group"),
    ("AssertionError: MoE not supported with Stage 3", "moellava-zero3-moe-assert"),
]

UNRELATED_LINES = [
    "{'loss': 2.1559, 'learning_rate': 8.438818565400844e-08, 'epoch': 0.0}",
    "{'loss': 0.0123, 'learning_rate': 2e-05, 'epoch': 0.5}",
    "Saving model checkpoint to ./work_dirs/MGM-8x7B/checkpoint-1000",
    "[INFO] [logging.py:96:log_dist] [Rank 0] DeepSpeed info: version=0.13.5",
    "You are using a model of type mgm_mixtral to instantiate a model of type mgm_mixtral.",
]


# From the 2026-11-22 source audit (compat_matrix/AUDIT.md): each string is printed by the cited code
# (deepspeed sdists 0.13.5/0.15.0 op_builder/builder.py, zero/stage_1_and_2.py; transformers wheels;
# MGM builder.py; flash-attention v2.5.8 setup.py / flash_api.cpp), by Python 3.11 itself, or by real
# pip and uv runs against a local index holding deepspeed 0.15.0 (which requires pydantic>=2.0.0).
AUDIT_REAL_LINES = [
    # uv words the conflict with == and >= (pip uses a space); all three must be explained
    ("  cause: Because deepspeed==0.15.0 depends on pydantic>=2.0.0 and you require deepspeed==0.15.0, we can "
     "conclude that you require pydantic>=2.0.0.", "mgm-deepspeed-pydantic-conflict"),
    ("  cause: Because deepspeed>=0.15.0 depends on pydantic>=2.0.0 and you require deepspeed>=0.15, we can "
     "conclude that you require pydantic>=2.0.0.", "mgm-deepspeed-pydantic-conflict"),
    ("    deepspeed 0.15.0 depends on pydantic>=2.0.0", "mgm-deepspeed-pydantic-conflict"),
    ("You are using a model of type mixtral to instantiate a model of type mini_gemini. This is not supported for "
     "all configurations of models and can yield errors.", "mgm-mixtral-routed-dense"),
    ("Some weights of the model checkpoint at model_zoo/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1 were not used when "
     "initializing MGMLlamaForCausalLM: ['model.layers.0.block_sparse_moe.gate.weight']", "mgm-mixtral-routed-dense"),
    ("TypeError: MGMLlamaForCausalLM.forward() got an unexpected keyword argument 'cache_position'",
     "mgm-cache-position"),
    ("ModuleNotFoundError: No module named 'transformers.deepspeed'", "mgm-transformers-deepspeed-removed"),
    ("ValueError: Unknown vision tower: model_zoo/clip-vit-large-patch14-336", "mgm-vision-tower-unknown"),
    ("\tsize mismatch for 0.weight: copying a param with shape torch.Size([7168, 1024]) from checkpoint, the shape "
     "in current model is torch.Size([0]).", "mgm-zero3-projector-empty"),
    ("ValueError: Your setup doesn't support bf16/gpu. You need torch>=1.10, using Ampere GPU with cuda>=11.0",
     "mgm-bf16-tf32-pre-ampere"),
    ("ValueError: --tf32 requires Ampere or a newer GPU arch, cuda>=11 and torch>=1.7", "mgm-bf16-tf32-pre-ampere"),
    ("RuntimeError: FlashAttention only supports Ampere GPUs or newer.", "mgm-bf16-tf32-pre-ampere"),
    ("RuntimeError: FlashAttention is only supported on CUDA 11.6 and above.  Note: make sure nvcc has a supported "
     "version by running nvcc -V.", "mgm-flash-attn-build-cuda"),
    ("AssertionError: Contiguous Gradients in ZeRO Stage 2 must be set to True for MoE. Other code paths are not "
     "tested with MoE", "moellava-stage2-moe-asserts"),
    ("AssertionError: Reduce Scatter in ZeRO Stage 2 must be set to True for MoE. Other code paths are not tested "
     "with MoE", "moellava-stage2-moe-asserts"),
    ("    return cdb.all_to_all_single(output=output, AttributeError: 'NoneType' object has no attribute "
     "'all_to_all_single'", "moellava-no-process-group"),
    ("TypeError: Trainer._save_checkpoint() takes 3 positional arguments but 4 were given",
     "moellava-save-checkpoint-metrics"),
]

# Harmless look-alikes from the same audit: the patterns of the two projects once matched the first two.
AUDIT_LOOKALIKE_LINES = [
    # deepspeed op_builder/builder.py: a CUDA minor mismatch it accepts, and the DS_SKIP_CUDA_CHECK=1 override
    "Installed CUDA version 12.2 does not match the version torch was compiled with 12.1 but since the APIs are "
    "compatible, accepting this combination",
    "\033[93m [WARNING] \033[0m DeepSpeed Op Builder: Installed CUDA version 12.6 does not match the version torch "
    "was compiled with 12.1.Detected `DS_SKIP_CUDA_CHECK=1`: Allowing this combination of CUDA, but it may result "
    "in unexpected behavior.",
    "    deepspeed 0.14.5 depends on pydantic",  # 0.12.6-0.14.5 accept pydantic 1 and 2
    "Some weights of MGMMixtralForCausalLM were not initialized from the model checkpoint",
]


def _triage_ids(matrix, line):
    """Ids the log triage of `moe-env explain` reports for LINE with the two projects chosen (the
    streaming path: literal prefilter, then the full patterns on the candidate lines)."""
    from moe_env.triage import explain_text

    triage = explain_text(line + "\n", matrix, [_project(matrix, name) for name in PROJECTS], generic=False)
    return sorted(issue_id for _, issue_id in triage.matches)


@pytest.mark.parametrize("line,expected", REAL_LINES + AUDIT_REAL_LINES,
                         ids=[f"{e}-{i}" for i, (_, e) in enumerate(REAL_LINES + AUDIT_REAL_LINES)])
def test_real_error_lines_are_explained(matrix, line, expected):
    assert expected in _triage_ids(matrix, line)


@pytest.mark.parametrize("line", UNRELATED_LINES + AUDIT_LOOKALIKE_LINES,
                         ids=[f"lookalike-{i}" for i in range(len(UNRELATED_LINES + AUDIT_LOOKALIKE_LINES))])
def test_unrelated_lines_match_nothing(matrix, line):
    assert _triage_ids(matrix, line) == []


def test_every_known_issue_of_the_two_projects_has_a_real_line(matrix):
    """A known issue with no real line above is a pattern nobody has seen match."""
    covered = {expected for _, expected in REAL_LINES + AUDIT_REAL_LINES}
    with_patterns = {ki.id for name in PROJECTS for ki in _project(matrix, name).known_issues if ki.patterns}
    assert with_patterns - covered == set()


# ------------------------------------------------------------------ launch rules, judged by check-config's kinds


def _run(matrix, project, argv, deepspeed=None, variant=None, gpus=()):
    rules = pytest.importorskip("moe_env.config_rules")
    p = _project(matrix, project)
    flags, positional = rules.parse_launch(argv)
    variants = [v for v in p.variants if v.id == variant] if variant else p.moe_variants()
    cfg = rules.LaunchConfig(project=p, variants=variants, flags=flags, positional=positional,
                             deepspeed=deepspeed, deepspeed_path="ds.json", gpu_capabilities=list(gpus))
    findings, unknown = rules.run_rules(cfg)
    assert unknown == []
    return {f.id.split(".", 1)[1] for f in findings}


ZERO3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}


def test_mgm_readme_launch_for_8x7b_passes(matrix):
    argv = ["deepspeed", "mgm/train/train_mem.py", "--deepspeed", "./scripts/zero3.json",
            "--model_name_or_path", "model_zoo/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1",
            "--vision_tower", "model_zoo/OpenAI/clip-vit-large-patch14-336",
            "--vision_tower_aux", "model_zoo/OpenAI/openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup",
            "--bf16", "True", "--tf32", "True"]
    assert _run(matrix, "mgm", argv, ZERO3, "8x7b", ["8.0"]) == set()


@pytest.mark.parametrize("path,expected", [
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mgm-model-path-mistral"),
    ("/data/llm/8x7b-instruct", "mgm-model-path-no-mixtral"),
    ("/data/Mixtral-8x7B-Instruct-v0.1", "mgm-model-path-mixtral-case"),
])
def test_mgm_model_paths_that_lose_the_experts(matrix, path, expected):
    got = _run(matrix, "mgm", ["deepspeed", "mgm/train/train_mem.py", "--model_name_or_path", path], None, "8x7b")
    assert expected in got


def test_mgm_zero3_without_gather_and_bf16_on_volta(matrix):
    got = _run(matrix, "mgm", ["deepspeed", "x.py", "--model_name_or_path", "model_zoo/LLM/mixtral/M",
                               "--bf16", "True"], {"zero_optimization": {"stage": 3}}, "8x7b", ["7.0"])
    assert {"mgm-zero3-gather-on-save", "mgm-bf16-sm80"} <= got



# From the audit (AUDIT.md): MGM's inference builder keys on get_model_name_from_path (mm_utils.py:65-71:
# "<parent>_checkpoint-N" for a checkpoint-N folder) containing "mgm" and "8x7b" (builder.py:49-76).
@pytest.mark.parametrize("model_path,flagged", [
    ("work_dirs/MGM-8x7B-HD/checkpoint-2000", False),  # the parent's name counts
    ("work_dirs/MGM-8x7B-HD/checkpoint-2000/", False),
    ("work_dirs/MGM-8x7B-HD", False),
    ("work_dirs/MGM-Mixtral-ft", True),  # no "8x7b": loads as Llama
    ("work_dirs/MGM-Mixtral-ft/checkpoint-2000", True),
    ("work_dirs/Mini-Gemini-8x7B", True),  # no "mgm": skips the MGM loader
])
def test_mgm_inference_folder_name(matrix, model_path, flagged):
    argv = ["python", "-m", "mgm.serve.cli", "--model-path", model_path]
    assert ("mgm-inference-folder-name" in _run(matrix, "mgm", argv, None, "8x7b")) is flagged


# builder.py:14 tests "openai" in any case but "ShareGPT4V" case-sensitively.
@pytest.mark.parametrize("tower,flagged", [
    ("x/sharegpt4v-tower", True),
    ("model_zoo/ShareGPT4V/sharegpt4v-7b", False),
    ("model_zoo/OpenAI/clip-vit-large-patch14-336", False),
    ("model_zoo/openai/clip-vit-large-patch14-336", False),
    ("model_zoo/clip-vit-large-patch14-336", True),
])
def test_mgm_vision_tower_name(matrix, tower, flagged):
    argv = ["deepspeed", "mgm/train/train_mem.py", "--vision_tower", tower]
    assert ("mgm-vision-tower-name" in _run(matrix, "mgm", argv, None, "8x7b")) is flagged

def test_moe_llava_shipped_launch_passes_and_zero3_is_refused(matrix):
    argv = ["deepspeed", "moellava/train/train_mem.py", "--moe_enable", "True", "--train_modules", "fc1", "fc2",
            "wg", "--deepspeed", "./scripts/zero2.json", "--model_name_or_path",
            "./checkpoints/llavaphi-2.7b-finetune", "--bf16", "True"]
    zero2 = {"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}}
    got = _run(matrix, "moe-llava", argv, zero2, None, ["8.0"])
    assert {f for f in got if f != "moellava-overlap-comm"} == set()
    assert "moellava-zero3-moe" in _run(matrix, "moe-llava", argv, {"zero_optimization": {"stage": 3}})


def test_moe_llava_qwen_v1_modules_on_qwen15_and_optimizer_block(matrix):
    argv = ["deepspeed", "t.py", "--moe_enable", "True", "--train_modules", "mlp.w1", "mlp.w2", "mlp.c_proj", "wg",
            "--model_name_or_path", "./checkpoints/llavaqwen1.5-1.8b-finetune", "--ep_size", "3"]
    ds = {"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2, "contiguous_gradients": False}}
    got = _run(matrix, "moe-llava", argv, ds)
    assert {"moellava-train-modules", "moellava-optimizer-block", "moellava-ep-size",
            "moellava-stage2-contiguous-gradients"} <= got
    qwen_v1 = ["deepspeed", "t.py", "--moe_enable", "True", "--train_modules", "mlp.w1", "mlp.w2", "mlp.c_proj", "wg",
               "--model_name_or_path", "./checkpoints/llavaqwen-1.8b-finetune"]
    assert "moellava-train-modules" not in _run(matrix, "moe-llava", qwen_v1)


def test_moe_llava_plain_python_launch_is_flagged(matrix):
    plain = ["python", "moellava/serve/cli.py", "--model-path", "LanguageBind/MoE-LLaVA-Phi2-2.7B-4e"]
    assert "moellava-launcher" in _run(matrix, "moe-llava", plain)
    launched = ["deepspeed", "--include", "localhost:0", "moellava/serve/cli.py", "--model-path", "x"]
    assert "moellava-launcher" not in _run(matrix, "moe-llava", launched)
