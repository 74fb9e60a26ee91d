"""The setuptools / pkg_resources class, across every torch minor, through `moe-env doctor --json` in real
venvs and `moe-env explain` on the real error lines.

The facts, read from the real artifacts (macOS arm64 / Linux wheels of every torch release 1.13.0 .. 2.15.0,
the setuptools wheels 69.5.1 .. 84.2.1; see compat_matrix/platform/torch.toml):
- torch 1.13 and 2.0 (cpp_extension.py:25) and 2.1 (cpp_extension.py:28) run `from pkg_resources import
  packaging` at import time; 2.2.0 and later import nothing from pkg_resources;
- setuptools 70.0.0 .. 70.3.0 bind no `packaging` in pkg_resources (71.0.0 binds it again), and 82.0.0 and
  later ship no pkg_resources: the range those torch minors need is `<82,!=70.*`.
Found first when the no-edit MGM Docker build installed the real stack: its deepspeed sdist failed in setup.py.
"""

import glob
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from doctor_support import add_deepspeed, add_plain, add_torch, moe_env_cli
from moe_env.matrix.loader import load_matrix

FID = "torch.setuptools-without-pkg-resources"
RANGE = "<82,!=70.*"
NEEDS_PKG_RESOURCES = {"1.13": 25, "2.0": 25, "2.1": 28}  # torch minor -> cpp_extension.py line of the import
TORCH_WHEEL = "/opt/wheels/torch-2.13.0*cp311*.whl"


def _doctor(venv):
    proc = moe_env_cli(["doctor", "--python", str(venv.python), "--build", "--json"])
    assert proc.returncode in (0, 1), proc.stderr
    return proc, {f["id"]: f for f in json.loads(proc.stdout)["findings"]}


def test_the_matrix_bounds_setuptools_for_exactly_the_torch_minors_that_import_pkg_resources():
    rows = {r.minor: r for r in load_matrix().torch_releases}
    assert {m for m, r in rows.items() if r.setuptools} == set(NEEDS_PKG_RESOURCES)
    for minor, line in NEEDS_PKG_RESOURCES.items():
        assert rows[minor].setuptools == RANGE
        assert any(f"cpp_extension.py:{line}" in s and s.startswith("release:torch==") for s in rows[minor].source)
        assert any(s.startswith("release:setuptools==70.0.0:") for s in rows[minor].source)


@pytest.mark.parametrize("torch, cuda, setuptools, fires", [
    ("1.13.1+cu117", "11.7", "70.1.0", True),
    ("1.13.1+cu117", "11.7", "82.0.0", True),
    ("1.13.1+cu117", "11.7", "81.0.0", False),
    ("2.0.1+cu117", "11.7", "84.2.1", True),
    ("2.0.1+cu117", "11.7", "82.0.0", True),
    ("2.0.1+cu117", "11.7", "70.0.0", True),
    ("2.0.1+cu117", "11.7", "81.0.0", False),
    ("2.0.1+cu117", "11.7", "71.0.0", False),
    ("2.0.1+cu117", "11.7", "69.5.1", False),
    ("2.1.2+cu121", "12.1", "70.3.0", True),
    ("2.1.2+cu121", "12.1", "84.2.1", True),
    ("2.1.0+cu121", "12.1", "71.0.0", False),
    ("2.2.2+cu121", "12.1", "84.2.1", False),
    ("2.2.0+cu121", "12.1", "70.0.0", False),
    ("2.7.1+cu126", "12.6", "84.2.1", False),
])
def test_doctor_judges_setuptools_by_the_torch_minor(venv, torch, cuda, setuptools, fires):
    add_torch(venv, torch, cuda)
    add_plain(venv, "setuptools", setuptools, package="setuptools")
    proc, found = _doctor(venv)
    hit = found.get(FID)
    assert bool(hit) == fires, sorted(found)
    if not fires:
        return
    minor = ".".join(torch.split(".")[:2])
    assert hit["severity"] == "error" and proc.returncode == 1
    assert hit["requirement"] == f"setuptools{RANGE}" and hit["fix"] == f"pip install 'setuptools{RANGE}'"
    assert f"torch {torch} with setuptools {setuptools}" in hit["seen"]
    assert "ModuleNotFoundError: No module named 'pkg_resources'" in hit["why"]
    assert "ImportError: cannot import name 'packaging' from 'pkg_resources'" in hit["why"]
    assert any(f"cpp_extension.py:{NEEDS_PKG_RESOURCES[minor]}" in s for s in hit["sources"])
    # the builders that import torch.utils.cpp_extension, from the known issues of the two error lines
    assert any(s.startswith("release:deepspeed==") and "builder.py" in s for s in hit["sources"])
    assert any(s.startswith("release:flash-attn==") for s in hit["sources"])


