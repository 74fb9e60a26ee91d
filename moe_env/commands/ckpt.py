"""`moe-env ckpt PATH`: is this MoE checkpoint complete, and which layout (and Megatron flags) does it need?"""

from __future__ import annotations

import argparse

EPILOG = """\
PATH is a Hugging Face folder (config.json + model.safetensors[.index.json] or pytorch_model.bin),
a Hugging Face Trainer checkpoint-N/ folder (weights, trainer_state.json, optimizer/scheduler/rng
and the DeepSpeed global_stepN/ part), a DeepSpeed save folder (latest + global_stepN/ with
mp_rank_XX_model_states.pt, [bf16_]zero_pp_rank_R_*_optim_states.pt and, for DeepSpeed-MoE,
layer_L_expert_E_*_model_states.pt) or one tag folder, an XTuner work_dir / iter_N.pth (folder or
file), a Megatron save folder (latest_checkpointed_iteration.txt, iter_*/mp_rank_*/model_optim_rng.pt),
a torch_dist folder (metadata.json + .metadata), or one .pt / .safetensors file. Only headers and
pickled metadata are read: no tensor data is loaded and no pickle code is executed (a file that asks
to run code is refused and reported); names a checkpoint gives are never followed out of its folder.

examples:
  moe-env ckpt ./work_dirs/mixtral-sft/hf_model     are all shards and all 8 experts x 32 layers there?
  moe-env ckpt ./checkpoints/moe-llava/checkpoint-2000   every ZeRO shard and expert file of global_step2000?
  moe-env ckpt ./out/ds_save --python ./venv/bin/python  can that env's DeepSpeed load it; how to consolidate
  moe-env ckpt /ckpt/mixtral-tp1-ep8                which expert layout; which --moe-grouped-gemm loads it
  moe-env ckpt /ckpt/iter_0000100 --json            machine-readable report

exit codes: 0 complete; 1 incomplete or damaged (missing shards, tensors, experts or ranks; refused
pickle); 2 bad usage or not a checkpoint; 4 internal error.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "ckpt",
        help="inspect an MoE checkpoint (shards, experts per layer, key layout) without loading it",
        description="Check that a checkpoint is complete and say which MoE key layout it uses, reading only "
                    "safetensors headers and (with a restricted reader that runs no code) torch pickles.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="checkpoint folder or file")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema moe-env.ckpt/1)")
    p.add_argument("--python", metavar="PY",
                   help="the interpreter that will load the checkpoint: its DeepSpeed version (read by the probe, "
                        "nothing imported) is compared with the one that wrote a DeepSpeed save")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from moe_env.ckpt import LAYOUT_TITLES, inspect_checkpoint
    from moe_env.ckpt.report import plural
    from moe_env.term import use_color

    installed = None
    if getattr(args, "python", None):
        from moe_env.probe.runner import probe_environment

        installed = probe_environment(args.python).version_of("deepspeed") or ""
    report = inspect_checkpoint(args.path, installed_deepspeed=installed or None)
    if installed == "":
        report.facts["installed_deepspeed"] = "not installed in that environment"
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, sort_keys=False, default=str) + "\n")
        return 0 if report.complete else 1
    try:
        from moe_env.render import render_findings
    except ImportError:  # pragma: no cover - render.py ships with moe-env
        render_findings = None
    color = use_color(sys.stdout)
    facts = report.facts
    head = [f"moe-env ckpt: {report.path}",
            f"  format:  {report.format}",
            f"  layout:  {LAYOUT_TITLES.get(report.layout, report.layout)}",
            f"  tensors: {report.tensors}" + (f" in {plural(report.shards, 'file')}" if report.shards else "")]
    if report.experts_per_layer:
        counts = sorted(set(report.experts_per_layer.values()))
        head.append(f"  experts: {plural(report.layers_with_experts, 'layer')} with experts; per layer: "
                    + ", ".join(str(c) for c in counts))
    if report.expected:
        head.append("  expected: " + ", ".join(f"{k}={v}" for k, v in report.expected.items()))
    for k in ("tag", "latest", "iteration", "global_step", "tp", "pp", "ep", "zero_stage", "dp_world_size",
              "mp_world_size", "ep_world_size", "precision", "ds_version", "installed_deepspeed", "num_experts",
              "moe_grouped_gemm", "transformer_impl", "weights", "note"):
        v = facts.get(k)
        if v is not None and v != "":
            head.append(f"  {k}: {v}")
    ds = facts.get("deepspeed")
    if isinstance(ds, dict):
        head.append("  deepspeed: " + ", ".join(f"{k}={v}" for k, v in ds.items() if v is not None))
    loader = {"transformers": "transformers (AutoModel*.from_pretrained)", "megatron": "Megatron-LM (--load)",
              "deepspeed": facts.get("loads_with_text") or "deepspeed engine.load_checkpoint",
              "xtuner": "XTuner (resume with load_from/resume, xtuner convert pth_to_hf; merged layouts: its shard-MoE classes)",
              "torch": "torch.load"}.get(report.loader, report.loader)
    if loader:
        head.append(f"  loads with: {loader}")
    if facts.get("loads_with_releases"):
        head.append(f"  releases: {facts['loads_with_releases']}")
    for project, text in sorted((facts.get("loads_with") or {}).items()):
        # the matrix project that describes the layout: its text is "what loads it" only for its own format
        label = f"loads with ({project})" if project == report.loader else f"layout note ({project} matrix)"
        head.append(f"  {label}: {text}")
    for line in facts.get("skipped") or []:
        head.append(f"  {line}")
    sys.stdout.write("\n".join(head) + "\n\n")
    if render_findings is not None:
        sys.stdout.write(render_findings(report.findings, color=color))
    return 0 if report.complete else 1
