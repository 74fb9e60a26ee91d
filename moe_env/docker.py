"""Dockerfile rendering for one resolved stack: base image, hash-checked lockfile, source builds, doctor gate.

Why it looks the way it does:
- The base image's CUDA matches the stack's torch build (the tag table is `[[cuda_image]]` in the
  matrix). A devel image (nvcc, headers) is used only where something compiles; the image people
  run is the runtime flavour, with the built virtual environment copied over (multi-stage), unless
  something compiles on the node too (DeepSpeed's JIT ops), where it stays devel.
- Layers go from slow-and-stable to fast-and-changing: system Python, the stack's venv from its
  lockfile (torch: gigabytes, changes only with the lockfile), source builds, then moe-env in its own
  venv, then the gate. Upgrading moe-env or editing the project never reinstalls torch.
- The gate is `moe-env doctor PROJECT --build --strict`: at build time there is no GPU and no driver,
  so those checks wait for the container start, where the entrypoint runs the full doctor.
- Nothing here prints or touches the file system; the command module writes.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, List

from moe_env import __version__
from moe_env.errors import UsageError

VENV = "/opt/venv"  # the stack's interpreter and packages
TOOL_DIR = "/opt/moe-env"  # moe-env's own venv, the lockfile, an optional matrix
TOOL_VENV = f"{TOOL_DIR}/venv"
LOCK_IN_IMAGE = f"{TOOL_DIR}/requirements.txt"
MATRIX_IN_IMAGE = f"{TOOL_DIR}/compat_matrix"
PYTHON_DIR = "/opt/python"  # uv-managed interpreters, when the base image has none of the stack's version
WHEELHOUSE_IN_IMAGE = "/wheelhouse"

# system packages: what every stage needs, and what compiling needs on top
APT_PYTHON = ["python3", "python3-venv", "ca-certificates"]
APT_BUILD = ["git", "ninja-build", "build-essential"]

# bash with pipefail: the build steps are written for bash (as `moe-env build-steps` runs them)
SHELL = 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]'

_ARCH_RE = re.compile(r"^\d+\.\d+[a-z]?(\+PTX)?$")
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$")


@dataclass
class DockerOptions:
    """What the user chose beyond the stack (CLI flags)."""

    gpu_archs: List[str] = field(default_factory=list)  # ["8.0", "9.0"]: TORCH_CUDA_ARCH_LIST
    base: str = ""  # one image for every stage (NGC, a local mirror); "" = the matching nvidia/cuda tags
    apt: bool = True  # install Python (and compilers) with apt-get; off for images that bring them
    wheelhouse: str = ""  # build-context folder of wheels: every pip install is offline from it
    matrix_dir: str = ""  # build-context folder holding a compat_matrix the image should use
    lockfile: str = ""  # build-context path of the stack's lockfile
    moe_env_spec: str = ""  # what pip installs for moe-env (a published version); "" = the wheel below
    moe_env_wheel: str = ""  # build-context path of a wheel of the running moe-env (moe_env.selfwheel)
    command: str = ""  # the command line that generated the file, for its header


@dataclass
class DockerPlan:
    """Everything render_dockerfile needs, decided."""

    project: str
    project_title: str
    variant: str  # "" when the project's default variants apply
    stack_id: str
    cuda: str  # the stack's torch CUDA ("12.1" or "cpu")
    python: str  # "3.10"
    torch: str  # pinned torch version, "" when the stack pins none
    build_image: str  # "" when nothing compiles
    runtime_image: str
    lockfile: str
    steps: List[Any]  # BuildStep-like objects (package, reason, env, preconditions, commands, verify)
    options: DockerOptions
    reasons: List[str] = field(default_factory=list)

    jit_reason: str = ""  # why the image people run needs nvcc too ("" when it does not)

    @property
    def multi_stage(self) -> bool:
        """Compile in a devel stage and copy into a runtime one, unless the runtime needs nvcc as well."""
        return bool(self.steps) and self.build_image != self.runtime_image


def parse_gpu_archs(text: str) -> List[str]:
    """`8.0,9.0` (or `8.0;9.0`, `8.6+PTX`) -> ["8.0", "9.0"]; a clear error on anything else."""
    archs = [a.strip() for a in re.split(r"[,; ]+", text or "") if a.strip()]
    for a in archs:
        if not _ARCH_RE.match(a):
            raise UsageError(f"--gpu-arch: {a!r} is not a compute capability like 8.0, 9.0 or 8.6+PTX")
    return archs


def default_lockfile_name(stack_id: str) -> str:
    return f"requirements.{stack_id}.txt"


def runtime_compiles(stack) -> str:
    """Why the running image needs nvcc too, or "".

    DeepSpeed without pre-built ops JIT-compiles them at first use, so the image people run needs the
    CUDA toolkit (doctor reports `build.nvcc-missing` otherwise). A stack whose build steps build
    deepspeed pre-builds its ops.
    """
    pins = {k.lower(): v for k, v in (getattr(stack, "pins", {}) or {}).items()}
    builds = {b.lower() for b in (getattr(stack, "source_builds", []) or [])}
    if "deepspeed" in pins and "deepspeed" not in builds:
        return f"deepspeed {pins['deepspeed']} JIT-compiles its ops at first use (no pre-built ops in this stack)"
    return ""


def choose_images(matrix, cuda: str, needs_compiler: bool, base: str = "", runtime_needs_nvcc: bool = False) -> "tuple[str, str]":
    """(build image, runtime image) for the stack's CUDA; build image is "" when nothing compiles."""
    if base:
        return (base if needs_compiler else "", base)
    if cuda in ("", "cpu"):
        # no CUDA: a plain Ubuntu of the release the CUDA images above default to (22.04)
        return ("ubuntu:22.04" if needs_compiler else "", "ubuntu:22.04")
    row = matrix.cuda_image(cuda)
    if row is None:
        known = ", ".join(r.cuda for r in matrix.cuda_images) or "none"
        raise UsageError(
            f"no nvidia/cuda image is known for CUDA {cuda} (known: {known}); pass --base IMAGE"
        )
    devel = f"nvidia/cuda:{row.tag('devel')}"
    runtime = devel if runtime_needs_nvcc else f"nvidia/cuda:{row.tag('runtime')}"
    return (devel if needs_compiler else "", runtime)


