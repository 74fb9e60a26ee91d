"""`explain --python` picks one reading of a message that means "too old" in one release and "removed"
in another, from static evidence: the installed version, the installed source (read by the probe, never
imported) and the matrix's API tables; it says so when the evidence cannot decide.

Each test builds a real venv holding a stub transformers/deepspeed (dist-info + the few source lines that
matter, written here) and runs the CLI in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from doctor_support import moe_env_cli

ROOT = Path(__file__).resolve().parent.parent
TRAP = "raise ImportError('a stub: the probe must never import me')\n"


def _transformers(venv, version, *, shard=False, flash=False, cache_position=False):
    files = {
        "transformers/__init__.py": TRAP,
        "transformers/modeling_utils.py": "import os\n\n\ndef load_state_dict(path):\n    return {}\n"
        + ("\n\ndef shard_checkpoint(state_dict, max_shard_size='10GB'):\n    return {}\n" if shard else ""),
        "transformers/utils/__init__.py": "from .import_utils import is_torch_available"
        + (", is_flash_attn_available\n" if flash else "\n"),
        "transformers/utils/import_utils.py": "def is_torch_available():\n    return True\n"
        + ("\n\ndef is_flash_attn_available():\n    return False\n" if flash else ""),
        "transformers/models/__init__.py": "",
        "transformers/models/llama/__init__.py": "",
        "transformers/models/llama/modeling_llama.py": (
            "class LlamaForCausalLM:\n"
            f"    def forward(self, input_ids=None, labels=None{', cache_position=None' if cache_position else ''}):\n"
            "        return None\n"),
    }
    venv.add_dist("transformers", version, files=files)


def _deepspeed(venv, version, *, output_file):
    param = "output_file" if output_file else "output_dir"
    venv.add_dist("deepspeed", version, files={
        "deepspeed/__init__.py": TRAP,
        "deepspeed/utils/__init__.py": "from .logging import logger\n",
        "deepspeed/utils/logging.py": "logger = None\n",
        "deepspeed/utils/zero_to_fp32.py": (
            f"def convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir, {param}, tag=None):\n    return None\n"),
    })


def _explain(tmp_path, text, venv=None, *extra, matrix=None):
    log = tmp_path / "err.log"
    log.write_text(text)
    args = ["explain", str(log), "--json", *extra] + (["--python", str(venv.python)] if venv is not None else [])
    res = moe_env_cli(args, matrix=matrix)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    return {m["id"]: m for m in json.loads(res.stdout)["matches"]}


def test_picks_removed_when_the_installed_release_is_newer(tmp_path, venv_factory):
    venv = venv_factory()
    _transformers(venv, "4.47.0", shard=False)
    by = _explain(tmp_path, "ImportError: cannot import name 'shard_checkpoint' from 'transformers.modeling_utils' "
                  "(/venv/lib/python3.10/site-packages/transformers/modeling_utils.py)\n", venv)
    picked = by["hf-removed-shard-checkpoint"]["picked"]
    assert picked["reading"] == "removed" and picked["decided"] is True
    assert "transformers 4.47.0 is installed" in picked["why"]
    assert "shard_checkpoint is absent from it" in picked["why"]
    assert "last in 4.46.3" in picked["why"] and "release:transformers==4.46.3" in picked["why"]
    # the generic name issue on the same line picks the same reading from the same table row
    assert by["hf-name-not-in-release"]["picked"]["reading"] == "removed"


def test_picks_too_new_for_a_keyword_the_library_passes(tmp_path, venv_factory):
    """transformers >= 4.38 passes cache_position: its own LlamaForCausalLM.forward takes it (read statically)."""
    venv = venv_factory()
    _transformers(venv, "4.47.0", cache_position=True)
    text = "TypeError: LlavaLlamaForCausalLM.forward() got an unexpected keyword argument 'cache_position'\n"
    by = _explain(tmp_path, text, venv)
    picked = by["hf-unexpected-kwarg-cache-position"]["picked"]
    assert picked["reading"] == "too-new", picked
    assert "cache_position=) is present in it" in picked["why"] and "transformers>=4.38 holds" in picked["why"]
    # the generic forward() issue finds the same row through the class name (LlavaLlamaForCausalLM ~ LlamaForCausalLM)
    assert by["hf-forward-kwarg-drift"]["picked"]["reading"] == "too-new"
    # the text report prints the picked reading's cause and fix, with the evidence
    log = tmp_path / "err.log"
    res = moe_env_cli(["explain", str(log), "--python", str(venv.python)])
    assert res.returncode == 1
    out = " ".join(res.stdout.split())
    assert "picked: too-new" in out and "from 4.38 generate() passes cache_position" in out
    assert "Reading too-old" not in out


def test_picks_too_old_when_the_installed_release_predates_the_name(tmp_path, venv_factory):
    venv = venv_factory()
    _transformers(venv, "4.33.3", flash=False)
    by = _explain(tmp_path, "ImportError: cannot import name 'is_flash_attn_available' from 'transformers.utils' "
                  "(~/lib/python3.10/site-packages/transformers/utils/__init__.py)\n", venv)
    picked = by["hf-removed-is-flash-attn-available"]["picked"]
    assert picked["reading"] == "too-old", picked
    assert "first in 4.34.0" in picked["why"] and "transformers<4.34.0 holds" in picked["why"]


def test_picks_removed_for_a_keyword_a_deepspeed_function_lost(tmp_path, venv_factory):
    venv = venv_factory()
    _deepspeed(venv, "0.16.0", output_file=False)
    by = _explain(tmp_path, "TypeError: convert_zero_checkpoint_to_fp32_state_dict() got an unexpected keyword "
                  "argument 'output_file'\n", venv)
    picked = by["api-kwarg-not-in-release"]["picked"]
    assert picked["reading"] == "removed", picked
    assert "deepspeed 0.16.0 is installed" in picked["why"] and "last in 0.15.2" in picked["why"]


@pytest.mark.parametrize("case", ["name-present", "no-table-row", "not-installed", "submodule", "source-disagrees",
                                  "past-the-table"])
def test_says_when_the_evidence_cannot_decide(tmp_path, venv_factory, case):
    venv = venv_factory()
    if case == "name-present":  # the installed release has the name: this environment is not the one that failed
        _transformers(venv, "4.46.3", shard=True)
        text, issue = "ImportError: cannot import name 'shard_checkpoint' from 'transformers.modeling_utils'\n", \
            "hf-removed-shard-checkpoint"
        expect = "ruled out here"
    elif case == "no-table-row":
        _transformers(venv, "4.47.0")
        text, issue = "ImportError: cannot import name 'FancyNewThing' from 'transformers.modeling_utils'\n", \
            "hf-name-not-in-release"
        expect = "no row for transformers.modeling_utils.FancyNewThing"
    elif case == "not-installed":
        text, issue = "ImportError: cannot import name 'shard_checkpoint' from 'transformers.modeling_utils'\n", \
            "hf-removed-shard-checkpoint"
        expect = "transformers is not installed"
    elif case == "source-disagrees":  # 4.47 says cache_position is there; this install's forward() lacks it
        _transformers(venv, "4.47.0", cache_position=False)
        text, issue = "TypeError: LlavaLlamaForCausalLM.forward() got an unexpected keyword argument 'cache_position'\n", \
            "hf-unexpected-kwarg-cache-position"
        expect = "the installed source disagrees with the table"
    elif case == "past-the-table":  # absent from a release newer than any the table read: removed when? unknown
        _transformers(venv, "4.99.0")
        text, issue = "ImportError: cannot import name 'MixtralSparseMoeBlock' from " \
            "'transformers.models.mixtral.modeling_mixtral'\n", "hf-name-not-in-release"
        expect = "4.99.0 is newer than the table read"
    else:
        _deepspeed(venv, "0.16.0", output_file=False)
        text, issue = "AttributeError: module 'deepspeed.utils' has no attribute 'zero_to_fp32'\n", \
            "deepspeed-name-not-in-release"
        expect = "is a submodule"
    picked = _explain(tmp_path, text, venv)[issue]["picked"]
    assert picked["reading"] is None and picked["decided"] is False
    assert expect in picked["why"], picked["why"]


def test_without_python_both_readings_are_printed(tmp_path):
    text = "TypeError: LlavaLlamaForCausalLM.forward() got an unexpected keyword argument 'cache_position'\n"
    m = _explain(tmp_path, text)["hf-unexpected-kwarg-cache-position"]
    assert m["picked"] is None
    assert [(r["id"], r["when"]) for r in m["readings"]] == [("too-new", "transformers>=4.38"),
                                                             ("too-old", "transformers<4.38")]
    assert all(r["source"] and r["fix"] for r in m["readings"])
    res = moe_env_cli(["explain", str(tmp_path / "err.log")])
    assert res.returncode == 1
    out = " ".join(res.stdout.split())
    assert "Reading too-new (transformers>=4.38)" in out and "Reading too-old (transformers<4.38)" in out
    assert "picked:" not in out
    # the generic forward() issue fills its {package}/{first} from the API-table row the message selects
    assert "Reading too-new (transformers>=4.38.0)" in out


BAD_READINGS = [
    ('when = "transformers 4.38"', "not a requirement (Expected semicolon"),
    ('when = "transformers"', "names no version condition"),
    ('when = "{pkg}>{first}"', "unknown placeholder {pkg}"),
    ('when = "transformers[torch]>=4.38"', "no extras"),
]


@pytest.mark.parametrize("bad,reason", BAD_READINGS)
def test_a_malformed_reading_is_a_load_error(tmp_path, bad, reason):
    matrix = tmp_path / "m"
    shutil.copytree(ROOT / "compat_matrix", matrix)
    path = matrix / "generic" / "transformers.toml"
    text = path.read_text()
    good = 'when = "transformers<4.38"'
    assert text.count(good) == 1
    path.write_text(text.replace(good, bad))
    log = tmp_path / "err.log"
    log.write_text("TypeError: X.forward() got an unexpected keyword argument 'cache_position'\n")
    res = moe_env_cli(["explain", str(log)], matrix=matrix, env={"MOE_ENV_NO_CACHE": "1"})
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.startswith("moe-env: error: ") and "Traceback" not in res.stderr
    assert "generic/transformers.toml: known_issue[" in res.stderr and ".readings[1].when" in res.stderr
    assert reason in res.stderr


def test_a_reading_without_source_or_a_lone_reading_is_a_load_error(tmp_path):
    matrix = tmp_path / "m"
    shutil.copytree(ROOT / "compat_matrix", matrix)
    path = matrix / "generic" / "transformers.toml"
    text = path.read_text()
    src = 'source = ["release:transformers==4.38.0:transformers/models/llama/modeling_llama.py:1122"]\n'
    assert src in text
    path.write_text(text.replace(src, "", 1))
    res = moe_env_cli(["matrix", "validate"], matrix=matrix, env={"MOE_ENV_NO_CACHE": "1"})
    assert res.returncode == 2 and "readings[1].source: missing" in res.stderr, res.stderr


STRUCTURAL = [
    # (text to replace once, replacement, what the error says)
    ('id = "too-old"\nwhen = "transformers<4.38"', 'id = "too-new"\nwhen = "transformers<4.38"', "duplicate reading id 'too-new'"),
    ("cannot import name '(?P<name>\\\\w+)' from '(?P<module>transformers(?:\\\\.[\\\\w.]+)?)'",
     "cannot import name '(?P<nm>\\\\w+)' from '(?P<module>transformers(?:\\\\.[\\\\w.]+)?)'", "need `symbol`, or patterns"),
    ('param = "cache_position"\n', 'param = "cache_positions"\n', "no [[api]] row for transformers.models.llama"),
]


@pytest.mark.parametrize("old,new,reason", STRUCTURAL)
def test_structural_reading_errors_are_load_errors(tmp_path, old, new, reason):
    from moe_env.errors import MatrixError
    from moe_env.matrix.loader import load_matrix

    matrix = tmp_path / "m"
    shutil.copytree(ROOT / "compat_matrix", matrix)
    path = matrix / "generic" / "transformers.toml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    with pytest.raises(MatrixError, match=re.escape(reason)):
        load_matrix(matrix)


def test_a_lone_reading_is_a_load_error(tmp_path):
    from moe_env.errors import MatrixError
    from moe_env.matrix.loader import load_matrix

    matrix = tmp_path / "m"
    shutil.copytree(ROOT / "compat_matrix", matrix)
    path = matrix / "generic" / "transformers.toml"
    text = path.read_text()
    start = text.index('[[known_issue.readings]]\nid = "too-old"\nwhen = "transformers<4.38"')
    end = text.index("[[known_issue]]", start)
    path.write_text(text[:start] + text[end:])
    with pytest.raises(MatrixError, match=r"readings: an ambiguous message has two or more readings"):
        load_matrix(matrix)


def test_picks_too_old_for_a_keyword_a_deepspeed_class_gained_later(tmp_path, venv_factory):
    """MoE.__init__(top2_2nd_expert_sampling=) exists from deepspeed 0.14.0; 0.13.5's MoE does not take it."""
    from fakes import deepspeed_files

    venv = venv_factory()
    venv.add_dist("deepspeed", "0.13.5", files=deepspeed_files("0.13.5", z3_leaf=True))
    text = "[rank0]: TypeError: MoE.__init__() got an unexpected keyword argument 'top2_2nd_expert_sampling'\n"
    picked = _explain(tmp_path, text, venv)["api-kwarg-not-in-release"]["picked"]
    assert picked["reading"] == "too-old", picked
    assert "deepspeed 0.13.5 is installed" in picked["why"] and "first in 0.14.0" in picked["why"]
    assert "absent from it (deepspeed/moe/layer.py" in picked["why"]
