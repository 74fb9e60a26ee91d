"""The compatibility matrix: it loads, every fact has a source, the files agree with each other,
the `matrix` CLI reports it, and the deepspeed API table matches real releases (network tier)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from moe_env.cli import main
from moe_env.errors import MatrixError
from moe_env.matrix import consistency, scan
from moe_env.matrix.loader import SOURCE_RE, load_matrix
from moe_env.paths import matrix_root
from moe_env import record

SHIPPED = load_matrix()


def _entries(matrix):
    """Every sourced entry of the matrix, with a label naming it."""
    flat = ["torch_releases", "torch_archs", "cuda_drivers", "cuda_minor_compat", "gpus", "arch_toolkits",
            "flash_attn_wheels", "conflicts"]
    for attr in flat + [f.name for f in record.fields(matrix) if f.name.endswith("images")]:
        for i, e in enumerate(getattr(matrix, attr, [])):
            yield f"{attr}[{i}]", e
    for attr in ("releases", "api"):
        for pkg, entries in getattr(matrix, attr).items():
            for i, e in enumerate(entries):
                yield f"{attr}.{pkg}[{i}]", e
    for p in matrix.projects.values():
        yield f"{p.file}: project", p.info
        for attr in ("pins", "variants", "checks", "stacks", "rules", "known_issues"):
            for i, e in enumerate(getattr(p, attr)):
                yield f"{p.file}: {attr}[{i}]", e


# ---------------------------------------------------------------- the shipped matrix


def test_every_shipped_entry_has_a_well_formed_source():
    labels = []
    for label, entry in _entries(SHIPPED):
        assert entry.source, label
        for s in entry.source:
            assert SOURCE_RE.match(s.strip()), f"{label}: {s!r}"
        labels.append(label)
    assert len(labels) > 150  # the platform and package tables alone are larger than this


def test_registry_host_names_absent_from_matrix_files():
    hosts = ("pypi" + ".org", "files.python" + "hosted.org", "pythonhosted")
    for path in matrix_root().rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8").lower()
            assert not any(h in text for h in hosts), path


def test_torch_rows_cover_the_releases_projects_use():
    minors = {r.minor for r in SHIPPED.torch_releases}
    for m in ["1.13"] + [f"2.{i}" for i in range(10)]:
        assert m in minors
    for r in SHIPPED.torch_releases:
        spec = SpecifierSet(r.python)
        assert r.versions and all(v.startswith(r.minor + ".") for v in r.versions), r.minor
        assert r.default_cuda in r.cuda_builds or r.minor == "2.15", r.minor  # the PyPI build is also on the index
        assert r.glibc_min in ("2.17", "2.28")
        assert any(spec.contains(f"3.{i}") for i in range(7, 16)), r.minor


def test_torch_arch_rows_never_overlap_and_never_dangle():
    """Each (torch minor, CUDA build) has at most one arch row, and every row describes a real build."""
    for row in SHIPPED.torch_archs:
        spec = SpecifierSet(row.torch)
        covered = [r for r in SHIPPED.torch_releases if spec.contains(r.versions[0])]
        assert covered, f"torch_arch {row.torch} matches no [[torch]] row"
        for cuda in row.cuda:
            assert any(cuda in r.cuda_builds for r in covered), f"torch_arch {row.torch} cu{cuda}: no such build"
        assert row.ptx == "" or row.ptx in row.archs
    for r in SHIPPED.torch_releases:
        for cuda in r.cuda_builds:
            rows = [a for a in SHIPPED.torch_archs if cuda in a.cuda and SpecifierSet(a.torch).contains(r.versions[0])]
            assert len(rows) <= 1, f"torch {r.minor} cu{cuda}: {len(rows)} arch rows"


def test_pytorch_wheels_for_old_minors_have_the_ampere_and_hopper_kernels():
    for minor, cuda in (("2.1", "12.1"), ("2.4", "12.4"), ("2.8", "12.8")):
        r = SHIPPED.torch_release(minor + ".0")
        rows = [a for a in SHIPPED.torch_archs if cuda in a.cuda and SpecifierSet(a.torch).contains(r.versions[0])]
        assert rows and {"8.0", "9.0"} <= set(rows[0].archs), (minor, cuda)


def test_cuda_driver_table_is_monotonic_and_minor_compat_is_below_it():
    rows = sorted(SHIPPED.cuda_drivers, key=lambda r: Version(r.cuda))
    drivers = [Version(r.min_driver) for r in rows]
    assert drivers == sorted(drivers)
    for compat in SHIPPED.cuda_minor_compat:
        # from x.1 on every toolkit of the major runs on the floor (11.0 predates minor-version compatibility)
        later = [Version(r.min_driver) for r in rows if r.cuda.split(".")[0] == str(compat.cuda_major) and r.cuda.split(".")[1] != "0"]
        assert later and Version(compat.min_driver) <= min(later)


def test_gpu_table_gives_the_documented_capability_through_the_checks_reader():
    from moe_env.checks.facts import gpu_capability
    from moe_env.environment import GPU

    def cc(name):
        return gpu_capability(GPU(index=0, name=name), SHIPPED)[0]

    archs = {a.compute_capability for a in SHIPPED.arch_toolkits}
    for g in SHIPPED.gpus:
        assert g.compute_capability in archs, g.family  # every family has a toolkit row
    assert cc("NVIDIA A100-SXM4-80GB") == "8.0"
    assert cc("NVIDIA A10G") == "8.6"
    assert cc("NVIDIA RTX A3000 Laptop GPU") == "8.6"
    assert cc("Tesla V100-SXM2-32GB") == "7.0"
    assert cc("NVIDIA H100 80GB HBM3") == "9.0"
    assert cc("NVIDIA GeForce RTX 4090") == "8.9"
    assert cc("Quadro RTX 6000") == "7.5"
    assert cc("NVIDIA B200") == "10.0"
    assert cc("Some Future Accelerator") is None


# ---------------------------------------------------------------- deepspeed facts


def _api(symbol, param=""):
    e = consistency.api_entry(SHIPPED, "deepspeed", symbol, param)
    assert e is not None, f"no [[api]] row for {symbol} {param}"
    return e


def test_flash_attn_wheel_lookup():
    assert consistency.flash_attn_wheel(SHIPPED, "2.5.8", "2.0.1", "11.8", "3.10") is True
    assert consistency.flash_attn_wheel(SHIPPED, "2.5.8", "2.1.2", "12.1", "3.10") is True  # cu122 wheel for any 12.x
    assert consistency.flash_attn_wheel(SHIPPED, "2.7.4.post1", "2.6.0", "11.8", "3.11") is False  # 12.x only
    assert consistency.flash_attn_wheel(SHIPPED, "2.8.3", "2.8.0", "12.8", "3.12") is True
    assert consistency.flash_attn_wheel(SHIPPED, "2.5.8", "2.4.1", "12.1", "3.10") is False  # no torch 2.4 wheels
    assert consistency.flash_attn_wheel(SHIPPED, "1.0.9", "2.0.1", "11.8", "3.10") is None


def test_set_z3_leaf_modules_truth():
    """MGM pins 0.11.1, which lacks it; 0.13.0 is the first release with it; the newest still has it."""
    e = _api("deepspeed.utils.set_z3_leaf_modules")
    assert consistency.api_has(e, "0.11.1") is False
    assert consistency.api_has(e, "0.12.6") is False
    assert consistency.api_has(e, "0.13.0") is True
    newest = max((r.version for r in SHIPPED.releases["deepspeed"]), key=Version)
    assert consistency.api_has(e, newest) is True
    assert e.newest_checked == newest


def test_deepspeed_release_rows_match_the_pydantic_story():
    rel = {r.version: r for r in SHIPPED.releases["deepspeed"]}
    assert not SpecifierSet(rel["0.11.1"].requires["pydantic"]).contains("2.5.0")
    assert SpecifierSet(rel["0.14.5"].requires["pydantic"]).contains("1.10.21")
    assert not SpecifierSet(rel["0.15.0"].requires["pydantic"]).contains("1.10.21")
    assert all(r.sdist_only for r in rel.values())
    assert {v for v, r in rel.items() if r.build_imports_torch} >= {"0.13.0"}


def test_every_deepspeed_api_check_in_a_project_has_a_table_row():
    for p in SHIPPED.projects.values():
        for c in p.checks:
            if c.kind != "api_symbol":
                continue
            sym = str(c.params.get("symbol", ""))
            pkg = str(c.params.get("package", "") or sym.split(".", 1)[0])
            if pkg != "deepspeed":
                continue
            assert consistency.api_entry(SHIPPED, pkg, sym, str(c.params.get("param", "") or "")), f"{p.file}: {c.id}"


# ---------------------------------------------------------------- stacks against the facts


def _all_stacks():
    return [(p, s) for p in sorted(SHIPPED.projects.values(), key=lambda p: p.name) for s in p.stacks]


@pytest.mark.parametrize("project,stack", _all_stacks(), ids=[s.id for _, s in _all_stacks()])
def test_shipped_stack_is_consistent(project, stack):
    assert consistency.stack_problems(SHIPPED, project, stack) == []


def test_shipped_check_kinds_are_registered():
    problems = [p for p in consistency.registry_problems(SHIPPED) if ": check " in p]
    assert problems == []


def _copy_platform(tmp_path):
    root = tmp_path / "matrix"
    shutil.copytree(matrix_root() / "platform", root / "platform")
    shutil.copytree(matrix_root() / "packages", root / "packages")
    return root


BAD_PROJECT = """
[project]
name = "demo"
title = "Demo"
repo = "example/demo"
commit = "0123456789abcdef0123456789abcdef01234567"
source = "example/demo@0123456789abcdef0123456789abcdef01234567:setup.py"

