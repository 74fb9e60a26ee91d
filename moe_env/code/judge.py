"""The checkout's library uses judged against what the probe read from the installed sources.

Pure: a CodeScan, an Environment (whose `api` holds the probe's answers, signatures included) and the
matrix in; Findings out. A name is "missing" only when the probe is sure (it read every place the name
could come from); a miss the source could still fill at run time (lazy `__getattr__`, star imports of
compiled modules, bases outside the package) and a name absent from a saved report are "not judged",
counted in one note, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from moe_env.code.collect import CodeScan, Use
from moe_env.environment import ApiSymbol, Environment, normalize_name
from moe_env.findings import Finding
from moe_env.matrix.model import ApiEntry, Matrix

# the libraries this tool knows; any installed distribution's import names are judged too
LIBRARIES = ("deepspeed", "transformers", "accelerate", "peft", "torch", "megatron.core", "flash_attn", "xtuner",
             "mmengine", "bitsandbytes")
# import name -> distribution, for reports without the probe's import_names (and libraries not installed)
_DISTRIBUTION = {"flash_attn": "flash-attn", "megatron": "megatron-core", "torch": "torch"}
# decorators that leave a function's call signature as written
_PLAIN_DECORATORS = {"staticmethod", "classmethod", "property", "abstractmethod", "abc.abstractmethod",
                     "torch.no_grad", "no_grad", "torch.inference_mode", "torch.jit.ignore", "torch.jit.unused",
                     "functools.lru_cache", "lru_cache", "functools.cache", "cache", "torch.compiler.disable",
                     "torch._dynamo.disable", "override", "typing.override", "typing_extensions.override"}

SRC_CALLS = "https://docs.python.org/3/reference/expressions.html#calls"


@dataclass
class Judgement:
    findings: List[Finding] = field(default_factory=list)
    judged: int = 0  # library references judged (found, or certainly missing)
    not_judged: List[Tuple[str, int, str, str]] = field(default_factory=list)  # (file, line, symbol, why)
    libraries: int = 0  # library references seen
    symbol_of: Dict[int, str] = field(default_factory=dict)  # id(finding) -> the name it is about (for merging)


def is_library(symbol: str, import_names: Dict[str, str]) -> bool:
    """A name of a known library, or of an installed distribution (the probe says which import names those have)."""
    root = symbol.split(".", 1)[0]
    if root in import_names:
        return True
    return any(symbol == lib or symbol.startswith(lib + ".") for lib in LIBRARIES)


def probe_request(scan: CodeScan) -> dict:
    """The `code` part of the probe's request: every name the checkout uses, asked once."""
    return {"symbols": scan.symbols(), "libraries": list(LIBRARIES)}


def distribution_of(env: Environment, symbol: str) -> Tuple[str, Optional[str]]:
    """(distribution name, installed version or None) owning the top-level module of `symbol`."""
    root = symbol.split(".", 1)[0]
    name = env.import_names.get(root) or _DISTRIBUTION.get(root) or normalize_name(root)
    return name, env.version_of(name)


