"""The maintainer tool that regenerates compat_matrix/entry_points/*.toml, run on upstream-shaped trees the tests write.

Each tree is a real git repository (read through `git show COMMIT:PATH`, as the tool reads a bare
clone) or a real wheel (a zip); nothing in them is imported.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from moe_env.matrix.loader import load_matrix

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def git_tree(root, files):
    root.mkdir(parents=True)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    run = lambda *a: subprocess.run(["git", "-C", str(root), *a], check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "-q")
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    return run("rev-parse", "HEAD").stdout.strip()


def tool(*args):
    p = subprocess.run([sys.executable, "-m", "moe_env.matrix.entry_flags", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


TRAIN_PY = '''
import transformers
from dataclasses import dataclass, field
from typing import Optional

@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default="facebook/opt-125m")
    moe_enable: bool = False
    use_cache: bool = field(default=True, metadata={"aliases": ["--cache"]})

@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "x"})

@dataclass
class TrainingArguments(transformers.TrainingArguments):
    remove_unused_columns: bool = field(default=False)
    _hidden: int = field(init=False, default=0)

def train():
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
'''

TRAINING_ARGS = '''
from dataclasses import dataclass, field
from typing import Optional

@dataclass
class TrainingArguments:
    output_dir: str = field(metadata={"help": "out"})
    remove_unused_columns: Optional[bool] = field(default=True)
    bf16: bool = field(default=False)
    _n_gpu: int = field(init=False, repr=False, default=-1)
'''

HF_ARGPARSER = '''
def string_to_bool(v):
    pass
        parser.add_argument(field_name, *aliases, **kwargs)
            parser.add_argument(f"--no_{field.name}", action="store_false", dest=field.name, **bool_kwargs)
'''


def test_hf_entry_point_fields_bases_aliases_and_no_flags(tmp_path):
    commit = git_tree(tmp_path / "mgm", {"mgm/train/train.py": TRAIN_PY})
    wheel = tmp_path / "transformers-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("transformers/training_args.py", TRAINING_ARGS)
        zf.writestr("transformers/hf_argparser.py", HF_ARGPARSER)
    out = tool("minigemini", "--repo", tmp_path / "mgm", "--commit", commit, "--transformers-wheel", wheel)
    ep = tomllib.loads(out)["entry_point"][0]
    flags = set(ep["flags"])
    assert {"--model_name_or_path", "--moe_enable", "--use_cache", "--cache", "--no_use_cache", "--data_path",
            "--output_dir", "--remove_unused_columns", "--bf16", "-h", "--help"} == flags
    # the subclass's remove_unused_columns defaults to False: no --no_ flag; init=False fields are not flags
    assert ep["parser"] == "hf" and ep["allow_abbrev"] is True
    assert set(ep["bool_value_flags"]) == {"--moe_enable", "--use_cache", "--cache", "--remove_unused_columns", "--bf16"}
    assert set(ep["no_value_flags"]) == {"-h", "--help", "--no_use_cache"}
    assert any(s.startswith(f"dvlab-research/MGM@{commit}:mgm/train/train.py") for s in ep["source"])
    assert any(s.startswith("release:transformers==9.9.9:") for s in ep["source"])


ARGUMENTS_PY = '''
import argparse
from megatron.training.argument_utils import ArgumentGroupFactory

def parse_args(extra_args_provider=None, ignore_unknown_args=False):
    parser = argparse.ArgumentParser(description='Megatron-LM Arguments', allow_abbrev=False)

def _add_network_size_args(parser):
    exclude = ["skip_me"]
    from megatron.core.transformer import TransformerConfig
    factory = ArgumentGroupFactory(TransformerConfig, exclude=exclude)
    factory.build_group(parser, "transformer")
    group = parser.add_argument_group(title='network size')
    group.add_argument('--num-layers', type=int, default=None)
    group.add_argument('--offload', action=argparse.BooleanOptionalAction, default=False)
    return parser
'''

CONFIG_PY = '''
from dataclasses import dataclass, field
from typing import Optional

@dataclass
class ModelParallelConfig:
    tensor_model_parallel_size: int = 1
    sequence_parallel: bool = False

@dataclass
class TransformerConfig(ModelParallelConfig):
    num_moe_experts: Optional[int] = field(default=None, metadata={"argparse_meta": {"arg_names": ["--num-experts"]}})
    moe_grouped_gemm: bool = False
    add_bias_linear: bool = True
    skip_me: int = 0
    computed: int = field(init=False, default=0)
'''


def test_megatron_add_argument_and_dataclass_factories(tmp_path):
    commit = git_tree(tmp_path / "mlm", {"megatron/training/arguments.py": ARGUMENTS_PY,
                                         "megatron/core/transformer/transformer_config.py": CONFIG_PY,
                                         "megatron/core/model_parallel_config.py": "x = 1\n"})
    ep = tomllib.loads(tool("megatron", "--repo", tmp_path / "mlm", "--commit", commit))["entry_point"][0]
    assert ep["allow_abbrev"] is False and ep["parser"] == "argparse"
    assert set(ep["flags"]) == {"-h", "--help", "--num-layers", "--offload", "--no-offload", "--tensor-model-parallel-size",
                                "--sequence-parallel", "--num-experts", "--moe-grouped-gemm", "--no-add-bias-linear",
                                "--disable-add-bias-linear"}
    assert set(ep["no_value_flags"]) == {"-h", "--help", "--offload", "--no-offload", "--sequence-parallel",
                                         "--moe-grouped-gemm", "--no-add-bias-linear", "--disable-add-bias-linear"}


def test_xtuner_train_flags_and_config_names(tmp_path):
    train = ("import argparse\n\ndef parse_args():\n    parser = argparse.ArgumentParser(description='Train LLM')\n"
             "    parser.add_argument('config')\n    parser.add_argument('--work-dir')\n"
             "    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)\n")
    commit = git_tree(tmp_path / "xt", {"xtuner/tools/train.py": train, "xtuner/configs/a/b/mixtral_x.py": "",
                                        "xtuner/configs/deepspeed/deepspeed_zero3.json": "{}",
                                        "xtuner/configs/_base_.py": "", "xtuner/configs/__init__.py": ""})
    ep = tomllib.loads(tool("xtuner", "--repo", tmp_path / "xt", "--commit", commit))["entry_point"][0]
    assert set(ep["flags"]) == {"-h", "--help", "--work-dir", "--local_rank", "--local-rank"} and ep["allow_abbrev"] is True
    configs = tomllib.loads(tool("xtuner-configs", "--repo", tmp_path / "xt", "--commit", commit))["configs"]
    assert configs == ["deepspeed_zero3", "mixtral_x"]


def test_shipped_flag_lists_are_generated_at_each_projects_pinned_commit():
    for p in load_matrix().projects.values():
        assert len(p.entry_points) == 1 and p.entry_points[0].default, p.name
        ep = p.entry_points[0]
        pinned = [s for s in ep.source if s.startswith(f"{p.info.repo}@")]
        assert pinned and all(s.startswith(f"{p.info.repo}@{p.info.commit}:") for s in pinned), (p.name, pinned)
        assert len(ep.flags) == len(set(ep.flags)) and "--help" in ep.flags
    with open(load_matrix().root + "/entry_points/megatron.toml", encoding="utf-8") as fh:
        assert "Generated by `python -m moe_env.matrix.entry_flags megatron" in fh.read()


@pytest.mark.parametrize("project,transformers", [("minigemini", "4.36.2"), ("moe-llava", "4.37.0")])
def test_hf_flag_lists_cite_the_pinned_transformers(project, transformers):
    p = load_matrix().project(project)
    pin = next(x for x in p.pins if x.package == "transformers")
    assert pin.spec == f"=={transformers}"
    assert any(s.startswith(f"release:transformers=={transformers}:") for s in p.entry_points[0].source)


def test_older_megatron_layout_megatron_arguments_py(tmp_path):
    old = ("import argparse\n\ndef parse_args(extra_args_provider=None, ignore_unknown_args=False):\n"
           "    parser = argparse.ArgumentParser(description='Megatron-LM Arguments', allow_abbrev=False)\n"
           "    parser.add_argument('--num-experts', type=int)\n    parser.add_argument('--fp16', action='store_true')\n")
    commit = git_tree(tmp_path / "old", {"megatron/arguments.py": old})
    ep = tomllib.loads(tool("megatron", "--repo", tmp_path / "old", "--commit", commit))["entry_point"][0]
    assert set(ep["flags"]) == {"-h", "--help", "--num-experts", "--fp16"} and "--fp16" in ep["no_value_flags"]
    assert any(":megatron/arguments.py:" in s for s in ep["source"])
