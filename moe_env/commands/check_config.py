"""`moe-env check-config PROJECT -- LAUNCH ARGS`: judge a launch line and DeepSpeed config before the GPUs spin."""

from __future__ import annotations

import argparse

EPILOG = """\
Everything after `--` is the training command's own arguments (the launcher may be included). A
DeepSpeed config is read from --deepspeed-config, else from the launch's own --deepspeed FILE.
Installed versions (Transformer Engine, grouped_gemm) come from a static probe of --python (default:
this interpreter; nothing is imported); GPUs from nvidia-smi or MOE_ENV_GPUS.

examples:
  moe-env check-config moe-llava --deepspeed-config scripts/zero3.json -- \\
      deepspeed moellava/train/train_mem.py --moe_enable True --train_modules fc1 fc2 wg \\
      --model_name_or_path ./checkpoints/llavaphi-2.7b-finetune --bf16 True
  moe-env check-config mgm --model 8x7b -- --model_name_or_path mistralai/Mixtral-8x7B-Instruct-v0.1
  moe-env check-config megatron --python /opt/venv/bin/python -- pretrain_gpt.py \\
      --moe-grouped-gemm --load /ckpt/mixtral-mcore --num-experts 8 --expert-model-parallel-size 8
  MOE_ENV_GPUS=7.0x8 moe-env check-config xtuner -- --deepspeed deepspeed_zero3 --bf16

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
    p.add_argument("--python", metavar="PATH", help="interpreter whose installed versions count (default: this one)")
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
    from moe_env.matrix.loader import load_matrix
    from moe_env.term import use_color

    launch = _split_remainder(args)
    matrix = load_matrix()
    project = resolve_project(matrix, args.project)
    variants = resolve_variants(project, list(args.model))
    if args.world_size is not None and args.world_size < 1:
        raise UsageError("--world-size must be a positive number of GPUs")
    flags, positional = parse_launch(launch)
    cfg = LaunchConfig(project=project, variants=variants, flags=flags, positional=positional, env=dict(os.environ),
                       spelling=flag_spelling(launch))
    notes = []

    cfg.installed, cfg.gpu_capabilities, locations = _environment(args.python, notes)
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
                title=f"The launch's DeepSpeed config {candidate} is not here; its rules were not judged",
                seen=f"--deepspeed {candidate} (relative to {os.getcwd()})",
                why="Paths in a launch line are relative to the folder the launch runs in.",
                fix=f"run check-config from that folder, or pass --deepspeed-config PATH/TO/{os.path.basename(candidate)}"))
        else:
            notes.append(Finding(
                id="check-config.deepspeed-by-name", severity="info",
                title=f"DeepSpeed config {candidate!r} is a name, not a file; its rules were not judged",
                seen=f"--deepspeed {candidate}",
                why="Named configs (XTuner's deepspeed_zero3...) live inside the installed package.",
                fix="moe-env check-config ... --deepspeed-config PATH/TO/" + candidate + ".json -- ..."))
    if ds_path:
        try:
            with open(ds_path, encoding="utf-8") as fh:
                cfg.deepspeed = json.load(fh)
        except FileNotFoundError:
            raise UsageError(f"{ds_path}: no such DeepSpeed config") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{ds_path}: not a readable JSON DeepSpeed config ({exc})") from None
        if not isinstance(cfg.deepspeed, dict):
            raise UsageError(f"{ds_path}: a DeepSpeed config must be a JSON object")
        cfg.deepspeed_path = ds_path

    cfg.world_size = args.world_size or launcher_world_size(cfg)
    _training_config(cfg, positional)
    findings, unknown = run_rules(cfg)
    for u in unknown:
        notes.append(Finding(id="check-config.unknown-rule-kind", severity="info",
                             title="A rule of the matrix was not judged: this moe-env does not know its kind",
                             seen=u, why="The matrix is newer than the code.", fix="upgrade moe-env"))
    findings = sort_findings(findings + notes)
    if args.json:
        doc = {"schema": "moe-env.check-config/1", "project": project.name, "variants": [v.id for v in variants],
               "deepspeed_config": ds_path, "world_size": cfg.world_size, "rules": len(project.rules),
               "findings": [f.to_dict() for f in findings], "exit_code": exit_code(findings, args.strict)}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from moe_env.render import render_findings

        head = f"moe-env check-config: {project.info.title}"
        if variants:
            head += f", variants {', '.join(v.id for v in variants)}"
        head += f"; {len(project.rules)} rules"
        if ds_path:
            head += f"; DeepSpeed config {ds_path}"
        sys.stdout.write(render_findings(findings, color=use_color(sys.stdout), header=head))
    return exit_code(findings, args.strict)


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
            except (OSError, SyntaxError, ValueError) as exc:
                raise UsageError(f"{word}: cannot read the training config ({exc})") from None
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


def _environment(python, notes):
    """Installed versions, GPU compute capabilities and distribution locations; unknowns as None / []."""
    from moe_env.errors import MoeEnvError
    from moe_env.findings import Finding

    installed = None
    caps = []
    locations = {}
    try:
        from moe_env.probe.runner import probe_environment

        env = probe_environment(python, [], timeout=60.0)
        installed = {name: d.version for name, d in env.distributions.items()}
        locations = {name: d.location for name, d in env.distributions.items() if d.location}
        caps = [g.compute_capability for g in env.host.gpus if g.compute_capability]
    except MoeEnvError:
        raise
    except (ImportError, OSError, ValueError) as exc:
        notes.append(Finding(id="check-config.no-probe", severity="info",
                             title="Installed versions unknown; rules that need them were skipped",
                             seen=str(exc), why="The environment probe failed.", fix="moe-env doctor --python PATH"))
    return installed, caps, locations
