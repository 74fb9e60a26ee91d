"""`moe-env dockerfile`: every generated Dockerfile parses with Docker's own parser, in the right shape.

The parser is the `dockerfile` package (Docker's Go parser, buildkit's frontend/dockerfile/parser).
The shipped matrix gives one case per known-good stack; a toy matrix (tests/docker_fixtures.py)
covers the paths the shipped data may not: a broken stack, a compiled one, a wheelhouse, --base.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

dockerfile = pytest.importorskip("dockerfile")

from docker_fixtures import toy_env, write_toy_lockfiles, write_toy_matrix  # noqa: E402
from moe_env.cli import main  # noqa: E402
from moe_env.docker import DockerOptions, parse_gpu_archs, plan_dockerfile, render_dockerfile, runtime_compiles  # noqa: E402
from moe_env.errors import UsageError  # noqa: E402
from moe_env.matrix.loader import load_matrix  # noqa: E402

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
TAG_RE = re.compile(r"^nvidia/cuda:(\d+\.\d+\.\d+)-(cudnn\d*)-(devel|runtime)-ubuntu\d\d\.\d\d$")


def _shipped_stacks():
    try:
        matrix = load_matrix()
    except Exception:  # a broken shipped matrix fails its own tests; here: nothing to parametrize
        return []
    return [pytest.param(p.name, s.id, id=f"{p.name}/{s.id}") for p in matrix.projects.values() for s in p.stacks]


def _commands(text):
    return dockerfile.parse_string(text)


def _runs(cmds):
    return [c for c in cmds if c.cmd.upper() == "RUN"]


def _check_shape(text, project, stack, matrix):
    """What every generated Dockerfile must be, judged on the parser's view of it."""
    cmds = _commands(text)
    froms = [c for c in cmds if c.cmd.upper() == "FROM"]
    assert froms, "no FROM"
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1] for c in cmds if c.cmd.upper() == "ARG"}
    images = [args[f.value[0][2:-1]] if f.value[0].startswith("${") else f.value[0] for f in froms]
    if stack.cuda not in ("", "cpu"):
        # the target's CUDA: the stack's own, or the build of its torch the GPUs need (cu117 lacks sm_90)
        cuda = re.search(r"\(torch \S+, CUDA (\d+\.\d+), Python", text).group(1)
        assert cuda == stack.cuda or cuda in matrix.torch_release(stack.pins["torch"]).cuda_builds
        row = matrix.cuda_image(cuda)
        assert row is not None, f"no [[cuda_image]] row for CUDA {cuda}"
        for image in images:
            m = TAG_RE.match(image)
            assert m, image
            assert m.group(1) == row.version and m.group(1).startswith(cuda + ".")
        # what people run is the runtime flavour, unless deepspeed JIT-compiles there (then it keeps nvcc)
        assert images[-1].endswith(row.tag("devel" if runtime_compiles(stack) else "runtime"))
        if len(froms) > 1:
            assert images[0].endswith(row.tag("devel"))  # what compiles has nvcc
    paths = [c for c in cmds if c.cmd.upper() == "ENV" and "PATH=/opt/venv/bin:$PATH" in c.original]
    assert len(paths) == len(froms), "the stack's venv goes on PATH once per stage"
    runs = _runs(cmds)
    lock_i = next(i for i, c in enumerate(runs) if "--require-hashes" in c.value[0])
    tool_i = next(i for i, c in enumerate(runs) if "/opt/moe-env/venv/bin/python -m pip install" in c.value[0])
    gate = runs[-1].value[0]
    assert lock_i < tool_i < len(runs) - 1, "layer order: lockfile, then moe-env, then the gate"
    assert gate.startswith(f"moe-env doctor {project}") and gate.endswith("--build --strict")
    assert "--python /opt/venv/bin/python" in gate
    entry = [c for c in cmds if c.cmd.upper() == "ENTRYPOINT"]
    assert len(entry) == 1 and entry[0].json
    script = entry[0].value[2]
    assert f"moe-env doctor {project}" in script and "--strict" in script and "--build" not in script
    assert 'exec "$@"' in script
    # the lockfile is copied in before it is installed, from the build context
    copies = [c.value for c in cmds if c.cmd.upper() == "COPY" and not c.flags]
    assert any(v[-1] == "/opt/moe-env/requirements.txt" for v in copies)
    return cmds


