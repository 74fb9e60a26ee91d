"""A small, bounded ELF reader for shared objects, as the dynamic linker sees them (stdlib only).

The probe loads this file beside target.py inside the target interpreter (Python 3.8-3.14), so it
must stay one stdlib-only module that never imports or dlopens what it reads. It reads what ld.so
reads at load time, from the dynamic segment (PT_DYNAMIC), with the section headers as a fallback:

- DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH;
- the dynamic symbol table: undefined symbols with the version each needs (.gnu.version +
  .gnu.version_r: GLIBCXX_3.4.30 from libstdc++.so.6), version definitions (.gnu.version_d);
- defined-symbol lookup through DT_GNU_HASH (bloom filter, buckets, chains) or DT_HASH, the way
  ld.so looks symbols up, so the cost of asking libtorch_cpu.so (hundreds of thousands of exports)
  grows with the names asked, not with its size;
- the order of the relocations, so "the first undefined symbol" is the one dlopen would name.

Every read is bounded by the file's size and by fixed counts; a malformed or truncated file raises
ElfError (a one-line reason) and nothing else. `open_elf` and `read_ldcache` never raise.
The layouts are those of the System V gABI and glibc's elf.h / dl-cache.h.
"""

import mmap
import operator
import os
import stat
import struct
import sys

MAX_FILE = 4 << 30  # larger "shared objects" are refused
MAX_NAME = 64 * 1024  # longest symbol or library name read (mangled C++ names run to a few KB)
MAX_DYN = 20000  # dynamic entries
MAX_VER = 4096  # version needs / definitions
MAX_SYMS = 4000000  # symbols walked in one table
MAX_UNDEFINED = 500000  # undefined symbols of one object (real extensions: a few thousand)
MAX_CHAIN = 1 << 16  # hash-chain steps of one lookup (real chains: a handful)
MAX_RELOCS = 4000000

DT_NEEDED, DT_PLTRELSZ, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ = 1, 2, 4, 5, 6, 7, 8
DT_STRSZ, DT_SYMENT, DT_SONAME, DT_RPATH, DT_REL, DT_RELSZ, DT_PLTREL, DT_JMPREL, DT_RUNPATH = 10, 11, 14, 15, 17, 18, 20, 23, 29
DT_GNU_HASH, DT_VERSYM, DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = (
    0x6ffffef5, 0x6ffffff0, 0x6ffffffc, 0x6ffffffd, 0x6ffffffe, 0x6fffffff)
PT_LOAD, PT_DYNAMIC = 1, 2
SHT_DYNAMIC, SHT_DYNSYM = 6, 11
STB_WEAK = 2
VER_FLG_BASE, VER_FLG_WEAK = 1, 2


_STRUCTS = {}


class ElfError(Exception):
    """A one-line reason why a file is not a readable ELF shared object."""


