"""Hugging Face weight folders: config.json, the index (model.safetensors.index.json or
pytorch_model.bin.index.json) and every shard it names, judged as one save.

A .safetensors shard is read as far as its header (8-byte little-endian length + JSON); a .bin shard
through the restricted unpickler (data.pkl only). Every name the index gives is resolved inside the
folder (moe_env.ckpt.files), so an index cannot make moe-env open /etc/passwd or /proc/self/mem.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from moe_env.ckpt import files as F
from moe_env.ckpt._untrusted import UntrustedInput, json_loads
from moe_env.ckpt.layouts import census, expert_findings, hf_expectations, layer_findings, layout_advice
from moe_env.ckpt.report import CkptReport, brief, plural, short
from moe_env.ckpt.torchfile import read_pt, model_tensors
from moe_env.ckpt_pickle import TensorInfo
from moe_env.errors import UsageError

MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its header at 100 MB as well
MAX_OFFSET = 1 << 50
SAFE_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SAFE_SINGLE, BIN_SINGLE = "model.safetensors", "pytorch_model.bin"
DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64",
          "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}


def read_safetensors_header(path: Path) -> Tuple[Dict[str, TensorInfo], Optional[str]]:
    """Tensors named in a .safetensors header, and what is wrong with the file if anything.
    `path` must already be a regular file inside the checkpoint (files.check)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return {}, "shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:  # never echo those 8 bytes: they are text or data, not a length
                return {}, "the first 8 bytes are not a header length: not a safetensors file"
            if n + 8 > size:
                return {}, f"header length {n} does not fit a {size}-byte file (truncated copy)"
            header = json_loads(fh.read(n), what="safetensors header", max_depth=16)
    except OSError as exc:
        return {}, f"unreadable ({exc.strerror or type(exc).__name__})"
    except UntrustedInput as exc:
        return {}, f"unreadable header ({exc})"
    if not isinstance(header, dict):
        return {}, "header is not a JSON object"
    out: Dict[str, TensorInfo] = {}
    end = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(meta, dict):
            return out, f"header entry {key[:80]!r} is not an object"
        shape, offs, dtype = meta.get("shape"), meta.get("data_offsets"), meta.get("dtype")
        if not isinstance(shape, list) or len(shape) > 32 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_OFFSET for s in shape):
            return out, f"header entry {key[:80]!r} has a shape that is not a list of sizes"
        if not (isinstance(offs, list) and len(offs) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) and 0 <= o < MAX_OFFSET for o in offs) and offs[0] <= offs[1]):
            return out, f"header entry {key[:80]!r} has data_offsets that are not two ordered byte offsets"
        out[key] = TensorInfo(dtype if isinstance(dtype, str) and dtype in DTYPES else "?", tuple(shape))
        end = max(end, offs[1])
    if 8 + n + end > size:
        return out, f"data ends at byte {8 + n + end} but the file has {size} bytes (truncated copy)"
    return out, None


def read_config(folder: Path, rep: CkptReport, required: bool) -> Dict[str, Any]:
    """config.json as a dict ({} when absent); a damaged one is a finding, not a crash."""
    fc = F.check(folder, "config.json")
    if fc.state == F.MISSING:
        if required:
            rep.add(id="ckpt.no-config", severity="warning", title="No config.json beside the weights",
                    seen=f"{folder}: config.json missing",
                    why="Without config.json the layer and expert counts cannot be checked, and from_pretrained cannot load the folder.",
                    fix="copy config.json from the base model or the training output")
        return {}
    if not fc.usable:
        comp = F.Completeness(folder, {"config.json": fc})
        F.report_files(rep, comp)
        return {}
    try:
        config = json_loads(fc.path.read_bytes(), what="config.json") if fc.size <= 16 << 20 else None
    except (OSError, UntrustedInput) as exc:
        config = None
        detail = str(exc)
    else:
        detail = "larger than 16 MiB" if config is None else "not a JSON object"
    if not isinstance(config, dict):
        rep.add(id="ckpt.config-unreadable", severity="error", title="config.json is not a valid model config",
                seen=f"config.json: {detail}",
                why="from_pretrained reads config.json first and stops on it; the layer and expert checks were skipped.",
                fix="copy config.json again from the base model or the training output")
        return {}
    return config