@pytest.mark.skipif(not glob.glob(TORCH_WHEEL), reason="needs the local torch 2.13.0 CPU wheel")
def test_real_torch_2_13_files_with_setuptools_84(venv):
    """torch 2.13.0+cpu's own METADATA, version.py and cpp_extension.py (from the real wheel): it imports no
    pkg_resources, so a setuptools without it is no problem; the same venv with a torch 2.1 says otherwise."""
    with zipfile.ZipFile(sorted(glob.glob(TORCH_WHEEL))[0]) as whl:
        cpp = whl.read("torch/utils/cpp_extension.py").decode()
        files = {n: whl.read(n) for n in ("torch/version.py", "torch/utils/cpp_extension.py")}
    assert "pkg_resources" not in cpp and "import setuptools" in cpp  # the fact the 2.13 row rests on
    files["torch/__init__.py"] = "raise ImportError('the probe must never import me')\n"
    venv.add_dist("torch", "2.13.0+cpu", files=files)
    add_plain(venv, "setuptools", "84.2.1", package="setuptools")
    _, found = _doctor(venv)
    assert FID not in found and "torch.missing" not in found


def _explain(text, tmp_path, *extra):
    log = tmp_path / "build.log"
    log.write_text(text)
    proc = moe_env_cli(["explain", str(log), "--json", *extra])
    assert proc.returncode == 1, proc.stderr
    return {m["id"]: m for m in json.loads(proc.stdout)["matches"]}


def test_explain_the_deepspeed_sdist_traceback_under_setuptools_70(tmp_path):
    # the frames of deepspeedai/DeepSpeed#5649 (deepspeed 0.14.2 sdist, torch 2.1, setuptools 70)
    text = ("  Preparing metadata (setup.py) ... error\n"
            "      Traceback (most recent call last):\n"
            '        File "/tmp/pip-install-x/deepspeed_1/setup.py", line 100, in <module>\n'
            "          cuda_major_ver, cuda_minor_ver = installed_cuda_version()\n"
            '        File "/tmp/pip-install-x/deepspeed_1/op_builder/builder.py", line 47, in installed_cuda_version\n'
            "          import torch.utils.cpp_extension\n"
            '        File "/env/lib/python3.10/site-packages/torch/utils/cpp_extension.py", line 28, in <module>\n'
            "          from pkg_resources import packaging  # type: ignore[attr-defined]\n"
            "      ImportError: cannot import name 'packaging' from 'pkg_resources' "
            "(/env/lib/python3.10/site-packages/pkg_resources/__init__.py)\n")
    by = _explain(text, tmp_path)
    m = by["cpp-extension-pkg-resources-no-packaging"]
    assert m["severity"] == "error" and m["doctor"] == [FID]
    assert "setuptools<82,!=70.*" in m["fix"]
    assert "cpp-extension-no-pkg-resources" not in by


def test_explain_the_setuptools_82_line_and_confirm_it_in_the_env(tmp_path, venv):
    # geopavlakos/hamer#139 (setuptools >= 82, torch's cpp_extension.py line 25)
    text = ('  File ".../site-packages/torch/utils/cpp_extension.py", line 25, in <module>\n'
            "    from pkg_resources import packaging\n"
            "ModuleNotFoundError: No module named 'pkg_resources'\n")
    add_torch(venv, "2.0.1+cu117", "11.7")
    add_plain(venv, "setuptools", "82.0.0", package="setuptools")
    by = _explain(text, tmp_path, "--python", str(venv.python))
    m = by["cpp-extension-no-pkg-resources"]
    assert m["doctor"] == [FID] and m["confirmation"].startswith("confirmed in "), m["confirmation"]
    assert "cpp-extension-pkg-resources-no-packaging" not in by


# ---------------------------------------------------------------- the facts, held to real releases (network)


def _download(spec, dest, *extra):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest),
                    *extra, spec], check=True, capture_output=True, timeout=600)


