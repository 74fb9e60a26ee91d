"""The "cannot import name X from Y" conflicts between installed packages (generic.toml, generic/imports.toml).

Each pair is one that pip's metadata allows (the consumer's real Requires-Dist lines are written into the fake
dist-info here, and doctor's own requirements check must stay quiet about them), yet the consumer imports a name
the provider release lacks. Doctor judges real venvs across the process boundary; explain is fed the error lines
users pasted (the threads are named beside each line).
"""

from __future__ import annotations

import json
import os
import re

import pytest

from doctor_support import add_deepspeed, add_plain, add_torch, moe_env_cli
from moe_env.matrix.consistency import conflict_problems
from moe_env.matrix.loader import load_matrix
from moe_env.matrix.model import Conflict, Matrix
from moe_env.triage import explain_text

HOST = {"MOE_ENV_CUDA_DRIVER_VERSION": "550.54.15", "MOE_ENV_GPUS": "H100:9.0x8", "MOE_ENV_NVCC_VERSION": "12.1"}

# Requires-Dist as the real wheels declare them (peft 0.15.0 / 0.21.2 METADATA, trl 0.7.11 METADATA)
PEFT_REQUIRES = ["transformers", "accelerate>=0.21.0"]
TRL_REQUIRES = ["transformers>=4.31.0"]


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def doctor_json(venv):
    res = moe_env_cli(["doctor", "--python", str(venv.python), "--json"], env=HOST)
    assert res.returncode in (0, 1), res.stderr
    return res, json.loads(res.stdout)["findings"]


def by_id(findings):
    return {f["id"]: f for f in findings}


# ------------------------------------------------------------------ the table itself


def test_shipped_conflicts_are_consistent(matrix):
    assert conflict_problems(matrix) == []
    ids = {c.id for c in matrix.conflicts}
    assert {"peft-0.14-with-transformers-before-4.43", "peft-0.15-with-accelerate-before-0.32",
            "accelerate-0.32-with-huggingface-hub-before-0.21", "deepspeed-before-0.14.4-with-torch-2.4",
            "trl-before-0.8-with-transformers-4.39", "sentence-transformers-2.2-with-huggingface-hub-0.26",
            "diffusers-before-0.29-with-huggingface-hub-0.26", "peft-0.16-with-transformers-5"} <= ids
    for c in matrix.conflicts:
        if c.id in ids and c.severity == "error":
            # an error cites the artifact that shows the failure
            assert any(s.startswith("release:") for s in c.source) or any("#" in s for s in c.source), c.id


def test_conflict_problems_catch_bad_rows():
    def row(**kw):
        base = dict(id="x", when={"peft": ">=0.14.0", "transformers": "<4.43.0"}, severity="error", title="t",
                    why="w", fix="f", source=["release:peft==0.14.0:peft/peft_model.py:37", "release:transformers==4.43.0:transformers/cache_utils.py:1000"],
                    requirement="peft<0.14.0")
        base.update(kw)
        return Conflict(**base)

    bad = Matrix(root="", conflicts=[
        row(id="fine"),
        row(id="underscore", when={"peft": ">=0.14.0", "huggingface_hub": "<0.21"}),
        row(id="unknown", when={"peft": ">=0.14.0", "pefft": "<1"}),
        row(id="badspec", when={"peft": ">=0.14.0", "transformers": "4.43 or less"}),
        row(id="overlap", requirement="peft<0.15.0"),
        row(id="other-package", requirement="torch>=2.4"),
        row(id="lonely", when={"peft": ">=0.14.0"}, requirement=""),
        row(id="alt-fine", alternative="transformers>=4.43.0"),
        row(id="alt-overlap", alternative="transformers>=4.40"),
        row(id="alt-same-package", alternative="peft>=0.18.0"),
    ])
    problems = conflict_problems(bad)
    text = "\n".join(problems)
    assert "conflict fine:" not in text
    assert re.search(r"underscore: .*'huggingface_hub' is not a canonical distribution name", text)
    assert re.search(r"unknown: .*'pefft' is no distribution the matrix knows", text)
    assert re.search(r"badspec: .*is not a version specifier", text)
    assert re.search(r"overlap: requirement 'peft<0.15.0' overlaps", text)
    assert re.search(r"other-package: requirement 'torch>=2.4' is not a plain requirement on a `when` package", text)
    assert re.search(r"lonely: `when` names 1 package", text)
    assert "conflict alt-fine:" not in text
    assert re.search(r"alt-overlap: alternative 'transformers>=4.40' overlaps", text)
    assert re.search(r"alt-same-package: alternative 'peft>=0.18.0' is not a plain requirement on another", text)


