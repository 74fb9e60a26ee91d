"""Each check kind and each generic check, judged on Environments (in memory and probed from real venvs)."""

from __future__ import annotations

import pytest

from doctor_support import make_env, write_matrix
from moe_env.checks import GENERIC, KINDS, detect_projects, run_checks
from moe_env.checks.lockfile import lockfile_findings, parse_lockfile
from moe_env.environment import ApiSymbol, DeepSpeedBuild, Extension, normalize_name
from moe_env.errors import UsageError
from moe_env.matrix.loader import load_matrix


@pytest.fixture
def matrix(tmp_path):
    return load_matrix(write_matrix(tmp_path / "matrix"))


def ids(findings):
    return sorted(f.id for f in findings)


def by_id(findings, fid):
    hits = [f for f in findings if f.id == fid]
    assert hits, f"{fid} not in {ids(findings)}"
    return hits[0]


Z3 = "deepspeed.utils.set_z3_leaf_modules"
MOE_INIT = "deepspeed.moe.layer.MoE.__init__"


def good_env(**kw):
    """An environment that satisfies every toy check, so each test breaks exactly one thing."""
    base = dict(
        dists={"deepspeed": "0.14.4", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8", "toyproj-dist": "1.0"},
        torch="2.1.2+cu121", torch_cuda="12.1",
        deepspeed=DeepSpeedBuild(version="0.14.4", build_info_found=True, built_torch="2.1", built_cuda="12.1",
                                 installed_ops={"fused_adam": False}),
        api=[ApiSymbol(symbol=Z3, found=True, kind="function"),
             ApiSymbol(symbol=MOE_INIT, found=True, kind="function", params=["self", "hidden_size", "top2_2nd_expert_sampling"])],
        gpus=["NVIDIA A100-SXM4-80GB:8.0"], driver="535.104.05", nvcc="12.1",
    )
    base.update(kw)
    return make_env(**base)


def test_registries_hold_the_documented_kinds():
    assert {"version_bound", "requires", "api_symbol", "python", "gpu_capability", "torch_cuda", "absent"} <= set(KINDS)
    assert {"torch-driver", "torch-gpu-arch", "nvcc-torch-cuda", "deepspeed-build", "requirements",
            "conflicts", "bf16-gpu"} <= set(GENERIC)


def test_good_environment_has_no_findings(matrix):
    findings = run_checks(good_env(), matrix, "toyproj")
    assert findings == []


# ---------------------------------------------------------------- project kinds


def test_version_bound_too_old_and_required_absent(matrix):
    old = good_env(dists={"deepspeed": "0.12.6", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"},
                   deepspeed=None)
    f = by_id(run_checks(old, matrix, "toyproj"), "toyproj.deepspeed-bound")
    assert f.severity == "error" and "0.12.6" in f.seen and ">=0.13.0" in f.seen
    gone = good_env(dists={"nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None, api=[])
    f = by_id(run_checks(gone, matrix, "toyproj"), "toyproj.deepspeed-bound")
    assert "not installed" in f.seen


def test_version_bound_only_for_its_variant(matrix):
    old = good_env(dists={"deepspeed": "0.12.6", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None)
    assert "toyproj.deepspeed-bound" not in ids(run_checks(old, matrix, "toyproj", ["7b"]))
    assert "toyproj.deepspeed-bound" in ids(run_checks(old, matrix, "toyproj", ["8x7b"]))


def test_version_bound_with_unreadable_version_is_not_silent(matrix):
    env = good_env(dists={"deepspeed": "not-a-version", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None)
    f = by_id(run_checks(env, matrix, "toyproj"), "toyproj.deepspeed-bound")
    assert f.severity == "warning" and "cannot be read" in f.seen


def test_prerelease_and_local_versions_are_judged(matrix):
    env = good_env(dists={"deepspeed": "0.13.1a0+git1234", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None)
    assert "toyproj.deepspeed-bound" not in ids(run_checks(env, matrix, "toyproj"))
    env = good_env(dists={"deepspeed": "0.13.0a0+git1234", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None)
    assert "toyproj.deepspeed-bound" in ids(run_checks(env, matrix, "toyproj"))  # a pre-release sorts before 0.13.0
    env = good_env(dists={"deepspeed": "0.0.0", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None)
    assert "toyproj.deepspeed-bound" in ids(run_checks(env, matrix, "toyproj"))


def test_api_symbol_missing_cites_the_api_table(matrix):
    env = good_env(api=[ApiSymbol(symbol=Z3, found=False, error="no name 'set_z3_leaf_modules' in deepspeed/utils/__init__.py"),
                        ApiSymbol(symbol=MOE_INIT, found=True, params=["self", "top2_2nd_expert_sampling"])])
    f = by_id(run_checks(env, matrix, "toyproj"), "toyproj.z3-leaf")
    assert f.severity == "error"
    assert "deepspeed 0.14.4" in f.seen and Z3 in f.seen
    assert "deepspeed >= 0.13.0" in f.fix
    assert "release:deepspeed==0.13.0:deepspeed/utils/__init__.py" in f.sources
    assert "example/toyproj@0123456:train.py:11" in f.sources


def test_api_symbol_missing_parameter(matrix):
    env = good_env(api=[ApiSymbol(symbol=Z3, found=True),
                        ApiSymbol(symbol=MOE_INIT, found=True, params=["self", "hidden_size"], file="deepspeed/moe/layer.py", line=20)])
    f = by_id(run_checks(env, matrix, "toyproj"), "toyproj.moe-param")
    assert "top2_2nd_expert_sampling" in f.seen and "deepspeed/moe/layer.py:20" in f.seen
    assert "0.14.0" in f.fix


def test_api_symbol_not_probed_is_info_and_absent_package_is_skipped(matrix):
    env = good_env(api=[ApiSymbol(symbol=MOE_INIT, found=True, params=["top2_2nd_expert_sampling"])])
    f = by_id(run_checks(env, matrix, "toyproj"), "toyproj.z3-leaf")
    assert f.severity == "info"
    no_ds = good_env(dists={"nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8"}, deepspeed=None, api=[])
    assert "toyproj.z3-leaf" not in ids(run_checks(no_ds, matrix, "toyproj"))


def test_requires_any_of_accepts_any_provider(matrix):
    for provider in ("grouped_gemm", "nv-grouped-gemm", "grouped-gemm"):
        env = good_env(dists={"deepspeed": "0.14.4", "flash-attn": "2.5.8", provider: "1.0"})
        assert "toyproj.needs-gg" not in ids(run_checks(env, matrix, "toyproj")), provider
    env = good_env(dists={"deepspeed": "0.14.4", "flash-attn": "2.5.8"})
    assert "toyproj.needs-gg" in ids(run_checks(env, matrix, "toyproj"))
    ext = Extension(key="grouped_gemm", present=True, version="1.1.4", distribution="nv_grouped_gemm")
    env = good_env(dists={"deepspeed": "0.14.4", "flash-attn": "2.5.8"}, extensions=[ext])
    assert "toyproj.needs-gg" not in ids(run_checks(env, matrix, "toyproj"))


def test_python_kind(matrix):
    f = by_id(run_checks(good_env(python="3.8.18"), matrix, "toyproj"), "toyproj.py")
    assert "3.8.18" in f.seen and ">=3.9" in f.seen
    assert "toyproj.py" not in ids(run_checks(good_env(python="3.14.0"), matrix, "toyproj"))


def test_torch_cuda_kind(matrix):
    f = by_id(run_checks(good_env(torch="2.1.2+cpu", torch_cuda=None), matrix, "toyproj"), "toyproj.cu")
    assert "without CUDA" in f.seen
    f = by_id(run_checks(good_env(torch="2.1.2+cu118", torch_cuda="11.8"), matrix, "toyproj"), "toyproj.cu")
    assert "11.8" in f.seen


def test_absent_kind(matrix):
    env = good_env(dists={"deepspeed": "0.14.4", "nv-grouped-gemm": "1.1.4", "flash-attn": "2.5.8", "apex": "0.1"})
    assert "apex 0.1" in by_id(run_checks(env, matrix, "toyproj"), "toyproj.no-apex").seen


def test_gpu_capability_kind_and_deferral(matrix):
    f = by_id(run_checks(good_env(gpus=["Tesla T4:7.5"] * 2), matrix, "toyproj"), "toyproj.sm80")
    assert "2x Tesla T4 (sm_75)" in f.seen and not f.deferred
    # capability from the matrix's [[gpu]] table when the probe gave only a name
    f = by_id(run_checks(good_env(gpus=["Tesla T4"]), matrix, "toyproj"), "toyproj.sm80")
    assert "sm_75" in f.seen
    f = by_id(run_checks(good_env(gpus=[], driver=None, build_mode=True), matrix, "toyproj"), "toyproj.sm80")
    assert f.deferred
    # the project's own check replaces the generic bf16 one (no double report)
    assert "gpu.bf16-unsupported" not in ids(run_checks(good_env(gpus=["Tesla T4:7.5"]), matrix, "toyproj"))


def test_unknown_kind_is_a_warning_not_a_crash(tmp_path):
    root = write_matrix(tmp_path / "m")
    text = (root / "projects" / "toyproj.toml").read_text().replace('kind = "absent"', 'kind = "no_such_kind"')
    (root / "projects" / "toyproj.toml").write_text(text)
    f = by_id(run_checks(good_env(), load_matrix(root), "toyproj"), "toyproj.no-apex")
    assert f.severity == "warning" and "no_such_kind" in f.title


def test_unknown_project_and_variant_are_usage_errors(matrix):
    with pytest.raises(UsageError, match="unknown project 'nope'"):
        run_checks(good_env(), matrix, "nope")
    with pytest.raises(UsageError, match="no model variant '99b'.*8x7b"):
        run_checks(good_env(), matrix, "toyproj", ["99b"])
    assert run_checks(good_env(), matrix, "toy") == []  # alias


# ---------------------------------------------------------------- project detection


def test_detect_project_from_distributions(tmp_path):
    matrix = load_matrix(write_matrix(tmp_path / "m", with_other=True))
    env = good_env()
    assert [p.name for p, _ in detect_projects(env, matrix)] == ["toyproj"]
    old = good_env(dists={"deepspeed": "0.12.6", "toyproj-dist": "1.0"}, deepspeed=None)
    assert "toyproj.deepspeed-bound" in ids(run_checks(old, matrix))  # detected without naming it
    # without a detect list the project's name is the distribution name
    both = good_env(dists={"toyproj-dist": "1", "otherproj": "1"})
    assert sorted(p.name for p, _ in detect_projects(both, matrix)) == ["otherproj", "toyproj"]
    nothing = good_env(dists={"deepspeed": "0.12.6"}, deepspeed=None)
    assert detect_projects(nothing, matrix) == []
    assert all(not f.id.startswith("toyproj.") for f in run_checks(nothing, matrix))


# ---------------------------------------------------------------- generic: driver


def test_driver_too_old_for_torch_cuda(matrix):
    f = by_id(run_checks(good_env(driver="520.61.05"), matrix), "torch.driver-too-old")
    assert f.severity == "error" and "530.30.02" in f.seen and "525.60.13" in f.seen
    assert any("docs.nvidia.com" in s for s in f.sources)


def test_driver_minor_version_compat_is_a_warning(matrix):
    f = by_id(run_checks(good_env(driver="525.85.12"), matrix), "torch.driver-minor-compat")
    assert f.severity == "warning"
    assert "torch.driver-too-old" not in ids(run_checks(good_env(driver="525.85.12"), matrix))


def test_driver_new_enough_and_cpu_torch_pass(matrix):
    assert not [f for f in run_checks(good_env(driver="530.30.02"), matrix) if f.id.startswith("torch.driver")]
    assert not [f for f in run_checks(good_env(torch="2.1.2+cpu", torch_cuda=None, driver="400.1"), matrix)
                if f.id.startswith("torch.driver")]


def test_driver_cuda13_needs_580(matrix):
    env = good_env(torch="2.13.0+cu130", torch_cuda="13.0", driver="570.124.06", deepspeed=None,
                   dists={"flash-attn": "2.8.3"})
    assert "torch.driver-too-old" in ids(run_checks(env, matrix))


def test_driver_missing_is_deferred_in_build_mode_and_a_note_otherwise(matrix):
    f = by_id(run_checks(good_env(driver=None, gpus=[], build_mode=True), matrix), "host.driver-deferred")
    assert f.deferred
    f = by_id(run_checks(good_env(driver=None, gpus=[]), matrix), "host.no-driver")
    assert f.severity == "info" and not f.deferred


# ---------------------------------------------------------------- generic: GPU architecture


def test_gpu_arch_not_in_torch_build(matrix):
    env = good_env(gpus=["NVIDIA GeForce RTX 5090:12.0"])
    f = by_id(run_checks(env, matrix), "torch.gpu-arch-missing")
    assert "sm_120" in f.seen and "sm_90" in f.seen
    assert "pytorch/pytorch@v2.8.0:.ci/manywheel/build_cuda.sh" in f.sources


def test_gpu_arch_binary_compat_and_ptx(matrix):
    # sm_89 runs sm_86 SASS (same major); sm_120 PTX covers newer GPUs on the cu130 build
    assert "torch.gpu-arch-missing" not in ids(run_checks(good_env(gpus=["NVIDIA L4:8.9"]), matrix))
    cu130 = dict(torch="2.13.0+cu130", torch_cuda="13.0", driver="580.95.05", deepspeed=None, dists={}, nvcc="13.0")
    assert "torch.gpu-arch-missing" not in ids(run_checks(good_env(gpus=["future:12.1"], **cu130), matrix))
    f = by_id(run_checks(good_env(gpus=["Tesla P100:6.0"], **cu130), matrix), "torch.gpu-arch-missing")
    assert "sm_60" in f.seen


def test_gpu_arch_deferred_in_build_mode(matrix):
    f = by_id(run_checks(good_env(gpus=[], build_mode=True), matrix), "host.gpu-deferred")
    assert f.deferred


# ---------------------------------------------------------------- generic: nvcc vs torch CUDA


def test_nvcc_major_mismatch_when_deepspeed_must_jit(matrix):
    f = by_id(run_checks(good_env(nvcc="11.8"), matrix), "build.nvcc-cuda-major-mismatch")
    assert "11.8" in f.seen and "12.1" in f.seen and "no pre-built ops" in f.seen
    assert f.severity == "error"


def test_nvcc_mismatch_ignored_when_nothing_compiles(matrix):
    prebuilt = DeepSpeedBuild(version="0.14.4", build_info_found=True, built_torch="2.1", built_cuda="12.1",
                              installed_ops={"fused_adam": True})
    env = good_env(nvcc="11.8", deepspeed=prebuilt)
    assert not [f for f in run_checks(env, matrix, "toyproj") if f.id.startswith("build.nvcc")]


def test_nvcc_needed_for_absent_flash_attn_and_missing_nvcc(matrix):
    prebuilt = DeepSpeedBuild(version="0.14.4", build_info_found=True, built_torch="2.1", built_cuda="12.1",
                              installed_ops={"fused_adam": True})
    env = good_env(dists={"deepspeed": "0.14.4", "nv-grouped-gemm": "1"}, deepspeed=prebuilt, nvcc=None)
    f = by_id(run_checks(env, matrix, "toyproj"), "build.nvcc-missing")
    assert "flash-attn is not installed" in f.seen
    assert "build.nvcc-missing" not in ids(run_checks(env, matrix))  # no project: nothing says flash-attn is needed


def test_nvcc_minor_mismatch_is_info(matrix):
    f = by_id(run_checks(good_env(nvcc="12.4"), matrix), "build.nvcc-cuda-minor-mismatch")
    assert f.severity == "info"


# ---------------------------------------------------------------- generic: deepspeed build


def test_deepspeed_built_against_other_torch_and_cuda(matrix):
    ds = DeepSpeedBuild(version="0.14.4", build_info_found=True, built_torch="2.0", built_cuda="11.8",
                        installed_ops={"fused_adam": True, "cpu_adam": False})
    findings = run_checks(good_env(deepspeed=ds), matrix)
    f = by_id(findings, "deepspeed.built-for-other-torch")
    assert "torch 2.0" in f.seen and "2.1.2+cu121" in f.seen and "fused_adam" in f.seen
    assert "CUDA 11.8" in by_id(findings, "deepspeed.built-for-other-cuda").seen


def test_deepspeed_build_info_without_prebuilt_ops_or_isolated_build_passes(matrix):
    for ds in (DeepSpeedBuild(version="0.14.4", build_info_found=True, built_torch="2.0", built_cuda="11.8",
                              installed_ops={"fused_adam": False}),
               DeepSpeedBuild(version="0.14.4", build_info_found=True, built_torch="0.0", built_cuda="0.0",
                              installed_ops={"fused_adam": True})):
        assert not [f for f in run_checks(good_env(deepspeed=ds), matrix) if f.id.startswith("deepspeed.built")]


# ---------------------------------------------------------------- generic: distributions


def test_numpy2_with_old_torch_from_conflict_table(matrix):
    env = good_env(dists={"numpy": "2.1.3", "deepspeed": "0.14.4"})
    f = by_id(run_checks(env, matrix), "numpy2-old-torch")
    assert f.severity == "error" and "numpy 2.1.3" in f.seen and "pytorch/pytorch#132179" in f.sources
    ok = good_env(dists={"numpy": "1.26.4", "deepspeed": "0.14.4"})
    assert "numpy2-old-torch" not in ids(run_checks(ok, matrix))
    new = good_env(dists={"numpy": "2.1.3"}, torch="2.4.1+cu121", torch_cuda="12.1", deepspeed=None)
    assert "numpy2-old-torch" not in ids(run_checks(new, matrix))


def test_unsatisfied_requirements_like_pip_check(matrix):
    env = good_env(
        dists={"deepspeed": "0.10.0", "pydantic": "2.5.3", "transformers": "4.36.2", "accelerate": "0.21.0"},
        requires={
            "deepspeed": ["pydantic<2.0.0", "hjson", "torch"],
            "transformers": ["tokenizers<0.19,>=0.14", "numpy>=1.17; extra == 'torch'"],
            "accelerate": ["torch>=1.10.0", "importlib-metadata; python_version < '3.8'", "tomli; python_version < '3.11'"],
        },
        deepspeed=None,
    )
    findings = run_checks(env, matrix)
    conflicts = [f for f in findings if f.id == "deps.conflict"]
    missing = sorted(f.seen for f in findings if f.id == "deps.missing")
    assert [f.seen for f in conflicts] == ["deepspeed 0.10.0 requires pydantic<2.0.0, but pydantic 2.5.3 is installed"]
    # hjson and tokenizers are missing; numpy only with the torch extra; the 3.8 marker is false for 3.10,
    # the 3.11 one true (markers judged for the target Python, not the one running the tests)
    assert sorted(s.split(" requires ")[1].split(",")[0] for s in missing) == ["hjson", "tokenizers<0.19", "tomli"]
    assert not any("torch>=1.10.0" in f.seen for f in findings)  # local version 2.1.2+cu121 satisfies it


def test_target_python_decides_markers(matrix):
    env = good_env(dists={"accelerate": "0.21.0"}, requires={"accelerate": ["tomli; python_version < '3.11'"]},
                   python="3.12.1", deepspeed=None)
    assert "deps.missing" not in ids(run_checks(env, matrix))


def test_broken_metadata_is_reported(matrix):
    env = good_env()
    env.distributions["deepspeed"].metadata_error = "METADATA missing"
    f = by_id(run_checks(env, matrix), "dist.metadata-unreadable")
    assert "METADATA missing" in f.seen


# ---------------------------------------------------------------- generic: bf16


def test_bf16_generic_check_without_project_rule(tmp_path):
    root = write_matrix(tmp_path / "m")
    text = (root / "projects" / "toyproj.toml").read_text()
    text = text.replace('kind = "gpu_capability"', 'kind = "absent"').replace('params = { min = "8.0" }', 'params = { package = "x" }')
    (root / "projects" / "toyproj.toml").write_text(text)
    matrix = load_matrix(root)
    f = by_id(run_checks(good_env(gpus=["Tesla V100-SXM2-32GB:7.0"]), matrix, "toyproj", ["8x7b"]), "gpu.bf16-unsupported")
    assert "sm_70" in f.seen and "8x7b" in f.seen
    assert "gpu.bf16-unsupported" not in ids(run_checks(good_env(gpus=["Tesla V100:7.0"]), matrix, "toyproj", ["7b"]))
    f = by_id(run_checks(good_env(gpus=[], driver=None, build_mode=True), matrix, "toyproj", ["8x7b"]), "gpu.bf16-deferred")
    assert f.deferred


# ---------------------------------------------------------------- lockfile


LOCK = """\
# generated by moe-env lock
--index-url https://example.invalid/simple
deepspeed==0.14.4 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via -r requirements.in
torch==2.1.2 \\
    --hash=sha256:cccc
tomli==2.0.1 ; python_version < "3.11" \\
    --hash=sha256:dddd
exceptiongroup==1.2.0 ; python_version < "3.9"
pydantic==1.10.13
"""


def test_lockfile_missing_extra_and_other_version():
    lock = parse_lockfile(LOCK, "requirements.lock")
    assert sorted(lock.pins) == ["deepspeed", "exceptiongroup", "pydantic", "tomli", "torch"]
    env = make_env(dists={"deepspeed": "0.14.4", "pydantic": "2.5.3", "hjson": "3.1.0", "pip": "24.0"},
                   torch="2.1.2+cu121", torch_cuda="12.1", python="3.10.14")
    findings = lockfile_findings(env, lock)
    assert sorted((f.id, f.title.split(":")[0]) for f in findings) == [
        ("lock.extra", "hjson"), ("lock.missing", "tomli"), ("lock.version", "pydantic")]
    assert "requirements.lock:12" in by_id(findings, "lock.version").seen
    # torch==2.1.2 accepts 2.1.2+cu121 (as pip does); exceptiongroup's marker is false on 3.10


def test_lockfile_bad_lines_are_usage_errors():
    with pytest.raises(UsageError, match=r"lock.txt:2: not a requirement line"):
        parse_lockfile("torch==2.1.2\n!!!garbage\n", "lock.txt")
    with pytest.raises(UsageError, match="no pinned requirements"):
        parse_lockfile("# nothing\n", "lock.txt")


# ---------------------------------------------------------------- the generic checks on the shipped platform tables


@pytest.fixture
def shipped():
    return load_matrix()


def test_shipped_driver_facts_judge_torch_cuda(shipped):
    old = make_env(torch="2.1.2+cu121", torch_cuda="12.1", driver="520.61.05", gpus=["NVIDIA A100-SXM4-80GB:8.0"])
    f = by_id(run_checks(old, shipped), "torch.driver-too-old")
    assert "530.30.02" in f.seen and any(s.startswith("https://docs.nvidia.com/") for s in f.sources)
    compat = make_env(torch="2.1.2+cu121", torch_cuda="12.1", driver="525.85.12", gpus=["NVIDIA A100-SXM4-80GB:8.0"])
    assert "torch.driver-minor-compat" in ids(run_checks(compat, shipped))
    cu130 = make_env(torch="2.13.0+cu130", torch_cuda="13.0", driver="570.124.06", gpus=["NVIDIA H100 80GB HBM3:9.0"])
    assert "torch.driver-too-old" in ids(run_checks(cu130, shipped))
    ok = make_env(torch="2.13.0+cu130", torch_cuda="13.0", driver="580.95.05", gpus=["NVIDIA H100 80GB HBM3:9.0"])
    assert not [f for f in run_checks(ok, shipped) if f.id.startswith("torch.")]


def test_shipped_arch_facts_judge_gpus(shipped):
    blackwell_on_cu121 = make_env(torch="2.1.2+cu121", torch_cuda="12.1", driver="575.51.03",
                                  gpus=["NVIDIA GeForce RTX 5090:12.0"])
    f = by_id(run_checks(blackwell_on_cu121, shipped), "torch.gpu-arch-missing")
    assert "sm_120" in f.seen and f.sources
    # a T4 named without its capability: the [[gpu]] table supplies 7.5, which cu121 carries
    t4 = make_env(torch="2.1.2+cu121", torch_cuda="12.1", driver="535.104.05", gpus=["Tesla T4"])
    assert "torch.gpu-arch-missing" not in ids(run_checks(t4, shipped))


def test_symbols_needed_are_the_projects_api_checks(tmp_path):
    from moe_env.checks import symbols_needed

    matrix = load_matrix(write_matrix(tmp_path / "m", with_other=True))
    assert symbols_needed(matrix, matrix.project("toyproj")) == [MOE_INIT, Z3]
    assert symbols_needed(matrix, matrix.project("otherproj")) == []
    assert symbols_needed(matrix) == [MOE_INIT, Z3]  # every project's, for detection and --from-json


def test_gpu_memory_below_the_variants_recipe(tmp_path):
    root = write_matrix(tmp_path / "m")
    text = (root / "projects" / "toyproj.toml").read_text().replace('bf16 = true\n', 'bf16 = true\nmin_gpu_memory_gib = 80\n', 1)
    (root / "projects" / "toyproj.toml").write_text(text)
    matrix = load_matrix(root)
    env = good_env()
    env.host.gpus[0].memory_mib = 40960
    f = by_id(run_checks(env, matrix, "toyproj", ["8x7b"]), "gpu.memory-below-recipe")
    assert "40 GiB" in f.seen and "8x7b (80 GiB)" in f.seen and f.severity == "warning"
    env.host.gpus[0].memory_mib = 81559  # an "80 GB" A100 as nvidia-smi reports it
    assert "gpu.memory-below-recipe" not in ids(run_checks(env, matrix, "toyproj", ["8x7b"]))
    assert "gpu.memory-below-recipe" not in ids(run_checks(good_env(), matrix, "toyproj", ["8x7b"]))  # memory unknown


def test_two_distributions_with_one_import_name(matrix):
    ext = Extension(key="grouped_gemm", present=True, distribution="nv_grouped_gemm", version="1.1.4.post8",
                    import_name="grouped_gemm", providers=["nv_grouped_gemm", "grouped_gemm"])
    f = by_id(run_checks(good_env(extensions=[ext]), matrix), "dist.import-name-collision")
    assert "nv_grouped_gemm, grouped_gemm" in f.seen and f.severity == "warning"
    ext.providers = ["nv_grouped_gemm"]
    assert "dist.import-name-collision" not in ids(run_checks(good_env(extensions=[ext]), matrix))


def test_lockfile_source_builds_named_in_moe_env_header():
    text = ("# then install with build steps (not in this file): flash-attn==2.5.8, nv-grouped-gemm==1.1.4.post8; run `moe-env build-steps x`\n"
            "torch==2.1.2 \\\n    --hash=sha256:00\n")
    lock = parse_lockfile(text, "requirements.txt")
    assert sorted(lock.source_builds) == ["flash-attn", "nv-grouped-gemm"]
    env = make_env(dists={"flash-attn": "2.5.8"}, torch="2.1.2+cu121", torch_cuda="12.1")
    assert lockfile_findings(env, lock) == []  # built afterwards: neither extra nor (when absent) missing
    env = make_env(dists={"flash-attn": "2.6.3"}, torch="2.1.2+cu121", torch_cuda="12.1")
    assert [f.id for f in lockfile_findings(env, lock)] == ["lock.version"]


def test_shipped_lockfiles_parse():
    from pathlib import Path

    from moe_env.paths import lockfiles_root

    files = sorted(Path(lockfiles_root()).glob("*/*/requirements.txt"))
    assert files, f"no shipped lockfiles under {lockfiles_root()}"
    for f in files:
        lock = parse_lockfile(f.read_text(), str(f))
        assert lock.pins and all(p.requirement.specifier for p in lock.pins.values()), f


def test_release_rows_add_runtime_requirements_metadata_does_not_enforce(tmp_path):
    root = write_matrix(tmp_path / "m")
    (root / "packages" / "transformers.toml").write_text(
        'package = "transformers"\n\n[[release]]\nversion = "4.36.2"\n'
        'requires = { torch = "!=1.12.0,>=1.10", accelerate = ">=0.21.0", tokenizers = "<0.19,>=0.14" }\n'
        'source = ["release:transformers==4.36.2:METADATA"]\n')
    matrix = load_matrix(root)
    env = make_env(dists={"transformers": "4.36.2", "accelerate": "0.20.3", "tokenizers": "0.13.0"},
                   requires={"transformers": ["tokenizers<0.19,>=0.14", "accelerate>=0.21.0; extra == 'torch'"]},
                   torch="2.1.2+cu121", torch_cuda="12.1")
    findings = run_checks(env, matrix)
    rel = [f for f in findings if f.id == "release.requirement"]
    assert [f.title for f in rel] == ["transformers 4.36.2 wants accelerate>=0.21.0; accelerate 0.20.3 is installed"]
    assert rel[0].sources == ["release:transformers==4.36.2:METADATA"]
    # tokenizers is in Requires-Dist: reported once, by the pip-check-like check, not twice
    assert [f.id for f in findings if "tokenizers" in f.seen] == ["deps.conflict"]
    ok = make_env(dists={"transformers": "4.36.2+local", "accelerate": "0.21.0"}, torch="2.1.2+cu121", torch_cuda="12.1")
    assert "release.requirement" not in ids(run_checks(ok, matrix))


# ---------------------------------------------------------------- the Requires-Dist fast path agrees with packaging

REQUIRES_LINES = [
    "numpy", "torch>=1.10.0", "foo (>=1.0,<2)", "bar[x,y]>=1;python_version<\"3.8\"", "tokenizers<0.24.0,>=0.23.1",
    'baz ; platform_machine == "x86_64" and (sys_platform == "linux" or os_name=="nt")',
    "q; python_full_version >= '3.11.2'", "r>=1.0.0.dev0", "s==1.*", "t; 'linux' in sys_platform",
    "u; extra == 'x' or python_version >= '3'", "v; implementation_name != 'pypy'",
    "w; platform_python_implementation=='CPython'", "x; python_version > '3.10.0' and python_version<='3.12'",
    "y@ https://example.invalid/y.whl", "z>=1,", "zz; python_version ~= '3.11'", "huggingface_hub>=0.20 ; python_version >= '3.8'",
    "nvidia-nccl-cu12==2.21.5; platform_system == \"Linux\" and platform_machine == \"x86_64\"",
    "a; python_version in '3.10 3.11'", "b; '3.8' < python_version", "c; platform_release >= '5'", "d ; os_name == 'posix' or",
    "e; unknown_var == '1'", "f !=1.0 , >0.5", "g; (python_version >= '3.8')", "h[extra]", "-bad", "i; sys_platform < 'm'",
]


@pytest.mark.parametrize("python", ["3.8.18", "3.11.7", "3.13.1"])
def test_requirement_fast_path_reads_lines_as_packaging_does(python):
    from packaging.requirements import InvalidRequirement, Requirement

    from moe_env.checks import requirements as fast
    from moe_env.checks.facts import marker_environment

    env = marker_environment(make_env(python=python))
    for line in REQUIRES_LINES:
        try:
            want = Requirement(line)
        except InvalidRequirement:
            # never judged: either unparsed, or (a broken marker after a good name) a marker that cannot be judged
            try:
                got = fast.parse(line)
            except fast.Unparsed:
                continue
            assert got.marker is not None and fast.evaluate(got.marker, env) is None, line
            continue
        got = fast.parse(line)
        assert (normalize_name(got.name), got.specifier) == (normalize_name(want.name), str(want.specifier)), line
        if want.marker is None:
            assert got.marker is None, line
            continue
        try:
            expected = want.marker.evaluate(dict(env))
        except Exception:
            expected = None
        assert fast.evaluate(got.marker, env) == expected, line