[[variant]]
id = "moe"
title = "MoE"
moe = true
source = "example/demo@0123456789abcdef0123456789abcdef01234567:README.md"

[[check]]
id = "leaf"
kind = "api_symbol"
severity = "error"
title = "needs set_z3_leaf_modules"
why = "ZeRO-3 leaf modules"
fix = "deepspeed>=0.13.0"
params = {{ symbol = "deepspeed.utils.set_z3_leaf_modules", package = "deepspeed" }}
source = "example/demo@0123456789abcdef0123456789abcdef01234567:train.py:10"

[[stack]]
id = "demo-stack"
variants = ["moe"]
cuda = "{cuda}"
python = "{python}"
pins = {{ torch = "{torch}", deepspeed = "{deepspeed}", pydantic = "{pydantic}", flash-attn = "{fa}" }}
why = "test"
gpu_archs = {archs}
source = "example/demo#1"
"""


def _demo(tmp_path, **kw):
    values = dict(cuda="11.8", python="3.10", torch="2.0.1", deepspeed="0.13.5", pydantic="1.10.21", fa="2.5.8", archs='["8.0", "9.0"]')
    values.update(kw)
    root = _copy_platform(tmp_path)
    (root / "projects").mkdir()
    (root / "projects" / "demo.toml").write_text(BAD_PROJECT.format(**values))
    matrix = load_matrix(root)
    project = matrix.project("demo")
    return matrix, project, project.stacks[0]


def test_consistent_demo_stack_has_no_problems(tmp_path):
    matrix, project, stack = _demo(tmp_path)
    assert consistency.stack_problems(matrix, project, stack) == []


@pytest.mark.parametrize(
    "change,expect",
    [
        ({"python": "3.12"}, "python 3.12 is outside torch 2.0"),
        ({"deepspeed": "0.11.1"}, "deepspeed 0.11.1 lacks deepspeed.utils.set_z3_leaf_modules"),
        ({"deepspeed": "0.10.0", "pydantic": "2.5.0"}, "deepspeed 0.10.0 requires pydantic<2.0.0"),
        ({"deepspeed": "0.15.0"}, "deepspeed 0.15.0 requires pydantic>=2.0.0"),
        ({"cuda": "12.1"}, "cuda 12.1 is not an official torch 2.0 build"),
        ({"torch": "2.0.5"}, "torch 2.0.5 is not a published 2.0 release"),
        ({"fa": "2.7.4.post1"}, "flash-attn 2.7.4.post1 has no prebuilt wheel for torch 2.0.1, CUDA 11.8, python 3.10"),
        ({"archs": '["8.0", "12.0"]'}, "gpu arch 12.0 has no kernels in torch 2.0.1+cu118"),
    ],
)
def test_inconsistent_demo_stack_is_caught(tmp_path, change, expect):
    matrix, project, stack = _demo(tmp_path, **change)
    problems = consistency.stack_problems(matrix, project, stack)
    assert any(expect in p for p in problems), problems


# ---------------------------------------------------------------- the loader's refusals


def _one_file_matrix(tmp_path, text, name="platform/gpu.toml"):
    root = tmp_path / "m"
    (root / name).parent.mkdir(parents=True)
    (root / name).write_text(textwrap.dedent(text))
    return root


def test_loader_rejects_an_entry_without_source(tmp_path):
    root = _one_file_matrix(tmp_path, """
        [[gpu]]
        match = ["H100"]
        family = "Hopper"
        compute_capability = "9.0"
    """)
    with pytest.raises(MatrixError) as exc:
        load_matrix(root)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("platform/gpu.toml: gpu[0].source:")


def test_loader_rejects_a_free_text_source(tmp_path):
    root = _one_file_matrix(tmp_path, """
        [[gpu]]
        match = ["H100"]
        family = "Hopper"
        compute_capability = "9.0"
        source = "NVIDIA says so"
    """)
    with pytest.raises(MatrixError, match=r"platform/gpu.toml: gpu\[0\].source: 'NVIDIA says so' is not"):
        load_matrix(root)


def test_validate_cli_names_file_and_key_and_exits_2(tmp_path, capsys):
    root = _one_file_matrix(tmp_path, """
        package = "deepspeed"
        [[api]]
        symbol = "deepspeed.utils.set_z3_leaf_modules"
        first = "0.13.0"
    """, name="packages/deepspeed.toml")
    assert main(["matrix", "validate", "--matrix", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "moe-env: error: packages/deepspeed.toml: api[0].source: missing (required for ApiEntry)"


# ---------------------------------------------------------------- the matrix CLI


def test_cli_validate_reports_counts(capsys):
    rc = main(["matrix", "validate", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["torch"] == len(SHIPPED.torch_releases)
    assert data["ok"] == (rc == 0) == (data["problems"] == [])
    stack_problems = [p for p in data["problems"] if ": stack " in p]
    assert stack_problems == []


def test_cli_validate_exit_1_on_a_contradicting_stack(tmp_path, capsys):
    _demo(tmp_path, deepspeed="0.11.1")
    rc = main(["matrix", "validate", "--matrix", str(tmp_path / "matrix")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "deepspeed 0.11.1 lacks deepspeed.utils.set_z3_leaf_modules" in out


def test_cli_list_text_and_json(capsys):
    assert main(["matrix", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [p["name"] for p in data["projects"]]
    assert names == sorted(SHIPPED.projects)
    stacks = {s["id"] for p in data["projects"] for s in p["stacks"]}
    assert stacks == {s.id for p in SHIPPED.projects.values() for s in p.stacks}
    assert main(["matrix", "list"]) == 0
    text = capsys.readouterr().out
    for name in names:
        assert f"{name}: " in text


def test_cli_show_by_alias_and_unknown_project(capsys):
    project = sorted(SHIPPED.projects.values(), key=lambda p: p.name)[0]
    alias = (project.info.aliases or [project.name])[0]
    assert main(["matrix", "show", alias, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["info"]["name"] == project.name
    assert len(data["stacks"]) == len(project.stacks)
    assert main(["matrix", "show", project.name]) == 0
    assert project.info.title in capsys.readouterr().out
    assert main(["matrix", "show", "no-such-project"]) == 2
    assert "no project 'no-such-project'" in capsys.readouterr().err


def test_cli_api_by_suffix(capsys):
    assert main(["matrix", "api", "set_z3_leaf_modules", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (entry,) = [e for e in data["entries"] if e["param"] == ""]
    assert entry["symbol"] == "deepspeed.utils.set_z3_leaf_modules"
    assert "0.11.1" not in entry["releases"] and "0.13.0" in entry["releases"]
    assert main(["matrix", "api", "deepspeed.moe.layer.MoE.__init__", "--param", "top2_2nd_expert_sampling"]) == 0
    out = capsys.readouterr().out
    first = _api("deepspeed.moe.layer.MoE.__init__", "top2_2nd_expert_sampling").first
    assert f"in deepspeed {first} .." in out
    assert main(["matrix", "api", "no_such_symbol_anywhere"]) == 2


def test_cli_help_has_examples():
    proc = subprocess.run([sys.executable, "-m", "moe_env", "matrix", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "scan-deepspeed" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "moe_env", "matrix", "scan-deepspeed"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("moe-env: error: name deepspeed releases")


# ---------------------------------------------------------------- the scanner, offline, on fake sdists

FAKE_INIT = {
    "0.1.0": "from .logging import logger\n",
    "0.2.0": "from .logging import logger\nfrom .z3_leaf_module import set_z3_leaf_modules\n",
    "0.3.0": "from .logging import logger\nfrom .z3_leaf_module import set_z3_leaf_modules\n",
}
FAKE_SETUP_OK = "from setuptools import setup\nsetup(name='deepspeed', version='{v}', packages=['deepspeed', 'deepspeed.utils', 'deepspeed.moe'])\n"
FAKE_SETUP_TORCH = "import torch\n" + FAKE_SETUP_OK  # like 0.13.0: pip cannot prepare metadata without torch


def _fake_sdist(dest: Path, version: str) -> None:
    top = f"deepspeed-{version}"
    build = dest / "build" / top
    files = {
        "setup.py": (FAKE_SETUP_TORCH if version == "0.3.0" else FAKE_SETUP_OK).format(v=version),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: deepspeed\nVersion: {version}\n",
        "requirements/requirements.txt": "torch\npydantic<2.0.0\n" if version == "0.1.0" else "torch\npydantic>=2.0.0\n",
        "deepspeed/__init__.py": "",
        "deepspeed/utils/__init__.py": FAKE_INIT[version],
        "deepspeed/utils/logging.py": "logger = None\n",
        "deepspeed/moe/__init__.py": "",
        "deepspeed/moe/layer.py": "class MoE:\n    def __init__(self, hidden_size, expert, num_experts=1"
        + (", top2_2nd_expert_sampling=True" if version != "0.1.0" else "") + "):\n        pass\n",
    }
    if version != "0.1.0":
        files["deepspeed/utils/z3_leaf_module.py"] = "def set_z3_leaf_modules(model, leaf_module_classes):\n    return []\n"
    for rel, text in files.items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_text(text)
    with tarfile.open(dest / f"{top}.tar.gz", "w:gz") as tf:
        tf.add(build, arcname=top)


@pytest.fixture(scope="module")
def fake_links(tmp_path_factory):
    """A find-links folder of fake deepspeed sdists and one sdist cache, built once per module."""
    root = tmp_path_factory.mktemp("fake_index")
    links = root / "links"
    links.mkdir()
    for v in FAKE_INIT:
        _fake_sdist(links, v)
    return root


@pytest.fixture
def fake_index(fake_links, monkeypatch):
    """pip isolated from the machine's config and pointed at the fake sdists (per test: the env is restored)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(fake_links / "links"))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return fake_links


