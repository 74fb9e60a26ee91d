"""Source-build steps: which packages, which environment, and a script that really runs (with fake
nvcc/python/ninja on PATH standing in for the toolchain)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lock_support import write_matrix
from moe_env.build_steps import build_steps, excluded_from_lock, flash_attn_wheel, render_script
from moe_env.cli import main
from moe_env.environment import GPU, HostInfo
from moe_env.lock.inputs import lock_input
from moe_env.matrix.loader import load_matrix
from moe_env.resolver import resolve


@pytest.fixture
def matrix(tmp_path):
    return load_matrix(write_matrix(tmp_path / "matrix"))


def test_flash_attn_without_a_matching_wheel_is_compiled(matrix):
    r = resolve(matrix, "toy", gpu_archs=["8.0", "9.0"])  # torch 2.1 + flash-attn 2.5.8: wheels only for 2.2/2.3
    assert flash_attn_wheel(r, "2.5.8")[0] is False
    (step,) = build_steps(r)
    assert step.package == "flash-attn" and step.version == "2.5.8"
    assert "flash-attn 2.5.8 publishes no cu122torch2.1cxx11abiFALSE-cp311 wheel" in step.reason
    assert "its setup.py fetches cu122 for torch 2.1 + CUDA 12.1" in step.reason
    assert step.env["FLASH_ATTENTION_FORCE_BUILD"] == "TRUE"
    assert step.env["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    assert step.env["MAX_JOBS"].startswith("${MAX_JOBS:-")
    assert any("nvcc --version" in p and '= "12"' in p and "expected nvcc release 12.x" in p for p in step.preconditions)
    assert any("ninja" in p for p in step.preconditions)
    assert step.commands == ["pip_install --no-build-isolation --no-cache-dir flash-attn==2.5.8"]
    assert "flash_attn_2_cuda" in step.verify[0]


def test_flash_attn_with_a_matching_wheel_is_fetched_not_compiled(matrix):
    r = resolve(matrix, "toy", variant="new", gpu_archs=["9.0"])  # torch 2.8, CUDA 12.8 ~ cu12, py 3.11
    ok, why = flash_attn_wheel(r, "2.8.3")
    assert ok is True and "publishes flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp311" in why
    fa = [s for s in build_steps(r) if s.package == "flash-attn"][0]
    assert "FLASH_ATTENTION_FORCE_BUILD" not in fa.env
    assert fa.commands == ['pip_install --no-build-isolation flash-attn==2.8.3']


def test_python_outside_the_wheel_matrix_compiles(matrix):
    r = resolve(matrix, "toy", variant="new", python="3.13")
    assert flash_attn_wheel(r, "2.8.3")[0] is True  # 3.13 is in the fixture's wheel list
    r = resolve(matrix, "toy", variant="new", python="3.9")
    assert flash_attn_wheel(r, "2.8.3")[0] is True
    r = resolve(matrix, "toy", python="3.8")
    assert flash_attn_wheel(r, "2.5.8")[0] is False


def test_deepspeed_ops_and_a_commit_build(matrix):
    r = resolve(matrix, "toy", variant="new", gpu_archs=["sm_90"])
    steps = build_steps(r)
    assert [s.package for s in steps] == ["deepspeed", "megatron-core", "flash-attn"]
    ds, meg, _ = steps
    assert ds.env["DS_BUILD_FUSED_ADAM"] == "1" and ds.env["DS_BUILD_CPU_ADAM"] == "1"
    assert ds.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert "--no-build-isolation --no-deps --force-reinstall" in ds.commands[0] and "deepspeed==0.13.2" in ds.commands[0]
    assert "installed_ops" in ds.verify[0]
    assert meg.commands[0].endswith('git clone https://github.com/NVIDIA/Megatron-LM "${MOE_ENV_SRC:-$PWD}/Megatron-LM"')
    assert "checkout --quiet 0123456789abcdef0123456789abcdef01234567" in meg.commands[2]
    assert meg.commands[3].endswith('--no-build-isolation "${MOE_ENV_SRC:-$PWD}/Megatron-LM"')
    assert "import megatron.core" in meg.verify[0] and "rev-parse HEAD" in meg.verify[1]
    # the lockfile keeps deepspeed (its dependencies get hashes) and leaves out what cannot resolve without torch
    assert excluded_from_lock(r) == ["megatron-core", "flash-attn"]
    reqs = lock_input(r).requirements
    assert "deepspeed==0.13.2" in reqs and not any(x.startswith(("flash-attn", "megatron")) for x in reqs)


def test_arch_list_defaults_to_the_host_then_the_torch_build(matrix):
    host = SimpleNamespace(host=HostInfo(driver_version="550.54.15", gpus=[GPU(0, "A100", "8.0"), GPU(1, "H100", "9.0")]))
    r = resolve(matrix, "toy", cuda="auto", env=host)
    assert build_steps(r)[0].env["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    r = resolve(matrix, "toy")
    assert build_steps(r)[0].env["TORCH_CUDA_ARCH_LIST"] == "5.0;6.0;7.0;7.5;8.0;8.6;9.0"


FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $* MAX_JOBS=${MAX_JOBS:-} FORCE=${FLASH_ATTENTION_FORCE_BUILD:-} ARCH=${TORCH_CUDA_ARCH_LIST:-}" >> "$LOG"
exit 0
"""