@pytest.mark.network
def test_the_range_matches_real_setuptools_wheels(tmp_path):
    """Each setuptools wheel, unpacked and imported by a clean interpreter (-S: no site-packages), gives the
    result the torch rows' range predicts, with exactly the two lines the known issues match."""
    matrix = load_matrix()
    patterns = {k.id: k.patterns[0] for k in matrix.known_issues if FID in k.doctor}
    for version in ["69.5.1", "70.0.0", "70.1.1", "70.3.0", "71.0.0", "81.0.0", "82.0.0", "84.2.1"]:
        _download(f"setuptools=={version}", tmp_path / "dl")
        (whl,) = (tmp_path / "dl").glob(f"setuptools-{version}-*.whl")
        root = tmp_path / version
        zipfile.ZipFile(whl).extractall(root)
        proc = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                               "from pkg_resources import packaging; packaging.version.Version('1.0')", str(root)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        ok = proc.returncode == 0
        assert ok == (version in SpecifierSet(RANGE)), f"setuptools {version}: {proc.stderr[-300:]}"
        if not ok:
            last = proc.stderr.strip().splitlines()[-1]
            assert any(last.startswith(p) for p in patterns.values()), last


@pytest.mark.network
@pytest.mark.parametrize("version", ["2.1.2", "2.2.0"])
def test_the_torch_rows_match_real_wheels(tmp_path, version):
    """cpp_extension.py of the real torch release (the small macOS arm64 wheel: the Python files are the same)."""
    _download(f"torch=={version}", tmp_path, "--platform", "macosx_11_0_arm64", "--python-version", "3.10")
    (whl,) = tmp_path.glob(f"torch-{version}-*.whl")
    lines = zipfile.ZipFile(whl).read("torch/utils/cpp_extension.py").decode().splitlines()
    at = [i + 1 for i, line in enumerate(lines) if line.startswith("from pkg_resources import packaging")]
    row = load_matrix().torch_release(version)
    minor = ".".join(version.split(".")[:2])
    assert at == ([NEEDS_PKG_RESOURCES[minor]] if minor in NEEDS_PKG_RESOURCES else [])
    assert bool(row.setuptools) == bool(at)


def test_no_setuptools_is_an_error_only_where_something_must_compile(venv_factory):
    """torch/utils/cpp_extension.py imports setuptools at its top in every release (1.13.1: line 8, 2.1.2: 9, 2.5.1: 10,
    2.13.0: 11, read from the wheels): DeepSpeed's JIT ops need it at training time; nothing does without a build."""
    fid = "torch.no-setuptools"
    jit = venv_factory()
    add_torch(jit, "2.5.1+cu121", "12.1", requires=[])
    add_deepspeed(jit, "0.14.4", z3_leaf=True, built_torch="2.5", built_cuda="12.1", requires=[])
    proc, found = _doctor(jit)
    assert fid in found, sorted(found)
    hit = found[fid]
    assert hit["severity"] == "error" and hit["requirement"] == "setuptools" and proc.returncode == 1
    assert "deepspeed 0.14.4 has no pre-built ops" in hit["seen"]
    assert "No module named 'setuptools'" in hit["why"]
    assert any("cpp_extension.py:10" in s for s in hit["sources"])
    old = venv_factory()
    add_torch(old, "2.1.2+cu121", "12.1", requires=[])
    add_deepspeed(old, "0.14.4", z3_leaf=True, built_torch="2.1", built_cuda="12.1", requires=[])
    assert _doctor(old)[1][fid]["requirement"] == f"setuptools{RANGE}"
    # the same env with setuptools, or with every op pre-built: nothing to say
    add_plain(jit, "setuptools", "80.9.0", package="setuptools")
    assert fid not in _doctor(jit)[1]
    built = venv_factory()
    add_torch(built, "2.5.1+cu121", "12.1", requires=[])
    add_deepspeed(built, "0.14.4", z3_leaf=True, built_torch="2.5", built_cuda="12.1", requires=[],
                  ops={"fused_adam": True, "cpu_adam": True})
    assert fid not in _doctor(built)[1]
    # torch declaring setuptools too (as 2.4+ do for Python 3.12): still one finding about it
    both = venv_factory()
    # (torch 2.13.0's real METADATA: `Requires-Dist: setuptools>=77.0.3`): the one fix keeps what torch declares
    add_torch(both, "2.5.1+cu121", "12.1", requires=["setuptools>=77.0.3"])
    add_deepspeed(both, "0.14.4", z3_leaf=True, built_torch="2.5", built_cuda="12.1", requires=[])
    proc, found = _doctor(both)
    about = [f for f in json.loads(proc.stdout)["findings"] if "setuptools" in (f.get("requirement") or "")]
    assert len(about) == 1 and about[0]["requirement"] == "setuptools>=77.0.3", about
    older = venv_factory()
    add_torch(older, "2.1.2+cu121", "12.1", requires=["setuptools>=60"])
    add_deepspeed(older, "0.14.4", z3_leaf=True, built_torch="2.1", built_cuda="12.1", requires=[])
    assert _doctor(older)[1][fid]["requirement"] == f"setuptools{RANGE},>=60"