def test_matrix_validate_reports_a_bad_conflict(tmp_path):
    """`moe-env matrix validate` on a copy of the matrix whose conflict names an unknown distribution: exit 1."""
    import shutil

    from moe_env.paths import matrix_dir

    copy = tmp_path / "matrix"
    shutil.copytree(matrix_dir(), copy)
    gen = copy / "generic.toml"
    gen.write_text(gen.read_text(encoding="utf-8").replace('when = { trl = ">=0.4.7,<0.8.0"', 'when = { trll = ">=0.4.7,<0.8.0"'),
                   encoding="utf-8")
    res = moe_env_cli(["matrix", "validate"], matrix=copy)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "conflict trl-before-0.8-with-transformers-4.39: `when` package 'trll'" in res.stdout + res.stderr


# ------------------------------------------------------------------ doctor on real venvs


def test_peft_014_with_transformers_441(venv_factory):
    bad = venv_factory()
    add_plain(bad, "peft", "0.14.0", requires=PEFT_REQUIRES)
    add_plain(bad, "accelerate", "0.34.2")
    add_plain(bad, "transformers", "4.41.2")
    res, findings = doctor_json(bad)
    hit = by_id(findings)["peft-0.14-with-transformers-before-4.43"]
    assert hit["severity"] == "error" and res.returncode == 1
    assert hit["seen"] == "peft 0.14.0 with transformers 4.41.2 installed"
    assert hit["requirement"] == "peft<0.14.0" and "'peft<0.14'" in hit["fix"]
    assert "cannot import name 'EncoderDecoderCache' from 'transformers'" in hit["why"]
    assert not [f for f in findings if f["id"].startswith("deps.")], findings  # pip's metadata allows the pair
    good = venv_factory()
    add_plain(good, "peft", "0.13.2", requires=PEFT_REQUIRES)
    add_plain(good, "accelerate", "0.34.2")
    add_plain(good, "transformers", "4.41.2")
    _, findings = doctor_json(good)
    assert not [f for f in findings if f["id"].startswith("peft-")], findings


def test_peft_017_with_transformers_5(venv_factory):
    v = venv_factory()
    add_plain(v, "peft", "0.17.1", requires=PEFT_REQUIRES)
    add_plain(v, "accelerate", "1.10.1")
    add_plain(v, "transformers", "5.0.0")
    _, findings = doctor_json(v)
    hit = by_id(findings)["peft-0.16-with-transformers-5"]
    assert hit["severity"] == "error" and hit["requirement"] == "peft>=0.18.0"
    assert [f["id"] for f in findings if f["id"].startswith("peft-")] == ["peft-0.16-with-transformers-5"]
    w = venv_factory()
    add_plain(w, "peft", "0.18.0", requires=PEFT_REQUIRES)
    add_plain(w, "accelerate", "1.10.1")
    add_plain(w, "transformers", "5.0.0")
    _, findings = doctor_json(w)
    assert not [f for f in findings if f["id"].startswith("peft-")], findings


def test_deepspeed_0140_with_torch_24(venv_factory):
    bad = venv_factory()
    add_torch(bad, "2.4.0+cu121", "12.1", requires=[])
    add_deepspeed(bad, "0.14.0", z3_leaf=True, built_torch="2.4", requires=["torch", "pydantic"])
    add_plain(bad, "pydantic", "1.10.13")
    _, findings = doctor_json(bad)
    hit = by_id(findings)["deepspeed-before-0.14.4-with-torch-2.4"]
    assert hit["severity"] == "error" and hit["requirement"] == "deepspeed>=0.14.4"
    assert hit["seen"] == "deepspeed 0.14.0 with torch 2.4.0+cu121 installed"
    fixed = venv_factory()
    add_torch(fixed, "2.4.0+cu121", "12.1", requires=[])
    add_deepspeed(fixed, "0.14.4", z3_leaf=True, built_torch="2.4", requires=["torch", "pydantic"])
    add_plain(fixed, "pydantic", "1.10.13")
    _, findings = doctor_json(fixed)
    assert "deepspeed-before-0.14.4-with-torch-2.4" not in by_id(findings)


