"""`moe-env doctor` end to end: real venvs probed across the process boundary with --python, reports, exit codes."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from doctor_support import add_deepspeed, add_plain, add_torch, make_env, moe_env_cli, write_matrix
from moe_env.environment import REPORT_SCHEMA
from moe_env.errors import UsageError
from moe_env.findings import Finding
from moe_env.render import render_findings
from moe_env.report import Report, parse_report_text, read_report

NO_GPU = {"MOE_ENV_CUDA_DRIVER_VERSION": "535.104.05", "MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_NVCC_VERSION": "12.1"}


@pytest.fixture
def matrix(tmp_path):
    return write_matrix(tmp_path / "matrix")


@pytest.fixture
def toy_venv(venv):
    """The toy project's venv with deepspeed 0.12.6 (no set_z3_leaf_modules) and torch built for CUDA 12.1."""
    add_torch(venv, "2.1.2+cu121", "12.1", requires=["filelock"])
    add_plain(venv, "filelock", "3.13.1")
    add_deepspeed(venv, "0.12.6", z3_leaf=False, requires=["hjson"])
    add_plain(venv, "toyproj-dist", "1.0", package="toyproj")
    add_plain(venv, "nv-grouped-gemm", "1.1.4", package="grouped_gemm")
    add_plain(venv, "flash-attn", "2.5.8", package="flash_attn")
    return venv


def doctor(args, matrix, env=None):
    merged = dict(NO_GPU)
    merged.update(env or {})
    return moe_env_cli(["doctor", *args], env=merged, matrix=matrix)


def ids(doc):
    return sorted(f["id"] for f in doc["findings"])


def test_probe_across_process_boundary_finds_missing_symbol(toy_venv, matrix):
    res = doctor(["toyproj", "--python", str(toy_venv.python), "--json"], matrix)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == REPORT_SCHEMA
    assert doc["project"] == {"name": "toyproj", "variants": ["8x7b"], "detected": False}
    env = doc["environment"]
    assert env["python"]["executable"].startswith(str(toy_venv.root))
    assert env["torch"]["cuda"] == "12.1"
    assert env["deepspeed"]["version"] == "0.12.6"
    assert env["api"]["deepspeed.utils.set_z3_leaf_modules"]["found"] is False
    found = ids(doc)
    assert "toyproj.deepspeed-bound" in found  # the z3-leaf finding is merged into it (one package, one fix)
    assert "toyproj.z3-leaf" not in found
    assert "deps.missing" in found  # deepspeed requires hjson, which the venv lacks
    assert doc["summary"]["error"] == 1 and doc["summary"]["exit_code"] == 1


def test_fixed_venv_passes_and_reexport_is_followed(venv, matrix):
    add_torch(venv, "2.1.2+cu121", "12.1", requires=[])
    add_deepspeed(venv, "0.13.2", z3_leaf=True, requires=[],
                  moe_params=("self", "hidden_size", "expert", "top2_2nd_expert_sampling"))
    add_plain(venv, "nv-grouped-gemm", "1.1.4", package="grouped_gemm")
    add_plain(venv, "flash-attn", "2.5.8", package="flash_attn")
    res = doctor(["toyproj", "--python", str(venv.python), "--json"], matrix)
    doc = json.loads(res.stdout)
    assert [f for f in doc["findings"] if f["severity"] in ("error", "warning")] == [], res.stdout
    assert res.returncode == 0
    sym = doc["environment"]["api"]["deepspeed.utils.set_z3_leaf_modules"]
    assert sym["found"] is True


def test_project_detected_from_distributions(toy_venv, matrix):
    res = doctor(["--python", str(toy_venv.python), "--json"], matrix)
    doc = json.loads(res.stdout)
    assert doc["project"]["name"] == "toyproj" and doc["project"]["detected"] is True
    assert "toyproj.deepspeed-bound" in ids(doc)  # toyproj.z3-leaf merged into it


