"""A launch line split the way the processes see it, and its flags judged against the entry point's parser.

`deepspeed --num_gpus 8 mgm/train/train_mem.py --bf16 True` is three things: the launcher and its own
options (never the script's), the script, and the script's arguments, which the script's own parser
(HfArgumentParser, Megatron's argparse, `xtuner train`'s argparse) reads. Only the last part is
judged against the entry point's flag list (compat_matrix/entry_points/*.toml), with argparse's
rules: exact option strings, and unique prefixes where the parser allows abbreviations.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from moe_env.findings import Finding
from moe_env.matrix.model import EntryPoint, Project

LAUNCHERS = ("deepspeed", "torchrun", "accelerate")
_ENV_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")


@dataclass
class Launch:
    program: List[str] = field(default_factory=list)  # ["deepspeed"], ["python", "-m", "torch.distributed.run"], []
    launcher_args: List[str] = field(default_factory=list)  # the launcher's own options
    script: Optional[str] = None  # "mgm/train/train_mem.py", "xtuner train"; None: only the script's arguments
    args: List[str] = field(default_factory=list)  # what the script's parser reads
    env: Dict[str, str] = field(default_factory=dict)  # VAR=value words before the program
    wrapper: bool = False  # `bash run.sh ...`: a program whose arguments are its own, not the entry point's

    def positional(self) -> List[str]:
        """The words before the script's arguments, as the launcher rule reads them (`python train.py`)."""
        return self.program + ([self.script] if self.script else [])


def split_launch(argv: Sequence[str]) -> Launch:
    words = list(argv)
    out = Launch()
    while words and _ENV_WORD.match(words[0]):
        k, _, v = words.pop(0).partition("=")
        out.env[k] = v
    if not words:
        return out
    first = os.path.basename(words[0])
    if first.startswith("-"):  # only the script's arguments
        out.args = words
        return out
    if first == "xtuner":
        out.program = words[:1]
        if len(words) > 1 and words[1] == "train":
            out.script, out.args = "xtuner train", words[2:]
        else:
            out.script, out.args = " ".join(words[:2]), words[2:]
        return out
    if first.endswith(".py"):
        out.script, out.args = words[0], words[1:]
        return out
    if first in LAUNCHERS or _PYTHON.match(first):
        i = 1
        out.program = words[:1]
        if first == "accelerate" and len(words) > 1 and words[1] == "launch":
            out.program, i = words[:2], 2
        if _PYTHON.match(first):  # python [-u ...] [-m torch.distributed.run] script.py
            while i < len(words) and words[i].startswith("-") and words[i] != "-m":
                i += 1
            out.program = words[:i]
            if i + 1 < len(words) and words[i] == "-m":
                mod = words[i + 1]
                out.program = words[:i + 2]
                i += 2
                if not mod.startswith(("torch.distributed", "deepspeed")):
                    out.script, out.args = mod, words[i:]
                    return out
        rest = words[i:]
        j = next((k for k, w in enumerate(rest) if w.endswith(".py") and not w.startswith("-")), None)
        if j is None:
            out.launcher_args = rest
            return out
        if j == 0 and _PYTHON.match(first) and len(out.program) == i and "-m" not in out.program:
            out.program = words[:i]
        out.launcher_args, out.script, out.args = rest[:j], rest[j], rest[j + 1:]
        return out
    out.program, out.args, out.wrapper = words[:1], words[1:], True  # `bash run.sh ...`: a wrapper
    return out


def entry_point_for(project: Project, launch: Launch) -> Tuple[Optional[EntryPoint], str]:
    """The entry point the launch runs, and why none when None."""
    eps = project.entry_points
    if not eps:
        return None, f"the matrix lists no entry point for {project.name}"
    if launch.wrapper:
        return None, (f"the launch runs {launch.program[0]}, whose arguments are its own; give the line the "
                      "wrapper runs (deepspeed/torchrun ... SCRIPT.py ARGS) to have its flags checked")
    if launch.script is None:
        default = next((e for e in eps if e.default), None)
        return default, "" if default else "the launch names no script"
    script = launch.script.replace("\\", "/")
    for e in eps:
        for s in e.scripts:
            if script == s or script.endswith("/" + s) or os.path.basename(script) == os.path.basename(s) and " " not in s:
                return e, ""
    known = ", ".join(s for e in eps for s in e.scripts)
    return None, f"{launch.script} is not an entry point the matrix knows for {project.name} ({known})"


MAX_FLAG_FINDINGS = 20  # one finding per misspelt flag up to this many; the rest in one finding

_NEG_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+([eE][-+]?\d+)?$")


