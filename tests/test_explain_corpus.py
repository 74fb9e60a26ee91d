"""`moe-env explain` on real tracker text: the corpus in tests/data/explain_corpus.jsonl.

Each row is an error line as a user pasted it in the thread named beside it, with the cause the thread
settled on and the known issue that must explain it (`split` = "heldout" for the rows collected after
the patterns were written, to measure them on text they were not written for). Also: the same lines
with the decorations real logs add, tracebacks as units, benign lines, hostile input, and the doctor
ids the known issues name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moe_env.matrix.loader import load_matrix
from moe_env.triage import MAX_PER_LINE, Triage, explain_text, search_form

CORPUS = [json.loads(line) for line in (Path(__file__).parent / "data" / "explain_corpus.jsonl").read_text(encoding="utf-8").splitlines()]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def ids(matrix, text, **kw):
    return [m.issue.id for m in explain_text(text, matrix, **kw).results()]


def test_corpus_is_large_and_sourced():
    assert len(CORPUS) >= 150
    assert sum(r["split"] == "heldout" for r in CORPUS) >= 0.2 * len(CORPUS)
    for r in CORPUS:
        assert r["line"].strip() and r["cause"].strip()
        assert re.match(r"^(?:[\w.-]+/[\w.-]+#\d+|release:\S+)", r["thread"]), r["thread"]


@pytest.mark.parametrize("row", CORPUS, ids=[f"{r['split']}-{i}-{r['expect']}" for i, r in enumerate(CORPUS)])
def test_corpus_line_is_explained_first(matrix, row):
    t = explain_text(row["line"], matrix)
    found = [m.issue.id for m in t.results()]
    assert found and found[0] == row["expect"], f"{row['thread']}: {row['line'][:120]!r} -> {found}"
    first = t.results()[0]
    assert first.issue.benign is row["benign"]
    assert first.issue.cause and first.issue.fix and first.issue.source


# ------------------------------------------------------------------ decorations real logs add

DECORATED = [r for r in CORPUS if "\n" not in r["line"] and len(r["line"]) > 60][:14]
ANSI_RED, ANSI_OFF = "\x1b[31;1m", "\x1b[0m"


def _variants(line: str):
    yield "rank prefix", f"[rank3]: {line}"
    yield "torchrun prefix", f"[default0]:{line}"
    yield "srun prefix", f"7: {line}"
    yield "timestamp", f"[2024-06-11 23:38:32,956] [ERROR] {line}"
    yield "iso timestamp", f"2024-06-11T23:38:32.956Z {line}"
    yield "ansi colour", ANSI_RED + line[:30] + ANSI_OFF + line[30:]
    yield "crlf", line + "\r\n" + "next line\r\n"
    cut = max(int(len(line) * 0.8), 50)
    yield "truncated", line[:cut]


@pytest.mark.parametrize("row", DECORATED, ids=[r["expect"] for r in DECORATED])
def test_decorated_variants_are_explained(matrix, row):
    assert len(DECORATED) >= 12
    for name, text in _variants(row["line"]):
        found = ids(matrix, text)
        if name == "truncated" and row["expect"] not in found:
            # a cut may fall inside the only distinctive text; it must then claim nothing wrong
            assert not found or found[0] == row["expect"], (name, text, found)
            continue
        assert found and found[0] == row["expect"], (name, text, found)


def test_paths_differ(matrix):
    for path in ("/usr/local/lib/python3.10/dist-packages", "C:\\Users\\me\\env\\Lib\\site-packages", "/opt/conda/envs/x/lib/python3.12/site-packages"):
        line = f"ImportError: {path}/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"
        assert ids(matrix, line)[0] == "ext-undefined-torch-symbol"


# ------------------------------------------------------------------ tracebacks as units

TRACEBACK_30 = "\n".join([
    "[2024-02-03 10:12:01,123] [INFO] [real_accelerator.py:158:get_accelerator] Setting ds_accelerator to cuda (auto detect)",
    "Traceback (most recent call last):",
    '  File "/work/train.py", line 13, in <module>',
    "    train()",
    '  File "/work/train.py", line 9, in train',
    "    model = build()",
    '  File "/work/model.py", line 40, in build',
    "    import flash_attn",
    '  File "/venv/lib/python3.10/site-packages/flash_attn/__init__.py", line 3, in <module>',
    "    from flash_attn.flash_attn_interface import (",
    '  File "/venv/lib/python3.10/site-packages/flash_attn/flash_attn_interface.py", line 10, in <module>',
    "    import flash_attn_2_cuda as flash_attn_cuda",
    "ImportError: /venv/lib/python3.10/site-packages/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: "
    "undefined symbol: _ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/work/run.py", line 5, in <module>',
    "    main()",
    '  File "/work/run.py", line 3, in main',
    "    load()",
    '  File "/venv/lib/python3.10/site-packages/transformers/utils/import_utils.py", line 1510, in _get_module',
    "    raise RuntimeError(",
    "RuntimeError: Failed to import transformers.models.llama.modeling_llama because of the following error (look up to see its traceback):",
    "/venv/lib/python3.10/site-packages/flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so: undefined symbol: "
    "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
    "[2024-02-03 10:12:09,000] [INFO] [launch.py:316:sigkill_handler] Killing subprocess 2694488",
    "{'loss': 1.9384, 'learning_rate': 1.99e-05, 'epoch': 0.02}",
    " iteration       10/ 1000 | consumed samples: 1280 | lm loss: 1.734215E+00 |",
    "done",
    "bye",
])


def test_thirty_line_traceback_is_reported_once(matrix):
    assert len(TRACEBACK_30.splitlines()) == 30
    t = explain_text(TRACEBACK_30, matrix)
    found = t.results()
    assert [m.issue.id for m in found] == ["ext-undefined-torch-symbol"]
    m = found[0]
    assert m.count == 1 and t.tracebacks == 1
    assert m.first_line == 2
    assert m.examples[0].startswith("ImportError:")
    assert m.frame.endswith("flash_attn_interface.py:10 in <module>")


def test_interleaved_rank_tracebacks_each_once(matrix):
    lines = []
    for r in (0, 1, 2, 3):
        lines.append(f"[rank{r}]: Traceback (most recent call last):")
    for r in (0, 1, 2, 3):
        lines.append(f'[rank{r}]:   File "/opt/ds/deepspeed/runtime/engine.py", line 2215, in _validate_zero3_moe_compatibility')
        lines.append(f'[rank{r}]:     raise AssertionError("Native DeepSpeed MoE is not supported with ZeRO Stage 3. "')
    for r in (0, 1, 2, 3):
        lines.append(f"[rank{r}]: AssertionError: Native DeepSpeed MoE is not supported with ZeRO Stage 3. Use AutoEP or choose ZeRO stage 1/2.")
    t = explain_text("\n".join(lines), matrix)
    hits = [m for m in t.results() if m.issue.id == "deepspeed-zero3-moe-refused"]
    assert t.tracebacks == 4 and len(hits) == 1 and hits[0].count == 4
    assert hits[0].examples[0].startswith("AssertionError: Native DeepSpeed MoE")
    assert "engine.py:2215" in hits[0].frame


def test_pip_build_isolation_needs_its_context(matrix):
    """The same last line means two things: torch missing here, or hidden by pip's isolated build."""
    build = "\n".join([
        "  Getting requirements to build wheel ... error",
        "  error: subprocess-exited-with-error",
        "      Traceback (most recent call last):",
        '        File "/venv/lib/python3.11/site-packages/pip/_vendor/pyproject_hooks/_in_process/_in_process.py", line 353, in <module>',
        "          main()",
        '        File "/tmp/pip-build-env-gwmgwy1l/overlay/lib/python3.12/site-packages/setuptools/build_meta.py", line 331, in get_requires_for_build_wheel',
        "          return self._get_build_requires(config_settings, requirements=[])",
        '        File "<string>", line 19, in <module>',
        "      ModuleNotFoundError: No module named 'torch'",
        "      [end of output]",
    ])
    assert ids(matrix, build)[0] == "build-isolation-hides-torch"
    plain = 'Traceback (most recent call last):\n  File "train.py", line 1, in <module>\n    import torch\nModuleNotFoundError: No module named \'torch\''
    assert ids(matrix, plain) == ["torch-missing"]


