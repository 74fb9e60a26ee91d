"""Every command on generated hostile input, in a subprocess: exit code in {0,1,2,3}, no traceback, no internal
error, no hang, no planted code run, no temp file left, nothing replaced without --force (issue 16).

The default tier runs a fixed-seed slice of each family (a few examples each, well under a minute in all);
the `fuzz` tier runs many more, also with fixed seeds so CI stays deterministic. Set MOE_ENV_FUZZ_EXAMPLES
to explore further and MOE_ENV_FUZZ_RANDOM=1 for fresh random seeds on a developer's machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import hostile

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["ckpt-safetensors", "ckpt-torch", "explain", "report", "env", "output", "matrix", "check-config"]
FAST = 3
LONG = int(os.environ.get("MOE_ENV_FUZZ_EXAMPLES") or 40)
RANDOM = bool(os.environ.get("MOE_ENV_FUZZ_RANDOM"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What every case shares: the sentinel path, a real report of this interpreter, the shipped matrix, the env."""
    root = tmp_path_factory.mktemp("fuzz")
    sentinel = root / hostile.SENTINEL
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOE_ENV_", "PYTHON"))}
    env.update(NO_COLOR="1", MOE_ENV_CACHE_DIR=str(root / "cache"), PYTHONPATH=str(REPO),
               # the network is cut (a closed local port) so nothing waits on a real index
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", UV_HTTP_TIMEOUT="2",
               PIP_DEFAULT_TIMEOUT="2", PIP_RETRIES="0", UV_NO_CONFIG="1", PIP_CONFIG_FILE=os.devnull)
    proc = subprocess.run([sys.executable, "-m", "moe_env", "doctor", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    matrix_root = REPO / "compat_matrix"
    matrix_files = {str(p.relative_to(matrix_root)): p.read_bytes() for p in matrix_root.rglob("*.toml")}
    return {"sentinel": sentinel, "report": report, "matrix": matrix_files, "env": env, "root": root}


def _check(world, case):
    folder = Path(tempfile.mkdtemp(dir=world["root"]))
    try:
        hostile.judge(case, folder, world["env"], world["sentinel"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _family_test(family, examples, tier):
    def test(world):
        strategy = hostile.strategies(str(world["sentinel"]), world["report"], world["matrix"])[family]()

        @settings(max_examples=examples, deadline=None, derandomize=not RANDOM, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(strategy)
        def run(case):
            _check(world, case)

        run()

    test.__name__ = f"test_{tier}_{family.replace('-', '_')}"
    return test


for _family in FAMILIES:
    globals()[f"test_fast_{_family.replace('-', '_')}"] = _family_test(_family, FAST, "fast")
    globals()[f"test_long_{_family.replace('-', '_')}"] = pytest.mark.fuzz(_family_test(_family, LONG, "long"))


def test_zip_bomb_in_a_pt_file(world):
    """A data.pkl that inflates to 300 MB: refused by its declared size, not read into memory."""
    case = hostile.Case(argv=["ckpt", "{dir}/bomb.pt"], files={"bomb.pt": hostile.zip_bomb(300)})
    _check(world, case)


def test_planted_payloads_never_run(world):
    """Each hostile pickle, bare and inside a torch zip, in every place ckpt reads one."""
    for blob in hostile.payloads(str(world["sentinel"])):
        for name, data in (("a.pt", blob), ("b.pt", hostile.torch_zip(blob))):
            _check(world, hostile.Case(argv=["ckpt", "{dir}/" + name, "--json"], files={name: data}))
            _check(world, hostile.Case(argv=["ckpt", "{dir}/ds"], files={
                "ds/latest": "global_step1", "ds/global_step1/mp_rank_00_model_states.pt": data}))
    assert not world["sentinel"].exists()
