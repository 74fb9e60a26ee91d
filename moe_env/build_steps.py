"""Exact source-build instructions for the packages no wheel serves on the target.

They run after the lockfile is installed, in the same interpreter ($PYTHON), without build
isolation: every one of them compiles against the installed torch (flash-attn, apex, grouped_gemm,
Transformer Engine), or records it (deepspeed's setup.py imports torch to write torch_info, which
doctor reads; without torch it writes 0.0 and cannot pre-compile ops). Each step names its
environment, the preconditions it checks first (nvcc's major equals torch's CUDA major, ninja),
the commands, and a command that proves the build worked. Versions come from the stack; the only
facts kept here are how each upstream builds (with sources), never which versions fit.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from moe_env.errors import UsageError
from moe_env.resolver import Resolution, parse_archs

# How each upstream documents its source build (the recipes below follow these pages).
SOURCES = {
    "flash-attn": ["https://github.com/Dao-AILab/flash-attention#installation-and-features "
                   "(pip install flash-attn --no-build-isolation; MAX_JOBS; FLASH_ATTENTION_FORCE_BUILD)"],
    "deepspeed": ["https://www.deepspeed.ai/tutorials/advanced-install/ (DS_BUILD_OPS, DS_BUILD_<OP>, TORCH_CUDA_ARCH_LIST)",
                  "release:deepspeed==0.13.2:setup.py imports torch; ops pre-compile only with torch installed"],
    "apex": ["https://github.com/NVIDIA/apex#from-source (--no-build-isolation, --cpp_ext, --cuda_ext)"],
    "grouped-gemm": ["https://github.com/tgale96/grouped_gemm (setup.py builds the grouped_gemm_backend CUDA extension)"],
    "nv-grouped-gemm": ["fanshiqing/grouped_gemm@280618043998b4c8074bf56ed4b17a9fd379d222:setup.py name nv_grouped_gemm, "
                        "CUDAExtension grouped_gemm_backend; imports torch; without TORCH_CUDA_ARCH_LIST it asks "
                        "torch.cuda for the GPU (fails on a build machine without one)"],
    "transformer-engine": ["https://docs.nvidia.com/deeplearning/transformer-engine/user-guide/installation.html "
                           "(pip install --no-build-isolation transformer_engine[pytorch]; NVTE_FRAMEWORK, NVTE_CUDA_ARCHS)"],
}

# packages built from an upstream git commit when a stack names them as `NAME@COMMIT`
GIT_REPOS = {
    "megatron-core": "NVIDIA/Megatron-LM",
    "megatron-lm": "NVIDIA/Megatron-LM",
    "apex": "NVIDIA/apex",
    "flash-attn": "Dao-AILab/flash-attention",
    "transformer-engine": "NVIDIA/TransformerEngine",
    "grouped-gemm": "tgale96/grouped_gemm",
    "nv-grouped-gemm": "fanshiqing/grouped_gemm",
}
IMPORT_NAMES = {
    "megatron-core": "megatron.core",
    "megatron-lm": "megatron.core",
    "transformer-engine": "transformer_engine.pytorch",
    "transformer-engine-torch": "transformer_engine.pytorch",
    "grouped-gemm": "grouped_gemm_backend",
    "nv-grouped-gemm": "grouped_gemm_backend",
    "flash-attn": "flash_attn_2_cuda",
    "apex": "amp_C",
}

# compiled against torch: always a build step, and left out of the lockfile (no metadata without torch)
# (transformer-engine itself is a wheel; its PyTorch extension transformer-engine-torch is the sdist)
COMPILED = ("flash-attn", "apex", "grouped-gemm", "nv-grouped-gemm", "transformer-engine-torch")
# deepspeed's ops pre-compiled when a stack lists it in source_builds (the ones ZeRO/MoE training uses)
DS_PREBUILT_OPS = ("fused_adam", "cpu_adam")
# rough memory one nvcc job of each package needs (GiB); MAX_JOBS = min(CPUs, MemAvailable / this)
GIB_PER_JOB = {"flash-attn": 6, "transformer-engine": 4}


@dataclass
class BuildStep:
    package: str
    reason: str
    env: Dict[str, str]  # values may be shell expressions ("${MAX_JOBS:-$(...)}"), evaluated by the script
    preconditions: List[str]  # shell commands that must succeed before building
    commands: List[str]
    verify: List[str]  # shell commands that prove the build worked
    version: str = ""
    sources: List[str] = field(default_factory=list)
    prebuilt: Optional[bool] = None  # True: a prebuilt wheel is downloaded; False: compiled; None: not a wheel question
    summary: str = ""  # one clause for lock headers and Dockerfiles: which wheel, or why it compiles

    def to_dict(self) -> dict:
        return asdict(self)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _source_builds(resolution: Resolution) -> Dict[str, str]:
    """{normalised name: git ref or ""} from the stack's source_builds."""
    out: Dict[str, str] = {}
    for entry in resolution.stack.source_builds:
        name, _, ref = entry.partition("@")
        out[norm(name.strip())] = ref.strip()
    return out


