"""Launch and DeepSpeed-config rules for `check-config`: one small function per rule kind.

A project's `[[rule]]` entries (compat_matrix/projects/*.toml, compat_matrix/rules/*.toml) name a
`kind` and carry the data (flags, thresholds, patterns) in `params`; the function registered here
under that kind judges a LaunchConfig with it. Functions are pure: what the launch says, the
DeepSpeed config, the installed versions and the GPUs all arrive in the LaunchConfig, read once by
the command. A kind never invents facts: messages, fixes and sources come from the rule entry.

Common params: `when_flag` (the rule applies only when this launch flag is given and not false,
e.g. MoE-LLaVA's `moe_enable`), `when_stage` (list of ZeRO stages the rule applies to).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from moe_env.findings import Finding
from moe_env.matrix.model import Project, Rule, Variant

RuleFn = Callable[["LaunchConfig", Rule], List[Finding]]
KINDS: Dict[str, RuleFn] = {}

_FALSE = {"false", "0", "no", "off", "none"}


def kind(name: str) -> Callable[[RuleFn], RuleFn]:
    def deco(fn: RuleFn) -> RuleFn:
        if name in KINDS:
            raise ValueError(f"rule kind {name!r} registered twice")
        KINDS[name] = fn
        return fn

    return deco


# ------------------------------------------------------------------ what a launch says


def norm_flag(name: str) -> str:
    """`--moe-grouped-gemm`, `--moe_grouped_gemm`, `moe_grouped_gemm` -> `moe_grouped_gemm`."""
    return name.lstrip("-").replace("-", "_").lower()


def flag_spelling(argv: Sequence[str]) -> Dict[str, str]:
    """Normalised flag name -> the spelling used in `argv` (`moe_grouped_gemm` -> `--moe-grouped-gemm`)."""
    out: Dict[str, str] = {}
    for word in argv:
        if word.startswith("--") and len(word) > 2:
            name = word.split("=", 1)[0]
            out[norm_flag(name)] = name
    return out


def parse_launch(argv: Sequence[str]) -> Tuple[Dict[str, List[str]], List[str]]:
    """Flags (normalised name -> values given after it) and the positional words before the first flag.

    `--train_modules fc1 fc2 wg` gives ["fc1", "fc2", "wg"]; `--bf16` alone gives []; `--x=1` gives ["1"].
    A repeated flag keeps the last occurrence (argparse's behaviour for store actions).
    """
    flags: Dict[str, List[str]] = {}
    positional: List[str] = []
    current: Optional[str] = None
    for word in argv:
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word.partition("=")
            current = norm_flag(name)
            flags[current] = [value] if eq else []
        elif word.startswith("-") and len(word) == 2 and not word[1].isdigit():
            current = word[1:]
            flags[current] = []
        elif current is not None:
            flags[current].append(word)
        else:
            positional.append(word)
    return flags, positional


@dataclass
class LaunchConfig:
    """Everything a rule may read: the launch flags, the DeepSpeed config, installed versions, GPUs."""

    project: Project
    variants: List[Variant] = field(default_factory=list)
    flags: Dict[str, List[str]] = field(default_factory=dict)
    positional: List[str] = field(default_factory=list)
    deepspeed: Optional[Dict[str, Any]] = None  # the parsed DeepSpeed JSON
    deepspeed_path: Optional[str] = None
    installed: Optional[Dict[str, str]] = None  # normalised distribution name -> version; None = unknown
    gpu_capabilities: List[str] = field(default_factory=list)  # ["8.0", ...]; [] = unknown
    world_size: Optional[int] = None
    env: Dict[str, str] = field(default_factory=dict)
    spelling: Dict[str, str] = field(default_factory=dict)  # normalised flag -> as the launch wrote it
    training_config: Optional[Dict[str, Any]] = None  # literal settings of a Python training config (XTuner)
    training_config_path: Optional[str] = None
    config_names: List[str] = field(default_factory=list)  # every name the training config references
    launcher_flags: Dict[str, List[str]] = field(default_factory=dict)  # deepspeed/torchrun's own options
    checkpoints: Optional[Dict[str, Any]] = None  # launch path -> launch_ckpt.CkptState, read by the command

    def shown(self, flag: str) -> str:
        """A flag as the launch spelled it (`--moe-grouped-gemm`), for messages."""
        n = norm_flag(flag)
        return self.spelling.get(n, "--" + n)

    def has(self, flag: str) -> bool:
        return norm_flag(flag) in self.flags

    def value(self, flag: str) -> Optional[str]:
        vals = self.flags.get(norm_flag(flag))
        if vals is None:
            return None
        return " ".join(vals)

    def values(self, flag: str) -> Optional[List[str]]:
        vals = self.flags.get(norm_flag(flag))
        if vals is None:
            return None
        out: List[str] = []
        for v in vals:  # "--train_modules a,b" and "--train_modules a b" both occur in scripts
            out.extend(x for x in re.split(r"[,\s]+", v) if x)
        return out

    def truthy(self, flag: str) -> bool:
        """The flag is given and not set to a false word (`--bf16`, `--bf16 True`, not `--bf16 False`)."""
        vals = self.flags.get(norm_flag(flag))
        if vals is None:
            return False
        return not vals or vals[0].strip().lower() not in _FALSE

    def ds(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.deepspeed
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def zero_stage(self) -> Optional[int]:
        stage = self.ds("zero_optimization.stage")
        if stage is None:
            return 0 if self.deepspeed is not None else None
        if isinstance(stage, bool):
            return None
        if isinstance(stage, int):
            return stage if 0 <= stage <= 3 else None
        return int(stage) if isinstance(stage, str) and re.fullmatch(r"[0-3]", stage.strip()) else None

    def int_flag(self, names: Sequence[str]) -> Optional[Tuple[str, int]]:
        """The first of `names` given with an integer value (ASCII digits, as argparse's int() needs
        after strip; Unicode digits such as `３` are left to the parser, not judged here)."""
        for n in names:
            v = self.value(n)
            if v and re.fullmatch(r"-?[0-9]{1,18}", v.split()[0]):
                return n, int(v.split()[0])
        return None

    def version(self, *names: str) -> Optional[str]:
        if self.installed is None:
            return None
        for n in names:
            v = self.installed.get(re.sub(r"[-_.]+", "-", n).lower())
            if v:
                return v
        return None


def _applies(cfg: LaunchConfig, rule: Rule) -> bool:
    """`when_flag` (given, not false), `when_flags` ({flag: value}; "" = just given), `when_stage`
    (ZeRO stages), `unless_installed` ({package: specifier}: skip when the installed version matches)."""
    p = rule.params
    when = p.get("when_flag")
    if when and not cfg.truthy(when):
        return False
    wf = p.get("when_flags") or {}
    if isinstance(wf, list):  # a list: the rule applies when any of these flags is given (truthy)
        if wf and not any(cfg.truthy(f) for f in wf) and not p.get("when_arg_gt"):
            return False
        wf = {}
    for flag, want in wf.items():
        if not cfg.has(flag):
            return False
        if str(want) != "" and (cfg.value(flag) or "").strip().lower() != str(want).strip().lower():
            if not (str(want).lower() == "true" and cfg.truthy(flag)):
                return False
    unless = p.get("unless_installed") or {}
    if unless and cfg.installed is not None:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version

        for pkg, spec in unless.items():
            have = cfg.version(pkg)
            try:
                if have and Version(have) in SpecifierSet(spec):
                    return False
            except (InvalidSpecifier, InvalidVersion):
                continue
    stages = p.get("when_stage")
    if stages is not None:
        st = cfg.zero_stage()
        if st is None or st not in stages:
            return False
    return True


def _finding(rule: Rule, seen: str, project: Project, severity: Optional[str] = None, why_extra: str = "") -> Finding:
    return Finding(id=f"{project.name}.{rule.id}", severity=severity or rule.severity, title=rule.title,
                   seen=seen, why=(rule.why + (" " + why_extra if why_extra else "")).strip(),
                   fix=rule.fix, sources=list(rule.source))


# ------------------------------------------------------------------ kinds


@kind("zero_stage")
def zero_stage(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {max = 2} and/or {min = 3}; when_flag. The DeepSpeed config's ZeRO stage must lie in range."""
    if cfg.deepspeed is None or not _applies(cfg, rule):
        return []
    stage = cfg.zero_stage()
    if stage is None:
        return []
    lo, hi = rule.params.get("min"), rule.params.get("max")
    if (hi is not None and stage > int(hi)) or (lo is not None and stage < int(lo)):
        where = cfg.deepspeed_path or "the DeepSpeed config"
        return [_finding(rule, f"{where}: zero_optimization.stage = {stage}", cfg.project)]
    return []


@kind("deepspeed_value")
def deepspeed_value(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {key = "zero_optimization.contiguous_gradients", default = true, allowed = [true]}
    (or `forbidden = [...]`); when_flag, when_stage. A value DeepSpeed would reject or mishandle."""
    if cfg.deepspeed is None or not _applies(cfg, rule):
        return []
    key = rule.params["key"]
    value = cfg.ds(key, rule.params.get("default"))
    allowed = rule.params.get("allowed")
    forbidden = rule.params.get("forbidden")
    bad = (allowed is not None and value not in allowed) or (forbidden is not None and value in forbidden)
    if bad:
        where = cfg.deepspeed_path or "the DeepSpeed config"
        shown = "unset" if cfg.ds(key) is None else repr(value)
        return [_finding(rule, f"{where}: {key} = {shown}", cfg.project)]
    return []


@kind("deepspeed_has_key")
def deepspeed_has_key(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {key = "optimizer"}; when_flag. The config holds a block that changes who builds what."""
    if cfg.deepspeed is None or not _applies(cfg, rule):
        return []
    key = rule.params["key"]
    if cfg.ds(key) is not None:
        where = cfg.deepspeed_path or "the DeepSpeed config"
        block = cfg.ds(key)
        desc = f" (type {block.get('type')!r})" if isinstance(block, dict) and block.get("type") else ""
        return [_finding(rule, f"{where}: has a {key!r} block{desc}", cfg.project)]
    return []


@kind("launcher")
def launcher(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {any_of = ["deepspeed", "torchrun"]}: a launch line that starts with a plain Python
    interpreter (`python train.py ...`) instead of one of the launchers. Lines given without their
    launcher (only the script's arguments) are not judged."""
    if not cfg.positional or not _applies(cfg, rule):
        return []
    import os

    first = os.path.basename(cfg.positional[0])
    if first in rule.params.get("any_of", []) or not re.match(r"^python(\d+(\.\d+)?)?$", first):
        return []
    return [_finding(rule, f"launched as `{' '.join(cfg.positional[:2])} ...`", cfg.project)]


@kind("arg_regex")
def arg_regex(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag, matches = REGEX, not_matches = REGEX}: the flag's value matches the one and
    not the other (both optional, at least one given); when_flag. Absent flag: nothing to judge."""
    if not _applies(cfg, rule):
        return []
    flag = rule.params["flag"]
    value = cfg.value(flag)
    if value is None:
        return []
    m, n = rule.params.get("matches"), rule.params.get("not_matches")
    if m is not None and not re.search(m, value):
        return []
    if n is not None and re.search(n, value):
        return []
    return [_finding(rule, f"{cfg.shown(flag)} {value}", cfg.project)]


@kind("train_modules_match")
def train_modules_match(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag = "train_modules", model_flag = "model_name_or_path", backbones = [{name, match = [..],
    not_match = [..], ffn = [param names]}]}; when_flag. The backbone is the first whose `match`
    substrings all occur in the lower-cased model path (and no `not_match`); an entry with an empty
    `match` is the fallback. At least one train_modules entry must be a substring of an FFN param
    name, or no expert parameter stays trainable."""
    if not _applies(cfg, rule):
        return []
    modules = cfg.values(rule.params.get("flag", "train_modules"))
    if not modules:
        return []
    path = (cfg.value(rule.params.get("model_flag", "model_name_or_path")) or "").lower()
    backbone = None
    backbones = rule.params.get("backbones", [])
    for b in backbones:
        must, must_not = b.get("match", []), b.get("not_match", [])
        if all(s in path for s in must) and not any(s in path for s in must_not):
            backbone = b
            break
    if backbone is None and rule.params.get("default"):
        backbone = next((b for b in backbones if b.get("name") == rule.params["default"]), None)
    if backbone is None:
        return []
    ffn = list(backbone.get("ffn", []))
    if any(mod in name for mod in modules for name in ffn):
        return []
    return [_finding(rule, f"--{rule.params.get('flag', 'train_modules')} {' '.join(modules)} with the "
                           f"{backbone.get('name')} backbone (from the model path), whose expert FFN parameters "
                           f"are named like {', '.join(ffn)}", cfg.project)]


@kind("bf16_capability")
def bf16_capability(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {min = "8.0", flags = ["bf16"], deepspeed_key = "bf16.enabled"}: bf16 asked for on a GPU below `min`."""
    if not _applies(cfg, rule) or not cfg.gpu_capabilities:
        return []
    flags = rule.params.get("flags", ["bf16"])
    names = list(flags) if isinstance(flags, (list, dict)) else [flags]
    asked = [cfg.shown(f) for f in names if cfg.truthy(f)]
    dk = rule.params.get("deepspeed_key", "bf16.enabled")
    if cfg.deepspeed is not None and cfg.ds(dk) is True:
        asked.append(f"{dk}=true in {cfg.deepspeed_path or 'the DeepSpeed config'}")
    if not asked:
        return []
    need = _cc(rule.params.get("min", "8.0"))
    low = sorted({c for c in cfg.gpu_capabilities if _cc(c) < need})
    if low:
        return [_finding(rule, f"{' and '.join(asked)}; GPU compute capability {', '.join(low)} "
                               f"(needs {rule.params.get('min', '8.0')}+)", cfg.project)]
    return []


@kind("ep_divides")
def ep_divides(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {ep_flags = [..], experts_flags = [..]} (or ep_arg / experts_arg), optional
    {etp_arg, tp_arg, pp_arg}: EP must divide the expert count, and EP x expert-TP x PP the world size.
    The expert count falls back to the variant's `num_experts`; the world size comes from
    --world-size, the launcher's --num_gpus x --num_nodes / --nproc_per_node x --nnodes, or WORLD_SIZE."""
    if not _applies(cfg, rule):
        return []
    p = rule.params
    ep = cfg.int_flag(p.get("ep_flags") or [p.get("ep_arg", "ep_size")])
    if ep is None or ep[1] <= 1:
        return []
    flag, size = ep[0], ep[1]
    out: List[str] = []
    experts = cfg.int_flag(p.get("experts_flags") or [p.get("experts_arg", "num_experts")])
    n_experts = experts[1] if experts else next((v.num_experts for v in cfg.variants if v.num_experts), None)
    if n_experts and n_experts % size:
        src = f"{cfg.shown(experts[0])} {n_experts}" if experts else f"{n_experts} experts (variant)"
        out.append(f"{cfg.shown(flag)} {size} does not divide {src}")
    world = cfg.world_size or launcher_world_size(cfg)
    for var in p.get("world_size_env") or []:
        if world is None:
            world = _int_of([str(cfg.env.get(var, ""))])
    divisor, parts = size, [f"{cfg.shown(flag)} {size}"]
    for key in ("etp_arg", "pp_arg"):
        names = [p[key]] + ([p["tp_arg"]] if key == "etp_arg" and p.get("tp_arg") else []) if p.get(key) else []
        got = cfg.int_flag(names) if names else None
        if got and got[1] > 1:
            divisor *= got[1]
            parts.append(f"{cfg.shown(got[0])} {got[1]}")
    if world and world % divisor:
        out.append(f"{' x '.join(parts)} = {divisor} does not divide the world size {world}")
    return [_finding(rule, "; ".join(out), cfg.project)] if out else []  # one problem, one finding


@kind("expert_layout")
def expert_layout(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """Data for `moe-env ckpt` (which flags and TE versions load a Megatron expert layout); also judges
    `--load DIR` of a launch: see megatron_grouped_gemm. Nothing to judge on its own."""
    return []


# ------------------------------------------------------------------ Megatron-style flag rules


def _gt(cfg: LaunchConfig, table: Dict[str, Any]) -> List[str]:
    """Which `{flag: n}` entries of `when_arg_gt` hold (the flag's integer value > n)."""
    hits = []
    for flag, n in (table or {}).items():
        v = cfg.int_flag([flag])
        if v is not None and v[1] > int(n):
            hits.append(f"{cfg.shown(flag)} {v[1]}")
    return hits


def _package_in_spec(cfg: LaunchConfig, rule: Rule) -> Optional[bool]:
    """For params {package, spec}: whether the installed version matches (None: unknown or not installed)."""
    pkg, spec = rule.params.get("package"), rule.params.get("spec")
    if not pkg or not spec:
        return True
    have = cfg.version(pkg)
    if have is None:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return Version(have) in SpecifierSet(spec)
    except (InvalidSpecifier, InvalidVersion):
        return None


@kind("flag_requires_flag")
def flag_requires_flag(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag, requires, package, spec} or {requires, when_arg_gt = {flag: n, ...}}: when `flag`
    is given (or every when_arg_gt entry holds), `requires` must be given too. With package/spec the
    rule holds only for those versions (judged when the version is unknown, too)."""
    p = rule.params
    if not _applies(cfg, rule) or _package_in_spec(cfg, rule) is False:
        return []
    trigger = []
    if p.get("flag"):
        if not cfg.truthy(p["flag"]):
            return []
        trigger.append(cfg.shown(p['flag']))
    if p.get("when_arg_gt"):
        hits = _gt(cfg, p["when_arg_gt"])
        if len(hits) < len(p["when_arg_gt"]):
            return []
        trigger.extend(hits)
    if not trigger:
        return []
    needs = p.get("requires")
    needs = [needs] if isinstance(needs, str) else list(needs or [])
    missing = [n for n in needs if not cfg.truthy(n)]
    if not missing:
        return []
    return [_finding(rule, f"{' '.join(trigger)} without {', '.join(cfg.shown(m) for m in missing)}", cfg.project)]


@kind("flag_conflict")
def flag_conflict(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag, when_arg_gt = {flag: n}, package, spec}: `flag` may not be combined with those values."""
    p = rule.params
    if not _applies(cfg, rule) or not cfg.truthy(p["flag"]) or _package_in_spec(cfg, rule) is False:
        return []
    hits = _gt(cfg, p.get("when_arg_gt") or {})
    if p.get("when_arg_gt") and not hits:
        return []
    return [_finding(rule, f"{cfg.shown(p['flag'])} with {' and '.join(hits)}", cfg.project)]


@kind("flag_version")
def flag_version(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag, package, spec}: the flag exists only in those versions of `package`; judged
    only when the installed version is known."""
    p = rule.params
    if not _applies(cfg, rule) or not cfg.has(p["flag"]):
        return []
    inside = _package_in_spec(cfg, rule)
    if inside is not False:
        return []
    return [_finding(rule, f"{cfg.shown(p['flag'])} with {p['package']} {cfg.version(p['package'])} "
                           f"(the flag exists in {p['spec']})", cfg.project)]


@kind("gpu_capability_for_flags")
def _gpu_capability_for_flags(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """Same as bf16_capability; params {flags = ["--bf16", ...], min}."""
    return bf16_capability(cfg, rule)


@kind("env_required")
def env_required(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {env, value, when_arg_gt = {flag: n}, when_flags = [flags], below_capability}: the
    environment variable must equal `value` when ANY when_arg_gt entry holds or ANY when_flags flag
    is given, on GPUs below `below_capability` (all GPUs when unknown). The environment is the one
    check-config runs in (export the variable there, as the launch script would)."""
    p = rule.params
    reasons = _gt(cfg, p.get("when_arg_gt") or {})
    flags = p.get("when_flags") or []
    if isinstance(flags, list):
        reasons += [cfg.shown(f) for f in flags if cfg.truthy(f)]
    if not reasons:
        return []
    below = p.get("below_capability")
    if below and cfg.gpu_capabilities and all(_cc(c) >= _cc(below) for c in cfg.gpu_capabilities):
        return []
    have = cfg.env.get(p["env"])
    if have == str(p.get("value", "")):
        return []
    shown = "unset" if have is None else f"={have}"
    return [_finding(rule, f"{' and '.join(reasons)}; {p['env']} {shown}", cfg.project)]


@kind("megatron_grouped_gemm_backend")
def megatron_grouped_gemm_backend(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag, te_min, grouped_gemm = [dists], legacy_removed_mcore}: --moe-grouped-gemm needs
    Transformer Engine >= te_min (TEGroupedMLP) or a grouped_gemm distribution (legacy GroupedMLP,
    megatron-core < legacy_removed_mcore). Judged only when installed versions are known."""
    p = rule.params
    if cfg.installed is None or not _applies(cfg, rule) or not cfg.truthy(p.get("flag", "moe-grouped-gemm")):
        return []
    te = cfg.version("transformer-engine", "transformer-engine-torch")
    if te and _version_ge(te, p.get("te_min", "1.9.0.dev0")):
        return []
    gg = cfg.version(*p.get("grouped_gemm", ["grouped-gemm", "nv-grouped-gemm"]))
    mcore = cfg.version("megatron-core")
    legacy_ok = not (mcore and p.get("legacy_removed_mcore") and _version_ge(mcore, p["legacy_removed_mcore"]))
    if gg and legacy_ok:
        return []
    seen = f"--moe-grouped-gemm; Transformer Engine {te or 'not installed'}; grouped_gemm {gg or 'not installed'}"
    if mcore:
        seen += f"; megatron-core {mcore}"
    return [_finding(rule, seen, cfg.project)]


@kind("megatron_grouped_gemm_layout")
def megatron_grouped_gemm_layout(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flag, legacy_flag, impl_arg, load_arg, te_grouped_min_te, te_grouped_min_mcore,
    legacy_removed_mcore, layouts = {none, te, legacy}}: the expert class this launch builds against
    the layout of a legacy checkpoint in --load (read with `moe-env ckpt`'s reader)."""
    p = rule.params
    if not _applies(cfg, rule):
        return []
    layouts = p.get("layouts") or {"none": "megatron-sequential", "te": "megatron-te-grouped", "legacy": "megatron-grouped"}
    predicted, why = predict_megatron_class(
        cfg, p.get("te_grouped_min_te", "1.9.0.dev0"), flag=p.get("flag", "moe-grouped-gemm"),
        legacy_flag=p.get("legacy_flag", "moe-use-legacy-grouped-gemm"), impl_arg=p.get("impl_arg", "transformer-impl"),
        te_min_mcore=p.get("te_grouped_min_mcore"), legacy_removed=p.get("legacy_removed_mcore"), layouts=layouts)
    return _layout_mismatch(cfg, rule, predicted, why, p.get("load_arg", "load"))


def _layout_mismatch(cfg: LaunchConfig, rule: Rule, predicted: Optional[str], why: str, load_arg: str) -> List[Finding]:
    from moe_env.ckpt import LAYOUT_TITLES
    from moe_env.launch_ckpt import state_of

    load = cfg.value(load_arg) or cfg.value("pretrained_checkpoint")
    st = state_of(cfg.checkpoints, load)
    if st is None or st.state != "ok":
        return []
    load, report = st.path, st.report
    if report.format != "megatron-legacy" or not report.layout.startswith("megatron-"):
        return []
    if report.layout in ("megatron-dist", predicted):
        return []
    if predicted is None:  # TE version unknown: some grouped class; only a SequentialMLP checkpoint surely mismatches
        if report.layout != "megatron-sequential":
            return []
        built = "a grouped-GEMM MLP (TEGroupedMLP or legacy GroupedMLP)"
    else:
        built = LAYOUT_TITLES.get(predicted, predicted)
    return [_finding(rule, f"{cfg.shown(load_arg)} {load}: {LAYOUT_TITLES.get(report.layout, report.layout)} "
                           f"(legacy format); this launch builds {built} ({why})", cfg.project)]


@kind("checkpoint_arg")
def checkpoint_arg(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {flags = [..], judge = "missing" | "unreadable" | "matches" | "report", hub_ids, same_as = "--save",
    when_missing_too = "--load"}: a checkpoint path of the launch, as the command read it
    (launch_ckpt.read_checkpoints). `missing`: a path that is not there (with `hub_ids = true` a value
    that does not look like a local path, `org/name`, is a hub id and not judged; `same_as`: not when it is also the save folder, a resumable first run; `when_missing_too`:
    only when that flag's checkpoint is missing as well). `unreadable`: there but not readable.
    `report`: the errors ckpt's reader finds in it. `matches`: the checkpoint's experts, layers and
    TP/PP/EP ranks against the launch flags in `compare` ({fact: [flag, default]}), for the
    checkpoint `formats` listed (all when absent)."""
    from moe_env.launch_ckpt import state_of
    from moe_env.untrusted import printable

    p = rule.params
    if not _applies(cfg, rule) or cfg.checkpoints is None:
        return []
    out: List[Finding] = []
    for flag in p.get("flags", []):
        st = state_of(cfg.checkpoints, cfg.value(flag))
        if st is None:
            continue
        shown = f"{cfg.shown(flag)} {printable(st.path)}"
        judge = p.get("judge", "missing")
        if judge == "missing" and st.state == "missing":
            same = p.get("same_as")
            if same and (cfg.value(same) or "").split()[:1] == [st.path]:
                continue
            other = p.get("when_missing_too")
            if other:
                o = state_of(cfg.checkpoints, cfg.value(other))
                if o is not None and o.state not in ("missing", "not-a-checkpoint"):
                    continue
            out.append(_finding(rule, f"{shown}: no such file or folder", cfg.project))
        elif judge == "unreadable" and st.state == "unreadable":
            out.append(_finding(rule, f"{shown}: {st.message}", cfg.project))
        elif judge == "report" and st.state == "ok":
            errs = [f for f in st.report.findings if f.severity == "error"]
            if errs:
                out.append(_finding(rule, f"{shown}: " + "; ".join(printable(f.title) for f in errs[:3])
                                    + (f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""), cfg.project))
        elif judge == "matches" and st.state == "ok":
            if p.get("formats") and st.report.format not in p["formats"]:
                continue
            bad = _ckpt_mismatches(cfg, st.report, p.get("compare") or {})
            if bad:
                out.append(_finding(rule, f"{shown}: " + "; ".join(bad), cfg.project))
    return out


def _ckpt_mismatches(cfg: LaunchConfig, report: Any, compare: Dict[str, Any]) -> List[str]:
    """`compare` = {fact: [flag, default]}: facts are `experts`, `layers` (from the checkpoint's own
    args / config.json) and `tp`, `pp`, `ep` (its rank folders)."""
    have: Dict[str, Any] = {
        "experts": report.facts.get("num_experts", report.expected.get("experts")),
        "layers": report.facts.get("num_layers", report.expected.get("layers")),
        "tp": report.facts.get("tp"), "pp": report.facts.get("pp"), "ep": report.facts.get("ep"),
    }
    bad = []
    for fact, spec in compare.items():
        flag, default = (list(spec) + [None])[:2]
        got = cfg.int_flag([flag])
        want = got[1] if got else default
        saved = have.get(fact)
        if isinstance(saved, bool) or not isinstance(saved, int) or want is None:
            continue
        if saved != want:
            bad.append(f"{fact} {saved} in the checkpoint, {cfg.shown(flag)} {want}" + ("" if got else " (default)"))
    return bad


def _version_ge(have: str, want: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(have) >= Version(want)
    except InvalidVersion:
        return False


def predict_megatron_class(cfg: LaunchConfig, te_min: str, flag: str = "moe-grouped-gemm",
                           legacy_flag: str = "moe-use-legacy-grouped-gemm", impl_arg: str = "transformer-impl",
                           te_min_mcore: Optional[str] = None, legacy_removed: Optional[str] = None,
                           layouts: Optional[Dict[str, str]] = None) -> Tuple[Optional[str], str]:
    """The expert layout a Megatron launch builds, and why; (None, reason) when it hinges on an unknown TE."""
    lay = layouts or {"none": "megatron-sequential", "te": "megatron-te-grouped", "legacy": "megatron-grouped"}
    mcore = cfg.version("megatron-core")
    no_legacy = bool(mcore and legacy_removed and _version_ge(mcore, legacy_removed))
    if not cfg.truthy(flag):
        return lay["none"], f"no {cfg.shown(flag)}"
    if cfg.truthy(legacy_flag) and not no_legacy:
        return lay["legacy"], f"{cfg.shown(flag)} {cfg.shown(legacy_flag)}"
    if (cfg.value(impl_arg) or "transformer_engine").strip() == "local" and not no_legacy:
        return lay["legacy"], f"{cfg.shown(flag)} with {cfg.shown(impl_arg)} local"
    te = cfg.version("transformer-engine", "transformer-engine-torch")
    if te is None and cfg.installed is not None:  # known to be absent: no TEGroupedMLP
        if no_legacy:
            return lay["none"], f"{cfg.shown(flag)} without Transformer Engine on megatron-core {mcore}"
        return lay["legacy"], f"{cfg.shown(flag)} without Transformer Engine installed"
    if te is None:
        return None, f"{cfg.shown(flag)}; Transformer Engine version unknown"
    if _version_ge(te, te_min) and not (mcore and te_min_mcore and not _version_ge(mcore, te_min_mcore)):
        return lay["te"], f"{cfg.shown(flag)} with Transformer Engine {te} (>= {te_min})"
    if no_legacy:
        return lay["none"], f"{cfg.shown(flag)} with Transformer Engine {te} on megatron-core {mcore} (no legacy GroupedMLP)"
    return lay["legacy"], f"{cfg.shown(flag)} with Transformer Engine {te} (< {te_min})"


# ------------------------------------------------------------------ Python training configs (XTuner / mmengine)


def read_training_config(path: str) -> Tuple[Dict[str, Any], List[str]]:
    """Literal settings of an mmengine-style Python config, read with `ast` (never executed).

    Top-level `name = literal` assignments and every `key=literal` keyword of every call
    (`dict(...)`, `type=...` constructors) are flattened into one table, later ones winning;
    the second value lists every bare name the file mentions (hooks such as EvaluateChatHook).
    """
    import ast

    from moe_env.untrusted import read_text

    tree = ast.parse(read_text(path, max_bytes=4 << 20, what=path), filename=path)
    values: Dict[str, Any] = {}
    names: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                pass
        elif isinstance(node, ast.keyword) and node.arg:
            try:
                values[node.arg] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                pass
        elif isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
    return values, sorted(set(names))


def _config_value(cfg: LaunchConfig, key: str) -> Any:
    if key == "world_size":
        return cfg.world_size or launcher_world_size(cfg)
    if cfg.training_config is None:
        return None
    return cfg.training_config.get(key)


def _config_matches(cfg: LaunchConfig, table: Dict[str, Any]) -> bool:
    return all(_config_value(cfg, k) == v for k, v in (table or {}).items())


@kind("deepspeed_config_choice")
def deepspeed_config_choice(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {arg = "--deepspeed", names = [...]}: the value must be one of the named shipped
    configs or an existing JSON file."""
    import os

    if not _applies(cfg, rule):
        return []
    value = cfg.value(rule.params.get("arg", "deepspeed"))
    if not value:
        return []
    value = value.split()[0]
    if value in rule.params.get("names", []) or (value.endswith(".json") and os.path.isfile(value)):
        return []
    return [_finding(rule, f"{cfg.shown(rule.params.get('arg', 'deepspeed'))} {value}: neither a shipped config "
                           f"({', '.join(rule.params.get('names', []))}) nor an existing .json file", cfg.project)]


@kind("deepspeed_config_value")
def deepspeed_config_value(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {when = {dotted key: value}, key, value}: when the DeepSpeed config matches `when`,
    `key` must equal `value` (unset counts as different)."""
    if cfg.deepspeed is None or not _applies(cfg, rule):
        return []
    p = rule.params
    for k, v in (p.get("when") or {}).items():
        have = cfg.ds(k)
        if have != v and not (isinstance(v, int) and str(have) == str(v)):
            return []
    have = cfg.ds(p["key"])
    if have == p.get("value"):
        return []
    where = cfg.deepspeed_path or "the DeepSpeed config"
    return [_finding(rule, f"{where}: {p['key']} = {'unset' if have is None else repr(have)}", cfg.project)]


@kind("config_requires_package")
def config_requires_package(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {config_keys = {key: value}, also_when_gt = {key: n}, package, spec}: when the training
    config sets those values (or any also_when_gt value exceeds n), `package` must be installed
    (and match `spec`). Judged only when the installed versions are known."""
    p = rule.params
    if cfg.installed is None or cfg.training_config is None or not _applies(cfg, rule):
        return []
    reasons = [f"{k} = {v!r}" for k, v in (p.get("config_keys") or {}).items() if _config_value(cfg, k) == v]
    for k, n in (p.get("also_when_gt") or {}).items():
        v = _config_value(cfg, k)
        if isinstance(v, int) and v > int(n):
            reasons.append(f"{k} = {v}")
    if not reasons:
        return []
    have = cfg.version(p["package"])
    if have and (not p.get("spec") or _package_in_spec(cfg, rule)):
        return []
    state = f"{p['package']} {have}" if have else f"no {p['package']}"
    return [_finding(rule, f"{cfg.training_config_path}: {', '.join(reasons)}; {state} installed"
                           + (f" (needs {p['spec']})" if have and p.get('spec') else ""), cfg.project)]


@kind("config_divides")
def config_divides(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {numerator, denominator}: training-config values (`world_size` is the launch's GPU
    count); the denominator must divide the numerator. Nothing is judged when either is unknown."""
    if not _applies(cfg, rule):
        return []
    num, den = _config_value(cfg, rule.params["numerator"]), _config_value(cfg, rule.params["denominator"])
    if not isinstance(num, int) or not isinstance(den, int) or den <= 0 or num % den == 0:
        return []
    return [_finding(rule, f"{rule.params['numerator']} = {num} is not divisible by "
                           f"{rule.params['denominator']} = {den}", cfg.project)]


@kind("config_forbids")
def config_forbids(cfg: LaunchConfig, rule: Rule) -> List[Finding]:
    """params: {hook, when = {key: value}}: the training config may not mention `hook` when it sets those values."""
    if cfg.training_config is None or not _applies(cfg, rule):
        return []
    hook = rule.params["hook"]
    if hook not in cfg.config_names or not _config_matches(cfg, rule.params.get("when") or {}):
        return []
    when = ", ".join(f"{k} = {v!r}" for k, v in (rule.params.get("when") or {}).items())
    return [_finding(rule, f"{cfg.training_config_path}: uses {hook} with {when}", cfg.project)]


def launcher_world_size(cfg: LaunchConfig) -> Optional[int]:
    """GPUs of the run from the launcher's flags: deepspeed --num_gpus x --num_nodes, torchrun
    --nproc_per_node x --nnodes, `xtuner train`'s NPROC_PER_NODE x NNODES; None when the launch does not say."""
    for table in (cfg.launcher_flags, cfg.flags):
        for per, nodes in (("num_gpus", "num_nodes"), ("nproc_per_node", "nnodes")):
            p = _int_of(table.get(per))
            if p:
                n = _int_of(table.get(nodes))
                return p * (n or 1)
    if cfg.positional[:1] == ["xtuner"]:  # `xtuner train` starts torchrun with NPROC_PER_NODE x NNODES
        # InternLM/xtuner@v0.1.23:xtuner/entry_point.py:274-275
        p = _int_of([cfg.env.get("NPROC_PER_NODE", "")])
        if p:
            return p * (_int_of([cfg.env.get("NNODES", "")]) or 1)
    return None


def _int_of(vals: Optional[List[str]]) -> Optional[int]:
    """A positive int from a flag's (or variable's) first value; ASCII digits only, so `²` or `٣` never reach int()."""
    if not vals:
        return None
    text = vals[0].strip()
    if not re.fullmatch(r"[0-9]{1,9}", text):
        return None
    return int(text) or None


def _cc(text: Any) -> Tuple[int, int]:
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?", str(text))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def run_rules(cfg: LaunchConfig) -> Tuple[List[Finding], List[str]]:
    """Every rule of the project that applies to the chosen variants; also the kinds nobody registered."""
    findings: List[Finding] = []
    unknown: List[str] = []
    ids = {v.id for v in cfg.variants}
    for rule in cfg.project.rules:
        if rule.variants and ids and not (ids & set(rule.variants)):
            continue
        fn = KINDS.get(rule.kind)
        if fn is None:
            unknown.append(f"{rule.id} ({rule.kind})")
            continue
        findings.extend(fn(cfg, rule))
    return findings, unknown
