"""Which prebuilt flash-attn wheel setup.py fetches for a torch build, and whether the release has it.

One function for doctor, lock headers, build-steps, dockerfile and the matrix's consistency check.
flash-attn's PyPI release is an sdist; its setup.py downloads a wheel from the GitHub release named by
torch's major.minor, a CUDA tag derived from torch.version.cuda (never nvcc), the C++ ABI and the
Python tag. How the CUDA tag is derived changed between releases (RULES, read in setup.py at each
tag); which tags a release publishes is the matrix's [[wheels]] table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

# (first release the rule holds for, rule, source). Rules: "exact" = torch's CUDA major.minor;
# "exact+2.1->12.2" = exact, but torch 2.1 always fetches cu122; "exact+2.1cu12->12.2" = exact, but
# torch 2.1 with CUDA 12 fetches cu122; "11->11.8,12->X" = one build per CUDA major; "major" = the tag
# is the CUDA major alone (cu12).
RULES: Tuple[Tuple[str, str, str], ...] = (
    ("2.3.0", "exact+2.1->12.2", "Dao-AILab/flash-attention@601b4dc48dbe9d87c468daa2b4c0c8388b83753c:setup.py:234-237"),
    ("2.3.1.post1", "exact+2.1cu12->12.2", "Dao-AILab/flash-attention@5e525a8dc8a473f418c8aaf82f5322eb225d9ee5:setup.py:234-238"),
    ("2.3.6", "11->11.8,12->12.2", "Dao-AILab/flash-attention@92dd5703ecdb99aa4a4aee9817f28557907403a2:setup.py:231-235"),
    ("2.6.1", "11->11.8,12->12.3", "Dao-AILab/flash-attention@7551202cb2dd245432bc878447e19015c0af3c22:setup.py:274"),
    ("2.7.0", "major", "Dao-AILab/flash-attention@c555642172e281cae6da8a6cff4dfd9ff678ae85:setup.py:441-443"),
)


@dataclass
class WheelAnswer:
    exists: Optional[bool]  # None: the matrix has no [[wheels]] row for this release
    tag: str  # the wheel name's parts setup.py asks for: "cu118torch2.0cxx11abiFALSE-cp310"; "" when unknown
    why: str  # one sentence, with the numbers from the table and the rule
    source: str = ""


def _v(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def fetched_cuda(version: str, torch_version: str, torch_cuda: str) -> Tuple[Optional[str], str]:
    """(the CUDA of the wheel setup.py downloads: "11.8", "12" for a major-only tag; source of the rule)."""
    v = _v(version)
    base = torch_version.split("+", 1)[0]
    tminor = tuple(int(x) for x in base.split(".")[:2] if x.isdigit())
    major = torch_cuda.split(".", 1)[0]
    rule, source = None, ""
    for first, r, src in RULES:
        if v is not None and _v(first) is not None and v >= _v(first):
            rule, source = r, src
    if rule is None:
        return None, ""
    if rule == "major":
        return major, source
    if rule.startswith("11->"):
        twelve = rule.split("12->", 1)[1]
        return ("11.8" if major == "11" else twelve if major == "12" else None), source
    if rule == "exact+2.1->12.2" and tminor == (2, 1):
        return "12.2", source
    if rule == "exact+2.1cu12->12.2" and tminor == (2, 1) and major == "12":
        return "12.2", source
    return ".".join(torch_cuda.split(".")[:2]), source


def flash_attn_wheel(matrix, version: str, torch_version: str, torch_cuda: Optional[str], python: str,
                     cxx11_abi: Optional[bool]) -> WheelAnswer:
    """Whether `pip install flash-attn==version` on this torch build downloads a prebuilt wheel."""
    rows = [w for w in (matrix.flash_attn_wheels if matrix else []) if _v(w.version) is not None and _v(w.version) == _v(version)]
    if not rows:
        return WheelAnswer(None, "", f"the matrix lists no prebuilt wheels for flash-attn {version}")
    if not torch_cuda or torch_cuda == "cpu":
        return WheelAnswer(False, "", f"flash-attn {version} has no wheel (nor a build) without CUDA: torch {torch_version} is a CPU build")
    tminor = ".".join(torch_version.split("+", 1)[0].split(".")[:2])
    cuda, rule_src = fetched_cuda(version, torch_version, torch_cuda)
    abi = "TRUE" if cxx11_abi else "FALSE" if cxx11_abi is not None else "?"
    cu = "cu" + (cuda or "?").replace(".", "")
    tag = f"{cu}torch{tminor}cxx11abi{abi}-cp{python.replace('.', '')}"
    if cuda is None:
        return WheelAnswer(False, tag, f"flash-attn {version}'s setup.py asks for no wheel for CUDA {torch_cuda}", rule_src)
    rule = f"its setup.py fetches {cu} for torch {tminor} + CUDA {torch_cuda}"
    for r in rows:
        cuda_ok = any(c == cuda or (("." not in cuda) and c.split(".")[0] == cuda) for c in r.cuda)
        abi_ok = cxx11_abi is None or cxx11_abi in r.cxx11_abi
        if tminor in r.torch and python in r.python and cuda_ok and abi_ok:
            return WheelAnswer(True, tag, f"flash-attn {version} publishes flash_attn-{version}+{tag} ({rule}; {r.source[0]})",
                               rule_src)
    return WheelAnswer(False, tag, f"flash-attn {version} publishes no {tag} wheel ({rule}; the release's [[wheels]] row "
                                   f"lists torch {', '.join(rows[0].torch)}, CUDA {', '.join(rows[0].cuda)}, "
                                   f"Python {', '.join(rows[0].python)})", rule_src)
