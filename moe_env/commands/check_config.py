"""`moe-env check-config PROJECT -- LAUNCH ARGS`: judge a launch line and DeepSpeed config before the GPUs spin."""

from __future__ import annotations

import argparse

EPILOG = """\
Everything after `--` is the training command, with or without its launcher (deepspeed, torchrun,
python -m torch.distributed.run, accelerate launch, xtuner train); the launcher's own options are not
judged as the script's. The script's flags are checked against its entry point's parser (the matrix's
compat_matrix/entry_points/, read from upstream at the pinned commit): a flag it would refuse is an
error with the closest one. --load / --pretrained-checkpoint / --model_name_or_path that are local paths
are read with `moe-env ckpt`'s readers and judged against the launch (missing, unreadable, incomplete,
experts / layers / TP / PP / EP, expert layout vs --moe-grouped-gemm); hub ids are not judged.
A DeepSpeed config is read from --deepspeed-config, else from the launch's own --deepspeed FILE.
With --python, doctor's checks for the variant the launch selects run too (static probe: nothing is
imported); without it, this interpreter's versions count only when it has the project installed, and
only doctor's GPU checks run.
GPUs come from nvidia-smi or MOE_ENV_GPUS (driver: MOE_ENV_CUDA_DRIVER_VERSION); WORLD_SIZE gives the
world size when the launcher does not; CUDA_DEVICE_MAX_CONNECTIONS is judged as the launch would see it.

examples:
  moe-env check-config moe-llava --deepspeed-config scripts/zero2.json -- \\
      deepspeed --num_gpus 8 moellava/train/train_mem.py --moe_enable True --train_modules fc1 fc2 wg \\
      --model_name_or_path ./checkpoints/llavaphi-2.7b-finetune --bf16 True
  moe-env check-config mgm --python /opt/venv/bin/python -- deepspeed mgm/train/train_mem.py \\
      --model_name_or_path model_zoo/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1 --deepspeed scripts/zero3.json
  moe-env check-config megatron -- torchrun --nproc_per_node 8 pretrain_gpt.py \\
      --moe-grouped-gemm --load /ckpt/mixtral-mcore --num-experts 8 --expert-model-parallel-size 8
  MOE_ENV_GPUS=V100:7.0x8 moe-env check-config xtuner -- xtuner train mixtral_8x7b_instruct_full_oasst1_e3 \\
      --deepspeed deepspeed_zero3

exit codes: 0 no errors; 1 errors found (with --strict, warnings too); 2 bad usage or input
(unknown project, unreadable DeepSpeed config); 4 internal error.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "check-config",
        help="judge a launch command and DeepSpeed config against the project's MoE rules",
        description="Check a training launch (flags, DeepSpeed JSON, checkpoint to load, GPUs) against "
                    "the project's launch rules in the matrix, before it runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("project", metavar="PROJECT", help="project name or alias (minigemini/mgm, moe-llava, megatron, xtuner)")
    _add_options(p)
    p.add_argument("launch", nargs=argparse.REMAINDER, metavar="-- LAUNCH ARGS",
                   help="the training command's arguments, after -- (so that their flags are not read as ours)")
    p.set_defaults(func=run)


def _add_options(p) -> None:
    p.add_argument("--model", action="append", default=[], metavar="VARIANT",
                   help="model variant (8x7b, deepseek-v2-lite...); repeatable; default: the MoE variants")
    p.add_argument("--deepspeed-config", metavar="FILE", help="DeepSpeed JSON (default: the launch's --deepspeed FILE)")
    p.add_argument("--python", metavar="PATH", help="interpreter of the training environment, probed statically "
                   "(default: this one, when it has the project installed)")
    p.add_argument("--world-size", type=int, metavar="N", help="total GPUs of the run (default: from launcher flags)")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema moe-env.check-config/1)")


def _split_remainder(args) -> list:
    """argparse hands everything after PROJECT to the remainder: our own options (before `--`) are
    parsed here, the rest is the launch."""
    from moe_env.errors import UsageError

    rest = list(args.launch or [])
    if "--" in rest:
        i = rest.index("--")
        ours, launch = rest[:i], rest[i + 1:]
    else:  # argparse may have eaten the `--`: our options are a leading run of known flags
        valued = {"--model", "--deepspeed-config", "--python", "--world-size"}
        i = 0
        while i < len(rest):
            name = rest[i].split("=", 1)[0]
            if name in ("--strict", "--json") or (name in valued and "=" in rest[i]):
                i += 1
            elif name in valued:
                i += 2
            else:
                break
        ours, launch = rest[:i], rest[i:]
    if ours:
        extra = argparse.ArgumentParser(prog="moe-env check-config", add_help=False)
        _add_options(extra)
        ns, unknown = extra.parse_known_args(ours)
        if unknown:
            raise UsageError(f"unexpected {' '.join(unknown)!r}: put the launch's own arguments after '--' "
                             "(moe-env check-config PROJECT [options] -- LAUNCH ARGS)")
        for key, value in vars(ns).items():
            if key == "model":
                args.model = list(args.model or []) + list(value)
            elif value not in (None, False):
                setattr(args, key, value)
    return launch


def run(args) -> int:
    import json
    import os
    import sys

    from moe_env.checks import resolve_project, resolve_variants
    from moe_env.config_rules import LaunchConfig, flag_spelling, launcher_world_size, parse_launch, run_rules
    from moe_env.errors import UsageError
    from moe_env.findings import Finding, exit_code, sort_findings
    from moe_env.launch import (entry_point_for, expand_abbreviations, judge_flags, judge_values,
                                launcher_added_flags, split_launch)
    from moe_env.launch_ckpt import read_checkpoints
    from moe_env.matrix.loader import load_matrix
    from moe_env.term import use_color

    launch_words = _split_remainder(args)
    matrix = load_matrix()
    project = resolve_project(matrix, args.project)
    if args.world_size is not None and args.world_size < 1:
        raise UsageError("--world-size must be a positive number of GPUs")
    launch = split_launch(launch_words)
    ep, why_none = entry_point_for(project, launch)
    # the rules read flags as the parser does: an accepted abbreviation (--train_module) is the whole flag
    script_args = expand_abbreviations(ep, launch.args) if ep is not None else list(launch.args)
    flags, script_positional = parse_launch(script_args)
    launcher_flags, _ = parse_launch(launch.launcher_args)
    cfg = LaunchConfig(project=project, flags=flags, positional=launch.positional() + script_positional,
                       env={**os.environ, **launch.env}, spelling=flag_spelling(script_args),
                       launcher_flags=launcher_flags)
    variants = resolve_variants(project, list(args.model)) if args.model else _variants_from_launch(project, cfg)
    cfg.variants = variants
    notes = []

    flag_findings = judge_flags(project, ep, launch.args) if ep is not None else []
    if ep is not None:
        flag_findings += judge_values(project, ep, launch.args)
        flag_findings += launcher_added_flags(project, ep, launch, matrix.launcher_args)
    if ep is None and launch.args:
        notes.append(Finding(id="check-config.flags-not-judged", severity="info",
                             title="The launch's flags were not checked against the entry point's parser",
                             seen=_printable(why_none), why="The matrix lists the flags of the project's training entry points only.",
                             fix="name the entry point script in the launch line (see `moe-env check-config --help`)"))

    env, cfg.installed, cfg.gpu_capabilities, locations = _environment(args.python, notes, matrix, project)
    if not args.python and cfg.installed is not None and not _has_project(cfg.installed, project):
        # moe-env's own interpreter without the project: not the training environment; say so, judge nothing by it
        cfg.installed, locations = None, {}
        notes.append(Finding(id="check-config.no-python", severity="info",
                             title="Installed versions not judged: this interpreter does not have the project installed",
                             seen=f"{_printable(sys.executable)} has none of {', '.join(project.info.detect) or project.name}",
                             why="Rules about Transformer Engine, grouped_gemm, deepspeed... need the training environment.",
                             fix=f"moe-env check-config {project.name} --python /path/to/training/venv/bin/python -- ..."))
    ds_path = args.deepspeed_config
    if not ds_path and cfg.value("deepspeed"):
        candidate = cfg.value("deepspeed").split()[0]
        shipped = _shipped_deepspeed_config(candidate, locations)
        if os.path.isfile(candidate):
            ds_path = candidate
        elif shipped:
            ds_path = shipped
        elif candidate.endswith(".json"):
            notes.append(Finding(
                id="check-config.deepspeed-not-found", severity="warning",
                title=f"The launch's DeepSpeed config {_printable(candidate)} is not here; its rules were not judged",
                seen=f"--deepspeed {_printable(candidate)} (relative to {_printable(os.getcwd())})",
                why="Paths in a launch line are relative to the folder the launch runs in.",
                fix=f"run check-config from that folder, or pass --deepspeed-config PATH/TO/{_printable(os.path.basename(candidate))}"))
        else:
            notes.append(Finding(
                id="check-config.deepspeed-by-name", severity="info",
                title=f"DeepSpeed config {_printable(candidate)!r} is a name, not a file; its rules were not judged",
                seen=f"--deepspeed {_printable(candidate)}",
                why="Named configs (XTuner's deepspeed_zero3...) live inside the installed package.",
                fix="moe-env check-config ... --deepspeed-config PATH/TO/" + _printable(candidate) + ".json -- ..."))
    if ds_path:
        from moe_env.untrusted import UntrustedInput, read_json

        try:
            cfg.deepspeed = read_json(ds_path, what="DeepSpeed config", max_bytes=4 << 20)
        except FileNotFoundError:
            raise UsageError(f"{_printable(ds_path)}: no such DeepSpeed config") from None
        except (OSError, UntrustedInput, ValueError) as exc:
            raise UsageError(f"{_printable(ds_path)}: not a readable JSON DeepSpeed config ({_printable(exc)})") from None
        if not isinstance(cfg.deepspeed, dict):
            raise UsageError(f"{_printable(ds_path)}: a DeepSpeed config must be a JSON object")
        cfg.deepspeed_path = ds_path

    cfg.world_size = args.world_size or launcher_world_size(cfg)
    _training_config(cfg, cfg.positional)
    notes.extend(_xtuner_named_config(cfg, matrix, launch, locations, explicit_python=bool(args.python)))
    cfg.checkpoints = read_checkpoints(cfg, matrix)
    for st in cfg.checkpoints.values():
        if st.state == "hub-id":
            notes.append(Finding(id="check-config.checkpoint-hub-id", severity="info",
                                 title=f"{_printable(st.path)} is not a folder here: taken as a Hub repo id",
                                 seen=f"no file or folder {_printable(st.path)} relative to {_printable(os.getcwd())}",
                                 why="from_pretrained downloads a value that is not a local folder from the Hub.",
                                 fix=f"for a local folder, run check-config where the launch runs, or write ./{_printable(st.path)}"))
        if st.state == "not-a-checkpoint":
            notes.append(Finding(id="check-config.checkpoint-not-read", severity="info",
                                 title=f"{_printable(st.path)}: moe-env's checkpoint readers could not read it; not judged",
                                 seen=st.message, why="ckpt reads safetensors, Megatron legacy and torch_dist checkpoints.",
                                 fix=f"moe-env ckpt {_printable(st.path)}"))
    findings, unknown = run_rules(cfg)
    for u in unknown:
        notes.append(Finding(id="check-config.unknown-rule-kind", severity="info",
                             title="A rule of the matrix was not judged: this moe-env does not know its kind",
                             seen=u, why="The matrix is newer than the code.", fix="upgrade moe-env"))
    doctor = _without_gpu_duplicates(_doctor_findings(env, matrix, project, variants, full=bool(args.python)),
                                     findings, project)
    findings = sort_findings([_escaped(f) for f in merge_findings(flag_findings + findings + doctor + notes)])
    if args.json:
        doc = {"schema": "moe-env.check-config/1", "project": project.name, "variants": [v.id for v in variants],
               "deepspeed_config": ds_path, "world_size": cfg.world_size, "rules": len(project.rules),
               "entry_point": ep.id if ep is not None else None,
               "findings": [f.to_dict() for f in findings], "exit_code": exit_code(findings, args.strict)}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from moe_env.render import render_findings

        head = f"moe-env check-config: {project.info.title}"
        if variants:
            head += f", variants {', '.join(v.id for v in variants)}"
        head += f"; {len(project.rules)} rules"
        if ep is not None:
            head += f"; flags of {ep.id}"
        if ds_path:
            head += f"; DeepSpeed config {_printable(ds_path)}"
        sys.stdout.write(render_findings(findings, color=use_color(sys.stdout), header=head))
    return exit_code(findings, args.strict)


def _has_project(installed, project) -> bool:
    import re

    names = list(project.info.detect) or [project.name]
    return any(installed.get(re.sub(r"[-_.]+", "-", n).lower()) for n in names)


def _printable(text) -> str:
    from moe_env.untrusted import printable

    return printable(str(text))


def _escaped(f):
    """A finding whose text is safe to print: launch words, DeepSpeed values and names read from a
    checkpoint can carry terminal escapes (untrusted.printable)."""
    from moe_env import record

    from moe_env.untrusted import printable

    return record.replace(f, title=printable(f.title), seen=printable(f.seen), why=printable(f.why),
                               fix=printable(f.fix))


def merge_findings(findings):
    """One finding per problem: the same id twice becomes one (its `seen` parts joined), and a finding
    whose title another one of at least its severity already carries is dropped (doctor and a launch
    rule can find the same thing)."""
    from moe_env.findings import Finding

    rank = {"error": 0, "warning": 1, "info": 2}
    by_id = {}
    order = []
    for f in findings:
        if f.id in by_id:
            prev = by_id[f.id]
            seen = prev.seen if f.seen in prev.seen else f"{prev.seen}; {f.seen}"
            sev = min(prev.severity, f.severity, key=lambda s: rank.get(s, 3))
            by_id[f.id] = Finding(id=prev.id, severity=sev, title=prev.title, seen=seen, why=prev.why, fix=prev.fix,
                                  sources=list(dict.fromkeys(list(prev.sources) + list(f.sources))))
        else:
            by_id[f.id] = f
            order.append(f.id)
    out = []
    titles = {}
    for fid in sorted(order, key=lambda i: rank.get(by_id[i].severity, 3)):
        f = by_id[fid]
        if f.title in titles:
            continue
        titles[f.title] = f
        out.append(f)
    return out


def _variants_from_launch(project, cfg):
    """The variants the launch selects: those whose base model the launch names (--model_name_or_path
    mistralai/Mixtral-8x7B...), else the project's MoE variants."""
    from moe_env.checks import resolve_variants

    words = " ".join(w for vals in cfg.flags.values() for w in vals).lower()
    named = {w.lower() for w in cfg.positional if w and not w.startswith("-")} - {"xtuner", "train", "deepspeed", "torchrun"}
    hits = []
    for v in project.variants:
        base = (v.base_model or "").lower()
        launcher_words = {w.lower() for w in (v.launcher or "").split()}
        if (base and (base in words or base.rsplit("/", 1)[-1] in words)) or (named & launcher_words):
            hits.append(v)
    if hits:
        moe = [v for v in hits if v.moe]
        defaults = [v for v in (moe or hits) if v.id in project.info.default_variants]
        return defaults or moe or hits
    return resolve_variants(project, [])