def judge(scan: CodeScan, env: Environment, matrix: Optional[Matrix], saved: bool = False) -> Judgement:
    out = Judgement()
    groups: Dict[Tuple[str, str, str], List[Tuple[Use, Finding]]] = {}
    for use in scan.uses:
        if not is_library(use.symbol, env.import_names):
            continue
        if use.kind != "override":
            out.libraries += 1
        info = env.api.get(use.symbol)
        if use.kind == "override":
            # a method the base lacks is the checkout's own; one whose base cannot be read is not a reference
            if info is not None and info.found:
                out.libraries += 1
                out.judged += 1
                f = _override(use, info, env, matrix)
                if f is not None:
                    groups.setdefault((use.file, f.id, use.symbol), []).append((use, f))
            continue
        if info is None:
            why = "not in the saved report" if saved else "not probed"
            out.not_judged.append((use.file, use.line, use.symbol, why))
            continue
        if not info.found:
            undecided = info.undecided
            root = use.symbol.split(".", 1)[0]
            if not undecided and info.error == f"no module {root} on the path" and root in env.import_names:
                # a distribution claims the name, but its source is not where the static reader looks
                undecided = f"{env.import_names[root] or 'an editable install'} provides {root}, but its source is not on the path read"
            if undecided:
                out.not_judged.append((use.file, use.line, use.symbol, undecided))
                continue
            out.judged += 1
            f = _missing(use, info, env, matrix)
            if f.id == "code.missing-module" and use.kind != "import":
                continue  # the import of the missing library says it; its uses would repeat it
        else:
            out.judged += 1
            f = _call_shape(use, info, env, matrix) if use.kind in ("call", "super") else None
        if f is not None:
            key = (use.file, f.id, use.symbol.split(".")[0] if f.id == "code.missing-module" else use.symbol)
            groups.setdefault(key, []).append((use, f))
    for d in scan.dynamic:
        out.libraries += 1
        out.not_judged.append((d.file, d.line, d.what, "dynamic access"))
    for (_file, _id, _sym), items in groups.items():
        use, f = items[0]
        others = sorted({u.line for u, _ in items[1:]} - {use.line})
        if others:
            f.seen += f" (also line{'s' if len(others) > 1 else ''} {', '.join(map(str, others[:10]))}" + \
                      (f" and {len(others) - 10} more" if len(others) > 10 else "") + ")"
        # one guarded use does not excuse an unguarded one at another line
        if any(not u.guarded for u, _ in items) and f.severity == "warning" and use.guarded:
            f.severity = "error"
        out.findings.append(f)
        out.symbol_of[id(f)] = use.symbol
    for p in scan.problems:
        out.findings.append(Finding(
            id="code.unreadable-file", severity=p.severity, title="A file of the checkout was not judged",
            seen=f"{p.file}: {p.problem}",
            why="Its library uses are unknown, so problems in it are not reported.",
            fix="Fix the file (python -m py_compile FILE) or leave it out of --code." if "syntax" in p.problem else "",
            file=p.file,
        ))
    if out.not_judged:
        out.findings.append(_not_judged_note(out.not_judged))
    return out


def _severity(use: Use) -> str:
    return "warning" if use.guarded else "error"


def _guard_note(use: Use) -> str:
    return f"; the use is guarded ({use.guarded}), so it fails quietly or not at all" if use.guarded else ""


def _missing(use: Use, info: ApiSymbol, env: Environment, matrix: Optional[Matrix]) -> Finding:
    dist, version = distribution_of(env, use.symbol)
    entry = _table_entry(matrix, dist, [use.symbol], "")
    if version is None and (info.error or "").startswith("no module "):
        root = use.symbol.split(".", 1)[0]
        return _finding(use, "code.missing-module", f"{root} is not installed, but the code imports it",
                        seen=f"{use.symbol}: {dist} is not installed in this environment{_guard_note(use)}",
                        why="The import raises ModuleNotFoundError when this line runs.",
                        fix=_fix(dist, entry) or f"pip install {dist}", entry=entry)
    where = f"{dist} {version}" if version else dist
    detail = f" ({info.error})" if info.error else ""
    return _finding(use, "code.missing-name", f"{use.symbol} is not in the installed {dist}",
                    seen=f"{where} installed; {use.symbol} is not in its source{detail}{_guard_note(use)}",
                    why=("The import raises ImportError" if use.kind == "import" else "The line raises AttributeError")
                        + " when it runs: the installed release does not define this name.",
                    fix=_fix(dist, entry) or f"Change the code to the API of {where}, or install the {dist} "
                                              "release the code was written for.",
                    entry=entry, sources=_installed_source(dist, version, info))


