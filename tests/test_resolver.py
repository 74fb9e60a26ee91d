"""The resolver: which known-good stack, which CUDA build, and why (a matrix the tests write)."""

from types import SimpleNamespace

import pytest

from lock_support import write_matrix
from moe_env.environment import GPU, HostInfo
from moe_env.errors import UsageError
from moe_env.lock.host import parse_gpus
from moe_env.matrix.loader import load_matrix
from moe_env.resolver import arch_runs, parse_archs, resolve


@pytest.fixture
def matrix(tmp_path):
    return load_matrix(write_matrix(tmp_path / "matrix"))


def host(driver=None, ccs=()):
    gpus = [GPU(index=i, name=f"gpu{i}", compute_capability=cc) for i, cc in enumerate(ccs)]
    return SimpleNamespace(host=HostInfo(driver_version=driver, gpus=gpus))


def test_default_is_the_stack_as_shipped(matrix):
    r = resolve(matrix, "toy")
    assert r.project.name == "toymoe" and r.stack.id == "toy-8x7b-cu121"
    assert (r.target.cuda, r.target.python, r.target.torch, r.target.torch_index) == ("12.1", "3.11", "2.1.2", "")
    assert r.native
    assert "the fixture's known-good set" in r.reasons[0]


def test_variant_by_id_picks_its_stack(matrix):
    r = resolve(matrix, "toymoe", variant="new")
    assert r.stack.id == "toy-new-cu128" and r.variant.id == "new"
    assert r.target.glibc == "2.28" and r.target.cxx11_abi is True


def test_unknown_project_and_variant_are_usage_errors(matrix):
    with pytest.raises(UsageError, match=r"unknown project 'nope' \(known: toymoe\)"):
        resolve(matrix, "nope")
    with pytest.raises(UsageError, match=r"unknown model variant '9x9b' \(variants: 8x7b, new, dense\)"):
        resolve(matrix, "toy", variant="9x9b")
    with pytest.raises(UsageError, match="no known-good stack in the matrix for variant dense"):
        resolve(matrix, "toy", variant="dense")


def test_other_cuda_build_retargets_torch_to_the_pytorch_index(matrix):
    r = resolve(matrix, "toy", cuda="11.8")
    assert r.stack.id == "toy-8x7b-cu121"
    assert (r.target.torch, r.target.torch_index) == ("2.1.2+cu118", "cu118")
    assert not r.native
    assert any("retargeted from the stack's CUDA 12.1 to 11.8" in x for x in r.reasons)


@pytest.mark.parametrize("cuda, message", [
    ("99.9", "no torch build for CUDA 99.9 is known"),
    ("12", "expected X.Y"),
    ("12.9", "torch 2.1.2 has no CUDA 12.9 build"),
])
def test_bad_cuda(matrix, cuda, message):
    with pytest.raises(UsageError, match=message):
        resolve(matrix, "toy", cuda=cuda)


def test_python_the_stack_cannot_run(matrix):
    with pytest.raises(UsageError, match=r"no known-good toymoe stack runs on Python 3.13"):
        resolve(matrix, "toy", python="3.13")
    with pytest.raises(UsageError, match="expected a CPython minor"):
        resolve(matrix, "toy", python="three")
    r = resolve(matrix, "toy", python="3.10")  # torch 2.1 has cp310 wheels: allowed, not native
    assert r.target.python == "3.10" and not r.native


def test_auto_keeps_the_stack_build_when_the_driver_runs_it(matrix):
    r = resolve(matrix, "toy", cuda="auto", env=host("535.104.05", ["8.0"] * 8))
    assert r.target.cuda == "12.1" and r.native and r.target.cuda_from == "auto"
    assert r.target.gpu_archs == ["8.0"]


def test_auto_minor_version_compatibility(matrix):
    r = resolve(matrix, "toy", cuda="auto", env=host("525.85.12", ["8.0"]))
    assert r.target.cuda == "12.1"
    assert any("minor-version compatibility" in x for x in r.reasons)


def test_auto_old_driver_falls_back_to_cuda_11(matrix):
    r = resolve(matrix, "toy", cuda="auto", env=host("515.65.01", ["8.0"]))
    assert (r.target.cuda, r.target.torch) == ("11.8", "2.1.2+cu118")
    assert any("driver 515.65.01 < 525.60.13" in x for x in r.reasons)


def test_auto_pascal_avoids_a_build_without_sm_61(matrix):
    r = resolve(matrix, "toy", variant="new", cuda="auto", env=host("580.65.06", ["6.1"]))
    assert (r.target.cuda, r.target.torch, r.target.torch_index) == ("12.6", "2.8.0+cu126", "cu126")
    assert any("has no kernels for sm_61" in x for x in r.reasons)


def test_auto_blackwell_needs_cu128(matrix):
    r = resolve(matrix, "toy", variant="new", cuda="auto", env=host("580.65.06", ["12.0"]))
    assert r.target.cuda == "12.8" and r.native
    with pytest.raises(UsageError, match="has no kernels for sm_120"):
        resolve(matrix, "toy", cuda="auto", env=host("580.65.06", ["12.0"]))