def plan_dockerfile(matrix, resolution, steps: List[Any], options: DockerOptions) -> DockerPlan:
    """Decide images and names for `resolution` (a Resolution: project, variant, stack, target, reasons)."""
    project = resolution.project
    stack = resolution.stack
    variant = getattr(resolution, "variant", None)
    project_name = getattr(project, "name", None) or str(project)
    info = getattr(project, "info", None)
    title = getattr(info, "title", "") or project_name
    variant_id = getattr(variant, "id", None) or (variant if isinstance(variant, str) else "") or ""
    for path, flag in ((options.wheelhouse, "--wheelhouse"), (options.matrix_dir, "--matrix-dir"), (options.lockfile, "--lockfile")):
        if path and (not _SAFE_PATH_RE.match(path) or ".." in path.split("/")):
            raise UsageError(f"{flag}: {path!r} must be a relative path inside the build context (letters, digits, ._-/)")
    target = getattr(resolution, "target", None)
    cuda = getattr(target, "cuda", "") or stack.cuda
    python = getattr(target, "python", "") or stack.python
    torch = getattr(target, "torch", "") or stack.pins.get("torch", "")
    jit = runtime_compiles(stack) if cuda != "cpu" else ""
    build_image, runtime_image = choose_images(matrix, cuda, bool(steps), options.base, bool(jit))
    reasons = [str(r) for r in (getattr(resolution, "reasons", None) or [])]
    return DockerPlan(
        project=project_name,
        project_title=title,
        variant=variant_id,
        stack_id=stack.id,
        cuda=cuda,
        python=python,
        torch=torch,
        build_image=build_image,
        runtime_image=runtime_image,
        lockfile=options.lockfile or default_lockfile_name(stack.id),
        steps=list(steps),
        options=options,
        reasons=reasons,
        jit_reason=jit,
    )


