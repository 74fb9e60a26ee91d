"""Typed entries of compat_matrix/. One dataclass per TOML array-of-tables; every entry has `source`.

Field types drive validation in loader.py: a field typed `str` must be a string in the TOML, a
`List[str]` a list of strings, `Dict[str, str]` a table of strings, `Dict[str, Any]` any table.
Fields with defaults are optional. Unknown keys are errors (they are usually typos).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from moe_env.record import Record, field, record

# ---------------------------------------------------------------- platform facts (platform/*.toml)


@record
class TorchRelease(Record):
    """`[[torch]]` in platform/torch.toml: one torch minor release."""

    minor: str  # "2.1"
    versions: List[str]  # every patch release: ["2.1.0", "2.1.1", "2.1.2"]
    python: str  # specifier of CPython versions with Linux x86_64 wheels: ">=3.8,<3.12"
    default_cuda: str  # CUDA of the PyPI wheel: "12.1"
    cuda_builds: List[str]  # CUDA variants on the PyTorch index: ["11.8", "12.1"]
    glibc_min: str  # "2.17" (manylinux1/2014) or "2.28"
    cxx11_abi: bool  # the PyPI default build's _GLIBCXX_USE_CXX11_ABI
    source: List[str]
    notes: str = ""
    # setuptools releases whose pkg_resources torch.utils.cpp_extension can import ("" = any): everything
    # that builds against this torch (sdists that import it, DeepSpeed's JIT ops) needs one of them
    setuptools: str = ""


@record
class TorchArch(Record):
    """`[[torch_arch]]` in platform/torch.toml: GPU architectures compiled into official wheels."""

    torch: str  # specifier on the torch version: ">=2.1,<2.9"
    cuda: List[str]  # CUDA builds this row covers: ["12.1", "12.4", "12.6"]
    archs: List[str]  # compute capabilities with SASS: ["5.0", "6.0", "7.0", ...]
    source: List[str]
    ptx: str = ""  # the newest arch also shipped as PTX ("12.0"), "" when none
    notes: str = ""


@record
class CudaDriver(Record):
    """`[[cuda_driver]]` in platform/cuda.toml: minimum Linux x86_64 driver for a toolkit (GA)."""

    cuda: str  # "12.1"
    min_driver: str  # "530.30.02"
    source: List[str]


@record
class CudaMinorCompat(Record):
    """`[[cuda_minor_compat]]`: minor-version compatibility floor per CUDA major."""

    cuda_major: int
    min_driver: str  # "525.60.13"
    source: List[str]
    notes: str = ""


@record
class GpuFamily(Record):
    """`[[gpu]]` in platform/cuda.toml: a GPU name pattern and its compute capability."""

    match: List[str]  # case-insensitive substrings of the name nvidia-smi prints: ["H100"]
    family: str  # "Hopper"
    compute_capability: str  # "9.0"
    source: List[str]
    memory_gib: List[int] = field(default_factory=list)  # known memory sizes, informational


@record
class ArchToolkit(Record):
    """`[[arch_toolkit]]`: which CUDA toolkits can target a compute capability."""

    compute_capability: str  # "9.0"
    min_cuda: str  # first toolkit that targets it: "11.8"
    source: List[str]
    removed_in: str = ""  # first toolkit that no longer targets it: "13.0"; "" when still supported


@record
class CudaImage(Record):
    """`[[cuda_image]]` in platform/cuda_images.toml: the nvidia/cuda image tags of one CUDA minor.

    Tags are `<version>-<cudnn>-devel-<os>` and `<version>-<cudnn>-runtime-<os>`; `moe-env dockerfile`
    builds them from these fields.
    """

    cuda: str  # "12.1"
    version: str  # the toolkit version in the tag: "12.1.1"
    cudnn: str  # the tag's cuDNN part: "cudnn8", "cudnn9", or "cudnn" (12.4 and newer)
    os: List[str]  # ["ubuntu22.04", "ubuntu20.04"], preferred first
    source: List[str]
    notes: str = ""

    def tag(self, flavor: str, os_name: str = "") -> str:
        """`flavor` is "devel" or "runtime"."""
        return f"{self.version}-{self.cudnn}-{flavor}-{os_name or self.os[0]}"


@record
class FleetFact(Record):
    """`[[fleet_fact]]` in fleet.toml: how much a difference of one fact across nodes matters (`moe-env diff`)."""

    fact: str  # "torch.build", "package deepspeed", "package nvidia-nccl-cu*"
    severity: str  # "error" (must agree) | "warning" (should agree)
    agree: str  # "exact" | "major" | "minor": the part of the value that must be equal
    why: str
    source: List[str]


@record
class LauncherArg(Record):
    """`[[launcher_arg]]` in launchers.toml: an argument a launcher adds to the script's command line."""

    launcher: str  # program name: "deepspeed"
    adds: str  # the option string it appends: "--local_rank"
    unless: str  # the launcher option that turns it off ("" when none)
    why: str
    fix: str
    source: List[str]