def _toolchain(tmp_path, nvcc_release):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "nvcc").write_text(f'#!/usr/bin/env bash\necho "Cuda compilation tools, release {nvcc_release}, V{nvcc_release}.0"\n')
    (bin_dir / "ninja").write_text("#!/usr/bin/env bash\necho 1.11.1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _run_script(tmp_path, script, bin_dir):
    path = tmp_path / "build.sh"
    path.write_text(script)
    log = tmp_path / "log"
    log.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "PYTHON": str(bin_dir / "python"), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)
    return proc, log.read_text()


def test_script_runs_steps_and_verifies(matrix, tmp_path):
    script = render_script(build_steps(resolve(matrix, "toy", gpu_archs=["8.0"])))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    proc, log = _run_script(tmp_path, script, _toolchain(tmp_path, "12.4"))
    assert proc.returncode == 0, proc.stderr
    install = [ln for ln in log.splitlines() if "-m pip install" in ln]
    assert len(install) == 1 and "flash-attn==2.5.8" in install[0]
    assert "FORCE=TRUE" in install[0] and "ARCH=8.0" in install[0]
    jobs = int(install[0].split("MAX_JOBS=")[1].split()[0])
    assert jobs >= 1  # sized from /proc/meminfo and nproc
    assert "flash_attn_2_cuda" in log.splitlines()[-1]  # the verification ran last
    assert "all steps built and verified" in proc.stderr


def test_script_stops_on_an_nvcc_major_mismatch(matrix, tmp_path):
    script = render_script(build_steps(resolve(matrix, "toy")))
    proc, log = _run_script(tmp_path, script, _toolchain(tmp_path, "11.8"))
    assert proc.returncode == 1
    assert "flash-attn: precondition on line" in proc.stderr
    assert "-m pip install" not in log  # nothing was built


def test_empty_plan_renders_a_harmless_script(matrix, tmp_path):
    r = resolve(matrix, "toy")
    r.stack.pins.pop("flash-attn")
    assert build_steps(r) == []
    proc = subprocess.run(["bash", "-c", render_script([])], capture_output=True, text=True)
    assert proc.returncode == 0 and "nothing to build" in proc.stderr