def _doctor_findings(env, matrix, project, variants, full):
    """Doctor's checks for the variants the launch selects: all of them for an explicit --python,
    else only those about the GPUs (this interpreter is not the training one)."""
    if env is None:
        return []
    from moe_env.checks import GENERIC, Context, run_checks

    if full:
        return run_checks(env, matrix, project, variants)
    ctx = Context(env=env, matrix=matrix, project=project, variants=list(variants))
    out = []
    for name in ("bf16-gpu", "gpu-memory"):
        fn = GENERIC.get(name)
        if fn is not None:
            out.extend(fn(ctx))
    return out


_GPU_RULE_KINDS = ("bf16_capability", "gpu_capability_for_flags")


def _cc(text):
    from moe_env.config_rules import _cc as cc

    return cc(text)


def _without_gpu_duplicates(doctor, rule_findings, project):
    """The launch decides the dtype: where the project has launch rules for bf16 on old GPUs, doctor's
    recipe-level bf16 check (which assumes the shipped recipe's dtype) does not speak for this launch;
    and when such a rule fired, doctor's "needs sm_80" checks are the same problem (same fix)."""
    gpu_rules = {f"{project.name}.{r.id}" for r in project.rules if r.kind in _GPU_RULE_KINDS}
    if not gpu_rules:
        return doctor
    fired = any(f.id in gpu_rules for f in rule_findings)
    sm80 = {f"{project.name}.{c.id}" if "." not in c.id else c.id for c in project.checks
            if c.kind == "gpu_capability" and _cc(c.params.get("min", "0")) >= (8, 0)}
    out = []
    for f in doctor:
        if f.id in ("gpu.bf16-unsupported", "gpu.bf16-deferred"):
            continue
        if fired and f.id in sm80:
            continue
        out.append(f)
    return out


