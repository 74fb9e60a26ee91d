"""How fast `moe-env ckpt` inspects a large sharded checkpoint: prints seconds per checkpoint.

Writes a Mixtral-8x7B-shaped safetensors folder (32 layers x 8 experts, 19 shards, every real key
name; tensors of 1 element so the files stay tiny), a Megatron legacy checkpoint with EP=8 built
by hand, and a DeepSpeed-MoE ZeRO-2 save of 8 dp ranks x 32 MoE layers x 8 experts (256 expert files,
8 ZeRO shards, 4 expp_rank files, the model-states file: 269 files), then times `inspect_checkpoint`
on each. Goal for the DeepSpeed save: well under a second. Usage: python benchmarks/ckpt_bench.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ckpt_support import mixtral_tensors, split, write_deepspeed_save, write_hf_folder, write_megatron_legacy  # noqa: E402

from moe_env.ckpt import inspect_checkpoint  # noqa: E402


def timed(label: str, path: Path, repeat: int = 5) -> None:
    start = time.perf_counter()
    for _ in range(repeat):
        report = inspect_checkpoint(str(path))
    secs = (time.perf_counter() - start) / repeat
    print(f"ckpt {label}: {report.tensors} tensors, layout {report.layout}, "
          f"{len(report.experts_per_layer)} MoE layers, {secs * 1000:.0f} ms per inspection")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tensors = {k: (d, tuple(1 for _ in s)) for k, (d, s) in mixtral_tensors(32, 8).items()}
        write_hf_folder(root / "hf", {"model_type": "mixtral", "num_hidden_layers": 32, "num_local_experts": 8},
                        split(tensors, 19))
        timed("hf-safetensors (Mixtral 8x7B keys, 19 shards)", root / "hf")
        write_megatron_legacy(root / "meg", "sequential", ep=8, experts=8, layers=32)
        timed("megatron-legacy (32 layers, EP=8, 8 rank files)", root / "meg")
        write_deepspeed_save(root / "ds", dp=8, moe_layers=32, experts=8, ep=4, stage=2, bf16=True)
        files = len(list((root / "ds" / "global_step100").iterdir()))
        timed(f"deepspeed-moe ZeRO-2 (8 dp x 32 MoE layers x 8 experts, {files} files)", root / "ds")


if __name__ == "__main__":
    main()
