"""`moe-env ckpt` on hostile checkpoints: nothing runs, nothing outside the checkpoint is read or echoed,
no traceback, no internal error, no hang. Every case runs the CLI in a subprocess with a timeout."""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ckpt_support import (
    Hostile,
    megatron_args,
    megatron_state,
    mixtral_tensors,
    split,
    write_deepspeed_save,
    write_hf_folder,
    write_safetensors,
    write_torch_zip,
    write_trainer_checkpoint,
    write_xtuner_file,
)
from moe_env.ckpt import inspect_checkpoint
from moe_env.ckpt_pickle import PickleFormatError, UnsafePickleError, flatten_tensors, restricted_loads

CFG = {"model_type": "mixtral", "num_hidden_layers": 3, "num_local_experts": 4}
SECRET = "root:x:0:0:SECRET-LINE-FROM-OUTSIDE:/root:/bin/bash\n" * 7


def cli(*args):
    return subprocess.run([sys.executable, "-m", "moe_env", "ckpt", *args], capture_output=True, text=True, timeout=60)


def sane(p, codes=(0, 1, 2)):
    out = p.stdout + p.stderr
    assert p.returncode in codes, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert "\x1b" not in out, out
    return out


def hostile_zip(path: Path, sentinel: Path, wrap=lambda x: x) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(wrap(Hostile(sentinel)), protocol=2))
        z.writestr("archive/version", "3\n")


# ------------------------------------------------------------------ code execution: a sentinel proves nothing ran


@pytest.mark.parametrize("where", ["ds-main", "ds-expert", "ds-zero", "hf-bin", "xtuner-file", "trainer-ds"])
def test_hostile_pickle_in_each_format_runs_nothing(tmp_path, where):
    sentinel = tmp_path / "pwned"
    if where.startswith("ds"):
        root = write_deepspeed_save(tmp_path / "save")
        name = {"ds-main": "mp_rank_00_model_states.pt", "ds-expert": "layer_1_expert_2_mp_rank_00_model_states.pt",
                "ds-zero": "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"}[where]
        hostile_zip(root / "global_step100" / name, sentinel, lambda h: {"module": {"x": h}})
        target = root
    elif where == "hf-bin":
        target = tmp_path / "hf"
        target.mkdir()
        (target / "config.json").write_text(json.dumps(CFG))
        hostile_zip(target / "pytorch_model.bin", sentinel, lambda h: {"model.embed_tokens.weight": h})
    elif where == "xtuner-file":
        target = tmp_path / "iter_5.pth"
        hostile_zip(target, sentinel, lambda h: {"meta": {"iter": 5}, "state_dict": {"x": h}})
    else:
        target = write_trainer_checkpoint(tmp_path / "checkpoint-100")
        hostile_zip(target / "global_step100" / "layer_0_expert_0_mp_rank_00_model_states.pt", sentinel)
    r = inspect_checkpoint(str(target))
    assert "ckpt.unsafe-pickle" in [f.id for f in r.findings], r.findings
    out = sane(cli(str(target)), codes=(1,))
    assert "holds code" in out and "refused" in out
    assert not sentinel.exists()


def test_python2_builtin_names_are_still_refused():
    # protocol-2 pickles name builtins as __builtin__.*; the mapping must not open a way around the allow-list
    for mod, name in (("__builtin__", "eval"), ("__builtin__", "getattr"), ("copy_reg", "_reconstructor")):
        data = b"\x80\x02c" + f"{mod}\n{name}\n".encode() + b"X\x03\x00\x00\x001+1\x85R."
        with pytest.raises(UnsafePickleError):
            restricted_loads(data)


# ------------------------------------------------------------------ reading outside the checkpoint


@pytest.mark.parametrize("entry", ["../../../../../../../etc/passwd", "/etc/passwd", "/proc/self/mem",
                                   "LINK", "FIFO", "../outside/secret.safetensors"])
