"""The one GGUF header walk: `models` (pull, resolve) and the llama.cpp engine (before its load) use it.

A truncated or corrupt GGUF can make llama.cpp abort the whole process, so its header and tensor table
are checked in Python first. gguf.GGUFReader would do this too, but it decodes every metadata value in
Python (~9 s for a Qwen-size vocabulary of 151k tokens and merges); this walk skips values and reads
only sizes, the alignment, and the two strings the engine needs.

Tolerance: a tensor type that the installed `gguf` package does not know cannot be size-checked, so
only its first byte must lie inside the file. Such a file is not refused: the `gguf` package and the
llama.cpp build are released apart (llama-cpp-python 0.3.36 knows type 42, Q2_0; gguf 0.19.0 stops at
41), and when llama.cpp does not know a type either, its loader refuses the file with an error (invalid
ggml type), and it checks each tensor's bytes against the file size itself, so neither case crashes.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MAX_COUNT = 1 << 20  # more tensors or metadata keys than this is garbage, not a model
_MAX_DIMS = 4  # GGML_MAX_DIMS
_STRING, _ARRAY, _UINT32 = 8, 9, 4  # GGUF metadata value types with special handling
# GGUF metadata value type -> byte size of one value (strings and arrays are sized by their content)
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_WANTED = (b"general.architecture", b"tokenizer.chat_template")


class HeaderError(ValueError):
    """The GGUF header is malformed; the message says how."""


class NotGGUF(HeaderError):
    """The file does not start with the GGUF magic."""

    def __init__(self, head: bytes) -> None:
        super().__init__(f"it starts with {head!r}")
        self.head = head


class Truncated(HeaderError):
    """The file ends before its header or its tensor data does."""


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    architecture: str
    chat_template: str | None
    n_tensors: int
    data_bytes: int  # bytes the file must hold: the end of the last tensor's data
    file_bytes: int
    unsized_tensors: int  # of a type the gguf package does not know: only their start was checked


def read(path: Path) -> GGUFHeader:
    """Walk `path`'s header; raise NotGGUF, Truncated or HeaderError (OSError when it cannot be read)."""
    with path.open("rb") as f:
        head = f.read(4)
        if head != b"GGUF":
            raise NotGGUF(head)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            header = walk(buf)
    if header.data_bytes > header.file_bytes:
        raise Truncated(f"its tensors need {header.data_bytes} bytes but the file has {header.file_bytes}")
    return header


def walk(buf: bytes | mmap.mmap) -> GGUFHeader:
    """Walk a GGUF header (v2/v3, either byte order) held in `buf`, the whole file."""
    try:
        return _Cursor(buf).header()
    except struct.error:
        raise Truncated("its header ends early") from None
    except RecursionError:  # arrays of arrays of ...: garbage, not a model
        raise HeaderError("its metadata arrays nest too deep") from None


class _Cursor:
    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 4
        self.order = "<"

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(self.order + fmt)
        return value

    def skip(self, n: int) -> None:
        self.pos += n
        if self.pos > self.size:
            raise Truncated("its header ends early")

    def string(self) -> bytes:
        n = self.take("Q")
        self.skip(n)
        return bytes(self.buf[self.pos - n : self.pos])

    def skip_string(self) -> None:
        self.skip(self.take("Q"))  # not a copy: a vocabulary holds 100k+ of them

    def skip_strings(self, count: int) -> None:
        """A vocabulary's 100k+ strings, in one tight loop (start-up time)."""
        unpack, buf, pos = struct.Struct(self.order + "Q").unpack_from, self.buf, self.pos
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos
        self.skip(0)

    def skip_value(self, vtype: int, key: bytes) -> None:
        if vtype == _STRING:
            self.skip_string()
        elif vtype == _ARRAY:
            itype, count = self.take("I"), self.take("Q")
            if itype == _STRING:
                self.skip_strings(count)
            elif itype == _ARRAY:
                for _ in range(count):
                    self.skip_value(itype, key)
            elif itype in _SCALAR_BYTES:
                self.skip(_SCALAR_BYTES[itype] * count)
            else:
                raise HeaderError(f"metadata '{key.decode(errors='replace')}' has array type {itype}")
        elif vtype in _SCALAR_BYTES:
            self.skip(_SCALAR_BYTES[vtype])
        else:
            raise HeaderError(f"metadata '{key.decode(errors='replace')}' has unknown type {vtype}")

    def version(self) -> int:
        version = self.take("I")
        if version & 0xFFFF == 0:  # a big-endian file
            self.order, self.pos = ">", 4
            version = self.take("I")
        if version not in (2, 3):
            raise HeaderError(f"unsupported GGUF version {version}")
        return int(version)

    def header(self) -> GGUFHeader:
        from gguf import GGUF_DEFAULT_ALIGNMENT  # imported late: `voicecli models` starts without numpy

        version = self.version()
        n_tensors, n_kv = self.take("Q"), self.take("Q")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise HeaderError(f"implausible header ({n_tensors} tensors, {n_kv} keys)")
        wanted: dict[bytes, str] = {}
        alignment = GGUF_DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key, vtype = self.string(), self.take("I")
            if key in _WANTED and vtype == _STRING:
                wanted[key] = _text(self.string(), key)
            elif key == b"general.alignment" and vtype == _UINT32:
                alignment = self.take("I")
            else:
                self.skip_value(vtype, key)
        if alignment <= 0:
            raise HeaderError(f"alignment {alignment}")
        tensors = [self.tensor() for _ in range(n_tensors)]
        data_start = -(-self.pos // alignment) * alignment
        # An unsized tensor's first byte must be in the file (module docstring).
        ends = [data_start + offset + (1 if nbytes is None else nbytes) for offset, nbytes in tensors]
        return GGUFHeader(
            version=version,
            architecture=wanted.get(b"general.architecture", "?"),
            chat_template=wanted.get(b"tokenizer.chat_template"),
            n_tensors=n_tensors,
            data_bytes=max(ends, default=data_start),
            file_bytes=self.size,
            unsized_tensors=sum(1 for _, nbytes in tensors if nbytes is None),
        )

    def tensor(self) -> tuple[int, int | None]:
        """(offset in the data section, bytes of data) of the next tensor; None bytes for an unknown type."""
        name = self.string()
        n_dims = self.take("I")
        if n_dims > _MAX_DIMS:
            raise HeaderError(f"tensor '{name.decode(errors='replace')}' has {n_dims} dimensions")
        dims = [self.take("Q") for _ in range(n_dims)]
        ttype, offset = self.take("I"), self.take("Q")
        return offset, _tensor_bytes(ttype, math.prod(dims))


def _tensor_bytes(ttype: int, n_elements: int) -> int | None:
    """Bytes of a tensor's data, None for a type the gguf package does not know (newer than it)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        return None
    return n_elements * type_size // block


def _text(raw: bytes, key: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HeaderError(f"metadata '{key.decode(errors='replace')}' is not UTF-8") from None
