"""torch 2.0's cpp_extension imports pkg_resources: doctor catches a setuptools without it (found when
the no-edit MGM Docker build first installed the real stack: its deepspeed sdist failed in setup.py)."""

import json

import pytest

from doctor_support import add_plain, add_torch, moe_env_cli


@pytest.mark.parametrize("setuptools, fires", [("84.2.1", True), ("82.0.0", True), ("70.0.0", True),
                                               ("81.0.0", False), ("69.5.1", False)])
def test_torch_2_0_with_a_setuptools_without_pkg_resources(venv, setuptools, fires):
    add_torch(venv, "2.0.1+cu117", "11.7")
    add_plain(venv, "setuptools", setuptools)
    proc = moe_env_cli(["doctor", "--python", str(venv.python), "--build", "--json"])
    assert proc.returncode in (0, 1), proc.stderr
    found = {f["id"]: f for f in json.loads(proc.stdout)["findings"]}
    hit = found.get("torch.setuptools-without-pkg-resources")
    assert bool(hit) == fires, found.keys()
    if fires:
        assert hit["severity"] == "error" and proc.returncode == 1
        assert hit["requirement"] == "setuptools<82,!=70.0.0"
        assert f"setuptools {setuptools}" in hit["seen"]
        assert any("cpp_extension.py:25" in s for s in hit["sources"])


def test_a_newer_torch_is_not_judged_by_the_2_0_rule(venv):
    add_torch(venv, "2.1.2+cu121", "12.1")
    add_plain(venv, "setuptools", "84.2.1")
    proc = moe_env_cli(["doctor", "--python", str(venv.python), "--build", "--json"])
    ids = {f["id"] for f in json.loads(proc.stdout)["findings"]}
    assert "torch.setuptools-without-pkg-resources" not in ids