# ---------------------------------------------------------------- rendering


def _run(lines: List[str]) -> str:
    """One RUN instruction from shell lines joined by ` && ` (each on its own continued line)."""
    return "RUN " + " && \\\n    ".join(lines)


def _apt(packages: List[str]) -> str:
    return _run([
        "apt-get update",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + " ".join(packages),
        "rm -rf /var/lib/apt/lists/*",
    ])


def _doctor_args(plan: DockerPlan) -> List[str]:
    args = ["moe-env", "doctor", plan.project]
    if plan.variant:
        args += ["--model", plan.variant]
    # no --lockfile: pip's --require-hashes already enforced it, and source-built packages are
    # deliberately outside the lockfile (doctor would call them extras)
    args += ["--python", f"{VENV}/bin/python"]
    return args


def _env_block(plan: DockerPlan) -> List[str]:
    env = [
        "PIP_DISABLE_PIP_VERSION_CHECK=1",
        "PIP_NO_CACHE_DIR=1",
        f"UV_PYTHON_INSTALL_DIR={PYTHON_DIR}",
    ]
    if plan.options.wheelhouse:
        env += ["PIP_NO_INDEX=1", f"PIP_FIND_LINKS={WHEELHOUSE_IN_IMAGE}"]
    return ["ENV " + " \\\n    ".join(env)]


def _wheelhouse_mount(plan: DockerPlan) -> str:
    if not plan.options.wheelhouse:
        return ""
    return f"--mount=type=bind,source={plan.options.wheelhouse},target={WHEELHOUSE_IN_IMAGE} "


def _python_venv(plan: DockerPlan) -> List[str]:
    py = plan.python
    pybin = f"python{py}"
    mount = _wheelhouse_mount(plan)
    return [
        f"# Python {py} for the stack: the system's when it has {pybin}, else a uv-managed build in {PYTHON_DIR}",
        f"RUN {mount}set -eu; mkdir -p {PYTHON_DIR}; \\\n"
        f"    if command -v {pybin} >/dev/null 2>&1; then {pybin} -m venv {VENV}; \\\n"
        f"    else python3 -m venv /tmp/uv && /tmp/uv/bin/python -m pip install uv && \\\n"
        f"         /tmp/uv/bin/uv venv --python {py} {VENV} && {VENV}/bin/python -m ensurepip && rm -rf /tmp/uv; fi; \\\n"
        f"    {VENV}/bin/python -c 'import sys; assert sys.version.startswith(\"{py}.\"), sys.version'",
    ]


def _lock_install(plan: DockerPlan) -> List[str]:
    mount = _wheelhouse_mount(plan)
    return [
        f"# The stack's lockfile, every pin checked against its sha256 (torch lives here: this layer",
        f"# changes only when the lockfile does)",
        f"COPY {plan.lockfile} {LOCK_IN_IMAGE}",
        f"RUN {mount}{VENV}/bin/python -m pip install --require-hashes -r {LOCK_IN_IMAGE}",
    ]


def _arch_list(plan: DockerPlan) -> str:
    """TORCH_CUDA_ARCH_LIST: --gpu-arch, else what the build steps chose (the stack's list or torch's)."""
    if plan.options.gpu_archs:
        return ";".join(plan.options.gpu_archs)
    for step in plan.steps:
        value = (getattr(step, "env", {}) or {}).get("TORCH_CUDA_ARCH_LIST")
        if value:
            return str(value)
    return ""


