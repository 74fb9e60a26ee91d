"""The committed lockfiles: each parses, is fully pinned and hashed, carries no index URL, and agrees
with its stack in the shipped matrix; marked `network`, each re-resolves against the real index."""

import re

import pytest

from moe_env.build_steps import excluded_from_lock
from moe_env.checks.lockfile import parse_lockfile
from moe_env.lock.inputs import lock_input, norm
from moe_env.lock.shipped import shipped_lockfile
from moe_env.matrix.loader import load_matrix
from moe_env.resolver import resolve_stack

MATRIX = load_matrix()
STACKS = [(p.name, s) for p in MATRIX.projects.values() for s in p.stacks]
SHIPPED = [(p, s) for p, s in STACKS if shipped_lockfile(p, s)]


def ids(items):
    return [f"{p}/{s.id}" for p, s in items]


def blocks(text):
    return [b for b in re.split(r"\n(?=\S)", text) if b.strip() and not b.lstrip().startswith("#")]


@pytest.mark.parametrize("project, stack", SHIPPED, ids=ids(SHIPPED))
def test_shipped_lockfile_is_pinned_hashed_and_agrees_with_its_stack(project, stack):
    path = shipped_lockfile(project, stack)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# moe-env lockfile: {project} (")
    assert f"stack {stack.id}\n" in text.splitlines(keepends=True)[0]
    for block in blocks(text):
        first = block.splitlines()[0]
        assert not re.match(r"\s*-", first), f"{path}: option line {first!r}"
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+ \\$", first), f"{path}: not an exact pin: {first!r}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{path}: no hash for {first!r}"
    pins = {n: str(p.requirement.specifier) for n, p in parse_lockfile(text, str(path)).pins.items()}
    r = resolve_stack(MATRIX, project, stack.id)
    wanted = lock_input(r).requirements
    for req in wanted:
        name, version = req.split("==")
        assert pins.get(norm(name.split("[")[0])) == f"=={version}", f"{path}: {req} not pinned as the stack says"
    for name in excluded_from_lock(r):
        assert name not in pins, f"{path}: {name} is a source build and must not be locked"


@pytest.mark.parametrize("project, stack", SHIPPED, ids=ids(SHIPPED))
def test_shipped_header_is_what_the_code_renders_now(project, stack):
    """A matrix edit (a why, a GPU table row, a wheel rule) without `python -m moe_env.lock.regen` shows here."""
    from moe_env.lock.engine import header

    r = resolve_stack(MATRIX, project, stack.id)
    new = header(r, lock_input(r), "uv", f"python -m moe_env.lock.regen --project {project} --stack {stack.id}", "d")
    keep = lambda text: [ln for ln in text.splitlines() if ln.startswith("#") and not ln.startswith("# resolved:")]  # noqa: E731
    want = keep(new)
    assert keep(shipped_lockfile(project, stack).read_text())[:len(want)] == want


def hashes(text):
    """{name: (version, {sha256...})} of a requirements-style lockfile."""
    out = {}
    for block in blocks(text):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if m:
            out[norm(m.group(1))] = (m.group(2), set(re.findall(r"--hash=sha256:([0-9a-f]{64})", block)))
    return out


@pytest.mark.network
@pytest.mark.parametrize("project, stack", SHIPPED, ids=ids(SHIPPED))
def test_shipped_lockfile_re_resolves_against_the_real_index(project, stack):
    """Re-resolve with uv: the stack's pins come back at the same versions with the same artifact hashes,
    and every transitive pin still at its shipped version has the same hashes (newer transitive releases
    are drift to regenerate, not a mismatch)."""
    from moe_env.lock.engine import lock

    r = resolve_stack(MATRIX, project, stack.id)
    fresh = hashes(lock(r, refresh=True, timeout=900).text)
    old = hashes(shipped_lockfile(project, stack).read_text())
    key = {norm(k.split("[")[0]) for k in stack.pins} - set(excluded_from_lock(r))
    assert {k: fresh.get(k) for k in key} == {k: old.get(k) for k in key}
    same_version = [n for n in old if n in fresh and fresh[n][0] == old[n][0]]
    assert len(same_version) >= len(key)
    for n in same_version:
        assert fresh[n][1] == old[n][1], f"{n}=={old[n][0]}: the index serves other files than the lockfile pins"
