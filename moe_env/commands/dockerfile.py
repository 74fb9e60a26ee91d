"""`moe-env dockerfile`: a Dockerfile for a project's known-good stack, gated by `moe-env doctor --build --strict`."""

from __future__ import annotations

import argparse
import re

EPILOG = """\
The image: the nvidia/cuda base whose CUDA matches the stack's torch build (devel where something
compiles, runtime otherwise; --base overrides), the stack's Python, its lockfile installed with
--require-hashes, the source builds for --gpu-arch, moe-env in its own venv, and a final
`RUN moe-env doctor PROJECT --build --strict` that fails the build on a broken stack. The entrypoint
runs the full `moe-env doctor --strict` at container start, where GPU and driver exist
(MOE_ENV_DOCTOR=0 skips it).

With -o, the stack's lockfile is written beside the Dockerfile (requirements.<stack>.txt); on
stdout, write it yourself with `moe-env lock ... -o requirements.<stack>.txt`.

examples:
  moe-env dockerfile minigemini --model 8x7b --gpu-arch 8.0,9.0 -o build/Dockerfile
  docker build -t mgm build/ && docker run --gpus all --rm -it mgm
  moe-env dockerfile mgm --model 8x7b --base registry.local/cuda:12.1-devel --no-apt
  moe-env dockerfile mgm --stack mgm-8x7b-cu121 --gpu-arch 9.0 > Dockerfile
  moe-env dockerfile mgm --wheelhouse wheels -o Dockerfile   air-gapped: pip reads only ./wheels

In an existing Dockerfile, the gate is one line after your installs:
  RUN pip install moe-env && moe-env doctor minigemini --model 8x7b --build --strict

exit codes: 0 written; 2 bad usage or input (unknown project, variant or stack, an output that
exists without --force, no image known for the stack's CUDA); 4 internal error.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "dockerfile",
        help="print a Dockerfile for a project's known-good stack, gated by doctor",
        description="Write a Dockerfile that installs a known-good stack from its hash-pinned lockfile, "
                    "builds what has no wheel, and fails the build when doctor finds the stack broken.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("project", metavar="PROJECT", help="project name or alias (minigemini/mgm, moe-llava, megatron, xtuner)")
    p.add_argument("--model", metavar="VARIANT", help="model variant (default: the project's MoE variants)")
    p.add_argument("--cuda", metavar="X.Y", help="CUDA of the torch build (default: the stack's; no GPU is asked)")
    p.add_argument("--python", metavar="X.Y", help="Python version (default: the stack's)")
    p.add_argument("--stack", metavar="ID", help="use this known-good stack instead of resolving one (see `moe-env matrix list`)")
    p.add_argument("--gpu-arch", metavar="CC[,CC...]", default="",
                   help="compute capabilities to compile for, e.g. 8.0,9.0 (TORCH_CUDA_ARCH_LIST); "
                        "default: the stack's list, else every architecture the torch build carries")
    p.add_argument("--base", metavar="IMAGE", default="", help="base image for every stage (NGC image, local mirror)")
    p.add_argument("--no-apt", dest="apt", action="store_false",
                   help="the base image already has python3 with venv (and compilers): skip apt-get")
    p.add_argument("--wheelhouse", metavar="DIR", default="",
                   help="build-context folder of wheels; every pip install reads only it (air-gapped builds)")
    p.add_argument("--matrix-dir", metavar="DIR", default="",
                   help="build-context folder with your own compat_matrix, copied into the image for doctor")
    p.add_argument("--lockfile", metavar="FILE", default="",
                   help="build-context path of the lockfile to install (default: requirements.<stack>.txt, "
                        "written beside the Dockerfile with -o)")
    p.add_argument("--moe-env", dest="moe_env_spec", metavar="SPEC", default="",
                   help="a published moe-env for the image (moe-env==0.1.0) or a .whl in the build context "
                        "(default: a wheel of this moe-env, which -o writes into the context)")
    p.add_argument("-o", "--output", metavar="DIR|FILE",
                   help="write the Dockerfile (DIR/Dockerfile: a folder, made if missing), the stack's lockfile and a "
                        "wheel of this moe-env beside it, atomically, instead of printing the Dockerfile; a FILE "
                        "is a path whose name contains 'Dockerfile' (or an existing file)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
    import shlex
    import sys
    from pathlib import Path

    from moe_env.docker import DockerOptions, parse_gpu_archs, plan_dockerfile, render_dockerfile
    from moe_env.errors import UsageError
    from moe_env.matrix.loader import load_matrix

    validate_args(args)
    matrix = load_matrix()
    resolution = _resolve(matrix, args)
    stack = resolution.stack
    archs = parse_gpu_archs(args.gpu_arch)
    steps = _build_steps(resolution, archs)
    argv = _shown_argv(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("moe-env") else []
    options = DockerOptions(
        gpu_archs=archs,
        base=args.base,
        apt=args.apt,
        wheelhouse=args.wheelhouse.rstrip("/"),
        matrix_dir=args.matrix_dir.rstrip("/"),
        lockfile=args.lockfile,
        moe_env_spec=args.moe_env_spec,
        command=_one_line("moe-env " + " ".join(shlex.quote(a) for a in argv)) if argv else "",
    )
    plan = plan_dockerfile(matrix, resolution, steps, options)
    text = render_dockerfile(plan)

    from moe_env.selfwheel import build as build_wheel, wheel_name

    shipped = _shipped_lockfile(resolution)
    if not args.output:
        sys.stdout.write(text)
        if not args.lockfile:
            hint = f"moe-env lock {plan.project}" + (f" --model {plan.variant}" if plan.variant else "")
            print(f"moe-env: the build context needs {plan.lockfile}: {hint} --cuda {plan.cuda} "
                  f"--python {plan.python} -o {plan.lockfile}", file=sys.stderr)
        if not args.moe_env_spec:
            print(f"moe-env: the build context needs {wheel_name()} (a wheel of this moe-env): "
                  "`moe-env dockerfile ... -o DIR` writes it with the Dockerfile", file=sys.stderr)
        return 0

    out = _output_path(args.output)
    writes = [(out, text.encode("utf-8"))]
    if not args.moe_env_spec:
        writes.append((out.parent / wheel_name(), build_wheel(out.parent / wheel_name())))
    if not args.lockfile:
        if shipped is None:
            raise UsageError(
                f"no shipped lockfile for stack {stack.id} on CUDA {plan.cuda}, Python {plan.python}: write one with "
                f"`moe-env lock {plan.project}{' --model ' + plan.variant if plan.variant else ''} --cuda {plan.cuda} "
                f"--python {plan.python} -o {out.parent / plan.lockfile}` and pass --lockfile {plan.lockfile}"
            )
        writes.append((out.parent / plan.lockfile, Path(shipped).read_bytes()))
    from moe_env.output import write_all

    for path, data in writes:  # a folder where a file goes: say so before anything is written
        _check_target(path, data, args.force)
    write_all(writes, force=args.force)  # the Dockerfile, its lockfile and the wheel: all of them or none
    print(f"moe-env: wrote {', '.join(str(p) for p, _ in writes)}", file=sys.stderr)
    return 0


_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")  # registry/name:tag@sha256:digest
_CONTEXT_PATH = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9._+/-]{1,255}$")  # inside the build context


def validate_args(args) -> None:
    """Every value that reaches a Dockerfile instruction or a build script: no newline, no ${...}, no quote.

    An image reference, build-context paths and a pip requirement have small grammars; a value outside
    them is refused (exit 2) rather than quoted, because Dockerfile instructions have no quoting that
    covers every instruction (FROM, COPY and RUN differ).
    """
    from packaging.requirements import InvalidRequirement, Requirement

    from moe_env.errors import UsageError

    if args.base and not _IMAGE.match(args.base):
        raise UsageError(f"--base {_one_line(args.base)!r}: not an image reference (registry/name:tag)")
    for flag, value in (("--wheelhouse", args.wheelhouse), ("--matrix-dir", args.matrix_dir), ("--lockfile", args.lockfile)):
        if value and not _CONTEXT_PATH.match(value):
            raise UsageError(f"{flag} {_one_line(value)!r}: expected a relative path inside the build context "
                             "(letters, digits, . _ + - /; no '..')")
    spec = args.moe_env_spec
    if spec:
        if _CONTEXT_PATH.match(spec) and spec.endswith(".whl"):
            return
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            req = None
        if req is None or req.url or any(c in spec for c in "\n\r$`'\"\\;|&<>") or req.name.lower().replace("_", "-") != "moe-env":
            raise UsageError(f"--moe-env {_one_line(spec)!r}: expected a requirement for moe-env (moe-env==0.1.0) "
                             "or a .whl path inside the build context")


def _one_line(text: str) -> str:
    """A value shown in a Dockerfile comment: control characters escaped, so it cannot start a new line."""
    from moe_env.untrusted import printable

    return printable(text)


def _shown_argv(argv):
    """The command line for the header, without where it was written (-o) or --force: regenerating
    the same Dockerfile elsewhere gives the same bytes."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("-o", "--output"):
            skip = True
            continue
        if a == "--force" or a.startswith("--output=") or (a.startswith("-o") and len(a) > 2):
            continue
        out.append(a)
    return out


