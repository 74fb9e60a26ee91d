"""A restricted reader for the pickles inside torch checkpoints: key names and shapes, never code.

`torch.save` writes a zip whose `data.pkl` rebuilds tensors through `torch._utils._rebuild_tensor_v2`
and storages named by persistent ids; torch.distributed.checkpoint's `.metadata` is a pickle of
dataclasses. A normal unpickler would import and call whatever the file names (`os.system` included).
This one resolves only a short allow-list of globals, each to an inert stand-in defined here
(TensorInfo, Record, OrderedDict...), and refuses every other global with `UnsafePickleError`
before anything is called. torch need not be installed; nothing from the file is executed.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


class UnsafePickleError(Exception):
    """The pickle names a global outside the allow-list (possibly hostile); nothing was executed."""


class PickleFormatError(Exception):
    """Not a readable pickle / torch zip archive."""


class _NoBuild:
    """A stand-in that a pickle's BUILD opcode may not rewrite (its fields stay the types declared)."""

    def __setstate__(self, state: Any) -> None:
        raise PickleFormatError(f"BUILD applied to a {type(self).__name__}")


@dataclass
class StorageType(_NoBuild):
    """Stand-in for torch.FloatStorage, torch.BFloat16Storage...: only its dtype name."""

    dtype: str


@dataclass
class StorageRef(_NoBuild):
    """Stand-in for a storage named by a persistent id (payload never read)."""

    dtype: str
    key: str
    location: str
    numel: int


@dataclass
class TensorInfo(_NoBuild):
    """What a tensor in the file looks like: dtype and shape, no data."""

    dtype: str
    shape: Tuple[int, ...]

    def to_dict(self) -> Dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(eq=False)  # hashable by identity: DCP uses MetadataIndex records as dict keys
class Record:
    """An inert object of an allowed class (argparse.Namespace, DCP metadata dataclasses, enums).

    `args` holds what the pickle passed to the constructor, `state` what it passed to BUILD.
    """

    cls: str
    args: Tuple[Any, ...] = ()
    state: Any = None

    def __setstate__(self, state: Any) -> None:  # called by pickle's BUILD; stores, never runs
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            merged: Dict[str, Any] = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        if isinstance(self.state, dict):
            return self.state.get(name, default)
        return default


def _record_class(qualname: str) -> type:
    """A real class (NEWOBJ needs one) whose instances are Records named `qualname`."""

    def _new(klass, *args, **kwargs):
        return Record(qualname, tuple(args))

    return type("Inert", (Record,), {"__new__": _new, "__qualname__": qualname})


_DTYPE_OF_STORAGE = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32", "int",
    "int16", "short", "int8", "uint8", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
    "uint16", "uint32", "uint64",
}
_TORCH_MISC = {"strided", "sparse_coo", "contiguous_format", "channels_last", "preserve_format"}


MAX_DIMS = 32
MAX_DIM = 1 << 48


def _shape(size: Any) -> Tuple[int, ...]:
    """A tensor shape from the pickle: at most 32 non-negative ints below 2**48, else the file is damaged."""
    if not isinstance(size, (tuple, list)) or len(size) > MAX_DIMS:
        raise PickleFormatError("tensor shape is not a short sequence of integers")
    out = []
    for d in size:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < MAX_DIM:
            raise PickleFormatError("tensor shape holds something other than a size")
        out.append(d)
    return tuple(out)


def _rebuild_tensor(storage: Any, offset: Any = 0, size: Any = (), stride: Any = None, *rest: Any) -> TensorInfo:
    dtype = storage.dtype if isinstance(storage, StorageRef) else "?"
    return TensorInfo(dtype, _shape(size or ()))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args) if callable(func) else func


