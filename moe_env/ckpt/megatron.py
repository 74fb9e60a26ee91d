"""Megatron checkpoints: a legacy save (`latest_checkpointed_iteration.txt`, `iter_*/mp_rank_*/
model_optim_rng.pt`, pickled args read with the restricted unpickler), a `torch_dist` folder
(`metadata.json`, `.metadata`, `__*.distcp`) and a lone torch.save file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from moe_env.ckpt import files as F
from moe_env.ckpt._untrusted import UntrustedInput, json_loads
from moe_env.ckpt.layouts import (
    MAX_EXPERTS,
    MAX_LAYERS,
    ExpertCensus,
    census,
    expert_findings,
    layout_advice,
    safe_int,
)
from moe_env.ckpt.report import CkptReport, brief, plural, short
from moe_env.ckpt.torchfile import args_of, load_into, model_tensors
from moe_env.ckpt_pickle import MAX_DIM, PickleFormatError, Record, TensorInfo, UnsafePickleError, restricted_loads
from moe_env.errors import UsageError

TRACKER = "latest_checkpointed_iteration.txt"
_RANK_RE = re.compile(r"(?a)^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")
_ITER_RE = re.compile(r"(?a)^iter_(\d{1,12})$")
MAX_RANKS = 65536
MAX_PAR = 4096


def iter_of(name: str) -> Optional[int]:
    m = _ITER_RE.match(name)
    return int(m.group(1)) if m else None


def iter_dirs(root: Path) -> List[Path]:
    """iter_* folders (not files, not symlink loops), oldest first."""
    out = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for p in entries:
        if iter_of(p.name) is None:
            continue
        try:
            if p.is_dir() and F.within(root, p):
                out.append(p)
        except OSError:
            continue
    return sorted(out, key=lambda p: iter_of(p.name) or -1)


def megatron_root(root: Path, matrix: Any) -> CkptReport:
    tracker = root / TRACKER
    note = None
    if tracker.exists() or tracker.is_symlink():
        fc = F.check(root, TRACKER)
        if not fc.usable:
            raise UsageError(f"{tracker}: {fc.detail or fc.state}")
        text = fc.path.read_bytes()[:64].decode("utf-8", "replace").strip()
        if text == "release":
            sub, iteration = root / "release", None
        elif re.fullmatch(r"(?a)[0-9]{1,12}", text):
            iteration = int(text)
            sub = root / f"iter_{iteration:07d}"
        else:
            raise UsageError(f"{tracker}: expected an iteration number or 'release', got {text[:40]!r}")
    else:
        iters = iter_dirs(root)
        if not iters:
            raise UsageError(f"{root}: no {TRACKER} and no iter_* folder")
        sub, iteration = iters[-1], iter_of(iters[-1].name)
        text = ""
        note = f"no {TRACKER}; inspected the newest folder, {sub.name}"
    if not sub.is_dir() or not F.within(root, sub):
        rep = CkptReport(path=str(root), format="megatron-legacy", loader="megatron")
        rep.facts["iteration"] = iteration
        others = [p.name for p in iter_dirs(root)]
        rep.add(id="ckpt.iteration-missing", severity="error", title=f"The tracker names {sub.name}, which is absent",
                seen=f"{tracker.name}: {text}; no folder {sub.name}" + (f" (present: {short(others, 4)})" if others else ""),
                why="Megatron's --load reads the tracker and fails when the folder it names is gone.",
                fix=f"copy {sub.name}/ back, or write the iteration you have into {tracker.name}")
        return rep
    if (sub / "metadata.json").is_file() or (sub / ".metadata").is_file():
        rep = torch_dist(sub, matrix)
    else:
        rep = megatron_iter(sub, matrix, iteration)
    rep.path = str(root)
    if note:
        rep.facts["note"] = note
    return rep


def megatron_iter(folder: Path, matrix: Any, iteration: Optional[int]) -> CkptReport:
    rep = CkptReport(path=str(folder), format="megatron-legacy", loader="megatron")
    rep.facts["iteration"] = iteration
    ranks: Dict[Tuple[int, int, int], str] = {}
    try:
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith("mp_rank_") and p.is_dir())
    except OSError as exc:
        raise UsageError(f"{folder}: unreadable ({exc.strerror})") from None
    for name in names:
        m = _RANK_RE.match(name)
        if not m:
            continue
        parts = [g for g in m.groups() if g is not None]
        ranks[tuple(int(x) for x in (parts + ["0", "0"])[:3])] = name  # type: ignore[index]
    if not ranks:
        raise UsageError(f"{folder}: no mp_rank_* folders")
    comp = F.Completeness(folder)
    all_tensors: Dict[Tuple[int, int, int], Dict[str, TensorInfo]] = {}
    a: Dict[str, Any] = {}
    for rank, name in sorted(ranks.items()):
        obj = load_into(comp, f"{name}/model_optim_rng.pt")
        if obj is None:
            continue
        if not a:
            a = args_of(obj)
        all_tensors[rank] = model_tensors(obj)
    tp = max(r[0] for r in ranks) + 1
    pp = safe_int(a.get("pipeline_model_parallel_size") or 1, 1, MAX_PAR)
    ep = safe_int(a.get("expert_model_parallel_size") or 1, 1, MAX_PAR)
    want_tp = safe_int(a.get("tensor_model_parallel_size") or 1, 1, MAX_PAR)
    bad_args = [k for k, v in (("pipeline_model_parallel_size", pp), ("expert_model_parallel_size", ep),
                               ("tensor_model_parallel_size", want_tp)) if v is None]
    if bad_args:
        rep.add(id="ckpt.args-unreadable", severity="error", title="The saved args hold sizes that are not numbers",
                seen=", ".join(f"{k}={brief(a.get(k))}" for k in bad_args),
                why="Megatron reads these from the checkpoint's args when it loads; the rank checks were skipped.",
                fix="this file was not written by Megatron as it is; copy it again from the save location")
        a = {}
    pp, ep, want_tp = pp or 1, ep or 1, want_tp or 1
    # mp_rank_TT_PPP_EEE; with two numbers the second is PP if PP>1 else EP
    if a:
        grid = want_tp * pp * ep
        if grid <= MAX_RANKS:
            expected_grid = {(t, p_, e) for t in range(want_tp) for p_ in range(pp) for e in range(ep)}
            norm = set()
            for (t, x, y) in ranks:
                norm.add((t, x, y) if pp > 1 and ep > 1 else (t, x, 0) if pp > 1 else (t, 0, x))
            absent = sorted(expected_grid - norm)
            if absent:
                rep.add(id="ckpt.ranks-missing", severity="error",
                        title=f"{len(absent)} of {plural(len(expected_grid), 'model-parallel rank folder')} absent",
                        seen=f"TP={want_tp} PP={pp} EP={ep} from the saved args; absent (tp,pp,ep): {short([str(r) for r in absent], 6)}",
                        why="A legacy checkpoint needs every rank's file for the same TP/PP/EP layout.",
                        fix="copy the missing mp_rank_* folders from the save location")
        tp = want_tp
    rep.facts.update({"tp": tp, "pp": pp, "ep": ep, "rank_folders": len(ranks)})
    F.report_files(rep, comp, what="rank files",
                   missing_why="Each rank loads its own model_optim_rng.pt; a missing one stops every rank.",
                   missing_fix="copy the files again; an interrupted save leaves empty rank folders")
    for f in rep.findings:
        if f.id == "ckpt.files-missing":
            f.id = "ckpt.rank-file-missing"
    if a:
        for key in ("num_layers", "num_experts", "moe_grouped_gemm", "transformer_impl", "ckpt_format",
                    "moe_use_legacy_grouped_gemm", "hidden_size", "ffn_hidden_size", "moe_ffn_hidden_size"):
            if key in a and isinstance(a[key], (int, str, bool, float, type(None))):
                rep.facts[key] = a[key]
    num_layers = safe_int(a.get("num_layers"), 1, MAX_LAYERS) if a.get("num_layers") else None
    num_experts = safe_int(a.get("num_experts"), 1, MAX_EXPERTS) if a.get("num_experts") else None
    layers_per_stage = num_layers // pp if num_layers else 0
    per_ep: Dict[int, Dict[str, ExpertCensus]] = {}
    for rank, tensors in all_tensors.items():
        if rank[0] != 0:
            continue
        stage = rank[1] if pp > 1 else 0
        e_rank = rank[2] if (pp > 1 and ep > 1) else (rank[1] if ep > 1 and pp == 1 else 0)
        cen = census(tensors, stage * layers_per_stage)
        bucket = per_ep.setdefault(e_rank, {})
        for lid, cc in cen.items():
            acc = bucket.setdefault(lid, ExpertCensus(lid))
            acc.keys += cc.keys
            for layer, idx in cc.experts.items():
                acc.experts.setdefault(layer, set()).update(idx)
            acc.parts.update(cc.parts)
            acc.counts.update(cc.counts)
    rep.tensors = sum(len(t) for t in all_tensors.values())
    if comp.bad:
        F.skipped(rep, "expert checks", comp)
        first = per_ep.get(0) or (next(iter(per_ep.values())) if per_ep else {})
        if first:
            rep.layout = max(first.values(), key=lambda x: x.keys).layout
        return rep
    expected: Dict[str, Any] = {}
    if num_experts:
        expected["experts"] = num_experts
        expected["experts_local"] = max(1, num_experts // ep)
        expected["experts_key"] = "args.num_experts"
    if num_layers:
        expected["layers"] = num_layers
        expected["moe_layers"] = list(range(num_layers))
    ffn = safe_int(a.get("moe_ffn_hidden_size") or a.get("ffn_hidden_size"), 1, MAX_DIM)
    if ffn:
        expected["grouped_rows_per_expert"] = max(1, ffn // max(1, tp))
    first = per_ep.get(0) or (next(iter(per_ep.values())) if per_ep else {})
    source = "the saved args" if a else "the checkpoint"
    expert_findings(rep, first, expected, source=source)
    for e_rank, cen in sorted(per_ep.items()):
        if e_rank == 0 or not cen:
            continue
        other = CkptReport(path=rep.path, format=rep.format)
        expert_findings(other, cen, expected, source=source)
        for f in other.findings:
            if f.id == "ckpt.experts-missing":
                f.seen = f"expert-parallel rank {e_rank}: {f.seen}"
                rep.findings.append(f)
    rep.expected.pop("grouped_rows_per_expert", None)
    if rep.layout.startswith("megatron-"):
        layout_advice(rep, matrix)
    return rep


def torch_file(f: Path, matrix: Any) -> CkptReport:
    rep = CkptReport(path=str(f), format="torch-file", loader="torch")
    comp = F.Completeness(f.parent)
    obj = load_into(comp, f.name)
    if obj is None:
        F.report_files(rep, comp)
        return rep
    tensors = model_tensors(obj)
    rep.tensors = len(tensors)
    a = args_of(obj)
    expected: Dict[str, Any] = {}
    n = safe_int(a.get("num_experts"), 1, MAX_EXPERTS) if a.get("num_experts") else None
    if a:
        rep.format, rep.loader = "megatron-legacy", "megatron"
        for key in ("num_layers", "num_experts", "moe_grouped_gemm", "transformer_impl", "expert_model_parallel_size"):
            if key in a and isinstance(a[key], (int, str, bool, float, type(None))):
                rep.facts[key] = a[key]
    if n:
        ep = safe_int(a.get("expert_model_parallel_size") or 1, 1, MAX_PAR) or 1
        expected = {"experts": n, "experts_local": max(1, n // ep), "experts_key": "args.num_experts"}
    if isinstance(obj, dict) and "iteration" in obj:
        rep.facts["iteration"] = safe_int(obj.get("iteration"), 0, 10 ** 15)
    expert_findings(rep, census(tensors), expected, source="the saved args" if a else "the checkpoint")
    if rep.layout.startswith("megatron-"):
        layout_advice(rep, matrix)
    return rep


def torch_dist(folder: Path, matrix: Any) -> CkptReport:
    rep = CkptReport(path=str(folder), format="megatron-torch-dist", loader="megatron")
    comp = F.Completeness(folder)
    if (folder / "metadata.json").exists():
        fc = comp.want("metadata.json")
        if fc.usable:
            try:
                meta = json_loads(fc.path.read_bytes()[: 1 << 20], what="metadata.json", max_depth=16)
                rep.facts["metadata"] = meta if isinstance(meta, dict) else None
            except (OSError, UntrustedInput) as exc:
                rep.add(id="ckpt.metadata-unreadable", severity="error", title="metadata.json is not valid JSON",
                        seen=f"metadata.json: {exc}", why="Megatron decides the checkpoint format from this file.",
                        fix="copy it again from the save location")
    tensors: Dict[str, TensorInfo] = {}
    if (folder / ".metadata").exists() or (folder / ".metadata").is_symlink():
        fc = comp.want(".metadata")
        if fc.usable:
            try:
                md = restricted_loads(fc.path.read_bytes() if fc.size <= 256 << 20 else b"", persistent=False)
                tensors, files = dcp_tensors(md)
                rep.shards = len(files)
                dist = F.Completeness(folder)
                dist.want_all(sorted(files))
                F.report_files(rep, dist, what=".distcp files",
                               missing_why="torch.distributed.checkpoint reads every file the metadata names; a partial copy fails to load.",
                               missing_fix="copy the missing __*.distcp files")
                for f in rep.findings:
                    if f.id == "ckpt.files-missing":
                        f.id = "ckpt.shards-missing"
            except UnsafePickleError as exc:
                comp.mark(".metadata", F.UNSAFE, str(exc))
            except PickleFormatError as exc:
                comp.mark(".metadata", F.DAMAGED, str(exc))
    else:
        rep.add(id="ckpt.metadata-missing", severity="error", title="No .metadata in the torch_dist folder",
                seen=f"{folder.name}: .metadata absent",
                why="The tensor index of a torch_dist checkpoint lives in .metadata; without it nothing loads.",
                fix="copy the whole iter_* folder again")
    F.report_files(rep, comp)
    rep.tensors = len(tensors)
    if (folder / "common.pt").is_file():
        rep.facts["common_pt"] = True
    expert_findings(rep, census(tensors), {}, source="the checkpoint")
    if rep.layout.startswith("megatron-"):
        layout_advice(rep, matrix)
    return rep


def dcp_tensors(md: Any) -> Tuple[Dict[str, TensorInfo], Set[str]]:
    out: Dict[str, TensorInfo] = {}
    files: Set[str] = set()
    if not isinstance(md, Record):
        return out, files
    sdm = md.get("state_dict_metadata") or {}
    for key, entry in (sdm.items() if isinstance(sdm, dict) else []):
        if isinstance(entry, Record) and entry.cls.endswith("TensorStorageMetadata"):
            size = entry.get("size") or ()
            if isinstance(size, Record):  # torch.Size pickled as a class
                size = size.args[0] if size.args else ()
            if not isinstance(size, (tuple, list)) or len(size) > 32 or not all(
                    isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_DIM for s in size):
                raise PickleFormatError(f"tensor {brief(key, 60)} has a size that is not a list of sizes")
            props = entry.get("properties")
            dtype = "?"
            if isinstance(props, Record) and isinstance(props.state, tuple) and props.state:
                dtype = props.state[0].replace("torch.", "")[:20] if isinstance(props.state[0], str) else "?"
            elif isinstance(props, Record) and isinstance(props.state, dict):
                d = props.state.get("dtype", "?")
                dtype = d.replace("torch.", "")[:20] if isinstance(d, str) else "?"
            out[str(key) if isinstance(key, str) else f"<{type(key).__name__}>"] = TensorInfo(dtype, tuple(size))
    storage = md.get("storage_data") or {}
    if isinstance(storage, dict):
        for v in storage.values():
            if isinstance(v, Record) and isinstance(v.get("relative_path"), str):
                files.add(v.get("relative_path"))
    return out, files
