"""Checkpoint inspection without loading tensors or running pickle code.

One module per format, one dispatcher here:
- safetensors: Hugging Face weight folders (config.json, the index, each shard's header; .bin shards too)
- megatron: Megatron legacy saves (tracker, iter_*/mp_rank_*/model_optim_rng.pt) and torch_dist folders
- deepspeed: DeepSpeed save folders (latest, global_stepN/, ZeRO shards, MoE expert files)
- trainer: Hugging Face Trainer checkpoint-N/ folders (weights + trainer state + the DeepSpeed part)
- xtuner: XTuner/mmengine iter_N.pth (DeepSpeed folders and single files), work_dir/last_checkpoint
Shared: files (expected vs present, per-file damage, paths kept inside the checkpoint), layouts (MoE
key layouts and expert counts), torchfile (restricted reads of torch.save files), report (CkptReport).
The result is a CkptReport with Findings; presentation lives in commands/ckpt.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from moe_env.ckpt import deepspeed as _ds
from moe_env.ckpt import megatron as _meg
from moe_env.ckpt import safetensors as _st
from moe_env.ckpt import trainer as _tr
from moe_env.ckpt import xtuner as _xt
from moe_env.ckpt.layouts import LAYOUT_TITLES, LAYOUTS, ExpertCensus, census, layout_rules  # noqa: F401
from moe_env.ckpt.report import CkptReport
from moe_env.ckpt.safetensors import MAX_HEADER, read_safetensors_header  # noqa: F401
from moe_env.errors import UsageError

__all__ = ["inspect_checkpoint", "CkptReport", "LAYOUT_TITLES", "LAYOUTS", "census", "read_safetensors_header"]


def inspect_checkpoint(path: str, matrix: Any = None, installed_deepspeed: Optional[str] = None) -> CkptReport:
    """Inspect PATH (folder or file); raises UsageError when it is not a checkpoint moe-env knows.
    `installed_deepspeed`: the DeepSpeed version of the environment that will load it (moe-env ckpt --python)."""
    try:
        return _dispatch(Path(path), matrix, installed_deepspeed).sanitize()
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to inspect") from None


def _dispatch(p: Path, matrix: Any, installed: Optional[str]) -> CkptReport:
    try:
        exists = p.exists()
        is_file, is_dir = p.is_file(), p.is_dir()
    except (OSError, ValueError):
        exists = is_file = is_dir = False
    if not exists:
        raise UsageError(f"{p}: no such file or folder")
    if is_file:
        name = p.name
        if name.endswith(".safetensors"):
            return _st.hf_folder(p.parent, only=p)
        if name in (_st.SAFE_INDEX, _st.BIN_INDEX):
            return _st.hf_folder(p.parent)
        if name in (".metadata", "metadata.json"):
            return _meg.torch_dist(p.parent, matrix)
        if _xt.ITER_PTH.match(name):
            return _xt.inspect_save(p, matrix, installed)
        if name == "latest" and _ds.is_root(p.parent):
            return _ds.inspect_root(p.parent, matrix, installed)
        if _ds.is_tag(p.parent) and any(rx.match(name) for rx in (_ds.MODEL_RE, _ds.ZERO_RE, _ds.EXPERT_RE, _ds.Z3_MODEL_RE)):
            return _ds.inspect_tag(p.parent, matrix, installed)
        return _meg.torch_file(p, matrix)
    if not is_dir:
        raise UsageError(f"{p}: not a regular file or folder")
    if _xt.ITER_PTH.match(p.name) and _ds.is_tag(p):
        return _xt.inspect_save(p, matrix, installed)
    if _tr.is_trainer(p) and (_st.has_weights(p) or _ds.is_root(p) or (p / _tr.STATE).exists()
                              or any((p / a).exists() for a in _tr.ADAPTERS)):
        return _tr.inspect_trainer(p, matrix, installed)
    if (p / _st.SAFE_INDEX).exists() or (p / _st.SAFE_SINGLE).exists() or (p / _st.SAFE_INDEX).is_symlink():
        return _st.hf_folder(p)
    if (p / "metadata.json").is_file() or (p / ".metadata").is_file():
        return _meg.torch_dist(p, matrix)
    if (p / _meg.TRACKER).exists():
        return _meg.megatron_root(p, matrix)
    if _ds.is_tag(p):
        return _ds.inspect_tag(p, matrix, installed)
    if (p / "latest").is_file() or (p / "latest_universal").is_file():
        return _ds.inspect_root(p, matrix, installed)
    if _xt.is_xtuner_root(p):
        return _xt.inspect_root(p, matrix, installed)
    if any(q.name.startswith("mp_rank_") and q.is_dir() for q in _safe_iter(p)):
        return _meg.megatron_iter(p, matrix, iteration=_meg.iter_of(p.name))
    if (p / "model_optim_rng.pt").is_file():
        return _meg.torch_file(p / "model_optim_rng.pt", matrix)
    if _meg.iter_dirs(p):
        return _meg.megatron_root(p, matrix)
    if _ds.tag_dirs(p, 512):
        return _ds.inspect_root(p, matrix, installed)
    if (p / _st.BIN_INDEX).exists() or (p / _st.BIN_SINGLE).exists():
        return _st.hf_folder(p)
    raise UsageError(f"{p}: not a checkpoint moe-env knows (no model.safetensors[.index.json], pytorch_model.bin, "
                     "config/metadata.json, latest_checkpointed_iteration.txt, iter_*/, mp_rank_*/, a DeepSpeed "
                     "`latest` or global_step*/, trainer_state.json or iter_N.pth)")


def _safe_iter(p: Path):
    try:
        return list(p.iterdir())[:100000]
    except OSError:
        return []
