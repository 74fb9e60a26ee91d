"""`moe-env explain`: real error and log lines from the four projects' trackers, each explained.

Every line below is quoted from the issue named beside it (GitHub, read through the issues corpus);
the matrix's [[known_issue]] patterns must explain each one, and ordinary training logs must not
match anything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moe_env.matrix.loader import load_matrix
from moe_env.matrix.model import KnownIssue, Matrix, Project, ProjectInfo
from moe_env.triage import Triage, explain_text

# (project, where the line was reported, the line as reported, benign?)
REAL_LINES = [
    ("moe-llava", "PKU-YuanGroup/MoE-LLaVA#44",
     "AssertionError: The model has moe layers, but None of the param groups are marked as MoE. Create a param "
     "group with 'moe' key set to True before creating optimizer", False),
    ("moe-llava", "PKU-YuanGroup/MoE-LLaVA#12",
     "/deepspeed/comm/comm.py\", line 341, in all_to_all_single return cdb.all_to_all_single(output=output, "
     "AttributeError: 'NoneType' object has no attribute 'all_to_all_single'", False),
    ("moe-llava", "deepspeedai/DeepSpeed#2870 (the assertion MoE-LLaVA#20 hits with zero3)",
     '    assert not self.has_moe_layers, "MoE not supported with Stage 3"', False),
    ("megatron", "NVIDIA/Megatron-LM#924",
     '[rank3]:        Missing key(s) in state_dict: "decoder.layers.0.mlp.experts.weight1", '
     '"decoder.layers.0.mlp.experts.weight2", "decoder.layers.1.mlp.experts.weight1", '
     '"decoder.layers.1.mlp.experts.weight2", "decoder.layers.2.mlp.experts.weight1"', False),
    ("minigemini", "JIA-Lab-research/MGM#34",
     "TypeError: MiniGeminiMixtralForCausalLM.forward() got an unexpected keyword argument 'output_router_logits'", False),
    ("xtuner", "InternLM/xtuner#879",
     "model.layers.7.mlp.experts.3.w1w3 not in state_dict, loading "
     "deepseek-ai/DeepSeek-V2-Lite/model-00002-of-000004.safetensors", True),
    ("xtuner", "InternLM/xtuner#744",
     "flash_attn_func() got an unexpected keyword argument 'window_size'", False),
    ("xtuner", "InternLM/xtuner#925",
     "[rank1]: AttributeError: 'Qwen2FlashAttention2' object has no attribute '_flash_attention_forward'", False),
]

# An ordinary run: DeepSpeed/HF trainer/Megatron/XTuner progress lines that mention experts, MoE,
# state_dict, loss, ZeRO and safetensors without anything being wrong.
CLEAN_LOG = """\
[2024-02-03 10:12:01,123] [INFO] [real_accelerator.py:158:get_accelerator] Setting ds_accelerator to cuda (auto detect)
[2024-02-03 10:12:05,456] [INFO] [logging.py:96:log_dist] [Rank 0] DeepSpeed info: version=0.9.5, git-hash=unknown, git-branch=unknown
[2024-02-03 10:12:05,457] [INFO] [logging.py:96:log_dist] [Rank 0] Creating MoE layer with num_experts: 4 | num_local_experts: 4 | expert_parallel_size: 1
[2024-02-03 10:12:07,001] [INFO] [stage_1_and_2.py:133:__init__] Reduce bucket size 500000000
[2024-02-03 10:12:07,002] [INFO] [config.py:960:print]   zero_optimization ............ stage=2 contiguous_gradients=True reduce_scatter=True
Loading checkpoint shards: 100%|██████████| 20/20 [02:11<00:00,  6.58s/it]
LLM num_layers: 32, MoE num_layers: 16, where
layer-0 has 4 experts
{'loss': 2.1559, 'learning_rate': 2e-05, 'epoch': 0.01}
{'loss': 1.9384, 'learning_rate': 1.99e-05, 'epoch': 0.02}
 > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 46702792704
 loading checkpoint from /ckpt/mixtral-mcore at iteration 1
  successfully loaded checkpoint from /ckpt/mixtral-mcore [ t 1/1, p 1/1 ] at iteration 1
 iteration       10/ 1000 | consumed samples: 1280 | lm loss: 1.734215E+00 | grad norm: 1.021 |