def test_scanner_reads_real_pip_downloads_of_fake_sdists(fake_index):
    symbols = ["deepspeed.utils.set_z3_leaf_modules", "deepspeed.moe.layer.MoE.__init__"]
    scans = scan.scan_versions(["0.3.0", "0.1.0", "0.2.0"], symbols, cache_dir=fake_index / "cache")
    assert [s.version for s in scans] == ["0.1.0", "0.2.0", "0.3.0"]
    assert [s.metadata_failed for s in scans] == [False, False, True]
    assert scans[0].requirements == ["torch", "pydantic<2.0.0"]
    keys = [("deepspeed.utils.set_z3_leaf_modules", ""), ("deepspeed.utils.never_there", "")]
    rows, missing = scan.build_rows(scans, keys)
    by = {(r.symbol, r.param): r for r in rows}
    leaf = by[("deepspeed.utils.set_z3_leaf_modules", "")]
    assert (leaf.first, leaf.last, leaf.before_first) == ("0.2.0", "", "0.1.0")
    assert leaf.first_where == "deepspeed/utils/z3_leaf_module.py:1"
    top2 = by[("deepspeed.moe.layer.MoE.__init__", "top2_2nd_expert_sampling")]
    assert top2.first == "0.2.0"
    assert by[("deepspeed.moe.layer.MoE.__init__", "hidden_size")].first == "0.1.0"
    assert missing == [("deepspeed.utils.never_there", "")]
    # the cache answers the second time without pip, and remembers the failed metadata step
    again = scan.fetch_sdist("0.3.0", fake_index / "cache", pip=["/nonexistent/pip"])
    assert again == (fake_index / "cache" / "deepspeed-0.3.0", True)