# ---------------------------------------------------------------- package facts (packages/*.toml)


@record
class PackageRelease(Record):
    """`[[release]]` in packages/<package>.toml."""

    version: str
    source: List[str]
    requires: Dict[str, str] = field(default_factory=dict)  # {"torch": ">=1.9", "pydantic": ">=1,<2"}
    python: str = ""  # Requires-Python specifier, "" when undeclared
    sdist_only: bool = False
    build_imports_torch: bool = False  # its sdist imports torch while building (needs --no-build-isolation)
    released: str = ""  # date, "2024-01-19"
    configs: List[str] = field(default_factory=list)  # xtuner: the named training configs the release ships
    notes: str = ""


@record
class ApiEntry(Record):
    """`[[api]]` in packages/<package>.toml: a symbol (or one parameter of it) and the releases that have it."""

    symbol: str  # "deepspeed.utils.set_z3_leaf_modules" or "deepspeed.moe.layer.MoE.__init__"
    first: str  # first release that has it
    source: List[str]
    param: str = ""  # a parameter name of `symbol`, "" for the symbol itself
    last: str = ""  # last release that has it; "" = still in the newest checked release
    newest_checked: str = ""  # newest release the fact was checked against
    notes: str = ""


@record
class FlashAttnWheels(Record):
    """`[[wheels]]` in packages/flash-attn.toml: prebuilt wheels one flash-attn release publishes."""

    version: str
    torch: List[str]  # torch minors: ["2.1", "2.2", ...]
    cuda: List[str]  # CUDA the wheels are built with: ["11.8", "12.3"]
    python: List[str]  # ["3.8", ..., "3.12"]
    cxx11_abi: List[bool]  # [true, false]
    source: List[str]
    notes: str = ""


@record
class Conflict(Record):
    """`[[conflict]]` in generic.toml: a combination of installed versions that breaks, for any project."""

    id: str
    when: Dict[str, str]  # every package must be installed and match its specifier
    severity: str
    title: str
    why: str
    fix: str
    source: List[str]
    # the fix as one requirement on one of the `when` packages ("peft<0.14.0"): doctor's one-command fix line
    # and its merge of fixes for the same package read it; "" when the fix is not an install
    requirement: str = ""
    # the other way out, on another `when` package ("transformers>=4.43.0"): doctor offers it instead when the
    # project's own version rules exclude `requirement` (MoE-LLaVA pins deepspeed==0.9.5: torch<2.4, not deepspeed>=0.14.4)
    alternative: str = ""


# ---------------------------------------------------------------- projects (projects/<name>.toml)


@record
class ProjectInfo(Record):
    """`[project]` in projects/<name>.toml."""

    name: str  # "minigemini"
    title: str  # "MiniGemini (MGM)"
    repo: str  # "dvlab-research/MGM"
    commit: str  # the upstream commit the facts were read at
    source: List[str]
    aliases: List[str] = field(default_factory=list)  # ["mgm", "mini-gemini"]
    detect: List[str] = field(default_factory=list)  # distributions whose presence means this project
    default_variants: List[str] = field(default_factory=list)  # assumed without --model (the MoE ones)
    notes: str = ""


@record
class Pin(Record):
    """`[[pin]]`: what upstream declares, at `ProjectInfo.commit`."""

    package: str
    spec: str  # "==0.11.1", "" for unpinned
    source: List[str]
    extra: str = ""  # the optional-dependency group, "" for the main list
    notes: str = ""


