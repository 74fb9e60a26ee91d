"""Hostile inputs for every command, as hypothesis strategies, and the one runner that judges a run.

Each strategy draws a `Case`: files to lay out in a fresh folder, the moe-env command line to run on
them (in a subprocess, with a timeout), extra environment variables, and which pre-existing files
must come out unchanged. `judge()` holds every run to the same promises (README "Exit codes";
issue 16): an exit code in {0, 1, 2, 3}, no traceback, no "internal error", no hang, the sentinel file
that every planted payload would write never written, no temp file left, nothing replaced without --force.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from hypothesis import strategies as st

if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # so the generators can write 5,000-digit numbers into JSON and TOML

SENTINEL = "SENTINEL-RAN"
TIMEOUT = 20.0  # a run past this is a hang (the promise is 10 s on an idle machine; CI machines are shared)
Content = Union[bytes, str, "Fifo", "Symlink", "Folder", "Device"]


@dataclass(frozen=True)
class Fifo:
    pass


@dataclass(frozen=True)
class Symlink:
    to: str  # relative to the case folder, or absolute


@dataclass(frozen=True)
class Folder:
    pass


@dataclass(frozen=True)
class Device:
    major: int
    minor: int


@dataclass(repr=False)
class Case:
    argv: List[str]  # after `moe-env`; "{dir}" is replaced by the case folder
    files: Dict[str, Content] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)
    keep: List[str] = field(default_factory=list)  # files that must be byte-identical afterwards
    stdin: Optional[bytes] = None
    forbid_in: Dict[str, str] = field(default_factory=dict)  # file -> a line start that must not appear (injection)

    def describe(self) -> str:
        def shown(v):
            if isinstance(v, (bytes, str)):
                return repr(v[:120]) + (f"...({len(v)} bytes)" if len(v) > 120 else "")
            return repr(v)

        files = {k: shown(v) for k, v in self.files.items() if not k.startswith("m/") or len(self.files) < 5}
        return f"moe-env {' '.join(map(repr, self.argv))} files={files} env={self.env} stdin={shown(self.stdin or b'')}"

    __repr__ = describe


# ---------------------------------------------------------------- building blocks

class _Payload:
    """A pickle that, if anything ever ran it, would write the sentinel file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"echo ran >> {self.path}",))


class _Eval:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'a').write('ran')",))


def payloads(sentinel: str) -> List[bytes]:
    out = [pickle.dumps(_Payload(sentinel), protocol=p) for p in (0, 2, 4)]
    out.append(pickle.dumps({"model": {"w": _Eval(sentinel)}, "iteration": 5}, protocol=2))
    return out


def dag_bomb(levels: int = 64) -> bytes:
    """A list DAG whose naive expansion has 2**levels leaves (pickle's memo keeps it tiny)."""
    node: list = ["leaf"]
    for _ in range(levels):
        node = [node, node]
    return pickle.dumps({"model": node, "iteration": 1}, protocol=2)


def self_reference() -> bytes:
    a: list = []
    a.append(a)
    d: dict = {"iteration": 1}
    d["model"] = d
    return pickle.dumps({"args": a, "model": d, "checkpoint_version": 3.0}, protocol=2)