def test_index_cannot_make_ckpt_read_outside(tmp_path, entry):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.safetensors"
    secret.write_text(SECRET)
    folder = tmp_path / "ckpt" / "m"
    write_hf_folder(folder, CFG, split(mixtral_tensors(3, 4), 2))
    if entry == "LINK":
        (folder / "evil.safetensors").symlink_to(secret)
        entry = "evil.safetensors"
    elif entry == "FIFO":
        os.mkfifo(folder / "pipe.safetensors")
        entry = "pipe.safetensors"
    elif entry.startswith("../outside"):
        entry = "../../outside/secret.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.q_proj.weight"] = entry
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    out = sane(cli(str(folder)), codes=(1,))
    assert "SECRET" not in out and "root:x" not in out
    assert str(len(SECRET)) not in out and "3475222254926655346" not in out
    assert "was not read" in out or "absent" in out


def test_config_json_symlinked_to_a_device_is_not_read(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, CFG, [mixtral_tensors(3, 4)])
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to("/dev/zero")
    sane(cli(str(folder)), codes=(1,))


def test_deepspeed_latest_cannot_name_a_folder_outside(tmp_path):
    root = write_deepspeed_save(tmp_path / "save")
    write_deepspeed_save(tmp_path / "elsewhere")
    (root / "latest").write_text("../elsewhere/global_step100")
    r = inspect_checkpoint(str(root))
    assert "ckpt.ds-latest-missing" in [f.id for f in r.findings]


# ------------------------------------------------------------------ numbers, structure, sizes


def test_safetensors_header_with_hostile_values(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, CFG, split(mixtral_tensors(3, 4), 2))
    bad = [
        {"a": {"dtype": "BF16", "shape": ["eight"], "data_offsets": [0, 2]}},
        {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 10 ** 30]}},
        {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 0]}},
        {"a": {"dtype": "BF16", "shape": True, "data_offsets": [0, 2]}},
    ]
    shard = folder / "model-00001-of-00002.safetensors"
    for header in bad + ["[" * 5000 + "]" * 5000, '{"a": NaN}', '{"a": ' + "9" * 5000 + "}"]:
        raw = (header if isinstance(header, str) else json.dumps(header)).encode()
        shard.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
        r = inspect_checkpoint(str(folder))
        assert [f.id for f in r.findings if f.severity == "error"] == ["ckpt.shard-damaged"], (header, r.findings)
    sane(cli(str(folder)), codes=(1,))


@pytest.mark.parametrize("config", ["[1, 2]", '"mixtral"', "null", "[" * 10000 + "]" * 10000,
                                    '{"num_hidden_layers": ' + "9" * 5000 + ', "num_local_experts": 8}',
                                    '{"num_hidden_layers": NaN, "num_local_experts": "eight"}',
                                    '{"num_hidden_layers": 1e300, "num_local_experts": 1000000000000}',
                                    '{"num_hidden_layers": 3, "first_k_dense_replace": "x", "mlp_only_layers": [[1]]}'])
def test_hostile_config_json(tmp_path, config):
    folder = tmp_path / "m"
    write_hf_folder(folder, CFG, [mixtral_tensors(3, 4)])
    (folder / "config.json").write_text(config)
    sane(cli(str(folder)))
    sane(cli(str(folder), "--json"))


