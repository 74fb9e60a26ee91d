"""Checkpoint inspection without loading tensors or running pickle code.

Reads a Hugging Face safetensors folder (config.json, the index, each shard's header), a Megatron
legacy checkpoint (`latest_checkpointed_iteration.txt`, `iter_*/mp_rank_*/model_optim_rng.pt`, read
with the restricted unpickler of ckpt_pickle) or a `torch_dist` folder (`metadata.json`, `.metadata`),
and says which MoE key layout it has, how many layers and experts per layer it holds against what
its config asks, and what is missing. The result is a CkptReport with Findings; presentation lives
in commands/ckpt.py.

Which Megatron flags and Transformer Engine versions load a layout is matrix data: `[[rule]]`
entries of kind `expert_layout` in the megatron project (compat_matrix/rules/megatron.toml).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from moe_env.ckpt_pickle import (
    PickleFormatError,
    Record,
    TensorInfo,
    UnsafePickleError,
    flatten_tensors,
    read_torch_file,
    restricted_loads,
)
from moe_env.errors import UsageError
from moe_env.findings import Finding

MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its header at 100 MB as well

# ------------------------------------------------------------------ expert key layouts

# (layout id, regex on the key, what it is). Groups: layer, expert (or shard / None), part.
LAYOUTS: List[Tuple[str, "re.Pattern[str]", str]] = [
    ("hf-mixtral", re.compile(r"layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$"),
     "Hugging Face Mixtral (block_sparse_moe.experts.N.w1/w2/w3)"),
    ("hf-mlp-experts", re.compile(r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$"),
     "Hugging Face DeepSeek-V2 / Qwen-MoE (mlp.experts.N.gate_proj/up_proj/down_proj)"),
    ("xtuner-merged", re.compile(r"layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(w1w3|w2)$"),
     "XTuner shard-MoE merged layout (experts.S.w1w3 / experts.S.w2, several experts per tensor)"),
    ("megatron-sequential", re.compile(r"layers\.(\d+)\.mlp\.experts\.local_experts\.(\d+)\.linear_fc(1|2)\.weight$"),
     "Megatron SequentialMLP (mlp.experts.local_experts.N.linear_fc1/fc2)"),
    ("megatron-te-grouped", re.compile(r"layers\.(\d+)\.mlp\.experts\.linear_fc(1|2)\.weight(\d+)$"),
     "Megatron TEGroupedMLP (mlp.experts.linear_fc1.weightN)"),
    ("megatron-grouped", re.compile(r"layers\.(\d+)\.mlp\.experts\.weight(1|2)$"),
     "Megatron legacy GroupedMLP (mlp.experts.weight1/weight2)"),
    ("megatron-dist", re.compile(r"layers\.(?:(\d+)\.)?mlp\.experts\.experts\.linear_fc(1|2)\.weight$"),
     "Megatron torch_dist sharded keys (mlp.experts.experts.linear_fc1/fc2)"),
    ("megatron-switchmlp", re.compile(r"layers\.(\d+)\.mlp\.local_experts\.(\d+)\.linear_fc(1|2)\.weight$"),
     "Megatron core 0.4 SwitchMLP (mlp.local_experts.N.linear_fc1/fc2)"),
]
LAYOUT_TITLES = {lid: title for lid, _, title in LAYOUTS}
_PARTS = {
    "hf-mixtral": {"w1", "w2", "w3"},
    "hf-mlp-experts": {"gate_proj", "up_proj", "down_proj"},
    "xtuner-merged": {"w1w3", "w2"},
    "megatron-sequential": {"1", "2"},
    "megatron-switchmlp": {"1", "2"},
}


@dataclass
class ExpertCensus:
    """Experts found per layer for one layout."""

    layout: str
    experts: Dict[int, Set[int]] = field(default_factory=dict)  # layer -> expert indices seen
    parts: Dict[Tuple[int, int], Set[str]] = field(default_factory=dict)  # (layer, expert) -> parts
    counts: Dict[int, int] = field(default_factory=dict)  # layer -> experts held (merged layouts)
    keys: int = 0


def census(tensors: Dict[str, TensorInfo], offset: int = 0) -> Dict[str, ExpertCensus]:
    """Classify every key by layout; `offset` shifts layer numbers (pipeline stages hold local layers)."""
    out: Dict[str, ExpertCensus] = {}
    for key, info in tensors.items():
        for lid, rx, _ in LAYOUTS:
            m = rx.search(key)
            if not m:
                continue
            c = out.setdefault(lid, ExpertCensus(lid))
            c.keys += 1
            if lid == "megatron-dist":
                layer = int(m.group(1)) + offset if m.group(1) else -1
                shape = info.shape if info else ()
                if layer == -1 and len(shape) >= 2:  # stacked: [layers, experts, ...]
                    for li in range(shape[0]):
                        c.counts[li] = shape[1]
                elif len(shape) >= 1:
                    c.counts[layer] = shape[0]
                break
            layer = int(m.group(1)) + offset
            if lid == "megatron-grouped":
                c.experts.setdefault(layer, set())
                if m.group(2) == "2" and info and info.shape:  # weight2: [experts_local * ffn / TP, hidden]
                    c.counts[layer] = info.shape[0]
            elif lid == "megatron-te-grouped":
                c.experts.setdefault(layer, set()).add(int(m.group(3)))
                c.parts.setdefault((layer, int(m.group(3))), set()).add(m.group(2))
            else:
                idx = int(m.group(2))
                c.experts.setdefault(layer, set()).add(idx)
                c.parts.setdefault((layer, idx), set()).add(m.group(3))
                if lid == "xtuner-merged" and m.group(3) == "w2":
                    c.counts[layer] = c.counts.get(layer, 0) + (info.shape[0] if info and info.shape else 0)
            break
    return out


# ------------------------------------------------------------------ the report


@dataclass
class CkptReport:
    path: str
    format: str  # "hf-safetensors", "megatron-legacy", "megatron-torch-dist", "torch-file"
    layout: str = "dense"  # one of LAYOUTS' ids, "mixed", or "dense" when no expert keys were found
    tensors: int = 0
    shards: int = 0
    layers_with_experts: int = 0
    experts_per_layer: Dict[int, int] = field(default_factory=dict)
    expected: Dict[str, Any] = field(default_factory=dict)  # from config.json / args: layers, experts, moe layers
    facts: Dict[str, Any] = field(default_factory=dict)  # iteration, ranks, model_type...
    findings: List[Finding] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": "moe-env.ckpt/1",
            "path": self.path,
            "format": self.format,
            "layout": self.layout,
            "layout_title": LAYOUT_TITLES.get(self.layout, self.layout),
            "complete": self.complete,
            "tensors": self.tensors,
            "shards": self.shards,
            "layers_with_experts": self.layers_with_experts,
            "experts_per_layer": {str(k): v for k, v in sorted(self.experts_per_layer.items())},
            "expected": self.expected,
            "facts": self.facts,
            "findings": [f.to_dict() for f in self.findings],
        }


def inspect_checkpoint(path: str, matrix: Any = None) -> CkptReport:
    """Inspect PATH (folder or file); raises UsageError when it is not a checkpoint moe-env knows."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file or folder")
    if p.is_file():
        if p.suffix == ".safetensors":
            return _hf_folder(p.parent, only=p)
        if p.name == "model.safetensors.index.json":
            return _hf_folder(p.parent)
        if p.name == ".metadata" or p.name == "metadata.json":
            return _torch_dist(p.parent, matrix)
        return _torch_file(p, matrix)
    if (p / "model.safetensors.index.json").is_file() or (p / "model.safetensors").is_file():
        return _hf_folder(p)
    if (p / "metadata.json").is_file() or (p / ".metadata").is_file():
        return _torch_dist(p, matrix)
    if (p / "latest_checkpointed_iteration.txt").is_file():
        return _megatron_root(p, matrix)
    if any(p.glob("mp_rank_*")):
        return _megatron_iter(p, matrix, iteration=_iter_of(p.name))
    if (p / "model_optim_rng.pt").is_file():
        return _torch_file(p / "model_optim_rng.pt", matrix)
    iters = sorted(p.glob("iter_*"))
    if iters:
        return _megatron_root(p, matrix)
    if (p / "pytorch_model.bin.index.json").is_file() or (p / "pytorch_model.bin").is_file():
        raise UsageError(f"{path}: a pytorch_model.bin checkpoint; only safetensors, Megatron legacy and "
                         "torch_dist checkpoints are inspected (convert with save_pretrained(safe_serialization=True))")
    raise UsageError(f"{path}: not a checkpoint moe-env knows (no model.safetensors.index.json, config/metadata.json, "
                     "latest_checkpointed_iteration.txt, iter_*/ or mp_rank_*/)")


