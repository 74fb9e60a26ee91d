"""Every documented command example that needs no GPU, network or container engine runs, as printed.

The examples come from the README (fenced sh/bash blocks and inline `moe-env ...` spans) and from
each command's --help epilog. Each runs under bash in a folder holding the files the examples name
(a log, a report, a lockfile, a venv at the path the examples use), with the network cut, and must
exit 0 or 1 (1 = problems found, which a doctor on this machine may well report) — never 2 (bad
usage), 3 (network), 4 (internal error) or a traceback. Examples with placeholders (PROJECT, FILE, ...)
or that need a GPU, the network, Slurm, pdsh or Docker are skipped, each for a stated reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["doctor", "lock", "build-steps", "dockerfile", "check-config", "ckpt", "explain", "diff", "matrix"]
OK_PROGRAMS = {"moe-env", "mkdir", "awk", "cat", "echo", "head", "true"}
PLACEHOLDER = re.compile(r"\b(PROJECT|VARIANT|FILE|PATH|DIR|SPEC|REPORT|LOG|ID|ARGS|NAME|VERSION|SECONDS|X\.Y)\b|\.\.\.|<[a-z]+>")
NEEDS_OUTSIDE = [
    (re.compile(r"--refresh|scan-deepspeed|--live\b"), "uses the network"),
    (re.compile(r"\b(srun|pdsh|docker|buildah|ssh|sbatch|nvidia-smi)\b"), "needs a cluster, a GPU or a container engine"),
    (re.compile(r"\bpip install\b|\buv pip\b"), "installs packages"),
]


def _readme_examples() -> List[Tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    fence, block = None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, block = line[3:].strip() or "sh", []
            else:
                if fence in ("sh", "bash", "console", "shell"):
                    joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
                    for cmd in joined.splitlines():
                        cmd = re.sub(r"\s+#\s.*$", "", cmd).strip()
                        if "moe-env" in cmd:
                            out.append(("README", cmd))
                fence = None
            continue
        if fence is not None:
            block.append(line)
        else:
            for span in re.findall(r"`((?:[A-Z_]+=[^\s`]+\s+)*moe-env [a-z][^`]*)`", line):
                if len(span.split()) >= 3:  # `moe-env ckpt` in prose names a command; it is not an example
                    out.append(("README", span.strip()))
    return out


def _help_examples() -> List[Tuple[str, str]]:
    out = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    for cmd in [None] + COMMANDS:
        argv = [sys.executable, "-m", "moe_env"] + ([cmd] if cmd else []) + ["--help"]
        text = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stdout
        section = text.split("examples:", 1)[1] if "examples:" in text else ""
        for line in section.splitlines():
            if not line.startswith("  ") or not line.strip():
                if line and not line.startswith(" "):
                    break  # the next section (environment:, exit codes:)
                continue
            command = re.split(r"\s{2,}", line.strip())[0]
            if "moe-env" in command:
                out.append((f"moe-env {cmd or ''} --help".replace("  ", " "), command))
    return out


EXAMPLES = sorted(set(_readme_examples() + _help_examples()))


def _skip_reason(line: str) -> str:
    if line.startswith(("RUN ", "FROM ", "ENV ")):
        return "a Dockerfile line"
    if PLACEHOLDER.search(line):
        return "has placeholders"
    for rx, why in NEEDS_OUTSIDE:
        if rx.search(line):
            return why
    try:
        words = shlex.split(line)
    except ValueError:
        return "not a shell line"
    programs = []
    expect = True
    for w in words:
        if expect and re.match(r"^[A-Z_][A-Z0-9_]*=", w):
            continue
        if expect:
            programs.append(w)
            expect = False
        if w in ("|", "&&", ";", "||") or w.endswith(";"):
            expect = True
    if any(p not in OK_PROGRAMS for p in programs):
        return f"runs {', '.join(p for p in programs if p not in OK_PROGRAMS)}"
    return ""


def _tiny_mixtral(folder: Path) -> None:
    """A complete two-expert, one-layer Mixtral folder (one safetensors shard: header, zero data)."""
    import json
    import struct

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                                                    "num_local_experts": 2, "num_hidden_layers": 1}))
    header, offset = {}, 0
    for e in range(2):
        for part in ("w1", "w2", "w3"):
            header[f"model.layers.0.block_sparse_moe.experts.{e}.{part}.weight"] = {
                "dtype": "BF16", "shape": [2, 2], "data_offsets": [offset, offset + 8]}
            offset += 8
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A folder with every file the examples name, and a PATH whose `moe-env` is this checkout's."""
    root = tmp_path_factory.mktemp("readme")
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "moe-env").write_text(f"#!/bin/sh\nexec {sys.executable} -m moe_env \"$@\"\n")
    (bindir / "moe-env").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOE_ENV_", "PYTHON"))}
    env.update(PATH=f"{bindir}:{env.get('PATH', '')}", PYTHONPATH=str(REPO), NO_COLOR="1",
               MOE_ENV_CACHE_DIR=str(root / "cache"),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", UV_HTTP_TIMEOUT="2")
    work = root / "work"
    work.mkdir()
    run = lambda cmd: subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    run("moe-env lock minigemini -o requirements.lock")
    run("moe-env doctor --json > node07.json")
    (work / "reports").mkdir()
    run("moe-env doctor --json > reports/node01.json; moe-env doctor --json > reports/node02.json")
    (work / "train.log").write_text("[rank0]: RuntimeError: CUDA error: no kernel image is available for execution on the device\n")
    (work / "hostfile").write_text("worker-1 slots=8\nworker-2 slots=8\n")
    (work / "run.log").write_text("08/02 10:00:00 - mmengine - INFO - model.layers.0.mlp.experts.0.w1w3 not in state_dict, loading w1w3\n")
    (work / "wheels").mkdir()
    _tiny_mixtral(work / "work_dirs" / "mixtral-sft" / "hf_model")
    venv = root / "opt-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return {"env": env, "work": work, "venv": venv}


@pytest.mark.parametrize("where, line", EXAMPLES, ids=[f"{w}: {l[:60]}" for w, l in EXAMPLES])
def test_documented_example_runs(stage, tmp_path, where, line):
    reason = _skip_reason(line)
    if reason:
        pytest.skip(reason)
    line = line.replace("/opt/venv", str(stage["venv"]))
    work = tmp_path / "work"
    shutil.copytree(stage["work"], work, symlinks=True)
    for word in shlex.split(line):
        if "/" in word and not word.startswith(("-", "http")) and "=" not in word and not (work / word).exists() \
                and not Path(word).exists() and not (work / word).parent.exists() and word.count("/") > 1:
            pytest.skip(f"names {word}, which this test does not have")
    proc = subprocess.run(["bash", "-c", line], cwd=work, env=stage["env"], capture_output=True, text=True,
                          timeout=180)
    if proc.returncode == 3 and re.search(r"\block\b", line):
        pytest.skip("a fresh resolve: needs the network (exit 3 with the network cut)")
    assert proc.returncode in (0, 1), f"{where}: `{line}` exited {proc.returncode}: {proc.stderr[-1500:]}"
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-1500:]


def test_enough_examples_run():
    """The extraction itself can fail: most documented examples must be runnable here."""
    runnable = [line for _, line in EXAMPLES if not _skip_reason(line)]
    assert len(EXAMPLES) >= 15 and len(runnable) >= 10, (len(EXAMPLES), runnable)