def test_index_with_100k_missing_shards_is_linear(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CFG))
    wm = {f"model.layers.{i}.w": f"model-{i:06d}-of-100000.safetensors" for i in range(100000)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    out = sane(cli(str(folder)), codes=(1,))  # the 60 s subprocess timeout is the hang check
    assert "100000 of 100000 shards absent" in out


def test_megatron_hostile_args_and_tracker(tmp_path):
    for kw in ({"num_experts": "eight"}, {"expert_model_parallel_size": "0"}, {"expert_model_parallel_size": 10 ** 40},
               {"num_layers": -3}, {"tensor_model_parallel_size": [1, 2]}):
        root = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        obj = {"args": megatron_args(**kw), "model": megatron_state("sequential", 2, 4), "iteration": "\x1b]0;pwn\x07"}
        write_torch_zip(root / "iter_0000005" / "mp_rank_00" / "model_optim_rng.pt", obj)
        (root / "latest_checkpointed_iteration.txt").write_text("5")
        sane(cli(str(root)))
        sane(cli(str(root), "--json"))
    (root / "latest_checkpointed_iteration.txt").write_text("\u00b2")  # a digit to isdigit(), not to int()
    p = cli(str(root))
    assert p.returncode == 2 and p.stderr.startswith("moe-env: error:")


def test_iter_entries_that_are_files_or_symlink_loops(tmp_path):
    root = tmp_path / "meg"
    root.mkdir()
    (root / "iter_0000010").write_text("not a folder")
    (root / "iter_0000020").symlink_to(root / "iter_0000020")
    sane(cli(str(root)), codes=(2,))
    write_torch_zip(root / "iter_0000005" / "mp_rank_00" / "model_optim_rng.pt",
                    {"args": megatron_args(), "model": megatron_state("sequential", 2, 4), "iteration": 5})
    r = inspect_checkpoint(str(root))
    assert r.facts["iteration"] == 5


def _zip_with_pkl(path: Path, payload: bytes, method=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("archive/data.pkl", payload)


def _patch_central(path: Path, offset: int, value: bytes) -> None:
    raw = bytearray(path.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + offset: cd + offset + len(value)] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["bomb", "declared-huge", "lzma", "encrypted", "unknown-method", "corrupt-deflate", "truncated"])
def test_zip_damage_inside_a_pt(tmp_path, damage):
    pt = tmp_path / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    pt.parent.mkdir(parents=True)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("1")
    small = pickle.dumps({"model": {}}, protocol=2)
    if damage == "bomb":
        _zip_with_pkl(pt, b"\x80\x02" + b"\0" * (65 << 20), zipfile.ZIP_DEFLATED)  # 65 MiB of zeros in ~65 KB
    elif damage == "declared-huge":
        _zip_with_pkl(pt, small, zipfile.ZIP_DEFLATED)
        _patch_central(pt, 24, struct.pack("<I", 0xFFFFFFF0))  # uncompressed size
    elif damage == "lzma":
        _zip_with_pkl(pt, small, zipfile.ZIP_LZMA)
    elif damage == "encrypted":
        _zip_with_pkl(pt, small)
        _patch_central(pt, 8, struct.pack("<H", 1))  # general purpose flag: encrypted
    elif damage == "unknown-method":
        _zip_with_pkl(pt, small)
        _patch_central(pt, 10, struct.pack("<H", 99))
    elif damage == "corrupt-deflate":
        _zip_with_pkl(pt, small * 50, zipfile.ZIP_DEFLATED)
        raw = bytearray(pt.read_bytes())
        for i in range(40, 90):
            raw[i] ^= 0x5A
        pt.write_bytes(bytes(raw))
    else:
        write_torch_zip(pt, {"model": megatron_state("sequential", 2, 4)})
        pt.write_bytes(pt.read_bytes()[:-200])
    r = inspect_checkpoint(str(tmp_path))
    assert [f.id for f in r.findings if f.severity == "error"] == ["ckpt.file-damaged"], r.findings
    sane(cli(str(tmp_path)), codes=(1,))


def test_pickle_memo_and_dag_bombs_end_quickly(tmp_path):
    with pytest.raises(PickleFormatError):
        restricted_loads(b"\x80\x02]r\xff\xff\xff\xff.")  # LONG_BINPUT 4294967295: a 64 GiB memo
    t = (1,)
    for _ in range(64):
        t = (t, t)
    with pytest.raises(PickleFormatError):
        # {t: 1} written opcode by opcode (building it here would hash t): hashing it walks 2**64 paths
        restricted_loads(b"\x80\x02}" + pickle.dumps(t, protocol=2)[2:-1] + b"K\x01s.")
    lst: list = ["x"]
    for _ in range(64):
        lst = [lst, lst]
    obj = restricted_loads(pickle.dumps({"model": lst}, protocol=2))
    assert flatten_tensors(obj) == {}  # each list walked once
    me: list = []
    me.append(me)
    for payload in ({"model": lst, "iteration": me, "args": None}, {"model": me, "iteration": lst}):
        root = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        write_torch_zip(root / "iter_0000003" / "mp_rank_00" / "model_optim_rng.pt", payload)
        (root / "latest_checkpointed_iteration.txt").write_text("3")
        sane(cli(str(root), "--json"))
    ds = write_deepspeed_save(tmp_path / "ds")
    write_torch_zip(ds / "global_step100" / "mp_rank_00_model_states.pt",
                    {"module": {"a": lst}, "dp_world_size": lst, "mp_world_size": me, "num_experts": [lst, me]})
    out = sane(cli(str(ds)), codes=(1,))
    assert "list of" in out


def test_names_from_the_checkpoint_are_printed_escaped(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder, CFG, split(mixtral_tensors(3, 4), 2))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["\x1b[31mevil"] = "\x1b]0;title\x07.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    out = sane(cli(str(folder)), codes=(1,))
    assert "\\x1b]0;title\\x07.safetensors" in out
    root = write_deepspeed_save(tmp_path / "ds")
    (root / "latest").write_text("\x1b[2Jgone")
    sane(cli(str(root)), codes=(1,))
    sane(cli(str(root), "--json"), codes=(1,))


def test_xtuner_and_trainer_with_hostile_json(tmp_path):
    pth = write_xtuner_file(tmp_path / "w" / "iter_7.pth")
    (tmp_path / "w" / "last_checkpoint").write_text("/etc/passwd")
    sane(cli(str(tmp_path / "w")), codes=(1,))
    folder = write_trainer_checkpoint(tmp_path / "checkpoint-9", step=9, deepspeed=False, world=1)
    (folder / "trainer_state.json").write_text('{"global_step": ' + "9" * 5000 + "}")
    sane(cli(str(folder)))
    (folder / "trainer_state.json").write_text("[" * 100000)
    sane(cli(str(folder)))
    assert pth.exists()


# ------------------------------------------------------------------ property: hostile DeepSpeed folders

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moe_env.errors import UsageError  # noqa: E402

_WEIRD = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.integers(10 ** 6, 10 ** 40), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-1, 9), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def ds_cases(draw):
    return {
        "dp": draw(st.integers(1, 4)), "experts": draw(st.integers(1, 4)), "layers": draw(st.integers(0, 3)),
        "stage": draw(st.sampled_from([0, 1, 2, 3])), "bf16": draw(st.booleans()),
        "latest": draw(st.sampled_from(["", None, "global_step999", "../x", "\x1b[2J", "global_step100\n\n"])),
        "drop": draw(st.integers(0, 6)), "stub": draw(st.sampled_from([None, b"", b"version https://git-lfs.github.com/spec/v1\n",
                                                                       b"<html>", b"PK\x03\x04junk", b"\x80\x02]r\xff\xff\xff\xff."])),
        "meta": draw(st.dictionaries(st.sampled_from(["dp_world_size", "mp_world_size", "num_experts", "ds_version",
                                                      "global_steps", "ds_config", "meta"]), _WEIRD, max_size=3)),
    }


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(ds_cases())
def test_hostile_deepspeed_folders_never_crash(tmp_path_factory, case):
    from moe_env.render import render_findings

    root = tmp_path_factory.mktemp("ds")
    write_deepspeed_save(root, dp=case["dp"], moe_layers=case["layers"], experts=case["experts"], stage=case["stage"],
                         bf16=case["bf16"], latest=case["latest"])
    tag = root / "global_step100"
    files = sorted(tag.iterdir())
    for f in files[: case["drop"]]:
        f.unlink()
    rest = sorted(tag.iterdir())
    if case["stub"] is not None and rest:
        rest[-1].write_bytes(case["stub"])
    if case["meta"] and (tag / "mp_rank_00_model_states.pt").exists():
        write_torch_zip(tag / "mp_rank_00_model_states.pt", dict({"module": {}}, **case["meta"]))
    try:
        r = inspect_checkpoint(str(root))
    except UsageError:
        return
    json.dumps(r.to_dict())
    text = render_findings(r.findings)
    assert "\x1b" not in text and "\x1b" not in json.dumps(r.to_dict(), ensure_ascii=False)