def test_cli_json_and_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOE_ENV_MATRIX", str(write_matrix(tmp_path / "m")))
    assert main(["build-steps", "toy", "--model", "new", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["resolution"]["stack"] == "toy-new-cu128"
    assert [s["package"] for s in doc["steps"]] == ["deepspeed", "megatron-core", "flash-attn"]
    out = tmp_path / "b.sh"
    assert main(["build-steps", "toy", "--gpu-arch", "8.0", "-o", str(out)]) == 0
    assert out.read_text().startswith("#!/usr/bin/env bash") and os.access(out, os.X_OK)
    assert main(["build-steps", "toy", "--gpu-arch", "9.0", "-o", str(out)]) == 2  # differs, no --force
    assert "exists and differs" in capsys.readouterr().err
    assert main(["build-steps", "toy", "--cuda", "99.9"]) == 2


def test_live_release_check_overrides_the_matrix(matrix, tmp_path, monkeypatch):
    import http.server
    import threading

    (tmp_path / "rel").mkdir()
    assets = {"assets": [{"name": "flash_attn-2.5.8+cu122torch2.1cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"},
                         {"name": "flash_attn-2.5.8+cu118torch2.1cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"}]}
    (tmp_path / "rel" / "v2.5.8.json").write_text(json.dumps(assets))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Quiet(*a, directory=str(tmp_path / "rel"), **k))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MOE_ENV_FLASH_ATTN_RELEASES", f"http://127.0.0.1:{server.server_address[1]}/v{{version}}.json")
        r = resolve(matrix, "toy")  # the matrix says: no wheel for torch 2.1
        (step,) = build_steps(r, live=True)
        assert "release assets include flash_attn-2.5.8+cu122torch2.1cxx11abiFALSE-cp311" in step.reason
        assert "FLASH_ATTENTION_FORCE_BUILD" not in step.env
        r = resolve(matrix, "toy", python="3.10")  # no cp310 asset: compile
        (step,) = build_steps(r, live=True)
        assert "checked live, 2 assets" in step.reason and step.env["FLASH_ATTENTION_FORCE_BUILD"] == "TRUE"
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("MOE_ENV_FLASH_ATTN_RELEASES", "http://127.0.0.1:9/v{version}.json")
    (step,) = build_steps(resolve(matrix, "toy"), live=True)
    assert "live check of the release assets failed" in step.reason and step.env["FLASH_ATTENTION_FORCE_BUILD"] == "TRUE"


def test_commit_build_checks_out_the_named_commit(tmp_path, monkeypatch):
    """A real git checkout (a local repository stands in for upstream; the clone is skipped because
    the checkout exists), fake python/nvcc/ninja for the rest."""
    import shutil

    if not shutil.which("git"):
        pytest.skip("git not installed")
    src = tmp_path / "src" / "Megatron-LM"
    src.mkdir(parents=True)
    genv = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_GLOBAL": "/dev/null"}
    for cmd in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "fix"]):
        subprocess.run(["git", "-C", str(src), *cmd], check=True, env=genv)
    sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "-C", str(src), "commit", "-q", "--allow-empty", "-m", "later"], check=True, env=genv)
    root = write_matrix(tmp_path / "m")
    proj = root / "projects" / "toymoe.toml"
    proj.write_text(proj.read_text().replace("0123456789abcdef0123456789abcdef01234567\"]", f"{sha}\"]"))
    r = resolve(load_matrix(root), "toy", variant="new", gpu_archs=["9.0"])
    script = render_script(build_steps(r))
    bin_dir = _toolchain(tmp_path, "12.8")
    (bin_dir / "git").symlink_to(shutil.which("git"))
    path = tmp_path / "build.sh"
    path.write_text(script)
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "PYTHON": str(bin_dir / "python"),
           "HOME": str(tmp_path), "MOE_ENV_SRC": str(tmp_path / "src"), "GIT_CONFIG_GLOBAL": "/dev/null"}
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert head == sha  # the named commit, not the newer one
    assert f"--no-build-isolation {src}" in log.read_text()


def _targets():
    from moe_env.matrix.loader import load_matrix as real

    m = real()
    for p in m.projects.values():
        for s in p.stacks:
            yield m, p.name, s, None
        yield m, p.name, None, "cpu"


@pytest.mark.parametrize("case", list(_targets()), ids=lambda c: f"{c[1]}/{c[2].id if c[2] else 'cpu'}")
def test_every_script_passes_bash_n_and_shellcheck(case, tmp_path):
    """Each stack's build-steps script (and the CPU one) parses with bash -n and is clean under shellcheck."""
    import shutil

    from moe_env.build_steps import render_script
    from moe_env.resolver import resolve_stack

    m, project, stack, cuda = case
    r = resolve_stack(m, project, stack.id) if stack else resolve(m, project, cuda=cuda)
    script = tmp_path / "steps.sh"
    script.write_text(render_script(build_steps(r)))
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install -y shellcheck; .ci/run installs it)")
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_cpu_target_writes_no_cuda_compile_and_says_what_to_do():
    from moe_env.matrix.loader import load_matrix as real

    r = resolve(real(), "minigemini", cuda="cpu")
    (step,) = [s for s in build_steps(r) if s.package == "flash-attn"]
    assert "cannot be built for a CPU torch" in step.reason and "--cuda auto" in step.reason
    assert "FLASH_ATTENTION_FORCE_BUILD" not in step.env and step.commands[-1] == "exit 1"
    assert not any("pip_install" in c for c in step.commands)