def _step_lines(plan: DockerPlan) -> List[str]:
    archs = _arch_list(plan)
    out = ["# Source builds (see `moe-env build-steps`): no GPU is asked at build time, the targets are named"]
    if archs:
        out.append(f"ENV TORCH_CUDA_ARCH_LIST=\"{archs}\"")
    mount = _wheelhouse_mount(plan)
    for step in plan.steps:
        reason = " ".join(str(getattr(step, "reason", "")).split())
        out.append(f"# {step.package}: {reason}" if reason else f"# {step.package}")
        env = dict(getattr(step, "env", {}) or {})
        if plan.options.gpu_archs and "TORCH_CUDA_ARCH_LIST" in env:
            env["TORCH_CUDA_ARCH_LIST"] = archs  # --gpu-arch wins over whatever the step guessed
        lines = ["set -eux", f"export PYTHON={VENV}/bin/python"]
        # values may be shell expressions ("${MAX_JOBS:-$(nproc)}"): double quotes keep them working,
        # exactly as in the `moe-env build-steps` script
        lines += [f'export {k}="{v}"' for k, v in env.items()]
        for i, pre in enumerate(getattr(step, "preconditions", []) or [], 1):
            msg = shlex.quote(f"moe-env: {step.package}: precondition {i} failed (it said what it expected and found); nothing was built")
            lines.append(f"{{ {_one_line(str(pre))}; }} >/dev/null || {{ echo {msg} >&2; exit 1; }}")
        # the image's venv has pip (python -m venv): the script's pip_install helper is not needed here
        lines += [_pip_in_image(str(c)) for c in getattr(step, "commands", []) or []]
        lines += [str(c) for c in getattr(step, "verify", []) or []]
        body = "; \\\n    ".join(_one_line(c) for c in lines)
        out.append(f"RUN {mount}{body}")
    return out


def _one_line(cmd: str) -> str:
    """A step command as one shell line (Dockerfile continuation needs it)."""
    return " ".join(line.strip() for line in cmd.strip().splitlines() if line.strip())


def _pip_in_image(cmd: str) -> str:
    return '"$PYTHON" -m pip install ' + cmd[len("pip_install "):] if cmd.startswith("pip_install ") else cmd


def _moe_env_install(plan: DockerPlan) -> List[str]:
    mount = _wheelhouse_mount(plan)
    lines = [
        "# moe-env in its own venv (its dependencies never touch the stack's pins), after the stack:",
        "# upgrading it does not reinstall torch",
    ]
    spec = plan.options.moe_env_spec
    if not spec:
        from moe_env.selfwheel import wheel_name

        wheel = plan.options.moe_env_wheel or wheel_name()
        lines += [f"# from a wheel of the moe-env that wrote this file, in the build context (`moe-env dockerfile -o DIR` puts it there)",
                  f"COPY {wheel} {TOOL_DIR}/{wheel.rsplit('/', 1)[-1]}"]
        spec = f"{TOOL_DIR}/{wheel.rsplit('/', 1)[-1]}"
    elif spec.endswith(".whl"):  # a wheel inside the build context
        lines.append(f"COPY {spec} {TOOL_DIR}/{spec.rsplit('/', 1)[-1]}")
        spec = f"{TOOL_DIR}/{spec.rsplit('/', 1)[-1]}"
    lines.append(
        f"RUN {mount}PATH=\"${{PATH#{VENV}/bin:}}\" python3 -m venv {TOOL_VENV} && \\\n"
        f"    {TOOL_VENV}/bin/python -m pip install {shlex.quote(spec)} && \\\n"
        f"    ln -sf {TOOL_VENV}/bin/moe-env /usr/local/bin/moe-env")
    if plan.options.matrix_dir:
        lines += [
            "# the team's compat_matrix (project files, `extends` additions) instead of the shipped one",
            f"COPY {plan.options.matrix_dir} {MATRIX_IN_IMAGE}",
            f"ENV MOE_ENV_MATRIX={MATRIX_IN_IMAGE}",
        ]
    return lines


def _gate_and_entrypoint(plan: DockerPlan) -> List[str]:
    doctor = _doctor_args(plan)
    gate = " ".join(shlex.quote(a) for a in doctor + ["--build", "--strict"])
    full = " ".join(shlex.quote(a) for a in doctor + ["--strict"])
    script = f'if [ "${{MOE_ENV_DOCTOR:-1}}" != 0 ]; then {full} || exit $?; fi; exec "$@"'
    entry = json.dumps(["/bin/sh", "-c", script, "moe-env-entrypoint"])
    return [
        "# The gate: the build fails when this stack cannot train the project. No GPU or driver exists",
        "# here, so those checks wait for the container start (the entrypoint; MOE_ENV_DOCTOR=0 skips it)",
        f"RUN {gate}",
        f"ENTRYPOINT {entry}",
        'CMD ["bash"]',
    ]