def test_accelerate_032_with_old_hub_and_033_left_to_metadata(venv_factory):
    """0.32.x declares huggingface-hub without a bound (the conflict row); 0.33.0 declares >=0.21.0 (deps.conflict)."""
    v = venv_factory()
    add_plain(v, "accelerate", "0.32.1", requires=["huggingface-hub"])
    add_plain(v, "huggingface-hub", "0.20.3", package="huggingface_hub")
    _, findings = doctor_json(v)
    hit = by_id(findings)["accelerate-0.32-with-huggingface-hub-before-0.21"]
    assert hit["severity"] == "error" and hit["requirement"] == "huggingface-hub>=0.21.0"
    w = venv_factory()
    add_plain(w, "accelerate", "0.33.0", requires=["huggingface-hub>=0.21.0"])
    add_plain(w, "huggingface-hub", "0.20.3", package="huggingface_hub")
    _, findings = doctor_json(w)
    ids = [f["id"] for f in findings]
    assert "accelerate-0.32-with-huggingface-hub-before-0.21" not in ids and ids.count("deps.conflict") == 1


def test_several_conflicts_one_fix_line_without_contradictions(venv_factory):
    """Four conflicts fire; both peft ones are fixed by one peft range (merged into one finding), and the report's
    one-command fix names each package once, every requirement satisfiable together."""
    v = venv_factory()
    add_torch(v, "2.4.0+cu121", "12.1", requires=[])
    add_deepspeed(v, "0.14.0", z3_leaf=True, built_torch="2.4", requires=["torch"])
    add_plain(v, "peft", "0.15.0", requires=PEFT_REQUIRES)
    add_plain(v, "accelerate", "0.31.0")
    add_plain(v, "transformers", "4.41.2")
    add_plain(v, "trl", "0.7.11", requires=TRL_REQUIRES)
    res, findings = doctor_json(v)
    ids = [f["id"] for f in findings]
    assert "deepspeed-before-0.14.4-with-torch-2.4" in ids and "trl-before-0.8-with-transformers-4.39" in ids
    peft = [f for f in findings if f.get("requirement", "").startswith("peft")]
    assert len(peft) == 1, peft  # one finding for the one fix
    assert peft[0]["requirement"] == "peft<0.14.0"
    assert "peft-0.14-with-transformers-before-4.43" in peft[0]["seen"] and "peft-0.15-with-accelerate-before-0.32" in peft[0]["seen"]

    text = moe_env_cli(["doctor", "--python", str(v.python)], env=HOST).stdout
    lines = text.splitlines()
    at = lines.index("Fix (all requirement fixes above, in one command):")
    fix = lines[at + 1]
    reqs = re.findall(r"'([^']+)'", fix)
    assert {"peft<0.14.0", "deepspeed>=0.14.4", "trl>=0.8.0"} <= set(reqs), fix
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in reqs]
    assert len(names) == len(set(names)), fix  # each package once: no two ranges to contradict each other


def test_fix_keeps_inside_the_project_pins(venv_factory):
    """MoE-LLaVA pins deepspeed==0.9.5: with torch 2.4 the way out is torch<2.4, not deepspeed>=0.14.4 (which would
    trade this error for the project's deepspeed-pin warning); without a project, deepspeed>=0.14.4."""
    v = venv_factory()
    add_torch(v, "2.4.0+cu121", "12.1", requires=[])
    add_deepspeed(v, "0.9.5", z3_leaf=False, built_torch="2.4", requires=["torch", "pydantic"])
    add_plain(v, "pydantic", "1.10.13")
    res = moe_env_cli(["doctor", "moe-llava", "--python", str(v.python), "--json"], env=HOST)
    hit = by_id(json.loads(res.stdout)["findings"])["deepspeed-before-0.14.4-with-torch-2.4"]
    assert hit["requirement"] == "torch<2.4" and "keeps deepspeed==0.9.5" in hit["fix"], hit
    _, findings = doctor_json(v)
    assert by_id(findings)["deepspeed-before-0.14.4-with-torch-2.4"]["requirement"] == "deepspeed>=0.14.4"


