"""The wheel carries the matrix and the lockfiles: `pip install moe-env` must work offline afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available in this interpreter")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("moe_env-*.whl")
    return path


def test_wheel_ships_every_matrix_file_and_lockfile(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, prefix in (("compat_matrix", "moe_env/_data/compat_matrix/"), ("lockfiles", "moe_env/_data/lockfiles/")):
        expected = {prefix + str(p.relative_to(REPO / folder)) for p in (REPO / folder).rglob("*")
                    if p.is_file() and p.suffix in (".toml", ".md", ".txt", ".json")}
        missing = expected - names
        assert not missing, f"not in the wheel: {sorted(missing)[:5]}"
    assert any(n.startswith("moe_env/_data/compat_matrix/") and n.endswith(".toml") for n in names)


def test_installed_wheel_finds_its_own_data(wheel, tmp_path):
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import moe_env, moe_env.paths as p;"
        "from moe_env.matrix.loader import load_matrix;"
        "assert moe_env.__file__.startswith(sys.argv[1]), moe_env.__file__;"
        "root = p.matrix_root(); assert str(root).startswith(sys.argv[1]), root;"
        "m = load_matrix(); print(len(m.projects))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 1