def test_auto_blackwell_with_a_driver_too_old_for_cu128(matrix):
    # 12.8 needs 570.26; minor-version compatibility (525.60.13) lets cu128 run on 560
    r = resolve(matrix, "toy", variant="new", cuda="auto", env=host("560.35.03", ["12.0"]))
    assert r.target.cuda == "12.8"
    assert any("minor-version compatibility" in x for x in r.reasons)
    with pytest.raises(UsageError, match="driver 520.61.05 < 525.60.13"):
        resolve(matrix, "toy", variant="new", cuda="auto", env=host("520.61.05", ["12.0"]))


def test_gpu_arch_flag_overrides_the_host(matrix):
    r = resolve(matrix, "toy", variant="new", cuda="auto", env=host("580.65.06", ["9.0"]), gpu_archs=["sm_61"])
    assert r.target.cuda == "12.6" and r.target.gpu_archs == ["6.1"]


def test_auto_without_a_driver_keeps_the_stack_build(matrix):
    r = resolve(matrix, "toy", cuda="auto", env=host(None, []))
    assert r.target.cuda == "12.1"
    assert any("no NVIDIA driver found" in x for x in r.reasons)
    with pytest.raises(UsageError, match="--cuda auto needs the host"):
        resolve(matrix, "toy", cuda="auto", env=None)


def test_bf16_recipe_on_volta_is_flagged(matrix):
    r = resolve(matrix, "toy", variant="8x7b", gpu_archs=["7.0"])
    assert any("bf16" in x for x in r.reasons)


@pytest.mark.parametrize("gpu, archs, ptx, runs", [
    ("8.9", ["8.0", "8.6"], "", True),  # same major, newer minor runs older SASS
    ("8.0", ["8.6"], "", False),  # not the other way round
    ("6.1", ["7.0", "7.5"], "", False),
    ("12.1", ["10.0", "12.0"], "", True),
    ("10.3", ["9.0"], "9.0", True),  # PTX JIT-compiles for newer GPUs
    ("10.0", ["9.0"], "", False),
])
def test_arch_runs(gpu, archs, ptx, runs):
    assert arch_runs(gpu, archs, ptx) is runs


def test_parse_archs_and_gpus():
    assert parse_archs(["sm_80", "9.0;8.0", "120"]) == ["8.0", "9.0", "12.0"]
    with pytest.raises(UsageError, match="--gpu-arch 'ampere'"):
        parse_archs(["ampere"])
    gpus = parse_gpus("8.0x2,H100:9.0")
    assert [(g.name, g.compute_capability) for g in gpus] == [("GPU sm_80", "8.0"), ("GPU sm_80", "8.0"), ("H100", "9.0")]


def test_resolve_stack_names_one_stack(matrix):
    from moe_env.resolver import resolve_stack

    r = resolve_stack(matrix, "toy", "toy-new-cu128")
    assert r.stack.id == "toy-new-cu128" and r.native and r.variant.id == "new"
    assert r.project is matrix.projects["toymoe"] and len(r.project.stacks) == 2
    with pytest.raises(UsageError, match="unknown stack 'x'"):
        resolve_stack(matrix, "toy", "x")


def test_cpu_target(matrix):
    r = resolve(matrix, "toy", cuda="cpu")
    assert (r.target.cuda, r.target.torch, r.target.torch_index) == ("cpu", "2.1.2+cpu", "cpu")
    assert not r.native


def test_gpu_arch_without_cuda_retargets_only_when_needed(matrix):
    r = resolve(matrix, "toy", variant="new", gpu_archs=["9.0"])
    assert r.target.cuda == "12.8" and r.native
    r = resolve(matrix, "toy", variant="new", gpu_archs=["6.1"])
    assert r.target.cuda == "12.6" and r.target.torch == "2.8.0+cu126"
    assert any("lacks kernels for the GPUs (--gpu-arch)" in x for x in r.reasons)
    with pytest.raises(UsageError, match="no known-good stack fits GPUs sm_120"):
        resolve(matrix, "toy", gpu_archs=["12.0"])


def test_without_cuda_a_stack_that_ships_a_lockfile_goes_first(tmp_path, monkeypatch):
    """`moe-env lock minigemini` must answer offline: among equally good stacks, the shipped one wins."""
    from moe_env.lock.shipped import shipped_lockfile

    shipped = load_matrix()
    chosen = resolve(shipped, "minigemini", "8x7b")
    assert shipped_lockfile("minigemini", chosen.stack) is not None
    assert any("ships a lockfile" in r for r in chosen.reasons)
    first = next(s for s in shipped.project("minigemini").stacks if "8x7b" in s.variants)
    if shipped_lockfile("minigemini", first) is None:  # today: mgm-8x7b-cu118 (needs the PyTorch index)
        assert chosen.stack.id != first.id

    # with no lockfiles shipped at all, file order decides again (the first 8x7b stack)
    empty = tmp_path / "no-lockfiles"
    empty.mkdir()
    monkeypatch.setenv("MOE_ENV_LOCKFILES", str(empty))
    assert resolve(shipped, "minigemini", "8x7b").stack.id == first.id
