"""The completeness model shared by every format: the files a save should hold against what is there,
and what is wrong with each one that is there (a git-lfs pointer, an HTML error page, zero bytes,
a symlink or `../` that leads out of the checkpoint, a FIFO...).

Every file of a checkpoint is opened through `check()`: it resolves the name inside the checkpoint
folder (after realpath), accepts regular files only, and sniffs the first bytes. What a message says
about a file outside the folder is only that it is outside: never its size or bytes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from moe_env.ckpt._untrusted import inside
from moe_env.ckpt.report import CkptReport, and_list, plural, short

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
SNIFF = 512

# states of a file
OK, MISSING, OUTSIDE, NOT_REGULAR, EMPTY, LFS, HTML, DAMAGED, UNSAFE = (
    "ok", "missing", "outside", "not-regular", "empty", "lfs-pointer", "html", "damaged", "unsafe")
STUBS = (EMPTY, LFS, HTML)


@dataclass
class FileCheck:
    rel: str  # the name as the checkpoint gives it
    state: str = OK
    detail: str = ""
    path: Optional[Path] = None  # resolved, inside the root; None unless the file may be read
    size: int = 0

    @property
    def usable(self) -> bool:
        return self.state == OK and self.path is not None


def check(root: Path, rel: str) -> FileCheck:
    """What `rel` (a name from the checkpoint, untrusted) is inside `root`."""
    fc = FileCheck(rel=str(rel))
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        fc.state, fc.detail = OUTSIDE, "not a file name"
        return fc
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
        fc.state, fc.detail = OUTSIDE, "names a path outside the checkpoint folder: not read"
        return fc
    p = root / rel
    try:
        lst = os.lstat(p)
    except (OSError, ValueError):
        fc.state = MISSING
        return fc
    real = inside(root, rel)
    if real is None:
        base = os.path.realpath(root)
        try:
            target = os.path.realpath(p)
        except (OSError, ValueError):
            target = ""
        if stat.S_ISLNK(lst.st_mode) and (not target or not (target + os.sep).startswith(base.rstrip(os.sep) + os.sep)):
            fc.state, fc.detail = OUTSIDE, "a symlink that leads outside the checkpoint folder: not read"
        elif not os.path.exists(p):
            fc.state, fc.detail = MISSING, "a dangling symlink"
        else:
            fc.state, fc.detail = NOT_REGULAR, "not a regular file (a folder, FIFO or device): not read"
        return fc
    try:
        fc.size = real.stat().st_size
        with open(real, "rb") as fh:
            head = fh.read(SNIFF)
    except OSError as exc:
        fc.state, fc.detail = DAMAGED, f"unreadable ({exc.strerror or type(exc).__name__})"
        return fc
    fc.path = real
    kind = sniff(head, fc.size)
    if kind:
        fc.state, fc.detail = kind
        fc.path = None
    return fc


def within(root: Path, sub: Path) -> bool:
    """`sub` (a tag or iteration folder) resolves inside `root`: a symlinked one never takes the reads elsewhere."""
    base = os.path.realpath(root)
    return (os.path.realpath(sub) + os.sep).startswith(base.rstrip(os.sep) + os.sep)


def sniff(head: bytes, size: int) -> Optional[Tuple[str, str]]:
    """A stub in place of a weight file: zero bytes, a git-lfs pointer, an HTML/XML error page."""
    if size == 0:
        return EMPTY, "zero-length file"
    if head.startswith(LFS_MAGIC):
        return LFS, "a git-lfs pointer, not the file: not downloaded"
    low = head.lstrip()[:64].lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<error")):
        return HTML, "an HTML/XML page (a download that saved an error page), not the file"
    return None


@dataclass
class Completeness:
    """Expected files of one save against what is present; one FileCheck per expected name."""

    root: Path
    checks: Dict[str, FileCheck] = field(default_factory=dict)

    def want(self, rel: str) -> FileCheck:
        if rel not in self.checks:
            self.checks[rel] = check(self.root, rel)
        return self.checks[rel]

    def want_all(self, rels: Iterable[str]) -> List[FileCheck]:
        return [self.want(r) for r in rels]

    def state(self, *states: str) -> List[FileCheck]:
        return [c for c in self.checks.values() if c.state in states]

    @property
    def bad(self) -> List[FileCheck]:
        return [c for c in self.checks.values() if c.state != OK]

    def mark(self, rel: str, state: str, detail: str) -> None:
        c = self.checks.setdefault(rel, FileCheck(rel=rel))
        c.state, c.detail, c.path = state, detail, None


def report_files(rep: CkptReport, comp: Completeness, what: str = "files", missing_why: str = "",
                 missing_fix: str = "", sources: Sequence[str] = (), count_of: Optional[int] = None) -> None:
    """One finding per kind of problem: missing files (all named, one finding), git-lfs pointers (one),
    other stubs and damaged files (one each), files outside the folder (one)."""
    total = count_of if count_of is not None else len(comp.checks)
    missing = sorted((c.rel for c in comp.state(MISSING)), key=natural)
    if missing:
        rep.add(id="ckpt.files-missing", severity="error",
                title=f"{len(missing)} of {plural(total, what[:-1] if what.endswith('s') else what, what)} absent",
                seen="absent: " + short(missing, 12),
                why=missing_why or "The loader opens every one of these files; the save wrote only some of them "
                                   "(a rank that died before writing, a copy that stopped early).",
                fix=missing_fix or "copy the missing files from the save location, or resume from an older complete save",
                sources=list(sources))
    lfs = sorted((c.rel for c in comp.state(LFS)), key=natural)
    if lfs:
        rep.add(id="ckpt.lfs-pointer", severity="error",
                title=f"{plural(len(lfs), 'file')} not downloaded: git-lfs pointer{'s' if len(lfs) > 1 else ''} in place of the weights",
                seen=short(lfs, 8) + " start with 'version https://git-lfs.github.com/spec/v1'",
                why="A clone without git-lfs (or with GIT_LFS_SKIP_SMUDGE=1) leaves ~130-byte pointer files; "
                    "every loader fails on them.",
                fix=f"cd {rep.path} && git lfs pull   (or download the files with huggingface-cli download)")
    for c in sorted(comp.state(EMPTY, HTML, DAMAGED, UNSAFE), key=lambda c: natural(c.rel)):
        if c.state == UNSAFE:
            rep.add(id="ckpt.unsafe-pickle", severity="error", title=f"{c.rel} holds code, not just tensors: refused",
                    seen=f"{c.rel}: {c.detail}",
                    why="Loading it with torch.load(weights_only=False) would run that code. moe-env read it without executing anything.",
                    fix="do not load this file; get the checkpoint from a trusted source")
            continue
        title = {EMPTY: f"{c.rel} is empty (zero bytes)", HTML: f"{c.rel} is an HTML page, not a checkpoint file"}.get(
            c.state, f"{c.rel} is damaged")
        rep.add(id="ckpt.file-damaged", severity="error", title=title, seen=f"{c.rel}: {c.detail}",
                why="The loader fails on this file (usually after reading the others); the checks that need it were skipped.",
                fix="copy or download this file again and compare its size with the source")
    for c in comp.state(OUTSIDE, NOT_REGULAR):
        rep.add(id="ckpt.file-refused", severity="error", title=f"{c.rel} was not read",
                seen=f"{c.rel}: {c.detail}",
                why="Every file a checkpoint names must be a regular file inside its folder; moe-env does not "
                    "follow names or links that lead elsewhere.",
                fix="replace it with the real file from the save location")


def skipped(rep: CkptReport, what: str, comp: Completeness) -> None:
    """The note that dependent checks were not run because some files were unreadable."""
    bad = [c for c in comp.bad]
    if bad:
        rep.facts.setdefault("skipped", []).append(
            f"{what}: skipped for {plural(len(bad), 'unreadable or missing file')}")


def natural(name: str) -> Tuple[Any, ...]:
    """Sort key that puts rank 2 before rank 10."""
    out: List[Any] = []
    num = ""
    for ch in name:
        if ch.isascii() and ch.isdigit():
            num += ch
            continue
        if num:
            out.append((0, int(num[:18]), ""))
            num = ""
        out.append((1, 0, ch))
    if num:
        out.append((0, int(num[:18]), ""))
    return tuple(out)


def and_ids(ids: Iterable[int]) -> str:
    return and_list(sorted(ids))