def _torch_size(items: Any = ()) -> Tuple[int, ...]:
    return _shape(tuple(items) if isinstance(items, (list, tuple)) else items)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """protocol-2 pickles write bytes as `_codecs.encode(str, 'latin1')`; only text→bytes is done."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "utf8"):
        raise UnsafePickleError("_codecs.encode used with something other than text")
    return text.encode(encoding)


def _ordered_dict(*args: Any) -> "collections.OrderedDict[Any, Any]":
    if args and not isinstance(args[0], (list, tuple, dict)):
        raise UnsafePickleError("collections.OrderedDict built from something other than pairs")
    return collections.OrderedDict(*args)


def _inert_value(qualname: str) -> Any:
    def make(*args: Any, **kwargs: Any) -> Record:
        return Record(qualname, tuple(args))

    return make


_ALLOWED_FUNCS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("collections", "OrderedDict"): _ordered_dict,
    ("_codecs", "encode"): _codecs_encode,
    ("torch.serialization", "_get_layout"): _inert_value("torch.layout"),
    ("pathlib", "PosixPath"): _inert_value("pathlib.PosixPath"),
    ("pathlib", "WindowsPath"): _inert_value("pathlib.WindowsPath"),
    ("numpy.core.multiarray", "_reconstruct"): _inert_value("numpy.ndarray"),
    ("numpy._core.multiarray", "_reconstruct"): _inert_value("numpy.ndarray"),
    ("numpy.core.multiarray", "scalar"): _inert_value("numpy.scalar"),
    ("numpy._core.multiarray", "scalar"): _inert_value("numpy.scalar"),
    ("numpy", "dtype"): _inert_value("numpy.dtype"),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
# classes that become Records (constructed with NEWOBJ or REDUCE, state set with BUILD)
_RECORD_CLASSES = {
    ("argparse", "Namespace"),
    ("numpy", "ndarray"),
    ("_io", "BytesIO"),
    ("io", "BytesIO"),
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.planner", "WriteItem"),
}
# whole namespaces whose classes (enums, config dataclasses) become Records: Megatron pickles its
# enums (ModelType, AttnBackend...) inside `args`; XTuner/mmengine configs and message-hub buffers
# likewise; DeepSpeed pickles ZeroStageEnum (optimizer_state_dict['zero_stage']), its loss scaler and
# fragment_address records (param_slice_mappings) into every zero_pp_rank_* file
# (release:deepspeed==0.16.9:deepspeed/runtime/zero/stage_1_and_2.py:2170-2195). A Record is inert:
# nothing of the named module is imported or called.
_RECORD_PREFIXES = ("megatron.", "transformer_engine.", "mmengine.", "deepspeed.")


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, persistent: bool = True):
        super().__init__(io.BytesIO(data))
        self._persistent = persistent
        self.globals_seen: List[str] = []
        self._record_classes: Dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        # protocol 0-2 pickles (torch.save writes protocol 2) name builtins the Python 2 way
        # (__builtin__.set); map them as pickle's own find_class does, then apply the allow-list
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qual = f"{module}.{name}"
        self.globals_seen.append(qual)
        if (module, name) in _ALLOWED_FUNCS:
            return _ALLOWED_FUNCS[(module, name)]
        if module == "torch" and name in _DTYPE_OF_STORAGE:
            return StorageType(_DTYPE_OF_STORAGE[name])
        if module == "torch" and (name in _TORCH_DTYPES or name in _TORCH_MISC):
            return f"torch.{name}"
        if (module, name) in _RECORD_CLASSES or (module.startswith(_RECORD_PREFIXES) and name[:1].isalpha()
                                                  and name.isidentifier() and not name.startswith("_")):
            if qual not in self._record_classes:
                self._record_classes[qual] = _record_class(qual)
            return self._record_classes[qual]
        raise UnsafePickleError(f"refused global {qual!r}: not on the allow-list of checkpoint types")

    def persistent_load(self, pid: Any) -> Any:
        if not self._persistent:
            raise UnsafePickleError("persistent id in a pickle that should have none")
        # torch.save: ('storage', storage_type, key, location, numel)
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            stype = pid[1]
            dtype = stype.dtype if isinstance(stype, StorageType) else "?"
            try:
                numel = int(pid[4])
            except (TypeError, ValueError):
                numel = -1
            return StorageRef(dtype, str(pid[2]), str(pid[3]), numel)
        raise PickleFormatError(f"unknown persistent id {type(pid).__name__}")


def _why(exc: BaseException) -> str:
    """The type and (for exceptions whose text is not built from the pickle's objects) the message."""
    if isinstance(exc, LookupError) or type(exc).__name__ not in ("UnpicklingError", "EOFError", "ValueError",
                                                                   "TypeError", "OverflowError", "UnicodeDecodeError"):
        return type(exc).__name__
    try:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    except Exception:
        return type(exc).__name__


MAX_PICKLE = 64 << 20  # a checkpoint's data.pkl holds names and shapes: megabytes, never this
MAX_MEMO = 1 << 20


MAX_TUPLE = 1_000_000  # values a tuple may expand to, shared references counted each time


def check_memo(data: bytes) -> None:
    """Walk the opcodes before the C unpickler sees them and refuse two things it cannot bound:
    - memo indices far beyond the pickle's size: it grows its memo array to twice the largest index
      (LONG_BINPUT 0xffffffff asks for 64 GiB);
    - tuples (or frozensets) that reuse memoized tuples until they expand to more than MAX_TUPLE values:
      hashing one (as a dict key) walks every path of the shared-reference DAG, 2**60 steps for 60 levels.
    The walk follows pickletools' stack effects of each opcode and counts expanded sizes, capped."""
    mark = pickletools.markobject
    stack: List[int] = []
    marks: List[int] = []
    memo: Dict[int, int] = {}
    cap = MAX_TUPLE * 4
    n = 0
    try:
        for op, arg, _pos in pickletools.genops(data):
            n += 1
            name = op.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if isinstance(arg, int) and arg > max(MAX_MEMO, n):
                    raise PickleFormatError(f"pickle memo index {arg} far beyond its {n} opcodes")
                memo[arg] = stack[-1] if stack else 1
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else 1
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 1))
                continue
            if name == "STOP":
                return
            if name == "MARK":
                marks.append(len(stack))
                continue
            before = op.stack_before
            children = 0
            if mark in before:
                at = marks.pop() if marks else 0
                children = sum(stack[at:])
                del stack[at:]
                fixed = before.index(mark)
            else:
                fixed = len(before)
            popped = stack[len(stack) - fixed:] if fixed else []
            if fixed:
                del stack[len(stack) - fixed:]
            if name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                children, popped = sum(popped), []
            size = min(cap, 1 + children + sum(popped))
            if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET") and size > MAX_TUPLE:
                raise PickleFormatError(f"a tuple built from shared references expands to more than {MAX_TUPLE} values")
            stack.extend([size] * len(op.stack_after))
    except PickleFormatError:
        raise
    except Exception as exc:  # genops on damaged data
        raise PickleFormatError(f"unreadable pickle ({type(exc).__name__})") from None