def test_scanner_unknown_release_is_a_usage_error(fake_index):
    from moe_env.errors import MoeEnvError

    with pytest.raises(MoeEnvError) as exc:
        scan.scan_versions(["9.9.9"], ["deepspeed.utils.set_z3_leaf_modules"], cache_dir=fake_index / "cache")
    assert "deepspeed==9.9.9" in str(exc.value)


def test_scan_write_replaces_only_the_generated_section(fake_index, tmp_path):
    target = tmp_path / "deepspeed.toml"
    target.write_text('package = "deepspeed"\n\n[[release]]\nversion = "0.1.0"\nsource = "release:deepspeed==0.1.0"\n')
    scans = scan.scan_versions(["0.1.0", "0.2.0"], ["deepspeed.utils.set_z3_leaf_modules"], cache_dir=fake_index / "cache")
    rows, _ = scan.build_rows(scans, [("deepspeed.utils.set_z3_leaf_modules", "")])
    assert scan.write_api_section(target, scan.render_api_section(rows, scans)) is True
    first = target.read_text()
    assert first.startswith('package = "deepspeed"') and 'version = "0.1.0"' in first
    assert first.count(scan.MARKER) == 1
    assert scan.write_api_section(target, scan.render_api_section(rows, scans)) is False  # idempotent
    root = tmp_path / "mx" / "packages"
    root.mkdir(parents=True)
    shutil.copy(target, root / "deepspeed.toml")
    m = load_matrix(root.parent)
    (e,) = [e for e in m.api["deepspeed"] if not e.param]
    assert (e.first, e.last, e.newest_checked) == ("0.2.0", "", "0.2.0")
    assert e.source[0] == "release:deepspeed==0.2.0:deepspeed/utils/z3_leaf_module.py:1"