# ------------------------------------------------------------------ Hugging Face safetensors


def read_safetensors_header(path: Path) -> Tuple[Dict[str, TensorInfo], Optional[str]]:
    """Tensors named in a .safetensors header (8-byte little-endian length + JSON), and an error if any."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return {}, "shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or n + 8 > size:
                return {}, f"header length {n} does not fit a {size}-byte file (truncated or not safetensors)"
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"unreadable header ({exc})"
    if not isinstance(header, dict):
        return {}, "header is not a JSON object"
    out: Dict[str, TensorInfo] = {}
    end = 0
    for key, meta in header.items():
        if key == "__metadata__" or not isinstance(meta, dict):
            continue
        shape = meta.get("shape") or []
        out[key] = TensorInfo(str(meta.get("dtype", "?")), tuple(int(s) for s in shape))
        offs = meta.get("data_offsets") or [0, 0]
        if isinstance(offs, list) and len(offs) == 2:
            end = max(end, int(offs[1]))
    if 8 + n + end > size:
        return out, f"data ends at byte {8 + n + end} but the file has {size} bytes (truncated copy)"
    return out, None


def _hf_folder(folder: Path, only: Optional[Path] = None) -> CkptReport:
    rep = CkptReport(path=str(only or folder), format="hf-safetensors")
    config: Dict[str, Any] = {}
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{cfg_path}: not valid JSON ({exc})") from None
    elif only is None:
        rep.findings.append(Finding(
            id="ckpt.no-config", severity="warning", title="No config.json beside the weights",
            seen=f"{folder}: config.json missing",
            why="Without config.json the layer and expert counts cannot be checked, and from_pretrained cannot load the folder.",
            fix="copy config.json from the base model or the training output"))
    index_path = folder / "model.safetensors.index.json"
    weight_map: Dict[str, str] = {}
    if only is None and index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            weight_map = dict(index.get("weight_map") or {})
        except (OSError, ValueError, AttributeError) as exc:
            raise UsageError(f"{index_path}: not a valid safetensors index ({exc})") from None
        if not weight_map:
            raise UsageError(f"{index_path}: weight_map is empty")
    shard_names = sorted(set(weight_map.values())) if weight_map else [(only or folder / "model.safetensors").name]
    rep.shards = len(shard_names)
    tensors: Dict[str, TensorInfo] = {}
    absent: List[str] = []
    by_shard: Dict[str, Dict[str, TensorInfo]] = {}
    for name in shard_names:
        sp = folder / name
        if not sp.is_file():
            absent.append(name)
            continue
        found, err = read_safetensors_header(sp)
        by_shard[name] = found
        tensors.update(found)
        if err:
            rep.findings.append(Finding(
                id="ckpt.shard-damaged", severity="error", title=f"Shard {name} is damaged",
                seen=f"{sp}: {err}",
                why="A truncated or corrupt shard fails at load time, usually after the other shards were read.",
                fix="copy or download the shard again and compare its size with the source"))
    if absent:
        held = sum(1 for v in weight_map.values() if v in absent)
        rep.findings.append(Finding(
            id="ckpt.shards-missing", severity="error",
            title=f"{len(absent)} of {len(shard_names)} shards named by the index are absent",
            seen=f"absent: {_short(absent)} ({held} tensors)",
            why="from_pretrained fails on the first absent file; a save that wrote only some shards lost those weights.",
            fix="copy the missing files; if training wrote them, check the save step (ZeRO-3 consolidation, disk space)"))
    if weight_map:
        missing = [k for k, shard in weight_map.items() if shard in by_shard and k not in by_shard[shard]]
        if missing:
            rep.findings.append(Finding(
                id="ckpt.tensors-missing", severity="error",
                title=f"{len(missing)} tensors listed in the index are not in their shard",
                seen=f"e.g. {_short(missing)}",
                why="The index and the shards disagree: the shards were rewritten or mixed from two saves.",
                fix="re-save the model, or rebuild the index from the shards' headers"))
    rep.tensors = len(tensors)
    rep.facts["model_type"] = config.get("model_type")
    expected = _hf_expectations(config)
    _layer_findings(rep, tensors, config.get("num_hidden_layers"), absent)
    _expert_findings(rep, census(tensors), expected, source="config.json")
    # XTuner builds its shard-MoE block only when moe_implementation == 'shard'; 'origin' (the default)
    # builds per-expert modules, and expert_in_one_shard (default None, saved in every XTuner config.json)
    # is read only by the shard block. So the value of moe_implementation decides, not the key's presence:
    # InternLM/xtuner@v0.1.23:xtuner/model/transformers_models/deepseek_v2/modeling_deepseek.py:1287-1293,
    # .../mixtral/modeling_mixtral.py:1030-1036, .../deepseek_v2/configuration_deepseek.py:166-167 and
    # xtuner/engine/hooks/hf_checkpoint_hook.py:27-30 (_use_shard_moe: getattr(..., 'origin') == 'shard').
    if config.get("moe_implementation") == "shard":
        rep.findings.append(Finding(
            id="ckpt.xtuner-shard-config", severity="warning",
            title="config.json still asks for XTuner's shard MoE",
            seen=f"moe_implementation={config.get('moe_implementation')!r}, expert_in_one_shard={config.get('expert_in_one_shard')!r}",
            why="XTuner's model classes build merged expert shards (experts.S.w1w3) from this config, while Hugging Face "
                "loaders and inference engines expect per-expert weights; shard MoE is a training-time format. "
                "XTuner's HFCheckpointHook un-merges the weights of hf_model/ but saves the training config as it is.",
            fix="set \"moe_implementation\": \"origin\" in config.json for inference and conversion, or load with "
                "XTuner's from_pretrained(..., moe_implementation='shard'), which merges per-expert weights while loading",
            sources=[
                "InternLM/xtuner@v0.1.23:xtuner/model/transformers_models/deepseek_v2/modeling_deepseek.py:1287-1293",
                "InternLM/xtuner@v0.1.23:xtuner/model/transformers_models/deepseek_v2/modeling_deepseek.py:1443-1451 from_pretrained",
                "InternLM/xtuner@v0.1.23:xtuner/engine/hooks/hf_checkpoint_hook.py:27-30,64-69",
            ]))
    _layout_advice(rep, None)
    if rep.layout == "xtuner-merged":
        rep.findings.append(Finding(
            id="ckpt.xtuner-merged-layout", severity="warning",
            title="Experts are in XTuner's merged layout (experts.S.w1w3)",
            seen="keys like ...experts.0.w1w3 hold several experts each",
            why="Only XTuner's shard-MoE model loads these keys; transformers, vLLM and the Megatron converter expect experts.N.{gate,up,down}_proj / w1,w2,w3.",
            fix="use the hf_model/ folder written by XTuner's HFCheckpointHook, which calls get_origin_state_dict to split the shards back into per-expert keys",
            sources=["InternLM/xtuner@94a4fcb0f53d63ceb85334bb456c073251669ccb:xtuner/utils/handle_moe_load_and_save.py:56"]))
    return rep


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer_findings(rep: CkptReport, tensors: Dict[str, TensorInfo], want: Any, absent: List[str]) -> None:
    """Decoder layers with no tensor at all, or more layers than config.json's num_hidden_layers."""
    if not isinstance(want, int) or want <= 0 or not tensors:
        return
    seen = {int(m.group(1)) for k in tensors for m in [_LAYER_RE.search(k)] if m}
    rep.facts["layers_seen"] = len(seen)
    missing = sorted(set(range(want)) - seen)
    extra = sorted(i for i in seen if i >= want)
    if missing:
        rep.findings.append(Finding(
            id="ckpt.layers-missing", severity="error",
            title=f"{len(missing)} of {want} decoder layers have no weights at all",
            seen=f"layers {_short([str(i) for i in missing], 8)} absent" + (" (their shards are missing)" if absent else ""),
            why="config.json's num_hidden_layers promises them; loading initialises them from scratch or fails.",
            fix="find the complete save; compare the shard count with model.safetensors.index.json"))
    if extra:
        rep.findings.append(Finding(
            id="ckpt.layers-extra", severity="warning",
            title="Weights for more layers than config.json's num_hidden_layers",
            seen=f"layers {_short([str(i) for i in extra], 8)} (num_hidden_layers={want})",
            why="The config and the weights come from different models or saves; the extra layers are ignored.",
            fix="use the config.json saved with these weights"))