def _xtuner_named_config(cfg, matrix, launch, locations, explicit_python):
    """`xtuner train NAME`: the name must be one the xtuner release ships (xtuner/configs). With the
    installed xtuner known (--python) its config folder answers; otherwise the matrix's release table."""
    import os
    import re

    from moe_env.findings import Finding

    if launch.script != "xtuner train" or not launch.args:
        return []
    name = launch.args[0]
    if name.startswith("-") or os.path.isfile(name) or not re.match(r"^[A-Za-z0-9_.-]+$", name) or name.endswith(".py"):
        return []
    installed = cfg.version("xtuner")
    where = locations.get("xtuner")
    src = [s for r in matrix.releases.get("xtuner", []) for s in r.source if "configs" in s][:1]
    if explicit_python and where:
        folder = os.path.join(where, "xtuner", "configs")
        found = None
        for root, _dirs, files in os.walk(folder):
            for f in files:
                if os.path.splitext(f)[0] == name and f.endswith((".py", ".json")):
                    found = os.path.join(root, f)
        if found:
            if found.endswith(".py") and cfg.training_config is None:
                _training_config(cfg, [found])
            return []
        return [Finding(id="xtuner.config-name-unknown", severity="error",
                        title=f"xtuner {installed} ships no config named {_printable(name)}",
                        seen=f"xtuner train {_printable(name)}; searched {_printable(folder)}",
                        why="xtuner train looks the name up in xtuner/configs and raises FileNotFoundError('Cannot find NAME').",
                        fix="xtuner list-cfg -p NAME_PART, or give the path of a config file", sources=src)]
    releases = [r for r in matrix.releases.get("xtuner", []) if r.configs]
    if not releases:
        return []
    have = [r.version for r in releases if name in r.configs]
    if have:
        return [Finding(id="xtuner.config-name", severity="info",
                        title=f"Config {_printable(name)} is shipped by xtuner {', '.join(have)} (matrix); its settings were not read",
                        seen=f"xtuner train {_printable(name)}",
                        why="Named configs live inside the installed xtuner; without --python the release table says which exist.",
                        fix="moe-env check-config xtuner --python PATH/TO/python -- xtuner train " + _printable(name), sources=src)]
    import difflib

    near = difflib.get_close_matches(name, sorted({c for r in releases for c in r.configs}), n=3, cutoff=0.6)
    return [Finding(id="xtuner.config-name-unknown", severity="warning",
                    title=f"No xtuner release in the matrix ({', '.join(r.version for r in releases)}) ships a config named {_printable(name)}",
                    seen=f"xtuner train {_printable(name)}" + (f"; close: {', '.join(near)}" if near else ""),
                    why="xtuner train looks the name up in xtuner/configs and raises FileNotFoundError('Cannot find NAME'); "
                        "another release may ship it.",
                    fix=(f"did you mean {near[0]}? " if near else "") + "check with --python PATH, or `xtuner list-cfg`", sources=src)]