def judge_flags(project: Project, ep: EntryPoint, args: Sequence[str]) -> List[Finding]:
    """One error per flag the entry point's parser refuses (unknown or ambiguous), one info for abbreviations."""
    known = set(ep.flags) | set(ep.conditional_flags)
    unknown: List[Tuple[str, str]] = []
    ambiguous: List[Tuple[str, List[str]]] = []
    abbreviated: List[Tuple[str, str]] = []
    seen = set()
    for word in args:
        if word == "--":
            break  # argparse: everything after is positional
        if not (word.startswith("--") and len(word) > 2) and not re.match(r"^-[A-Za-z]", word):
            continue
        name = word.split("=", 1)[0]
        if name in known or name in seen:
            continue
        seen.add(name)
        if len(name) == 2 and name[0] == "-" and any(k[:2] == name for k in known if not k.startswith("--")):
            continue
        if ep.allow_abbrev and name.startswith("--"):
            hits = sorted(k for k in known if k.startswith(name))
            if len(hits) == 1:
                abbreviated.append((name, hits[0]))
                continue
            if len(hits) > 1:
                ambiguous.append((name, hits))
                continue
        unknown.append((name, closest(name, known) if len(unknown) < MAX_FLAG_FINDINGS else None))
    from moe_env.untrusted import printable

    unknown = [(printable(n), k) for n, k in unknown]
    ambiguous = [(printable(n), h) for n, h in ambiguous]
    abbreviated = [(printable(n), k) for n, k in abbreviated]
    findings = []
    who = _parser_words(ep)
    rest = unknown[MAX_FLAG_FINDINGS:]
    unknown = unknown[:MAX_FLAG_FINDINGS]
    for name, near in unknown:
        hint = f"did you mean {near}?" if near else "no flag of that entry point is close"
        findings.append(Finding(
            id=f"{project.name}.unknown-flag:{name}", severity="error",
            title=f"{name} is not a flag of {ep.id}: {hint}",
            seen=f"{name} in the arguments of {ep.id}",
            why=f"{who}; the list holds the {len(ep.flags)} flags of the pinned commit.",
            fix=f"replace {name} with {near}" if near else f"drop {name} (see the entry point's --help)",
            sources=list(ep.source[:2])))
    if rest:
        shown = " ".join(n for n, _ in rest[:10]) + (" ..." if len(rest) > 10 else "")
        findings.append(Finding(
            id=f"{project.name}.unknown-flag:more", severity="error",
            title=f"{len(rest)} more flags that {ep.id} does not define",
            seen=shown, why=f"{who}.", fix="check the launch line against the entry point's --help",
            sources=list(ep.source[:2])))
    for name, hits in ambiguous[:MAX_FLAG_FINDINGS]:
        findings.append(Finding(
            id=f"{project.name}.ambiguous-flag:{name}", severity="error",
            title=f"{name} is ambiguous for {ep.id}: it could be {', '.join(hits[:4])}{' ...' if len(hits) > 4 else ''}",
            seen=f"{name} in the arguments of {ep.id}",
            why="argparse accepts a unique prefix of a flag and stops with 'ambiguous option: ... could match ...' "
                "when several flags start with it.",
            fix=f"spell the flag out: {hits[0]}", sources=list(ep.source[:2])))
    conditional = sorted({w.split("=", 1)[0] for w in args if w.split("=", 1)[0] in set(ep.conditional_flags)})
    if conditional:
        findings.append(Finding(
            id=f"{project.name}.conditional-flag", severity="info",
            title=f"{', '.join(printable(c) for c in conditional)}: {ep.conditional or 'accepted only in some set-ups'}",
            seen=" ".join(printable(c) for c in conditional),
            why="The entry point adds these flags to its parser only in that set-up; elsewhere argparse refuses them.",
            fix="make sure the training environment matches (moe-env doctor --python PATH)",
            sources=[s for s in ep.source if "post_training" in s or "conditional" in s] or list(ep.source[:1])))
    if abbreviated:
        pairs = ", ".join(f"{a} -> {b}" for a, b in abbreviated)
        findings.append(Finding(
            id=f"{project.name}.abbreviated-flag", severity="info",
            title=f"Abbreviated flags, accepted by {ep.id}'s parser: {pairs}",
            seen=pairs,
            why="argparse (allow_abbrev is not turned off here) takes a unique prefix for the whole flag; a flag "
                "added later with the same prefix would make the line ambiguous.",
            fix="spell the flags out: " + " ".join(b for _, b in abbreviated), sources=list(ep.source[:2])))
    return findings


def expand_abbreviations(ep: EntryPoint, args: Sequence[str]) -> List[str]:
    """The arguments with every accepted abbreviation written out (`--train_module=x` -> `--train_modules=x`)."""
    if not ep.allow_abbrev:
        return list(args)
    known = set(ep.flags) | set(ep.conditional_flags)
    out = []
    for word in args:
        if word == "--":
            out.extend(args[len(out):])
            break
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word.partition("=")
            if name not in known:
                hits = [k for k in known if k.startswith(name)]
                if len(hits) == 1:
                    word = hits[0] + eq + value
        out.append(word)
    return out


_BOOL_WORDS = {"yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"}  # transformers' string_to_bool


