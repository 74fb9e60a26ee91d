"""`moe-env diff` over reports that `moe-env doctor --json` wrote for real venvs built here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fakes import make_venv

TORCH_VERSION_PY = """\
__version__ = '{version}'
debug = False
cuda = '{cuda}'
git_version = '0123456789abcdef'
hip = None
"""


def _node(tmp_path, name, torch="2.1.2+cu121", cuda="12.1", deepspeed="0.14.4", extra=()):
    venv = make_venv(tmp_path / name)
    venv.add_dist("torch", torch, files={"torch/__init__.py": "", "torch/version.py": TORCH_VERSION_PY.format(version=torch, cuda=cuda)})
    venv.add_dist("deepspeed", deepspeed, files={"deepspeed/__init__.py": ""})
    venv.add_dist("transformers", "4.37.2", files={"transformers/__init__.py": ""})
    for dist, version in extra:
        venv.add_dist(dist, version)
    return venv


def _report(venv, out, driver="535.104.05", gpus="A100:8.0x8", hostname=None):
    env = {**os.environ, "MOE_ENV_CUDA_DRIVER_VERSION": driver, "MOE_ENV_GPUS": gpus, "NO_COLOR": "1",
           "MOE_ENV_HOSTNAME": hostname or out.stem}
    proc = subprocess.run(
        [sys.executable, "-m", "moe_env", "doctor", "--json", "--python", str(venv.python)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    document = json.loads(proc.stdout)
    assert document["schema"] == "moe-env.doctor/1"
    out.write_text(proc.stdout)
    return out


def _diff(*args, stdin=None):
    proc = subprocess.run(
        [sys.executable, "-m", "moe_env", "diff", *map(str, args)],
        capture_output=True, text=True, input=stdin, timeout=120, env={**os.environ, "NO_COLOR": "1"},
    )
    return proc


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Four nodes: n1 and n2 identical, n3 with another deepspeed, n4 with a +cu118 torch and an older driver."""
    root = tmp_path_factory.mktemp("fleet")
    reports = root / "reports"
    reports.mkdir()
    same = _node(root, "same")
    _report(same, reports / "n1.json")
    _report(same, reports / "n2.json")
    _report(_node(root, "ds", deepspeed="0.14.5"), reports / "n3.json")
    _report(_node(root, "cu118", torch="2.1.2+cu118", cuda="11.8"), reports / "n4.json", driver="470.82.01")
    return reports