def test_at_most_three_issues_per_line_most_specific_first(matrix):
    line = ("ImportError: cannot import name 'shard_checkpoint' from 'transformers.modeling_utils'; "
            "TypeError: X.forward() got an unexpected keyword argument 'cache_position'; "
            "TypeError: Y.forward() got an unexpected keyword argument 'output_router_logits'; "
            "RuntimeError: Torch not compiled with CUDA enabled")
    found = ids(matrix, line)
    assert len(found) == MAX_PER_LINE
    assert found[0] == "hf-unexpected-kwarg-output-router-logits" or found[0] == "hf-removed-shard-checkpoint"


def test_project_issue_outranks_generic_only_when_project_seen(matrix):
    line = "AssertionError: MoE not supported with Stage 3"
    assert ids(matrix, line)[0] == "deepspeed-zero3-moe-refused"
    named = [m.key for m in explain_text(line, matrix, named=["moe-llava"]).results()]
    assert named[0] == "moe-llava.moellava-zero3-moe-assert"
    detected = 'File "/root/MoE-LLaVA/moellava/train/train_mem.py", line 13, in <module>\n' + line
    assert explain_text(detected, matrix).results()[0].key == "moe-llava.moellava-zero3-moe-assert"


def test_driver_number_is_decoded(matrix):
    t = explain_text("RuntimeError: The NVIDIA driver on your system is too old (found version 11040).", matrix)
    m = t.results()[0]
    assert m.issue.id == "driver-too-old"
    row = next(r for r in matrix.cuda_drivers if r.cuda == "12.1")
    assert "CUDA 11.4 at most" in m.notes[0] and f"CUDA 12.1 >= {row.min_driver}" in m.notes[0]
    c = explain_text("nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update your driver", matrix)
    row = next(r for r in matrix.cuda_drivers if r.cuda == "12.8")
    assert row.min_driver in c.results()[0].notes[0]