def test_json_then_from_json_gives_the_same_findings(toy_venv, matrix, tmp_path):
    res = doctor(["toyproj", "--python", str(toy_venv.python), "--json"], matrix)
    saved = tmp_path / "node01.json"
    saved.write_text(res.stdout)
    again = doctor(["--from-json", str(saved), "--json"], matrix)
    assert again.returncode == res.returncode == 1
    assert json.loads(again.stdout)["findings"] == json.loads(res.stdout)["findings"]
    text = doctor(["--from-json", str(saved)], matrix)
    assert text.returncode == 1
    assert "[toyproj.z3-leaf]" in text.stdout and "\x1b[" not in text.stdout


def test_text_output_groups_by_severity(toy_venv, matrix):
    res = doctor(["toyproj", "--python", str(toy_venv.python)], matrix)
    out = res.stdout
    assert res.returncode == 1
    assert out.index("Errors (") < out.index("Warnings (")
    assert "fix:" in out and "source:" in out
    lines = out.rstrip().splitlines()
    # the verdict, then one command for every requirement fix (no pip in this venv: uv pip, for this interpreter)
    assert lines[-4].startswith("PROBLEMS: ") and lines[-2].startswith("Fix "), out[-600:]
    # hjson is what the installed deepspeed requires; the command replaces deepspeed, whose install brings its own
    assert lines[-1] == f"  uv pip install --python {toy_venv.python} 'deepspeed>=0.14.0'"


def test_several_projects_detected_runs_generic_checks_only(venv, tmp_path):
    matrix = write_matrix(tmp_path / "m2", with_other=True)
    add_plain(venv, "toyproj-dist", "1.0", package="toyproj")
    add_plain(venv, "otherproj", "1.0")
    res = doctor(["--python", str(venv.python), "--json"], matrix)
    doc = json.loads(res.stdout)
    assert doc["project"] is None
    assert ids(doc) == ["doctor.several-projects"]
    assert "otherproj (from otherproj)" in doc["findings"][0]["seen"]
    assert res.returncode == 0


def test_model_narrows_variants(toy_venv, matrix):
    res = doctor(["toyproj", "--model", "7b", "--python", str(toy_venv.python), "--json"], matrix)
    found = ids(json.loads(res.stdout))
    assert "toyproj.z3-leaf" not in found and "toyproj.deepspeed-bound" not in found
    bad = doctor(["toyproj", "--model", "99b", "--python", str(toy_venv.python)], matrix)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no model variant '99b'" in bad.stderr


def test_strict_fails_on_warnings_only(venv, matrix):
    add_plain(venv, "accelerate", "0.21.0", requires=["psutil"])  # psutil missing: a warning
    plain = doctor(["--python", str(venv.python)], matrix)
    assert plain.returncode == 0, plain.stdout
    strict = doctor(["--python", str(venv.python), "--strict"], matrix)
    assert strict.returncode == 1


def test_build_mode_defers_host_checks(toy_venv, matrix):
    res = moe_env_cli(["doctor", "toyproj", "--python", str(toy_venv.python), "--build", "--json"], matrix=matrix,
                      env={"MOE_ENV_NVCC_VERSION": "12.1"})
    doc = json.loads(res.stdout)
    deferred = sorted(f["id"] for f in doc["findings"] if f["deferred"])
    assert "host.driver-deferred" in deferred and "toyproj.sm80" in deferred
    assert doc["summary"]["deferred"] == len(deferred)


def test_gpu_override_judges_bf16(toy_venv, matrix):
    res = doctor(["toyproj", "--python", str(toy_venv.python), "--json"], matrix, {"MOE_ENV_GPUS": "7.5x4"})
    doc = json.loads(res.stdout)
    f = [f for f in doc["findings"] if f["id"] == "toyproj.sm80"]
    assert f and "sm_75" in f[0]["seen"]


