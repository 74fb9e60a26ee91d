"""doctor --code: tiny checkouts the tests write, judged against real venvs whose fake libraries differ in
exactly the names the code uses (fakes.py writes them; nothing upstream is copied)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from doctor_support import moe_env_cli
from fakes import deepspeed_files, make_venv
from moe_env.code.collect import collect

# transformers as two releases differ: 4.45 still has transformers/deepspeed.py and _save_checkpoint(..., metrics)
_TRAINER_OLD = ("class Trainer:\n    def __init__(self, model=None, args=None, **kwargs):\n        pass\n\n"
                "    def _save_checkpoint(self, model, trial, metrics=None):\n        pass\n")
_TRAINER_NEW = ("class Trainer:\n    def __init__(self, model=None, args=None, **kwargs):\n        pass\n\n"
                "    def _save_checkpoint(self, model, trial):\n        pass\n\n"
                "    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):\n        pass\n")


def _transformers(old: bool) -> dict:
    files = {
        "transformers/__init__.py": (
            "import os\nopen(os.environ.get('MOE_ENV_TEST_IMPORTED', '/dev/null'), 'a').write('transformers imported\\n')\n"
            "from .trainer import Trainer\nfrom .lazy import *\nfrom . import dummy_objects\n"
            # names made from another module's dir(), as transformers' __init__ does: a miss stays certain
            # for names that module never mentions
            "_import_structure = {'utils.dummy': [n for n in dir(dummy_objects) if not n.startswith('_')]}\n"),
        "transformers/dummy_objects.py": "class DummyModel:\n    pass\n",
        "transformers/trainer.py": _TRAINER_OLD if old else _TRAINER_NEW,
        "transformers/lazy.py": "_LAZY = [\"some_lazy_thing\"]\n\n\ndef __getattr__(name):\n    raise AttributeError(name)\n",
        "transformers/utils.py": ("def load(path, *, strict=True, map_location=None):\n    pass\n\n\n"
                                  "def flexible(path, **kwargs):\n    pass\n"),
    }
    if old:
        files["transformers/deepspeed.py"] = "class HfDeepSpeedConfig:\n    def __init__(self, config):\n        pass\n"
    return files


def _ds(new: bool) -> dict:
    files = deepspeed_files("0.13.1" if new else "0.12.6", z3_leaf=new)
    port = ", distributed_port=29500" if new else ""
    files["deepspeed/__init__.py"] += f"\n\ndef initialize(args=None, model=None{port}):\n    pass\n"
    return files


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """Two real venvs: `new` has what the fork was written for (transformers 4.45-like, deepspeed 0.13.1);
    `old`... the other way round: the newer transformers and the older deepspeed, where the fork breaks."""
    root = tmp_path_factory.mktemp("code-venvs")
    good = make_venv(root / "good")
    good.add_dist("transformers", "4.45.2", files=_transformers(old=True))
    good.add_dist("deepspeed", "0.13.1", files=_ds(new=True))
    bad = make_venv(root / "bad")
    bad.add_dist("transformers", "4.47.0", files=_transformers(old=False))
    bad.add_dist("deepspeed", "0.12.6", files=_ds(new=False))
    return {"good": good, "bad": bad}


FORK = {
    "train.py": """\
        import os
        import deepspeed
        from transformers.deepspeed import HfDeepSpeedConfig
        from transformers import Trainer
        from transformers.utils import load, flexible
        try:
            from flash_attn import flash_attn_func
        except ImportError:
            flash_attn_func = None
        from . import helpers


        class MyTrainer(Trainer):
            def _save_checkpoint(self, model, trial, metrics=None):
                super()._save_checkpoint(model, trial, metrics)


        def main(args, model):
            deepspeed.utils.set_z3_leaf_modules(model, [object])
            deepspeed.initialize(args=args, model=model, distributed_port=29500)
            load("x.bin", map_location="cpu")
            flexible("x", anything=1)
            name = args.name
            getattr(deepspeed, name)
            import transformers
            transformers.some_lazy_thing


        def shadowed():
            deepspeed = make_engine()
            deepspeed.utils.nothing_like_this()


        class LossTrainer(MyTrainer):
            def compute_loss(self, model, inputs, return_outputs=False):
                return 0

            def my_own_helper(self):
                return 1
    """,
}


def _write(root: Path, files: dict) -> Path:
    import textwrap

    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def _doctor(venv, code, *extra, env=None):
    r = moe_env_cli(["doctor", "--python", str(venv.python), "--code", str(code), "--json", *extra], env=env)
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout), r


def _code_findings(report):
    return {(f["id"], f.get("line")): f for f in report["findings"] if f["id"].startswith("code.")}


def test_fork_against_the_release_it_was_not_written_for(tmp_path, venvs):
    code = _write(tmp_path / "fork", FORK)
    report, r = _doctor(venvs["bad"], code)
    found = _code_findings(report)
    assert r.returncode == 1
    missing = found[("code.missing-name", 3)]
    assert missing["severity"] == "error" and missing["file"] == "train.py"
    assert missing["code"] == "from transformers.deepspeed import HfDeepSpeedConfig"
    assert "transformers 4.47.0" in missing["seen"] and "4.30.0 to 4.45.2" in missing["seen"]  # the API table
    assert "pip install 'transformers>=4.30.0,<=4.45.2'" in missing["fix"]
    z3 = found[("code.missing-name", 19)]
    assert "deepspeed 0.12.6" in z3["seen"] and "pip install 'deepspeed>=0.13.0'" in z3["fix"]
    sup = found[("code.too-many-positional", 15)]
    assert "MyTrainer" in sup["seen"] and "(model, trial)" in sup["seen"]
    assert "transformers>=4.30.0,<=4.46.3" in sup["fix"]  # the table's row for _save_checkpoint(metrics=)
    kw = found[("code.unknown-keyword", 20)]
    assert "distributed_port" in kw["title"] and "no **kwargs" in kw["seen"]
    kwonly = [f for (fid, line), f in found.items() if line in (21, 22) and fid != "code.not-judged"]
    assert kwonly == []  # map_location= is keyword-only and accepted; flexible(**kwargs) takes anything
    guarded = found[("code.missing-module", 7)]
    assert guarded["severity"] == "warning" and "except ImportError" in guarded["seen"]
    note = found[("code.not-judged", None)]
    assert note["severity"] == "info" and note["title"].startswith("2 library references")
    assert "getattr(deepspeed, ...)" in note["seen"] and "transformers.some_lazy_thing" in note["seen"]
    assert report["code"]["files"] == 1 and "transformers.Trainer._save_checkpoint" in report["code"]["symbols"]
    assert not any(f["id"] == "code.missing-name" and "os" in f["title"] for f in report["findings"])
    assert not any(line == 31 for _, line in found)  # a local variable named deepspeed is not the library
    override = found[("code.override-signature", 35)]  # through MyTrainer, a class of the checkout
    assert override["severity"] == "warning" and "num_items_in_batch" in override["title"]
    assert not any(line == 38 for _, line in found)  # a method the base does not have is the checkout's own


def test_the_same_fork_against_its_own_releases_is_clean(tmp_path, venvs):
    code = _write(tmp_path / "fork", FORK)
    report, r = _doctor(venvs["good"], code)
    found = _code_findings(report)
    assert set(fid for fid, _ in found) == {"code.missing-module", "code.not-judged"}, found  # flash_attn only
    assert found[("code.missing-module", 7)]["severity"] == "warning"


def test_text_is_grouped_by_file_and_escapes_the_code(tmp_path, venvs):
    code = _write(tmp_path / "fork", {
        "a.py": "import deepspeed\ndeepspeed.utils.set_z3_leaf_modules(m, [])  # \x1b[31mred\n",
        "pkg/b.py": "from transformers.deepspeed import HfDeepSpeedConfig\n",
    })
    r = moe_env_cli(["doctor", "--python", str(venvs["bad"].python), "--code", str(code)])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    out = r.stdout
    assert "In the code (2)" in out
    assert out.index("\n  a.py") < out.index("\n  pkg/b.py")
    assert "\x1b[31m" not in out and "\\x1b[31m" in out
    assert "    ✗ 2: deepspeed.utils.set_z3_leaf_modules" in out


def test_from_json_judges_the_saved_surface(tmp_path, venvs):
    code = _write(tmp_path / "fork", FORK)
    saved, _ = _doctor(venvs["bad"], code)
    path = tmp_path / "node.json"
    path.write_text(json.dumps(saved))
    r = moe_env_cli(["doctor", "--from-json", str(path), "--code", str(code), "--json"])
    again = json.loads(r.stdout)
    assert set(_code_findings(again)) == set(_code_findings(saved))
    # a report written without --code has not the code's names: they are "not judged", never guessed
    plain = moe_env_cli(["doctor", "--python", str(venvs["bad"].python), "--json"])
    path.write_text(plain.stdout)
    r = moe_env_cli(["doctor", "--from-json", str(path), "--code", str(code), "--json"])
    found = _code_findings(json.loads(r.stdout))
    assert ("code.missing-name", 3) not in found and ("code.too-many-positional", 15) not in found
    assert "not in the saved report" in found[("code.not-judged", None)]["seen"]


def test_unreadable_files_symlink_loops_and_bad_paths(tmp_path, venvs):
    code = _write(tmp_path / "repo", {
        "ok.py": "from transformers.deepspeed import HfDeepSpeedConfig\n",
        "broken.py": "import deepspeed\ndef f(:\n    pass\n",
        "nul.py": b"import deepspeed\x00\n",
    })
    (code / "big.py").write_bytes(b"x = 1\n" * (10 * 1024 * 1024 // 6 + 1))  # 10 MB
    (code / "loop").symlink_to(code, target_is_directory=True)
    (code / "self.py").symlink_to(code / "self.py")
    (code / "sub").mkdir()
    (code / "sub" / "up").symlink_to("..", target_is_directory=True)
    report, r = _doctor(venvs["bad"], code)
    problems = {f["file"]: f for f in report["findings"] if f["id"] == "code.unreadable-file"}
    assert "syntax error line 2" in problems["broken.py"]["seen"] and problems["broken.py"]["severity"] == "warning"
    assert "10.5 MB" in problems["big.py"]["seen"] and problems["big.py"]["severity"] == "info"
    assert "nul.py" in problems
    assert ("code.missing-name", 1) in _code_findings(report)
    assert report["code"]["files"] == 3  # ok.py, broken.py counted; loops not followed, big/nul not judged
    for bad in (tmp_path / "nowhere", code / "broken.txt"):
        if bad.suffix:
            bad.write_text("x")
        r = moe_env_cli(["doctor", "--python", str(venvs["bad"].python), "--code", str(bad)])
        assert r.returncode == 2 and r.stderr.startswith("moe-env: error: --code") and "Traceback" not in r.stderr


def test_no_code_of_the_checkout_or_the_libraries_is_ever_run(tmp_path, venvs):
    sentinel = tmp_path / "ran"
    bomb = f"open({str(sentinel)!r}, 'a').write(__name__ + '\\n')\n"
    code = _write(tmp_path / "repo", {
        "setup.py": bomb + "from setuptools import setup\nsetup(name='bomb', install_requires=['deepspeed>=0.14'])\n",
        "conftest.py": bomb,
        "sitecustomize.py": bomb,
        "train.py": bomb + "import deepspeed\nimport transformers\ndeepspeed.utils.set_z3_leaf_modules(1, 2)\n",
        "pkg/__init__.py": bomb,
        "pkg/__main__.py": bomb,
    })
    imported = tmp_path / "imported"
    report, _ = _doctor(venvs["bad"], code, env={"MOE_ENV_TEST_IMPORTED": str(imported)})
    assert not sentinel.exists() and not imported.exists()
    assert ("code.missing-name", 4) in _code_findings(report)
    pin = [f for f in report["findings"] if f["id"] == "code.pin-mismatch"]
    assert pin and pin[0]["file"] == "setup.py" and pin[0]["severity"] == "warning"  # the literal, read, not run


def test_pins_project_and_commit_from_the_checkout(tmp_path, venvs):
    code = _write(tmp_path / "mgm", {
        "pyproject.toml": '[project]\nname = "mgm"\ndependencies = ["transformers==4.45.2", "deepspeed>=0.13", '
                          '"accelerate", "peft; python_version < \'3.0\'"]\n',
        "requirements.txt": "# pins\ntransformers==4.45.2\n-e .\ngit+https://example.invalid/x.git\n",
        "train.py": "import deepspeed\ndeepspeed.utils.set_z3_leaf_modules(m, [])\n"
                    "from transformers.deepspeed import HfDeepSpeedConfig\nimport flash_attn\n",
    })
    commit = "0123456789abcdef0123456789abcdef01234567"
    (code / ".git" / "refs" / "heads").mkdir(parents=True)
    (code / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (code / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    report, _ = _doctor(venvs["bad"], code)
    assert report["code"]["name"] == "mgm" and report["code"]["commit"] == commit
    assert report["project"]["name"] == "minigemini"  # detected from the checkout's package name
    ids = [f["id"] for f in report["findings"]]
    mismatch = [f for f in report["findings"] if f["id"] == "code.pin-mismatch"]
    assert {f["title"].split()[0] for f in mismatch} <= {"transformers", "deepspeed"} and mismatch
    assert any(f["id"] == "code.pin-not-installed" and "accelerate" in f["title"] for f in report["findings"])
    assert not any("peft" in f["title"] for f in report["findings"])  # its marker is false here
    assert len([f for f in mismatch if f["title"].startswith("transformers")]) == 1  # two files, one pin: once
    # the curated MGM check on set_z3_leaf_modules and the code's use are one problem, reported once
    z3 = [f for f in report["findings"] if "set_z3_leaf_modules" in f["seen"] + f["title"]]
    assert len(z3) == 1 and "[in the code: train.py:2]" in z3[0]["seen"], ids
    # ...and so are the curated check naming transformers.deepspeed and the import of one of its names,
    # and the curated "flash-attn is not installed" and the import of flash_attn
    shim = [f for f in report["findings"] if "transformers.deepspeed" in f["title"] + f["seen"]]
    assert len(shim) == 1 and shim[0]["id"].startswith("minigemini.") and "train.py:3" in shim[0]["seen"]
    flash = [f for f in report["findings"] if "flash" in (f["title"] + f["seen"]).lower()]
    assert len(flash) == 1 and "train.py:4" in flash[0]["seen"]
    assert report["code"]["merged_into_project_findings"] >= 3


def test_a_distribution_whose_source_is_elsewhere_is_not_judged(tmp_path):
    """An installed distribution claims `ghost` (RECORD) but its source is not on the path the probe reads
    (an editable install through a finder, say): its names are not judged, never called missing."""
    venv = make_venv(tmp_path / "venv")
    venv.add_dist("ghost", "1.0", files={"ghost/__init__.py": "def real():\n    pass\n"})
    (venv.site / "ghost" / "__init__.py").unlink()
    (venv.site / "ghost").rmdir()
    code = _write(tmp_path / "c", {"t.py": "from ghost import real\nimport deepspeed\n"})
    report, r = _doctor(venv, code)
    found = _code_findings(report)
    assert r.returncode == 1 and ("code.missing-module", 2) in found  # deepspeed: known, not installed
    assert "ghost" in found[("code.not-judged", None)]["seen"]
    assert not any("ghost" in f["title"] for f in report["findings"])


def test_collector_scopes_aliases_and_guards(tmp_path):
    code = _write(tmp_path / "c", {"m.py": """\
        import torch.nn.functional as F
        import deepspeed as ds
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from peft import PeftModel
        if is_flash_attn_available():
            import flash_attn
        ZeRO = ds.zero
        def f(ds):
            ds.not_the_library()
            F.softmax(x, dim=-1)
            ZeRO.Init(config=1)
        def g():
            from accelerate import Accelerator
            Accelerator(mixed_precision="bf16", *extra)
        ds.comm.all_reduce(t)
        F.relu = patched
    """})
    scan = collect(str(code))
    uses = {(u.symbol, u.kind): u for u in scan.uses}
    assert uses[("peft.PeftModel", "import")].guarded == "TYPE_CHECKING"
    assert uses[("flash_attn", "import")].guarded.startswith("if is_flash_attn_available")
    assert not any(u.symbol.startswith("deepspeed.not_the_library") for u in scan.uses)  # a parameter shadows ds
    assert uses[("torch.nn.functional.softmax", "call")].keywords == ["dim"]
    assert uses[("deepspeed.zero.Init", "call")].keywords == ["config"]
    acc = uses[("accelerate.Accelerator", "call")]
    assert acc.positional is None and acc.keywords == ["mixed_precision"]
    assert uses[("deepspeed.comm.all_reduce", "call")].positional == 1
    assert ("torch.nn.functional.relu", "attr") not in uses  # assigned to: only its parent must exist
    assert not any(u.symbol in ("typing.TYPE_CHECKING",) for u in scan.uses)  # the standard library is not asked


def test_probe_signatures_only_where_they_are_certain(tmp_path):
    from moe_env.probe.target import find_symbol

    lib = _write(tmp_path / "site", {
        "lib/__init__.py": ("import sys\nif sys.version_info >= (3, 99):\n    def f(a, b):\n        pass\n"
                            "else:\n    def f(a):\n        pass\n\n\ndef g(a, /, b, *, c, d=1, **kw):\n    pass\n"),
        "lib/classes.py": ("import dataclasses\nfrom torch import nn\n\n\nclass Plain:\n    def __init__(self, x, y=2):\n"
                           "        pass\n\n\n@dataclasses.dataclass\nclass Data(Plain):\n    z: int = 0\n\n\n"
                           "class Mixed(nn.Module, Plain):\n    pass\n"),
    })
    paths = [str(lib)]
    assert find_symbol(paths, "lib.f")["found"] and find_symbol(paths, "lib.f")["signature"] is None
    g = find_symbol(paths, "lib.g")["signature"]
    assert g["posonly"] == ["a"] and g["args"] == ["b"] and g["kwonly"] == ["c", "d"]
    assert g["kwonly_required"] == ["c"] and g["kwarg"] == "kw" and g["defaults"] == 0
    assert find_symbol(paths, "lib.classes.Plain")["signature"]["method"] is True
    assert find_symbol(paths, "lib.classes.Data")["signature"] is None  # a dataclass makes its own __init__
    assert find_symbol(paths, "lib.classes.Mixed")["signature"] is None  # nn.Module's __init__ comes first
    miss = find_symbol(paths, "lib.classes.Mixed.nothing")
    assert not miss["found"] and miss["undecided"]  # nn.Module (not read) may have it


def test_what_every_module_and_class_has_is_found(tmp_path):
    """Found on real checkouts (pytest, pip against their own venv): these gave false errors before."""
    from moe_env.probe.target import find_symbol

    lib = _write(tmp_path / "site", {
        "lib/__init__.py": "from ._version import version as __version__\n",
        "lib/_version.py": "version: str\n__version__ = version = '1.0'\n",
        "lib/base.py": "class Auth:\n    def __call__(self, r):\n        return r\n",
    })
    paths = [str(lib)]
    assert find_symbol(paths, "lib.__version__")["found"]  # a chained assignment binds both names
    assert find_symbol(paths, "lib.__file__")["found"] and find_symbol(paths, "lib.base.__name__")["found"]
    init = find_symbol(paths, "lib.base.Auth.__init__")
    assert init["found"] and init["signature"] is None  # object's, whose signature is not read
    assert not find_symbol(paths, "lib.base.Auth.nothing")["found"]


def test_an_override_may_rename_a_positional_parameter(tmp_path, venvs):
    code = _write(tmp_path / "c", {"t.py": """\
        from transformers import Trainer


        class T(Trainer):
            def _save_checkpoint(self, m, t):
                pass

            def compute_loss(self, model, inputs, *args, **kwargs):
                pass
    """})
    report, _ = _doctor(venvs["bad"], code)
    assert not [f for f in report["findings"] if f["id"] == "code.override-signature"]