def _hf_expectations(config: Dict[str, Any]) -> Dict[str, Any]:
    """Layers, experts per MoE layer and which layers are MoE, from a transformers config.json."""
    exp: Dict[str, Any] = {}
    layers = config.get("num_hidden_layers")
    experts = None
    for key in ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts"):
        if isinstance(config.get(key), int) and config[key] > 0:
            experts, exp["experts_key"] = config[key], key
            break
    if not isinstance(layers, int) or experts is None:
        return exp
    exp["layers"] = layers
    exp["experts"] = experts
    moe_layers = list(range(layers))
    if "first_k_dense_replace" in config or "moe_layer_freq" in config:  # DeepSeek-V2/V3
        k = int(config.get("first_k_dense_replace") or 0)
        freq = int(config.get("moe_layer_freq") or 1) or 1
        moe_layers = [i for i in range(layers) if i >= k and i % freq == 0]
    elif "decoder_sparse_step" in config or "mlp_only_layers" in config:  # Qwen2-MoE
        step = int(config.get("decoder_sparse_step") or 1) or 1
        dense = set(config.get("mlp_only_layers") or [])
        moe_layers = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    exp["moe_layers"] = moe_layers
    return exp


def _expert_findings(rep: CkptReport, found: Dict[str, ExpertCensus], expected: Dict[str, Any], source: str) -> None:
    rep.expected = {k: v for k, v in expected.items() if k != "moe_layers"}
    if expected.get("moe_layers") is not None:
        rep.expected["moe_layer_count"] = len(expected["moe_layers"])
    if not found:
        rep.layout = "dense"
        if expected.get("experts"):
            rep.findings.append(Finding(
                id="ckpt.no-experts", severity="error", title="The config asks for experts but the checkpoint has none",
                seen=f"{source}: {expected.get('experts_key', 'experts')}={expected['experts']}; no expert keys in {rep.tensors} tensors",
                why="A dense model was saved from an MoE config (e.g. MGM issue #61: the Mixtral path was routed to the Llama class and saved without experts).",
                fix="retrain or re-save with the MoE model class; for MGM, a model path whose lower-case form contains 'mixtral' and not 'mistral'",
                sources=["dvlab-research/MGM#61"]))
        return
    if len(found) > 1:
        rep.layout = "mixed"
        rep.findings.append(Finding(
            id="ckpt.mixed-layouts", severity="error", title="Expert keys in more than one layout",
            seen=", ".join(f"{LAYOUT_TITLES[c.layout]}: {c.keys} keys" for c in found.values()),
            why="No model class loads two layouts at once; the folder mixes files from different saves or converters.",
            fix="keep the files of one save only"))
    c = max(found.values(), key=lambda x: x.keys)
    if rep.layout != "mixed":
        rep.layout = c.layout
    per_layer: Dict[int, int] = {}
    if c.layout in ("xtuner-merged", "megatron-dist"):
        per_layer = dict(c.counts)
    elif c.layout != "megatron-grouped":
        per_layer = {layer: len(idx) for layer, idx in c.experts.items()}
    else:  # legacy GroupedMLP: experts are rows of weight2, ffn/TP rows each
        rows = expected.get("grouped_rows_per_expert")
        per_layer = {layer: (c.counts.get(layer, 0) // rows if rows else expected.get("experts_local", 0))
                     for layer in c.experts}
    rep.experts_per_layer = per_layer
    rep.layers_with_experts = len(c.experts) if c.experts else len(per_layer)
    want_experts = expected.get("experts_local") or expected.get("experts")
    problems: List[str] = []
    if want_experts:
        for layer, n in sorted(per_layer.items()):
            if n and n < want_experts:
                have = c.experts.get(layer)
                gone = sorted(set(range(want_experts)) - have) if have else []
                problems.append(f"layer {layer}: {n}/{want_experts}" + (f" (missing {_short([str(g) for g in gone], 6)})" if gone else ""))
    need_parts = _PARTS.get(c.layout)
    partial: List[str] = []
    if need_parts:
        for (layer, idx), parts in sorted(c.parts.items()):
            if parts != need_parts and parts < need_parts:
                partial.append(f"layer {layer} expert {idx} lacks {','.join(sorted(need_parts - parts))}")
    moe_layers = expected.get("moe_layers")
    missing_layers: List[int] = []
    if moe_layers is not None and c.layout not in ("megatron-grouped",) and per_layer:
        missing_layers = [i for i in moe_layers if i not in per_layer]
    extra_layers = sorted(set(per_layer) - set(moe_layers)) if moe_layers is not None else []
    if problems or partial or missing_layers:
        seen = []
        if missing_layers:
            seen.append(f"{len(missing_layers)} of {len(moe_layers)} MoE layers have no experts: {_short([str(i) for i in missing_layers], 8)}")
        if problems:
            seen.append(f"{len(problems)} layers short of experts: {'; '.join(problems[:4])}{' ...' if len(problems) > 4 else ''}")
        if partial:
            seen.append(f"{len(partial)} experts incomplete: {'; '.join(partial[:3])}{' ...' if len(partial) > 3 else ''}")
        rep.findings.append(Finding(
            id="ckpt.experts-missing", severity="error", title="Experts are missing from the checkpoint",
            seen=" | ".join(seen) + f" ({source} asks {want_experts} experts per MoE layer)",
            why="Loading fills missing experts with fresh weights (or fails with missing keys); a fine-tune saved this way lost part of the model.",
            fix="find the complete save (other shards, other ranks); re-run the save with consolidated weights"))
    if extra_layers and moe_layers is not None:
        rep.findings.append(Finding(
            id="ckpt.unexpected-moe-layers", severity="warning", title="Expert keys in layers the config calls dense",
            seen=f"layers {_short([str(i) for i in extra_layers], 8)}",
            why="first_k_dense_replace / moe_layer_freq / mlp_only_layers in config.json disagree with the weights; the model class will ignore or reject them.",
            fix="use the config.json that was saved with these weights"))


# ------------------------------------------------------------------ Megatron


_RANK_RE = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")


def _iter_of(name: str) -> Optional[int]:
    m = re.match(r"^iter_(\d+)$", name)
    return int(m.group(1)) if m else None


def _megatron_root(root: Path, matrix: Any) -> CkptReport:
    tracker = root / "latest_checkpointed_iteration.txt"
    note = None
    if tracker.is_file():
        text = tracker.read_text(encoding="utf-8", errors="replace").strip()
        if text == "release":
            sub, iteration = root / "release", None
        elif text.isdigit():
            iteration = int(text)
            sub = root / f"iter_{iteration:07d}"
        else:
            raise UsageError(f"{tracker}: expected an iteration number or 'release', got {text[:40]!r}")
    else:
        iters = sorted((p for p in root.glob("iter_*") if p.is_dir()), key=lambda p: _iter_of(p.name) or -1)
        sub, iteration = iters[-1], _iter_of(iters[-1].name)
        note = f"no latest_checkpointed_iteration.txt; inspected the newest folder, {sub.name}"
    if not sub.is_dir():
        rep = CkptReport(path=str(root), format="megatron-legacy")
        rep.facts["iteration"] = iteration
        rep.findings.append(Finding(
            id="ckpt.iteration-missing", severity="error", title=f"The tracker names {sub.name}, which is absent",
            seen=f"{tracker}: {tracker.read_text(errors='replace').strip()}; no folder {sub}",
            why="Megatron's --load reads the tracker and fails when the folder it names is gone.",
            fix=f"copy {sub.name}/ back, or write the iteration you have into {tracker.name}"))
        return rep
    if (sub / "metadata.json").is_file() or (sub / ".metadata").is_file():
        rep = _torch_dist(sub, matrix)
    else:
        rep = _megatron_iter(sub, matrix, iteration)
    rep.path = str(root)
    if note:
        rep.facts["note"] = note
    return rep


def _megatron_iter(folder: Path, matrix: Any, iteration: Optional[int]) -> CkptReport:
    rep = CkptReport(path=str(folder), format="megatron-legacy")
    rep.facts["iteration"] = iteration
    ranks: Dict[Tuple[int, int, int], Path] = {}
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("mp_rank_"))
    shapes = set()
    for name in names:
        m = _RANK_RE.match(name)
        if not m:
            continue
        parts = [g for g in m.groups() if g is not None]
        shapes.add(len(parts))
        ranks[tuple(int(x) for x in (parts + ["0", "0"])[:3])] = folder / name  # type: ignore[index]
    if not ranks:
        raise UsageError(f"{folder}: no mp_rank_* folders")
    tp = max(r[0] for r in ranks) + 1
    b = max(r[1] for r in ranks) + 1
    c = max(r[2] for r in ranks) + 1
    all_tensors: Dict[Tuple[int, int, int], Dict[str, TensorInfo]] = {}
    args: Optional[Record] = None
    missing_files = []
    for rank, rdir in sorted(ranks.items()):
        f = rdir / "model_optim_rng.pt"
        if not f.is_file():
            missing_files.append(str(f.relative_to(folder)))
            continue
        obj, err = _load_pt(f, rep)
        if obj is None:
            continue
        if args is None and isinstance(obj, dict) and isinstance(obj.get("args"), Record):
            args = obj["args"]
        all_tensors[rank] = _model_tensors(obj)
    a = args.state if args is not None and isinstance(args.state, dict) else {}
    pp = int(a.get("pipeline_model_parallel_size") or 1)
    ep = int(a.get("expert_model_parallel_size") or 1)
    # mp_rank_TT_PPP_EEE; with two numbers the second is PP if PP>1 else EP
    if a:
        want_tp = int(a.get("tensor_model_parallel_size") or 1)
        expected_grid = {(t, p_, e) for t in range(want_tp) for p_ in range(pp) for e in range(ep)}
        norm = {}
        for rank, path in ranks.items():
            t, x, y = rank
            if pp > 1 and ep > 1:
                norm[(t, x, y)] = path
            elif pp > 1:
                norm[(t, x, 0)] = path
            else:
                norm[(t, 0, x)] = path
        absent = sorted(expected_grid - set(norm))
        if absent:
            rep.findings.append(Finding(
                id="ckpt.ranks-missing", severity="error",
                title=f"{len(absent)} of {len(expected_grid)} model-parallel rank folders are absent",
                seen=f"TP={want_tp} PP={pp} EP={ep} from the saved args; absent (tp,pp,ep): {_short([str(r) for r in absent], 6)}",
                why="A legacy checkpoint needs every rank's file for the same TP/PP/EP layout.",
                fix="copy the missing mp_rank_* folders from the save location"))
        tp = want_tp
    rep.facts.update({"tp": tp, "pp": pp, "ep": ep, "rank_folders": len(ranks)})
    if missing_files:
        rep.findings.append(Finding(
            id="ckpt.rank-file-missing", severity="error", title=f"{len(missing_files)} rank folders lack model_optim_rng.pt",
            seen=_short(missing_files), why="Each rank loads its own file; a missing one stops every rank.",
            fix="copy the files again; an interrupted save leaves empty rank folders"))
    if a:
        for key in ("num_layers", "num_experts", "moe_grouped_gemm", "transformer_impl", "ckpt_format",
                    "moe_use_legacy_grouped_gemm", "hidden_size", "ffn_hidden_size", "moe_ffn_hidden_size"):
            if key in a:
                rep.facts[key] = a[key]
    # tensors of one (tp, ep) column across pipeline stages; layers are local to the stage
    merged: Dict[str, TensorInfo] = {}
    layers_per_stage = int(a.get("num_layers") or 0) // pp if a.get("num_layers") else 0
    per_ep: Dict[int, Dict[str, ExpertCensus]] = {}
    for rank, tensors in all_tensors.items():
        if rank[0] != 0:
            continue
        stage = rank[1] if pp > 1 else 0
        e_rank = rank[2] if (pp > 1 and ep > 1) else (rank[1] if ep > 1 and pp == 1 else 0)
        offset = stage * layers_per_stage
        cen = census(tensors, offset)
        bucket = per_ep.setdefault(e_rank, {})
        for lid, cc in cen.items():
            acc = bucket.setdefault(lid, ExpertCensus(lid))
            acc.keys += cc.keys
            for layer, idx in cc.experts.items():
                acc.experts.setdefault(layer, set()).update(idx)
            acc.parts.update(cc.parts)
            acc.counts.update(cc.counts)
        if not merged:
            merged = tensors
    rep.tensors = sum(len(t) for t in all_tensors.values())
    expected: Dict[str, Any] = {}
    if a.get("num_experts"):
        expected["experts"] = int(a["num_experts"])
        expected["experts_local"] = int(a["num_experts"]) // ep
        expected["experts_key"] = "args.num_experts"
    if a.get("num_layers"):
        expected["layers"] = int(a["num_layers"])
        expected["moe_layers"] = list(range(int(a["num_layers"])))
    ffn = a.get("moe_ffn_hidden_size") or a.get("ffn_hidden_size")
    if ffn:
        expected["grouped_rows_per_expert"] = max(1, int(ffn) // max(1, tp))
    first = per_ep.get(0) or {}
    if not first and per_ep:
        first = next(iter(per_ep.values()))
    source = "the saved args" if a else "the checkpoint"
    _expert_findings(rep, first, expected, source=source)
    for e_rank, cen in sorted(per_ep.items()):
        if e_rank == 0 or not cen:
            continue
        other = CkptReport(path=rep.path, format=rep.format)
        _expert_findings(other, cen, expected, source=source)
        for f in other.findings:
            if f.id == "ckpt.experts-missing":
                f.seen = f"expert-parallel rank {e_rank}: {f.seen}"
                rep.findings.append(f)
    rep.expected.pop("grouped_rows_per_expert", None)
    if rep.layout.startswith("megatron-"):
        _layout_advice(rep, matrix)
    return rep


def _model_tensors(obj: Any) -> Dict[str, TensorInfo]:
    if not isinstance(obj, dict):
        return flatten_tensors(obj)
    out: Dict[str, TensorInfo] = {}
    for k, v in obj.items():
        if k == "model" or (isinstance(k, str) and re.match(r"^model\d+$", k)):
            out.update(flatten_tensors(v))
    if not out and all(isinstance(v, TensorInfo) for v in obj.values()):
        out = flatten_tensors(obj)  # a bare state dict
    return out


def _load_pt(f: Path, rep: CkptReport) -> Tuple[Any, Optional[str]]:
    try:
        return read_torch_file(str(f)).obj, None
    except UnsafePickleError as exc:
        rep.findings.append(Finding(
            id="ckpt.unsafe-pickle", severity="error", title=f"{f.name} holds code, not just tensors: refused",
            seen=f"{f}: {exc}",
            why="Loading it with torch.load(weights_only=False) would run that code. moe-env read it without executing anything.",
            fix="do not load this file; get the checkpoint from a trusted source"))
        return None, str(exc)
    except (PickleFormatError, OSError) as exc:
        rep.findings.append(Finding(
            id="ckpt.unreadable", severity="error", title=f"{f.name} is unreadable",
            seen=f"{f}: {exc}", why="torch.load will fail on it too (truncated copy or a different format).",
            fix="copy the file again from the save location"))
        return None, str(exc)


def _torch_file(f: Path, matrix: Any) -> CkptReport:
    rep = CkptReport(path=str(f), format="torch-file")
    obj, err = _load_pt(f, rep)
    if obj is None:
        return rep
    tensors = _model_tensors(obj)
    rep.tensors = len(tensors)
    a = obj.get("args").state if isinstance(obj, dict) and isinstance(obj.get("args"), Record) else {}
    a = a if isinstance(a, dict) else {}
    expected: Dict[str, Any] = {}
    if a.get("num_experts"):
        ep = int(a.get("expert_model_parallel_size") or 1)
        expected = {"experts": int(a["num_experts"]), "experts_local": int(a["num_experts"]) // ep,
                    "experts_key": "args.num_experts"}
        rep.format = "megatron-legacy"
        for key in ("num_layers", "num_experts", "moe_grouped_gemm", "transformer_impl", "expert_model_parallel_size"):
            if key in a:
                rep.facts[key] = a[key]
    if isinstance(obj, dict) and "iteration" in obj:
        rep.facts["iteration"] = obj.get("iteration")
    _expert_findings(rep, census(tensors), expected, source="the saved args" if a else "the checkpoint")
    if rep.layout.startswith("megatron-"):
        _layout_advice(rep, matrix)
    return rep


def _torch_dist(folder: Path, matrix: Any) -> CkptReport:
    rep = CkptReport(path=str(folder), format="megatron-torch-dist")
    meta_json = folder / "metadata.json"
    if meta_json.is_file():
        try:
            rep.facts["metadata"] = json.loads(meta_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            rep.findings.append(Finding(
                id="ckpt.metadata-unreadable", severity="error", title="metadata.json is not valid JSON",
                seen=f"{meta_json}: {exc}", why="Megatron decides the checkpoint format from this file.",
                fix="copy it again from the save location"))
    tensors: Dict[str, TensorInfo] = {}
    dot = folder / ".metadata"
    if dot.is_file():
        try:
            md = restricted_loads(dot.read_bytes(), persistent=False)
            tensors, files = _dcp_tensors(md)
            absent = sorted(f for f in files if not (folder / f).is_file())
            rep.shards = len(files)
            if absent:
                rep.findings.append(Finding(
                    id="ckpt.shards-missing", severity="error",
                    title=f"{len(absent)} of {len(files)} .distcp files named by .metadata are absent",
                    seen=f"absent: {_short(absent)}",
                    why="torch.distributed.checkpoint reads every file the metadata names; a partial copy fails to load.",
                    fix="copy the missing __*.distcp files"))
        except UnsafePickleError as exc:
            rep.findings.append(Finding(
                id="ckpt.unsafe-pickle", severity="error", title=".metadata holds code, not just metadata: refused",
                seen=f"{dot}: {exc}", why="Loading it would run that code; moe-env executed nothing.",
                fix="do not load this checkpoint; get it from a trusted source"))
        except PickleFormatError as exc:
            rep.findings.append(Finding(
                id="ckpt.unreadable", severity="error", title=".metadata is unreadable",
                seen=f"{dot}: {exc}", why="torch.distributed.checkpoint will fail on it too.",
                fix="copy it again from the save location"))
    else:
        rep.findings.append(Finding(
            id="ckpt.metadata-missing", severity="error", title="No .metadata in the torch_dist folder",
            seen=f"{folder}: .metadata absent", why="The tensor index of a torch_dist checkpoint lives in .metadata; without it nothing loads.",
            fix="copy the whole iter_* folder again"))
    rep.tensors = len(tensors)
    if (folder / "common.pt").is_file():
        rep.facts["common_pt"] = True
    _expert_findings(rep, census(tensors), {}, source="the checkpoint")
    if rep.layout.startswith("megatron-"):
        _layout_advice(rep, matrix)
    return rep


def _dcp_tensors(md: Any) -> Tuple[Dict[str, TensorInfo], Set[str]]:
    out: Dict[str, TensorInfo] = {}
    files: Set[str] = set()
    if not isinstance(md, Record):
        return out, files
    sdm = md.get("state_dict_metadata") or {}
    for key, entry in (sdm.items() if isinstance(sdm, dict) else []):
        if isinstance(entry, Record) and entry.cls.endswith("TensorStorageMetadata"):
            size = entry.get("size") or ()
            props = entry.get("properties")
            dtype = "?"
            if isinstance(props, Record) and isinstance(props.state, tuple) and props.state:
                dtype = str(props.state[0]).replace("torch.", "")
            elif isinstance(props, Record) and isinstance(props.state, dict):
                dtype = str(props.state.get("dtype", "?")).replace("torch.", "")
            out[str(key)] = TensorInfo(dtype, tuple(int(s) for s in size))
    storage = md.get("storage_data") or {}
    if isinstance(storage, dict):
        for v in storage.values():
            if isinstance(v, Record) and isinstance(v.get("relative_path"), str):
                files.add(v.get("relative_path"))
    return out, files


def _layout_advice(rep: CkptReport, matrix: Any) -> None:
    """What loads this layout: the `expert_layout` rules of every project that describes it."""
    for project, rule in layout_rules(matrix).get(rep.layout, []):
        params = rule.params
        if params.get("loads_with"):
            rep.facts.setdefault("loads_with", {})[project] = params["loads_with"]
        rep.findings.append(Finding(
            id=f"{project}.{rule.id}", severity="info", title=rule.title,
            seen=f"{LAYOUT_TITLES.get(rep.layout, rep.layout)}; format {rep.format}",
            why=rule.why + (" " + params["loads_with"] if params.get("loads_with") else ""),
            fix=rule.fix, sources=list(rule.source)))


def layout_rules(matrix: Any) -> Dict[str, List[Tuple[str, Any]]]:
    """`expert_layout` rules of all projects by layout id ({} when the matrix has none or fails to load)."""
    if matrix is None:
        try:
            from moe_env.matrix.loader import load_matrix

            matrix = load_matrix()
        except Exception:  # a broken matrix must not stop a checkpoint inspection
            return {}
    out: Dict[str, List[Tuple[str, Any]]] = {}
    for project in sorted(matrix.projects.values(), key=lambda p: p.name):
        for r in project.rules:
            if r.kind == "expert_layout" and isinstance(r.params.get("layout"), str):
                out.setdefault(r.params["layout"], []).append((project.name, r))
    return out


def _short(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    head = ", ".join(items[:n])
    return head + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