def test_trl_with_transformers_439(venv_factory):
    v = venv_factory()
    add_plain(v, "trl", "0.7.11", requires=TRL_REQUIRES)
    add_plain(v, "transformers", "4.39.0")
    _, findings = doctor_json(v)
    hit = by_id(findings)["trl-before-0.8-with-transformers-4.39"]
    assert hit["severity"] == "error" and hit["requirement"] == "trl>=0.8.0"
    assert not [f for f in findings if f["id"].startswith("deps.")]


# ------------------------------------------------------------------ explain on the lines users pasted

PASTED = [
    # haotian-liu/LLaVA#1794 (peft 0.14.0 next to LLaVA's transformers)
    ("ImportError: cannot import name 'EncoderDecoderCache' from 'transformers' "
     "(/home_data/home/geyx2023/.conda/envs/llava/lib/python3.10/site-packages/transformers/__init__.py)",
     "peft-needs-transformers-cache-classes"),
    # zai-org/GLM-Image#3 (peft 0.17 next to transformers 5.0)
    ("ImportError: cannot import name 'HybridCache' from 'transformers' "
     "(/usr/local/lib/python3.12/dist-packages/transformers/__init__.py)",
     "transformers-5-removed-hybrid-cache"),
    # smthemex/ComfyUI_Sonic#8 (transformers older than 4.36: Cache is the first missing name)
    ("ImportError: cannot import name 'Cache' from 'transformers' "
     "(F:\\ComfyUI-aki-v1.5\\ComfyUI-aki-v1.5\\python\\lib\\site-packages\\transformers\\__init__.py)",
     "peft-needs-transformers-cache-classes"),
    # OpenBMB/MiniCPM-V#926 / smthemex/ComfyUI_Stable_Makeup#32
    ("ImportError: cannot import name 'clear_device_cache' from 'accelerate.utils.memory' "
     "(C:\\Users\\User\\.pyenv-win-venv\\envs\\comfy11\\Lib\\site-packages\\accelerate\\utils\\memory.py)",
     "accelerate-lacks-clear-device-cache"),
    # ZhangXInFD/SpeechTokenizer#12 (huggingface_hub 0.20.3)
    ("ImportError: cannot import name 'split_torch_state_dict_into_shards' from 'huggingface_hub' "
     "(/home/ehosseiniasl/.local/lib/python3.10/site-packages/huggingface_hub/__init__.py)",
     "huggingface-hub-lacks-split-torch-state-dict"),
    # deepspeedai/DeepSpeed#5337
    ("ImportError: cannot import name 'log' from 'torch.distributed.elastic.agent.server.api' "
     "(/root/miniconda3/lib/python3.11/site-packages/torch/distributed/elastic/agent/server/api.py)",
     "deepspeed-torch-elastic-log-removed"),
    # deepspeedai/DeepSpeed#5603 (deepspeed 0.14.1-0.14.3 with torch 2.4)
    ("cannot import name '_get_socket_with_port' from 'torch.distributed.elastic.agent.server.api'",
     "deepspeed-torch-elastic-log-removed"),
    # huggingface/trl#1409
    ("ImportError: cannot import name 'top_k_top_p_filtering' from 'transformers' "
     "(/usr/local/lib/python3.10/dist-packages/transformers/__init__.py)",
     "trl-top-k-top-p-filtering-removed"),
    # huggingface/sentence-transformers#3001
    ("E   ImportError: cannot import name 'cached_download' from 'huggingface_hub' "
     "(/usr/local/lib/python3.11/site-packages/huggingface_hub/__init__.py)",
     "huggingface-hub-cached-download-removed"),
]


