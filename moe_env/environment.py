"""The probed facts of one environment, as typed dataclasses with a stable JSON form.

Everything downstream (checks, resolver, diff, `--from-json`) reads an Environment and never
probes by itself; that is what makes a saved report, a Docker build and a test fixture the same.
The JSON form is `record.asdict`; `from_dict` is its inverse and tolerates missing keys
(older reports) but not a wrong schema, which the report reader checks first.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from moe_env.record import Record, asdict, field, fields, hints, is_record, record

REPORT_SCHEMA = "moe-env.doctor/1"


@record
class PythonInfo(Record):
    version: str  # "3.11.7"
    implementation: str  # "cpython"
    executable: str
    prefix: str
    platform: str  # sysconfig.get_platform(), e.g. "linux-x86_64"
    machine: str  # platform.machine()
    glibc: Optional[str] = None  # "2.36"; None off glibc
    sys_path: List[str] = field(default_factory=list)


@record
class Distribution(Record):
    name: str  # PEP 503 normalised
    version: str  # as the METADATA says, unparsed (may be invalid)
    requires: List[str] = field(default_factory=list)  # Requires-Dist lines, unparsed
    location: str = ""  # the sys.path entry holding its .dist-info / .egg-info
    installer: Optional[str] = None
    metadata_error: Optional[str] = None  # set when METADATA was missing or unreadable


@record
class TorchBuild(Record):
    """From torch/version.py and torch/__config__-free files; never from importing torch."""

    version: str  # "2.1.2+cu121"
    local: Optional[str] = None  # "cu121", "cpu", "rocm6.0", None for no local tag
    cuda: Optional[str] = None  # "12.1"; None for CPU/ROCm builds
    cudnn: Optional[str] = None  # "8902" style or "8.9.2"; None when unknown
    hip: Optional[str] = None
    git_version: Optional[str] = None
    cxx11_abi: Optional[bool] = None  # from TorchConfig.cmake / the wheel's files; None when unknown
    debug: Optional[bool] = None
    location: str = ""
    cudnn_source: Optional[str] = None  # "distribution nvidia-cudnn-cu12" or "torch/lib/libcudnn.so.8.9.2"
    cxx11_abi_source: Optional[str] = None  # "torch/share/cmake/Torch/TorchConfig.cmake" or "torch/lib/libc10.so symbols"
    nccl: Optional[str] = None  # the NCCL torch loads: "2.21.5"; None for CPU builds or when unknown
    nccl_source: Optional[str] = None  # "distribution nvidia-nccl-cu12" or "torch/lib/libnccl.so.2.18.3"


@record
class DeepSpeedBuild(Record):
    """From deepspeed/git_version_info_installed.py (written by its setup.py at install time)."""

    version: str
    git_hash: Optional[str] = None
    built_torch: Optional[str] = None  # torch_info["version"], "0.0" after an isolated build
    built_cuda: Optional[str] = None  # torch_info["cuda_version"]
    built_nccl: Optional[str] = None
    installed_ops: Dict[str, bool] = field(default_factory=dict)
    accelerator: Optional[str] = None
    build_info_found: bool = False
    build_info_error: Optional[str] = None
    compatible_ops: Dict[str, bool] = field(default_factory=dict)  # written by 0.9.0-0.14.0 only
    built_hip: Optional[str] = None  # torch_info["hip_version"]


@record
class Extension(Record):
    """A package with compiled parts: flash-attn, transformer-engine, apex, grouped_gemm, bitsandbytes..."""

    key: str  # our name for it: "flash-attn", "grouped_gemm", ...
    present: bool
    distribution: Optional[str] = None  # which distribution provides it ("nv-grouped-gemm")
    version: Optional[str] = None
    import_name: Optional[str] = None
    compiled_files: List[str] = field(default_factory=list)  # extension files found, relative to location
    providers: List[str] = field(default_factory=list)  # every installed distribution providing it (2+ = they collide)
    origin: Optional[str] = None  # direct_url.json URL (git installs) or Home-page: tells same-named forks apart


@record
class ApiSymbol(Record):
    """Whether a dotted symbol exists in installed source, read with ast, executing nothing."""

    symbol: str  # "deepspeed.utils.set_z3_leaf_modules", "deepspeed.moe.layer.MoE.__init__"
    found: bool
    kind: Optional[str] = None  # "module", "class", "function", "assignment", "import"
    params: Optional[List[str]] = None  # parameter names of a function/method (incl. self, *args as "*args")
    file: Optional[str] = None
    line: Optional[int] = None
    error: Optional[str] = None  # why it could not be decided: missing module, syntax error...
    # parameter kinds for judging a call: posonly/args/kwonly (names), kwonly_required, vararg/kwarg (name or
    # None), defaults (how many of posonly+args have one), decorators (dotted names), method (defined in a class)
    signature: Optional[Dict[str, Any]] = None
    undecided: Optional[str] = None  # not found, but the source may still make it at run time (lazy __getattr__...)


@record
class LinkedFile(Record):
    """A compiled file that links torch, as the dynamic linker would load it (read from ELF, never loaded)."""

    file: str  # as RECORD lists it, relative to the distribution's location
    path: str = ""  # the path `import` would dlopen
    error: Optional[str] = None  # the ELF could not be read (then the lists below are empty)
    needed: List[str] = field(default_factory=list)  # DT_NEEDED, in order
    torch_libraries: List[str] = field(default_factory=list)  # the DT_NEEDED that are torch's (libc10.so, ...)
    missing_libraries: List[str] = field(default_factory=list)  # DT_NEEDED the dynamic linker would not find
    missing_symbols: List[str] = field(default_factory=list)  # torch symbols no torch library in scope defines; first = dlopen's
    missing_symbol_count: int = 0
    torch_symbols: int = 0  # undefined symbols it needs from torch's namespaces
    cuda_libraries: List[str] = field(default_factory=list)  # libcudart.so.12, libcublas.so.11 ... it links
    cuda_major: Optional[str] = None  # from those sonames
    cxx11_abi: Optional[bool] = None  # from its undefined symbols' mangling; None when they do not tell
    versions_needed: Dict[str, List[str]] = field(default_factory=dict)  # "libstdc++.so.6" -> ["GLIBCXX_3.4.30", ...]


@record
class CompiledDistribution(Record):
    """An installed distribution shipping shared objects that link torch, and what it records of its build."""

    distribution: str
    version: str
    location: str = ""
    wheel_tags: List[str] = field(default_factory=list)  # WHEEL's Tag lines ("cp310-cp310-linux_x86_64")
    direct_url: Optional[str] = None  # direct_url.json's URL (+ "@commit"): a source or local build
    files: List[LinkedFile] = field(default_factory=list)


@record
class PartialInstall(Record):
    """A distribution whose RECORD lists compiled files that are not on disk."""

    distribution: str
    version: str
    missing: List[str] = field(default_factory=list)  # the first few, in RECORD order
    missing_count: int = 0
    compiled_count: int = 0
    record: str = ""


@record
class VersionNeeds(Record):
    file: str  # a library torch loads
    needs: Dict[str, List[str]] = field(default_factory=dict)  # "libstdc++.so.6" -> ["GLIBCXX_3.4.22", ...], checked in order


@record
class Linkage(Record):
    """The probe's reading of the env's compiled files and the C/C++ runtime libraries the process will load."""

    torch_lib: Optional[str] = None
    libstdcxx: Optional[str] = None  # the libstdc++.so.6 the process maps first
    libstdcxx_versions: List[str] = field(default_factory=list)  # GLIBCXX_/CXXABI_ versions it defines
    libc: Optional[str] = None
    libc_versions: List[str] = field(default_factory=list)  # GLIBC_ versions it defines
    torch_versions_needed: List[VersionNeeds] = field(default_factory=list)  # torch's libraries, in load order
    compiled: Dict[str, CompiledDistribution] = field(default_factory=dict)  # by normalised distribution name
    partial_installs: Dict[str, PartialInstall] = field(default_factory=dict)
    unreadable: Dict[str, List[List[str]]] = field(default_factory=dict)  # dist -> [[file, reason]]: not ELF
    files_read: int = 0


@record
class GPU(Record):
    index: int
    name: str
    compute_capability: Optional[str] = None  # "9.0"
    memory_mib: Optional[int] = None


@record
class HostInfo(Record):
    driver_version: Optional[str] = None  # "550.54.15"
    driver_source: Optional[str] = None  # "/sys/module/nvidia/version", "nvidia-smi", "MOE_ENV_CUDA_DRIVER_VERSION"
    driver_cuda: Optional[str] = None  # the newest CUDA the driver supports, when nvidia-smi says
    gpus: List[GPU] = field(default_factory=list)
    gpu_source: Optional[str] = None
    nvcc_version: Optional[str] = None  # "12.1"
    nvcc_path: Optional[str] = None
    cuda_home: Optional[str] = None
    build_mode: bool = False  # --build: no driver/GPU expected; those checks are deferred
    overrides: List[str] = field(default_factory=list)  # env vars that replaced probed facts
    notes: List[str] = field(default_factory=list)  # probe failures worth showing (nvidia-smi timed out...)
    hostname: Optional[str] = None  # the node's name, so `moe-env diff` can name nodes in a fleet
    cuda_home_source: Optional[str] = None  # "CUDA_HOME", "CUDA_PATH", "nvcc on PATH", "/usr/local/cuda"
    cuda_home_exists: Optional[bool] = None  # None when no CUDA_HOME was found at all
    cuda_headers_missing: List[str] = field(default_factory=list)  # of include/cuda_runtime.h, include/curand_kernel.h
    shm_bytes: Optional[int] = None  # size of /dev/shm (statvfs), or MOE_ENV_SHM_SIZE
    shm_source: Optional[str] = None
    container: Optional[str] = None  # the marker that says this runs in a container ("/.dockerenv", ...)


@record
class Environment(Record):
    python: PythonInfo
    distributions: Dict[str, Distribution] = field(default_factory=dict)  # by normalised name
    torch: Optional[TorchBuild] = None
    deepspeed: Optional[DeepSpeedBuild] = None
    extensions: Dict[str, Extension] = field(default_factory=dict)  # by key
    api: Dict[str, ApiSymbol] = field(default_factory=dict)  # by symbol
    import_names: Dict[str, str] = field(default_factory=dict)  # top-level import name -> distribution (doctor --code)
    host: HostInfo = field(default_factory=HostInfo)
    probe_errors: List[str] = field(default_factory=list)  # things the probe could not read
    probe_seconds: Optional[float] = None
    linkage: Optional[Linkage] = None  # compiled files and C/C++ runtimes; None from older reports

    def dist(self, name: str) -> Optional[Distribution]:
        return self.distributions.get(normalize_name(name))

    def version_of(self, name: str) -> Optional[str]:
        d = self.dist(name)
        return d.version if d else None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Environment":
        """The inverse of to_dict, for reports that others wrote: every value is checked against its field's
        type (a `host` that is a string, `distributions` that is a list, a version that is a number are a
        ValueError naming the field), so a check never meets a shape it was not written for."""
        if not isinstance(data, dict):
            raise ValueError("environment: expected an object")
        return _build(cls, data, "environment")


_HINTS: Dict[type, Dict[str, Any]] = {}


def _build(cls, data: Any, where: str):
    """A dataclass from a dict, ignoring keys a newer writer added, checking the rest by type."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, found {type(data).__name__}")
    if cls not in _HINTS:
        import typing

        _HINTS[cls] = typing.get_type_hints(cls)
    hints = _HINTS[cls]
    names = {f.name for f in fields(cls)}
    return cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in data.items() if k in names})


def _typed(value: Any, hint: Any, where: str) -> Any:
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _typed(value, inner[0], where)
    if hint is Any:
        return value
    if is_record(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, found {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, found {type(value).__name__}")
        _, item = typing.get_args(hint)
        return {str(k): _typed(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected text, found {type(value).__name__}")
        return value
    return value


def normalize_name(name: str) -> str:
    """PEP 503 normalisation (kept here, stdlib-only, so the probe script can share the rule)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()
