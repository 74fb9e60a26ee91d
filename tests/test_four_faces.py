"""One fact, four faces: doctor, the lock header, build-steps and the Dockerfile say the same about
which CUDA a stack's torch build has, which GPU architectures it carries and which flash-attn wheel
its setup.py fetches, for every stack of the shipped matrix (moe_env.wheels and the matrix decide)."""

import re

import pytest

from moe_env.build_steps import build_steps
from moe_env.checks.platform import _arch_row
from moe_env.checks.registry import Context
from moe_env.docker import DockerOptions, plan_dockerfile, render_dockerfile
from moe_env.environment import HostInfo
from moe_env.lock.as_env import environment_from_locked
from moe_env.lock.engine import header
from moe_env.lock.gate import locked_from_resolution
from moe_env.lock.inputs import lock_input
from moe_env.matrix.loader import load_matrix
from moe_env.resolver import build_archs, resolve_stack
from moe_env.wheels import flash_attn_wheel

MATRIX = load_matrix()
STACKS = [(p.name, s.id) for p in MATRIX.projects.values() for s in p.stacks]


@pytest.mark.parametrize("project, stack_id", STACKS, ids=[f"{p}/{s}" for p, s in STACKS])
def test_doctor_lock_header_build_steps_and_dockerfile_agree(project, stack_id):
    r = resolve_stack(MATRIX, project, stack_id)
    t = r.target
    head = header(r, lock_input(r), "uv test", "cmd", "2026-01-01")
    steps = build_steps(r)
    docker = render_dockerfile(plan_dockerfile(MATRIX, r, steps, DockerOptions()))
    env = environment_from_locked(MATRIX, locked_from_resolution(r), HostInfo())

    # which CUDA the torch build has: the lock's target, doctor's Environment, the Dockerfile's image
    assert f"CUDA {t.cuda}" in head.splitlines()[1]
    assert env.torch.cuda == t.cuda
    image_cudas = set(re.findall(r"nvidia/cuda:(\d+\.\d+)\.\d+-", docker))
    assert image_cudas == {t.cuda}, image_cudas

    # which architectures it carries: the header's GPUs line and doctor's arch table row
    carried = build_archs(MATRIX, t.torch, t.cuda)
    row = _arch_row(Context(env=env, matrix=MATRIX), env.torch.version, t.cuda)
    assert (carried is None) == (row is None)
    if carried:
        assert row.archs == carried[0]
        gpus = next(ln for ln in head.splitlines() if ln.startswith("# GPUs: "))
        assert " ".join("sm_" + a.replace(".", "") for a in carried[0]) in gpus

    # which flash-attn wheel: one answer in all four
    fa = r.stack.pins.get("flash-attn")
    if not fa:
        return
    answer = flash_attn_wheel(MATRIX, fa, t.torch, t.cuda, t.python, t.cxx11_abi)
    step = next(s for s in steps if s.package == "flash-attn")
    assert step.prebuilt is bool(answer.exists)
    assert answer.why in step.reason
    assert f"# build step: flash-attn {fa}: {step.summary}" in head
    assert answer.why in docker
    if answer.exists:
        assert answer.tag and answer.tag in head and answer.tag in docker
        assert "FLASH_ATTENTION_FORCE_BUILD" not in step.env
    else:
        assert step.env.get("FLASH_ATTENTION_FORCE_BUILD") == "TRUE"
    # doctor on the lock's environment before flash-attn is installed: it needs compiling only without a wheel
    from moe_env.checks.platform import _must_compile

    env.distributions.pop("flash-attn", None)
    env.extensions.pop("flash-attn", None)
    reasons = _must_compile(Context(env=env, matrix=MATRIX, project=r.project))
    assert any("flash-attn" in x for x in reasons) is (not answer.exists)


@pytest.mark.parametrize("release, torch, cuda, fetched", [
    ("2.3.0", "2.1.0", "11.8", "12.2"),  # torch 2.1 fetches cu122 whatever its CUDA (setup.py at v2.3.0)
    ("2.3.0", "2.0.1", "11.7", "11.7"),  # else exactly torch's CUDA
    ("2.3.1.post1", "2.1.2", "11.8", "11.8"),  # from here only torch 2.1 with CUDA 12 is moved to cu122
    ("2.3.5", "2.1.2", "12.1", "12.2"),
    ("2.3.5", "2.2.2", "12.1", "12.1"),  # the exact match the old code wanted before 2.3.6
    ("2.3.6", "2.0.1", "11.7", "11.8"),  # one build per CUDA major
    ("2.5.8", "2.1.2", "12.1", "12.2"),
    ("2.6.3", "2.4.1", "12.4", "12.3"),
    ("2.8.3", "2.8.0", "12.8", "12"),  # the tag is the major alone
])
def test_flash_attn_setup_py_rule_per_release(release, torch, cuda, fetched):
    from moe_env.wheels import fetched_cuda

    got, source = fetched_cuda(release, torch, cuda)
    assert got == fetched and source.startswith("Dao-AILab/flash-attention@") and ":setup.py:" in source