def _call_shape(use: Use, info: ApiSymbol, env: Environment, matrix: Optional[Matrix]) -> Optional[Finding]:
    sig = info.signature
    if not sig:
        return None
    decorators = [d for d in sig.get("decorators") or []]
    if any(d not in _PLAIN_DECORATORS and d.split(".")[-1] not in _PLAIN_DECORATORS for d in decorators):
        return None  # a decorator may accept other arguments than the def says (deprecate_kwarg, wraps...)
    short = {d.split(".")[-1] for d in decorators}
    positional = list(sig.get("posonly") or []) + list(sig.get("args") or [])
    kwnames = list(sig.get("args") or []) + list(sig.get("kwonly") or [])
    drop = False
    if "staticmethod" in short:
        drop = False
    elif "classmethod" in short:
        drop = True
    elif sig.get("method"):
        drop = use.bound or info.kind == "class"
    if drop and positional:
        first = positional[0]
        positional = positional[1:]
        kwnames = [k for k in kwnames if k != first]
    dist, version = distribution_of(env, use.symbol)
    where = f"{dist} {version}" if version else dist
    shown = _signature_text(sig, positional, drop)
    at = f" ({info.file}:{info.line})" if info.file else ""
    canon = _canonical(use.symbol, info)
    what = f"super().{use.symbol.rsplit('.', 1)[-1]}" if use.kind == "super" else use.symbol
    if not sig.get("kwarg"):
        bad = [k for k in use.keywords if k not in kwnames]
        if bad:
            entry = _table_entry(matrix, dist, canon, bad[0])
            names = ", ".join(f"{k}=" for k in bad)
            return _finding(use, "code.unknown-keyword",
                            f"{what}() is called with {names} which the installed {dist} does not accept",
                            seen=f"{where} installed; {info.symbol}{at} is {shown}: no parameter {', '.join(bad)} "
                                 f"and no **kwargs{_guard_note(use)}",
                            why="The call raises TypeError (unexpected keyword argument) when it runs.",
                            fix=_fix(dist, entry) or f"Drop or rename {names} to match {where}, or install the {dist} "
                                                      "release the code was written for.",
                            entry=entry, sources=_installed_source(dist, version, info))
    if use.positional is not None and not sig.get("vararg") and use.positional > len(positional):
        extra = use.positional - len(positional)
        entry = None
        for name in use.arg_names[len(positional):]:  # `metrics` passed where the base lost it: the table knows
            entry = entry or (_table_entry(matrix, dist, canon, name) if name else None)
        return _finding(use, "code.too-many-positional",
                        f"{what}() is given {use.positional} positional arguments; the installed {dist} takes "
                        f"{len(positional)}",
                        seen=f"{where} installed; {info.symbol}{at} is {shown}: {extra} positional argument"
                             f"{'s' if extra > 1 else ''} too many{_guard_note(use)}"
                             + (f" (the override in {use.owner} passes what the base no longer takes)" if use.owner else ""),
                        why="The call raises TypeError (takes N positional arguments but M were given) when it runs.",
                        fix=_fix(dist, entry) or f"Pass only what {where} takes (match the base method's signature), "
                                                  f"or install the {dist} release the code was written for.",
                        entry=entry, sources=_installed_source(dist, version, info))
    return None


def _override(use: Use, info: ApiSymbol, env: Environment, matrix: Optional[Matrix]) -> Optional[Finding]:
    """An override that does not take what its base takes: the library calls it as it calls the base."""
    sig = info.signature
    if not sig or any(d not in _PLAIN_DECORATORS and d.split(".")[-1] not in _PLAIN_DECORATORS
                      for d in sig.get("decorators") or []):
        return None
    if use.star_kwargs:
        return None
    all_positional = list(sig.get("posonly") or []) + list(sig.get("args") or [])
    base_args = all_positional[1:]  # the first is self
    # a base parameter is taken when the override has a positional slot for it (any name: the library may
    # pass it by position) or a parameter of its name; keyword-only ones only by name
    slots = use.positional  # None: *args takes any number
    missing = [a for i, a in enumerate(base_args) if slots is not None and i >= slots and a not in use.accepts]
    missing += [k for k in sig.get("kwonly") or [] if k not in use.accepts]
    if not missing:
        return None
    dist, version = distribution_of(env, use.symbol)
    where = f"{dist} {version}" if version else dist
    method = use.symbol.rsplit(".", 1)[-1]
    entry = None
    for name in missing:
        entry = entry or _table_entry(matrix, dist, _canonical(use.symbol, info), name)
    at = f" ({info.file}:{info.line})" if info.file else ""
    f = _finding(use, "code.override-signature",
                 f"{use.owner}.{method} does not take {', '.join(missing)}, which the installed base method takes",
                 seen=f"{where} installed; {info.symbol}{at} is {_signature_text(sig, base_args, True)}; the override "
                      f"takes ({', '.join(use.accepts)}) and no **kwargs",
                 why=f"{dist} calls {method} on your class as it calls its own: where it passes "
                     f"{missing[0]}, the call raises TypeError (unexpected keyword argument).",
                 fix=_fix(dist, entry) or f"Add {', '.join(m + '=None' for m in missing)} (or **kwargs) to the "
                                          f"override, matching {where}.",
                 entry=entry, sources=_installed_source(dist, version, info))
    f.severity = "warning"  # no cited failure: whether the library passes it depends on the call site
    return f


