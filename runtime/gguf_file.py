"""The header of a GGUF file (llama.cpp's format): metadata and tensor infos.

A small parser of our own rather than `gguf.GGUFReader`: that reader builds one
numpy view per string of the tokenizer vocabulary and takes 2-4 s to open
SmolLM2; this takes ~0.1 s. It reads the header from a read-only memory map and
never touches tensor data: `GGUFHeader.data_start` and each tensor's offset say
where the data is (gguf_checkpoint views it in the same map).

Both byte orders are parsed (big-endian GGUFs exist for s390x); GGUF v1 (32-bit
lengths) is refused, as llama.cpp dropped it long ago.
"""
from __future__ import annotations

import mmap
import pathlib
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# GGUF value types (gguf.GGUFValueType): struct formats of the scalar ones.
STRING, ARRAY, FLOAT32 = 8, 9, 6
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GGUFError(ValueError):
    """The file is not a GGUF file this parser reads; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry: GGML type id, ggml dims (innermost first), data offset."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # from GGUFHeader.data_start


@dataclass
class GGUFHeader:
    version: int
    byte_order: str                                         # "<" or ">"
    metadata: dict[str, Any] = field(default_factory=dict)  # key -> Python value
    value_types: dict[str, int] = field(default_factory=dict)  # key -> GGUF value type
    tensors: list[TensorInfo] = field(default_factory=list)  # file order
    data_start: int = 0                                     # aligned start of the tensor data


def map_gguf(path: str | pathlib.Path) -> mmap.mmap:
    """A read-only memory map of the whole file."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GGUFError(f"{path}: empty file; re-download it.") from None


def read_gguf_header(path: str | pathlib.Path, prefixes: tuple[str, ...] | None = None,
                     errors: str = "surrogateescape") -> GGUFHeader:
    """The header of the GGUF file at `path` (see parse_gguf_header); the file is not kept open."""
    m = map_gguf(path)
    try:
        return parse_gguf_header(m, path, prefixes, errors)
    finally:
        m.close()


def parse_gguf_header(buffer, path: str | pathlib.Path, prefixes: tuple[str, ...] | None = None,
                      errors: str = "surrogateescape") -> GGUFHeader:
    """Parse the header at the start of `buffer` (the bytes of the file at `path`).

    prefixes: keep only the metadata keys that start with one of them (None: all).
    errors: how strings that are not valid UTF-8 are decoded (`bytes.decode`);
    surrogateescape is lossless for the odd vocabulary entry that is not.
    """
    with memoryview(buffer) as buf:
        try:
            return _Parser(buf, path, errors).header(prefixes)
        except GGUFError:
            raise
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
            raise GGUFError(
                f"{path}: malformed GGUF header ({type(e).__name__}: {e}); the file is truncated "
                "or not a GGUF file. Re-download it."
            ) from e


class _Parser:
    def __init__(self, buf: memoryview, path, errors: str):
        self.buf, self.path, self.errors = buf, path, errors
        self.pos = 0
        self.byte_order("<")

    def byte_order(self, end: str) -> None:
        self.end = end
        self.u64 = struct.Struct(end + "Q")  # string lengths: the hot path on a vocabulary

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(self.end + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(self.end + fmt)
        return values

    def string(self) -> str:
        (n,) = self.u64.unpack_from(self.buf, self.pos)
        start, self.pos = self.pos + 8, self.pos + 8 + n
        if self.pos > len(self.buf):
            raise ValueError(f"string of {n} bytes runs past the end of the file")
        return str(self.buf[start : self.pos], "utf-8", self.errors)

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype, count = self.unpack("IQ")
            if etype in _SCALARS:  # numeric array: one numpy read, not `count` struct calls
                dt = np.dtype(self.end + _SCALARS[etype]) if etype != 7 else np.dtype(np.bool_)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            if etype == STRING:
                return [self.string() for _ in range(count)]
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(_SCALARS[vtype])[0]

    def header(self, prefixes: tuple[str, ...] | None) -> GGUFHeader:
        magic, version = self.unpack("4sI")
        if magic != b"GGUF":
            raise GGUFError(f"{self.path}: not a GGUF file (no 'GGUF' magic).")
        if version & 0xFFFF == 0:  # a byte-swapped small version reads huge
            self.byte_order(">")
            (version,) = struct.unpack(">I", struct.pack("<I", version))
        if version < 2:
            raise GGUFError(f"{self.path}: GGUF version {version} is too old; re-convert with a recent llama.cpp.")
        out = GGUFHeader(version, self.end)
        n_tensors, n_kv = self.unpack("QQ")
        align = 32
        for _ in range(n_kv):
            key = self.string()
            (vtype,) = self.unpack("I")
            value = self.value(vtype)
            if key == "general.alignment":
                align = int(value)
            if prefixes is None or key.startswith(prefixes):
                out.value_types[key] = vtype
                out.metadata[key] = value
        for _ in range(n_tensors):
            name = self.string()
            (n_dims,) = self.unpack("I")
            dims = self.unpack("Q" * n_dims)
            type_id, offset = self.unpack("IQ")
            out.tensors.append(TensorInfo(name, tuple(dims), type_id, offset))
        out.data_start = -(-self.pos // align) * align
        return out