def torch_zip(pkl: bytes, method: int = zipfile.ZIP_STORED, damage: str = "", extra: Optional[Dict[str, bytes]] = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", b"3\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    if damage == "method":  # an unknown compression method in the local and central headers
        for sig in (b"PK\x03\x04", b"PK\x01\x02"):
            at = raw.find(sig)
            off = 8 if sig == b"PK\x03\x04" else 10
            if at >= 0:
                raw[at + off:at + off + 2] = struct.pack("<H", 99)
    elif damage == "encrypted":
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = raw.find(sig)
            if at >= 0:
                raw[at + off] |= 1
    elif damage == "payload":  # corrupt the compressed bytes of the first member
        at = raw.find(b"PK\x03\x04")
        start = at + 30 + len("archive/data.pkl")
        for i in range(start + 2, min(start + 40, len(raw))):
            raw[i] ^= 0x5A
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    return bytes(raw)


def zip_bomb(megabytes: int = 300) -> bytes:
    """A data.pkl whose header honestly declares `megabytes` of uncompressed bytes (zeros, deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(megabytes):
                fh.write(chunk)
    return buf.getvalue()


def safetensors(header: object, payload: bytes = b"", length: Optional[int] = None, raw_header: Optional[bytes] = None) -> bytes:
    head = raw_header if raw_header is not None else json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    n = len(head) if length is None else length
    return struct.pack("<Q", n % (1 << 64)) + head + payload


# ---------------------------------------------------------------- hostile scalars

ANSI = "\x1b[2J\x1b]0;pwned\x07\x1b[31m"
UNICODE_DIGITS = ["²", "\U00010a40", "٣", "߁"]

hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n", ANSI, "a\nRUN touch /tmp/x", "${HOME}", "$(id)", "`id`", "..", "../../etc/passwd",
                     "/etc/passwd", "/proc/self/mem", "\ud800", "\u202e", "\0", "x" * 5000, "9" * 5000] + UNICODE_DIGITS),
)
hostile_number = st.one_of(
    st.integers(-2**70, 2**70),
    st.sampled_from([0, -1, 10**12, 2**63, 2**64 + 1, 10**5000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["eight", "0", "8", "", "²", "1e12", None, True, [8], {"n": 8}]),
)
hostile_value = st.one_of(hostile_text, hostile_number, st.lists(hostile_number, max_size=3),
                          st.dictionaries(st.text(max_size=5), hostile_number, max_size=3))


def deep(n: int, kind: str = "list") -> str:
    return ("[" * n + "]" * n) if kind == "list" else ('{"a":' * n + "1" + "}" * n)


# ---------------------------------------------------------------- strategies per command


@st.composite
def ckpt_safetensors_cases(draw) -> Case:
    names = draw(st.lists(st.sampled_from([
        "model.layers.0.block_sparse_moe.experts.0.w1.weight", "model.layers.0.mlp.experts.1.gate_proj.weight",
        "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight", "lm_head.weight", "__metadata__",
    ]) | hostile_text, min_size=1, max_size=4))
    header = {}
    for name in names:
        header[name] = draw(st.one_of(
            st.fixed_dictionaries({"dtype": st.sampled_from(["BF16", "F32", "Q9", ""]) | hostile_text,
                                   "shape": st.lists(hostile_number, max_size=4) | hostile_value,
                                   "data_offsets": st.lists(hostile_number, max_size=3) | hostile_value}),
            hostile_value))
    kind = draw(st.sampled_from(["good-header", "length-lie", "deep", "nan", "lfs", "html", "empty", "truncated"]))
    if kind == "length-lie":
        data = safetensors(header, length=draw(st.sampled_from([0, 7, 2**40, 2**63, 2**64 - 1])))
    elif kind == "deep":
        data = safetensors(None, raw_header=deep(draw(st.integers(100, 20000)), draw(st.sampled_from(["list", "dict"]))).encode())
    elif kind == "nan":
        data = safetensors(None, raw_header=b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, Infinity]}}')
    elif kind == "lfs":
        data = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 4943162336\n"
    elif kind == "html":
        data = b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"
    elif kind == "empty":
        data = b""
    else:
        data = safetensors(header)
        if kind == "truncated":
            data = data[: max(1, len(data) // 2)]
    layout = draw(st.sampled_from(["file", "folder", "sharded"]))
    files: Dict[str, Content] = {}
    if layout == "file":
        files["model.safetensors"] = data
        target = "{dir}/model.safetensors"
    else:
        files["ck/model-00001-of-00002.safetensors"] = data
        weight_map = {n: draw(st.sampled_from(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                               "../../../../../etc/passwd", "/etc/passwd", "link.safetensors",
                                               "../outside.safetensors", "/proc/self/mem"]) | hostile_text)
                      for n in names if isinstance(n, str)}
        index: object = {"metadata": {"total_size": draw(hostile_number)}, "weight_map": weight_map}
        if draw(st.booleans()):
            index = draw(hostile_value)
        files["ck/model.safetensors.index.json"] = json.dumps(index, allow_nan=True).encode("utf-8", "surrogatepass") \
            if layout == "sharded" else b"{}"
        files["ck/link.safetensors"] = Symlink("/etc/passwd")
        files["outside.safetensors"] = safetensors({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
        files["ck/config.json"] = draw(st.sampled_from([
            '{"num_local_experts": 8, "num_hidden_layers": 2, "architectures": ["MixtralForCausalLM"]}',
            "[1, 2]", '"text"', "null", deep(5000), '{"num_local_experts": "eight", "num_hidden_layers": 1e400}',
            '{"num_local_experts": ' + "9" * 5000 + "}", '{"num_local_experts": 1000000000000, "num_hidden_layers": 1000000}',
        ]))
        target = "{dir}/ck"
    return Case(argv=["ckpt", target] + (["--json"] if draw(st.booleans()) else []), files=files)


def pickle_blobs(sentinel: str):
    return st.one_of(
        st.sampled_from(payloads(sentinel)),
        st.just(dag_bomb()),
        st.just(self_reference()),
        st.builds(lambda v: pickle.dumps({"iteration": v, "args": {"num_experts": v}, "model": {}}, protocol=2),
                  hostile_value),
        st.binary(max_size=64),
    )


@st.composite
def ckpt_torch_cases(draw, sentinel: str) -> Case:
    pkl = draw(pickle_blobs(sentinel))
    wrapper = draw(st.sampled_from(["zip", "zip-deflate", "zip-lzma", "method", "encrypted", "payload", "truncate", "raw"]))
    if wrapper == "raw":
        blob = pkl
    else:
        method = {"zip-deflate": zipfile.ZIP_DEFLATED, "zip-lzma": zipfile.ZIP_LZMA}.get(wrapper, zipfile.ZIP_DEFLATED
                                                                                      if wrapper == "payload" else zipfile.ZIP_STORED)
        blob = torch_zip(pkl, method=method, damage=wrapper if wrapper in ("method", "encrypted", "payload", "truncate") else "")
    layout = draw(st.sampled_from(["file", "megatron", "deepspeed"]))
    files: Dict[str, Content] = {}
    if layout == "file":
        files["model.pt"] = blob
        target = "{dir}/model.pt"
    elif layout == "megatron":
        it = draw(st.sampled_from(["100", "0000100", "release", "²", "-5", "9" * 5000, ANSI, "", "1e3"]))
        files["mg/latest_checkpointed_iteration.txt"] = it
        files["mg/iter_0000100/mp_rank_00/model_optim_rng.pt"] = blob
        if draw(st.booleans()):
            files["mg/iter_0000200"] = b"a file where a folder belongs"
        if draw(st.booleans()):
            files["mg/iter_0000300"] = Symlink("iter_0000300")  # a symlink loop
        target = "{dir}/mg"
    else:
        files["ds/latest"] = draw(st.sampled_from(["global_step100", "global_step999", "../../etc", ANSI, "", "\0"]))
        files["ds/global_step100/mp_rank_00_model_states.pt"] = blob
        if draw(st.booleans()):
            files["ds/global_step100/zero_pp_rank_0_mp_rank_00_optim_states.pt"] = draw(pickle_blobs(sentinel))
        if draw(st.booleans()):
            files["ds/global_step100/layer_0_expert_0_mp_rank_00_model_states.pt"] = draw(pickle_blobs(sentinel))
        target = "{dir}/ds" if draw(st.booleans()) else "{dir}/ds/global_step100"
    return Case(argv=["ckpt", target] + (["--json"] if draw(st.booleans()) else []), files=files)


@st.composite
def explain_cases(draw) -> Case:
    lines = draw(st.lists(st.one_of(
        st.text(max_size=200),
        st.sampled_from([
            "RuntimeError: CUDA error: no kernel image is available for execution on the device",
            "ImportError: /x/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
            "[rank3]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:219",
            ANSI + "Traceback (most recent call last):", "  File \"train.py\", line 1, in <module>",
            "a" * 4096, ("w" * 4000 + " not in state_dict"), "\0" * 100, "x" * 100_000,
        ]),
    ), max_size=40))
    raw = "\r\n".join(lines).encode("utf-8", "surrogatepass") + draw(st.binary(max_size=50))
    how = draw(st.sampled_from(["file", "stdin", "fifo", "dir", "devzero"]))
    if how == "file":
        return Case(argv=["explain", "{dir}/train.log"] + (["--json"] if draw(st.booleans()) else []), files={"train.log": raw})
    if how == "stdin":
        return Case(argv=["explain", "-"], stdin=raw)
    if how == "fifo":
        return Case(argv=["explain", "{dir}/pipe"], files={"pipe": Fifo()})
    if how == "dir":
        return Case(argv=["explain", "{dir}"])
    return Case(argv=["explain", "/dev/zero"])


def mutate(doc: object, draw, n: int) -> object:
    """Replace `n` values at random places of a JSON document with hostile ones."""
    doc = json.loads(json.dumps(doc))
    for _ in range(n):
        path = []
        node = doc
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)) > 0:
            key = draw(st.sampled_from(sorted(node.keys()) if isinstance(node, dict) else list(range(len(node)))))
            path.append(key)
            node = node[key]
        value = draw(st.one_of(hostile_value, st.just(ANSI + "node07")))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    return doc


@st.composite
def report_cases(draw, base_report: dict) -> Case:
    doc = mutate(base_report, draw, draw(st.integers(1, 4)))
    text = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    files: Dict[str, Content] = {"r1.json": text, "r2.json": json.dumps(base_report)}
    which = draw(st.sampled_from(["from-json", "diff", "diff-stream", "from-json-lockfile"]))
    if which == "from-json":
        argv = ["doctor", "--from-json", "{dir}/r1.json"] + (["--json"] if draw(st.booleans()) else [])
    elif which == "from-json-lockfile":
        files["req.txt"] = draw(st.sampled_from([b"torch==2.1.2 \\\n --hash=sha256:" + b"0" * 64, b"\xff\xfe", b"-r req.txt",
                                                 b"torch===" + b"9" * 5000, b"@" * 100]))
        argv = ["doctor", "--from-json", "{dir}/r2.json", "--lockfile", "{dir}/req.txt"]
    elif which == "diff":
        argv = ["diff", "{dir}/r1.json", "{dir}/r2.json"] + (["--json"] if draw(st.booleans()) else [])
    else:
        return Case(argv=["diff", "-"], files={}, stdin=b"node01: " + text + b"\nnode02: " + json.dumps(base_report).encode())
    return Case(argv=argv, files=files)


@st.composite
def env_cases(draw, base_report: str) -> Case:
    var = draw(st.sampled_from(["MOE_ENV_GPUS", "MOE_ENV_CUDA_DRIVER_VERSION", "MOE_ENV_NVCC_VERSION", "MOE_ENV_HOSTNAME"]))
    value = draw(st.one_of(hostile_text, st.sampled_from([
        "8.0x99999999999999999999999999", "H100:9.0x8:80GB", "A100:8.0x8:9999999999999GB", "9" * 5000, "550.54.15",
        "none", "x" * 10000, "sm_" + "9" * 100, "H100:9.0,,,", ":::", "0x0", "12.1." * 1000])))
    value = value.replace("\0", "").encode("utf-8", "replace").decode("utf-8")  # what an environment can hold
    cmd = draw(st.sampled_from([["doctor", "--from-json", "{dir}/r.json"], ["lock", "minigemini", "--cuda", "auto"],
                                ["doctor", "minigemini", "--build"]]))
    return Case(argv=cmd, files={"r.json": base_report}, env={var: value})


@st.composite
def output_cases(draw) -> Case:
    """-o targets: an existing file (kept without --force), devices, FIFOs, folders, long names."""
    target = draw(st.sampled_from(["existing.txt", "dev-null", "dev-full", "fifo", "folder", "new/sub/out.txt", "x" * 255,
                                   "file-as-parent/out.txt"]))
    force = draw(st.booleans())
    files: Dict[str, Content] = {"existing.txt": b"mine\n", "file-as-parent": b"a file\n"}
    keep = ["file-as-parent"] + ([] if force else ["existing.txt"])
    # device nodes of our own (the same devices as /dev/null and /dev/full), so a bug that replaces a
    # device with a regular file damages the case folder, never the machine's /dev
    path = "{dir}/" + target
    if target in ("dev-null", "dev-full"):
        files[target] = Device(1, 3 if target == "dev-null" else 7)
    if target == "fifo":
        files["fifo"] = Fifo()
    if target == "folder":
        files["folder"] = Folder()
    cmd = draw(st.sampled_from([["lock", "minigemini"], ["build-steps", "minigemini"],
                                ["dockerfile", "minigemini", "--base", draw(st.sampled_from(["nvidia/cuda:12.1.1-devel-ubuntu22.04",
                                                                                             "x\nRUN touch /tmp/pwned", "${EVIL}"]))]]))
    forbid = {}
    if cmd[0] == "dockerfile" and target in ("new/sub/out.txt",):
        forbid[target] = "RUN touch /tmp/pwned"
    return Case(argv=cmd + ["-o", path] + (["--force"] if force else []), files=files, keep=keep, forbid_in=forbid)


@st.composite
def matrix_cases(draw, matrix_files: Dict[str, bytes]) -> Case:
    """A copy of the shipped matrix with one file replaced by hostile TOML."""
    name = draw(st.sampled_from(sorted(matrix_files)))
    hostile = draw(st.sampled_from([
        "a = " + "[" * 3000 + "]" * 3000,
        "x = " + "{a = " * 2000 + "1" + "}" * 2000,
        '[project]\nname = "p"\ntitle = 5\n',
        "[[torch]]\nminor = 2\n",
        "[[stack]]\nid = 1\n",
        'package = "deepspeed"\n[[release]]\nversion = "' + "9" * 5000 + '"\nsource = ["release:deepspeed==1"]\n',
        "\xff\xfe garbage",
        "[[known_issue]]\nid = 'x'\ntitle = 'x'\npatterns = ['(a+)+$']\ncause = 'c'\nfix = 'f'\nsource = ['a/b#1']\n",
    ]))
    files: Dict[str, Content] = {f"m/{k}": v for k, v in matrix_files.items()}
    files[f"m/{name}"] = hostile.encode("utf-8", "surrogateescape") if isinstance(hostile, str) else hostile
    cmd = draw(st.sampled_from([["matrix", "validate"], ["matrix", "list"], ["lock", "minigemini"], ["explain", "-"]]))
    return Case(argv=cmd, files=files, env={"MOE_ENV_MATRIX": "{dir}/m", "MOE_ENV_NO_CACHE": "1"}, stdin=b"hello\n")


def _arg_ok(text: str) -> bool:
    """What a command line can carry: no NUL, nothing that is not UTF-8 (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in text


@st.composite
def config_cases(draw) -> Case:
    project = draw(st.sampled_from(["megatron", "minigemini", "moe-llava", "xtuner"]))
    args = draw(st.lists(st.one_of(
        st.sampled_from(["--expert-model-parallel-size", "--num-experts", "--moe-grouped-gemm", "--load", "--deepspeed",
                         "--tensor-model-parallel-size", "--bf16", "--num-layers", "--moe_enable", "--zero_stage"]),
        hostile_text.filter(_arg_ok)), max_size=8))
    files: Dict[str, Content] = {"ds.json": draw(st.sampled_from([
        '{"zero_optimization": {"stage": 3}, "bf16": {"enabled": true}}', deep(10000), '{"zero_optimization": {"stage": "²"}}',
        '{"train_batch_size": ' + "9" * 5000 + "}", "[]", "\xff"]))}
    return Case(argv=["check-config", project, "--"] + [a.replace("{dir}", "") for a in args] + ["--deepspeed", "{dir}/ds.json"],
                files=files)


# ---------------------------------------------------------------- running one case


def lay_out(folder: Path, files: Dict[str, Content]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Fifo):
            os.mkfifo(path)
        elif isinstance(content, Symlink):
            os.symlink(content.to, path)
        elif isinstance(content, Folder):
            path.mkdir(exist_ok=True)
        elif isinstance(content, Device):
            try:
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(content.major, content.minor))
            except (PermissionError, OSError):
                os.mkfifo(path)  # not root: a FIFO is the other non-regular target
        else:
            path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)