# ------------------------------------------------------------------ benign lines

BENIGN = [
    ("Installed CUDA version 12.2 does not match the version torch was compiled with 12.1 but since the APIs are "
     "compatible, accepting this combination", "deepspeed-cuda-minor-accepted"),
    ("        Precompiled wheel not found. Building from source...", "prebuilt-wheel-not-found"),
    ("11/22 19:51:24 - mmengine - INFO - model.layers.1.mlp.experts.0.w1w3 not in state_dict, loading "
     "/tmp/ckpt/model-00005-of-00007.safetensors", "shard-not-in-state-dict"),
]


@pytest.mark.parametrize("line,issue", BENIGN, ids=[b[1] for b in BENIGN])
def test_benign_lines_are_benign(matrix, line, issue):
    t = explain_text(line, matrix)
    assert [m.issue.id for m in t.results()][:1] == [issue]
    assert t.harmful() is False and all(m.issue.benign for m in t.results())


def test_ordinary_training_log_matches_nothing(matrix):
    from test_explain import CLEAN_LOG

    assert explain_text(CLEAN_LOG, matrix).results() == []


# ------------------------------------------------------------------ one knowledge, two faces

# Doctor finding ids other engineers are adding now; not yet emitted by moe_env/checks on this branch.
# After the merge, delete from this list every id that the checks emit (the test then holds them too).
# ids a doctor check was promised to emit before it landed (empty now: every one is emitted and held below)
PENDING_DOCTOR_IDS: set = set()
NEW_DOCTOR_IDS = {
    "torch.missing", "torch.cpu-build-on-gpu-host", "ext.undefined-symbol", "ext.missing-library",
    "ext.cuda-major-mismatch", "ext.cxx11-abi-mismatch", "dist.partial-install", "sys.glibcxx-too-old",
    "host.cuda-home-missing", "host.cuda-headers-missing", "host.shm-too-small",
}
# doctor findings that predict a runtime error someone pastes: each must be named by a known issue
PREDICTING = NEW_DOCTOR_IDS | {
    "torch.driver-too-old", "torch.driver-minor-compat", "torch.gpu-arch-missing", "build.nvcc-cuda-major-mismatch",
    "deepspeed.built-for-other-torch", "deepspeed.built-for-other-cuda", "gpu.bf16-unsupported", "numpy2-with-torch-before-2.3",
    "torch.setuptools-without-pkg-resources",
}


