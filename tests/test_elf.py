"""The probe's ELF reader (moe_env/probe/elf.py): real shared objects compiled here, hand-built ELF files of
all four classes/byte orders, and hostile bytes (truncations, flips) that must only ever give ElfError."""

from __future__ import annotations

import ast
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elf_support import EXT_MISSING_SYMBOL, EXT_OK, LIBC10, compile_so, fake_libstdcxx, needs_compiler
from moe_env.probe import elf

PROBE = Path(elf.__file__).parent


# ---------------------------------------------------------------- hand-built ELF files (no section headers)


def build_elf(bits: int, little: bool, *, needed: List[str], soname: str, runpath: str, defined: List[str],
              undefined: List[Tuple[str, Optional[str]]], verdefs: List[str], hash_kind: str = "gnu") -> bytes:
    """A minimal shared object as ld.so reads it: one PT_LOAD (vaddr = offset + 0x10000), PT_DYNAMIC, .dynstr,
    .dynsym (undefined first), .gnu.hash or .hash, .gnu.version(_r/_d), and a .rela.plt naming the undefined
    symbols in reverse order."""
    e = "<" if little else ">"
    w = "Q" if bits == 64 else "I"
    base = 0x10000
    strtab = bytearray(b"\0")

    def s(text: str) -> int:
        off = len(strtab)
        strtab.extend(text.encode() + b"\0")
        return off

    needed_off = [s(n) for n in needed]
    soname_off, runpath_off = s(soname), s(runpath)
    versions = []
    for _n, v in undefined:
        if v and v not in versions:
            versions.append(v)
    lib_off = s("libstdc++.so.6")
    version_off = {v: s(v) for v in versions}
    verdef_off = [s(v) for v in verdefs]
    # symbols: null, undefined, then defined (sorted by gnu bucket)
    nbuckets = max(1, len(defined) // 2)
    if hash_kind == "gnu":
        defined = sorted(defined, key=lambda n: elf.gnu_hash(n.encode()) % nbuckets)
    names = [n for n, _v in undefined] + defined
    name_off = [s(n) for n in names]
    symoffset = 1 + len(undefined)
    nsyms = 1 + len(names)

    def sym(name: int, info: int, shndx: int) -> bytes:
        if bits == 64:
            return struct.pack(e + "IBBHQQ", name, info, 0, shndx, 0, 0)
        return struct.pack(e + "IIIBBH", name, 0, 0, info, 0, shndx)

    dynsym = sym(0, 0, 0) + b"".join(sym(name_off[i], 0x12, 0) for i in range(len(undefined)))
    dynsym += b"".join(sym(name_off[len(undefined) + i], 0x12, 7) for i in range(len(defined)))
    if hash_kind == "gnu":
        word = bits // 8
        bloom = [0, 0]
        shift = 6
        buckets = [0] * nbuckets
        chains = []
        hashes = [elf.gnu_hash(n.encode()) for n in defined]
        for i, h in enumerate(hashes):
            bloom[(h // bits) % 2] |= (1 << (h % bits)) | (1 << ((h >> shift) % bits))
            b = h % nbuckets
            if buckets[b] == 0:
                buckets[b] = symoffset + i
            last = i == len(hashes) - 1 or hashes[i + 1] % nbuckets != b
            chains.append((h & ~1) | (1 if last else 0))
        table = struct.pack(e + "IIII", nbuckets, symoffset, 2, shift)
        table += struct.pack(e + w * 2, *bloom) if word == 8 else struct.pack(e + "II", *bloom)
        table += struct.pack(e + "I" * nbuckets, *buckets) + struct.pack(e + "I" * len(chains), *chains)
        hash_tag = elf.DT_GNU_HASH
    else:
        nb = 3
        bucket, chain = [0] * nb, [0] * nsyms
        for idx in range(symoffset, nsyms):
            h = elf.sysv_hash(names[idx - 1].encode()) % nb
            chain[idx], bucket[h] = bucket[h], idx
        table = struct.pack(e + "II", nb, nsyms) + struct.pack(e + "I" * (nb + nsyms), *(bucket + chain))
        hash_tag = elf.DT_HASH
    versym = [0] + [2 + versions.index(v) if v else 1 for _n, v in undefined] + [1] * len(defined)
    versym_b = struct.pack(e + "H" * nsyms, *versym)
    verneed = struct.pack(e + "HHIII", 1, len(versions), lib_off, 16, 0)
    for i, v in enumerate(versions):
        verneed += struct.pack(e + "IHHII", elf.sysv_hash(v.encode()), 0, 2 + i, version_off[v],
                               16 if i < len(versions) - 1 else 0)
    verdef = b""
    entries = [(1, soname_off)] + [(0, o) for o in verdef_off]
    for i, (flags, off) in enumerate(entries):
        verdef += struct.pack(e + "HHHHIII", 1, flags, i + 1, 1, 0, 20, 28 if i < len(entries) - 1 else 0)
        verdef += struct.pack(e + "II", off, 0)
    rela_fmt, shift_r = (e + "QQq", 32) if bits == 64 else (e + "IIi", 8)
    rela = b"".join(struct.pack(rela_fmt, 0, (idx << shift_r) | 7, 0) for idx in range(symoffset - 1, 0, -1))

    ehsize = 64 if bits == 64 else 52
    phentsize = 56 if bits == 64 else 32
    parts = [("strtab", bytes(strtab)), ("dynsym", dynsym), ("hash", table), ("versym", versym_b),
             ("verneed", verneed if versions else b""), ("verdef", verdef), ("rela", rela)]
    off = ehsize + 2 * phentsize
    where = {}
    blob = b""
    for name, data in parts:
        pad = (-off) % 8
        blob += b"\0" * pad
        off += pad
        where[name] = off
        blob += data
        off += len(data)
    pad = (-off) % 8
    blob += b"\0" * pad
    off += pad
    dyn_off = off
    tags = [(elf.DT_NEEDED, o) for o in needed_off] + [
        (elf.DT_SONAME, soname_off), (elf.DT_RUNPATH, runpath_off),
        (elf.DT_STRTAB, base + where["strtab"]), (elf.DT_STRSZ, len(strtab)),
        (elf.DT_SYMTAB, base + where["dynsym"]), (elf.DT_SYMENT, 24 if bits == 64 else 16),
        (hash_tag, base + where["hash"]), (elf.DT_VERSYM, base + where["versym"]),
        (elf.DT_VERDEF, base + where["verdef"]), (elf.DT_VERDEFNUM, len(entries)),
        (elf.DT_JMPREL, base + where["rela"]), (elf.DT_PLTRELSZ, len(rela)), (elf.DT_PLTREL, elf.DT_RELA)]
    if versions:
        tags += [(elf.DT_VERNEED, base + where["verneed"]), (elf.DT_VERNEEDNUM, 1)]
    tags.append((0, 0))
    dyn = b"".join(struct.pack(e + ("qQ" if bits == 64 else "iI"), t, v) for t, v in tags)
    total = off + len(dyn)
    machine = (62 if little else 43) if bits == 64 else (3 if little else 2)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + b"\0" * 9
    header = ident + struct.pack(e + "HHI" + w + w + w + "IHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize,
                                 phentsize, 2, 0, 0, 0)
    if bits == 64:
        ph = struct.pack(e + "IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
        ph += struct.pack(e + "IIQQQQQQ", 2, 6, dyn_off, base + dyn_off, base + dyn_off, len(dyn), len(dyn), 8)
    else:
        ph = struct.pack(e + "IIIIIIII", 1, 0, base, base, total, total, 5, 0x1000)
        ph += struct.pack(e + "IIIIIIII", 2, dyn_off, base + dyn_off, base + dyn_off, len(dyn), len(dyn), 6, 8)
    return header + ph + blob + dyn


DEFINED = ["_ZN3c10%dfooEv" % i for i in range(40)] + ["THPVariable_Wrap", "plain_c"]
UNDEFINED = [("_ZNSt6vectorIiE9push_backEv", "GLIBCXX_3.4.30"), ("_ZN3c106absentEi", None),
             ("__cxa_begin_catch", "CXXABI_1.3")]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("hash_kind", ["gnu", "sysv"])
def test_hand_built_elf_every_class_and_byte_order(tmp_path, bits, little, hash_kind):
    data = build_elf(bits, little, needed=["libc10.so", "libcudart.so.12"], soname="libext.so",
                     runpath="$ORIGIN:$ORIGIN/../torch/lib", defined=DEFINED, undefined=UNDEFINED,
                     verdefs=["EXT_1.0", "EXT_1.1"], hash_kind=hash_kind)
    path = tmp_path / "libext.so"
    path.write_bytes(data)
    with elf.ElfFile(str(path)) as f:
        assert (f.bits, f.little) == (bits, little)
        assert f.needed == ["libc10.so", "libcudart.so.12"] and f.soname == "libext.so"
        assert elf.needed_names(str(path)) == f.needed
        assert f.runpath == ["$ORIGIN", "$ORIGIN/../torch/lib"] and f.rpath == []
        assert [(n.decode(), v) for n, v, _w in f.undefined()] == UNDEFINED
        for name in DEFINED:
            assert f.defines(name.encode()), name
        for name in [n for n, _v in UNDEFINED] + ["_ZN3c10nope", "", "x" * 300]:
            assert not f.defines(name.encode()), name
        assert f.version_needs() == {"libstdc++.so.6": [("GLIBCXX_3.4.30", False), ("CXXABI_1.3", False)]}
        assert f.version_defs() == ["EXT_1.0", "EXT_1.1"]
        # .rela.plt names them last-to-first: the loader meets __cxa_begin_catch first
        assert f.first_relocated({b"_ZN3c106absentEi", b"__cxa_begin_catch"}) == b"__cxa_begin_catch"
        assert f.symbol_count() == 1 + len(UNDEFINED) + len(DEFINED)
        machine = f.machine
    assert elf.header_matches(str(path), bits, machine, little)
    assert not elf.header_matches(str(path), 96 - bits, machine, little)  # ld.so skips the other class
    assert not elf.header_matches(str(path), bits, machine, not little)


# ---------------------------------------------------------------- real shared objects compiled here


@pytest.fixture(scope="module")
def real_so(tmp_path_factory):
    if not (shutil.which("g++") and shutil.which("gcc")):
        pytest.skip("needs gcc and g++")
    root = tmp_path_factory.mktemp("real")
    libc10 = compile_so(root / "lib" / "libc10.so", LIBC10, soname="libc10.so")
    ext = compile_so(root / "ext.so", EXT_MISSING_SYMBOL,
                     args=["-L", str(libc10.parent), "-lc10", "-Wl,-rpath,$ORIGIN/lib", "-Wl,-rpath,/opt/x"])
    old = compile_so(root / "old.so", EXT_OK, args=["-D_GLIBCXX_USE_CXX11_ABI=0", "-Wl,--disable-new-dtags",
                                                    "-Wl,-rpath,$ORIGIN/lib", "-L", str(libc10.parent), "-lc10"])
    return {"libc10": libc10, "ext": ext, "old": old}


def _nm(path: Path, flag: str) -> List[str]:
    out = subprocess.run(["nm", "-D", flag, str(path)], capture_output=True, text=True).stdout
    return sorted({line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()})


@needs_compiler
@pytest.mark.skipif(not shutil.which("nm"), reason="needs binutils' nm")
def test_real_objects_agree_with_nm(real_so):
    for path in real_so.values():
        with elf.ElfFile(str(path)) as f:
            assert sorted({n.decode() for n, _v, _w in f.undefined()}) == _nm(path, "--undefined-only")
            assert elf.needed_names(str(path)) == f.needed
            defined = [n for n in _nm(path, "--defined-only")]
            assert defined and all(f.defines(n.encode()) for n in defined)
    with elf.ElfFile(str(real_so["ext"])) as f:
        assert "libc10.so" in f.needed and f.runpath == ["$ORIGIN/lib", "/opt/x"] and f.rpath == []
        assert not f.defines(b"_ZN3c106absentEi")
        needs = f.version_needs()
        assert any(v.startswith("GLIBC_") for v, _w in needs.get("libc.so.6", []))
    with elf.ElfFile(str(real_so["old"])) as f:
        assert f.rpath == ["$ORIGIN/lib"] and f.runpath == []  # --disable-new-dtags writes DT_RPATH
        assert b"_ZN3c108describeERKSs" in {n for n, _v, _w in f.undefined()}


@needs_compiler
def test_version_definitions_of_a_fake_libstdcxx(tmp_path):
    lib = fake_libstdcxx(tmp_path / "std", "GLIBCXX_3.4.20")
    with elf.ElfFile(str(lib)) as f:
        assert f.soname == "libstdc++.so.6"
        assert f.version_defs() == ["GLIBCXX_3.4", "CXXABI_1.3", "GLIBCXX_3.4.20"]


@pytest.mark.skipif(not os.path.isfile("/etc/ld.so.cache") or not shutil.which("ldconfig"), reason="needs glibc's ld.so.cache")
def test_ld_so_cache_agrees_with_ldconfig():
    ours, err = elf.read_ldcache()
    assert err is None
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    theirs = {}
    for line in out.splitlines()[1:]:
        if "=>" in line:
            theirs.setdefault(line.split()[0], []).append(line.split("=> ", 1)[1])
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in theirs.items()}


def test_unreadable_inputs_are_one_line_reasons(tmp_path):
    cases = {"empty": b"", "text": b"not an elf at all, just text" * 4, "short": b"\x7fELF\x02\x01\x01",
             "bad-class": b"\x7fELF\x09\x01\x01" + b"\0" * 60}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        obj, err = elf.open_elf(str(tmp_path / name))
        assert obj is None and err and "\n" not in err, name
    os.mkfifo(tmp_path / "fifo")  # must not block on open
    assert elf.open_elf(str(tmp_path / "fifo")) == (None, "not a regular file")
    assert elf.open_elf(str(tmp_path / "absent"))[1].startswith("cannot read")
    bad = tmp_path / "ld.so.cache"
    bad.write_bytes(b"glibc-ld.so.cache1.1" + b"\xff" * 40)
    assert elf.read_ldcache(str(bad))[1]


# ---------------------------------------------------------------- hostile bytes: only ElfError, always bounded


def _exercise(path: str) -> None:
    try:
        names = elf.needed_names(path)
        assert names is None or all(isinstance(n, str) for n in names)
    except elf.ElfError as exc:
        assert str(exc) and "\n" not in str(exc)
    obj, err = elf.open_elf(path)
    if obj is None:
        assert isinstance(err, str) and err
        return
    with obj:
        for call in (obj.undefined, obj.version_needs, obj.version_defs, obj.symbol_count,
                     lambda: obj.defines(b"_ZN3c107presentEi"), lambda: obj.defines(b"zz"),
                     lambda: obj.first_relocated({b"_ZN3c106absentEi", b"__cxa_finalize"})):
            try:
                call()
            except elf.ElfError:
                pass


@needs_compiler
@settings(max_examples=120, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_and_flipped_objects_never_raise_anything_else(real_so, tmp_path, data):
    source = real_so[data.draw(st.sampled_from(["libc10", "ext", "old"]))].read_bytes()
    if data.draw(st.booleans()):
        blob = bytearray(source[:data.draw(st.integers(0, len(source)))])
    else:
        blob = bytearray(source)
        for _ in range(data.draw(st.integers(1, 24))):
            # the headers and the dynamic tables are where a flip matters: bias toward the first 8 KiB
            at = data.draw(st.integers(0, min(len(blob) - 1, 8192)) | st.integers(0, len(blob) - 1))
            blob[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.so"
    path.write_bytes(bytes(blob))
    _exercise(str(path))


@needs_compiler
@pytest.mark.parametrize("offset", [2 ** 63 + 5, 2 ** 64 - 256])
def test_offsets_past_what_pread_takes_are_malformed_not_a_crash(real_so, tmp_path, offset):
    """Found by the fuzz test above: a PT_DYNAMIC offset >= 2**63 made os.pread raise OverflowError."""
    blob = bytearray(real_so["ext"].read_bytes())
    phoff, = struct.unpack_from("<Q", blob, 32)
    phentsize, phnum = struct.unpack_from("<HH", blob, 54)
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from("<I", blob, at)[0] == 2:  # PT_DYNAMIC: its p_offset follows p_type, p_flags
            struct.pack_into("<Q", blob, at + 8, offset)
    path = tmp_path / "far.so"
    path.write_bytes(bytes(blob))
    with pytest.raises(elf.ElfError, match="malformed"):
        elf.needed_names(str(path))
    _exercise(str(path))


@settings(max_examples=60, deadline=10000)
@given(st.binary(min_size=0, max_size=2048))
def test_random_bytes_after_an_elf_magic(blob):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".so") as fh:
        fh.write(b"\x7fELF" + blob)
        fh.flush()
        _exercise(fh.name)


# ---------------------------------------------------------------- the files themselves: stdlib, Python 3.8


@pytest.mark.parametrize("name", ["elf.py", "linkage.py"])
def test_probe_helpers_are_stdlib_only_and_parse_as_python_3_8(name):
    source = (PROBE / name).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name} must not import siblings (the probe loads it by path)"
            mods.add(node.module.split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib:
        assert mods <= set(stdlib), mods - set(stdlib)


# ---------------------------------------------------------------- the dynamic linker's search order (linkage.Linker)


@needs_compiler
def test_search_order_rpath_runpath_ld_library_path_and_class(tmp_path, monkeypatch):
    """DT_RPATH comes before LD_LIBRARY_PATH, DT_RUNPATH after it; a library of the other ELF class is skipped."""
    from moe_env.probe import linkage

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        compile_so(d / "libx.so", "int x(void) { return 1; }\n", cxx=False, soname="libx.so")
    common = ["-L", str(a), "-Wl,--no-as-needed", "-lx", f"-Wl,-rpath,{a}"]
    old = compile_so(tmp_path / "old.so", "int y(void) { return 2; }\n", cxx=False,
                     args=common + ["-Wl,--disable-new-dtags"])
    new = compile_so(tmp_path / "new.so", "int y(void) { return 2; }\n", cxx=False, args=common + ["-Wl,--enable-new-dtags"])
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{b}:relative/ignored")
    linker = linkage.Linker(elf, [])
    try:
        o, _ = linker.object(str(old))
        n, _ = linker.object(str(new))
        assert o.rpath == [str(a)] and n.runpath == [str(a)]
        assert linker.find("libx.so", o, str(old)) == str(a / "libx.so")
        assert linker.find("libx.so", n, str(new)) == str(b / "libx.so")
        assert linker.find("libnothere.so.1", n, str(new)) is None
    finally:
        linker.close()
    # a 32-bit libx.so first on LD_LIBRARY_PATH: ld.so passes over it to the RUNPATH's
    (b / "libx.so").write_bytes(build_elf(32, True, needed=[], soname="libx.so", runpath="", defined=["x"],
                                          undefined=[], verdefs=[]))
    linker = linkage.Linker(elf, [])
    try:
        n, _ = linker.object(str(new))
        assert linker.find("libx.so", n, str(new)) == str(a / "libx.so")
    finally:
        linker.close()


@pytest.mark.skipif(not os.path.isfile("/etc/ld.so.cache"), reason="needs glibc's ld.so.cache")
@settings(max_examples=60, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_ld_so_cache_is_a_reason_never_an_exception(tmp_path, data):
    blob = bytearray(Path("/etc/ld.so.cache").read_bytes())
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    else:
        for _ in range(data.draw(st.integers(1, 16))):
            blob[data.draw(st.integers(0, min(len(blob) - 1, 200)) | st.integers(0, len(blob) - 1))] = data.draw(
                st.integers(0, 255))
    path = tmp_path / "ld.so.cache"
    path.write_bytes(bytes(blob))
    table, err = elf.read_ldcache(str(path))
    assert isinstance(table, dict) and (err is None or isinstance(err, str))
