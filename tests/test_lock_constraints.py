"""What a lockfile must pin beyond the stack's own pins, found by the no-edit MGM Docker build:

- torch 2.0's torch/utils/cpp_extension.py imports `pkg_resources.packaging`; setuptools 82 has no
  pkg_resources (70.0.0 no `packaging` in it), so a deepspeed sdist installed after torch fails in its
  setup.py and DeepSpeed's JIT ops fail at first use: the lock keeps setuptools in range;
- a build-step package (flash-attn) installs its own requirements (einops) after the lockfile: the
  lockfile pins them, so an air-gapped build finds them, hash-checked.
"""

import pytest
from packaging.specifiers import SpecifierSet

from moe_env.checks.lockfile import parse_lockfile
from moe_env.lock.inputs import lock_input
from moe_env.lock.shipped import shipped_lockfile
from moe_env.matrix.loader import load_matrix
from moe_env.resolver import resolve_stack

MATRIX = load_matrix()
SHIPPED = [(p.name, s) for p in MATRIX.projects.values() for s in p.stacks if shipped_lockfile(p.name, s)]


def test_torch_2_0_stack_asks_for_a_setuptools_with_pkg_resources_and_flash_attn_requirements():
    inp = lock_input(resolve_stack(MATRIX, "minigemini", "mgm-8x7b-cu117"))
    assert "setuptools<82,!=70.0.0" in inp.constraints
    assert {"einops", "ninja", "packaging"} <= set(inp.constraints)
    assert "flash-attn==2.5.8" in inp.excluded and not any(c.startswith("flash") for c in inp.constraints)
    text = inp.requirements_in()
    assert "torch==2.0.1\n" in text and "setuptools<82,!=70.0.0\n" in text and "einops\n" in text


def test_a_newer_torch_is_not_held_back():
    inp = lock_input(resolve_stack(MATRIX, "minigemini", "mgm-8x7b-cu121"))  # torch 2.1.2: no such row
    assert not any(c.startswith("setuptools") for c in inp.constraints)
    assert "einops" in inp.constraints  # flash-attn 2.5.8 is still a build step there


@pytest.mark.parametrize("project, stack", SHIPPED, ids=[f"{p}/{s.id}" for p, s in SHIPPED])
def test_every_shipped_lockfile_meets_its_constraints(project, stack):
    path = shipped_lockfile(project, stack)
    pins = {n: p.requirement.specifier for n, p in parse_lockfile(path.read_text(), str(path)).pins.items()}
    for line in lock_input(resolve_stack(MATRIX, project, stack.id)).constraints:
        name = line.split("<", 1)[0].split(">", 1)[0].split("=", 1)[0].split("!", 1)[0]
        assert name in pins, f"{path}: {name} not pinned ({line})"
        version = next(iter(pins[name])).version
        assert version in SpecifierSet(line[len(name):]), f"{path}: {name}=={version} outside {line}"