11/22 10:15:00 - mmengine - INFO - Iter(train) [  10/3000]  lr: 2.0000e-05  eta: 1:00:00  loss: 1.2345
Saving the model to work_dirs/deepseek_v2_lite/hf_model ... model.safetensors.index.json written (4 shards)
"""


def shipped(project_name):
    p = load_matrix().project(project_name)
    if p is None:
        pytest.skip(f"project {project_name} not in the shipped matrix yet")
    return p


@pytest.mark.parametrize("project,where,line,benign", REAL_LINES, ids=[f"{r[0]}:{r[1].split()[0]}" for r in REAL_LINES])
def test_real_tracker_line_is_explained(project, where, line, benign):
    p = shipped(project)
    triage = explain_text(line, load_matrix())
    hits = [m for m in triage.results() if m.project == p.name]
    assert hits, f"{where}: no known issue of {project} explains {line!r}"
    m = hits[0]
    assert m.issue.cause and m.issue.fix and m.issue.source
    assert m.issue.benign is benign
    assert triage.harmful() is (not benign)
    f = m.finding()
    assert f.severity == ("info" if benign else m.issue.severity)
    assert f.title.startswith("Benign") is benign


def test_clean_training_log_matches_nothing():
    triage = explain_text(CLEAN_LOG, load_matrix())
    assert triage.lines == len(CLEAN_LOG.splitlines())
    assert triage.issue_count > 0
    assert triage.results() == [], [(m.issue.id, m.examples) for m in triage.results()]


def test_unrelated_errors_are_not_claimed():
    other = "\n".join([
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)",
        "FileNotFoundError: [Errno 2] No such file or directory: 'data/llava_image_tune_.json'",
        "KeyError: 'input_ids'",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: train_mem.py FAILED",
    ])
    assert explain_text(other, load_matrix()).results() == []


# ------------------------------------------------------------------ the engine on a matrix the test builds


def tiny_matrix():
    info = ProjectInfo(name="demo", title="Demo", repo="o/r", commit="x", source=["o/r#1"])
    issues = [
        KnownIssue(id="boom", title="Boom", patterns=[r"Boom at step \d+", r"kaboom"], cause="c", fix="f", source=["o/r#1"]),
        KnownIssue(id="chatter", title="Chatter", patterns=[r"not in state_dict, loading"], cause="progress log",
                   fix="nothing", source=["o/r#2"], benign=True),
        KnownIssue(id="dormant", title="Dormant", patterns=[], cause="c", fix="f", source=["o/r#3"]),
    ]
    return Matrix(root="", projects={"demo": Project(info=info, known_issues=issues)})


def test_counts_first_line_examples_and_order():
    log = "ok\nx not in state_dict, loading a\nBoom at step 3\nfine\nBoom at step 9\nkaboom\n"
    t = Triage(tiny_matrix()).feed_all(log.splitlines())
    res = t.results()
    assert [m.issue.id for m in res] == ["boom", "chatter"]  # harmful first
    boom = res[0]
    assert boom.count == 3 and boom.first_line == 3 and boom.examples[0] == "Boom at step 3"
    assert res[1].first_line == 2 and t.harmful()
    assert Triage(tiny_matrix()).feed_all(["x not in state_dict, loading y"]).harmful() is False


def test_stream_and_line_paths_agree_across_chunk_boundaries():
    # the stream path finds candidate lines by each pattern's literal; it must see what the
    # per-line search sees, wherever the chunks are cut
    import io

    text = CLEAN_LOG + "\n".join(r[2] for r in REAL_LINES) + "\nno newline at the end: kaboom"
    slow = Triage(load_matrix())
    for line in text.splitlines():
        slow.feed(line)
    for size in (7, 64, 1 << 20):
        fast = Triage(load_matrix()).feed_stream(io.StringIO(text), chunk_size=size)
        assert fast.lines == slow.lines
        assert {(k, m.count, m.first_line) for k, m in fast.matches.items()} == \
               {(k, m.count, m.first_line) for k, m in slow.matches.items()}
    assert slow.matches  # the comparison is not vacuous


def test_literals_are_derived_from_patterns():
    from moe_env.triage import required_literals

    assert required_literals(r"MoE not supported with Stage 3") == (["MoE not supported with Stage 3"], False)
    assert required_literals(r"(?i)mistral\d+") == (["mistral"], True)
    lits, _ = required_literals(r"(MGM|MiniGemini)MixtralForCausalLM\.forward")
    assert lits == ["MixtralForCausalLM.forward"]
    assert sorted(required_literals(r"(?:kaboom|Boom at)")[0]) == ["Boom at", "kaboom"]
    assert required_literals(r"\d+\s+\w+") is None  # no literal: searched line by line


def test_long_lines_are_cut_not_choked_on():
    import io

    t = Triage(tiny_matrix()).feed_all(["kaboom " + "x" * 1_000_000])
    assert t.results()[0].examples[0].startswith("kaboom") and len(t.results()[0].examples[0]) <= 300
    # in a stream: the head of an enormous line is judged, its tail skipped, the count stays right
    s = Triage(tiny_matrix()).feed_stream(io.StringIO("kaboom " + "x" * 3_000_000 + " kaboom\nBoom at step 1\n"),
                                          chunk_size=65536)
    assert s.lines == 2
    assert {k[1]: (m.count, m.first_line) for k, m in s.matches.items()} == {"boom": (2, 1)}


# ------------------------------------------------------------------ the command


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "moe_env", "explain", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_harmful_log_exits_1_with_cause_fix_source(tmp_path):
    shipped("moe-llava")
    log = tmp_path / "train.log"
    log.write_text(CLEAN_LOG + REAL_LINES[0][2] + "\n")
    p = cli(str(log))
    assert p.returncode == 1, p.stderr
    for word in ("why:", "fix:", "source:", f"line {len(CLEAN_LOG.splitlines()) + 1}"):
        assert word in p.stdout


def test_cli_benign_only_exits_0_and_says_benign():
    shipped("xtuner")
    p = cli("-", stdin=REAL_LINES[5][2] + "\n" + CLEAN_LOG)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Benign" in p.stdout


def test_cli_json_and_project_filter(tmp_path):
    shipped("megatron")
    log = tmp_path / "run.log"
    log.write_text(REAL_LINES[3][2] + "\n" + REAL_LINES[0][2] + "\n")
    p = cli(str(log), "--json", "--project", "megatron")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["schema"] == "moe-env.explain/1" and doc["harmful"] is True and doc["lines"] == 2
    assert {m["project"] for m in doc["matches"]} == {"megatron"}
    assert doc["matches"][0]["first_line"] == 1 and doc["matches"][0]["source"]


def test_cli_clean_log_exits_0(tmp_path):
    log = tmp_path / "clean.log"
    log.write_text(CLEAN_LOG)
    p = cli(str(log))
    assert p.returncode == 0 and "No known issue matched" in p.stdout


def test_cli_bad_input_is_usage_error(tmp_path):
    for args in ((str(tmp_path / "missing.log"),), (str(tmp_path),), ("x.log", "--project", "nope")):
        p = cli(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert p.stderr.startswith("moe-env: error:") and "Traceback" not in p.stderr