def emitted_doctor_ids(matrix):
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "moe_env" / "checks").glob("*.py"))
    found = set()
    for line in re.findall(r"\b(?:id|fid)\s*=\s*(f?\"[^\n]*)", text):  # id="x", and fid = "a" if rocm else "b"
        found |= set(re.findall(r'"([a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_.-]*)"', line))
    return found | {c.id for c in matrix.conflicts}


def all_issues(matrix):
    return list(matrix.known_issues) + [i for p in matrix.projects.values() for i in p.known_issues]


def test_every_doctor_id_named_by_an_issue_exists(matrix):
    known = emitted_doctor_ids(matrix) | PENDING_DOCTOR_IDS
    for issue in all_issues(matrix):
        for d in issue.doctor:
            assert d in known, f"{issue.id}: doctor id {d!r} is emitted by no check"
    assert NEW_DOCTOR_IDS <= emitted_doctor_ids(matrix), NEW_DOCTOR_IDS - emitted_doctor_ids(matrix)


def test_every_predicting_doctor_id_has_a_pattern(matrix):
    named = {d for issue in all_issues(matrix) if issue.patterns for d in issue.doctor}
    assert PREDICTING - named == set()
    assert {"torch.driver-too-old", "build.nvcc-cuda-major-mismatch", "gpu.bf16-unsupported"} <= emitted_doctor_ids(matrix)


def test_python_confirms_or_rules_out(matrix, venv_factory):
    """--python probes a real venv (never importing it): numpy 2 next to torch 2.1 confirms the NumPy-2 issue."""
    from doctor_support import add_plain, add_torch, moe_env_cli

    bad = venv_factory()
    add_torch(bad, "2.1.2+cu121", "12.1", requires=["numpy"])
    add_plain(bad, "numpy", "2.1.3")
    log = ROOT / "tests" / "data" / "explain_corpus.jsonl"
    env = {"MOE_ENV_CUDA_DRIVER_VERSION": "535.104.05", "MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_NVCC_VERSION": "12.1"}
    err = "AttributeError: _ARRAY_API not found\nRuntimeError: Torch not compiled with CUDA enabled\n"
    path = Path(str(bad.root) + ".log")
    path.write_text(err)
    res = moe_env_cli(["explain", str(path), "--python", str(bad.python), "--json"], env=env)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    by = {m["id"]: m for m in doc["matches"]}
    assert by["numpy2-vs-numpy1-build"]["confirmation"].startswith("confirmed in ")
    assert "numpy2-with-torch-before-2.3" in by["numpy2-vs-numpy1-build"]["confirmation"]
    assert by["torch-cpu-build"]["confirmation"].startswith("not seen in ")
    assert log.exists()


# ------------------------------------------------------------------ hostile input: linear time, no hang, escaped