def test_cli_scan_json_on_fake_index(fake_index, capsys, monkeypatch):
    rc = main(["matrix", "scan-deepspeed", "0.1.0", "0.2.0", "--cache-dir", str(fake_index / "cache"), "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"] == ["0.1.0", "0.2.0"]
    rows = {(r["symbol"], r["param"]): r for r in data["api"]}
    assert rows[("deepspeed.utils.set_z3_leaf_modules", "")]["first"] == "0.2.0"


# ---------------------------------------------------------------- real releases (network)


@pytest.mark.network
def test_api_table_matches_real_deepspeed_sdists(tmp_path):
    """Scan real releases from the index and hold the shipped API table to what they contain."""
    versions = ["0.11.1", "0.12.6", "0.13.0", "0.14.5"]
    symbols, keys = scan.tracked_keys(SHIPPED)
    scans = scan.scan_versions(versions, symbols, cache_dir=Path(os.environ.get("MOE_ENV_SDIST_CACHE", tmp_path / "sdists")))
    table = SHIPPED.api["deepspeed"]
    checked = 0
    for s in scans:
        for e in table:
            expected = consistency.api_has(e, s.version)
            actual = scan.release_has(s, (e.symbol, e.param))
            assert expected == actual, f"{e.symbol}({e.param}) in {s.version}: table says {expected}, sdist says {actual}"
            checked += 1
    assert checked >= 3 * len(table)
    by = {s.version: s for s in scans}
    assert not by["0.11.1"].hits["deepspeed.utils.set_z3_leaf_modules"].found
    assert by["0.13.0"].hits["deepspeed.utils.set_z3_leaf_modules"].found
    assert by["0.13.0"].metadata_failed  # its setup imports torch
    rel = {r.version: r for r in SHIPPED.releases["deepspeed"]}
    for s in scans:
        pyd = [r for r in s.requirements if r.startswith("pydantic")]
        assert pyd and SpecifierSet(pyd[0][len("pydantic"):]) == SpecifierSet(rel[s.version].requires["pydantic"])


@pytest.mark.network
def test_transformers_tables_match_real_wheels(tmp_path):
    """The transformers [[api]] rows and [[release]] requirements, held to real wheels read statically."""
    import zipfile

    versions = ["4.35.2", "4.36.0", "4.45.2", "4.46.0", "4.46.3", "4.47.0"]
    dl = tmp_path / "dl"
    for v in versions:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dl),
                        f"transformers=={v}"], check=True, capture_output=True, timeout=600)
    table = SHIPPED.api["transformers"]
    releases = {r.version: r for r in SHIPPED.releases["transformers"]}
    compared = 0
    for v in versions:
        (wheel,) = dl.glob(f"transformers-{v}-*.whl")
        root = tmp_path / v
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(root)
            meta = zf.read(f"transformers-{v}.dist-info/METADATA").decode()
        s = scan.scan_tree(v, str(root), sorted({e.symbol for e in table}))
        for e in table:
            expected = consistency.api_has(e, v)
            assert expected == scan.release_has(s, (e.symbol, e.param)), f"{e.symbol}({e.param}) in transformers {v}"
            compared += 1
        if v in releases:
            torch_lines = [line for line in meta.splitlines()
                           if line.startswith("Requires-Dist: torch") and ("'torch'" in line or '"torch"' in line)]
            assert torch_lines, v
            spec = torch_lines[0].split("torch", 1)[1].split(";", 1)[0].strip(" ()")
            assert SpecifierSet(spec) == SpecifierSet(releases[v].requires["torch"]), v
    assert compared == len(versions) * len(table)