def test_precondition_prints_expected_and_found(tmp_path):
    """A real run of a precondition against a fake torch in a real venv: it says what it wanted and saw."""
    from moe_env.build_steps import render_script
    from moe_env.matrix.loader import load_matrix as real

    r = resolve(real(), "minigemini")
    (step,) = [s for s in build_steps(r) if s.package == "flash-attn"]
    torch_dir = tmp_path / "site" / "torch"
    (torch_dir / "version").mkdir(parents=True)
    (torch_dir / "__init__.py").write_text("__version__ = '2.1.2+cu121'\nfrom torch import version\n")
    (torch_dir / "version" / "__init__.py").write_text("cuda = '12.1'\n")
    script = tmp_path / "steps.sh"
    script.write_text(render_script([step]))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 1
    assert "expected torch 2.0.1 (CUDA 11.7), found torch 2.1.2 (CUDA 12.1)" in proc.stderr
    assert "precondition on line" in proc.stderr and "nothing was built" in proc.stderr


def test_script_installs_with_uv_pip_into_a_venv_without_pip(tmp_path):
    """uv-made venvs have no pip: the script's pip_install falls back to `uv pip install --python`."""
    import shutil

    from fakes import build_wheel

    from moe_env.build_steps import BuildStep
    from moe_env.lock.backends import uv_binary

    uv = uv_binary()
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode != 0  # really no pip
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "toyext", "1.0")
    step = BuildStep(package="toyext", version="1.0", reason="test", env={}, preconditions=[],
                     commands=[f"pip_install --no-index --find-links {wheels} toyext==1.0"],
                     verify=['"$PYTHON" -c "import toyext"'])
    script = tmp_path / "steps.sh"
    script.write_text(render_script([step]))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "uv").symlink_to(uv)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": str(py), "PATH": f"{bindir}:/usr/bin:/bin",
                               "UV_CACHE_DIR": str(tmp_path / "uvcache"), "UV_NO_CONFIG": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "all steps built and verified" in proc.stderr
    assert shutil.which("pip", path=str(venv / "bin")) is None


@pytest.mark.parametrize("command", [["build-steps", "toy"], ["dockerfile", "toy"]])
def test_a_hostile_matrix_version_never_reaches_a_script(tmp_path, command):
    """issue 16: a version from a matrix override that carries shell ends in exit 2, not in a RUN line."""
    root = write_matrix(tmp_path / "matrix")
    proj = root / "projects" / "toymoe.toml"
    proj.write_text(proj.read_text().replace('flash-attn = "2.5.8"', 'flash-attn = "2.5.8;touch${IFS}/tmp/pwned"'))
    proc = subprocess.run([sys.executable, "-m", "moe_env", *command], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MOE_ENV_MATRIX": str(root), "MOE_ENV_NVCC_VERSION": "none"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("moe-env: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == "" and not os.path.exists("/tmp/pwned")


def test_a_hostile_source_build_ref_never_reaches_a_script(tmp_path):
    """The same guard at the script's side, for values the matrix loader does not shape (a git ref)."""
    from moe_env.build_steps import _safe, _REF
    from moe_env.errors import UsageError
    from moe_env.resolver import resolve

    r = resolve(load_matrix(write_matrix(tmp_path / "matrix")), "toy")
    for bad in ("main;touch /tmp/pwned", "v1\nRUN x", "$(id)", "${HOME}"):
        with pytest.raises(UsageError, match="cannot go into a build script"):
            _safe(bad, _REF, "git ref", r)
    _safe("0123456789abcdef", _REF, "git ref", r)