def run_cli(args, stdin=None, timeout=60, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    full.update({"NO_COLOR": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "moe_env", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=full)


def test_pathological_inputs_finish(tmp_path):
    big = tmp_path / "one-line.log"
    with open(big, "wb") as fh:  # 50 MB, one line, no spaces
        fh.write(b"x" * (50 * 1024 * 1024))
    nul = tmp_path / "nul.log"
    nul.write_bytes(b"\x00" * 2_000_000 + b"\nRuntimeError: Torch not compiled with CUDA enabled\x00\x00\n" + b"\x00abc\x00\n" * 100_000)
    bad = tmp_path / "bad-utf8.log"
    bad.write_bytes(b"\xff\xfe\xc3\x28" * 500_000 + b"\nRuntimeError: Torch not compiled with CUDA enabled\xe2\x82\n")
    redos = tmp_path / "redos.log"  # the XTuner pattern once backtracked: 300 space-free 4 KB lines took 8-10 s
    redos.write_bytes((b"a" * 4096 + b"\n") * 2000 + (b"b" * 4000 + b" not in state_dict, loading\n") * 300)
    for path, code in ((big, 0), (nul, 1), (bad, 1), (redos, 0)):
        res = run_cli(["explain", str(path), "--json"], timeout=60)
        assert res.returncode == code, (path.name, res.stderr[-500:])
        assert b"Traceback" not in res.stderr
        json.loads(res.stdout)


def test_regex_search_forms_cannot_backtrack_on_long_lines(matrix):
    """Every shipped pattern, as searched, on 4 KB lines made of its own characters, in one bounded run."""
    code = (
        "import re,sys\n"
        "from moe_env.matrix.loader import load_matrix\n"
        "from moe_env.triage import search_form\n"
        "m=load_matrix()\n"
        "pats=[p for i in m.known_issues for p in i.patterns]+[p for pr in m.projects.values() for i in pr.known_issues for p in i.patterns]\n"
        "lines=['a'*4096,'x '*2048,'/'*4096,'0'*4096,'_Z'*2048,'. '*2048]\n"
        "for p in pats:\n"
        "    rx=re.compile(search_form(p))\n"
        "    for l in lines*20: rx.search(l)\n"
        "print(len(pats))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and int(res.stdout) >= 140, res.stderr
    assert search_form(r"\S+ not in state_dict, loading \S+") == r"\S not in state_dict, loading \S+"


def test_fifo_without_writer_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    start = time.monotonic()
    res = run_cli(["explain", str(fifo)], timeout=30, env={"MOE_ENV_EXPLAIN_WAIT": "1"})
    assert res.returncode == 2 and b"no writer" in res.stderr and b"Traceback" not in res.stderr
    assert time.monotonic() - start < 30


def test_fifo_with_a_writer_is_read(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as fh:
            fh.write("RuntimeError: Torch not compiled with CUDA enabled\n")

    th = threading.Thread(target=write)
    th.start()
    res = run_cli(["explain", str(fifo), "--json"], timeout=30, env={"MOE_ENV_EXPLAIN_WAIT": "20"})
    th.join(5)
    assert res.returncode == 1 and json.loads(res.stdout)["matches"][0]["id"] == "torch-cpu-build"


def test_device_is_refused():
    res = run_cli(["explain", "/dev/zero"], timeout=30)
    assert res.returncode == 2 and b"device" in res.stderr


def test_echoed_log_text_is_escaped(tmp_path):
    log = tmp_path / "evil.log"
    log.write_bytes(b"RuntimeError: Torch not compiled with CUDA enabled \x07\xc2\x9b2J\x1b]0;owned\x07 \xe2\x80\xae\n")
    res = run_cli(["explain", str(log)], timeout=30)
    out = res.stdout.decode()
    assert res.returncode == 1
    assert "\x07" not in out and "\x9b" not in out and "\x1b" not in out and "\u202e" not in out
    assert "\\x07" in out or "\\x9b" in out
