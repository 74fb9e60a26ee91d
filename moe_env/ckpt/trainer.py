"""A Hugging Face Trainer `checkpoint-N/` folder judged as a whole: the weights (safetensors or bin,
sharded or not, or a PEFT adapter), trainer_state.json, optimizer/scheduler/scaler/rng files, and the
DeepSpeed part (`latest` + global_stepN/) when the run used DeepSpeed.

What the Trainer writes and reads (release:transformers==4.37.2:transformers/trainer.py):
_save_checkpoint (2357-2430) saves into tmp-checkpoint-N and renames it to checkpoint-N at the end;
_save_optimizer_and_scheduler (2460-2512) writes optimizer.pt and scheduler.pt, or, under DeepSpeed,
calls engine.save_checkpoint(output_dir) instead; _save_rng_state writes rng_state.pth (one process)
or rng_state_{process_index}.pth. On resume, a missing trainer_state.json silently restarts at step 0
(1739-1742) and a missing optimizer.pt or scheduler.pt silently skips both (2527-2543).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

from moe_env.ckpt import deepspeed as DS
from moe_env.ckpt import files as F
from moe_env.ckpt._untrusted import UntrustedInput, json_loads
from moe_env.ckpt.layouts import safe_int
from moe_env.ckpt.report import CkptReport, plural, short
from moe_env.ckpt.safetensors import has_weights, hf_weights, read_config
from moe_env.ckpt.torchfile import zip_problem

TRAINER_SRC = "release:transformers==4.37.2:transformers/trainer.py"
STATE = "trainer_state.json"
NAME_RE = re.compile(r"(?a)^(tmp-)?checkpoint-(\d{1,12})$")
ADAPTERS = ("adapter_model.safetensors", "adapter_model.bin")
_RNG_RE = re.compile(r"(?a)^rng_state(?:_(\d{1,6}))?\.pth$")


def is_trainer(folder: Path) -> bool:
    return (folder / STATE).exists() or bool(NAME_RE.match(folder.name))


def inspect_trainer(folder: Path, matrix: Any = None, installed: Optional[str] = None) -> CkptReport:
    rep = CkptReport(path=str(folder), format="hf-trainer", loader="transformers")
    m = NAME_RE.match(folder.name)
    step_from_name = int(m.group(2)) if m else None
    if m and m.group(1):
        rep.add(id="ckpt.trainer-staging-folder", severity="error",
                title=f"{folder.name} is the Trainer's staging folder of an unfinished save",
                seen=f"{folder.name}: the Trainer renames tmp-checkpoint-N to checkpoint-N only after every file is written",
                why="The save was interrupted (killed job, full disk); the files in it may be partial.",
                fix=f"resume from an older checkpoint-N; delete {folder.name} once you have one",
                sources=[f"{TRAINER_SRC}:2370-2378", f"{TRAINER_SRC}:2414-2418"])
    comp = F.Completeness(folder)
    # trainer_state.json
    state: Dict[str, Any] = {}
    fc = comp.want(STATE)
    if fc.state == F.MISSING:
        rep.add(id="ckpt.trainer-state-missing", severity="warning", title="No trainer_state.json",
                seen=f"{folder.name}: trainer_state.json absent",
                why="Trainer.train(resume_from_checkpoint=...) loads the step, epoch and log history from it; without it "
                    "the run silently starts again at step 0 with the loaded weights.",
                fix="copy trainer_state.json from the save location",
                sources=[f"{TRAINER_SRC}:1739-1742"])
        del comp.checks[STATE]
    elif fc.usable:
        try:
            data = json_loads(fc.path.read_bytes() if fc.size <= 64 << 20 else b"", what=STATE)
            state = data if isinstance(data, dict) else {}
        except (OSError, UntrustedInput) as exc:
            comp.mark(STATE, F.DAMAGED, str(exc))
    step = safe_int(state.get("global_step"), 0, 10 ** 12) if state else None
    rep.facts.update({"global_step": step, "max_steps": safe_int(state.get("max_steps"), 0, 10 ** 12),
                      "epoch": state.get("epoch") if isinstance(state.get("epoch"), (int, float)) else None})
    if isinstance(state.get("best_model_checkpoint"), str):
        rep.facts["best_model_checkpoint"] = state["best_model_checkpoint"][:300]
    if step is not None and step_from_name is not None and step != step_from_name:
        rep.add(id="ckpt.trainer-step-mismatch", severity="warning",
                title=f"trainer_state.json says step {step}, the folder name says {step_from_name}",
                seen=f"{folder.name}/trainer_state.json: global_step={step}",
                why="Files of two saves were mixed, or the folder was renamed; resume continues from the step in the file.",
                fix="use the trainer_state.json written with these weights")
    # the DeepSpeed part
    ds_rep: Optional[CkptReport] = None
    if DS.is_root(folder):
        ds_rep = DS.inspect_root(folder, matrix, installed)
        for f in ds_rep.findings:
            f.seen = f"DeepSpeed part ({ds_rep.facts.get('tag') or 'latest'}): {f.seen}"
            rep.findings.append(f)
        rep.facts["deepspeed"] = {k: ds_rep.facts.get(k) for k in (
            "tag", "latest", "zero_stage", "dp_world_size", "mp_world_size", "ep_world_size", "ds_version",
            "precision", "moe_layers", "num_experts")}
        if ds_rep.experts_per_layer:
            rep.experts_per_layer, rep.layers_with_experts = ds_rep.experts_per_layer, ds_rep.layers_with_experts
            rep.layout = ds_rep.layout
    # the weights
    if has_weights(folder):
        config = read_config(folder, rep, required=True)
        hf_weights(folder, rep, config)
        rep.format = "hf-trainer"
    elif any((folder / a).exists() for a in ADAPTERS):
        name = next(a for a in ADAPTERS if (folder / a).exists())
        comp.want(name)
        comp.want("adapter_config.json")
        rep.facts["weights"] = f"PEFT adapter ({name})"
    elif ds_rep is not None:
        rep.facts["weights"] = "only in the DeepSpeed shards (no model.safetensors / pytorch_model.bin)"
        rep.add(id="ckpt.trainer-weights-in-deepspeed-only", severity="info",
                title="The weights are only in the DeepSpeed shards",
                seen=f"{folder.name}: no model weights beside {ds_rep.facts.get('tag') or 'the DeepSpeed tag'}",
                why="Under ZeRO-3 without stage3_gather_16bit_weights_on_model_save the Trainer writes no usable model file; "
                    "from_pretrained cannot load this folder, resume_from_checkpoint can.",
                fix=f"consolidate first: python {folder}/zero_to_fp32.py {folder} OUTPUT" if (folder / "zero_to_fp32.py").is_file()
                    else "consolidate first with deepspeed.utils.zero_to_fp32")
    else:
        rep.add(id="ckpt.trainer-no-weights", severity="error", title="No model weights in the Trainer checkpoint",
                seen=f"{folder.name}: no model.safetensors, pytorch_model.bin, index, adapter or DeepSpeed tag",
                why="Neither from_pretrained nor resume_from_checkpoint finds weights to load.",
                fix="copy the checkpoint again; a save interrupted before save_model leaves only the state files")
    # optimizer / scheduler / scaler / rng (the Trainer's own, when DeepSpeed did not save them)
    if ds_rep is None:
        have_opt = any((folder / n).exists() for n in ("optimizer.pt", "optimizer.bin"))
        have_sched = (folder / "scheduler.pt").exists()
        if not (have_opt and have_sched):
            gone = [n for n, ok in (("optimizer.pt", have_opt), ("scheduler.pt", have_sched)) if not ok]
            rep.add(id="ckpt.trainer-optimizer-missing", severity="warning",
                    title=f"{' and '.join(gone)} absent: resuming starts a fresh optimizer and schedule",
                    seen=f"{folder.name}: {', '.join(gone)} absent",
                    why="The Trainer loads optimizer.pt and scheduler.pt only when both exist, and skips both silently "
                        "otherwise (save_only_model=True writes neither).",
                    fix="copy them from the save location if you mean to resume; fine for inference",
                    sources=[f"{TRAINER_SRC}:2527-2543"])
        for n in ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt"):
            if (folder / n).exists() or (folder / n).is_symlink():
                comp.want(n)
    rng = []
    try:
        rng = sorted(p.name for p in folder.iterdir() if _RNG_RE.match(p.name))
    except OSError:
        pass
    for n in rng + (["training_args.bin"] if (folder / "training_args.bin").exists() else []):
        comp.want(n)
    ranks = sorted(int(m.group(1)) for n in rng for m in [_RNG_RE.match(n)] if m and m.group(1))
    if ranks and ranks != list(range(ranks[-1] + 1)):
        gone = sorted(set(range(ranks[-1] + 1)) - set(ranks))
        rep.add(id="ckpt.trainer-rng-missing", severity="info",
                title=f"{plural(len(gone), 'RNG state file')} absent",
                seen="absent: " + short([f"rng_state_{i}.pth" for i in gone], 6),
                why="Each process restores its own RNG state; a missing one only costs exact reproducibility "
                    "(the Trainer logs \"Didn't find an RNG file for process N\").",
                fix="nothing to do unless you need bit-exact resumption")
    for rel, c in list(comp.checks.items()):
        if c.usable and rel.endswith((".pt", ".pth", ".bin")):
            err = zip_problem(c)
            if err:
                comp.mark(rel, F.DAMAGED, err)
    F.report_files(rep, comp)
    return rep
