"""`moe-env ckpt PATH`: is this MoE checkpoint complete, and which layout (and Megatron flags) does it need?"""

from __future__ import annotations

import argparse

EPILOG = """\
PATH is a Hugging Face safetensors folder (config.json + model.safetensors.index.json), a Megatron
save folder (latest_checkpointed_iteration.txt, iter_*/mp_rank_*/model_optim_rng.pt), one iter_*
folder, a torch_dist folder (metadata.json + .metadata), or one .pt / .safetensors file. Only
headers and pickled metadata are read: no tensor data is loaded and no pickle code is executed
(a file that asks to run code is refused and reported).

examples:
  moe-env ckpt ./work_dirs/mixtral-sft/hf_model     are all shards and all 8 experts x 32 layers there?
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
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from moe_env.ckpt import LAYOUT_TITLES, inspect_checkpoint
    from moe_env.term import use_color

    report = inspect_checkpoint(args.path)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, sort_keys=False, default=str) + "\n")
    else:
        try:
            from moe_env.render import render_findings
        except ImportError:  # pragma: no cover - render.py ships with moe-env
            render_findings = None
        color = use_color(sys.stdout)
        head = [f"moe-env ckpt: {report.path}",
                f"  format:  {report.format}",
                f"  layout:  {LAYOUT_TITLES.get(report.layout, report.layout)}",
                f"  tensors: {report.tensors}" + (f" in {report.shards} shards" if report.shards else "")]
        if report.experts_per_layer:
            counts = sorted(set(report.experts_per_layer.values()))
            head.append(f"  experts: {report.layers_with_experts} layers with experts; per layer: "
                        + ", ".join(str(c) for c in counts))
        if report.expected:
            head.append("  expected: " + ", ".join(f"{k}={v}" for k, v in report.expected.items()))
        for k in ("iteration", "tp", "pp", "ep", "num_experts", "moe_grouped_gemm", "transformer_impl", "note"):
            if k in report.facts and report.facts[k] is not None:
                head.append(f"  {k}: {report.facts[k]}")
        for project, text in sorted((report.facts.get("loads_with") or {}).items()):
            head.append(f"  loads with ({project}): {text}")
        sys.stdout.write("\n".join(head) + "\n\n")
        if render_findings is not None:
            sys.stdout.write(render_findings(report.findings, color=color))
    return 0 if report.complete else 1