def restricted_loads(data: bytes, persistent: bool = True) -> Any:
    """Unpickle `data` with the allow-list; raises UnsafePickleError or PickleFormatError, never runs code."""
    if len(data) > MAX_PICKLE:
        raise PickleFormatError(f"pickle of {len(data)} bytes is larger than a checkpoint's metadata can be")
    check_memo(data)
    try:
        return RestrictedUnpickler(data, persistent=persistent).load()
    except (UnsafePickleError, PickleFormatError):
        raise
    except RecursionError:
        raise PickleFormatError("pickle nests too deeply") from None
    except MemoryError:
        raise PickleFormatError("pickle asks for more memory than a checkpoint's metadata needs") from None
    except Exception as exc:  # truncated, corrupt, or an allowed stand-in given odd arguments
        raise PickleFormatError(f"unreadable pickle ({_why(exc)})") from None


@dataclass
class TorchArchive:
    """What a torch.save zip holds, read without torch."""

    path: str
    obj: Any
    members: List[str] = field(default_factory=list)


def zip_pickle(path: str, max_pickle: int = MAX_PICKLE) -> Tuple[bytes, List[str]]:
    """data.pkl of a torch.save zip and the member names, with every size checked before anything is
    decompressed (a zip bomb, an encrypted or LZMA/unknown-method member, corrupt deflate data all end as
    PickleFormatError)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos[:100000]]
            pkl = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if not pkl:
                raise PickleFormatError("zip archive without data.pkl: not a torch.save file")
            info = pkl[0]
            if info.flag_bits & 0x1:
                raise PickleFormatError("data.pkl is encrypted: not a torch.save file")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise PickleFormatError(f"data.pkl uses zip compression method {info.compress_type}; torch.save stores it uncompressed")
            if info.file_size > max_pickle or (info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size * 1032 < info.file_size):
                raise PickleFormatError(f"data.pkl declares {info.file_size} bytes: larger than a checkpoint's metadata can be")
            with zf.open(info) as fh:
                data = fh.read(max_pickle + 1)
            if len(data) > max_pickle:
                raise PickleFormatError("data.pkl is larger than it declares")
            return data, names
    except PickleFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise PickleFormatError(f"damaged zip archive ({str(exc)[:100]})") from None
    except Exception as exc:  # zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError, EOFError, OSError...
        raise PickleFormatError(f"damaged zip archive ({type(exc).__name__}: {str(exc)[:100]})") from None


def read_torch_file(path: str, max_pickle: int = MAX_PICKLE) -> TorchArchive:
    """Read a `torch.save` file (zip format, torch >= 1.6) or a bare pickle; tensors become TensorInfo.
    Only data.pkl (or, for the pre-1.6 format, the pickles at the start) is read: never the tensors' bytes."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if head[:2] == b"PK":
            fh.close()
            data, names = zip_pickle(path, max_pickle)
            return TorchArchive(path, restricted_loads(data), names)
        if head[:1] == b"\x80":
            fh.seek(0)
            data = fh.read(max_pickle)  # storages follow the pickles; a pickle longer than this is refused
            return TorchArchive(path, _legacy_or_plain(data), [])
    raise PickleFormatError("neither a zip archive nor a pickle")


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


