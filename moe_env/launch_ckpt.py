"""Read the checkpoints a launch names (`--load`, `--pretrained-checkpoint`, `--model_name_or_path`) once.

The command reads them here (file system, ckpt's readers) and hands the results to the pure
`checkpoint_arg` rule in config_rules.py, which judges them against the launch's flags. A value that
is not a local path and does not exist (`mistralai/Mixtral-8x7B-v0.1`) is a hub id: not read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from moe_env.errors import MoeEnvError


@dataclass
class CkptState:
    """What was found at a checkpoint path of the launch."""

    path: str
    state: str  # "ok" | "missing" | "unreadable" | "not-a-checkpoint" | "hub-id"
    report: Any = None  # CkptReport when state == "ok"
    message: str = ""


def looks_local(value: str) -> bool:
    """A path rather than a hub id: absolute, ./ ../ ~, a trailing slash, or more than one `/`."""
    v = value.strip()
    return bool(v) and (v.startswith(("/", "./", "../", "~", ".\\")) or v in (".", "..") or v.endswith("/")
                        or v.count("/") > 1 or bool(re.match(r"^[A-Za-z]:[\\/]", v)) or "\\" in v)


def checkpoint_flags(project: Any) -> Dict[str, bool]:
    """Flags naming a checkpoint (the project's checkpoint_arg rules) -> whether a hub id is allowed there
    (`hub_ids = true`: --model_name_or_path; Megatron's --load is always a folder)."""
    out: Dict[str, bool] = {}
    for r in project.rules:
        if r.kind == "checkpoint_arg":
            for f in r.params.get("flags", []):
                out[f] = out.get(f, False) or bool(r.params.get("hub_ids"))
    return out


def read_checkpoints(cfg: Any, matrix: Any) -> Dict[str, CkptState]:
    """Every checkpoint path the launch gives for the project's checkpoint_arg rules."""
    from moe_env.ckpt import inspect_checkpoint

    out: Dict[str, CkptState] = {}
    for flag, hub_ok in checkpoint_flags(cfg.project).items():
        raw = cfg.value(flag)
        if not raw or not raw.split():
            continue
        path = raw.split()[0]
        if path in out:
            continue
        full = os.path.expanduser(path)
        if not os.path.lexists(full):
            out[path] = CkptState(path, "hub-id" if hub_ok and not looks_local(path) else "missing")
            continue
        if not os.access(full, os.R_OK) or (os.path.isdir(full) and not os.access(full, os.X_OK)):
            out[path] = CkptState(path, "unreadable", message="permission denied")
            continue
        try:
            out[path] = CkptState(path, "ok", report=inspect_checkpoint(full, matrix))
        except PermissionError as exc:
            out[path] = CkptState(path, "unreadable", message=exc.strerror or "permission denied")
        except (MoeEnvError, ValueError, OSError) as exc:  # UsageError, UntrustedInput: not a checkpoint it reads
            out[path] = CkptState(path, "not-a-checkpoint", message=_one_line(str(exc)))
        except (ArithmeticError, RecursionError, MemoryError, TypeError, KeyError, AttributeError) as exc:
            # a hostile checkpoint the reader does not yet refuse cleanly: not judged rather than an internal error
            out[path] = CkptState(path, "not-a-checkpoint", message=f"the checkpoint reader gave up ({type(exc).__name__})")
    return out


def _one_line(text: str) -> str:
    from moe_env.untrusted import printable

    return printable(text.splitlines()[0] if text else "")[:300]


def state_of(checkpoints: Optional[Dict[str, CkptState]], value: Optional[str]) -> Optional[CkptState]:
    if not checkpoints or not value or not value.split():
        return None
    return checkpoints.get(value.split()[0])