@record
class Variant(Record):
    """`[[variant]]`: a model variant the project trains."""

    id: str  # "8x7b"
    title: str
    moe: bool
    source: List[str]
    aliases: List[str] = field(default_factory=list)
    base_model: str = ""  # "mistralai/Mixtral-8x7B-Instruct-v0.1"
    num_experts: int = 0
    deepspeed_config: str = ""  # upstream path: "scripts/zero3.json"
    zero_stage: int = -1  # -1 when not DeepSpeed
    launcher: str = ""  # "deepspeed", "torchrun", "xtuner train", "pretrain_gpt.py"
    bf16: bool = False  # the shipped recipe trains in bf16 (needs sm_80+)
    min_gpu_memory_gib: int = 0
    notes: str = ""


@record
class Check(Record):
    """`[[check]]`: a doctor rule for this project; `kind` names a registered check function."""

    id: str
    kind: str  # "version_bound", "api_symbol", "requires", "absent", ...
    severity: str  # "error" | "warning" | "info"
    title: str
    why: str
    fix: str
    source: List[str]
    variants: List[str] = field(default_factory=list)  # [] = every variant
    params: Dict[str, Any] = field(default_factory=dict)  # kind-specific: {package, spec}, {symbol, param}...


@record
class Stack(Record):
    """`[[stack]]`: a known-good set of pins for some variants and one CUDA target."""

    id: str  # "mgm-8x7b-cu121"; also the lockfile folder name
    variants: List[str]
    cuda: str  # "12.1", or "cpu"
    python: str  # "3.10"
    pins: Dict[str, str]  # {"torch": "2.1.2", "deepspeed": "0.13.2", ...}: exact versions of the key packages
    why: str  # why these versions
    source: List[str]
    departs: List[str] = field(default_factory=list)  # where and why it departs from upstream pins
    source_builds: List[str] = field(default_factory=list)  # packages that need build steps: ["flash-attn"]
    gpu_archs: List[str] = field(default_factory=list)  # archs it was meant for; [] = any the torch build has
    notes: str = ""


@record
class Rule(Record):
    """`[[rule]]`: a launch or DeepSpeed-config rule judged by `check-config`; `kind` names a function."""

    id: str
    kind: str
    severity: str
    title: str
    why: str
    fix: str
    source: List[str]
    variants: List[str] = field(default_factory=list)
    params: Dict[str, Any] = field(default_factory=dict)


@record
class Reading(Record):
    """`[[known_issue.readings]]`: one meaning of a message that means different things in different
    releases ("too old" in one era, "removed" in another), tied to a version condition on a package.

    `when` is a requirement (`transformers>=4.38`); in a generic name/keyword issue it may say
    `{package}`, `{first}` and `{last}`, filled from the API-table row of the name the message quotes
    (`{package}>{last}`: the name was removed before the installed release). `explain --python` picks
    the reading whose condition the installed release meets, when the static evidence agrees.
    """

    id: str  # "too-new", "too-old", "removed"
    when: str
    cause: str
    fix: str
    source: List[str]


@record
class KnownIssue(Record):
    """`[[known_issue]]`: a symptom (log/error text patterns), its cause, fix and source."""

    id: str
    title: str
    patterns: List[str]  # Python regular expressions, matched per line (re.search)
    cause: str
    fix: str
    source: List[str]
    severity: str = "error"
    benign: bool = False  # a scary message that is harmless
    variants: List[str] = field(default_factory=list)
    doctor: List[str] = field(default_factory=list)  # doctor finding ids that predict this error
    failure_class: str = ""  # generic issues: the class they belong to (the file's `class`)
    decode: str = ""  # a decoder of a named group in the pattern ("cuda_api": 11040 -> CUDA 11.4)
    context: List[str] = field(default_factory=list)  # regexes one of which must appear in the same traceback or the lines just before
    readings: List[Reading] = field(default_factory=list)  # the meanings of an ambiguous message (see Reading)
    symbol: str = ""  # API-table symbol whose presence in an install tells the readings apart (else: named groups)
    param: str = ""  # a parameter of `symbol`


