"""XTuner (mmengine) checkpoints: `iter_N.pth` either a single torch.save file or, with DeepSpeed,
a folder (a DeepSpeed tag folder under work_dir), plus work_dir/last_checkpoint.

How they are written (release:mmengine==0.10.4): DeepSpeedStrategy.save_checkpoint (mmengine/
_strategy/deepspeed.py:502-580) calls engine.save_checkpoint(dirname, tag=basename, client_state=...,
save_latest=False), so work_dir/iter_N.pth/ holds mp_rank_00_model_states.pt, the [bf16_]zero_pp_rank_*
shards and (MoE) the expert files, with no `latest`; zero_to_fp32.py lands in work_dir. Without an
optimizer it writes one file {'state_dict', 'meta', ...}. Runner.save_checkpoint stores meta.epoch and
meta.iter (mmengine/runner/runner.py:2147-2250); CheckpointHook writes work_dir/last_checkpoint, the
path of the newest save (mmengine/hooks/checkpoint_hook.py:459).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from moe_env.ckpt import deepspeed as DS
from moe_env.ckpt import files as F
from moe_env.ckpt.layouts import census, expert_findings, safe_int
from moe_env.ckpt.report import CkptReport, short
from moe_env.ckpt.torchfile import load_into, model_tensors

XTUNER = "InternLM/xtuner@94a4fcb0f53d63ceb85334bb456c073251669ccb"  # v0.1.23
ITER_PTH = re.compile(r"(?a)^(?:iter|epoch)_(\d{1,12})\.pth$")


def is_xtuner_root(folder: Path) -> bool:
    if (folder / "last_checkpoint").is_file():
        return True
    try:
        return any(ITER_PTH.match(p.name) for p in folder.iterdir())
    except OSError:
        return False


def inspect_root(root: Path, matrix: Any = None, installed: Optional[str] = None) -> CkptReport:
    """work_dir: the save last_checkpoint names (by its file name, looked up inside work_dir), else the newest."""
    saves = []
    try:
        saves = sorted((p for p in root.iterdir() if ITER_PTH.match(p.name)), key=lambda p: int(ITER_PTH.match(p.name).group(1)))
    except OSError:
        pass
    target: Optional[Path] = None
    last = DS.read_latest(root, "last_checkpoint")
    if last is not None:
        name = last.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        cand = root / name
        if not ITER_PTH.match(name) or not (cand.exists() and (cand.is_dir() or F.check(root, name).state == F.OK)):
            rep = CkptReport(path=str(root), format="xtuner", loader="xtuner")
            rep.add(id="ckpt.xtuner-last-missing", severity="error",
                    title=f"last_checkpoint names {name}, which is not in this folder",
                    seen=f"last_checkpoint: {last[:200]}; present: {short([p.name for p in saves], 6) or 'none'}",
                    why="mmengine's resume (resume=True) loads the checkpoint last_checkpoint names.",
                    fix=f"resume with load_from={saves[-1]}" if saves else "copy the named save back")
            return rep
        target = cand
    elif saves:
        target = saves[-1]
    else:
        DS.raise_not_ds(root)
    assert target is not None
    rep = inspect_save(target, matrix, installed)
    rep.path = str(root)
    rep.facts["save"] = target.name
    return rep


def inspect_save(p: Path, matrix: Any = None, installed: Optional[str] = None) -> CkptReport:
    if p.is_dir():
        rep = DS.inspect_tag(p, matrix, installed, save_dir=p.parent, fmt="xtuner")
        rep.loader = "xtuner"
        m = ITER_PTH.match(p.name)
        if m and rep.facts.get("iteration") is None:
            rep.facts["iteration"] = int(m.group(1))
        _convert_hint(rep, p)
        return rep
    rep = CkptReport(path=str(p), format="xtuner", loader="xtuner")
    comp = F.Completeness(p.parent)
    obj = load_into(comp, p.name)
    if obj is None:
        F.report_files(rep, comp)
        return rep
    tensors = model_tensors(obj)
    rep.tensors = len(tensors)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        rep.facts["iteration"] = safe_int(meta.get("iter"), 0, 10 ** 12)
        rep.facts["epoch"] = safe_int(meta.get("epoch"), 0, 10 ** 9)
    expert_findings(rep, census(tensors), {}, source="the checkpoint")
    _convert_hint(rep, p)
    return rep


def _convert_hint(rep: CkptReport, p: Path) -> None:
    rep.add(id="ckpt.xtuner-convert", severity="info", title="Convert to a Hugging Face folder with XTuner",
            seen=f"{p.name}: XTuner training checkpoint ({'DeepSpeed folder' if p.is_dir() else 'single file'})",
            why="from_pretrained does not read XTuner's iter_N.pth; XTuner's converter reads it with the training config "
                "(a DeepSpeed folder through its zero_to_any_dtype, a single file's state_dict directly).",
            fix=f"xtuner convert pth_to_hf CONFIG.py {p} ./hf_model",
            sources=[f"{XTUNER}:README.md:228", f"{XTUNER}:xtuner/model/utils.py:297-317 guess_load_checkpoint"])
