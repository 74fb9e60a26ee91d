"""Expert key layouts: which MoE layout a set of tensor names has, how many experts each layer holds,
and the findings about missing experts and layers against what the config asks.

Which Megatron flags and Transformer Engine versions load a layout is matrix data: `[[rule]]`
entries of kind `expert_layout` in the megatron project (compat_matrix/rules/megatron.toml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from moe_env.ckpt._untrusted import UntrustedInput, as_int
from moe_env.ckpt.report import CkptReport, and_list, plural, short
from moe_env.ckpt_pickle import TensorInfo
from moe_env.findings import Finding

MAX_LAYERS = 4096  # more decoder layers than any model has: a number past this is damage, not a model
MAX_EXPERTS = 1 << 16

# ------------------------------------------------------------------ expert key layouts

# (layout id, regex on the key, what it is). Groups: layer, expert (or shard / None), part.
LAYOUTS: List[Tuple[str, "re.Pattern[str]", str]] = [
    ("hf-mixtral", re.compile(r"(?a)layers\.(\d{1,9})\.block_sparse_moe\.experts\.(\d{1,9})\.(w1|w2|w3)\.weight$"),
     "Hugging Face Mixtral (block_sparse_moe.experts.N.w1/w2/w3)"),
    ("hf-mlp-experts", re.compile(r"(?a)layers\.(\d{1,9})\.mlp\.experts\.(\d{1,9})\.(gate_proj|up_proj|down_proj)\.weight$"),
     "Hugging Face DeepSeek-V2 / Qwen-MoE (mlp.experts.N.gate_proj/up_proj/down_proj)"),
    ("xtuner-merged", re.compile(r"(?a)layers\.(\d{1,9})\.(?:mlp|block_sparse_moe)\.experts\.(\d{1,9})\.(w1w3|w2)$"),
     "XTuner shard-MoE merged layout (experts.S.w1w3 / experts.S.w2, several experts per tensor)"),
    ("megatron-sequential", re.compile(r"(?a)layers\.(\d{1,9})\.mlp\.experts\.local_experts\.(\d{1,9})\.linear_fc(1|2)\.weight$"),
     "Megatron SequentialMLP (mlp.experts.local_experts.N.linear_fc1/fc2)"),
    ("megatron-te-grouped", re.compile(r"(?a)layers\.(\d{1,9})\.mlp\.experts\.linear_fc(1|2)\.weight(\d{1,9})$"),
     "Megatron TEGroupedMLP (mlp.experts.linear_fc1.weightN)"),
    ("megatron-grouped", re.compile(r"(?a)layers\.(\d{1,9})\.mlp\.experts\.weight(1|2)$"),
     "Megatron legacy GroupedMLP (mlp.experts.weight1/weight2)"),
    ("megatron-dist", re.compile(r"(?a)layers\.(?:(\d{1,9})\.)?mlp\.experts\.experts\.linear_fc(1|2)\.weight$"),
     "Megatron torch_dist sharded keys (mlp.experts.experts.linear_fc1/fc2)"),
    ("deepspeed-moe", re.compile(r"(?a)layers\.(\d{1,9})\.(?:[\w.]+\.)?deepspeed_moe\.experts\.deepspeed_experts\.(\d{1,9})\.(\w{1,64})\.weight$"),
     "DeepSpeed MoE (deepspeed_moe.experts.deepspeed_experts.N.*): MoE-LLaVA and other deepspeed.moe.layer.MoE models"),
    ("megatron-switchmlp", re.compile(r"(?a)layers\.(\d{1,9})\.mlp\.local_experts\.(\d{1,9})\.linear_fc(1|2)\.weight$"),
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
                    for li in range(min(shape[0], MAX_LAYERS)):
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


def safe_int(value: Any, lo: int, hi: int) -> Optional[int]:
    """An untrusted number (config.json, pickled args) as an int within [lo, hi], or None.
    Only scalars reach as_int, whose message would repr() the value: a pickled shared-reference list
    is exponentially long as text."""
    if not isinstance(value, (int, float, str)) or (isinstance(value, str) and len(value) > 64):
        return None
    try:
        return as_int(value, lo=lo, hi=hi, what="value")
    except UntrustedInput:
        return None


def missing_experts_phrase(layer: int, have: Optional[Set[int]], n: int, want: int) -> str:
    """'layer 3: experts 5 and 7 missing of 8' (by id when the ids are known, else by count)."""
    if have:
        gone = sorted(set(range(want)) - have)
        if gone:
            return f"layer {layer}: {'expert' if len(gone) == 1 else 'experts'} {and_list(gone, 6)} missing of {want}"
    return f"layer {layer}: {plural(n, 'expert')} of {want}"


_LAYER_RE = re.compile(r"(?a)(?:^|\.)layers\.(\d{1,9})\.")


def layer_findings(rep: CkptReport, tensors: Dict[str, TensorInfo], want: Any, absent: List[str]) -> None:
    """Decoder layers with no tensor at all, or more layers than config.json's num_hidden_layers."""
    want = safe_int(want, 1, MAX_LAYERS)
    if want is None or not tensors:
        return
    seen = {int(m.group(1)) for k in tensors for m in [_LAYER_RE.search(k)] if m}
    rep.facts["layers_seen"] = len(seen)
    missing = sorted(set(range(want)) - seen)
    extra = sorted(i for i in seen if i >= want)
    if missing:
        rep.findings.append(Finding(
            id="ckpt.layers-missing", severity="error",
            title=f"{len(missing)} of {plural(want, 'decoder layer')} {'has' if len(missing) == 1 else 'have'} no weights at all",
            seen=f"{'layer' if len(missing) == 1 else 'layers'} {and_list(missing)} absent" + (" (their shards are missing)" if absent else ""),
            why="config.json's num_hidden_layers promises them; loading initialises them from scratch or fails.",
            fix="find the complete save; compare the shard count with model.safetensors.index.json"))
    if extra:
        rep.findings.append(Finding(
            id="ckpt.layers-extra", severity="warning",
            title="Weights for more layers than config.json's num_hidden_layers",
            seen=f"layers {short([str(i) for i in extra], 8)} (num_hidden_layers={want})",
            why="The config and the weights come from different models or saves; the extra layers are ignored.",
            fix="use the config.json saved with these weights"))


