"""Maintainer tool: regenerate compat_matrix/entry_points/*.toml, the flags each project's entry point accepts.

`check-config` calls a launch flag misspelt when the project's own argument parser would refuse it,
so the flag lists must be the parser's, read at the commit the matrix pins. This reads upstream
source with `ast` only (nothing is imported or run):

- HfArgumentParser entry points (MGM, MoE-LLaVA): every init field of the script's argument
  dataclasses, their bases included (TrainingArguments subclasses transformers.TrainingArguments,
  read from the pinned transformers wheel), as `--name` plus metadata aliases, and `--no_name` for
  bool fields whose default is True (transformers/hf_argparser.py `_parse_dataclass_field`).
- Megatron: every `add_argument` option string in megatron/training/arguments.py (or
  megatron/arguments.py at older commits) plus the groups built by `ArgumentGroupFactory(Config,
  exclude=[...])` (megatron/training/argument_utils.py: `--name-with-dashes`; bool fields whose
  default is not False give `--no-name` and `--disable-name`; argparse_meta arg_names win).
- XTuner: the `add_argument` option strings of xtuner/tools/train.py (what `xtuner train` runs).

Usage (a work tree, or a bare git dir plus --commit, e.g. what `git clone --bare` gives):

    python -m moe_env.matrix.entry_flags megatron --repo DIR --commit SHA > compat_matrix/entry_points/megatron.toml
    python -m moe_env.matrix.entry_flags minigemini --repo DIR --commit SHA \\
        --transformers-wheel transformers-4.36.2-py3-none-any.whl > compat_matrix/entry_points/minigemini.toml
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

# ------------------------------------------------------------------ reading a tree


class Tree:
    """Files of one upstream commit: a work tree, or a bare git dir read with `git show COMMIT:PATH`."""

    def __init__(self, root: str, commit: str = "") -> None:
        self.root, self.commit = root, commit
        self._names: Optional[List[str]] = None

    def read(self, path: str) -> str:
        if self.commit:
            return subprocess.run(["git", "-C", self.root, "show", f"{self.commit}:{path}"], check=True,
                                  capture_output=True, text=True).stdout
        with open(os.path.join(self.root, path), encoding="utf-8") as fh:
            return fh.read()

    def names(self) -> List[str]:
        if self._names is None:
            if self.commit:
                out = subprocess.run(["git", "-C", self.root, "ls-tree", "-r", "--name-only", self.commit],
                                     check=True, capture_output=True, text=True).stdout
                self._names = out.splitlines()
            else:
                self._names = [os.path.relpath(os.path.join(d, f), self.root).replace(os.sep, "/")
                               for d, _, fs in os.walk(self.root) for f in fs]
        return self._names

    def exists(self, path: str) -> bool:
        return path in set(self.names())


class Wheel:
    """Files of a wheel (a zip), read without installing it."""

    def __init__(self, path: str) -> None:
        self.zf = zipfile.ZipFile(path)

    def read(self, path: str) -> str:
        return self.zf.read(path).decode("utf-8")


# ------------------------------------------------------------------ argparse literals


def add_argument_options(tree: ast.AST) -> List[Tuple[str, int]]:
    """Every option string (`--x`, `-x`) given to an `.add_argument(...)` call, with its line;
    `action=argparse.BooleanOptionalAction` also registers `--no-x`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            negated = any(kw.arg == "action" and ast.unparse(kw.value).endswith("BooleanOptionalAction")
                          for kw in node.keywords)
            for a in node.args:
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"):
                    out.append((a.value, node.lineno))
                    if negated and a.value.startswith("--"):
                        out.append(("--no-" + a.value[2:], node.lineno))
    return out


_NO_VALUE_ACTIONS = ("store_true", "store_false", "store_const", "count", "BooleanOptionalAction")


