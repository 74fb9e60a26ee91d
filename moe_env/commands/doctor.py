"""`moe-env doctor`: probe an environment without importing it and judge it against the matrix."""

from __future__ import annotations

import argparse

EPILOG = """\
PROJECT is a name or alias from the matrix (minigemini/mgm, moe-llava, megatron, xtuner). Without
it, doctor detects the project from the installed distributions, else runs only the generic checks.
Without --model, the project's MoE variants that the installed stack serves are judged.

examples:
  moe-env doctor                                   this interpreter, project detected
  moe-env doctor minigemini --model 8x7b           MGM-8x7B's needs (set_z3_leaf_modules, bf16...)
  moe-env doctor mgm --python /opt/venv/bin/python another interpreter; nothing is imported there
  moe-env doctor xtuner --build --strict           in a Docker build: driver/GPU checks deferred
  MOE_ENV_GPUS=7.5x4 moe-env doctor mgm            judge for GPUs this machine does not have
  moe-env doctor --json > $(hostname).json         a report for `moe-env diff` or --from-json
  moe-env doctor --from-json node07.json mgm       judge a saved report again, no probing
  moe-env doctor --lockfile requirements.lock      what differs from a lockfile
  moe-env doctor --code ~/src/MGM --python /opt/venv/bin/python
                                                   your checkout's imports, calls and super() calls against
                                                   the installed libraries (read with ast, never run)
  MOE_ENV_GPUS=V100x8 moe-env doctor mgm --from-lock requirements.lock  a lockfile, as if installed on those GPUs

The text report starts with a summary of the stack and ends with one install command for every fix
that is a requirement (uv pip install --python V when the target has no pip).

environment: MOE_ENV_GPUS (8.0x8, H100:9.0, A100:8.0x8:80GB, none), MOE_ENV_CUDA_DRIVER_VERSION,
MOE_ENV_NVCC_VERSION and MOE_ENV_SHM_SIZE (64M, 1G) replace the probed host facts; MOE_ENV_HOST_ROOT
reads /sys, /proc and /dev/shm under another folder; NO_COLOR turns colour off; MOE_ENV_NO_CACHE=1
re-reads the matrix.

exit codes: 0 no errors; 1 errors found (with --strict, warnings too); 2 bad usage or input
(missing interpreter, unreadable report or lockfile); 4 internal error.
"""

DEFAULT_TIMEOUT = 60.0


def register(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="judge an installed environment against a project's needs (never imports torch)",
        description="Probe an environment statically (dist-info, torch/version.py, deepspeed build info, "
                    "API surfaces read with ast) and report problems with cause, fix and source.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("project", nargs="?", metavar="PROJECT", help="project name or alias (default: detected)")
    p.add_argument("--python", metavar="PATH", help="target interpreter (default: the one running moe-env)")
    p.add_argument("--model", action="append", default=[], metavar="VARIANT",
                   help="model variant to judge (8x7b, 7b, deepseek-v2-lite...); repeatable; default: the MoE variants")
    p.add_argument("--build", action="store_true",
                   help="Docker-build mode: no driver/GPU expected; those checks are deferred, not failed")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema moe-env.doctor/1)")
    p.add_argument("--from-json", metavar="FILE", help="judge a saved `doctor --json` report instead of probing ('-' = stdin)")
    p.add_argument("--from-lock", metavar="FILE",
                   help="judge a lockfile (requirements or pylock.toml) as if installed on this host, or the one stated by MOE_ENV_*")
    p.add_argument("--lockfile", metavar="FILE", help="also report what differs from this requirements-style lockfile")
    p.add_argument("--code", metavar="PATH",
                   help="also judge this checkout (or .py file) against the installed libraries, statically")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"give up on the probe after this long (default {DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=run)


def start_early(argv):
    """The probe started from the raw command line, before argparse (moe_env.probe.runner.start_from_argv)."""
    from moe_env.probe.runner import start_from_argv

    return start_from_argv(argv)


def run(args) -> int:
    early = getattr(args, "early_probe", None)
    try:
        return _run(args, early)
    finally:
        if early is not None:
            early.kill()  # a no-op once collected