def hf_expectations(config: Dict[str, Any]) -> Dict[str, Any]:
    """Layers, experts per MoE layer and which layers are MoE, from a transformers config.json."""
    exp: Dict[str, Any] = {}
    layers = safe_int(config.get("num_hidden_layers"), 1, MAX_LAYERS)
    experts = None
    for key in ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts"):
        n = safe_int(config.get(key), 1, MAX_EXPERTS)
        if n is not None:
            experts, exp["experts_key"] = n, key
            break
    if layers is None or experts is None:
        return exp
    exp["layers"] = layers
    exp["experts"] = experts
    moe_layers = list(range(layers))
    if "first_k_dense_replace" in config or "moe_layer_freq" in config:  # DeepSeek-V2/V3
        k = safe_int(config.get("first_k_dense_replace") or 0, 0, MAX_LAYERS) or 0
        freq = safe_int(config.get("moe_layer_freq") or 1, 1, MAX_LAYERS) or 1
        moe_layers = [i for i in range(layers) if i >= k and i % freq == 0]
    elif "decoder_sparse_step" in config or "mlp_only_layers" in config:  # Qwen2-MoE
        step = safe_int(config.get("decoder_sparse_step") or 1, 1, MAX_LAYERS) or 1
        only = config.get("mlp_only_layers")
        dense = {i for i in only if isinstance(i, int) and not isinstance(i, bool)} if isinstance(only, list) else set()
        moe_layers = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    exp["moe_layers"] = moe_layers
    return exp


def expert_findings(rep: CkptReport, found: Dict[str, ExpertCensus], expected: Dict[str, Any], source: str) -> None:
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
                problems.append(missing_experts_phrase(layer, c.experts.get(layer), n, want_experts))
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
            seen.append(f"{len(missing_layers)} of {plural(len(moe_layers), 'MoE layer')} {'has' if len(missing_layers) == 1 else 'have'} no experts: {and_list(missing_layers)}")
        if problems:
            seen.append(f"{'; '.join(problems[:4])}{' ...' if len(problems) > 4 else ''}")
        if partial:
            seen.append(f"{plural(len(partial), 'expert')} incomplete: {'; '.join(partial[:3])}{' ...' if len(partial) > 3 else ''}")
        rep.findings.append(Finding(
            id="ckpt.experts-missing", severity="error", title="Experts are missing from the checkpoint",
            seen=" | ".join(seen) + f" ({source}: {plural(want_experts, 'expert')} per MoE layer)",
            why="Loading fills missing experts with fresh weights (or fails with missing keys); a fine-tune saved this way lost part of the model.",
            fix="find the complete save (other shards, other ranks); re-run the save with consolidated weights"))
    if extra_layers and moe_layers is not None:
        rep.findings.append(Finding(
            id="ckpt.unexpected-moe-layers", severity="warning", title="Expert keys in layers the config calls dense",
            seen=f"layers {short([str(i) for i in extra_layers], 8)}",
            why="first_k_dense_replace / moe_layer_freq / mlp_only_layers in config.json disagree with the weights; the model class will ignore or reject them.",
            fix="use the config.json that was saved with these weights"))



def layout_advice(rep: CkptReport, matrix: Any) -> None:
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