def _pins(resolution: Resolution) -> Dict[str, Tuple[str, str]]:
    return {norm(k.split("[", 1)[0]): (k.split("[", 1)[0], v) for k, v in resolution.stack.pins.items()}


def _deepspeed_needs_step(resolution: Resolution) -> bool:
    pins = _pins(resolution)
    if "deepspeed" not in pins:
        return False
    if "deepspeed" in _source_builds(resolution):
        return True
    rel = _release(resolution, "deepspeed", pins["deepspeed"][1])
    return bool(rel and rel.build_imports_torch)


def _release(resolution: Resolution, package: str, version: str):
    m = resolution.matrix
    if m is None:
        return None
    return next((r for r in m.releases.get(package, []) if r.version == version), None)


def build_later(resolution: Resolution) -> List[str]:
    """Packages that get a build step, as `name==version` (or `name@ref`), in build order."""
    out = []
    for step_pkg, version, ref in _plan(resolution):
        out.append(f"{step_pkg}@{ref}" if ref else (f"{step_pkg}=={version}" if version else step_pkg))
    return out


def excluded_from_lock(resolution: Resolution) -> List[str]:
    """Normalised names left out of the lockfile: compiled packages and git builds (deepspeed stays: its
    metadata builds without torch, so its dependencies are locked and hashed; the step rebuilds it)."""
    return [norm(p) for p, _, ref in _plan(resolution) if norm(p) != "deepspeed" or ref]


