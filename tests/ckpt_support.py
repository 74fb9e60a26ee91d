"""Builders of tiny checkpoints with real key names, for tests of `moe-env ckpt`.

Safetensors files are written byte by byte (8-byte little-endian header length, JSON header, zero
data). torch.save archives are built by hand when torch is absent: a zip holding `archive/data.pkl`
(protocol 2) whose globals (`torch._utils._rebuild_tensor_v2`, `torch.BFloat16Storage`...) are written
as GLOBAL opcodes by a pure-Python pickler, so torch is never needed to make them.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}


def write_safetensors(path: Path, tensors: Dict[str, Tuple[str, Tuple[int, ...]]], truncate: int = 0) -> None:
    header = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = DTYPE_BYTES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * offset
    if truncate:
        data = data[:-truncate]
    path.write_bytes(data)


def write_hf_folder(folder: Path, config: dict, shards: List[Dict[str, Tuple[str, Tuple[int, ...]]]],
                    drop_shards: Iterable[int] = (), index_extra: Optional[Dict[str, int]] = None) -> None:
    """A sharded safetensors folder; `drop_shards` are named in the index but not written;
    `index_extra` adds index entries (name -> shard number) that the shard does not hold."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    n = len(shards)
    weight_map = {}
    for i, tensors in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        for k in tensors:
            weight_map[k] = fname
        if i not in set(drop_shards):
            write_safetensors(folder / fname, tensors)
    for k, i in (index_extra or {}).items():
        weight_map[k] = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def mixtral_tensors(layers: int, experts: int, h: int = 4, f: int = 8, skip: Iterable[Tuple[int, int]] = ()):
    t = {"model.embed_tokens.weight": ("BF16", (16, h)), "model.norm.weight": ("BF16", (h,)), "lm_head.weight": ("BF16", (16, h))}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        t[f"{p}.self_attn.q_proj.weight"] = ("BF16", (h, h))
        t[f"{p}.block_sparse_moe.gate.weight"] = ("BF16", (experts, h))
        for e in range(experts):
            if (layer, e) in set(skip):
                continue
            t[f"{p}.block_sparse_moe.experts.{e}.w1.weight"] = ("BF16", (f, h))
            t[f"{p}.block_sparse_moe.experts.{e}.w3.weight"] = ("BF16", (f, h))
            t[f"{p}.block_sparse_moe.experts.{e}.w2.weight"] = ("BF16", (h, f))
    return t


def deepseek_tensors(layers: int, experts: int, first_dense: int = 1, h: int = 4, f: int = 8):
    t = {"model.embed_tokens.weight": ("BF16", (16, h))}
    for layer in range(layers):
        p = f"model.layers.{layer}.mlp"
        if layer < first_dense:
            for n in ("gate_proj", "up_proj", "down_proj"):
                t[f"{p}.{n}.weight"] = ("BF16", (f, h))
            continue
        t[f"{p}.gate.weight"] = ("BF16", (experts, h))
        t[f"{p}.shared_experts.gate_proj.weight"] = ("BF16", (f, h))
        for e in range(experts):
            for n in ("gate_proj", "up_proj", "down_proj"):
                t[f"{p}.experts.{e}.{n}.weight"] = ("BF16", (f, h))
    return t