def _open_regular(path):
    """A read-only descriptor of a regular file; a FIFO or device is refused without blocking (O_NONBLOCK, fstat)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ElfError("cannot read (%s)" % (exc.strerror or exc))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ElfError("not a regular file")
    except (OSError, ElfError):
        os.close(fd)
        raise
    return fd


def _read_head(path, limit):
    fd = _open_regular(path)
    try:
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_POW33 = [1]
for _ in range(4096):
    _POW33.append(_POW33[-1] * 33 & 0xffffffff)
del _


def gnu_hash(name):
    """The DT_GNU_HASH hash: h = h * 33 + c from 5381, mod 2**32.

    Evaluated as 5381 * 33**n + sum(c_i * 33**(n-1-i)) with the powers precomputed mod 2**32 and the
    sum taken by map(): a C-level loop, ~10x faster than a Python one on 100-character mangled names."""
    n = len(name)
    if n >= len(_POW33):
        h = 5381
        for c in name:
            h = (h * 33 + c) & 0xffffffff
        return h
    return (5381 * _POW33[n] + sum(map(operator.mul, name, _POW33[n - 1::-1] if n else ()))) & 0xffffffff


def sysv_hash(name):
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xffffffff
        g = h & 0xf0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xffffffff
    return h


class ElfFile(object):
    """One ELF file, mapped read-only. Use as a context manager or call close()."""

    def __init__(self, path):
        self.path = path
        fd = _open_regular(path)
        try:
            size = os.fstat(fd).st_size
            if size < 52:
                raise ElfError("truncated (%d bytes, smaller than an ELF header)" % size)
            if size > MAX_FILE:
                raise ElfError("too large (%d bytes)" % size)
            try:
                self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise ElfError("cannot map (%s)" % (getattr(exc, "strerror", None) or exc))
        finally:
            os.close(fd)
        self.size = len(self._map)
        try:
            self._parse()
        except ElfError:
            self.close()
            raise
        except (struct.error, ValueError, OverflowError, IndexError, MemoryError) as exc:
            self.close()
            raise ElfError("malformed (%s)" % exc)

    def close(self):
        m, self._map = getattr(self, "_map", None), None
        if m is not None:
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ raw reads

    def _bytes(self, off, n):
        if off < 0 or n < 0 or off + n > self.size:
            raise ElfError("truncated (needs bytes %d-%d of %d)" % (off, off + n, self.size))
        return self._map[off:off + n]

    def _unpack(self, fmt, off):
        s = _STRUCTS.get(self._e + fmt)
        if s is None:
            s = _STRUCTS[self._e + fmt] = struct.Struct(self._e + fmt)
        if off < 0 or off + s.size > self.size:
            raise ElfError("truncated (needs bytes %d-%d of %d)" % (off, off + s.size, self.size))
        return s.unpack_from(self._map, off)

    def _cstr(self, off):
        if off < 0 or off >= self.size:
            raise ElfError("string offset %d outside the file" % off)
        end = self._map.find(b"\0", off, min(self.size, off + MAX_NAME))
        if end < 0:
            raise ElfError("unterminated string at %d" % off)
        return self._map[off:end]

    def _addr(self, vaddr):
        """File offset of a virtual address, through the PT_LOAD segments (else the section headers)."""
        for start, end, off in self._loads:
            if start <= vaddr < end:
                return vaddr - start + off
        raise ElfError("address 0x%x is in no loaded segment" % vaddr)

    def _str(self, index):
        if self._strtab is None:
            raise ElfError("no dynamic string table")
        if index >= self._strsz:
            raise ElfError("string index %d past the string table" % index)
        return self._cstr(self._strtab + index)

    # ------------------------------------------------------------ headers and the dynamic segment

    def _parse(self):
        ident = self._bytes(0, 16)
        if ident[:4] != b"\x7fELF":
            raise ElfError("not an ELF file")
        if ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ElfError("unknown ELF class %d or data encoding %d" % (ident[4], ident[5]))
        self.bits = 64 if ident[4] == 2 else 32
        self.little = ident[5] == 1
        self._e = "<" if self.little else ">"
        w = "Q" if self.bits == 64 else "I"
        self._w = w
        (self.type, self.machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
         _shstrndx) = self._unpack("HHI" + w + w + w + "IHHHHHH", 16)
        self._loads = []
        dyn_off = dyn_size = None
        ph_fmt = "IIQQQQQQ" if self.bits == 64 else "IIIIIIII"
        ph_size = struct.calcsize(self._e + ph_fmt)
        if phnum and phentsize >= ph_size:
            if phentsize == ph_size and phoff >= 0 and phoff + phnum * ph_size <= self.size:
                headers = struct.iter_unpack(self._e + ph_fmt, self._map[phoff:phoff + phnum * ph_size])
            else:
                headers = (self._unpack(ph_fmt, phoff + i * phentsize) for i in range(min(phnum, 4096)))
            for p in headers:
                if self.bits == 64:
                    p_type, _pf, p_offset, p_vaddr, _pa, p_filesz = p[:6]
                else:
                    p_type, p_offset, p_vaddr, _pa, p_filesz = p[:5]
                if p_type == PT_LOAD:
                    self._loads.append((p_vaddr, p_vaddr + p_filesz, p_offset))
                elif p_type == PT_DYNAMIC:
                    dyn_off, dyn_size = p_offset, p_filesz
        self._dynsym_count = None
        self._shoff, self._shnum, self._shentsize = shoff, shnum, shentsize
        if dyn_off is None or not self._loads:  # no program headers to go by: the section headers must do
            found = self._sections(map_loads=not self._loads)
            if dyn_off is None and found is not None:
                dyn_off, dyn_size = found
        if dyn_off is None:
            raise ElfError("no dynamic section (a static executable or an object file?)")
        dyn = {}
        needed, rpath, runpath, soname = [], [], [], []
        d_fmt = "qQ" if self.bits == 64 else "iI"
        d_size = struct.calcsize(self._e + d_fmt)
        if dyn_off < 0 or dyn_off + d_size > self.size:
            raise ElfError("dynamic section outside the file")
        count = min(dyn_size, self.size - dyn_off) // d_size
        entries = struct.iter_unpack(self._e + d_fmt, self._map[dyn_off:dyn_off + min(count, MAX_DYN) * d_size])
        for tag, val in entries:
            if tag == 0:
                break
            if tag == DT_NEEDED:
                needed.append(val)
            elif tag == DT_RPATH:
                rpath.append(val)
            elif tag == DT_RUNPATH:
                runpath.append(val)
            elif tag == DT_SONAME:
                soname.append(val)
            else:
                dyn.setdefault(tag, val)
        self._dyn = dyn
        self._strtab = self._addr(dyn[DT_STRTAB]) if DT_STRTAB in dyn else None
        self._strsz = dyn.get(DT_STRSZ, 0)
        if self._strtab is not None:
            self._strsz = min(self._strsz or self.size, self.size - self._strtab)
        dec = self._decode
        self.needed = [dec(self._str(v)) for v in needed]
        self.soname = dec(self._str(soname[0])) if soname else None
        self.rpath = [p for v in rpath for p in dec(self._str(v)).split(":") if p]
        self.runpath = [p for v in runpath for p in dec(self._str(v)).split(":") if p]
        self._symtab = self._addr(dyn[DT_SYMTAB]) if DT_SYMTAB in dyn else None
        self._syment = dyn.get(DT_SYMENT) or (24 if self.bits == 64 else 16)
        if self._syment < (24 if self.bits == 64 else 16):
            raise ElfError("DT_SYMENT %d too small" % self._syment)
        self._versym = self._addr(dyn[DT_VERSYM]) if DT_VERSYM in dyn else None
        self._u32 = struct.Struct(self._e + "I").unpack_from
        self._sym64 = struct.Struct(self._e + "IBBH").unpack_from
        self._sym32 = struct.Struct(self._e + "IIIBBH").unpack_from
        self._uw = struct.Struct(self._e + w).unpack_from
        self._gnu = self._hash_tables()
        self._needs = None

    def _sections(self, map_loads=False):
        """Read the section headers: the .dynsym entry count, (offset, size) of .dynamic, and, when asked,
        address ranges for files without PT_LOAD segments. Returns (offset, size) of .dynamic or None."""
        sh_fmt = "IIQQQQIIQQ" if self.bits == 64 else "IIIIIIIIII"
        shoff, shnum, shentsize = self._shoff, self._shnum, self._shentsize
        dynamic = None
        if not shnum or shentsize < struct.calcsize(self._e + sh_fmt) or shoff + shnum * shentsize > self.size:
            return None
        for i in range(min(shnum, 65536)):
            sec = self._unpack(sh_fmt, shoff + i * shentsize)
            sh_type, sh_addr, sh_offset, sh_size, sh_entsize = sec[1], sec[3], sec[4], sec[5], sec[9]
            if map_loads and sh_addr and sh_size:
                self._loads.append((sh_addr, sh_addr + sh_size, sh_offset))
            if sh_type == SHT_DYNAMIC and dynamic is None:
                dynamic = (sh_offset, sh_size)
            elif sh_type == SHT_DYNSYM and sh_entsize:
                self._dynsym_count = sh_size // sh_entsize
        return dynamic

    @staticmethod
    def _decode(raw):
        return raw.decode("utf-8", "replace")

    def _hash_tables(self):
        """(kind, fields) of DT_GNU_HASH (preferred, as ld.so does) or DT_HASH, or None."""
        if DT_GNU_HASH in self._dyn:
            off = self._addr(self._dyn[DT_GNU_HASH])
            nbuckets, symoffset, bloom_size, bloom_shift = self._unpack("IIII", off)
            if nbuckets == 0 or bloom_size == 0 or nbuckets > 1 << 26 or bloom_size > 1 << 26:
                raise ElfError("implausible .gnu.hash header")
            word = 8 if self.bits == 64 else 4
            bloom = off + 16
            buckets = bloom + bloom_size * word
            chains = buckets + 4 * nbuckets
            if bloom < 0 or chains > self.size:  # the fixed part must be in the file
                raise ElfError("truncated .gnu.hash table")
            return ("gnu", nbuckets, symoffset, bloom_size, bloom_shift, bloom, buckets, chains)
        if DT_HASH in self._dyn:
            off = self._addr(self._dyn[DT_HASH])
            nbucket, nchain = self._unpack("II", off)
            if nbucket == 0 or nbucket > 1 << 26 or nchain > MAX_SYMS:
                raise ElfError("implausible .hash header")
            if off + 8 + 4 * (nbucket + nchain) > self.size:
                raise ElfError("truncated .hash table")
            return ("sysv", nbucket, nchain, off + 8, off + 8 + 4 * nbucket)
        return None

    # ------------------------------------------------------------ symbols

    def _sym(self, index):
        """(name offset, bind, shndx) of dynamic symbol `index`."""
        off = self._symtab + index * self._syment
        if self.bits == 64:
            st_name, st_info, _o, st_shndx = self._unpack("IBBH", off)
        else:
            st_name, _v, _s, st_info, _o, st_shndx = self._unpack("IIIBBH", off)
        return st_name, st_info >> 4, st_shndx

    def _name_shndx(self, index):
        off = self._symtab + index * self._syment
        if off < 0 or off + self._syment > self.size:
            raise ElfError("symbol %d outside the file" % index)
        if self.bits == 64:
            st_name, _i, _o, st_shndx = self._sym64(self._map, off)
        else:
            st_name, _v, _s, _i, _o, st_shndx = self._sym32(self._map, off)
        return st_name, st_shndx

    def symbol_count(self):
        """How many dynamic symbols there are: section header, else DT_HASH's nchain, else a .gnu.hash walk."""
        if self._dynsym_count is None and self._shnum:
            try:
                self._sections()
            except ElfError:
                pass
        if self._dynsym_count is not None:
            return min(self._dynsym_count, MAX_SYMS)
        g = self._gnu
        if g is None:
            return 0
        if g[0] == "sysv":
            return g[2]
        _k, nbuckets, symoffset, _bs, _sh, _bloom, buckets, chains = g
        top = 0
        for (b,) in struct.iter_unpack(self._e + "I", self._bytes(buckets, 4 * nbuckets)):
            if b > top:
                top = b
        if top < symoffset:
            return symoffset
        for _ in range(MAX_SYMS):
            (ch,) = self._unpack("I", chains + 4 * (top - symoffset))
            top += 1
            if ch & 1:
                break
        return top

    def defines(self, name, hashes=None):
        """Whether `name` (bytes) is a defined dynamic symbol, looked up through the hash table like ld.so.

        `hashes`: a dict to keep computed hashes in, shared by the callers asking several libraries."""
        g = self._gnu
        if g is None or self._symtab is None or self._strtab is None:
            return False
        if g[0] == "gnu":
            _k, nbuckets, symoffset, bloom_size, shift, bloom, buckets, chains = g
            if hashes is None:
                h = gnu_hash(name)
            else:
                h = hashes.get(name)
                if h is None:
                    h = hashes[name] = gnu_hash(name)
            bits = self.bits
            m = self._map
            # the bloom words and buckets were checked to lie in the file when the table was read
            (word,) = self._uw(m, bloom + ((h // bits) % bloom_size) * (bits // 8))
            mask = (1 << (h % bits)) | (1 << ((h >> shift) % bits))
            if word & mask != mask:
                return False
            (idx,) = self._u32(m, buckets + 4 * (h % nbuckets))
            if idx < symoffset:
                return False
            want = name + b"\0"
            size, strtab, strsz = self.size, self._strtab, self._strsz
            for _ in range(MAX_CHAIN):
                at = chains + 4 * (idx - symoffset)
                if at + 4 > size:
                    raise ElfError("truncated .gnu.hash chain")
                (ch,) = self._u32(m, at)
                if (ch | 1) == (h | 1):
                    st_name, shndx = self._name_shndx(idx)
                    if shndx != 0 and st_name < strsz and m[strtab + st_name:strtab + st_name + len(want)] == want:
                        return True
                if ch & 1:
                    return False
                idx += 1
            raise ElfError("implausible .gnu.hash chain (longer than %d)" % MAX_CHAIN)
        _k, nbucket, nchain, buckets, chains = g
        h = sysv_hash(name)
        (idx,) = self._unpack("I", buckets + 4 * (h % nbucket))
        for _ in range(min(nchain + 1, MAX_CHAIN)):
            if idx == 0 or idx >= nchain:
                return False
            st_name, bind, shndx = self._sym(idx)
            if shndx != 0 and self._str(st_name) == name:
                return True
            (idx,) = self._unpack("I", chains + 4 * idx)
        raise ElfError("implausible .hash chain (longer than %d)" % MAX_CHAIN)

    def undefined(self):
        """[(name bytes, version name or None, weak)] of the undefined dynamic symbols, in table order.

        With a .gnu.hash table the linker puts every unhashed (undefined) symbol below `symoffset`,
        so only those are read; without one the whole table is walked.
        """
        if self._symtab is None:
            return []
        g = self._gnu
        if g is not None and g[0] == "gnu":
            count = g[2]  # bounded by the file's size below: the table must be there
        else:
            count = self.symbol_count()
        if count > MAX_UNDEFINED:
            raise ElfError("implausibly many undefined symbols (%d)" % count)
        if count <= 1:
            return []
        fmt = "IBBHQQ" if self.bits == 64 else "IIIBBH"
        if self._syment != struct.calcsize(self._e + fmt):
            raise ElfError("unexpected DT_SYMENT %d" % self._syment)
        versions = self._version_names()
        vers = None
        if self._versym is not None and versions:
            vers = self._bytes(self._versym, 2 * count)
        if self._strtab is None:
            raise ElfError("no dynamic string table")
        data, find, size, strtab, strsz = self._map, self._map.find, self.size, self._strtab, self._strsz
        unpack_half = struct.Struct(self._e + "H").unpack_from
        out = []
        rows = struct.iter_unpack(self._e + fmt, self._bytes(self._symtab, count * self._syment))
        for i, row in enumerate(rows):
            if self.bits == 64:
                st_name, st_info, st_shndx = row[0], row[1], row[3]
            else:
                st_name, st_info, st_shndx = row[0], row[3], row[5]
            bind = st_info >> 4
            if st_shndx != 0 or st_name == 0:
                continue
            version = None
            if vers is not None:
                version = versions.get(unpack_half(vers, 2 * i)[0] & 0x7fff)
            if st_name >= strsz:
                raise ElfError("string index %d past the string table" % st_name)
            start = strtab + st_name
            end = find(b"\0", start, min(size, start + MAX_NAME))
            if end < 0:
                raise ElfError("unterminated string at %d" % start)
            out.append((data[start:end], version, bind == STB_WEAK))
        return out

    # ------------------------------------------------------------ versions

    def version_needs(self):
        """{library: [(version name, weak), ...]} from DT_VERNEED (.gnu.version_r)."""
        if self._needs is None:
            self._needs, self._needs_index = {}, {}
            if DT_VERNEED in self._dyn:
                off = self._addr(self._dyn[DT_VERNEED])
                count = min(self._dyn.get(DT_VERNEEDNUM, MAX_VER), MAX_VER)
                budget = MAX_VER
                for _ in range(count):
                    _ver, cnt, vn_file, vn_aux, vn_next = self._unpack("HHIII", off)
                    lib = self._decode(self._str(vn_file))
                    aux = off + vn_aux
                    for _ in range(min(cnt, budget)):
                        budget -= 1
                        _h, flags, other, name, vna_next = self._unpack("IHHII", aux)
                        vname = self._decode(self._str(name))
                        self._needs.setdefault(lib, []).append((vname, bool(flags & VER_FLG_WEAK)))
                        self._needs_index[other & 0x7fff] = vname
                        if not vna_next:
                            break
                        aux += vna_next
                    if not vn_next or budget <= 0:
                        break
                    off += vn_next
        return self._needs

    def _version_names(self):
        self.version_needs()
        return self._needs_index

    def version_defs(self):
        """Names of the versions this file defines (DT_VERDEF, .gnu.version_d), the base (file) name left out."""
        out = []
        if DT_VERDEF not in self._dyn:
            return out
        off = self._addr(self._dyn[DT_VERDEF])
        for _ in range(min(self._dyn.get(DT_VERDEFNUM, MAX_VER), MAX_VER)):
            _ver, flags, _ndx, _cnt, _hash, vd_aux, vd_next = self._unpack("HHHHIII", off)
            if not flags & VER_FLG_BASE:
                (name, _n) = self._unpack("II", off + vd_aux)
                out.append(self._decode(self._str(name)))
            if not vd_next:
                break
            off += vd_next
        return out

    # ------------------------------------------------------------ relocations

    def first_relocated(self, wanted):
        """The first symbol of `wanted` (a set of names, bytes) that a relocation refers to, in the order
        ld.so processes them (DT_REL/DT_RELA, then DT_JMPREL), or None."""
        if self._symtab is None or not wanted:
            return None
        tables = []
        for tab, size_tag, rela in ((DT_RELA, DT_RELASZ, True), (DT_REL, DT_RELSZ, False)):
            if tab in self._dyn:
                tables.append((self._dyn[tab], self._dyn.get(size_tag, 0), rela))
        if DT_JMPREL in self._dyn:
            tables.append((self._dyn[DT_JMPREL], self._dyn.get(DT_PLTRELSZ, 0), self._dyn.get(DT_PLTREL) == DT_RELA))
        cache = {}
        budget = MAX_RELOCS
        for addr, size, rela in tables:
            if self.bits == 64:
                fmt, shift = ("QQq" if rela else "QQ"), 32
            else:
                fmt, shift = ("IIi" if rela else "II"), 8
            entry = struct.calcsize(self._e + fmt)
            n = min(size // entry, budget)
            budget -= n
            if n <= 0:
                continue
            off = self._addr(addr)
            for row in struct.iter_unpack(self._e + fmt, self._bytes(off, n * entry)):
                idx = row[1] >> shift
                if not idx:
                    continue
                name = cache.get(idx)
                if name is None:
                    st_name, _b, shndx = self._sym(idx)
                    name = cache[idx] = self._str(st_name) if shndx == 0 else b""
                if name in wanted:
                    return name
        return None


def needed_names(path):
    """DT_NEEDED of `path` with a few small reads (no mapping): the cheap first look at every compiled file.

    Raises ElfError like ElfFile; files whose layout it does not expect (no PT_DYNAMIC, strings outside
    the first PT_LOAD) get None, and the caller reads them the full way."""
    fd = _open_regular(path)
    try:
        head = os.pread(fd, 4096, 0)
        if len(head) < 52 or head[:4] != b"\x7fELF":
            raise ElfError("not an ELF file" if head[:4] != b"\x7fELF" else "truncated (smaller than an ELF header)")
        if head[4] not in (1, 2) or head[5] not in (1, 2):
            raise ElfError("unknown ELF class %d or data encoding %d" % (head[4], head[5]))
        bits = 64 if head[4] == 2 else 32
        e = "<" if head[5] == 1 else ">"
        if bits == 64:
            phoff, = struct.unpack_from(e + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
            ph_fmt, d_fmt = e + "IIQQQQQQ", e + "qQ"
        else:
            phoff, = struct.unpack_from(e + "I", head, 28)
            phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
            ph_fmt, d_fmt = e + "IIIIIIII", e + "iI"
        ph_size = struct.calcsize(ph_fmt)
        if phentsize != ph_size or not phnum or phoff + phnum * ph_size > len(head):
            return None
        loads, dyn = [], None
        for p in struct.iter_unpack(ph_fmt, head[phoff:phoff + phnum * ph_size]):
            if bits == 64:
                p_type, p_offset, p_vaddr, p_filesz = p[0], p[2], p[3], p[5]
            else:
                p_type, p_offset, p_vaddr, p_filesz = p[0], p[1], p[2], p[4]
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_vaddr + p_filesz, p_offset))
            elif p_type == PT_DYNAMIC:
                dyn = (p_offset, p_filesz)
        if dyn is None:
            return None
        d_size = struct.calcsize(d_fmt)
        raw = os.pread(fd, min(dyn[1], MAX_DYN * d_size), dyn[0])
        if len(raw) < d_size:
            raise ElfError("truncated (dynamic section outside the file)")
        needed, strtab = [], None
        for tag, val in struct.iter_unpack(d_fmt, raw[:len(raw) - len(raw) % d_size]):
            if tag == 0:
                break
            if tag == DT_NEEDED:
                needed.append(val)
            elif tag == DT_STRTAB:
                strtab = val
        if not needed:
            return []
        if strtab is None:
            return None
        base = next((strtab - start + off for start, end, off in loads if start <= strtab < end), None)
        if base is None:
            return None
        lo, hi = min(needed), max(needed)
        blob = os.pread(fd, min(hi - lo + 1024, 1 << 20), base + lo)
        out = []
        for v in needed:
            at = v - lo
            end = blob.find(b"\0", at)
            if at >= len(blob) or end < 0:
                return None  # long names or a truncated table: the full reader decides
            out.append(blob[at:end].decode("utf-8", "replace"))
        return out
    except OSError as exc:
        raise ElfError("cannot read (%s)" % (exc.strerror or exc))
    except (struct.error, OverflowError, ValueError) as exc:  # offsets past 2**63: no real file has them
        raise ElfError("malformed (%s)" % exc)
    finally:
        os.close(fd)


def open_elf(path):
    """(ElfFile, None) or (None, one-line reason); never raises."""
    try:
        return ElfFile(path), None
    except ElfError as exc:
        return None, str(exc)
    except (OSError, ValueError, struct.error, OverflowError, MemoryError, IndexError) as exc:
        return None, "unreadable (%s)" % exc


def header_matches(path, bits, machine, little):
    """Whether `path` is an ELF file of this class, byte order and machine (ld.so skips the others)."""
    try:
        head = _read_head(path, 20)
    except (OSError, ElfError):
        return False
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return False
    if head[4] != (2 if bits == 64 else 1) or head[5] != (1 if little else 2):
        return False
    return struct.unpack(("<" if little else ">") + "H", head[18:20])[0] == machine


# ---------------------------------------------------------------- /etc/ld.so.cache

_CACHE_OLD = b"ld.so-1.7.0"
_CACHE_NEW = b"glibc-ld.so.cache1.1"


def read_ldcache(path="/etc/ld.so.cache", limit=64 << 20):
    """{library name: [paths, in cache order]} from glibc's ld.so.cache, read as a file; ({}, reason) on failure.

    Format of glibc's sysdeps/generic/dl-cache.h: an optional old "ld.so-1.7.0" table, then the
    "glibc-ld.so.cache1.1" header (nlibs, len_strings, ...; 48 bytes), 24-byte entries (flags, key,
    value, osversion, hwcap) whose string offsets count from that header. Native byte order. The
    entries of every architecture are returned; callers check the file's ELF header.
    """
    try:
        data = _read_head(path, limit + 1)
    except ElfError as exc:
        return {}, "%s: %s" % (path, exc)
    except OSError as exc:
        return {}, "%s: cannot read (%s)" % (path, exc.strerror or exc)
    if len(data) > limit:
        return {}, "%s: larger than %d bytes" % (path, limit)
    try:
        base = 0
        if data.startswith(_CACHE_OLD):
            (nold,) = struct.unpack_from("=I", data, 12)
            base = 16 + 12 * nold
            base = (base + 7) & ~7
        if data[base:base + len(_CACHE_NEW)] != _CACHE_NEW:
            return {}, "%s: not a glibc ld.so.cache (new format)" % path
        nlibs, _len_strings = struct.unpack_from("=II", data, base + 20)
        if base + 48 + 24 * nlibs > len(data):
            return {}, "%s: truncated" % path
        out, later = {}, {}
        for i in range(nlibs):
            _flags, key, value, _osv, hwcap = struct.unpack_from("=iIIIQ", data, base + 48 + 24 * i)
            k_end = data.find(b"\0", base + key, base + key + 4096)
            v_end = data.find(b"\0", base + value, base + value + 4096)
            if k_end < 0 or v_end < 0:
                continue
            name = data[base + key:k_end].decode("utf-8", "replace")
            target = data[base + value:v_end].decode("utf-8", "replace")
            # glibc-hwcaps subdirectory entries (x86-64-v3 ...) depend on the CPU: try them after the plain ones
            (later if hwcap else out).setdefault(name, []).append(target)
        for name, paths in later.items():
            out.setdefault(name, []).extend(paths)
        return out, None
    except struct.error as exc:
        return {}, "%s: malformed (%s)" % (path, exc)


def default_dirs(bits):
    """The trusted directories ld.so searches last (glibc's SYSTEM_DIRS, with Debian's multiarch ones)."""
    dirs = []
    multiarch = getattr(sys.implementation, "_multiarch", None)
    if multiarch:
        dirs += ["/lib/" + multiarch, "/usr/lib/" + multiarch]
    if bits == 64:
        dirs += ["/lib64", "/usr/lib64"]
    dirs += ["/lib", "/usr/lib"]
    return dirs