def _signature_text(sig: dict, positional: List[str], dropped: bool) -> str:
    parts = list(positional)
    if sig.get("posonly") and not dropped or len(sig.get("posonly") or []) > (1 if dropped else 0):
        n = len(sig.get("posonly") or []) - (1 if dropped else 0)
        if n > 0:
            parts.insert(n, "/")
    if sig.get("vararg"):
        parts.append("*" + sig["vararg"])
    elif sig.get("kwonly"):
        parts.append("*")
    parts += list(sig.get("kwonly") or [])
    if sig.get("kwarg"):
        parts.append("**" + sig["kwarg"])
    return "(" + ", ".join(parts) + ")"


def _canonical(symbol: str, info: ApiSymbol) -> List[str]:
    """The code's name and the name at the definition (transformers.Trainer._save_checkpoint is
    transformers.trainer.Trainer._save_checkpoint in the API tables)."""
    out = [symbol]
    if info.file and info.file.endswith(".py"):
        module = info.file[:-3].replace("/", ".").replace("\\", ".")
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        parts = symbol.split(".")
        for tail in (1, 2):
            if len(parts) > tail:
                out.append(".".join([module] + parts[-tail:]))
    return out


def _table_entry(matrix: Optional[Matrix], dist: str, symbols: List[str], param: str) -> Optional[ApiEntry]:
    if matrix is None:
        return None
    for e in matrix.api.get(normalize_name(dist), []):
        if e.symbol in symbols and (e.param or "") == param:
            return e
    return None


def _fix(dist: str, entry: Optional[ApiEntry]) -> str:
    if entry is None:
        return ""
    spec = f">={entry.first},<={entry.last}" if entry.last else f">={entry.first}"
    return f"pip install '{dist}{spec}'  (or change the code to the installed API)"


def _installed_source(dist: str, version: Optional[str], info: ApiSymbol) -> List[str]:
    if version and info.file and info.found:
        return [f"release:{dist}=={version}:{info.file}" + (f":{info.line}" if info.line else "")]
    if version and info.file:
        return [f"release:{dist}=={version}:{info.file}"]
    return []


def _finding(use: Use, fid: str, title: str, *, seen: str, why: str, fix: str, entry: Optional[ApiEntry] = None,
             sources: Optional[List[str]] = None) -> Finding:
    srcs: List[str] = []
    if entry is not None:
        span = f"{entry.first} to {entry.last}" if entry.last else f"{entry.first} and later"
        what = f"{entry.symbol}({entry.param}=...)" if entry.param else entry.symbol
        seen = f"{seen}; API table: {what} is in {span}"
        srcs += list(entry.source)
    srcs += [s for s in sources or [] if s not in srcs]
    return Finding(id=fid, severity=_severity(use), title=title, seen=seen, why=why, fix=fix, sources=srcs,
                   file=use.file, line=use.line, code=use.code)


def _not_judged_note(items: List[Tuple[str, int, str, str]]) -> Finding:
    shown = "; ".join(f"{f}:{line} {sym} ({why})" for f, line, sym, why in items[:5])
    more = f"; and {len(items) - 5} more" if len(items) > 5 else ""
    return Finding(
        id="code.not-judged", severity="info",
        title=f"{len(items)} library reference{'s' if len(items) != 1 else ''} in the code not judged",
        seen=shown + more,
        why="Names built at run time (getattr with a variable, star imports, lazy module __getattr__, attributes "
            "of variables) cannot be read statically; moe-env does not guess about them.",
        fix="",
    )