def split(tensors: dict, n: int) -> List[dict]:
    keys = list(tensors)
    size = -(-len(keys) // n)
    return [{k: tensors[k] for k in keys[i * size:(i + 1) * size]} for i in range(n)]


# ------------------------------------------------------------------ torch.save archives by hand


class _Global:
    """A class object standing for a global the pickle must name (module, name), written as GLOBAL."""


def hand_global(module: str, name: str) -> type:
    return type(name, (_Global,), {"_where": (module, name)})


REBUILD = hand_global("torch._utils", "_rebuild_tensor_v2")
STORAGE = {"bfloat16": hand_global("torch", "BFloat16Storage"), "float32": hand_global("torch", "FloatStorage"),
           "int64": hand_global("torch", "LongStorage")}


class FakeTensor:
    def __init__(self, shape: Tuple[int, ...], dtype: str = "bfloat16"):
        self.shape, self.dtype = tuple(shape), dtype


class _Storage:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class Inert:
    """An object pickled as GLOBAL module.name + NEWOBJ + BUILD(state), like a dataclass."""

    def __init__(self, module: str, name: str, state=None, args=()):
        self.cls = hand_global(module, name)
        self.state, self.args = state, args


class HandPickler(pickle._Pickler):  # the pure-Python pickler lets us write any GLOBAL
    def __init__(self, fh):
        super().__init__(fh, protocol=2)
        self.storages: List[_Storage] = []

    def save_global(self, obj, name=None):
        if isinstance(obj, type) and issubclass(obj, _Global):
            module, nm = obj._where
            self.write(pickle.GLOBAL + f"{module}\n{nm}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", STORAGE[obj.dtype], obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, FakeTensor):
            numel = 1
            for s in obj.shape:
                numel *= s
            st = _Storage(str(len(self.storages)), obj.dtype, numel)
            self.storages.append(st)
            stride = tuple(int(_prod(obj.shape[i + 1:])) for i in range(len(obj.shape)))
            return (REBUILD, (st, 0, obj.shape, stride, False, collections.OrderedDict()))
        if isinstance(obj, Inert):
            return (obj.cls, obj.args, obj.state)
        return NotImplemented


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def hand_pickle(obj) -> Tuple[bytes, List[_Storage]]:
    buf = io.BytesIO()
    p = HandPickler(buf)
    p.dump(obj)
    return buf.getvalue(), p.storages


def write_torch_zip(path: Path, obj, archive: str = "archive") -> None:
    """A torch.save-format zip written without torch (data.pkl protocol 2, one data/N per storage)."""
    data, storages = hand_pickle(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data)
        z.writestr(f"{archive}/byteorder", "little")
        for st in storages:
            z.writestr(f"{archive}/data/{st.key}", b"\0" * (st.numel * 2))
        z.writestr(f"{archive}/version", "3\n")


def megatron_state(layout: str, layers: int, experts_local: int, h: int = 4, f: int = 8, skip_expert: Optional[int] = None):
    """The `model` state dict of one rank in a given expert layout, with real Megatron key names."""
    sd = collections.OrderedDict()
    sd["embedding.word_embeddings.weight"] = FakeTensor((16, h))
    for layer in range(layers):
        p = f"decoder.layers.{layer}"
        sd[f"{p}.self_attention.linear_qkv.weight"] = FakeTensor((3 * h, h))
        sd[f"{p}.mlp.router.weight"] = FakeTensor((experts_local, h))
        if layout == "sequential":
            for e in range(experts_local):
                if e == skip_expert:
                    continue
                sd[f"{p}.mlp.experts.local_experts.{e}.linear_fc1.weight"] = FakeTensor((2 * f, h))
                sd[f"{p}.mlp.experts.local_experts.{e}.linear_fc2.weight"] = FakeTensor((h, f))
        elif layout == "te-grouped":
            for e in range(experts_local):
                if e == skip_expert:
                    continue
                sd[f"{p}.mlp.experts.linear_fc1.weight{e}"] = FakeTensor((2 * f, h))
                sd[f"{p}.mlp.experts.linear_fc2.weight{e}"] = FakeTensor((h, f))
        elif layout == "grouped":
            sd[f"{p}.mlp.experts.weight1"] = FakeTensor((h, experts_local * 2 * f))
            sd[f"{p}.mlp.experts.weight2"] = FakeTensor((experts_local * f, h))
    sd["decoder.final_layernorm.weight"] = FakeTensor((h,))
    return sd


def megatron_args(**kw) -> argparse.Namespace:
    base = dict(num_layers=2, num_experts=4, expert_model_parallel_size=1, tensor_model_parallel_size=1,
                pipeline_model_parallel_size=1, moe_grouped_gemm=False, transformer_impl="transformer_engine",
                hidden_size=4, ffn_hidden_size=8)
    base.update(kw)
    return argparse.Namespace(**base)


def write_megatron_legacy(root: Path, layout: str, iteration: int = 100, ep: int = 1, experts: int = 4, layers: int = 2,
                          drop_rank: Optional[int] = None, skip_expert: Optional[int] = None, **argkw) -> Path:
    """<root>/latest_checkpointed_iteration.txt + iter_XXXXXXX/mp_rank_00[_EEE]/model_optim_rng.pt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    it = root / f"iter_{iteration:07d}"
    args = megatron_args(num_layers=layers, num_experts=experts, expert_model_parallel_size=ep,
                         moe_grouped_gemm=layout != "sequential", **argkw)
    for e in range(ep):
        if e == drop_rank:
            continue
        name = "mp_rank_00" if ep == 1 else f"mp_rank_00_{e:03d}"
        obj = {"args": args, "checkpoint_version": 3.0, "iteration": iteration,
               "model": megatron_state(layout, layers, experts // ep, skip_expert=skip_expert if e == 0 else None)}
        write_torch_zip(it / name / "model_optim_rng.pt", obj)
    return root


def write_torch_dist(folder: Path, layers: int, experts: int, files: Iterable[str] = ("__0_0.distcp",),
                     write_files: bool = True) -> Path:
    """A torch_dist folder: metadata.json + a .metadata pickle of DCP dataclasses (built by hand)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                      "common_backend": "torch", "common_backend_version": 1}))
    M = "torch.distributed.checkpoint.metadata"
    sdm = {}
    storage = {}
    for key, size in (("decoder.layers.mlp.experts.experts.linear_fc1.weight", (layers, experts, 16, 4)),
                      ("decoder.layers.mlp.experts.experts.linear_fc2.weight", (layers, experts, 4, 8)),
                      ("embedding.word_embeddings.weight", (16, 4))):
        props = Inert(M, "TensorProperties", state=(hand_global("torch", "bfloat16"), None, False, None, False))
        sdm[key] = Inert(M, "TensorStorageMetadata", state={"properties": props, "size": size, "chunks": []})
        for f in files:
            storage[Inert(M, "MetadataIndex", state={"fqn": key, "offset": (0,), "index": 0})] = Inert(
                "torch.distributed.checkpoint.filesystem", "_StorageInfo",
                state={"relative_path": f, "offset": 0, "length": 1})
    md = Inert(M, "Metadata", state={"state_dict_metadata": sdm, "planner_data": None, "storage_data": storage})
    data, _ = hand_pickle(md)
    (folder / ".metadata").write_bytes(data)
    if write_files:
        for f in files:
            (folder / f).write_bytes(b"\0")
    return folder