def _resolve(matrix, args):
    """A Resolution for the flags; --stack restricts the resolver to that one stack."""
    from moe_env import record

    from moe_env.errors import UsageError
    from moe_env.resolver import resolve

    project = matrix.project(args.project)
    if project is None:
        known = ", ".join(sorted(matrix.projects)) or "none"
        raise UsageError(f"unknown project {args.project!r} (known: {known})")
    variant = args.model
    if args.stack:
        stack = next((s for s in project.stacks if s.id == args.stack), None)
        if stack is None:
            known = ", ".join(s.id for s in project.stacks) or "none"
            raise UsageError(f"project {project.name} has no stack {args.stack!r} (stacks: {known})")
        if variant is None and stack.variants and not set(stack.variants) & {v.id for v in project.moe_variants()}:
            variant = stack.variants[0]  # a dense-only stack: judge its first variant
        only = record.replace(project, stacks=[stack])
        matrix = record.replace(matrix, projects={**matrix.projects, project.name: only})
    return resolve(matrix, project.name, variant=variant, cuda=args.cuda, python=args.python,
                   gpu_archs=_archs_or_none(args.gpu_arch))


def _archs_or_none(text):
    from moe_env.docker import parse_gpu_archs

    return parse_gpu_archs(text) or None


def _build_steps(resolution, archs):
    from moe_env.build_steps import build_steps

    return list(build_steps(resolution, gpu_archs=archs or None))


def _shipped_lockfile(resolution):
    """The shipped lockfile, if it covers the target (a retargeted CUDA or Python needs a fresh lock)."""
    from moe_env.lock.shipped import shipped_lockfile

    stack, target = resolution.stack, getattr(resolution, "target", None)
    if target is not None and (target.cuda != stack.cuda or target.python != stack.python):
        return None
    return shipped_lockfile(resolution.project.name, stack)


def _check_target(path, data: bytes, force: bool) -> None:
    """A folder where the Dockerfile goes: say so before anything is written (write_all judges the rest)."""
    from moe_env.errors import UsageError

    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name (e.g. {path / 'Dockerfile'})")


def _output_path(output: str):
    """-o names the build context (a folder, made when missing) unless it names the Dockerfile itself.

    `-o ctx` for a folder that does not exist yet means the folder, as `-o ctx/` does: writing a file
    named ctx with the wheel and lockfile beside it in the parent is never what was meant.
    """
    import os
    from pathlib import Path

    out = Path(output)
    if output.endswith(("/", os.sep)) or out.is_dir():
        return out if out.name == "Dockerfile" and not out.is_dir() else out / "Dockerfile"
    if out.exists() or "dockerfile" in out.name.lower():
        return out
    return out / "Dockerfile"