def run_case(case: Case, folder: Path, base_env: Dict[str, str]) -> Tuple[subprocess.CompletedProcess, float]:
    lay_out(folder, case.files)
    argv = [a.replace("{dir}", str(folder)) for a in case.argv]
    env = dict(base_env)
    env.update({k: v.replace("{dir}", str(folder)) for k, v in case.env.items()})
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "moe_env"] + argv, input=case.stdin if case.stdin is not None else b"",
                              capture_output=True, env=env, cwd=str(folder), timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"hang: {case.describe()} ran past {TIMEOUT:g}s") from exc
    return proc, time.monotonic() - started


def judge(case: Case, folder: Path, base_env: Dict[str, str], sentinel: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lay_out_keep = {k: v for k, v in case.files.items() if k in case.keep}
    proc, seconds = run_case(case, folder, base_env)
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    where = f"{case.describe()}\n--- rc={proc.returncode} in {seconds:.1f}s\n--- stderr:\n{err[-2000:]}\n--- stdout:\n{out[-1000:]}"
    assert proc.returncode in (0, 1, 2, 3), where
    assert "Traceback" not in err and "Traceback (most recent call last)" not in out.split("\n", 1)[0], where
    assert "internal error" not in err, where
    assert not sentinel.exists(), "a planted payload ran: " + where
    if proc.returncode == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("moe-env: error: ") or err.startswith("usage:") or "error:" in err, where
    for rel, content in lay_out_keep.items():
        data = content.encode() if isinstance(content, str) else content
        assert (folder / rel).read_bytes() == data, f"{rel} was changed without --force: " + where
    for rel, line in case.forbid_in.items():
        path = folder / rel
        if path.is_file():
            assert not any(l.startswith(line) for l in path.read_text(errors="replace").splitlines()), \
                f"an injected line reached {rel}: " + where
    temps = [p for p in folder.rglob("*") if p.name.startswith(".moe-env-") or p.name.endswith(".tmp")]
    assert not temps, f"temp files left: {temps}: " + where


def strategies(sentinel: str, base_report: dict, matrix_files: Dict[str, bytes]) -> Dict[str, Callable[[], st.SearchStrategy]]:
    return {
        "ckpt-safetensors": lambda: ckpt_safetensors_cases(),
        "ckpt-torch": lambda: ckpt_torch_cases(sentinel),
        "explain": lambda: explain_cases(),
        "report": lambda: report_cases(base_report),
        "env": lambda: env_cases(json.dumps(base_report)),
        "output": lambda: output_cases(),
        "matrix": lambda: matrix_cases(matrix_files),
        "check-config": lambda: config_cases(),
    }