class Hostile:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.sentinel}",))


# ------------------------------------------------------------------ DeepSpeed saves (engine.save_checkpoint's names and keys)

DS_ZERO_ENUM = ("deepspeed.runtime.zero.config", "ZeroStageEnum")


def ds_config(stage: int, bf16: bool) -> dict:
    return {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage, "overlap_comm": True},
            "bf16": {"enabled": bf16}, "fp16": {"enabled": False}}


def ds_moe_key(layer: int, expert: int, part: str) -> str:
    # MoE-LLaVA: every other decoder layer is a DeepSpeed MoE layer wrapping the LLaMA MLP
    return f"model.layers.{2 * layer + 1}.mlp.deepspeed_moe.experts.deepspeed_experts.{expert}.{part}.weight"


def write_deepspeed_save(root: Path, dp: int = 4, mp: int = 1, moe_layers: int = 2, experts: int = 4, ep: int = 2,
                         stage: int = 2, bf16: bool = True, tag: str = "global_step100", version: str = "0.16.9",
                         drop: Iterable[str] = (), latest: Optional[str] = "", script: bool = True,
                         expp: Optional[bool] = None) -> Path:
    """SAVE_DIR/latest + SAVE_DIR/TAG/ as DeepSpeed writes them (runtime/engine.py _save_moe_checkpoint,
    _save_zero_checkpoint, _get_*_ckpt_name); moe_layers=0 writes a dense save (_save_checkpoint).
    `drop` names files not to write; latest="" writes TAG, None writes no `latest`."""
    root.mkdir(parents=True, exist_ok=True)
    out = root / tag
    out.mkdir(parents=True, exist_ok=True)
    drop = set(drop)
    prefix = "bf16_" if bf16 else ""
    module = collections.OrderedDict()
    module["model.embed_tokens.weight"] = FakeTensor((16, 4))
    for layer in range(moe_layers):
        module[f"model.layers.{2 * layer + 1}.mlp.deepspeed_moe.gate.wg.weight"] = FakeTensor((experts, 4))
    if not moe_layers:
        module["model.layers.0.mlp.gate_proj.weight"] = FakeTensor((8, 4))
    for m in range(mp):
        state = {"module": module, "lr_scheduler": {"last_epoch": 100}, "data_sampler": None, "random_ltd": None,
                 "sparse_tensor_module_names": set(), "skipped_steps": 0, "global_steps": 100, "global_samples": 1600,
                 "dp_world_size": dp, "mp_world_size": mp}
        if moe_layers:
            state["num_experts"] = [experts] * moe_layers
        else:
            state.update(buffer_names=[], optimizer=None, param_shapes=[collections.OrderedDict(
                [("model.embed_tokens.weight", (16, 4))])], ds_config=ds_config(stage, bf16), ds_version=version)
        name = f"mp_rank_{m:02d}_model_states.pt"
        if name not in drop:
            write_torch_zip(out / name, state)
        for layer in range(moe_layers):
            for e in range(experts):
                name = f"layer_{layer}_expert_{e}_mp_rank_{m:02d}_model_states.pt"
                if name not in drop:
                    sd = collections.OrderedDict((ds_moe_key(layer, e, p), FakeTensor((8, 4))) for p in ("gate_proj", "up_proj", "down_proj"))
                    write_torch_zip(out / name, sd)
        if moe_layers and (expp if expp is not None else True):
            for r in range(ep):
                name = f"expp_rank_{r}_mp_rank_{m:02d}_optim_states.pt"
                if name not in drop:
                    write_torch_zip(out / name, {"optimizer": None})
        if stage >= 1 or bf16:
            for d in range(dp):
                name = f"{prefix}zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt"
                if name in drop:
                    continue
                osd = {"loss_scaler": Inert("deepspeed.runtime.fp16.loss_scaler", "LossScaler", state={"cur_scale": 1.0}),
                       "dynamic_loss_scale": False, "overflow": False, "clip_grad": 1.0,
                       "base_optimizer_state": {"state": {0: {"step": 100, "exp_avg": FakeTensor((32,), "float32")}},
                                                "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}]},
                       "single_partition_of_fp32_groups": [FakeTensor((32,), "float32")],
                       "zero_stage": Inert(*DS_ZERO_ENUM, args=(stage,)), "group_paddings": [0],
                       "partition_count": [dp, max(1, dp // ep)] if moe_layers else [dp], "ds_version": version,
                       "param_slice_mappings": [collections.OrderedDict([("model.embed_tokens.weight", Inert(
                           "deepspeed.utils.tensor_fragment", "fragment_address", state={"numel": 64, "start": 0}))])]}
                write_torch_zip(out / name, {"optimizer_state_dict": osd, "ds_config": ds_config(stage, bf16), "ds_version": version})
    if latest is not None:
        (root / "latest").write_text(latest or tag)
    if script:
        (root / "zero_to_fp32.py").write_text("# stands for the script DeepSpeed copies beside a save\n")
    return root


def write_trainer_checkpoint(folder: Path, step: int = 100, deepspeed: bool = True, world: int = 4, **dskw) -> Path:
    """checkpoint-N/ as the HF Trainer writes it (transformers 4.37 _save_checkpoint): weights + config,
    trainer_state.json, rng_state_{i}.pth, and either optimizer.pt/scheduler.pt or the DeepSpeed part."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "mixtral", "num_hidden_layers": 2, "num_local_experts": 4, "num_experts_per_tok": 2}
    (folder / "config.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "model.safetensors", mixtral_tensors(2, 4))
    (folder / "trainer_state.json").write_text(json.dumps({
        "global_step": step, "max_steps": 1000, "epoch": 0.1, "best_metric": None, "best_model_checkpoint": None,
        "log_history": [{"loss": 1.5, "step": step}], "logging_steps": 10, "save_steps": 100}))
    write_torch_zip(folder / "training_args.bin", {"output_dir": "out"})
    for i in range(world):
        write_torch_zip(folder / (f"rng_state_{i}.pth" if world > 1 else "rng_state.pth"),
                        {"python": (3, (1, 2), None), "cpu": FakeTensor((5056,), "int64")})
    if deepspeed:
        write_deepspeed_save(folder, tag=f"global_step{step}", **dskw)
    else:
        write_torch_zip(folder / "optimizer.pt", {"state": {}, "param_groups": []})
        write_torch_zip(folder / "scheduler.pt", {"last_epoch": step})
    return folder


def write_xtuner_work_dir(work: Path, it: int = 500, **dskw) -> Path:
    """work_dir/iter_N.pth/ (mmengine DeepSpeedStrategy: save_checkpoint(work_dir, tag='iter_N.pth',
    save_latest=False)) + work_dir/last_checkpoint + zero_to_fp32.py in work_dir."""
    write_deepspeed_save(work, tag=f"iter_{it}.pth", latest=None, **dskw)
    # the client_state mmengine adds to the main file
    main = work / f"iter_{it}.pth" / "mp_rank_00_model_states.pt"
    if main.exists():
        from zipfile import ZipFile

        with ZipFile(main) as z:
            pass
    (work / "last_checkpoint").write_text(str(work / f"iter_{it}.pth"))
    return work


def write_xtuner_file(path: Path, it: int = 10, experts: int = 4) -> Path:
    """A single-file iter_N.pth (mmengine Runner.save_checkpoint without DeepSpeed)."""
    sd = collections.OrderedDict()
    for layer in range(2):
        for e in range(experts):
            for w in ("w1", "w2", "w3"):
                sd[f"llm.model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"] = FakeTensor((8, 4))
    write_torch_zip(path, {"meta": {"epoch": 0, "iter": it, "seed": 42, "mmengine_version": "0.10.4"},
                           "state_dict": sd, "message_hub": {"log_scalars": {}, "runtime_info": {"iter": it}},
                           "optimizer": {"state": {}, "param_groups": []}})
    return path


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 4943162240\n")