def test_identical_nodes_pass(fleet):
    proc = _diff(fleet / "n1.json", fleet / "n2.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no drift" in proc.stdout


def test_package_drift_found(fleet):
    proc = _diff(fleet / "n1.json", fleet / "n2.json", fleet / "n3.json", "--json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    drift = {d["fact"]: d for d in result["drift"]}
    assert set(drift) == {"package deepspeed"}
    groups = {g["value"]: g["nodes"] for g in drift["package deepspeed"]["groups"]}
    assert groups == {"0.14.4": ["n1", "n2"], "0.14.5": ["n3"]}
    assert drift["package deepspeed"]["matters"] is True


def test_torch_tag_and_driver_drift_found(fleet):
    proc = _diff(fleet / "n1.json", fleet / "n4.json", "--json")
    assert proc.returncode == 1
    drift = {d["fact"]: d for d in json.loads(proc.stdout)["drift"]}
    assert {"torch.build", "torch.cuda", "driver"} <= set(drift)
    assert "package torch" not in drift  # the same problem as torch.build: one entry
    assert {g["value"] for g in drift["torch.build"]["groups"]} == {"2.1.2+cu121", "2.1.2+cu118"}
    assert {g["value"] for g in drift["driver"]["groups"]} == {"535.104.05", "470.82.01"}
    assert all(drift[f]["matters"] for f in ("torch.build", "torch.cuda"))
    # 470 is below CUDA 11.8's GA minimum but above 11.x's minor-version-compatibility floor: it runs (doctor's rule)
    assert drift["driver"]["severity"] == "warning" and drift["driver"]["matters"] is False
    assert all(drift[f]["sources"] for f in ("torch.build", "torch.cuda", "driver"))


def test_a_driver_that_cannot_start_torchs_cuda_is_an_error(fleet, tmp_path):
    old = _variant(fleet, tmp_path, "n9", hostname="n9", driver_version="418.67")  # torch 2.1.2+cu121
    proc = _diff(fleet / "n1.json", old, "--json")
    assert proc.returncode == 1
    drift = {d["fact"]: d for d in json.loads(proc.stdout)["drift"]}
    assert drift["driver"]["severity"] == "error" and "n9" in drift["driver"]["why"]


def test_folder_and_text_output(fleet):
    proc = _diff(fleet)
    assert proc.returncode == 1
    out = proc.stdout
    assert "MUST" in out and "package deepspeed" in out and "n3" in out and "n4" in out
    assert out.rstrip().splitlines()[-1].startswith("FAIL: ")  # ends with the one line that matters


def test_ignore_makes_harmless_difference_pass(fleet):
    proc = _diff(fleet / "n1.json", fleet / "n3.json", "--ignore", "deepspeed")
    assert proc.returncode == 0, proc.stdout
    assert "ignored: deepspeed" in proc.stdout or "no drift" in proc.stdout


def test_driver_minor_difference_is_a_note_not_a_failure(fleet, tmp_path):
    doc = json.loads((fleet / "n1.json").read_text())
    doc["environment"]["host"]["driver_version"] = "535.129.03"
    doc["environment"]["host"]["hostname"] = "n9"
    other = tmp_path / "n9.json"
    other.write_text(json.dumps(doc))
    proc = _diff(fleet / "n1.json", other, "--json")
    assert proc.returncode == 0
    drift = {d["fact"]: d for d in json.loads(proc.stdout)["drift"]}
    assert drift["driver"]["matters"] is False


def test_pdsh_prefixed_pretty_reports_on_stdin(fleet):
    lines = []
    # pdsh interleaves hosts line by line; the reader regroups them per host
    a = (fleet / "n1.json").read_text().splitlines()
    b = (fleet / "n3.json").read_text().splitlines()
    for i in range(max(len(a), len(b))):
        if i < len(a):
            lines.append(f"gpu01: {a[i]}")
        if i < len(b):
            lines.append(f"gpu02: {b[i]}")
    proc = _diff("-", "--json", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["nodes"] == ["gpu01", "gpu02"]
    groups = {g["value"]: g["nodes"] for g in result["drift"][0]["groups"]}
    assert groups == {"0.14.4": ["gpu01"], "0.14.5": ["gpu02"]}


def test_json_lines_on_stdin(fleet):
    docs = [json.dumps(json.loads((fleet / f).read_text())) for f in ("n1.json", "n2.json")]
    proc = _diff(stdin="\n".join(docs) + "\n")
    assert proc.returncode == 0, proc.stderr


def test_truncated_report_is_a_clear_error(fleet, tmp_path):
    text = (fleet / "n1.json").read_text()
    bad = tmp_path / "cut.json"
    bad.write_text(text[: len(text) // 2])
    proc = _diff(fleet / "n1.json", bad)
    assert proc.returncode == 2
    assert "cut.json" in proc.stderr and "truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_other_schema_version_is_refused(fleet, tmp_path):
    doc = json.loads((fleet / "n1.json").read_text())
    doc["schema"] = "moe-env.doctor/2"
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(doc))
    proc = _diff(fleet / "n1.json", newer)
    assert proc.returncode == 2
    assert "newer.json" in proc.stderr and "moe-env.doctor/2" in proc.stderr


def test_empty_folder_and_missing_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _diff(empty)
    assert proc.returncode == 2 and "no reports" in proc.stderr
    proc = _diff(tmp_path / "nope.json")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_not_a_report(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    proc = _diff(other)
    assert proc.returncode == 2 and "not a moe-env doctor report" in proc.stderr


def test_many_reports_read_in_parallel_find_the_one_drifting_node(fleet, tmp_path):
    """Past PARALLEL_FROM files the reports are decoded in worker processes; results must not change."""
    from moe_env.fleet import PARALLEL_FROM

    folder = tmp_path / "many"
    folder.mkdir()
    good = (fleet / "n1.json").read_text()
    for i in range(PARALLEL_FROM + 6):
        (folder / f"node{i:03d}.json").write_text(good)
    (folder / "node042.json").write_text((fleet / "n3.json").read_text())
    proc = _diff(folder, "--json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["nodes"]) == PARALLEL_FROM + 6
    groups = {g["value"]: g["nodes"] for g in result["drift"][0]["groups"]}
    assert groups["0.14.5"] == ["node042"]
    assert len(groups["0.14.4"]) == PARALLEL_FROM + 5

    (folder / "node007.json").write_text(good[:100])
    proc = _diff(folder)
    assert proc.returncode == 2
    assert "node007.json" in proc.stderr and "truncated" in proc.stderr and "Traceback" not in proc.stderr


def _variant(fleet, tmp_path, name, **host):
    doc = json.loads((fleet / "n1.json").read_text())
    doc["environment"]["host"].update(host)
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps(doc))
    return out


def test_driver_branch_only_is_a_warning_exit_0(fleet, tmp_path):
    other = _variant(fleet, tmp_path, "n9", hostname="n9", driver_version="550.54.15")
    proc = _diff(fleet / "n1.json", other, "--json")
    assert proc.returncode == 0, proc.stdout
    drift = {d["fact"]: d for d in json.loads(proc.stdout)["drift"]}
    assert drift["driver"]["severity"] == "warning" and drift["driver"]["matters"] is False and drift["driver"]["sources"]
    text = _diff(fleet / "n1.json", other)
    assert text.returncode == 0 and "SHOULD" in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].startswith("OK with 1 warning")


def test_duplicate_hostname_and_duplicate_report_are_flagged(fleet, tmp_path):
    same_host = _variant(fleet, tmp_path, "copy", driver_version="535.129.03")  # hostname n1 again, other facts
    proc = _diff(fleet / "n1.json", same_host, "--json")
    assert proc.returncode == 0  # which node is which is unclear: a warning
    dups = json.loads(proc.stdout)["duplicates"]
    assert [(d["kind"], d["severity"]) for d in dups] == [("hostname", "warning")] and dups[0]["value"] == "n1"
    text = _diff(fleet / "n1.json", same_host)
    assert "DUPLICATE hostname n1" in text.stdout and text.stdout.rstrip().splitlines()[-1].startswith("OK with")
    twice = _diff(fleet / "n1.json", fleet / "n1.json")  # the same report twice: a node is missing
    assert twice.returncode == 1 and "DUPLICATE the same report" in twice.stdout
    assert "no drift" not in twice.stdout and twice.stdout.rstrip().splitlines()[-1].startswith("FAIL")
    doc = json.loads(_diff(fleet / "n1.json", fleet / "n1.json", "--json").stdout)
    assert doc["duplicates"][0]["kind"] == "report" and doc["summary"]["duplicate_reports"] == 1


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["environment"].__setitem__("host", "gpu01"), "environment.host is str"),
    (lambda d: d["environment"].__setitem__("distributions", ["torch"]), "environment.distributions is list"),
    (lambda d: d["environment"]["host"].__setitem__("gpus", "8xA100"), "environment.host.gpus"),
])
def test_retyped_sections_are_one_line_errors(fleet, tmp_path, mutate, needle):
    doc = json.loads((fleet / "n1.json").read_text())
    mutate(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    proc = _diff(fleet / "n1.json", bad)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert proc.stderr.startswith("moe-env: error:") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text", [
    "[" * 100000 + "]" * 100000,
    '{"schema": "moe-env.doctor/1", "environment": {"python": {"version": 1' + "0" * 5000 + '}}}',
    '{"schema": "moe-env.doctor/1", "environment": {"python": {"version": NaN}}}',
    '{"schema": "moe-env.doctor/1", "environment": {"python": {"version": "\\ud800"}}}',
])
def test_hostile_report_text_is_a_one_line_error(tmp_path, text):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    proc = _diff(bad)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("moe-env: error:") and "Traceback" not in proc.stderr


def test_escapes_in_hostnames_and_versions_are_printed_escaped(fleet, tmp_path):
    doc = json.loads((fleet / "n3.json").read_text())
    doc["environment"]["host"]["hostname"] = "evil\x1b]0;pwned\x07"
    doc["environment"]["distributions"]["deepspeed"]["version"] = "0.14.5\x1b[31m"
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps(doc))
    proc = _diff(fleet / "n1.json", bad)
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout and "\\x1b" in proc.stdout


def test_what_must_agree_is_the_matrix_table_with_sources():
    from moe_env.matrix.loader import load_matrix

    table = {f.fact: f for f in load_matrix().fleet_facts}
    must = {"torch.build", "torch.cuda", "package nvidia-nccl-cu*", "package deepspeed", "package transformers",
            "package accelerate", "python", "gpu.architecture"}
    assert {k for k, f in table.items() if f.severity == "error"} == must
    assert table["driver"].severity == "warning"
    assert all(f.source for f in table.values())
