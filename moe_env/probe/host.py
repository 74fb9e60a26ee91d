"""Host facts the target interpreter cannot know: NVIDIA driver, GPUs, nvcc, CUDA_HOME.

They come from files first (/sys, /proc, CUDA_HOME/version.json), then from `nvidia-smi` / `nvcc`
with timeouts, and can be replaced by environment variables for machines that have no GPU at build
time (Docker builds, CI, login nodes):

- MOE_ENV_CUDA_DRIVER_VERSION=550.54.15
- MOE_ENV_GPUS=8.0x8 | H100:9.0 | A100:8.0x8 | H100x8 | "H100:9.0,A100" | none
- MOE_ENV_NVCC_VERSION=12.1 | none (the target has no CUDA toolkit)
- MOE_ENV_HOSTNAME=node07 (the node's name in reports; containers often have random host names)
- MOE_ENV_SHM_SIZE=64M | 1G | 67108864 (the /dev/shm a container will get: `docker run --shm-size`)
- MOE_ENV_HOST_ROOT=/path (read /sys, /proc, /dev/shm and the container markers under this folder: tests,
  or a mounted image)

Every override is bounded: a value outside what any real machine reports is a one-line usage error.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from moe_env import spawn
from moe_env.environment import GPU, HostInfo
from moe_env.errors import UsageError

SYS_DRIVER = "/sys/module/nvidia/version"
DEV_SHM = "/dev/shm"
# files that say "this is a container": Docker, Podman; else PID 1's cgroup names a container runtime
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
PROC_1_CGROUP = "/proc/1/cgroup"
_CGROUP_RUNTIME = re.compile(r"docker|kubepods|containerd|libpod|lxc|crio")
# what a JIT build of torch/DeepSpeed CUDA ops #includes from CUDA_HOME/include (the CUDA runtime and cuRAND)
CUDA_HEADERS = ("include/cuda_runtime.h", "include/curand_kernel.h")
MAX_GPUS = 4096
PROC_DRIVER = "/proc/driver/nvidia/version"
PROC_GPUS = "/proc/driver/nvidia/gpus"
NVIDIA_SMI_TIMEOUT = 10.0
NVCC_TIMEOUT = 10.0

_VERSION = re.compile(r"^\d+(\.\d+)*$")
# a driver version as NVIDIA numbers them (384.81, 535.104.05, 580.65.06): bounded, so 999...9 is refused
_DRIVER = re.compile(r"^[1-9]\d{1,3}(\.\d{1,3}){1,2}$")
_DRIVER_IN_PROC = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")
_NVCC_RELEASE = re.compile(r"release (\d+\.\d+)")


def gather_host(build_mode: bool = False, environ: Optional[dict] = None, root: str = "/") -> HostInfo:
    """Probe this machine. `environ` and `root` exist for tests (a fake /sys and /proc under tmp_path)."""
    env = os.environ if environ is None else environ
    if root == "/" and (env.get("MOE_ENV_HOST_ROOT") or "").strip():
        root = env["MOE_ENV_HOST_ROOT"].strip()
        if not os.path.isdir(root):
            raise UsageError(f"MOE_ENV_HOST_ROOT={root!r}: not a folder")
    host = HostInfo(build_mode=build_mode, hostname=_hostname())
    if (env.get("MOE_ENV_HOSTNAME") or "").strip():
        host.hostname = env["MOE_ENV_HOSTNAME"].strip()
        host.overrides.append("MOE_ENV_HOSTNAME")
    _driver(host, env, root)
    _gpus(host, env, root)
    _nvcc(host, env, root)
    _cuda_home_files(host)
    _shm(host, env, root)
    _container(host, root)
    return host


def _hostname() -> Optional[str]:
    try:
        return os.uname().nodename or None  # what socket.gethostname() returns, without importing socket
    except OSError:
        return None


def _which(name: str, path: Optional[str]) -> Optional[str]:
    """shutil.which for a plain command name on POSIX (shutil's import costs doctor a few milliseconds)."""
    for folder in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _read(path: str, limit: int = 1024 * 1024) -> Optional[str]:
    """A small host file's text; a FIFO, /dev/zero or a huge file where one is expected reads as nothing."""
    from moe_env.untrusted import UntrustedInput, read_bytes

    try:
        return read_bytes(path, max_bytes=limit).decode("utf-8", "replace")
    except UntrustedInput:
        return None


def _under(root: str, path: str) -> str:
    return path if root in ("", "/") else os.path.join(root, path.lstrip("/"))


# ---------------------------------------------------------------- driver


def _driver(host: HostInfo, env, root: str) -> None:
    override = (env.get("MOE_ENV_CUDA_DRIVER_VERSION") or "").strip()
    if override:
        if not _DRIVER.match(override):
            raise UsageError(f"MOE_ENV_CUDA_DRIVER_VERSION={_short(override)}: expected a driver version such as 550.54.15")
        host.driver_version, host.driver_source = override, "MOE_ENV_CUDA_DRIVER_VERSION"
        host.overrides.append("MOE_ENV_CUDA_DRIVER_VERSION")
        return
    text = _read(_under(root, SYS_DRIVER))
    if text and _VERSION.match(text.strip()):
        host.driver_version, host.driver_source = text.strip(), SYS_DRIVER
        return
    text = _read(_under(root, PROC_DRIVER))
    if text:
        m = _DRIVER_IN_PROC.search(text)
        if m:
            host.driver_version, host.driver_source = m.group(1), PROC_DRIVER
            return
        host.notes.append(f"{PROC_DRIVER}: no driver version in it")
    # nvidia-smi may still know (containers without /sys/module); _gpus() fills it in.


# ---------------------------------------------------------------- GPUs


_COUNT = re.compile(r"^(.*?)x(\d{1,6})$")
_MEMORY = re.compile(r"^(\d{1,5}(?:\.\d{1,3})?)\s*(gb|gib|g|mb|mib|m)$", re.I)


def _short(value: str, limit: int = 40) -> str:
    """A user's value for an error line: repr'd (control characters escaped), cut to `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def parse_gpu_override(value: str) -> List[GPU]:
    """MOE_ENV_GPUS: comma-separated `[NAME:]CC[xN][:MEM]` or `NAME[xN][:MEM]` items; `none` for no GPU.

    MEM is the memory of each GPU (80GB, 81559MiB); counts are 1 to 4096 in all, capabilities 1.0 to 19.9.
    """
    value = value.strip()
    if value.lower() == "none":
        return []
    if len(value) > 1000:
        raise UsageError(f"MOE_ENV_GPUS: {len(value)} characters; expected something like A100:8.0x8:80GB")
    gpus: List[GPU] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        memory = None
        head, sep, tail = item.rpartition(":")
        if sep and _MEMORY.match(tail.strip()):
            memory = _memory_mib(tail.strip())
            item = head.strip()
        count = 1
        m = _COUNT.match(item)
        if m and m.group(1):
            item, count = m.group(1), int(m.group(2))
        elif re.match(r"^.*x\d{7,}$", item):
            raise UsageError(f"MOE_ENV_GPUS: {_short(item)}: too many GPUs; expected 1 to {MAX_GPUS}")
        name, cc = _name_and_cc(item)
        if count < 1 or count + len(gpus) > MAX_GPUS:
            raise UsageError(f"MOE_ENV_GPUS: {count} GPUs in {_short(item)}? expected 1 to {MAX_GPUS} in all")
        for _ in range(count):
            gpus.append(GPU(index=len(gpus), name=name, compute_capability=cc, memory_mib=memory))
    if not gpus:
        raise UsageError(f"MOE_ENV_GPUS={_short(value)}: no GPU in it (use e.g. 8.0x8, H100:9.0, A100:8.0x8:80GB or none)")
    return gpus


def _memory_mib(text: str) -> int:
    m = _MEMORY.match(text)
    amount, unit = float(m.group(1)), m.group(2).lower()
    mib = int(amount * 1024) if unit.startswith("g") else int(amount)
    if not 256 <= mib <= 4 * 1024 * 1024:
        raise UsageError(f"MOE_ENV_GPUS: GPU memory {text!r}? expected 1GB to 4096GB per GPU")
    return mib


def _name_and_cc(item: str) -> Tuple[str, Optional[str]]:
    def cc_of(text: str) -> Optional[str]:
        text = text.strip().lower()
        if text.startswith("sm_"):
            text = text[3:]
            if text.isdigit() and len(text) >= 2:
                return f"{int(text[:-1])}.{text[-1]}"
            return None
        if not re.match(r"^\d{1,2}\.\d$", text) or not 1 <= int(text.split(".")[0]) <= 19:
            return None
        return text

    if ":" in item:
        name, _, cc_text = item.partition(":")
        cc = cc_of(cc_text)
        if not name.strip() or cc is None:
            raise UsageError(f"MOE_ENV_GPUS: cannot read {_short(item)}; expected NAME:CC such as H100:9.0")
        if not re.match(r"^[\w .()/+-]{1,64}$", name.strip()):
            raise UsageError(f"MOE_ENV_GPUS: cannot read the GPU name {_short(name)}; letters, digits and .()/+- only")
        return name.strip(), cc
    cc = cc_of(item)
    if cc is not None:
        return f"sm_{cc.replace('.', '')} (MOE_ENV_GPUS)", cc
    if not re.match(r"^[\w .()/+-]{1,64}$", item) or re.match(r"^[\d.]+$", item):
        raise UsageError(f"MOE_ENV_GPUS: cannot read {_short(item)}; expected 8.0x8, H100:9.0 or A100:8.0x8:80GB")
    return item.strip(), None


def _gpus(host: HostInfo, env, root: str) -> None:
    override = env.get("MOE_ENV_GPUS")
    if override is not None and override.strip():
        host.gpus = parse_gpu_override(override)
        host.gpu_source = "MOE_ENV_GPUS"
        host.overrides.append("MOE_ENV_GPUS")
        return
    smi = _which("nvidia-smi", env.get("PATH"))
    if smi:
        _from_nvidia_smi(host, smi)
        if host.gpus:
            return
    gpus = _gpus_from_proc(root)
    if gpus:
        host.gpus, host.gpu_source = gpus, PROC_GPUS


def parse_nvidia_smi(text: str, with_cc: bool = True) -> Tuple[List[GPU], Optional[str]]:
    """Rows of `--query-gpu=name,memory.total[,compute_cap],driver_version --format=csv,noheader,nounits`."""
    gpus: List[GPU] = []
    driver = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < (4 if with_cc else 3) or not cells[0]:
            continue
        name, mem = cells[0], cells[1]
        cc = cells[2] if with_cc else None
        driver = cells[-1] if _VERSION.match(cells[-1]) else driver
        mem_mib = int(float(mem.split()[0])) if re.match(r"^\d+(\.\d+)?( MiB)?$", mem) else None
        gpus.append(GPU(index=len(gpus), name=name, memory_mib=mem_mib,
                        compute_capability=cc if cc and re.match(r"^\d+\.\d+$", cc) else None))
    return gpus, driver


def _from_nvidia_smi(host: HostInfo, smi: str) -> None:
    for with_cc in (True, False):  # drivers before ~510 do not know the compute_cap field
        fields = "name,memory.total,compute_cap,driver_version" if with_cc else "name,memory.total,driver_version"
        try:
            returncode, stdout, stderr = spawn.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                                   timeout=NVIDIA_SMI_TIMEOUT)
        except spawn.SpawnTimeout:
            host.notes.append(f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT:g}s (driver hung?)")
            return
        except OSError as exc:
            host.notes.append(f"nvidia-smi could not run ({exc.strerror or exc})")
            return
        if returncode == 0:
            gpus, driver = parse_nvidia_smi(stdout, with_cc)
            host.gpus, host.gpu_source = gpus, "nvidia-smi"
            if driver and not host.driver_version:
                host.driver_version, host.driver_source = driver, "nvidia-smi"
            return
        if with_cc and "compute_cap" in (stdout + stderr):
            continue
        last = (stdout.strip() or stderr.strip() or f"exit {returncode}").splitlines()[-1]
        host.notes.append(f"nvidia-smi failed: {last}")
        return


def _gpus_from_proc(root: str) -> List[GPU]:
    """/proc/driver/nvidia/gpus/*/information has `Model:` (no capability; the matrix maps names to it)."""
    base = _under(root, PROC_GPUS)
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    gpus: List[GPU] = []
    for entry in entries:
        text = _read(os.path.join(base, entry, "information")) or ""
        m = re.search(r"^Model:\s*(.+)$", text, re.M)
        if m:
            gpus.append(GPU(index=len(gpus), name=m.group(1).strip()))
    return gpus


# ---------------------------------------------------------------- nvcc / CUDA_HOME


def _cuda_home(env, root: str = "/") -> Tuple[Optional[str], Optional[str]]:
    """(CUDA_HOME, nvcc path) found as torch.utils.cpp_extension._find_cuda_home does (what JIT builds use):
    CUDA_HOME or CUDA_PATH, else the folder above the `nvcc` on PATH (no symlink resolution), else /usr/local/cuda."""
    home, _ = _cuda_home_with_source(env, root)
    nvcc_on_path = _which("nvcc", env.get("PATH"))
    nvcc = None
    if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        nvcc = os.path.join(home, "bin", "nvcc")
    elif nvcc_on_path:
        nvcc = nvcc_on_path
    return home, nvcc


def _cuda_home_with_source(env, root: str = "/") -> Tuple[Optional[str], Optional[str]]:
    """CUDA_HOME as torch.utils.cpp_extension._find_cuda_home picks it, and which guess gave it."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            return env[var], var
    nvcc_on_path = _which("nvcc", env.get("PATH"))
    if nvcc_on_path:
        return os.path.dirname(os.path.dirname(nvcc_on_path)), "nvcc on PATH"
    if os.path.isdir(_under(root, "/usr/local/cuda")):
        return _under(root, "/usr/local/cuda"), "/usr/local/cuda"
    return None, None


def _cuda_home_files(host: HostInfo) -> None:
    """Whether CUDA_HOME exists and has the headers a JIT build of CUDA ops includes (stat only)."""
    if not host.cuda_home:
        return
    host.cuda_home_exists = os.path.isdir(host.cuda_home)
    if host.cuda_home_exists:
        host.cuda_headers_missing = [h for h in CUDA_HEADERS if not os.path.isfile(os.path.join(host.cuda_home, h))]


_SIZE = re.compile(r"^(\d{1,13})\s*([kmgt]i?b?|b)?$", re.I)


def parse_size(text: str, what: str) -> int:
    """"64M", "1g", "512MiB", "67108864" -> bytes; bounded to 1 TiB."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"{what}={_short(text)}: expected a size such as 64M, 1G or 67108864")
    unit = (m.group(2) or "b").lower()[0]
    n = int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    if n > 1 << 40:
        raise UsageError(f"{what}={_short(text)}: more than 1 TiB?")
    return n


def _shm(host: HostInfo, env, root: str) -> None:
    override = (env.get("MOE_ENV_SHM_SIZE") or "").strip()
    if override:
        host.shm_bytes, host.shm_source = parse_size(override, "MOE_ENV_SHM_SIZE"), "MOE_ENV_SHM_SIZE"
        host.overrides.append("MOE_ENV_SHM_SIZE")
        return
    path = _under(root, DEV_SHM)
    try:
        st = os.statvfs(path)
    except OSError:
        return
    host.shm_bytes, host.shm_source = st.f_frsize * st.f_blocks, f"statvfs {DEV_SHM}"


def _container(host: HostInfo, root: str) -> None:
    for marker in CONTAINER_MARKERS:
        if os.path.exists(_under(root, marker)):
            host.container = marker
            return
    text = _read(_under(root, PROC_1_CGROUP)) or ""
    m = _CGROUP_RUNTIME.search(text[:65536])
    if m:
        host.container = f"{PROC_1_CGROUP} ({m.group(0)})"


def _version_file(home: str) -> Optional[str]:
    """CUDA_HOME/version.json (11.1+; cuda_nvcc entry) or version.txt ("CUDA Version 10.2.89")."""
    text = _read(os.path.join(home, "version.json"))
    if text:
        from moe_env.untrusted import UntrustedInput, json_loads

        try:
            data = json_loads(text, what="version.json", max_depth=8)
        except UntrustedInput:
            data = {}
        for key in ("cuda_nvcc", "cuda"):
            version = ((data.get(key) or {}) if isinstance(data, dict) else {}).get("version")
            if isinstance(version, str) and re.match(r"^\d+\.\d+", version):
                return version
    text = _read(os.path.join(home, "version.txt"))
    if text:
        m = re.search(r"CUDA Version (\d+\.\d+(?:\.\d+)?)", text)
        if m:
            return m.group(1)
    return None


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _nvcc(host: HostInfo, env, root: str = "/") -> None:
    home, nvcc = _cuda_home(env, root)
    host.cuda_home = home
    host.cuda_home_source = _cuda_home_with_source(env, root)[1]
    host.nvcc_path = nvcc
    override = (env.get("MOE_ENV_NVCC_VERSION") or "").strip()
    if override.lower() == "none":  # the target has no CUDA toolkit, whatever this machine has
        host.nvcc_version = host.nvcc_path = host.cuda_home = None
        host.overrides.append("MOE_ENV_NVCC_VERSION")
        return
    if override:
        if not re.match(r"^\d{1,2}\.\d{1,2}(\.\d{1,4}){0,2}$", override) or not 1 <= int(override.split(".")[0]) <= 30:
            raise UsageError(f"MOE_ENV_NVCC_VERSION={_short(override)}: expected a CUDA version such as 12.1")
        host.nvcc_version = major_minor(override)
        host.overrides.append("MOE_ENV_NVCC_VERSION")
        return
    if not nvcc:
        return
    if home and os.path.dirname(os.path.dirname(nvcc)) == home.rstrip(os.sep):
        version = _version_file(home)
        if version:
            host.nvcc_version = major_minor(version)
            return
    try:
        _, stdout, _ = spawn.run([nvcc, "--version"], timeout=NVCC_TIMEOUT)
    except spawn.SpawnTimeout:
        host.notes.append(f"{nvcc} --version did not answer within {NVCC_TIMEOUT:g}s")
        return
    except OSError as exc:
        host.notes.append(f"{nvcc} could not run ({exc.strerror or exc})")
        return
    m = _NVCC_RELEASE.search(stdout)
    if m:
        host.nvcc_version = m.group(1)
    else:
        host.notes.append(f"{nvcc} --version: no 'release X.Y' in its output")