# ---------------------------------------------------------------- the shipped matrix: every stack


@pytest.mark.parametrize("project,stack_id", _shipped_stacks())
def test_every_shipped_stack_renders_a_dockerfile_docker_parses(project, stack_id, tmp_path, capsys):
    matrix = load_matrix()
    stack = next(s for s in matrix.project(project).stacks if s.id == stack_id)
    rc = main(["dockerfile", project, "--stack", stack_id, "--gpu-arch", "8.0,9.0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    cmds = _check_shape(out, matrix.project(project).name, stack, matrix)
    if stack.source_builds:
        assert sum(1 for c in cmds if c.cmd.upper() == "FROM") == (1 if runtime_compiles(stack) else 2)
        assert any(c.cmd.upper() == "ENV" and "TORCH_CUDA_ARCH_LIST" in c.original and "8.0;9.0" in c.original for c in cmds)


def test_every_cuda_image_row_names_a_real_tag_form():
    """nvidia/cuda's cuDNN naming: cudnn8 until 12.2, cudnn9 for 12.3, plain cudnn from 12.4."""
    matrix = load_matrix()
    assert matrix.cuda_images, "the shipped matrix lists the nvidia/cuda images"
    for row in matrix.cuda_images:
        assert row.version.startswith(row.cuda + ".")
        major_minor = tuple(int(x) for x in row.cuda.split("."))
        want = "cudnn8" if major_minor <= (12, 2) else "cudnn9" if major_minor == (12, 3) else "cudnn"
        assert row.cudnn == want, row
        for flavor in ("devel", "runtime"):
            assert TAG_RE.match("nvidia/cuda:" + row.tag(flavor))
    assert matrix.cuda_image("12.1").tag("devel") == "12.1.1-cudnn8-devel-ubuntu22.04"
    assert matrix.cuda_image("12.4.1").tag("devel") == "12.4.1-cudnn-devel-ubuntu22.04"


# ---------------------------------------------------------------- the toy project through the real CLI


@pytest.fixture
def toy(tmp_path, monkeypatch):
    matrix_dir = write_toy_matrix(tmp_path / "matrix", PY)
    locks = write_toy_lockfiles(tmp_path / "lockfiles", tmp_path / "wheels")
    for k, v in toy_env(matrix_dir, tmp_path / "lockfiles").items():
        monkeypatch.setenv(k, v)
    return SimpleNamespace(root=tmp_path, matrix=matrix_dir, locks=locks, wheels=tmp_path / "wheels")


def _cli(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "moe_env", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)


@pytest.mark.parametrize("stack_id,stages", [("toy-good", 1), ("toy-broken", 1), ("toy-compiled", 2)])
def test_toy_stacks_through_the_cli(toy, stack_id, stages):
    r = _cli(["dockerfile", "toy", "--stack", stack_id, "--model", "8x1b"])
    assert r.returncode == 0, r.stderr
    matrix = load_matrix(toy.matrix)
    stack = next(s for s in matrix.project("toymoe").stacks if s.id == stack_id)
    cmds = _check_shape(r.stdout, "toymoe", stack, matrix)
    # deepspeed JIT-compiles (one devel stage) unless the stack pre-builds its ops (devel + runtime)
    assert sum(1 for c in cmds if c.cmd.upper() == "FROM") == stages
    assert "--model 8x1b" in _runs(cmds)[-1].value[0]
    assert f"requirements.{stack_id}.txt" in r.stderr  # says what the build context needs


def test_base_no_apt_wheelhouse_and_matrix_dir(toy):
    r = _cli(["dockerfile", "toymoe", "--stack", "toy-good", "--base", "localhost/base:1", "--no-apt",
              "--wheelhouse", "wheels/", "--matrix-dir", "matrix", "--moe-env", "moe-env==0.1.0"])
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert [c.original for c in cmds if c.cmd.upper() == "ARG"] == ["ARG RUNTIME_IMAGE=localhost/base:1"]
    assert "apt-get" not in r.stdout
    installs = [c for c in _runs(cmds) if "pip install" in c.value[0]]
    assert installs and all("--mount=type=bind,source=wheels,target=/wheelhouse" in c.flags for c in installs)
    env = " ".join(c.original for c in cmds if c.cmd.upper() == "ENV")
    assert "PIP_NO_INDEX=1" in env and "PIP_FIND_LINKS=/wheelhouse" in env
    assert "MOE_ENV_MATRIX=/opt/moe-env/compat_matrix" in env
    copy_matrix = [c for c in cmds if c.cmd.upper() == "COPY" and c.value[0] == "matrix"]
    assert copy_matrix, "the team's matrix goes into the image"


def test_compiled_stack_is_multi_stage_with_arch_list_from_flag():
    """Source builds: a devel stage runs the steps with TORCH_CUDA_ARCH_LIST from --gpu-arch."""
    matrix = load_matrix()
    row = matrix.cuda_images[0]
    stack = SimpleNamespace(id="s1", cuda=row.cuda, python="3.10", pins={"torch": "2.1.2"}, source_builds=["flash-attn"])
    resolution = SimpleNamespace(project=SimpleNamespace(name="p", info=SimpleNamespace(title="P")), variant=None,
                                 stack=stack, target=None, reasons=["because"])
    step = SimpleNamespace(
        package="flash-attn", reason="no wheel for this torch\nand CUDA",
        env={"MAX_JOBS": "4", "TORCH_CUDA_ARCH_LIST": "7.0"},
        preconditions=["command -v nvcc", "python -c 'import torch'"],
        commands=["pip install --no-build-isolation\n  flash-attn==2.5.8"],
        verify=["python -c \"import flash_attn\""],
    )
    text = render_dockerfile(plan_dockerfile(matrix, resolution, [step], DockerOptions(gpu_archs=["8.0", "9.0"])))
    cmds = _commands(text)
    froms = [c for c in cmds if c.cmd.upper() == "FROM"]
    assert [f.value[-1] for f in froms] == ["build", "runtime"]
    runs = _runs(cmds)
    build_run = next(c for c in runs if "flash-attn==2.5.8" in c.value[0])
    body = build_run.value[0]
    assert 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in body and 'MAX_JOBS="4"' in body  # the flag beats the step's guess
    assert body.index("command -v nvcc") < body.index("flash-attn==2.5.8") < body.index("import flash_attn")
    copies = [c for c in cmds if c.cmd.upper() == "COPY" and c.flags == ("--from=build",)]
    assert [c.value for c in copies] == [("/opt/python", "/opt/python"), ("/opt/venv", "/opt/venv")]
    # the build stage installs the lockfile before the steps: a changed step does not reinstall torch
    lock_line = next(c.start_line for c in runs if "--require-hashes" in c.value[0])
    assert lock_line < build_run.start_line < froms[1].start_line
    assert "ninja-build" in text and "build-essential" in text
    assert "{ command -v nvcc; } >/dev/null || { echo 'moe-env: flash-attn: precondition 1 failed" in body
    assert "export PYTHON=/opt/venv/bin/python" in body  # the steps' commands use "$PYTHON"
    # without --gpu-arch, the steps' own choice stands
    text = render_dockerfile(plan_dockerfile(matrix, resolution, [step], DockerOptions()))
    assert 'ENV TORCH_CUDA_ARCH_LIST="7.0"' in text and 'export TORCH_CUDA_ARCH_LIST="7.0"' in text


# ---------------------------------------------------------------- -o: atomic, no clobber


def test_output_writes_dockerfile_and_lockfile_and_does_not_clobber(toy):
    out = toy.root / "ctx" / "Dockerfile"
    out.parent.mkdir()
    args = ["dockerfile", "toy", "--stack", "toy-good", "-o", str(out)]
    r = _cli(args)
    assert r.returncode == 0, r.stderr
    lock = out.parent / "requirements.toy-good.txt"
    assert lock.read_bytes() == toy.locks["toy-good"].read_bytes()
    _check_shape(out.read_text(), "toymoe", next(s for s in load_matrix(toy.matrix).project("toy").stacks if s.id == "toy-good"), load_matrix(toy.matrix))
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left

    assert _cli(args).returncode == 0  # byte-identical: fine without --force

    out.write_text("FROM scratch\n")
    r = _cli(args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--force" in r.stderr
    assert out.read_text() == "FROM scratch\n"

    lock.write_text("# mine\n")
    out.write_bytes(b"")
    r = _cli(args)
    assert r.returncode == 2 and lock.read_text() == "# mine\n" and out.read_bytes() == b""  # nothing half-written

    assert _cli(args + ["--force"]).returncode == 0
    assert out.read_text().startswith("# Generated by moe-env") and lock.read_bytes() == toy.locks["toy-good"].read_bytes()


@pytest.mark.parametrize("given,dockerfile", [
    ("newctx", "newctx/Dockerfile"),  # a folder that does not exist yet: the build context, made
    ("newctx/", "newctx/Dockerfile"),
    ("deep/er/ctx", "deep/er/ctx/Dockerfile"),
    ("other/Dockerfile.mgm", "other/Dockerfile.mgm"),  # names the Dockerfile itself
    ("ctx2/mgm.dockerfile", "ctx2/mgm.dockerfile"),
])
def test_output_names_a_context_folder_unless_it_names_the_dockerfile(toy, given, dockerfile):
    work = toy.root / f"o-{abs(hash(given))}"
    work.mkdir()
    r = _cli(["dockerfile", "toy", "--stack", "toy-good", "-o", given], cwd=work)
    assert r.returncode == 0, r.stderr
    made = work / dockerfile
    assert made.is_file() and made.read_text().startswith("# Generated by moe-env")
    assert (made.parent / "requirements.toy-good.txt").is_file()
    assert sorted(p.name for p in work.iterdir()) == [Path(dockerfile).parts[0]]  # nothing beside it in the parent


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_folder_is_one_line(toy):
    d = toy.root / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = _cli(["dockerfile", "toy", "--stack", "toy-good", "-o", str(d / "Dockerfile")])
    finally:
        d.chmod(0o755)
    assert r.returncode == 2 and r.stderr.startswith("moe-env: error: cannot write") and r.stderr.count("\n") == 1


def test_output_onto_a_folder_is_one_line_and_writes_nothing(toy):
    d = toy.root / "ctx2"
    (d / "Dockerfile").mkdir(parents=True)
    r = _cli(["dockerfile", "toy", "--stack", "toy-good", "-o", str(d), "--force"])  # -o DIR: DIR/Dockerfile, a folder here
    assert r.returncode == 2 and "is a folder" in r.stderr and r.stderr.count("\n") == 1
    assert sorted(p.name for p in d.iterdir()) == ["Dockerfile"]  # checked before anything is written


@pytest.mark.parametrize("args,needle", [
    (["dockerfile", "nosuch"], "unknown project"),
    (["dockerfile", "toy", "--stack", "nosuch"], "no stack"),
    (["dockerfile", "toy", "--stack", "toy-good", "--model", "99x9b"], "unknown model variant"),
    (["dockerfile", "toy", "--cuda", "99.9"], "--cuda 99.9"),
    (["dockerfile", "toy", "--stack", "toy-good", "--cuda", "11.8", "-o", "Dockerfile"], "moe-env lock toymoe"),
    (["dockerfile", "toy", "--stack", "toy-good", "--gpu-arch", "sm_80"], "compute capability"),
    (["dockerfile", "toy", "--stack", "toy-good", "--wheelhouse", "../outside"], "inside the build context"),
    (["dockerfile", "toy", "--stack", "toy-good", "-o", "/proc/no/dir/Dockerfile"], "cannot create the folder /proc/no/dir"),
])
def test_bad_input_is_one_line_exit_2(toy, args, needle):
    r = _cli(args, cwd=toy.root)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("moe-env: error:") and needle in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_retargeted_cuda_picks_that_image_and_needs_a_fresh_lock(toy):
    r = _cli(["dockerfile", "toy", "--stack", "toy-good", "--cuda", "11.8"])
    assert r.returncode == 0, r.stderr
    assert "ARG RUNTIME_IMAGE=nvidia/cuda:11.8.0-cudnn8-devel-ubuntu22.04" in r.stdout  # deepspeed JITs: devel
    assert "retargeted" in r.stdout and "--cuda 11.8" in r.stderr


def test_unknown_cuda_needs_base():
    matrix = load_matrix()
    stack = SimpleNamespace(id="s", cuda="99.9", python="3.10", pins={}, source_builds=[])
    res = SimpleNamespace(project="p", variant=None, stack=stack, target=None, reasons=[])
    with pytest.raises(UsageError, match="--base"):
        plan_dockerfile(matrix, res, [], DockerOptions())
    text = render_dockerfile(plan_dockerfile(matrix, res, [], DockerOptions(base="my/mirror:1")))
    assert "ARG RUNTIME_IMAGE=my/mirror:1" in text


def test_parse_gpu_archs():
    assert parse_gpu_archs("8.0,9.0") == ["8.0", "9.0"]
    assert parse_gpu_archs("8.0;8.6+PTX 9.0a") == ["8.0", "8.6+PTX", "9.0a"]
    assert parse_gpu_archs("") == []
    with pytest.raises(UsageError):
        parse_gpu_archs("ampere")


def test_help_teaches():
    r = _cli(["dockerfile", "--help"])
    assert r.returncode == 0 and "examples:" in r.stdout and "--build --strict" in r.stdout


def test_header_names_the_command_but_not_where_it_was_written(toy):
    exe = Path(sys.executable).parent / "moe-env"
    if not exe.exists():
        pytest.skip("the moe-env console script is not installed beside this interpreter")
    outs = []
    for name, extra in (("a", []), ("b", ["--force"])):
        (toy.root / name).mkdir()
        r = subprocess.run([str(exe), "dockerfile", "toy", "--stack", "toy-good", "-o", str(toy.root / name / "Dockerfile"), *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        outs.append((toy.root / name / "Dockerfile").read_text())
    assert outs[0] == outs[1]
    from moe_env import __version__
    assert outs[0].splitlines()[0] == f"# Generated by moe-env {__version__}: moe-env dockerfile toy --stack toy-good"


@pytest.mark.parametrize("flag, value", [
    ("--base", "ubuntu:22.04\nRUN touch /pwned"),
    ("--base", "${EVIL}"),
    ("--wheelhouse", "wheels\nRUN touch /pwned"),
    ("--matrix-dir", "../outside"),
    ("--lockfile", "/etc/passwd"),
    ("--lockfile", "lock-${HOME}.txt"),
    ("--moe-env", "moe-env==0.1.0\nRUN touch /pwned"),
    ("--moe-env", "moe-env @ https://example.invalid/x.whl"),
    ("--moe-env", "evilpkg==1.0"),
])
def test_values_that_would_reach_a_dockerfile_instruction_are_refused(flag, value, tmp_path):
    """issue 16: a newline or ${...} in an argument never reaches a Dockerfile instruction."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "moe_env", "dockerfile", "mgm", f"{flag}={value}", "-o",
                           str(tmp_path / "ctx" / "Dockerfile")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MOE_ENV_NVCC_VERSION": "none"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("moe-env: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ctx").exists()


def test_output_folder_is_created(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "new" / "deeper" / "Dockerfile"
    proc = subprocess.run([sys.executable, "-m", "moe_env", "dockerfile", "mgm", "-o", str(out)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "MOE_ENV_NVCC_VERSION": "none"})
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and (out.parent / "requirements.mgm-8x7b-cu117.txt").is_file()


def test_output_dir_gets_a_wheel_of_this_moe_env_that_installs_without_an_index(tmp_path):
    """`dockerfile -o DIR`: the Dockerfile COPYs a wheel of the running moe-env from the context; that wheel is
    real (pip installs it with no index) and carries the shipped matrix and lockfiles."""
    import subprocess
    import sys
    import venv

    ctx = tmp_path / "ctx"
    env = {**os.environ, "MOE_ENV_NVCC_VERSION": "none"}
    proc = subprocess.run([sys.executable, "-m", "moe_env", "dockerfile", "mgm", "-o", f"{ctx}/"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = ctx.glob("moe_env-*-py3-none-any.whl")
    text = (ctx / "Dockerfile").read_text()
    assert f"COPY {wheel.name} /opt/moe-env/{wheel.name}" in text
    assert f"/opt/moe-env/venv/bin/python -m pip install /opt/moe-env/{wheel.name}" in text
    assert "moe-env==" not in text  # no index serves it
    first = wheel.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "moe_env", "dockerfile", "mgm", "-o", str(ctx)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and wheel.read_bytes() == first  # the same moe-env gives the same bytes
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    py = target / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = target / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "moe_env" / "_data"
    assert (data / "compat_matrix" / "projects" / "minigemini.toml").is_file()
    assert (data / "lockfiles" / "minigemini" / "mgm-8x7b-cu117" / "requirements.txt").is_file()
    assert (target / "bin" / "moe-env").is_file()


def test_published_moe_env_spec_is_installed_as_named():
    r = _cli(["dockerfile", "mgm", "--moe-env", "moe-env==0.1.0"])
    assert r.returncode == 0 and "pip install moe-env==0.1.0" in r.stdout and ".whl" not in r.stdout