@pytest.mark.parametrize("line,expect", PASTED, ids=[e for _, e in PASTED])
def test_pasted_line_names_the_cause_first(matrix, line, expect):
    found = explain_text(line, matrix).results()
    assert found and found[0].issue.id == expect, [m.issue.id for m in found]
    issue = found[0].issue
    conflicts = {c.id: c for c in matrix.conflicts}
    assert issue.doctor and all(d in conflicts for d in issue.doctor), issue.doctor
    # the known issue and the conflict that predicts it give the same fix direction
    assert any(c.requirement.split("<")[0].split(">")[0] in issue.fix for c in (conflicts[d] for d in issue.doctor))


def test_explain_python_confirms_from_the_installed_versions(venv_factory, tmp_path):
    """explain --python on the DeepSpeed#5337 line: the venv's deepspeed 0.14.0 + torch 2.4 confirm the cause."""
    v = venv_factory()
    add_torch(v, "2.4.0+cu121", "12.1", requires=[])
    add_deepspeed(v, "0.14.0", z3_leaf=True, built_torch="2.4", requires=["torch"])
    log = tmp_path / "train.log"
    log.write_text("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    import deepspeed\n"
                   + next(line for line, e in PASTED if "'log'" in line) + "\n")
    res = moe_env_cli(["explain", str(log), "--python", str(v.python), "--json"], env=HOST)
    assert res.returncode == 1, res.stderr
    by = {m["id"]: m for m in json.loads(res.stdout)["matches"]}
    confirmation = by["deepspeed-torch-elastic-log-removed"]["confirmation"]
    assert confirmation.startswith("confirmed in ") and "deepspeed-before-0.14.4-with-torch-2.4" in confirmation
    w = venv_factory()
    add_torch(w, "2.3.1+cu121", "12.1", requires=[])
    add_deepspeed(w, "0.14.0", z3_leaf=True, built_torch="2.3", requires=["torch"])
    res = moe_env_cli(["explain", str(log), "--python", str(w.python), "--json"], env=HOST)
    by = {m["id"]: m for m in json.loads(res.stdout)["matches"]}
    assert by["deepspeed-torch-elastic-log-removed"]["confirmation"].startswith("not seen in ")


def test_explain_python_on_the_peft_line_confirms_and_reads_the_api_table(venv_factory, tmp_path):
    """haotian-liu/LLaVA#1794's line against a venv with peft 0.14.0 and transformers 4.41.2: the conflict confirms the
    specific issue, and the generic transformers issue picks `too-old` from the API table's EncoderDecoderCache row."""
    v = venv_factory()
    add_plain(v, "peft", "0.14.0", requires=PEFT_REQUIRES)
    add_plain(v, "accelerate", "0.34.2")
    add_plain(v, "transformers", "4.41.2")
    log = tmp_path / "x.log"
    log.write_text(PASTED[0][0] + "\n")
    res = moe_env_cli(["explain", str(log), "--python", str(v.python), "--json"], env=HOST)
    assert res.returncode == 1, res.stderr
    by = {m["id"]: m for m in json.loads(res.stdout)["matches"]}
    assert by["peft-needs-transformers-cache-classes"]["confirmation"].startswith("confirmed in ")
    picked = by["hf-name-not-in-release"]["picked"]
    assert picked["reading"] == "too-old" and "first in 4.43.0" in picked["why"], picked


def test_explain_text_lists_the_specific_issue_before_the_generic_one():
    """The text report keeps explain's order within a severity (most specific first), as --json does."""
    import subprocess
    import sys

    line = "ImportError: cannot import name 'EncoderDecoderCache' from 'transformers' (/x/transformers/__init__.py)\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    env["NO_COLOR"] = "1"
    text = subprocess.run([sys.executable, "-m", "moe_env", "explain", "-"], input=line, capture_output=True,
                          text=True, env=env, timeout=60).stdout
    as_json = subprocess.run([sys.executable, "-m", "moe_env", "explain", "-", "--json"], input=line,
                             capture_output=True, text=True, env=env, timeout=60).stdout
    ids = [m["id"] for m in json.loads(as_json)["matches"]]
    assert ids[0] == "peft-needs-transformers-cache-classes" and "hf-name-not-in-release" in ids
    shown = [i for i in ids if f"[{i}]" in text]
    assert shown == ids and text.index(f"[{ids[0]}]") < text.index("[hf-name-not-in-release]")