def _legacy_or_plain(data: bytes) -> Any:
    """A bare pickle, or the pre-1.6 torch format: magic number, protocol, sys info, then the object
    (storages follow as raw bytes and are never read)."""
    check_memo(data)
    unpickler = RestrictedUnpickler(data)
    try:
        first = unpickler.load()
        if first != LEGACY_MAGIC:
            return first
        unpickler.load()  # protocol version
        unpickler.load()  # sys_info
        return unpickler.load()
    except (UnsafePickleError, PickleFormatError):
        raise
    except RecursionError:
        raise PickleFormatError("pickle nests too deeply") from None
    except MemoryError:
        raise PickleFormatError("pickle asks for more memory than a checkpoint's metadata needs") from None
    except Exception as exc:
        raise PickleFormatError(f"unreadable pickle ({_why(exc)})") from None


MAX_NODES = 2_000_000


def flatten_tensors(obj: Any, prefix: str = "", out: Optional[Dict[str, TensorInfo]] = None,
                    depth: int = 0) -> Dict[str, TensorInfo]:
    """Every TensorInfo under `obj` by dotted path (dicts and lists walked; Records not entered).
    Each container is walked once (a shared or self-referencing structure cannot blow up), at most
    64 levels deep and MAX_NODES values in all."""
    if out is None:
        out = {}
    seen: set = set()
    budget = [MAX_NODES]
    stack: List[Tuple[Any, str, int]] = [(obj, prefix, depth)]
    while stack:
        node, path, d = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise PickleFormatError(f"more than {MAX_NODES} values in the state dict")
        if isinstance(node, TensorInfo):
            out[path] = node
            continue
        if d > 64 or not isinstance(node, (dict, list, tuple)):
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        children = []
        for k, v in items:
            key = k if isinstance(k, str) else str(k) if isinstance(k, (int, float, bool)) or k is None else f"<{type(k).__name__}>"
            children.append((v, f"{path}.{key}" if path else key, d + 1))
        stack.extend(reversed(children))
    return out