def has_weights(folder: Path) -> bool:
    return any((folder / n).exists() or (folder / n).is_symlink() for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))


def hf_folder(folder: Path, only: Optional[Path] = None, matrix: Any = None) -> CkptReport:
    rep = CkptReport(path=str(only or folder), format="hf-safetensors", loader="transformers")
    config = read_config(folder, rep, required=only is None)
    hf_weights(folder, rep, config, only=only)
    return rep


def hf_weights(folder: Path, rep: CkptReport, config: Dict[str, Any], only: Optional[Path] = None) -> Dict[str, TensorInfo]:
    """The weights of a Hugging Face folder: every shard named by the index, headers read, findings added."""
    if only is not None:
        index_name, single = None, only.name
    elif (folder / SAFE_INDEX).exists() or (folder / SAFE_SINGLE).exists():
        index_name, single = SAFE_INDEX, SAFE_SINGLE
    else:
        index_name, single = BIN_INDEX, BIN_SINGLE
        rep.format = "hf-bin" if rep.format == "hf-safetensors" else rep.format
    weight_map: Dict[str, str] = {}
    if index_name and (folder / index_name).exists():
        weight_map = read_index(folder, index_name)
    shard_names = sorted(set(weight_map.values()), key=F.natural) if weight_map else [single]
    rep.shards = len(shard_names)
    comp = F.Completeness(folder)
    tensors: Dict[str, TensorInfo] = {}
    by_shard: Dict[str, Dict[str, TensorInfo]] = {}
    for name in shard_names:
        fc = comp.want(name)
        if not fc.usable:
            continue
        if name.endswith(".safetensors"):
            found, err = read_safetensors_header(fc.path)
        else:
            obj, err = read_pt(fc)
            found = model_tensors(obj) if err is None else {}
        if err:
            comp.mark(name, F.UNSAFE if err.startswith("refused") else F.DAMAGED, err)
            continue
        by_shard[name] = found
        tensors.update(found)
    bad = comp.bad
    F.report_files(rep, comp, what="shards",
                   missing_why="from_pretrained fails on the first absent file; a save that wrote only some shards lost those weights.",
                   missing_fix="copy the missing files; if training wrote them, check the save step (ZeRO-3 consolidation, disk space)")
    for f in rep.findings:
        if f.id == "ckpt.files-missing":
            f.id = "ckpt.shards-missing"
            gone = {c.rel for c in comp.state(F.MISSING)}
            held = sum(1 for v in weight_map.values() if v in gone)
            if held:
                f.seen += f" ({plural(held, 'tensor')})"
        elif f.id == "ckpt.file-damaged":
            f.id = "ckpt.shard-damaged"
    if weight_map:
        missing = [k for k, shard in weight_map.items() if shard in by_shard and k not in by_shard[shard]]
        if missing:
            rep.add(id="ckpt.tensors-missing", severity="error",
                    title=f"{plural(len(missing), 'tensor')} listed in the index {'is' if len(missing) == 1 else 'are'} not in {'its' if len(missing) == 1 else 'their'} shard",
                    seen=f"e.g. {short(missing)}",
                    why="The index and the shards disagree: the shards were rewritten or mixed from two saves.",
                    fix="re-save the model, or rebuild the index from the shards' headers")
    rep.tensors = len(tensors)
    rep.facts["model_type"] = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    if bad:
        # one damaged or missing shard is one error: the layer and expert counts would only repeat it
        rep.facts.setdefault("skipped", []).append(
            f"layer and expert checks skipped: {plural(len(bad), 'shard')} missing or unreadable")
        if tensors:
            cen = census(tensors)
            if cen:
                rep.layout = max(cen.values(), key=lambda x: x.keys).layout
        return tensors
    expected = hf_expectations(config)
    layer_findings(rep, tensors, config.get("num_hidden_layers"), [])
    expert_findings(rep, census(tensors), expected, source="config.json")
    xtuner_notes(rep, config)
    return tensors


