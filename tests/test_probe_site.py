"""The probe runs the target with -I -S and computes its search path itself: it must equal what site.py
would build, on every kind of interpreter, and nothing of the target's start-up code may run."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from moe_env.probe import runner

PYENV = sorted(p for p in glob.glob("/root/.pyenv/versions/3.*/bin/python3.*") if re.fullmatch(r"python3\.\d+", os.path.basename(p)))


def _interpreters():
    """(label, a python that makes venvs) for every CPython 3.8+ on this machine."""
    found = {}
    for exe in PYENV + [shutil.which(f"python3.{m}") for m in range(8, 15)] + [sys.executable, "/usr/bin/python3"]:
        if not exe or not os.path.exists(exe) or not os.access(exe, os.X_OK):
            continue
        out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        if re.fullmatch(r"\d+\.\d+", out) and tuple(map(int, out.split("."))) >= (3, 8):
            found.setdefault((out, os.path.realpath(exe)), exe)
    return sorted(found.items())


INTERPRETERS = _interpreters()


def _real_path(exe, env=None):
    """sys.path as the target itself builds it at start-up (site.py runs: only for trusted test venvs)."""
    code = "import sys, json, os; print(json.dumps([p for p in sys.path if p and os.path.isdir(p)]))"
    out = subprocess.run([exe, "-c", code], capture_output=True, text=True, cwd="/", timeout=60,
                         env=env or _clean_env()).stdout
    return json.loads(out)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MOE_ENV_", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def _probed_path(exe, monkeypatch, env=None):
    for k in [k for k in os.environ if k.startswith("PYTHON")]:
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    data = runner.run_target(exe, [], 30)
    return [p for p in data["python"]["sys_path"] if os.path.isdir(p)], data


@pytest.mark.parametrize("version, exe", [(v, e) for (v, _), e in INTERPRETERS], ids=[v for (v, _), _ in INTERPRETERS])
def test_search_path_matches_site_py_for_venvs_and_bare_prefixes(tmp_path, monkeypatch, version, exe):
    plain = tmp_path / "venv"
    subprocess.run([exe, "-m", "venv", "--without-pip", str(plain)], check=True, timeout=120)
    system_site = tmp_path / "venv-system"
    subprocess.run([exe, "-m", "venv", "--without-pip", "--system-site-packages", str(system_site)], check=True, timeout=120)
    # a .pth path line in the venv, as editable installs and conda-style extra dirs write
    extra = tmp_path / "extra-dir"
    extra.mkdir()
    sp = next((plain / "lib").glob("python3*/site-packages"))
    (sp / "aaa-extra.pth").write_text(f"# a comment\n{extra}\nmissing-dir\n")
    for target in (plain / "bin" / "python", system_site / "bin" / "python", Path(exe)):
        got, data = _probed_path(str(target), monkeypatch)
        assert got == _real_path(str(target)), target
    assert str(extra) in _probed_path(str(plain / "bin" / "python"), monkeypatch)[0]
    assert _probed_path(str(plain / "bin" / "python"), monkeypatch)[1]["python"]["prefix"] == str(plain)


def test_uv_and_virtualenv_venvs(tmp_path, monkeypatch):
    made = []
    try:
        from uv import find_uv_bin

        uv = find_uv_bin()
        subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(tmp_path / "uv")], check=True, timeout=120,
                       env=_clean_env(UV_NO_CONFIG="1"))
        made.append(tmp_path / "uv")
    except (ImportError, FileNotFoundError, subprocess.CalledProcessError):
        pass
    if subprocess.run([sys.executable, "-m", "virtualenv", "--version"], capture_output=True).returncode == 0:
        subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--no-pip", "--no-setuptools", "--no-wheel",
                        str(tmp_path / "ve")], check=True, timeout=120, env=_clean_env())
        made.append(tmp_path / "ve")
    if not made:
        pytest.skip("neither uv nor virtualenv is available")
    for venv in made:
        exe = str(venv / "bin" / "python")
        assert _probed_path(exe, monkeypatch)[0] == _real_path(exe), venv


def test_user_site_where_the_target_enables_it(tmp_path, monkeypatch):
    base = INTERPRETERS[0][1] if INTERPRETERS else sys.executable
    userbase = tmp_path / "userbase"
    ver = subprocess.run([base, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                         text=True).stdout.strip()
    usersite = userbase / "lib" / f"python{ver}" / "site-packages"
    usersite.mkdir(parents=True)
    (usersite / "userpkg-1.0.dist-info").mkdir()
    (usersite / "userpkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 1.0\n")
    venv = tmp_path / "venv-system"
    subprocess.run([base, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True, timeout=120)
    exe = str(venv / "bin" / "python")
    got, data = _probed_path(exe, monkeypatch, {"PYTHONUSERBASE": str(userbase)})
    assert got == _real_path(exe, _clean_env(PYTHONUSERBASE=str(userbase)))
    assert str(usersite) in got and "userpkg" in data["distributions"]
    got, data = _probed_path(exe, monkeypatch, {"PYTHONUSERBASE": str(userbase), "PYTHONNOUSERSITE": "1"})
    assert str(usersite) not in got and "userpkg" not in data["distributions"]


def test_no_startup_code_of_the_target_runs(tmp_path):
    """A .pth import line, a .pth that sleeps, sitecustomize, usercustomize and a package __init__: none runs."""
    sentinel = tmp_path / "ran"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    sp = next((venv / "lib").glob("python3*/site-packages"))
    touch = f"open({str(sentinel)!r}, 'a').write('%s\\n')"
    (sp / "evil.pth").write_text(f"import os; {touch % 'pth'}\n")
    (sp / "zzz-sleep.pth").write_text("import time; time.sleep(120)\n")
    (sp / "sitecustomize.py").write_text(touch % "sitecustomize" + "\n")
    userbase = tmp_path / "userbase"
    ver = "%d.%d" % sys.version_info[:2]
    usersite = userbase / "lib" / f"python{ver}" / "site-packages"
    usersite.mkdir(parents=True)
    (usersite / "usercustomize.py").write_text(touch % "usercustomize" + "\n")
    pkg = sp / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(touch % "package" + "\ndef f(a, b=1):\n    pass\n")
    (sp / "evilpkg-1.0.dist-info").mkdir()
    (sp / "evilpkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n")
    env = _clean_env(PYTHONUSERBASE=str(userbase), NO_COLOR="1")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moe_env", "doctor", "--python", str(venv / "bin" / "python"), "--json"],
                          capture_output=True, text=True, env=env, timeout=90)
    assert time.monotonic() - started < 60, "a sleeping .pth must not hang the probe"
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert "evilpkg" in report["environment"]["distributions"]
    assert str(usersite) in report["environment"]["python"]["sys_path"]
    assert not sentinel.exists(), sentinel.read_text()
    # and the lookup of a symbol in that package reads its source without importing it
    data = runner.run_target(str(venv / "bin" / "python"), ["evilpkg.f"], 30)
    assert data["api"]["evilpkg.f"]["found"] and data["api"]["evilpkg.f"]["params"] == ["a", "b"]
    assert not sentinel.exists()
    # the same venv started normally does run them all: the sentinel can fire
    (sp / "zzz-sleep.pth").unlink()
    subprocess.run([str(venv / "bin" / "python"), "-c", "import evilpkg"], env=env, timeout=30, capture_output=True)
    assert set(sentinel.read_text().split()) == {"pth", "sitecustomize", "usercustomize", "package"}
