"""DeepSpeed checkpoints, read the way DeepSpeed's engine writes and loads them.

What a save folder holds (deepspeed/runtime/engine.py, the same in every release the matrix covers;
read at release:deepspeed==0.9.5, 0.12.6, 0.13.5, 0.14.5, 0.16.9 and 0.19.5, deepspeedai/DeepSpeed
tags v0.9.5 fc9e1ee00e67 ... v0.19.5 cf44300453eb):

- SAVE_DIR/latest: the tag of the newest save (save_checkpoint(save_latest=True), the default);
  load_checkpoint(SAVE_DIR) without tag= reads it and, when it is absent, warns "Unable to find latest
  file at ..." and loads nothing. ds_to_universal writes SAVE_DIR/latest_universal.
- SAVE_DIR/TAG/ (TAG defaults to global_step{N}):
  - mp_rank_{MP:02d}_model_states.pt per model-parallel rank (_get_ckpt_name); under ZeRO-3
    zero_pp_rank_{DP}_mp_rank_{MP:02d}_model_states.pt per data-parallel rank as well. It holds
    `module`, `dp_world_size`, `mp_world_size`, and (non-MoE saves, all releases; MoE saves from 0.19.5)
    `ds_version`, `ds_config`; an MoE save (_save_moe_checkpoint) adds `num_experts`, one count per
    MoE layer (an int in saves older than layer ids: the expert_{E}_... form).
  - [bf16_]zero_pp_rank_{DP}_mp_rank_{MP:02d}_optim_states.pt for every DP < dp_world_size
    (_get_rank_zero_ckpt_name; bf16_ when bf16 is enabled, any ZeRO stage, and for the BF16_Optimizer
    without ZeRO). Each holds `optimizer_state_dict` (with `zero_stage` and `partition_count` under
    ZeRO 1-3), `ds_config`, `ds_version`. The loader tries both prefixes (_get_all_zero_checkpoints).
  - layer_{L}_expert_{E}_mp_rank_{MP:02d}_model_states.pt for every MoE layer L and global expert
    E < num_experts[L] (_get_expert_ckpt_name, new form; old form expert_{E}_mp_rank_...).
  - expp_rank_{R}_mp_rank_{MP:02d}_optim_states.pt per expert-parallel rank (_get_optimizer_ckpt_name):
    written by every MoE save up to 0.19.4 and only without ZeRO from 0.19.5; read by
    load_checkpoint only when there is no ZeRO optimizer state.
- SAVE_DIR/zero_to_fp32.py: the consolidation script of the writing release (_copy_recovery_script).
  Its second argument is output_file up to 0.15.x and output_dir from 0.16.0; -t/--tag from 0.11.0.
  It globs every *_optim_states.pt and *_model_states.pt of the tag, so an MoE save's expp_rank_* and
  layer_*_expert_* files break it (release:deepspeed==0.16.9:deepspeed/utils/zero_to_fp32.py:94-108,
  parse_optim_states "Expected N of '*_optim_states.pt' ...", parse_model_states "... is not a model
  state checkpoint").
- A universal checkpoint (ds_to_universal.py) holds TAG/zero/PARAM/{fp32,exp_avg,exp_avg_sq}.pt
  (release:deepspeed==0.16.9:deepspeed/checkpoint/ds_to_universal.py:274-276) and loads with
  "checkpoint": {"load_universal": true}.

Only the pickles' metadata is read (restricted unpickler, data.pkl): the main model file and one
ZeRO shard fully, expert files for their keys, every other file as far as its zip directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from moe_env.ckpt import files as F
from moe_env.ckpt.layouts import MAX_EXPERTS, MAX_LAYERS, census, safe_int
from moe_env.ckpt.report import CkptReport, and_list, brief, plural, ranges, short
from moe_env.ckpt.torchfile import load_into, model_tensors, zip_problem
from moe_env.ckpt_pickle import Record

ENGINE = "release:deepspeed==0.16.9:deepspeed/runtime/engine.py"
ZERO_TO_FP32 = "release:deepspeed==0.16.9:deepspeed/utils/zero_to_fp32.py"
MAX_DP = 1 << 16
MAX_MP = 4096
MAX_FILES = 1 << 20
N = r"(\d{1,6})"
MODEL_RE = re.compile(rf"(?a)^mp_rank_{N}_model_states\.pt$")
Z3_MODEL_RE = re.compile(rf"(?a)^zero_pp_rank_{N}_mp_rank_{N}_model_states\.pt$")
ZERO_RE = re.compile(rf"(?a)^(bf16_)?zero_pp_rank_{N}_mp_rank_{N}_?optim_states\.pt$")
EXPERT_RE = re.compile(rf"(?a)^layer_{N}_expert_{N}_mp_rank_{N}_model_states\.pt$")
OLD_EXPERT_RE = re.compile(rf"(?a)^expert_{N}_mp_rank_{N}_model_states\.pt$")
EXPP_RE = re.compile(rf"(?a)^expp_rank_{N}_mp_rank_{N}_optim_states\.pt$")
PIPE_RE = re.compile(rf"(?a)^layer_{N}-model_{N}-model_states\.pt$")
STEP_RE = re.compile(r"(?a)(\d{1,12})$")


@dataclass
class TagScan:
    """The file names of one tag folder, by role (one directory listing, no file opened)."""

    folder: Path
    model: Dict[int, str] = field(default_factory=dict)  # mp -> name
    z3model: Dict[Tuple[int, int], str] = field(default_factory=dict)  # (dp, mp) -> name
    zero: Dict[Tuple[int, int], str] = field(default_factory=dict)  # (dp, mp) -> name
    bf16_prefix: Set[bool] = field(default_factory=set)
    experts: Dict[Tuple[int, int, int], str] = field(default_factory=dict)  # (layer, expert, mp)
    old_experts: Dict[Tuple[int, int], str] = field(default_factory=dict)  # (expert, mp)
    expp: Dict[Tuple[int, int], str] = field(default_factory=dict)  # (ep, mp)
    pipeline: int = 0
    universal: bool = False

    @property
    def any(self) -> bool:
        return bool(self.model or self.z3model or self.zero or self.experts or self.old_experts or self.expp or self.pipeline)


def scan_tag(folder: Path) -> TagScan:
    s = TagScan(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return s
    for e in entries:
        n = e.name
        m = MODEL_RE.match(n)
        if m:
            s.model[int(m.group(1))] = n
            continue
        m = ZERO_RE.match(n)
        if m:
            s.zero[(int(m.group(2)), int(m.group(3)))] = n
            s.bf16_prefix.add(bool(m.group(1)))
            continue
        m = Z3_MODEL_RE.match(n)
        if m:
            s.z3model[(int(m.group(1)), int(m.group(2)))] = n
            continue
        m = EXPERT_RE.match(n)
        if m:
            s.experts[(int(m.group(1)), int(m.group(2)), int(m.group(3)))] = n
            continue
        m = OLD_EXPERT_RE.match(n)
        if m:
            s.old_experts[(int(m.group(1)), int(m.group(2)))] = n
            continue
        m = EXPP_RE.match(n)
        if m:
            s.expp[(int(m.group(1)), int(m.group(2)))] = n
            continue
        if PIPE_RE.match(n):
            s.pipeline += 1
        elif n == "zero":
            try:
                s.universal = e.is_dir()
            except OSError:
                pass
    return s


def is_tag(folder: Path) -> bool:
    return scan_tag(folder).any


def tag_dirs(root: Path, limit: int = 4096) -> List[Path]:
    """Sub-folders of a save dir that hold DeepSpeed files, newest step first."""
    out = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)[:limit]
    except OSError:
        return []
    for e in entries:
        try:
            if e.is_dir() and F.within(root, Path(e.path)) and is_tag(Path(e.path)):
                out.append(Path(e.path))
        except OSError:
            continue
    return sorted(out, key=_step_key, reverse=True)


def _step_key(p: Path) -> Tuple[int, str]:
    m = STEP_RE.search(p.name.replace(".pth", ""))
    return (int(m.group(1)) if m else -1, p.name)


def is_root(folder: Path) -> bool:
    return (folder / "latest").is_file() or (folder / "latest_universal").is_file() or bool(tag_dirs(folder, 512))


# ------------------------------------------------------------------ a save folder (SAVE_DIR)


def inspect_root(root: Path, matrix: Any = None, installed: Optional[str] = None, expect_latest: bool = True,
                 fmt: str = "deepspeed") -> CkptReport:
    """SAVE_DIR: the tag `latest` names (or the newest), judged; other tags looked at only to name the
    newest complete one when the chosen one is not."""
    tags = tag_dirs(root)
    latest_tag = read_latest(root)
    latest_name = "latest"
    if latest_tag is None and (root / "latest_universal").exists():
        latest_tag, latest_name = read_latest(root, "latest_universal"), "latest_universal"
    chosen: Optional[Path] = None
    note = None
    if latest_tag is not None:
        cand = root / latest_tag if _simple(latest_tag) else None
        empty = cand is not None and cand.is_dir() and F.within(root, cand) and not is_tag(cand)
        if cand is None or not cand.is_dir() or not F.within(root, cand) or empty:
            rep = CkptReport(path=str(root), format=fmt, loader="deepspeed")
            rep.facts["latest"] = latest_tag
            newest = _newest_complete(tags, matrix, installed)
            rep.add(id="ckpt.ds-latest-missing", severity="error",
                    title=f"`{latest_name}` names {latest_tag}, which " + ("holds no DeepSpeed files" if empty else "is absent"),
                    seen=f"{latest_name}: {latest_tag}; tags present: {short([t.name for t in tags], 6) or 'none'}"
                         + (f"; newest complete: {newest.name}" if newest else ""),
                    why="load_checkpoint(SAVE_DIR) without tag= reads `latest` and loads that tag; its files are gone "
                        "(a save that was cleaned up, or a copy of only some tags).",
                    fix=(f"load with tag='{newest.name}' (or write {newest.name} into {root.name}/latest)" if newest
                         else "copy the tag folder back, or write the tag you have into `latest`"),
                    sources=[f"{ENGINE}:2928-2975 load_checkpoint"])
            return rep
        chosen = cand
    elif tags:
        chosen = tags[0]
        if expect_latest:
            note = f"no `latest` file; inspected the newest tag, {chosen.name}"
    else:
        raise_not_ds(root)
    assert chosen is not None
    rep = inspect_tag(chosen, matrix, installed, save_dir=root, fmt=fmt)
    rep.path = str(root)
    rep.facts["tag"] = chosen.name
    rep.facts["tags"] = [t.name for t in tags][:50]
    if latest_tag is not None:
        rep.facts["latest"] = latest_tag
    if note:
        rep.facts["note"] = note
        rep.add(id="ckpt.ds-no-latest", severity="warning", title="No `latest` file in the save folder",
                seen=f"{root.name}: no latest; tags: {short([t.name for t in tags], 6)}",
                why="load_checkpoint(SAVE_DIR) without tag= warns 'Unable to find latest file at ...' and loads nothing "
                    "(returns None); the HF Trainer then stops with '[deepspeed] failed to resume from checkpoint'.",
                fix=f"pass tag='{chosen.name}' to load_checkpoint, or write it into {root.name}/latest",
                sources=[f"{ENGINE}:2928-2975 load_checkpoint",
                         "release:transformers==4.37.2:transformers/integrations/deepspeed.py:402-406"])
    if not rep.complete and len(tags) > 1:
        newest = _newest_complete([t for t in tags if t != chosen], matrix, installed)
        if newest is not None:
            rep.facts["newest_complete_tag"] = newest.name
            rep.add(id="ckpt.ds-older-tag-complete", severity="info",
                    title=f"{newest.name} is complete",
                    seen=f"{chosen.name} is incomplete; {newest.name} has every file",
                    why="An older save in the same folder can be resumed from while the newest one is repaired.",
                    fix=f"load_checkpoint(SAVE_DIR, tag='{newest.name}'), or write {newest.name} into `latest`")
    return rep


def _simple(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and "\x00" not in name


def read_latest(root: Path, name: str = "latest") -> Optional[str]:
    if not ((root / name).exists() or (root / name).is_symlink()):
        return None
    fc = F.check(root, name)
    if not fc.usable:
        return f"<{fc.state}>"
    try:
        return fc.path.read_bytes()[:256].decode("utf-8", "replace").strip()
    except OSError:
        return "<unreadable>"


def _newest_complete(tags: List[Path], matrix: Any, installed: Optional[str]) -> Optional[Path]:
    for t in tags[:8]:
        if inspect_tag(t, matrix, installed, save_dir=t.parent, quick=True).complete:
            return t
    return None


def raise_not_ds(folder: Path) -> None:
    from moe_env.errors import UsageError

    raise UsageError(f"{folder}: no DeepSpeed files (mp_rank_*_model_states.pt, zero_pp_rank_*_optim_states.pt)")


# ------------------------------------------------------------------ one tag folder


def _zero_stage(osd: Any) -> Optional[int]:
    v = osd.get("zero_stage") if isinstance(osd, dict) else None
    if isinstance(v, Record) and v.args:  # ZeroStageEnum(2), pickled as class + value
        v = v.args[0]
    return safe_int(v, 0, 3)


def _max_count(v: Any) -> Optional[int]:
    if isinstance(v, list) and v:
        vals = [safe_int(x, 1, MAX_DP) for x in v[:4096]]
        return max(vals) if all(x is not None for x in vals) else None  # type: ignore[type-var]
    return safe_int(v, 1, MAX_DP)


def inspect_tag(folder: Path, matrix: Any = None, installed: Optional[str] = None, save_dir: Optional[Path] = None,
                fmt: str = "deepspeed", quick: bool = False) -> CkptReport:
    s = scan_tag(folder)
    if not s.any:
        raise_not_ds(folder)
    rep = CkptReport(path=str(folder), format=fmt, loader="deepspeed")
    comp = F.Completeness(folder)
    facts = rep.facts
    # what the save says about itself: the main model file of mp rank 0, then one ZeRO shard
    main_name = s.model.get(0) or s.z3model.get((0, 0)) or "mp_rank_00_model_states.pt"
    main = load_into(comp, main_name) if not quick or main_name in s.model.values() else None
    main = main if isinstance(main, dict) else {}
    zero_name = s.zero.get((0, 0))
    zero = load_into(comp, zero_name) if zero_name else None
    zero = zero if isinstance(zero, dict) else {}
    osd = zero.get("optimizer_state_dict") if isinstance(zero.get("optimizer_state_dict"), dict) else {}
    ds_config = next((c for c in (main.get("ds_config"), zero.get("ds_config")) if isinstance(c, dict)), {})
    ds_version = next((v for v in (main.get("ds_version"), zero.get("ds_version"), osd.get("ds_version"))
                       if isinstance(v, str) and len(v) < 64), None)
    problems: List[str] = []
    dp = safe_int(main.get("dp_world_size"), 1, MAX_DP) if "dp_world_size" in main else None
    mp = safe_int(main.get("mp_world_size"), 1, MAX_MP) if "mp_world_size" in main else None
    for key, val, got in (("dp_world_size", main.get("dp_world_size"), dp), ("mp_world_size", main.get("mp_world_size"), mp)):
        if key in main and got is None:
            problems.append(f"{key}={brief(val)}")
    pc = _max_count(osd.get("partition_count")) if "partition_count" in osd else None
    stage = _zero_stage(osd)
    if stage is None:
        zc = ds_config.get("zero_optimization")
        stage = safe_int(zc.get("stage"), 0, 3) if isinstance(zc, dict) and "stage" in zc else None
    if s.z3model:
        stage = 3
    if stage is None and s.zero and not osd.get("zero_stage"):
        stage = 0 if zero else None  # BF16_Optimizer: bf16_ shards without ZeRO
    bf16 = True in s.bf16_prefix or _enabled(ds_config, "bf16") or _enabled(ds_config, "bfloat16")
    fp16 = _enabled(ds_config, "fp16")
    dp_inferred = False
    if dp is None:
        seen = [d for d, _ in s.zero] + [d for d, _ in s.z3model]
        dp = pc or (max(seen) + 1 if seen else 1)
        dp_inferred = True
    if mp is None:
        seen_mp = list(s.model) + [m for _, m in s.zero] + [m for _, m in s.z3model]
        mp = max(seen_mp) + 1 if seen_mp else 1
    num_experts = main.get("num_experts") if "num_experts" in main else None
    moe_counts: Optional[List[int]] = None
    old_moe = None
    if num_experts is not None:
        if isinstance(num_experts, list) and len(num_experts) <= MAX_LAYERS:
            vals = [safe_int(n, 1, MAX_EXPERTS) for n in num_experts]
            if all(v is not None for v in vals):
                moe_counts = vals  # type: ignore[assignment]
            else:
                problems.append("num_experts=[" + ", ".join(brief(n, 12) for n in num_experts[:6]) + (", ...]" if len(num_experts) > 6 else "]"))
        else:
            old_moe = safe_int(num_experts, 1, MAX_EXPERTS)
            if old_moe is None:
                problems.append(f"num_experts={brief(num_experts)}")
    elif s.experts and not main:
        layers = sorted({layer for layer, _, _ in s.experts})
        per = {}
        for layer, e, _ in s.experts:
            per[layer] = max(per.get(layer, 0), e + 1)
        moe_counts = [per.get(i, 0) for i in range(max(layers) + 1)]
        facts["experts_inferred"] = True
    if problems:
        rep.add(id="ckpt.ds-metadata-unreadable", severity="error",
                title=f"{main_name} holds sizes that are not numbers",
                seen=", ".join(problems),
                why="DeepSpeed's load_checkpoint reads these to find the ZeRO shards and expert files; the completeness "
                    "checks that need them were skipped.",
                fix="this file was not written by DeepSpeed as it is; copy it again from the save location",
                sources=[f"{ENGINE}:3375-3485 _save_moe_checkpoint"])
    is_moe = bool(moe_counts) or old_moe is not None or bool(s.experts or s.old_experts)
    ep = (max(r for r, _ in s.expp) + 1) if s.expp else None
    facts.update({"zero_stage": stage, "dp_world_size": dp, "mp_world_size": mp, "ep_world_size": ep,
                  "ds_version": ds_version, "precision": "bf16" if bf16 else "fp16" if fp16 else ("fp32" if ds_config else None),
                  "universal": s.universal or None})
    if dp_inferred:
        facts["dp_inferred"] = True
    if "global_steps" in main:
        facts["global_steps"] = safe_int(main.get("global_steps"), 0, 10 ** 12)
    meta = main.get("meta")
    if isinstance(meta, dict) and "iter" in meta:  # mmengine/XTuner client_state
        facts["iteration"] = safe_int(meta.get("iter"), 0, 10 ** 12)
    if is_moe:
        facts["moe_layers"] = len(moe_counts) if moe_counts else None
        facts["num_experts"] = moe_counts if moe_counts else old_moe
    # ------------------------------------------------------------ expected against present
    bad_meta = bool(problems)
    expected: List[str] = []
    mp_ranks = range(mp)
    for m in mp_ranks:
        expected.append(s.model.get(m) or f"mp_rank_{m:02d}_model_states.pt")
    if stage == 3:
        expected += [s.z3model.get((d, m)) or f"zero_pp_rank_{d}_mp_rank_{m:02d}_model_states.pt" for m in mp_ranks for d in range(dp)]
    zero_expected: Dict[Tuple[int, int], str] = {}
    if s.universal:
        _universal(rep, folder)
    elif s.zero or (stage or 0) >= 1:
        prefix = "bf16_" if (True in s.bf16_prefix or (not s.bf16_prefix and bf16)) else ""
        for m in mp_ranks:
            for d in range(dp):
                zero_expected[(d, m)] = s.zero.get((d, m)) or f"{prefix}zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt"
    expert_expected: Dict[Tuple[int, int, int], str] = {}
    if s.universal:
        pass  # ds_to_universal keeps every parameter, experts included, under zero/
    elif moe_counts and not bad_meta and sum(moe_counts) * mp <= MAX_FILES:
        for layer, n in enumerate(moe_counts):
            for e in range(n):
                for m in mp_ranks:
                    expert_expected[(layer, e, m)] = s.experts.get((layer, e, m)) or \
                        f"layer_{layer}_expert_{e}_mp_rank_{m:02d}_model_states.pt"
    elif old_moe and not bad_meta:
        for e in range(old_moe):
            for m in mp_ranks:
                expert_expected[(-1, e, m)] = s.old_experts.get((e, m)) or f"expert_{e}_mp_rank_{m:02d}_model_states.pt"
    expp_expected: List[str] = []
    if is_moe and not s.zero and (stage or 0) == 0 and not s.universal:  # without ZeRO the optimizer states live in expp_rank_* files
        for r in range(ep or 1):
            for m in mp_ranks:
                expp_expected.append(s.expp.get((r, m)) or f"expp_rank_{r}_mp_rank_{m:02d}_optim_states.pt")
    if len(expected) + len(zero_expected) > MAX_FILES:
        rep.add(id="ckpt.ds-metadata-unreadable", severity="error", title="The saved world sizes are implausibly large",
                seen=f"dp_world_size={dp}, mp_world_size={mp}", why="No completeness check was possible.",
                fix="copy the checkpoint again from the save location")
        return rep
    comp.want_all(expected)
    comp.want_all(zero_expected.values())
    comp.want_all(expert_expected.values())
    comp.want_all(expp_expected)
    # ------------------------------------------------------------ read what metadata needs, zip-check the rest
    tensors: Dict[str, Any] = dict(model_tensors(main, keys=("module",))) if main else {}
    for rel, fc in comp.checks.items():
        if not fc.usable or rel in (main_name, zero_name):
            continue
        if rel in expert_expected.values() and not quick:
            obj = load_into(comp, rel)
            if isinstance(obj, dict):
                tensors.update(model_tensors(obj, keys=()))
            continue
        err = zip_problem(fc)
        if err:
            comp.mark(rel, F.DAMAGED, err)
    rep.tensors = len(tensors)
    rep.shards = len(comp.checks)
    # ------------------------------------------------------------ findings: missing by role, then damage
    missing = {c.rel for c in comp.state(F.MISSING)}
    miss_model = [n for n in expected if n in missing]
    if miss_model:
        rep.add(id="ckpt.ds-model-missing", severity="error",
                title=f"{plural(len(miss_model), 'model-states file')} absent",
                seen="absent: " + short(miss_model, 8),
                why="load_checkpoint opens mp_rank_XX_model_states.pt (and, under ZeRO-3, every rank's "
                    "zero_pp_rank_*_model_states.pt) first; without it nothing loads.",
                fix="copy the file from the save location; rank 0 writes it at the end of save_checkpoint",
                sources=[f"{ENGINE}:2875-2898 _get_ckpt_name"])
    miss_zero = sorted((d, m) for (d, m), n in zero_expected.items() if n in missing)
    if miss_zero:
        by_mp: Dict[int, List[int]] = {}
        for d, m in miss_zero:
            by_mp.setdefault(m, []).append(d)
        seen = "; ".join(f"mp rank {m:02d}: dp {'rank' if len(ds) == 1 else 'ranks'} {ranges(ds)}" for m, ds in sorted(by_mp.items()))
        rep.add(id="ckpt.ds-zero-shards-missing", severity="error",
                title=f"{len(miss_zero)} of {plural(len(zero_expected), 'ZeRO optimizer shard')} absent",
                seen=f"{seen} (dp_world_size={dp}{', inferred' if dp_inferred else ''}): "
                     + short([zero_expected[k] for k in miss_zero], 4),
                why="Every data-parallel rank writes its own optimizer partition; resuming reads all dp_world_size of "
                    "them, and zero_to_fp32.py stops with \"Expected N of '*_optim_states.pt' ... Possibly due to an "
                    "overwrite of an old checkpoint, or a checkpoint didn't get saved by one or more processes.\"",
                fix="copy the missing shards from the node that wrote them (node-local disks), or resume from an older "
                    "complete tag; load_checkpoint(..., load_optimizer_states=False) loads the weights alone",
                sources=[f"{ENGINE}:2860-2868 _get_rank_zero_ckpt_name", f"{ZERO_TO_FP32}:168-175 parse_optim_states"])
    miss_exp = sorted(k for k, n in expert_expected.items() if n in missing)
    if miss_exp:
        by_layer: Dict[Tuple[int, int], Set[int]] = {}
        for layer, e, m in miss_exp:
            by_layer.setdefault((layer, m), set()).add(e)
        parts = []
        for (layer, m), es in sorted(by_layer.items()):
            total = moe_counts[layer] if moe_counts and layer >= 0 else (old_moe or 0)
            where = f"layer {layer}" if layer >= 0 else "experts (old format)"
            parts.append(f"{where}{f' mp {m:02d}' if mp > 1 else ''}: {'expert' if len(es) == 1 else 'experts'} {and_list(sorted(es), 6)} missing of {total}")
        rep.add(id="ckpt.ds-experts-missing", severity="error",
                title=f"{len(miss_exp)} of {plural(len(expert_expected), 'expert file')} absent",
                seen="; ".join(parts[:6]) + (f"; ... ({len(parts)} layers)" if len(parts) > 6 else "")
                     + f" (e.g. {expert_expected[miss_exp[0]]})",
                why="Each expert-parallel rank writes its experts as layer_L_expert_E files; load_checkpoint opens the file of "
                    "every local expert of every MoE layer and fails on the first absent one.",
                fix="copy the missing expert files from the save location (they are written by the ranks that own "
                    "those experts, often on another node), or resume from an older complete tag",
                sources=[f"{ENGINE}:2906-2918 _get_expert_ckpt_name", f"{ENGINE}:3375-3485 _save_moe_checkpoint"])
    miss_expp = [n for n in expp_expected if n in missing]
    if miss_expp:
        rep.add(id="ckpt.ds-expert-optim-missing", severity="error",
                title=f"{plural(len(miss_expp), 'expert optimizer file')} absent",
                seen="absent: " + short(miss_expp, 6),
                why="Without ZeRO, an MoE save keeps the optimizer states in expp_rank_R files and load_checkpoint reads the "
                    "one of its expert-parallel rank.",
                fix="copy them from the save location, or load with load_optimizer_states=False",
                sources=[f"{ENGINE}:2900-2904 _get_optimizer_ckpt_name", f"{ENGINE}:3076-3090 load_checkpoint"])
    others = F.Completeness(folder, {k: v for k, v in comp.checks.items() if v.state != F.MISSING})
    F.report_files(rep, others)
    if len(s.bf16_prefix) > 1:
        rep.add(id="ckpt.ds-mixed-precision-shards", severity="warning",
                title="ZeRO shards with and without the bf16_ prefix in one tag",
                seen=f"{plural(sum(1 for n in s.zero.values() if n.startswith('bf16_')), 'bf16_ shard')}, "
                     f"{plural(sum(1 for n in s.zero.values() if not n.startswith('bf16_')), 'other shard')}",
                why="Two saves with different precision settings wrote into the same tag; the loader reads one set.",
                fix="keep the shards of one save only")
    if not main and not quick:
        mc = comp.checks.get(main_name)
        rep.facts.setdefault("skipped", []).append(
            f"world sizes and expert counts read from the file names: {main_name} "
            f"{'absent' if mc is None or mc.state == F.MISSING else 'unreadable'} (trailing missing ranks cannot be seen)")
    # ------------------------------------------------------------ what loads it, how to consolidate it
    if quick:
        return rep
    cen = census(tensors)
    if cen:
        rep.layout = max(cen.values(), key=lambda c: c.keys).layout
    elif is_moe:
        rep.layout = "deepspeed-moe"
    if moe_counts:
        rep.experts_per_layer = {i: n for i, n in enumerate(moe_counts)}
        rep.layers_with_experts = len(moe_counts)
        rep.expected = {"moe_layer_count": len(moe_counts), "experts": max(moe_counts), "experts_key": "num_experts"}
    _advice(rep, save_dir or folder.parent, folder, is_moe, stage, s, ds_version, installed)
    return rep


def _enabled(cfg: Dict[str, Any], key: str) -> bool:
    v = cfg.get(key)
    return isinstance(v, dict) and v.get("enabled") is True


def _vtuple(v: Optional[str]) -> Optional[Tuple[int, ...]]:
    m = re.match(r"(?a)(\d{1,4})\.(\d{1,4})(?:\.(\d{1,4}))?", v or "")
    return tuple(int(x or 0) for x in m.groups()) if m else None


def _advice(rep: CkptReport, save_dir: Path, folder: Path, is_moe: bool, stage: Optional[int], s: TagScan,
            ds_version: Optional[str], installed: Optional[str]) -> None:
    tag = folder.name
    script = save_dir / "zero_to_fp32.py"
    written = _vtuple(ds_version)
    rep.facts["loads_with_text"] = (f"deepspeed engine.load_checkpoint('{save_dir}', tag='{tag}')"
                                    + (" with \"checkpoint\": {\"load_universal\": true}" if s.universal else ""))
    if s.zero and not is_moe:
        out = "OUTPUT_DIR" if written and written >= (0, 16) else "OUTPUT_FILE" if written else "OUTPUT"
        tag_arg = f" -t {tag}" if not written or written >= (0, 11) else ""
        runner = f"python {script}" if script.is_file() else "python -m deepspeed.utils.zero_to_fp32"
        rep.add(id="ckpt.ds-consolidate", severity="info", title="Consolidate the ZeRO shards into one fp32 state dict",
                seen=f"ZeRO stage {stage if stage is not None else '?'}, {plural(len(s.zero), 'shard')}"
                     + (f"; {script.name} beside the tag (from DeepSpeed {ds_version or 'unknown'})" if script.is_file() else ""),
                why="The weights of a ZeRO save are spread over the optimizer shards; zero_to_fp32 merges them without a GPU. "
                    "Its output argument is a file up to DeepSpeed 0.15 and a folder of safetensors shards from 0.16.",
                fix=f"{runner} {save_dir} {out}{tag_arg}",
                sources=[f"{ZERO_TO_FP32}:722-750", "release:deepspeed==0.9.5:deepspeed/utils/zero_to_fp32.py:565-572"])
    elif is_moe and s.zero:
        rep.add(id="ckpt.ds-moe-no-zero-to-fp32", severity="info",
                title="zero_to_fp32.py does not consolidate a DeepSpeed-MoE save",
                seen=f"{plural(len(s.experts) + len(s.old_experts), 'expert file')}"
                     + (f", {plural(len(s.expp), 'expp_rank optimizer file')}" if s.expp else "") + f" beside {plural(len(s.zero), 'ZeRO shard')}",
                why="zero_to_fp32 globs every *_optim_states.pt and *_model_states.pt of the tag: the expp_rank_* files make it "
                    "count more shards than partition_count (\"Expected N of '*_optim_states.pt' ... but found M files\") and "
                    "the layer_*_expert_* files have no buffer_names (\"... is not a model state checkpoint\").",
                fix="load the save with DeepSpeed on the same data/expert-parallel layout (engine.load_checkpoint) and export "
                    "the weights from there (engine.save_16bit_model, or the project's own MoE export script)",
                sources=[f"{ZERO_TO_FP32}:94-108", f"{ZERO_TO_FP32}:160-175"])
    if installed:
        have = _vtuple(installed)
        if written and have and have < written[:len(have)]:
            rep.add(id="ckpt.ds-older-than-writer", severity="warning",
                    title=f"Installed DeepSpeed {installed} is older than the {ds_version} that wrote this save",
                    seen=f"ds_version {ds_version} in the checkpoint; deepspeed {installed} in the target environment",
                    why="DeepSpeed promises nothing about loading saves of newer releases; the file names are the same from "
                        "0.9.5 to 0.19.x, but optimizer state dicts gained keys (param_slice_mappings, ds_autoep_layers).",
                    fix=f"pip install 'deepspeed>={ds_version}' in that environment, or load with load_optimizer_states=False")
        else:
            rep.facts["installed_deepspeed"] = installed
    rep.facts["loads_with_releases"] = (
        "every DeepSpeed release from 0.9.5 to 0.19.x names and reads these files the same way"
        + (f"; written by {ds_version}" if ds_version else ""))


UNIVERSAL_STATES = ("fp32.pt", "exp_avg.pt", "exp_avg_sq.pt")


def _universal(rep: CkptReport, folder: Path) -> None:
    """TAG/zero/PARAM/{fp32,exp_avg,exp_avg_sq}.pt for every parameter (ds_to_universal.py:274-276);
    names only, nothing opened."""
    zero = folder / "zero"
    short_of: List[str] = []
    params = 0
    try:
        entries = list(os.scandir(zero))[:MAX_FILES]
    except OSError:
        entries = []
    for e in entries:
        try:
            if not e.is_dir():
                continue
            have = {x.name for x in os.scandir(e.path)}
        except OSError:
            continue
        params += 1
        gone = [n for n in UNIVERSAL_STATES if n not in have]
        if gone:
            short_of.append(f"{e.name} lacks {', '.join(gone)}")
    rep.facts["universal_params"] = params
    if not params or short_of:
        rep.add(id="ckpt.ds-universal-incomplete", severity="error",
                title=("A universal checkpoint without parameter folders" if not params else
                       f"{len(short_of)} of {plural(params, 'parameter folder')} in zero/ incomplete"),
                seen="; ".join(short_of[:4]) + (" ..." if len(short_of) > 4 else "") if short_of else f"{zero.name}/ is empty",
                why="A universal checkpoint keeps each parameter's fp32 weights and Adam moments in zero/PARAM/; loading "
                    "with \"load_universal\": true reads all three for every parameter.",
                fix="run ds_to_universal.py again on the original save",
                sources=["release:deepspeed==0.16.9:deepspeed/checkpoint/ds_to_universal.py:274-276"])