def read_index(folder: Path, name: str) -> Dict[str, str]:
    fc = F.check(folder, name)
    if not fc.usable:
        raise UsageError(f"{folder / name}: {fc.detail or fc.state}")
    if fc.size > 256 << 20:
        raise UsageError(f"{folder / name}: larger than 256 MiB, not a weight index")
    try:
        index = json_loads(fc.path.read_bytes(), what=name, max_depth=16)
    except (OSError, UntrustedInput) as exc:
        raise UsageError(f"{folder / name}: not a valid weight index ({exc})") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise UsageError(f"{folder / name}: weight_map is missing or empty")
    bad = [k for k, v in wm.items() if not isinstance(v, str)]
    if bad:
        raise UsageError(f"{folder / name}: weight_map values must be file names ({plural(len(bad), 'entry', 'entries')} are not)")
    return wm


def xtuner_notes(rep: CkptReport, config: Dict[str, Any]) -> None:
    # XTuner builds its shard-MoE block only when moe_implementation == 'shard'; 'origin' (the default)
    # builds per-expert modules, and expert_in_one_shard (default None, saved in every XTuner config.json)
    # is read only by the shard block. So the value of moe_implementation decides, not the key's presence:
    # InternLM/xtuner@v0.1.23:xtuner/model/transformers_models/deepseek_v2/modeling_deepseek.py:1287-1293,
    # .../mixtral/modeling_mixtral.py:1030-1036, .../deepseek_v2/configuration_deepseek.py:166-167 and
    # xtuner/engine/hooks/hf_checkpoint_hook.py:27-30 (_use_shard_moe: getattr(..., 'origin') == 'shard').
    if config.get("moe_implementation") == "shard":
        rep.add(
            id="ckpt.xtuner-shard-config", severity="warning",
            title="config.json still asks for XTuner's shard MoE",
            seen=f"moe_implementation='shard', expert_in_one_shard={brief(config.get('expert_in_one_shard'))}",
            why="XTuner's model classes build merged expert shards (experts.S.w1w3) from this config, while Hugging Face "
                "loaders and inference engines expect per-expert weights; shard MoE is a training-time format. "
                "XTuner's HFCheckpointHook un-merges the weights of hf_model/ but saves the training config as it is.",
            fix="set \"moe_implementation\": \"origin\" in config.json for inference and conversion, or load with "
                "XTuner's from_pretrained(..., moe_implementation='shard'), which merges per-expert weights while loading",
            sources=[
                "InternLM/xtuner@v0.1.23:xtuner/model/transformers_models/deepseek_v2/modeling_deepseek.py:1287-1293",
                "InternLM/xtuner@v0.1.23:xtuner/model/transformers_models/deepseek_v2/modeling_deepseek.py:1443-1451 from_pretrained",
                "InternLM/xtuner@v0.1.23:xtuner/engine/hooks/hf_checkpoint_hook.py:27-30,64-69",
            ])
    layout_advice(rep, None)
    if rep.layout == "xtuner-merged":
        rep.loader = "xtuner"
        rep.add(
            id="ckpt.xtuner-merged-layout", severity="warning",
            title="Experts are in XTuner's merged layout (experts.S.w1w3)",
            seen="keys like ...experts.0.w1w3 hold several experts each",
            why="Only XTuner's shard-MoE model loads these keys; transformers, vLLM and the Megatron converter expect experts.N.{gate,up,down}_proj / w1,w2,w3.",
            fix="use the hf_model/ folder written by XTuner's HFCheckpointHook, which calls get_origin_state_dict to split the shards back into per-expert keys",
            sources=["InternLM/xtuner@94a4fcb0f53d63ceb85334bb456c073251669ccb:xtuner/utils/handle_moe_load_and_save.py:56"])