def test_explain_names_the_missing_setuptools():
    line = ("  File \"/env/lib/python3.12/site-packages/torch/utils/cpp_extension.py\", line 10, in <module>\n"
            "    import setuptools\nModuleNotFoundError: No module named 'setuptools'\n")
    proc = subprocess.run([sys.executable, "-m", "moe_env", "explain", "-", "--json"], input=line,
                          capture_output=True, text=True, timeout=60)
    ids = [m["id"] for m in json.loads(proc.stdout)["matches"]]
    assert ids and ids[0] == "cpp-extension-no-setuptools", ids


def test_every_lock_with_something_to_compile_asks_for_setuptools():
    """uv-made venvs start without setuptools, so a lock whose deepspeed JIT-builds (or that leaves a source build to
    build steps) pins one itself, in the torch row's range where it has one; a stack with nothing to compile does not."""
    from moe_env.lock.inputs import lock_input
    from moe_env.resolver import resolve_stack

    matrix = load_matrix()
    seen = 0
    for project in matrix.projects.values():
        for stack in project.stacks:
            res = resolve_stack(matrix, project.name, stack.id)
            inp = lock_input(res)
            asked = [c for c in inp.constraints if c.startswith("setuptools")]
            ds = any(k.split("[", 1)[0].lower() == "deepspeed" for k in stack.pins)
            row = matrix.torch_release(stack.pins.get("torch")) if stack.pins.get("torch") else None
            if ds or inp.excluded:
                seen += 1
                assert asked == [f"setuptools{(row.setuptools or '') if row else ''}"], (stack.id, inp.constraints)
                assert "setuptools" in inp.requirements_in()
            elif "setuptools" not in stack.pins and not (row and row.setuptools):
                assert asked == [], (stack.id, asked)
    assert seen >= 5


def test_a_foreign_lock_without_setuptools_is_a_warning_that_names_the_venv(tmp_path):
    """A lockfile is judged as installed; whether setuptools is there is up to the venv it goes into (`python -m
    venv` of 3.11 seeds one, uv does not): a warning with the re-lock fix, not an error. With setuptools: nothing."""
    lock = tmp_path / "requirements.txt"
    lock.write_text("torch==2.5.1\ndeepspeed==0.14.4\n")
    proc = moe_env_cli(["doctor", "--from-lock", str(lock), "--json"])
    assert proc.returncode in (0, 1), proc.stderr
    hit = [f for f in json.loads(proc.stdout)["findings"] if f["id"] == "torch.no-setuptools"]
    assert len(hit) == 1 and hit[0]["severity"] == "warning", hit
    assert "uv" in hit[0]["why"] and "re-lock" in hit[0]["fix"]
    lock.write_text("torch==2.5.1\ndeepspeed==0.14.4\nsetuptools==80.9.0\n")
    proc = moe_env_cli(["doctor", "--from-lock", str(lock), "--json"])
    assert "torch.no-setuptools" not in {f["id"] for f in json.loads(proc.stdout)["findings"]}


@pytest.mark.skipif(not glob.glob(TORCH_WHEEL), reason="needs the local torch 2.13.0 CPU wheel")
def test_a_uv_made_venv_with_the_real_torch_wheel_and_no_setuptools(venv_factory):
    """The real torch 2.13.0 wheel installed --no-deps into a uv-made venv (which seeds no setuptools), beside a
    deepspeed whose ops JIT-build: the error, with torch's own `Requires-Dist: setuptools>=77.0.3` as the fix."""
    try:
        from uv import find_uv_bin  # the uv PyPI package ships the binary (the test extra installs it)
    except ImportError:
        pytest.skip("needs the uv package (the test extra installs it)")
    uv = find_uv_bin()
    env = venv_factory()
    subprocess.run([uv, "pip", "install", "--quiet", "--offline", "--no-deps", "--python", str(env.python),
                    sorted(glob.glob(TORCH_WHEEL))[0]], check=True, timeout=600)
    assert not list(env.site.glob("setuptools*"))
    add_deepspeed(env, "0.14.4", z3_leaf=True, built_torch="2.13", built_cuda="", requires=[])
    proc, found = _doctor(env)
    hit = found["torch.no-setuptools"]
    assert hit["severity"] == "error" and hit["requirement"] == "setuptools>=77.0.3", hit
    assert proc.returncode == 1
    assert not [f for f in found.values() if f["id"] == "deps.missing" and "setuptools" in f["requirement"]]