def _training_config(cfg, positional) -> None:
    """A Python training config named in the launch (`xtuner train CONFIG.py ...`), read with ast."""
    import os

    from moe_env.config_rules import read_training_config
    from moe_env.errors import UsageError

    if not any(r.kind.startswith("config_") for r in cfg.project.rules):
        return  # only projects whose rules read a training config (XTuner) have one to read
    words = list(positional) + [w for vals in cfg.flags.values() for w in vals]
    for word in words:
        if word.endswith(".py") and os.path.isfile(word):
            try:
                cfg.training_config, cfg.config_names = read_training_config(word)
            except (OSError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                raise UsageError(f"{_printable(word)}: cannot read the training config "
                                 f"({_printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})") from None
            cfg.training_config_path = word
            return


def _shipped_deepspeed_config(name, locations):
    """XTuner's `--deepspeed deepspeed_zero3`: the JSON inside the installed xtuner package, if any."""
    import os
    import re

    if not re.match(r"^[A-Za-z0-9_]+$", name or ""):
        return None
    where = locations.get("xtuner")
    if not where:
        return None
    path = os.path.join(where, "xtuner", "configs", "deepspeed", f"{name}.json")
    return path if os.path.isfile(path) else None


def _environment(python, notes, matrix=None, project=None):
    """Installed versions, GPU compute capabilities and distribution locations; unknowns as None / []."""
    from moe_env.errors import MoeEnvError
    from moe_env.findings import Finding

    installed = None
    caps = []
    locations = {}
    env = None
    try:
        from moe_env.probe.runner import probe_environment

        symbols = []
        if python and matrix is not None:  # doctor's checks will run: they need the API symbols
            from moe_env.checks import symbols_needed

            symbols = symbols_needed(matrix, project)
        env = probe_environment(python, symbols, timeout=60.0)
        installed = {name: d.version for name, d in env.distributions.items()}
        locations = {name: d.location for name, d in env.distributions.items() if d.location}
        caps = [g.compute_capability for g in env.host.gpus if g.compute_capability]
    except MoeEnvError:
        raise
    except (ImportError, OSError, ValueError) as exc:
        notes.append(Finding(id="check-config.no-probe", severity="info",
                             title="Installed versions unknown; rules that need them were skipped",
                             seen=_printable(exc), why="The environment probe failed.", fix="moe-env doctor --python PATH"))
    return env, installed, caps, locations