def test_lockfile_differences(toy_venv, matrix, tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("deepspeed==0.13.2 \\\n    --hash=sha256:00\ntorch==2.1.2 \\\n    --hash=sha256:11\nhjson==3.1.0\n")
    res = doctor(["toyproj", "--python", str(toy_venv.python), "--lockfile", str(lock), "--json"], matrix)
    doc = json.loads(res.stdout)
    lock_findings = sorted((f["id"], f["title"].split(":")[0]) for f in doc["findings"] if f["id"].startswith("lock."))
    assert ("lock.version", "deepspeed") in lock_findings and ("lock.missing", "hjson") in lock_findings
    assert ("lock.extra", "filelock") in lock_findings
    assert not any(name == "torch" for _, name in lock_findings)
    missing = doctor(["--python", str(toy_venv.python), "--lockfile", str(tmp_path / "nope.lock")], matrix)
    assert missing.returncode == 2 and "nope.lock: lockfile not found" in missing.stderr


# ---------------------------------------------------------------- bad input: one line, exit 2


def one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("moe-env: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


def test_missing_interpreter(matrix, tmp_path):
    one_line_error(doctor(["--python", str(tmp_path / "no" / "python")], matrix), str(tmp_path / "no" / "python"))


def test_non_python_executable(matrix, tmp_path):
    fake = tmp_path / "notpython"
    fake.write_text("#!/bin/sh\necho 'I am not python'\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    one_line_error(doctor(["--python", str(fake)], matrix), str(fake))


def test_unknown_project(matrix):
    one_line_error(doctor(["nope"], matrix), "unknown project 'nope'")


@pytest.mark.parametrize("content,needle", [
    ('{"schema": "moe-env.doctor/1", "environment": {"python": {"vers', "truncated JSON"),
    ('{"schema": "moe-env.doctor/9", "environment": {}}', "moe-env.doctor/9"),
    ('[1, 2, 3]', "not a moe-env doctor report"),
    ('{"schema": "something-else/1"}', "not a moe-env doctor report"),
    ('', "empty file"),
    ('{"schema": "moe-env.doctor/1", "findings": []}', "no environment section"),
    # hostile and retyped reports (issue 16): one line naming the file and the field, never a traceback
    ('{"schema": "moe-env.doctor/1", "environment": {"python": {"version": "3.11.7", "implementation": "cpython", '
     '"executable": "x", "prefix": "p", "platform": "linux-x86_64", "machine": "x86_64"}, "host": "gpu01"}}',
     "environment.host: expected an object"),
    ('{"schema": "moe-env.doctor/1", "environment": {"python": {"version": "3.11.7", "implementation": "cpython", '
     '"executable": "x", "prefix": "p", "platform": "linux-x86_64", "machine": "x86_64"}, "distributions": ["torch"]}}',
     "environment.distributions: expected an object"),
    ('{"schema": "moe-env.doctor/1", "environment": {"python": {"version": 3.11, "implementation": "cpython", '
     '"executable": "x", "prefix": "p", "platform": "linux-x86_64", "machine": "x86_64"}}}',
     "environment.python.version: expected text"),
    (r'{"schema": "moe-env.doctor/1", "environment": {"python": {"version": "\\ud800"}}}', "malformed report"),
    (r'{"schema": "moe-env.doctor/1", "environment": {"python": {"version": "\ud800"}}}', "lone surrogate"),
    ('{"schema": "moe-env.doctor/1", "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested 5001 deep"),
    ('{"schema": "moe-env.doctor/1", "summary": {"error": ' + "7" * 5000 + "}}", "an integer of 5000 digits"),
    ('{"schema": "moe-env.doctor/1", "summary": {"error": NaN}}', "NaN is not a JSON number"),
])
def test_bad_reports_name_the_file(matrix, tmp_path, content, needle):
    path = tmp_path / "node.json"
    path.write_text(content)
    one_line_error(doctor(["--from-json", str(path)], matrix), str(path), needle)
    with pytest.raises(UsageError, match="node.json"):
        read_report(str(path))


def test_from_json_missing_file_and_conflicting_flags(matrix, tmp_path):
    one_line_error(doctor(["--from-json", str(tmp_path / "gone.json")], matrix), "gone.json: report file not found")
    (tmp_path / "r.json").write_text("{}")
    one_line_error(doctor(["--from-json", str(tmp_path / "r.json"), "--python", "/usr/bin/python3"], matrix), "--from-json")


# ---------------------------------------------------------------- report and render units


def test_report_round_trip_keeps_everything():
    env = make_env(dists={"deepspeed": "0.12.6"}, torch="2.1.2+cu121", torch_cuda="12.1", gpus=["A100:8.0"], driver="535.1")
    findings = [Finding(id="a.b", severity="error", title="t", seen="s", why="w", fix="f", sources=["x#1"]),
                Finding(id="c", severity="info", title="t2", seen="s2", why="w2", deferred=True)]
    report = Report(environment=env, findings=findings, project="toyproj", variants=["8x7b"])
    back = parse_report_text(report.to_json(), "mem")
    assert back.environment == env
    assert back.findings == findings
    assert (back.project, back.variants, back.origin) == ("toyproj", ["8x7b"], "mem")
    assert json.loads(report.to_json())["summary"] == {"error": 1, "warning": 0, "info": 0, "deferred": 1, "exit_code": 1}


def test_report_reader_ignores_keys_a_newer_writer_adds():
    env = make_env()
    doc = Report(environment=env).to_dict()
    doc["new_top_level"] = 1
    doc["environment"]["python"]["new_field"] = "x"
    assert parse_report_text(json.dumps(doc), "mem").environment.python.version == env.python.version


def test_render_colour_only_when_asked():
    findings = [Finding(id="x.y", severity="error", title="Broken", seen="seen it", why="because", fix="pip install z")]
    plain = render_findings(findings, color=False)
    coloured = render_findings(findings, color=True)
    assert "\x1b[" not in plain and "\x1b[31m" in coloured
    assert "Broken" in plain and "[x.y]" in plain and "pip install z" in plain
    assert render_findings([], color=False).strip() == "OK: 0 errors, 0 warnings, 0 notes, 0 deferred"


def test_no_color_env_is_honoured(monkeypatch):
    from moe_env.term import use_color

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty()) is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(Tty()) is False


def test_doctor_imports_nothing_heavy():
    """`python -X importtime -m moe_env doctor --help`: no requests, uv, piptools on the doctor path."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import moe_env.commands.doctor, moe_env.checks, moe_env.checks.lockfile, moe_env.report, "
                          "moe_env.render, moe_env.matrix.loader, moe_env.probe.runner, moe_env.probe.host; "
                          "import moe_env.cli; moe_env.cli.build_parser(); moe_env.matrix.loader.load_matrix()"],
                         capture_output=True, text=True, env={**os.environ})
    assert res.returncode == 0, res.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "moe_env" in imported
    assert not imported & {"requests", "uv", "piptools", "pip", "urllib3"}, imported & {"requests", "uv", "piptools", "pip"}


def test_doctor_starts_its_probe_before_argparse_typing_json_or_the_matrix_load(tmp_path):
    """The probe's interpreter boots while the host imports: at the moment it is spawned (a real run of the CLI
    in a subprocess, os.posix_spawn watched) only moe-env's light modules have loaded."""
    import subprocess
    import sys

    script = tmp_path / "watch.py"
    script.write_text(
        "import os, sys\n"
        "seen = []\n"
        "real = os.posix_spawn\n"
        "def spy(*a, **k):\n"
        "    if not seen: seen.append(sorted(sys.modules))\n"
        "    return real(*a, **k)\n"
        "os.posix_spawn = spy\n"
        "from moe_env.cli import main\n"
        "rc = main(['doctor', '--python', sys.executable, '--json'])\n"
        "import json\n"
        "sys.stderr.write('MODULES ' + json.dumps(seen[0]) + '\\n')\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MOE_ENV_NO_CACHE": "1"})
    line = [x for x in res.stderr.splitlines() if x.startswith("MODULES ")]
    assert line, res.stderr
    at_spawn = set(json.loads(line[0][len("MODULES "):]))
    assert "moe_env.probe.runner" in at_spawn
    assert not at_spawn & {"argparse", "typing", "json", "moe_env.parser", "moe_env.matrix", "packaging"}, at_spawn
    assert json.loads(res.stdout)["environment"]["python"]["executable"]


def test_hostile_environment_gives_findings_not_a_crash(venv, matrix):
    """Broken METADATA, odd versions, a syntax error in a probed module, packages that hang or raise on import."""
    add_torch(venv, "2.1.0a0+git1234", "12.1", requires=[])
    add_deepspeed(venv, "0.0.0", z3_leaf=True, requires=[])
    (venv.site / "deepspeed" / "__init__.py").write_text("import time\ntime.sleep(600)\n")
    (venv.site / "deepspeed" / "utils" / "__init__.py").write_text("from .z3_leaf_module import (set_z3_leaf_modules\n")
    venv.add_dist("brokenpkg", "1.0", metadata="", files={"brokenpkg/__init__.py": "raise SystemExit('imported!')\n"})
    add_plain(venv, "nv-grouped-gemm", "1.1.4", package="grouped_gemm")
    add_plain(venv, "flash-attn", "2.5.8", package="flash_attn")
    res = doctor(["toyproj", "--python", str(venv.python), "--json", "--timeout", "30"], matrix)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    found = {f["id"]: f for f in doc["findings"]}
    leaf = found["toyproj.deepspeed-bound"]  # with toyproj.z3-leaf merged in
    assert "deepspeed 0.0.0" in leaf["seen"] and "[toyproj.z3-leaf]" in leaf["seen"]
    assert leaf["severity"] == "error" and "not in its source" in leaf["seen"]
    assert doc["environment"]["torch"]["version"] == "2.1.0a0+git1234"
    assert doc["environment"]["api"]["deepspeed.utils.set_z3_leaf_modules"]["error"]
    broken = [f for f in doc["findings"] if "brokenpkg" in f["seen"]]
    assert broken and broken[0]["severity"] in ("warning", "error"), doc["findings"]


def _tiny_wheel(folder, name, version, requires=()):
    """A minimal, valid pure-Python wheel (METADATA, WHEEL, RECORD) for a local find-links folder."""
    import zipfile

    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    meta = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"] + [f"Requires-Dist: {r}\n" for r in requires])
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_lockfile_written_by_uv_pip_compile(venv, matrix, tmp_path):
    """A real hash-pinned lockfile from `uv pip compile` against a local folder of wheels the test builds."""
    import shutil
    import subprocess

    try:
        from uv import find_uv_bin  # uv is a dependency of moe-env; its wheel carries the binary

        uv = find_uv_bin()
    except (ImportError, FileNotFoundError):
        uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _tiny_wheel(wheels, "alpha", "1.0", requires=["beta>=2"])
    _tiny_wheel(wheels, "beta", "2.1")
    _tiny_wheel(wheels, "beta", "2.0")
    (tmp_path / "requirements.in").write_text("alpha\n")
    lock = tmp_path / "requirements.lock"
    subprocess.run([uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-index", "--find-links", str(wheels),
                    "--python-version", "3.11", str(tmp_path / "requirements.in"), "-o", str(lock)],
                   check=True, env={**os.environ, "UV_NO_CONFIG": "1", "PIP_CONFIG_FILE": os.devnull}, timeout=120)
    assert "--hash=sha256:" in lock.read_text()
    add_plain(venv, "alpha", "1.0", requires=["beta>=2"])
    add_plain(venv, "beta", "2.0")
    res = doctor(["--python", str(venv.python), "--lockfile", str(lock), "--json"], matrix)
    doc = json.loads(res.stdout)
    lock_findings = [(f["id"], f["title"]) for f in doc["findings"] if f["id"].startswith("lock.")]
    assert lock_findings == [("lock.version", "beta: 2.0 installed, lockfile pins beta==2.1")]
    assert res.returncode == 1


def test_matrix_cache_is_keyed_by_content(tmp_path, monkeypatch):
    from moe_env.matrix.cache import load_matrix_cached

    root = write_matrix(tmp_path / "m")
    monkeypatch.setenv("MOE_ENV_CACHE_DIR", str(tmp_path / "cache"))
    first = load_matrix_cached(root)
    assert len(list((tmp_path / "cache").glob("matrix-*.jsonl"))) == 1
    again = load_matrix_cached(root)
    assert again.project("toyproj").checks == first.project("toyproj").checks
    # an edit of the same size still invalidates (content, not mtime, is the key)
    path = root / "projects" / "toyproj.toml"
    path.write_text(path.read_text().replace('title = "Toy MoE project"', 'title = "Toy MoE pro-ect"'))
    assert load_matrix_cached(root).project("toyproj").info.title == "Toy MoE pro-ect"
    assert len(list((tmp_path / "cache").glob("matrix-*.jsonl"))) == 1  # the stale one is pruned
    # a corrupt cache file is rebuilt, never an error
    for f in (tmp_path / "cache").glob("matrix-*.jsonl"):
        f.write_bytes(b"garbage")
    assert load_matrix_cached(root).project("toyproj") is not None
    # a bad matrix is still a one-line MatrixError through the cache
    path.write_text("[project\n")
    from moe_env.errors import MatrixError

    with pytest.raises(MatrixError, match="toyproj.toml: not valid TOML"):
        load_matrix_cached(root)


def test_from_json_reads_stdin(toy_venv, matrix):
    import subprocess

    first = doctor(["toyproj", "--python", str(toy_venv.python), "--json"], matrix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ENV_")}
    env.update(MOE_ENV_MATRIX=str(matrix), NO_COLOR="1")
    again = subprocess.run([sys.executable, "-m", "moe_env", "doctor", "--from-json", "-", "--json"], input=first.stdout,
                           capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1, again.stderr
    assert json.loads(again.stdout)["findings"] == json.loads(first.stdout)["findings"]


def test_shipped_generic_conflict_numpy2_with_old_torch(venv_factory):
    """The shipped [[conflict]] table through a real probe: numpy 2 next to torch 2.1 (compiled against NumPy 1.x)."""
    from doctor_support import moe_env_cli as cli

    env = {"MOE_ENV_CUDA_DRIVER_VERSION": "535.104.05", "MOE_ENV_GPUS": "A100:8.0x8", "MOE_ENV_NVCC_VERSION": "12.1"}
    bad = venv_factory()
    add_torch(bad, "2.1.2+cu121", "12.1", requires=["numpy"])
    add_plain(bad, "numpy", "2.1.3")
    res = cli(["doctor", "--python", str(bad.python), "--json"], env=env)
    doc = json.loads(res.stdout)
    hit = [f for f in doc["findings"] if f["id"] == "numpy2-with-torch-before-2.3"]
    assert hit and hit[0]["severity"] == "error" and "numpy 2.1.3" in hit[0]["seen"], doc["findings"]
    assert res.returncode == 1
    good = venv_factory()
    add_torch(good, "2.1.2+cu121", "12.1", requires=["numpy"])
    add_plain(good, "numpy", "1.26.4")
    res = cli(["doctor", "--python", str(good.python), "--json"], env=env)
    assert not [f for f in json.loads(res.stdout)["findings"] if f["id"] == "numpy2-with-torch-before-2.3"]
    assert res.returncode == 0, res.stdout


def test_requirements_check_agrees_with_pip_check(venv, matrix):
    """Our metadata-only judgement against pip's own `pip check` on the same real venv."""
    import re
    import subprocess

    add_plain(venv, "alpha", "1.0", requires=["beta>=2", "gamma; python_version >= '3.0'", "delta; python_version < '3.0'",
                                              "epsilon[extra]>=1; extra == 'test'"])
    add_plain(venv, "beta", "1.5")
    add_plain(venv, "zeta", "2.0", requires=["beta<2,>=1", "Alpha==1.0"])
    add_plain(venv, "eta", "0.1", requires=["torch>=2.0"])
    add_torch(venv, "2.1.0a0+git1234", None, requires=[])
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "check"], capture_output=True,
                         text=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, timeout=120)
    pip_pairs = set()
    for line in pip.stdout.splitlines():
        m = re.match(r"^(\S+) \S+ (?:requires|has requirement) ([A-Za-z0-9_.-]+)", line)
        if m:
            pip_pairs.add((m.group(1).lower(), m.group(2).lower()))
    assert pip_pairs, pip.stdout + pip.stderr
    res = doctor(["--python", str(venv.python), "--json"], matrix)
    ours = set()
    for f in json.loads(res.stdout)["findings"]:
        if f["id"] in ("deps.missing", "deps.conflict"):
            m = re.match(r"^(\S+) \S+ requires ([A-Za-z0-9_.-]+)", f["seen"])
            ours.add((m.group(1), m.group(2).lower()))
    # a pre-release torch (2.1.0a0+git...) satisfies torch>=2.0 for both, as do the false and extra-only markers
    assert ours == pip_pairs == {("alpha", "beta"), ("alpha", "gamma")}


def test_matrix_cache_defers_what_doctor_never_reads_and_equals_the_loader(tmp_path, monkeypatch):
    """The shipped matrix through the cache (JSON Lines, some sections built on first read) is the loader's matrix."""
    from moe_env.matrix import cache
    from moe_env.matrix.loader import load_matrix

    monkeypatch.setenv("MOE_ENV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MOE_ENV_NO_CACHE", raising=False)
    cache.load_matrix_cached()  # a miss: written
    hit = cache.load_matrix_cached()
    project = hit.project("minigemini")
    assert project.checks and project.stacks and hit.releases and hit.conflicts
    assert set(hit.__dict__["__deferred__"]) == set(cache.DEFERRED["Matrix"])
    assert set(project.__dict__["__deferred__"]) == set(cache.DEFERRED["Project"])
    assert hit == load_matrix()  # forces every deferred section: same values as parsed from the TOML
    assert not hit.__dict__["__deferred__"] and hit.known_issues
    # a changed byte in a deferred line, or a cut file, is a miss (rebuilt), never an error later
    (target,) = (tmp_path / "cache").glob("matrix-*.jsonl")
    data = target.read_bytes()
    target.write_bytes(data[:-40] + data[-40:].replace(b'"', b"'", 1))
    assert cache._read_cache(str(tmp_path / "cache"), str(target), cache._key(cache.matrix_dir())) is None
    target.write_bytes(data[: len(data) // 2])
    assert cache._read_cache(str(tmp_path / "cache"), str(target), cache._key(cache.matrix_dir())) is None
    # an edited header whose spans do not tile the body is a miss too; one that swaps two lines fails in one line
    header, rest = data.split(b"\n", 1)
    doc = json.loads(header)
    doc["deferred"][0][3] += 1
    target.write_bytes(json.dumps(doc).encode() + b"\n" + rest)
    assert cache._read_cache(str(tmp_path / "cache"), str(target), cache._key(cache.matrix_dir())) is None
    doc = json.loads(header)
    first, second = doc["deferred"][0], doc["deferred"][1]
    first[1], second[1] = second[1], first[1]
    target.write_bytes(json.dumps(doc).encode() + b"\n" + rest)
    odd = cache._read_cache(str(tmp_path / "cache"), str(target), cache._key(cache.matrix_dir()))
    from moe_env.errors import MoeEnvError

    with pytest.raises(MoeEnvError, match="does not read back"):
        odd.known_issues, odd.fleet_facts, odd.launcher_args, odd.cuda_images  # noqa: B018
    assert cache.load_matrix_cached() == hit