def _run(args, early) -> int:
    import sys

    from moe_env.checks import detect_projects, resolve_project, resolve_variants, run_checks
    from moe_env.errors import UsageError
    from moe_env.findings import Finding, exit_code
    from moe_env.matrix.cache import load_matrix_cached
    from moe_env.report import Report, read_report

    if args.from_json and args.python:
        raise UsageError("--from-json judges a saved report; it cannot be combined with --python")
    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")

    matrix = load_matrix_cached()
    project = resolve_project(matrix, args.project) if args.project else None
    code = None
    if getattr(args, "code", None):
        from moe_env.code.run import prepare

        code = prepare(args.code)
        project = project or code.project(matrix)

    if args.from_lock:
        from moe_env.lock.as_env import doctor_from_lock_args

        env, project, variants = doctor_from_lock_args(args, matrix, project)
    elif args.from_json:
        saved = read_report(args.from_json)
        env = saved.environment
        if args.build:
            env.host.build_mode = True
        if project is None and saved.project:
            project = matrix.project(saved.project)
        variants = list(args.model) or (list(saved.variants) if project and saved.project == project.name else [])
    else:
        env = _probe(args, matrix, project, early, code)
        variants = list(args.model)

    notes = []
    detected = False
    if project is None:
        found = detect_projects(env, matrix)
        if len(found) == 1:
            project, detected = found[0][0], True
        elif len(found) > 1:
            names = ", ".join(f"{p.name} (from {dist})" for p, dist in found)
            notes.append(Finding(
                id="doctor.several-projects", severity="info",
                title="Several projects detected; only the generic checks ran",
                seen=f"installed: {names}",
                why="Each project's rules differ; doctor will not guess which one this environment is for.",
                fix=f"moe-env doctor {found[0][0].name}  (name the project)",
            ))
    chosen = resolve_variants(project, variants)
    if project is not None and not variants and len(chosen) > 1:
        from moe_env.checks import served_variants

        served, unserved = served_variants(env, matrix, project)
        if served and unserved:
            chosen = served
            notes.append(Finding(
                id="doctor.variants-served", severity="info",
                title=f"Judged the variants this stack serves: {', '.join(v.id for v in served)}",
                seen=f"without --model; {', '.join(v.id for v in unserved)} fail(s) a rule of their own here",
                why="Each variant has its own needs (DeepSeek-V2 pins XTuner 0.1.20-0.1.23 and transformers 4.40-4.45); "
                    "judging all of them would report another model's needs.",
                fix=f"moe-env doctor {project.name} --model {unserved[0].id}  (to judge that one)",
            ))
    findings = run_checks(env, matrix, project, chosen, detect=False) + notes
    if args.lockfile:
        from moe_env.checks.lockfile import lockfile_findings

        locked = lockfile_findings(env, _read_lockfile(args.lockfile))
        # a package the lockfile pins and the environment lacks is one problem: the lockfile's finding says it
        gone = {f.requirement.split("==")[0] for f in locked if f.id == "lock.missing" and f.requirement}
        findings = [f for f in findings if not (f.id == "deps.missing" and _req_name(f.requirement) in gone)] + locked
    if code is not None:
        findings = code.findings(findings, env, matrix, project, saved=bool(args.from_json))
    from moe_env.findings import sort_findings

    findings = sort_findings(findings)
    report = Report(environment=env, findings=findings, project=project.name if project else None,
                    variants=[v.id for v in chosen], detected=detected,
                    code=code.section() if code is not None else None)
    if args.json:
        sys.stdout.write(report.to_json(strict=args.strict))
    else:
        from moe_env.render import render_findings
        from moe_env.summary import combined_fix, environment_summary
        from moe_env.term import use_color

        color = use_color(sys.stdout)
        header = _header(report, project, args.from_json) + (f"\n{code.header()}" if code is not None else "")
        sys.stdout.write(render_findings(findings, color=color, header=header,
                                         facts=environment_summary(env, matrix), fix_all=combined_fix(findings, env)))
    return exit_code(findings, args.strict)


def _probe(args, matrix, project, early=None, code=None):
    """Run the probe in the target interpreter (it validates --python and turns failures into one line).

    Only the symbols the project's checks need are looked up (every project's when none is named, so
    detection and a later --from-json for any project still have them).
    """
    from moe_env.checks import symbols_needed
    from moe_env.probe.runner import probe_environment, resolve_python

    if early is not None and early.python != resolve_python(args.python):
        early.kill()  # the pre-scan of the command line guessed another interpreter
        early = None
    env = probe_environment(args.python, symbols_needed(matrix, project), build_mode=args.build, timeout=args.timeout,
                            started=early, code=code.request() if code is not None else None)
    if args.build:
        env.host.build_mode = True
    return env


def _req_name(requirement: str) -> str:
    from moe_env.checks.merge import split_requirement

    req = split_requirement(requirement)
    return req[0] if req else ""


def _read_lockfile(path):
    from moe_env.checks.lockfile import parse_lockfile
    from moe_env.errors import UsageError

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: lockfile not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read lockfile ({exc})") from None
    return parse_lockfile(text, path)


def _header(report, project, from_json) -> str:
    py = report.environment.python
    where = f"report {from_json}" if from_json else py.executable  # a lockfile's "executable" names the lockfile
    head = f"moe-env doctor: {where} (Python {py.version})"
    if project is not None:
        how = "detected" if report.detected else "project"
        head += f"; {how} {project.info.title}"
        if report.variants:
            head += f", variants {', '.join(report.variants)}"
    else:
        head += "; no project (generic checks only)"
    return head