def no_value_options(tree: ast.AST) -> List[str]:
    """Option strings of add_argument calls whose action takes no value (store_true, store_false, ...)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            action = next((ast.unparse(kw.value).strip("'\"") for kw in node.keywords if kw.arg == "action"), "")
            if not action.endswith(_NO_VALUE_ACTIONS):
                continue
            for a in node.args:
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"):
                    out.append(a.value)
                    if action.endswith("BooleanOptionalAction") and a.value.startswith("--"):
                        out.append("--no-" + a.value[2:])
    return out


def function(tree: ast.Module, name: str) -> Optional[ast.FunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def parser_allow_abbrev(tree: ast.AST) -> Tuple[bool, int]:
    """allow_abbrev of the first `ArgumentParser(...)` call (argparse's default: True), and its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "ArgumentParser":
            for kw in node.keywords:
                if kw.arg == "allow_abbrev" and isinstance(kw.value, ast.Constant):
                    return bool(kw.value.value), node.lineno
            return True, node.lineno
    return True, 0


# ------------------------------------------------------------------ dataclass fields


@dataclass
class Field:
    name: str
    annotation: str  # source text of the annotation
    default: Optional[ast.AST]  # the default value expression (the `default=` of field(...)), None when none
    init: bool = True
    meta: Dict[str, object] = field(default_factory=dict)  # literal metadata
    line: int = 0


def class_fields(cls: ast.ClassDef) -> List[Field]:
    """The annotated assignments of a class body, as dataclasses sees them (ClassVar skipped)."""
    out = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        ann = ast.unparse(node.annotation)
        if "ClassVar" in ann or "InitVar" in ann:
            continue
        f = Field(name=node.target.id, annotation=ann, default=node.value, line=node.lineno)
        v = node.value
        if isinstance(v, ast.Call) and getattr(v.func, "attr", getattr(v.func, "id", "")) in ("field", "HfArg"):
            f.default = None
            for kw in v.keywords:
                if kw.arg == "default":
                    f.default = kw.value
                elif kw.arg == "init" and isinstance(kw.value, ast.Constant):
                    f.init = bool(kw.value.value)
                elif kw.arg == "metadata":
                    try:
                        f.meta = ast.literal_eval(kw.value)
                    except (ValueError, SyntaxError):
                        f.meta = _dict_literals(kw.value)
                elif kw.arg == "aliases":
                    try:
                        f.meta["aliases"] = ast.literal_eval(kw.value)
                    except ValueError:
                        pass
        out.append(f)
    return out


def _dict_literals(node: ast.AST) -> Dict[str, object]:
    """The literal entries of a dict display whose other entries are not literals (`"type": str`)."""
    out: Dict[str, object] = {}
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                try:
                    out[k.value] = ast.literal_eval(v)
                except ValueError:
                    out[k.value] = _dict_literals(v) if isinstance(v, ast.Dict) else None
    return out


def is_bool(annotation: str) -> bool:
    a = annotation.replace(" ", "").replace("typing.", "")
    return a in ("bool", "Optional[bool]", "bool|None", "None|bool", "Union[bool,None]")


def _const(node: Optional[ast.AST]) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    return ...  # not a literal


Resolver = Callable[[str, ast.ClassDef], Optional[Tuple[ast.ClassDef, str]]]


def all_fields(cls: ast.ClassDef, where: str, resolve: Resolver) -> List[Tuple[Field, str]]:
    """Fields of `cls` and of its dataclass bases (first base chain, as dataclasses merges them), with the file."""
    out: Dict[str, Tuple[Field, str]] = {}
    for base in cls.bases:
        found = resolve(ast.unparse(base), cls)
        if found:
            for f, w in all_fields(found[0], found[1], resolve):
                out[f.name] = (f, w)
    for f in class_fields(cls):
        out[f.name] = (f, where)
    return list(out.values())


def find_class(tree: ast.Module, name: str) -> Optional[ast.ClassDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


# ------------------------------------------------------------------ the three parsers


@dataclass
class Entry:
    id: str
    scripts: List[str]
    parser: str
    allow_abbrev: bool
    flags: List[str]
    source: List[str]
    default: bool = True
    conditional_flags: List[str] = field(default_factory=list)
    conditional: str = ""
    notes: str = ""
    no_value_flags: List[str] = field(default_factory=list)
    bool_value_flags: List[str] = field(default_factory=list)


def hf_entry(project: str, tree: Tree, repo: str, commit: str, script: str, classes: List[str],
             wheel: Wheel, wheel_name: str, scripts: List[str]) -> Entry:
    """HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)) of `script`."""
    mod = ast.parse(tree.read(script))
    hf_path = "transformers/training_args.py"
    hf_mod = ast.parse(wheel.read(hf_path))

    def resolve(base: str, _cls: ast.ClassDef) -> Optional[Tuple[ast.ClassDef, str]]:
        if base in ("transformers.TrainingArguments", "TrainingArguments"):
            c = find_class(hf_mod, "TrainingArguments")
            return (c, f"release:{wheel_name}:{hf_path}") if c else None
        c = find_class(mod, base)
        return (c, f"{repo}@{commit}:{script}") if c else None

    flags = {"-h", "--help"}
    no_value, bool_value = {"-h", "--help"}, set()
    for name in classes:
        cls = find_class(mod, name)
        if cls is None:
            raise SystemExit(f"{script}: no class {name}")
        for f, _w in all_fields(cls, script, resolve):
            if not f.init:
                continue
            flags.add(f"--{f.name}")
            aliases = f.meta.get("aliases") or []
            names = [f"--{f.name}"] + ([aliases] if isinstance(aliases, str) else list(aliases))
            flags.update(names)
            if is_bool(f.annotation):
                # type=string_to_bool (nargs="?" for bool and defaulted Optional[bool]; one value otherwise)
                bool_value.update(n for n in names if n.startswith("--"))
                if _const(f.default) is True:
                    flags.add(f"--no_{f.name}")
                    no_value.add(f"--no_{f.name}")
    line = next((n.lineno for n in ast.walk(mod) if isinstance(n, ast.Call)
                 and getattr(n.func, "attr", "") == "HfArgumentParser"), 0)
    hf_parser = wheel.read("transformers/hf_argparser.py")
    add_line = next(i for i, t in enumerate(hf_parser.splitlines(), 1) if "parser.add_argument(field_name, *aliases" in t)
    no_line = next(i for i, t in enumerate(hf_parser.splitlines(), 1) if 'f"--no_{field.name}"' in t)
    bool_line = next((i for i, t in enumerate(hf_parser.splitlines(), 1) if t.startswith("def string_to_bool")), 0)
    return Entry(
        id=f"{project}-train", scripts=scripts, parser="hf", allow_abbrev=True, flags=sorted(flags),
        no_value_flags=sorted(no_value), bool_value_flags=sorted(bool_value),
        source=[f"{repo}@{commit}:{script}:{line} HfArgumentParser(({', '.join(classes)}))",
                f"release:{wheel_name}:{hf_path} class TrainingArguments",
                f"release:{wheel_name}:transformers/hf_argparser.py:{add_line} --name and aliases; :{no_line} --no_name for bools defaulting to True",
                f"release:{wheel_name}:transformers/hf_argparser.py:{bool_line} string_to_bool: the values a bool flag takes"],
        notes="HfArgumentParser passes no allow_abbrev, so argparse's default (unique prefixes accepted) holds; "
              "parse_args_into_dataclasses raises 'Some specified arguments are not used by the HfArgumentParser' "
              "for anything else.")


def megatron_entry(tree: Tree, repo: str, commit: str) -> Entry:
    path = "megatron/training/arguments.py" if tree.exists("megatron/training/arguments.py") else "megatron/arguments.py"
    mod = ast.parse(tree.read(path))
    abbrev, abbrev_line = parser_allow_abbrev(function(mod, "parse_args") or mod)
    flags = {"-h", "--help"} | {o for o, _ in add_argument_options(mod)}
    no_value = {"-h", "--help"} | set(no_value_options(mod))
    classes = _class_index(tree)
    sources = [f"{repo}@{commit}:{path}:{abbrev_line} ArgumentParser(allow_abbrev={abbrev}); add_argument calls"]
    cache: Dict[str, ast.Module] = {}

    def parse(p: str) -> ast.Module:
        if p not in cache:
            cache[p] = ast.parse(tree.read(p))
        return cache[p]

    def resolve(base: str, _cls: ast.ClassDef) -> Optional[Tuple[ast.ClassDef, str]]:
        for p in classes.get(base.split(".")[-1], []):
            c = find_class(parse(p), base.split(".")[-1])
            if c is not None:
                return c, p
        return None

    factories = _factories(mod)
    if factories:
        sources.append(f"{repo}@{commit}:megatron/training/argument_utils.py ArgumentGroupFactory "
                       "(--name-with-dashes; --no-NAME and --disable-NAME for bools not defaulting to False)")
    for cls_name, exclude, line in factories:
        found = resolve(cls_name, None)  # type: ignore[arg-type]
        if found is None:
            raise SystemExit(f"{path}:{line}: class {cls_name} not found in the tree")
        files = []
        for f, w in all_fields(found[0], found[1], resolve):
            if w not in files:
                files.append(w)
            if f.name in exclude or not f.init:
                continue
            meta = f.meta.get("argparse_meta") if isinstance(f.meta.get("argparse_meta"), dict) else {}
            if meta and meta.get("arg_names"):
                flags.update(meta["arg_names"])  # type: ignore[arg-type]
                if is_bool(f.annotation) and not meta.get("type") and not meta.get("nargs"):
                    no_value.update(meta["arg_names"])  # type: ignore[arg-type]
                continue
            dashed = "--" + f.name.replace("_", "-")
            if is_bool(f.annotation) and not (_const(f.default) is False or _const(f.default) == 0):
                names = {"--no-" + f.name.replace("_", "-"), "--disable-" + f.name.replace("_", "-")}
                flags.update(names)
                no_value.update(names)  # store_false
            else:
                flags.add(dashed)
                if is_bool(f.annotation):
                    no_value.add(dashed)  # store_true
        bases = [w for w in files if w != found[1]]
        sources.append(f"{repo}@{commit}:{found[1]} class {cls_name} (ArgumentGroupFactory at {path}:{line})"
                       + (f"; fields also from {', '.join(bases)}" if bases else ""))
    cond: List[str] = []
    cond_src = "megatron/post_training/arguments.py"
    if tree.exists(cond_src):
        cond = sorted({o for o, _ in add_argument_options(parse(cond_src))} - flags)
        sources.append(f"{repo}@{commit}:{cond_src} add_modelopt_args (pretrain_gpt.py passes it when nvidia-modelopt imports)")
    return Entry(id="megatron-pretrain", scripts=["pretrain_gpt.py", "pretrain_mamba.py", "pretrain_t5.py",
                                                  "pretrain_bert.py", "pretrain_vlm.py"],
                 parser="argparse", allow_abbrev=abbrev, flags=sorted(flags), source=sources,
                 no_value_flags=sorted(no_value & flags),
                 conditional_flags=cond, conditional="accepted only when nvidia-modelopt is installed (add_modelopt_args)",
                 notes="parse_args() with allow_abbrev=False: an unknown or abbreviated flag stops the launch "
                       "with 'unrecognized arguments'.")


def _class_index(tree: Tree) -> Dict[str, List[str]]:
    """Class name -> files under megatron/ that define it (text search first, parse on demand)."""
    out: Dict[str, List[str]] = {}
    for p in tree.names():
        if p.startswith("megatron/") and p.endswith(".py"):
            try:
                text = tree.read(p)
            except (subprocess.CalledProcessError, OSError, UnicodeDecodeError):
                continue
            for m in re.finditer(r"^class\s+(\w+)", text, re.M):
                out.setdefault(m.group(1), []).append(p)
    return out


def _factories(mod: ast.Module) -> List[Tuple[str, List[str], int]]:
    """(class name, excluded fields, line) of every ArgumentGroupFactory(...) whose group is built."""
    out = []
    for fn in ast.walk(mod):
        if not isinstance(fn, ast.FunctionDef):
            continue
        lists: Dict[str, List[str]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    val = ast.literal_eval(node.value)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(val, list):
                    lists[node.targets[0].id] = val
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ArgumentGroupFactory" and node.args:
                exclude: List[str] = []
                for kw in node.keywords:
                    if kw.arg == "exclude":
                        if isinstance(kw.value, ast.Name):
                            exclude = lists.get(kw.value.id, [])
                        else:
                            exclude = ast.literal_eval(kw.value)
                out.append((ast.unparse(node.args[0]), exclude, node.lineno))
    return out


def xtuner_entry(tree: Tree, repo: str, commit: str) -> Entry:
    path = "xtuner/tools/train.py"
    mod = ast.parse(tree.read(path))
    fn = function(mod, "parse_args") or mod
    abbrev, line = parser_allow_abbrev(fn)
    flags = {"-h", "--help"} | {o for o, _ in add_argument_options(fn)}
    return Entry(id="xtuner-train", scripts=["xtuner train", "xtuner/tools/train.py", "train.py"], parser="argparse",
                 allow_abbrev=abbrev, flags=sorted(flags),
                 source=[f"{repo}@{commit}:{path}:{line} parse_args (what `xtuner train CONFIG` runs)"],
                 notes="argparse's default allow_abbrev=True: unique prefixes are accepted. --cfg-options takes "
                       "key=value words.")


def xtuner_configs(tree: Tree) -> List[str]:
    """Names `xtuner train NAME` resolves: every .py/.json under xtuner/configs not starting with . or _
    (xtuner/configs/__init__.py get_cfgs_name_path; later files of the same name win there)."""
    names = set()
    for p in tree.names():
        if p.startswith("xtuner/configs/") and p.endswith((".py", ".json")):
            base = p.rsplit("/", 1)[-1]
            if not base.startswith((".", "_")):
                names.add(base.rsplit(".", 1)[0])
    return sorted(names)


# ------------------------------------------------------------------ TOML out


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(values: Iterable[str], per_line: int = 4) -> str:
    vals = list(values)
    if not vals:
        return "[]"
    rows = [", ".join(_q(v) for v in vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return "[\n" + "".join(f"  {r},\n" for r in rows) + "]"


def to_toml(project: str, entry: Entry, command: str) -> str:
    lines = [f"# Flags accepted by {project}'s training entry point, read at the commit the project pins.",
             f"# Generated by `{command}` (moe_env/matrix/entry_flags.py); regenerate rather than edit.",
             "", f"extends = {_q(project)}", "", "[[entry_point]]", f"id = {_q(entry.id)}",
             f"scripts = {_list(entry.scripts, 8)}", f"parser = {_q(entry.parser)}",
             f"allow_abbrev = {'true' if entry.allow_abbrev else 'false'}", f"default = {'true' if entry.default else 'false'}",
             f"notes = {_q(entry.notes)}", f"source = {_list(entry.source, 1)}"]
    if entry.conditional_flags:
        lines += [f"conditional = {_q(entry.conditional)}", f"conditional_flags = {_list(entry.conditional_flags)}"]
    if entry.no_value_flags:
        lines.append(f"no_value_flags = {_list(entry.no_value_flags)}")
    if entry.bool_value_flags:
        lines.append(f"bool_value_flags = {_list(entry.bool_value_flags)}")
    lines.append(f"flags = {_list(entry.flags)}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moe_env.matrix.entry_flags", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", choices=["minigemini", "moe-llava", "megatron", "xtuner", "xtuner-configs"],
                    help="xtuner-configs prints `configs = [...]` for an xtuner [[release]] entry")
    ap.add_argument("--repo", required=True, help="upstream work tree, or a bare git dir with --commit")
    ap.add_argument("--commit", default="", help="read this commit of a git dir (default: the work tree's files)")
    ap.add_argument("--pin-commit", default="", help="commit to cite (default: --commit)")
    ap.add_argument("--transformers-wheel", help="the pinned transformers wheel (MGM, MoE-LLaVA)")
    a = ap.parse_args(argv)
    tree = Tree(a.repo, a.commit)
    cite = a.pin_commit or a.commit
    if not cite:
        raise SystemExit("--commit or --pin-commit: the commit the flags are cited at")
    if a.project in ("minigemini", "moe-llava"):
        if not a.transformers_wheel:
            raise SystemExit("--transformers-wheel is needed: TrainingArguments subclasses transformers.TrainingArguments")
        m = re.match(r"^(transformers)-([^-]+)-", os.path.basename(a.transformers_wheel))
        wheel_name = f"{m.group(1)}=={m.group(2)}" if m else "transformers"
        if a.project == "minigemini":
            repo, script, scripts = "dvlab-research/MGM", "mgm/train/train.py", [
                "mgm/train/train_mem.py", "mgm/train/train.py", "mgm/train/train_xformers.py"]
        else:
            repo, script, scripts = "PKU-YuanGroup/MoE-LLaVA", "moellava/train/train.py", [
                "moellava/train/train_mem.py", "moellava/train/train.py", "moellava/train/train_xformers.py"]
        entry = hf_entry(a.project, tree, repo, cite, script, ["ModelArguments", "DataArguments", "TrainingArguments"],
                         Wheel(a.transformers_wheel), wheel_name, scripts)
    elif a.project == "xtuner-configs":
        sys.stdout.write(f"configs = {_list(xtuner_configs(tree), 3)}\n")
        return 0
    elif a.project == "megatron":
        entry = megatron_entry(tree, "NVIDIA/Megatron-LM", cite)
    else:
        entry = xtuner_entry(tree, "InternLM/xtuner", cite)
    cmd = f"python -m moe_env.matrix.entry_flags {a.project} --repo DIR --commit {cite[:12]}"
    if a.transformers_wheel:
        cmd += f" --transformers-wheel {os.path.basename(a.transformers_wheel)}"
    sys.stdout.write(to_toml(a.project, entry, cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
