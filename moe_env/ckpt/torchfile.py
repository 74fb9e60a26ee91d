"""Reading one torch.save file (.pt/.pth/.bin) for its metadata: through the restricted unpickler only,
data.pkl only (never the tensors' bytes), from a path files.check() resolved inside the checkpoint."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

from moe_env.ckpt import files as F
from moe_env.ckpt_pickle import (
    PickleFormatError,
    Record,
    TensorInfo,
    UnsafePickleError,
    flatten_tensors,
    read_torch_file,
)

_MODEL_KEY = re.compile(r"(?a)^model\d{1,4}$")


def read_pt(fc: F.FileCheck) -> Tuple[Any, Optional[str]]:
    """(object, None) or (None, reason). A reason starting 'refused' means the pickle asked to run code."""
    if not fc.usable:
        return None, fc.detail or fc.state
    try:
        return read_torch_file(str(fc.path)).obj, None
    except UnsafePickleError as exc:
        return None, f"refused: {exc}"
    except (PickleFormatError, OSError) as exc:
        return None, str(exc)


def load_into(comp: F.Completeness, rel: str) -> Any:
    """Read `rel` of a Completeness; a failure marks the file damaged/unsafe there and returns None."""
    fc = comp.want(rel)
    if not fc.usable:
        return None
    obj, err = read_pt(fc)
    if err is not None:
        comp.mark(rel, F.UNSAFE if err.startswith("refused") else F.DAMAGED, err[8:] if err.startswith("refused") else err)
        return None
    return obj


def model_tensors(obj: Any, keys: Tuple[str, ...] = ("model", "module", "state_dict")) -> Dict[str, TensorInfo]:
    """The model's tensors in a saved object: under 'model'/'modelN' (Megatron), 'module' (DeepSpeed),
    'state_dict' (mmengine), or the object itself when it is a bare state dict."""
    if not isinstance(obj, dict):
        return flatten_tensors(obj) if isinstance(obj, (list, tuple)) else {}
    out: Dict[str, TensorInfo] = {}
    for k, v in obj.items():
        if k in keys or (isinstance(k, str) and _MODEL_KEY.match(k)):
            out.update(flatten_tensors(v))
    if not out and obj and all(isinstance(v, TensorInfo) for v in obj.values()):
        out = flatten_tensors(obj)  # a bare state dict
    return out


def args_of(obj: Any) -> Dict[str, Any]:
    """Megatron's pickled argparse.Namespace as a dict ({} when absent or odd)."""
    a = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(a, Record) and isinstance(a.state, dict):
        return a.state
    return {}


def zip_problem(fc: F.FileCheck) -> Optional[str]:
    """What is wrong with a torch.save file as far as its zip directory shows (None: looks whole).
    A copy cut short loses the central directory, which sits at the end; nothing is decompressed."""
    import zipfile

    if not fc.usable:
        return fc.detail or fc.state
    try:
        with open(fc.path, "rb") as fh:
            head = fh.read(2)
        if head != b"PK":
            return None if head[:1] == b"\x80" else "neither a zip archive nor a pickle"
        with zipfile.ZipFile(fc.path) as zf:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist()[:100000]):
                return "zip archive without data.pkl: not a torch.save file"
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        return f"damaged zip archive ({str(exc)[:100]})"
    except Exception as exc:  # OSError, ValueError, struct errors from a hostile directory
        return f"damaged zip archive ({type(exc).__name__})"
    return None