@record
class EntryPoint(Record):
    """`[[entry_point]]` (compat_matrix/entry_points/*.toml): the flags a training entry point's own
    parser accepts, generated from upstream by moe_env/matrix/entry_flags.py."""

    id: str
    scripts: List[str]  # launch words that select it: path suffixes ("mgm/train/train_mem.py") or "xtuner train"
    parser: str  # "hf" (HfArgumentParser) | "argparse"
    allow_abbrev: bool  # argparse accepts unique prefixes of a flag
    flags: List[str]  # every option string, exactly as the parser spells it
    source: List[str]
    default: bool = False  # judged when the launch names no script (only its arguments)
    conditional_flags: List[str] = field(default_factory=list)  # accepted in some set-ups only (see `conditional`)
    conditional: str = ""
    no_value_flags: List[str] = field(default_factory=list)  # take no value (store_true/store_false): a word after is stray
    bool_value_flags: List[str] = field(default_factory=list)  # hf: an optional true/false word (string_to_bool)
    notes: str = ""


@record
class Project(Record):
    info: ProjectInfo
    pins: List[Pin] = field(default_factory=list)
    variants: List[Variant] = field(default_factory=list)
    checks: List[Check] = field(default_factory=list)
    stacks: List[Stack] = field(default_factory=list)
    rules: List[Rule] = field(default_factory=list)
    known_issues: List[KnownIssue] = field(default_factory=list)
    entry_points: List[EntryPoint] = field(default_factory=list)
    file: str = ""

    @property
    def name(self) -> str:
        return self.info.name

    def variant(self, name: str) -> Optional[Variant]:
        key = name.lower()
        for v in self.variants:
            if v.id.lower() == key or key in (a.lower() for a in v.aliases):
                return v
        return None

    def moe_variants(self) -> List[Variant]:
        if self.info.default_variants:
            return [v for v in self.variants if v.id in self.info.default_variants]
        return [v for v in self.variants if v.moe]


# ---------------------------------------------------------------- the whole matrix


@record
class Matrix(Record):
    root: str
    torch_releases: List[TorchRelease] = field(default_factory=list)
    torch_archs: List[TorchArch] = field(default_factory=list)
    cuda_drivers: List[CudaDriver] = field(default_factory=list)
    cuda_minor_compat: List[CudaMinorCompat] = field(default_factory=list)
    gpus: List[GpuFamily] = field(default_factory=list)
    arch_toolkits: List[ArchToolkit] = field(default_factory=list)
    cuda_images: List[CudaImage] = field(default_factory=list)
    releases: Dict[str, List[PackageRelease]] = field(default_factory=dict)  # by normalised package name
    api: Dict[str, List[ApiEntry]] = field(default_factory=dict)  # by normalised package name
    flash_attn_wheels: List[FlashAttnWheels] = field(default_factory=list)
    conflicts: List[Conflict] = field(default_factory=list)
    known_issues: List[KnownIssue] = field(default_factory=list)  # generic ones (compat_matrix/generic/)
    fleet_facts: List[FleetFact] = field(default_factory=list)
    launcher_args: List[LauncherArg] = field(default_factory=list)
    projects: Dict[str, Project] = field(default_factory=dict)  # by name

    def project(self, name: str) -> Optional[Project]:
        key = name.lower()
        for p in self.projects.values():
            if p.info.name.lower() == key or key in (a.lower() for a in p.info.aliases):
                return p
        return None

    def api_symbols(self) -> List[str]:
        """Every symbol the probe must look up: from the API tables and the projects' api_symbol checks."""
        seen = {e.symbol for entries in self.api.values() for e in entries}
        for p in self.projects.values():
            for c in p.checks:
                if c.kind == "api_symbol" and isinstance(c.params.get("symbol"), str):
                    seen.add(c.params["symbol"])
        return sorted(seen)

    def cuda_image(self, cuda: str) -> Optional[CudaImage]:
        """The nvidia/cuda image row for a CUDA minor such as "12.1" (or "12.1.1")."""
        minor = ".".join(cuda.split(".")[:2])
        for row in self.cuda_images:
            if row.cuda == minor:
                return row
        return None

    def torch_release(self, version: str) -> Optional[TorchRelease]:
        """The minor-release row for a torch version such as "2.1.2+cu121"."""
        base = version.split("+", 1)[0]
        parts = base.split(".")
        minor = ".".join(parts[:2])
        for r in self.torch_releases:
            if r.minor == minor:
                return r
        return None