def judge_values(project: Project, ep: EntryPoint, args: Sequence[str]) -> List[Finding]:
    """Values the parser refuses for known flags: a word after a flag that takes none (`--bf16 True` for
    Megatron's store_true --bf16 is left over: 'unrecognized arguments: True'), and a bool flag of
    HfArgumentParser given something other than yes/no, true/false, t/f, y/n, 1/0."""
    from moe_env.untrusted import printable

    if not ep.no_value_flags and not ep.bool_value_flags:
        return []
    known = set(ep.flags) | set(ep.conditional_flags)
    no_value, bool_value = set(ep.no_value_flags), set(ep.bool_value_flags)
    out: List[Finding] = []
    for i, word in enumerate(args):
        if word == "--":
            break
        if not word.startswith("--") or len(out) >= MAX_FLAG_FINDINGS:
            continue
        name, eq, inline = word.partition("=")
        canon = name if name in known else None
        if canon is None and ep.allow_abbrev:
            hits = [k for k in known if k.startswith(name)]
            canon = hits[0] if len(hits) == 1 else None
        if canon is None:
            continue
        nxt = args[i + 1] if i + 1 < len(args) else None
        follows = nxt if (nxt is not None and not nxt.startswith(("-", "$"))) else None
        if canon in no_value and (eq or follows is not None):
            value = inline if eq else follows
            refusal = ("'ignored explicit argument'" if eq else
                       "'Some specified arguments are not used by the HfArgumentParser'" if ep.parser == "hf"
                       else f"'unrecognized arguments: {printable(value)}'")
            out.append(Finding(
                id=f"{project.name}.flag-takes-no-value:{printable(name)}", severity="error",
                title=f"{printable(name)} takes no value, but the launch gives it {printable(value)!r}",
                seen=printable(f"{word} {'' if eq else follows}".strip()),
                why=f"{canon} is an on/off switch in {ep.id}'s parser; the parser stops with {refusal}.",
                fix=f"write {canon} alone" + (" (or --no-... to turn it off where the parser has one)" if ep.parser != "hf" else ""),
                sources=list(ep.source[:2])))
        elif canon in bool_value:
            value = inline if eq else follows
            if value is not None and value.lower() not in _BOOL_WORDS and not value.startswith("$"):  # "$VAR": unexpanded
                out.append(Finding(
                    id=f"{project.name}.bool-flag-value:{printable(name)}", severity="error",
                    title=f"{printable(name)} takes true or false, not {printable(value)!r}",
                    seen=printable(f"{name} {value}"),
                    why="HfArgumentParser reads bool fields with transformers' string_to_bool, which raises 'Truthy value "
                        "expected: got ... but expected one of yes/no, true/false, t/f, y/n, 1/0'.",
                    fix=f"{canon} True (or {canon} False)",
                    sources=[s for s in ep.source if "string_to_bool" in s] or list(ep.source[:2])))
    return out


def _parser_words(ep: EntryPoint) -> str:
    if ep.parser == "hf":
        return ("HfArgumentParser.parse_args_into_dataclasses() raises 'Some specified arguments are not used by "
                "the HfArgumentParser' for an argument no dataclass field defines")
    abbrev = "" if ep.allow_abbrev else " (allow_abbrev=False: no prefixes either)"
    return f"argparse stops the launch with 'unrecognized arguments' for a flag it does not define{abbrev}"


def closest(name: str, known: "set[str] | Sequence[str]") -> Optional[str]:
    """The known flag nearest to `name`; `-`/`_` differences and case count as no difference."""
    def norm(s: str) -> str:
        return s.lstrip("-").replace("-", "_").lower()

    longs = [k for k in known if k.startswith("--")]
    by_norm = {norm(k): k for k in longs}
    if norm(name) in by_norm:
        return by_norm[norm(name)]
    got = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=0.6)
    return by_norm[got[0]] if got else None


def launcher_added_flags(project: Project, ep: EntryPoint, launch: Launch, launcher_args: Sequence) -> List[Finding]:
    """Arguments the launcher itself appends to the script's line ([[launcher_arg]], launchers.toml),
    judged against the entry point's parser like the user's own."""
    if not launch.program:
        return []
    prog = os.path.basename(launch.program[0])
    known = set(ep.flags) | set(ep.conditional_flags)
    out = []
    for la in launcher_args:
        if la.launcher != prog or (la.unless and la.unless in launch.launcher_args):
            continue
        accepted = la.adds in known or (ep.allow_abbrev and sum(1 for k in known if k.startswith(la.adds)) == 1)
        if accepted:
            continue
        out.append(Finding(
            id=f"{project.name}.launcher-adds-{la.adds.lstrip('-')}", severity="error",
            title=f"{prog} adds {la.adds}=N to the script's arguments, and {ep.id} does not define {la.adds}",
            seen=f"{prog} {' '.join(launch.launcher_args)} {launch.script or ''}".replace("  ", " ").strip()
                 + (f" (no {la.unless})" if la.unless else ""),
            why=la.why, fix=la.fix, sources=list(la.source)))
    return out