def _plan(resolution: Resolution) -> List[Tuple[str, str, str]]:
    """(package, version, git ref) for every step, in build order."""
    pins = _pins(resolution)
    sb = _source_builds(resolution)
    plan: List[Tuple[str, str, str]] = []
    if _deepspeed_needs_step(resolution):
        plan.append((pins["deepspeed"][0] if "deepspeed" in pins else "deepspeed",
                     pins.get("deepspeed", ("", ""))[1], sb.get("deepspeed", "")))
    names = list(sb) + [n for n in pins if n in COMPILED and n not in sb]
    for n in names:
        if n == "deepspeed":
            continue
        original, version = pins.get(n, (n, ""))
        plan.append((original, version, sb.get(n, "")))
    for package, version, ref in plan:  # these go into shell commands and Dockerfile RUN lines unquoted
        _safe(package, _NAME, "package name", resolution)
        _safe(version, _VERSION, "version", resolution)
        _safe(ref, _REF, "git ref", resolution)
    return plan


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?$")
_VERSION = re.compile(r"^$|^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_REF = re.compile(r"^$|^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def _safe(value: str, pattern, what: str, resolution: Resolution) -> None:
    """A matrix value (perhaps from a user's override) that would reach a script: its grammar, or a UsageError."""
    if not pattern.match(value or ""):
        from moe_env.untrusted import printable

        raise UsageError(f"{resolution.project.file}: stack {resolution.stack.id}: {what} {printable(value)!r} cannot go into "
                         "a build script (letters, digits and . _ + ! - only)")


# ---------------------------------------------------------------- the steps


def build_steps(resolution: Resolution, gpu_archs: Optional[Sequence[str]] = None, live: bool = False) -> List[BuildStep]:
    """The steps, in build order. `live` (lock --refresh) also asks flash-attn's release assets."""
    archs = parse_archs(gpu_archs) or list(resolution.target.gpu_archs) or parse_archs(resolution.stack.gpu_archs) \
        or list(resolution.target.build_archs)
    steps = []
    for package, version, ref in _plan(resolution):
        n = norm(package)
        if resolution.target.cuda == "cpu" and n in COMPILED:
            steps.append(_cannot_build(resolution, package, version or ref))
        elif ref:
            steps.append(_git_step(resolution, package, ref, archs))
        elif n == "deepspeed":
            steps.append(_deepspeed_step(resolution, package, version, archs))
        elif n == "flash-attn":
            steps.append(_flash_attn_step(resolution, package, version, archs, live))
        elif n == "apex":
            steps.append(_apex_step(resolution, "", archs))
        else:
            steps.append(_pip_compiled_step(resolution, package, version, archs))
    return steps


def _cannot_build(resolution: Resolution, package: str, version: str) -> BuildStep:
    """A CUDA extension for a CPU target: nothing can compile it; say so and what to do instead."""
    p = resolution.project.name
    msg = (f"{package} {version} is a CUDA extension: it cannot be built for a CPU torch. Lock a CUDA target "
           f"(moe-env lock {p} --cuda auto, or --cuda X.Y), or leave {package} out on this machine")
    return BuildStep(package=package, version=version, reason=msg, env={}, preconditions=[],
                     commands=[f"echo {shlex.quote('moe-env build-steps: ' + msg)} >&2", "exit 1"], verify=[],
                     sources=list(SOURCES.get(norm(package), [])), prebuilt=False, summary="cannot be built for a CPU target")


def _arch_env(archs: List[str]) -> Dict[str, str]:
    return {"TORCH_CUDA_ARCH_LIST": ";".join(archs)} if archs else {}


def _max_jobs(package: str) -> str:
    per = GIB_PER_JOB.get(norm(package), 2)
    return ("${MAX_JOBS:-$(awk -v per=%d -v cpus=\"$(nproc)\" '/MemAvailable/ "
            "{j=int($2/1048576/per); if (j<1) j=1; if (j>cpus) j=cpus; print j}' /proc/meminfo)}" % per)


def _torch_ok(resolution: Resolution) -> str:
    """torch is the locked release and build: prints what it expected and what it found when not."""
    t = resolution.target
    base = (t.torch or resolution.stack.pins.get("torch", "")).split("+", 1)[0]
    cuda = None if t.cuda == "cpu" else t.cuda
    code = (
        "import sys, torch; "
        f"want = ({base!r}, {cuda!r}); "
        "have = (torch.__version__.split('+')[0], '.'.join((torch.version.cuda or '').split('.')[:2]) or None); "
        "ok = have == want; "
        "ok or print('expected torch %s (CUDA %s), found torch %s (CUDA %s)' % (want + have), file=sys.stderr); "
        "sys.exit(not ok)"
    )
    return f'"$PYTHON" -c {shlex.quote(code)}'


def _nvcc_checks(resolution: Resolution, minimum: str = "") -> List[str]:
    """nvcc's CUDA major is torch's (and at least `minimum`); each check prints expected and found."""
    major = resolution.target.cuda.split(".")[0]
    found = "v=$(nvcc --version 2>/dev/null | sed -n 's/.*release \\([0-9][0-9.]*\\),.*/\\1/p')"
    out = [f'{found}; [ "${{v%%.*}}" = "{major}" ] || {{ echo "expected nvcc release {major}.x (torch\'s CUDA '
           f'{resolution.target.cuda}), found ${{v:-no nvcc on PATH}}" >&2; false; }}']
    if minimum:
        mj, mn = minimum.split(".")
        out.append(f'{found}; echo "$v" | awk -F. \'{{exit !($1 > {mj} || ($1 == {mj} && $2 >= {mn}))}}\' || '
                   f'{{ echo "expected nvcc >= {minimum}, found ${{v:-no nvcc on PATH}}" >&2; false; }}')
    return out


def _common_pre(resolution: Resolution, nvcc_min: str = "") -> List[str]:
    pre = [_torch_ok(resolution)]
    if resolution.target.cuda != "cpu":
        pre += _nvcc_checks(resolution, nvcc_min)
    pre.append('command -v ninja || "$PYTHON" -m ninja --version')
    return pre


def _pip(*args: str) -> str:
    return "pip_install " + " ".join(args)  # SCRIPT_HEAD: pip of the target, else uv pip for it


def _deepspeed_step(resolution: Resolution, package: str, version: str, archs: List[str]) -> BuildStep:
    prebuild = "deepspeed" in _source_builds(resolution) and resolution.target.cuda != "cpu"
    env: Dict[str, str] = {}
    if prebuild:
        env["DS_BUILD_OPS"] = "0"
        for op in DS_PREBUILT_OPS:
            env[f"DS_BUILD_{op.upper()}"] = "1"
        env.update(_arch_env(archs))
        env["MAX_JOBS"] = _max_jobs(package)
        reason = (f"the stack pre-compiles deepspeed {version}'s {', '.join(DS_PREBUILT_OPS)} ops; the sdist compiles "
                  "them only when torch is importable at build time (--no-build-isolation, torch installed first)")
        pre = _common_pre(resolution)
        checks = " and ".join(f'installed_ops.get("{op}")' for op in DS_PREBUILT_OPS)
        verify_code = ("from deepspeed.git_version_info import installed_ops, torch_info; import sys; "
                       f'sys.exit(not ({checks} and torch_info["version"] != "0.0"))')
    else:
        env["DS_BUILD_OPS"] = "0"
        reason = (f"deepspeed {version}'s setup.py imports torch to record the torch/CUDA it was built for (ops JIT-compile "
                  "later against them); in an isolated build it records 0.0, so reinstall it without isolation")
        pre = [_torch_ok(resolution)]
        verify_code = ("from deepspeed.git_version_info import torch_info; import sys; "
                       'sys.exit(torch_info["version"] == "0.0")')
    return BuildStep(
        package=package, version=version, reason=reason, env=env, preconditions=pre,
        commands=[_pip("--no-build-isolation --no-deps --force-reinstall --no-cache-dir", f"{package}=={version}")],
        verify=[f'"$PYTHON" -c {shlex.quote(verify_code)}'],
        sources=list(SOURCES["deepspeed"]),
    )


def flash_attn_wheel(resolution: Resolution, version: str) -> Tuple[Optional[bool], str]:
    """(True: a prebuilt wheel matches / False: none does / None: the matrix does not know, explanation)."""
    from moe_env.wheels import flash_attn_wheel as answer

    t = resolution.target
    torch_version = t.torch or resolution.stack.pins.get("torch", "")
    a = answer(resolution.matrix, version, torch_version, t.cuda, t.python, t.cxx11_abi)
    return a.exists, a.why


def _flash_attn_live(resolution: Resolution, version: str, prebuilt: Optional[bool], why: str) -> Tuple[Optional[bool], str]:
    from moe_env.lock.live import matching_asset, release_assets

    t = resolution.target
    names, err = release_assets(version)
    if names is None:
        return prebuilt, f"{why} (live check of the release assets failed: {err}; the matrix answer stands)"
    torch_minor = ".".join((t.torch or resolution.stack.pins.get("torch", "")).split("+")[0].split(".")[:2])
    asset = matching_asset(names, version, torch_minor, t.cuda, t.python, t.cxx11_abi)
    if asset:
        return True, f"flash-attn {version}'s release assets include {asset} (checked live)"
    return False, (f"no asset of flash-attn {version}'s release matches torch {torch_minor}, CUDA {t.cuda}, "
                   f"Python {t.python} (checked live, {len(names)} assets)")


def _flash_attn_step(resolution: Resolution, package: str, version: str, archs: List[str], live: bool = False) -> BuildStep:
    prebuilt, why = flash_attn_wheel(resolution, version)
    if live and resolution.target.cuda != "cpu":
        prebuilt, why = _flash_attn_live(resolution, version, prebuilt, why)
    env: Dict[str, str] = {}
    verify = [f'"$PYTHON" -c {shlex.quote("import flash_attn, flash_attn_2_cuda; print(flash_attn.__version__)")}']
    if prebuilt:
        reason = (f"{why}; flash-attn is an sdist whose setup.py imports torch and fetches that wheel "
                  "(needs the release assets reachable), so install it without build isolation")
        pre = [_torch_ok(resolution)]
        commands = [_pip("--no-build-isolation", f"{package}=={version}")]
    else:
        reason = f"{why}: compile it (tens of minutes; memory-bound, hence MAX_JOBS)"
        env["FLASH_ATTENTION_FORCE_BUILD"] = "TRUE"
        env.update(_arch_env(archs))
        env["MAX_JOBS"] = _max_jobs(package)
        pre = _common_pre(resolution, nvcc_min="11.7")
        commands = [_pip("--no-build-isolation --no-cache-dir", f"{package}=={version}")]
    if archs and any(tuple(int(x) for x in a.split(".")) < (8, 0) for a in archs):
        reason += "; note: FlashAttention-2 runs only on Ampere (sm_80) or newer GPUs"
    summary = why.split(" (", 1)[0] if prebuilt else "compiled from source (no prebuilt wheel matches)"
    return BuildStep(package=package, version=version, reason=reason, env=env, preconditions=pre,
                     commands=commands, verify=verify, sources=list(SOURCES["flash-attn"]), prebuilt=bool(prebuilt),
                     summary=summary)


def _apex_step(resolution: Resolution, ref: str, archs: List[str]) -> BuildStep:
    repo = GIT_REPOS["apex"]
    env = {**_arch_env(archs), "MAX_JOBS": _max_jobs("apex")}
    commands = [
        'APEX_SRC="$(mktemp -d)/apex"',
        f'git clone https://github.com/{repo} "$APEX_SRC"',
    ]
    if ref:
        commands.append(f'git -C "$APEX_SRC" checkout {shlex.quote(ref)}')
    commands.append(_pip('-v --no-build-isolation --no-cache-dir --config-settings "--build-option=--cpp_ext" '
                         '--config-settings "--build-option=--cuda_ext"', '"$APEX_SRC"'))
    reason = ("apex publishes no wheels for its CUDA extensions; build them from source against the installed torch"
              + ("" if ref else " (no commit named by the stack: this builds apex's default branch)"))
    return BuildStep(package="apex", version=ref, reason=reason, env=env,
                     preconditions=_common_pre(resolution) + ["command -v git"], commands=commands,
                     verify=[f'"$PYTHON" -c {shlex.quote("import amp_C, fused_layer_norm_cuda")}'],
                     sources=list(SOURCES["apex"]))


def _pip_compiled_step(resolution: Resolution, package: str, version: str, archs: List[str]) -> BuildStep:
    n = norm(package)
    env: Dict[str, str] = dict(_arch_env(archs))
    target = f"{package}=={version}" if version else package
    if n.startswith("transformer-engine"):
        env["NVTE_FRAMEWORK"] = "pytorch"
        if archs:
            env["NVTE_CUDA_ARCHS"] = ";".join(a.replace(".", "") for a in archs)
        if n == "transformer-engine":
            target = f"transformer_engine[pytorch]=={version}" if version else "transformer_engine[pytorch]"
    env["MAX_JOBS"] = _max_jobs(package)
    imp = IMPORT_NAMES.get(n, n.replace("-", "_"))
    return BuildStep(
        package=package, version=version,
        reason=(f"{package} ships its CUDA extension as source only; it compiles against the installed torch"
                + ("; TORCH_CUDA_ARCH_LIST is set because without it setup.py asks the visible GPU"
                   if "grouped-gemm" in n else "")),
        env=env, preconditions=_common_pre(resolution),
        commands=[_pip("--no-build-isolation --no-cache-dir", shlex.quote(target))],
        verify=[f'"$PYTHON" -c {shlex.quote("import " + imp)}'],
        sources=list(SOURCES.get(n, SOURCES.get("transformer-engine" if n.startswith("transformer-engine") else n, []))),
    )


def _git_step(resolution: Resolution, package: str, ref: str, archs: List[str]) -> BuildStep:
    n = norm(package)
    if n == "apex":
        return _apex_step(resolution, ref, archs)
    # a known upstream, else the project's own repository (the project builds itself from a commit)
    repo = GIT_REPOS.get(n) or resolution.project.info.repo
    imp = IMPORT_NAMES.get(n, n.replace("-", "_"))
    env = {**_arch_env(archs), "MAX_JOBS": _max_jobs(package)}
    # a checkout, not a bare git+ URL: the repository's scripts (e.g. Megatron-LM's tools/checkpoint
    # converters) are part of what the commit fixes, and they are not in the installed package
    src = f'"${{MOE_ENV_SRC:-$PWD}}/{repo.split("/")[1]}"'
    commands = [
        f"[ -d {src}/.git ] || git clone https://github.com/{repo} {src}",
        f"git -C {src} fetch --quiet origin {shlex.quote(ref)} || true",
        f"git -C {src} checkout --quiet {shlex.quote(ref)}",
        _pip("--no-build-isolation", src),
    ]
    return BuildStep(
        package=package, version=ref,
        reason=(f"the stack needs {package} at commit {ref} of {repo}: the fix it relies on is on that branch "
                f"and in no release; the checkout stays in $MOE_ENV_SRC (default: the current folder) for its scripts"),
        env=env, preconditions=[_torch_ok(resolution), "command -v git"],
        commands=commands,
        verify=[f'"$PYTHON" -c {shlex.quote("import " + imp)}', f'[ "$(git -C {src} rev-parse HEAD)" = {shlex.quote(ref)} ]'
                if re.match(r"^[0-9a-f]{40}$", ref) else f"git -C {src} rev-parse HEAD"],
        sources=[f"https://github.com/{repo}/commit/{ref}"],
    )


# ---------------------------------------------------------------- rendering


SCRIPT_HEAD = """\
#!/usr/bin/env bash
# {title}
# each step's exports stay inside its ( ... ) group on purpose:
# shellcheck disable=SC2030,SC2031
# Run after installing the lockfile, in the environment it went into:
#   PYTHON=/path/to/venv/bin/python bash build-steps.sh
set -euo pipefail
export PYTHON="${{PYTHON:-python}}"
fail() {{  # fail PACKAGE LINE: a precondition did not hold (it said what it expected and found); nothing was built
  echo "moe-env build-steps: $1: precondition on line $2 of this script failed; nothing was built" >&2
  exit 1
}}
pip_install() {{  # venvs made by uv have no pip: use uv's pip for the same interpreter then
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install "$@"
  elif command -v uv >/dev/null 2>&1; then
    uv pip install --python "$PYTHON" "$@"
  else
    echo "moe-env build-steps: $PYTHON has no pip and uv is not on PATH (install one of them)" >&2
    exit 1
  fi
}}
"""


def render_script(steps: List[BuildStep], title: str = "moe-env build steps") -> str:
    out = [SCRIPT_HEAD.format(title=title.replace("\n", " "))]
    if not steps:
        out.append('echo "moe-env build-steps: nothing to build from source for this target" >&2\n')
        return "".join(out)
    for i, s in enumerate(steps, 1):
        label = f"{s.package} {s.version}".strip()
        out.append(f"\n# --- {i}. {label}\n")
        for line in _wrap(s.reason):
            out.append(f"# {line}\n")
        for src in s.sources:
            out.append(f"# source: {src}\n")
        out.append(f'echo "moe-env build-steps: [{i}/{len(steps)}] {label}" >&2\n')
        out.append("(\n")
        for k, v in s.env.items():
            out.append(f'  export {k}="{v}"\n')
        for p in s.preconditions:
            out.append(f"  {{ {p}; }} >/dev/null || fail {shlex.quote(s.package)} $LINENO\n")
        for c in s.commands:
            out.append(f"  {c}\n")
        for v in s.verify:
            out.append(f"  {v}\n")
        out.append(")\n")
    out.append('echo "moe-env build-steps: all steps built and verified" >&2\n')
    return "".join(out)


def _wrap(text: str, width: int = 98) -> List[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