def _header(plan: DockerPlan) -> List[str]:
    what = plan.project_title + (f", variant {plan.variant}" if plan.variant else "")
    pins = []
    if plan.torch:
        pins.append(f"torch {plan.torch}")
    pins.append("CPU only" if plan.cuda in ("", "cpu") else f"CUDA {plan.cuda}")
    pins.append(f"Python {plan.python}")
    tag = f"{plan.project}:{plan.stack_id}"
    lines = [
        f"# Generated by moe-env {__version__}" + (f": {plan.options.command}" if plan.options.command else ""),
        f"# {what}; stack {plan.stack_id} ({', '.join(pins)})",
    ]
    for r in plan.reasons:
        lines.append("#   " + " ".join(r.split()))
    lines += [
        f"# The build context needs {plan.lockfile} (moe-env lock writes it)"
        + (f" and {plan.options.wheelhouse}/" if plan.options.wheelhouse else "")
        + (f" and {plan.options.matrix_dir}/" if plan.options.matrix_dir else "") + ".",
        f"#   build: docker build -t {tag} .    (buildah/podman: add --format docker, which keeps SHELL)",
        f"#   run:   docker run --gpus all --rm -it {tag}    (runs `moe-env doctor --strict` first)",
    ]
    if plan.multi_stage:
        lines.append("# Compiled packages are built in the devel stage and copied into the runtime stage.")
    if plan.jit_reason:
        lines.append(f"# The image keeps nvcc (devel flavour): {plan.jit_reason}.")
    return lines


def render_dockerfile(plan: DockerPlan) -> str:
    out: List[str] = _header(plan) + [""]
    apt = plan.options.apt
    if plan.multi_stage:
        out.append(f"ARG BUILD_IMAGE={plan.build_image}")
    out.append(f"ARG RUNTIME_IMAGE={plan.runtime_image}")
    out.append("")
    if plan.multi_stage:
        out.append("FROM ${BUILD_IMAGE} AS build")
        out.append(SHELL)
        out += _env_block(plan)
        if apt:
            out.append("# Python for the venvs, compilers for the source builds")
            out.append(_apt(APT_PYTHON + APT_BUILD))
        out += _python_venv(plan)
        out.append(f"ENV PATH={VENV}/bin:$PATH VIRTUAL_ENV={VENV}")
        out += _lock_install(plan)
        out += _step_lines(plan)
        out.append("")
        out.append("FROM ${RUNTIME_IMAGE} AS runtime")
        out.append(SHELL)
        out += _env_block(plan)
        if apt:
            out.append(_apt(APT_PYTHON))
        out.append("# the stack's venv, with its compiled packages, from the devel stage")
        out.append(f"COPY --from=build {PYTHON_DIR} {PYTHON_DIR}")
        out.append(f"COPY --from=build {VENV} {VENV}")
        out.append(f"COPY {plan.lockfile} {LOCK_IN_IMAGE}")
    else:
        if plan.steps or plan.jit_reason:
            out.append("# one stage: the image people run needs nvcc as well")
        else:
            out.append("# nothing in this stack compiles: one stage on the runtime image")
        out.append("FROM ${RUNTIME_IMAGE} AS runtime")
        out.append(SHELL)
        out += _env_block(plan)
        if apt:
            out.append(_apt(APT_PYTHON + (APT_BUILD if plan.steps or plan.jit_reason else [])))
        out += _python_venv(plan)
        if plan.steps:
            out.append(f"ENV PATH={VENV}/bin:$PATH VIRTUAL_ENV={VENV}")
        out += _lock_install(plan)
        if plan.steps:
            out += _step_lines(plan)
    out += _moe_env_install(plan)
    if plan.multi_stage or not plan.steps:  # (a single stage with steps has it already)
        out.append(f"ENV PATH={VENV}/bin:$PATH VIRTUAL_ENV={VENV}")
    out += _gate_and_entrypoint(plan)
    return "\n".join(out) + "\n"
