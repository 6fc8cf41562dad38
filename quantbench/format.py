"""The compressed-model format: records, exact size accounting, and the packed file.

This module is the one place that computes size. Every record lists its payload *fields*
(``(name, unsigned ints, bit width)``); :meth:`size_bits` sums those widths and :func:`pack`
writes exactly those fields into one bit stream, so

    8 * len(payload) - size_bits  in  [0, 8)

for the whole model. The file is ``MAGIC | version u16 | header length u32 | crc32 u32 |
header (JSON: architecture, tensor names, shapes, widths) | payload``.

Dequantization (per element i of a tensor, c = its output channel, b = its code width):

* :class:`AffineGrid`  ``w_i = scale_c * (code_i - zero_c)``
* :class:`RangeGrid`   ``w_i = lo + code_i * (hi - lo) / (2**b - 1)``
* :class:`Codebook`    ``w_i = values[code_i]``

then ``w_i *= channel_scale_c`` when per-channel scales are present, and ``w_i = 0`` where the
pruning mask is 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbench.bitpack import BitReader, BitWriter
from quantbench.files import write_atomic

MAGIC = b"QBCM"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">4sHII")  # magic, version, header length, crc32
MAX_CODE_BITS = 16
GROUP_WIDTH_BITS = 4  # a per-group width b in 1..16 is stored as b - 1
COUNT_BITS = 32
FLOAT_BITS = {"float32": 32, "float16": 16}
DENSE_DTYPES = {"float32": (torch.float32, np.uint32), "float16": (torch.float16, np.uint16),
                "int64": (torch.int64, np.uint64)}

Field = tuple[str, np.ndarray, int | np.ndarray]


class FormatError(ValueError):
    """A record or packed file that breaks the format contract."""


def _float_field(name: str, values: Any, float_dtype: str) -> Field:
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(float_dtype)).reshape(-1))
    return name, arr.view(np.uint32 if float_dtype == "float32" else np.uint16), FLOAT_BITS[float_dtype]


def _read_floats(reader: BitReader, n: int, float_dtype: str) -> np.ndarray:
    raw = reader.read(n, FLOAT_BITS[float_dtype])
    return raw.astype(np.uint32 if float_dtype == "float32" else np.uint16).view(float_dtype)


def _radix_group(levels: int) -> int:
    """How many base-``levels`` digits fit one word below 2**63."""
    g = 1
    while levels ** (g + 1) < 2**63:
        g += 1
    return g


RADIX_CHUNK_WORDS = 1 << 16  # words per vectorised step of base-K packing


def _radix_widths(n: int, levels: int) -> np.ndarray:
    """The bit width of every word holding ``n`` base-``levels`` codes (the last may hold fewer)."""
    g = _radix_group(levels)
    full, rest = divmod(n, g)
    widths = np.full(full + bool(rest), (levels**g - 1).bit_length(), dtype=np.int64)
    if rest:
        widths[-1] = (levels**rest - 1).bit_length()
    return widths


def _radix_bits(n: int, levels: int) -> int:
    """``_radix_widths(n, levels).sum()`` without building the array."""
    g = _radix_group(levels)
    full, rest = divmod(n, g)
    return full * (levels**g - 1).bit_length() + (levels**rest - 1).bit_length()


def _radix_pack(codes: np.ndarray, levels: int) -> np.ndarray:
    """Code i of a word is its base-``levels`` digit i: word = sum_i code_i * levels**i."""
    g = _radix_group(levels)
    words = np.empty(-(-codes.size // g), dtype=np.uint64)
    for first in range(0, words.size, RADIX_CHUNK_WORDS):
        chunk = codes[first * g:(first + RADIX_CHUNK_WORDS) * g]
        digits = np.zeros(-(-chunk.size // g) * g, dtype=np.uint64)
        digits[: chunk.size] = chunk
        digits = digits.reshape(-1, g)
        acc = np.zeros(digits.shape[0], dtype=np.uint64)
        for col in range(g - 1, -1, -1):
            acc = acc * np.uint64(levels) + digits[:, col]
        words[first:first + acc.size] = acc
    return words


def _radix_unpack(words: np.ndarray, n: int, levels: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    g = _radix_group(levels)
    codes = np.empty(words.size * g, dtype=dtype)
    for first in range(0, words.size, RADIX_CHUNK_WORDS):
        rest = words[first:first + RADIX_CHUNK_WORDS].astype(np.uint64)
        digits = np.empty((rest.size, g), dtype=np.uint64)
        for col in range(g):
            digits[:, col] = rest % np.uint64(levels)
            rest = rest // np.uint64(levels)
        codes[first * g:(first + rest.size) * g] = digits.reshape(-1)
    return codes[:n]


def _position_bits(numel: int) -> int:
    return max(1, (numel - 1).bit_length())


MAX_ELEMENTS_PER_MASK_BIT = 1 << 20  # a position-coded mask describes at most this many elements per bit it takes


def _check_mask_expansion(numel: int, kept: int) -> None:
    """A position-coded mask costs ``COUNT_BITS + kept * log2(numel)`` bits whatever ``numel`` is: bound
    the elements it may describe, so that no small file expands into an arbitrarily large tensor."""
    paid = COUNT_BITS + kept * _position_bits(numel)
    if numel > MAX_ELEMENTS_PER_MASK_BIT * paid:
        raise FormatError(f"a mask keeping {kept} of {numel} elements describes more than "
                          f"{MAX_ELEMENTS_PER_MASK_BIT} elements per bit it takes ({paid} bits)")


def _group_widths(group_bits: np.ndarray, group_size: int, numel: int, mask: np.ndarray | None) -> np.ndarray:
    """Every kept code's width (uint8): its group's, for consecutive groups of ``group_size``."""
    if mask is None:
        sizes = np.full(group_bits.size, group_size, dtype=np.int64)
        if sizes.size:
            sizes[-1] = numel - group_size * (sizes.size - 1)
    else:
        sizes = np.add.reduceat(mask, np.arange(0, numel, group_size), dtype=np.int64) if numel \
            else np.zeros(0, dtype=np.int64)
    return np.repeat(group_bits.astype(np.uint8), sizes)


def _code_dtype(width: int) -> type:
    """The unsigned dtype codes of at most ``width`` (<= MAX_CODE_BITS) bits are kept in."""
    return np.uint8 if width <= 8 else np.uint16


def code_width(levels: int) -> dict[str, int]:
    """The record field that stores codes of a K-level alphabet at what K levels cost: ``bits`` =
    log2 K when K is a power of two, else ``levels`` = K (base-K packing: log2 K + < 1 % per code)."""
    if levels < 2:
        raise FormatError(f"an alphabet needs at least 2 levels, got {levels}")
    return {"bits": levels.bit_length() - 1} if levels & (levels - 1) == 0 else {"levels": levels}


DEQUANTIZE_CHUNK = 1 << 16  # elements per step of QuantizedTensor.dequantize
CODE_COST_SLACK = 0.02  # bits per code a record may pay above log2(levels its codes can address)


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Bit for bit: same dtype, shape and bytes (or both absent)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def record_difference(a: Any, b: Any) -> str | None:
    """The first field in which two records (or codebooks) differ, bit for bit; None when they are equal."""
    if type(a) is not type(b):
        return f"record type {type(a).__name__} vs {type(b).__name__}"
    for f in dataclasses.fields(a):  # a record's or codebook's content
        name, x, y = f.name, getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            inner = record_difference(x, y)
            if inner is not None:
                return f"{name}.{inner}"
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not _same_array(x, y):
                return name
        elif x != y:
            return f"{name} ({x!r} vs {y!r})"
    return None


# --------------------------------------------------------------------------- codebooks
@dataclass
class AffineGrid:
    """``w = scale_c * (code - zero_c)``; ``scale``/``zero`` hold 1 (per tensor) or C values."""

    scale: np.ndarray
    zero: np.ndarray
    kind = "affine"

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float64))
        self.zero = np.atleast_1d(np.asarray(self.zero, dtype=np.float64))
        if self.scale.shape != self.zero.shape or self.scale.ndim != 1:
            raise FormatError("AffineGrid: scale and zero must be 1-D arrays of equal length")

    @property
    def channels(self) -> int:
        return self.scale.size

    def fields(self, float_dtype: str) -> list[Field]:
        return [_float_field("scale", self.scale, float_dtype), _float_field("zero", self.zero, float_dtype)]

    def round_to_storage(self, float_dtype: str) -> None:
        self.scale = self.scale.astype(float_dtype).astype(np.float64)
        self.zero = self.zero.astype(float_dtype).astype(np.float64)

    def meta(self) -> dict:
        return {"kind": self.kind, "channels": self.channels}

    @classmethod
    def read(cls, reader: BitReader, meta: dict, float_dtype: str) -> AffineGrid:
        c = meta["channels"]
        return cls(_read_floats(reader, c, float_dtype), _read_floats(reader, c, float_dtype))

    def dequantize(self, codes: np.ndarray, widths: np.ndarray, channel: np.ndarray) -> np.ndarray:
        ch = channel if self.channels > 1 else 0
        return self.scale[ch] * (codes.astype(np.float64) - self.zero[ch])

    def max_codes(self, bits: int) -> int:
        return 2**bits


@dataclass
class RangeGrid:
    """``w = lo + code * (hi - lo) / (2**b - 1)`` with b the code's own width (per group)."""

    lo: float
    hi: float
    kind = "range"

    def fields(self, float_dtype: str) -> list[Field]:
        return [_float_field("range", [self.lo, self.hi], float_dtype)]

    def round_to_storage(self, float_dtype: str) -> None:
        self.lo, self.hi = (float(np.asarray(v, dtype=float_dtype)) for v in (self.lo, self.hi))

    def meta(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def read(cls, reader: BitReader, meta: dict, float_dtype: str) -> RangeGrid:
        lo, hi = _read_floats(reader, 2, float_dtype)
        return cls(float(lo), float(hi))

    def dequantize(self, codes: np.ndarray, widths: np.ndarray, channel: np.ndarray) -> np.ndarray:
        steps = (2.0 ** np.asarray(widths, dtype=np.float64)) - 1.0
        return self.lo + codes.astype(np.float64) * ((self.hi - self.lo) / steps)

    def max_codes(self, bits: int) -> int:
        return 2**bits


@dataclass
class Codebook:
    """``w = values[code]``: an explicit table of K <= 2**b floats (LC, fixed codebooks)."""

    values: np.ndarray
    kind = "codebook"

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if self.values.size == 0:
            raise FormatError("Codebook: needs at least one value")

    def fields(self, float_dtype: str) -> list[Field]:
        return [_float_field("codebook", self.values, float_dtype)]

    def round_to_storage(self, float_dtype: str) -> None:
        self.values = self.values.astype(float_dtype).astype(np.float64)

    def meta(self) -> dict:
        return {"kind": self.kind, "size": int(self.values.size)}

    @classmethod
    def read(cls, reader: BitReader, meta: dict, float_dtype: str) -> Codebook:
        return cls(_read_floats(reader, meta["size"], float_dtype))

    def dequantize(self, codes: np.ndarray, widths: np.ndarray, channel: np.ndarray) -> np.ndarray:
        return self.values[codes.astype(np.int64)]

    def max_codes(self, bits: int) -> int:
        return min(2**bits, self.values.size)


CODEBOOKS = {cls.kind: cls for cls in (AffineGrid, RangeGrid, Codebook)}


# --------------------------------------------------------------------------- records
@dataclass
class DenseTensor:
    """A tensor kept in floating point (biases, norms) or an integer buffer."""

    values: np.ndarray
    dtype: str = "float32"
    role: str = "param"  # "param" counts in the compression ratio, "buffer" does not

    def __post_init__(self) -> None:
        if self.dtype not in DENSE_DTYPES:
            raise FormatError(f"DenseTensor: dtype must be one of {sorted(DENSE_DTYPES)}, got {self.dtype!r}")
        torch_dtype, _ = DENSE_DTYPES[self.dtype]
        self.values = np.asarray(torch.as_tensor(np.asarray(self.values)).to(torch_dtype).numpy())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def numel(self) -> int:
        return int(self.values.size)

    def fields(self) -> list[Field]:
        _, raw = DENSE_DTYPES[self.dtype]
        return [("values", np.ascontiguousarray(self.values).reshape(-1).view(raw), 8 * raw().itemsize)]

    def size_bits(self) -> int:
        return _fields_bits(self.fields())

    def meta(self) -> dict:
        return {"type": "dense", "shape": list(self.shape), "dtype": self.dtype, "role": self.role}

    @classmethod
    def read(cls, reader: BitReader, meta: dict) -> DenseTensor:
        _, raw = DENSE_DTYPES[meta["dtype"]]
        shape = tuple(meta["shape"])
        vals = reader.read(math.prod(shape), 8 * raw().itemsize, dtype=raw).view(np.dtype(meta["dtype"]))
        return cls(vals.reshape(shape), meta["dtype"], meta["role"])

    def dequantize(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self.values))


@dataclass
class QuantizedTensor:
    """Integer codes on a codebook, with optional mask, per-channel scales and per-group widths.

    ``codes`` holds one code per *kept* element (all elements without a mask), in row-major
    order. Widths: ``bits`` for the whole tensor, or ``group_bits`` for consecutive groups of
    ``group_size`` elements of the flattened tensor (the last group may be shorter), or
    ``levels`` = K for base-K packing of codes 0..K−1 (K not a power of two).
    """

    shape: tuple[int, ...]
    codes: np.ndarray
    codebook: AffineGrid | RangeGrid | Codebook
    bits: int | None = None
    group_size: int = 0
    group_bits: np.ndarray | None = None
    levels: int | None = None
    mask: np.ndarray | None = None
    channel_scale: np.ndarray | None = None
    float_dtype: str = "float32"
    role: str = field(default="param", init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if min(self.shape, default=0) < 0:
            raise FormatError(f"shape {list(self.shape)} has a negative size")
        codes = np.asarray(self.codes).reshape(-1)
        if self.float_dtype not in FLOAT_BITS:
            raise FormatError(f"float_dtype must be one of {sorted(FLOAT_BITS)}, got {self.float_dtype!r}")
        if sum(x is not None for x in (self.bits, self.group_bits, self.levels)) != 1:
            raise FormatError("QuantizedTensor: give exactly one of `bits`, `group_bits` or `levels`")
        if self.levels is not None and not 2 <= self.levels <= 2**MAX_CODE_BITS:
            raise FormatError(f"levels must lie in 2..{2**MAX_CODE_BITS}, got {self.levels}")
        if self.group_bits is not None:
            self.group_bits = np.asarray(self.group_bits, dtype=np.int64).reshape(-1)
            if self.group_size < 1:
                raise FormatError("QuantizedTensor: per-group widths need group_size >= 1")
            n_groups = -(-self.numel // self.group_size)
            if self.group_bits.size != n_groups:
                raise FormatError(f"QuantizedTensor: {self.group_bits.size} group widths for "
                                  f"{n_groups} groups of {self.group_size}")
        widths = np.atleast_1d(self.group_bits if self.group_bits is not None else self.bits or 1)
        if widths.size and (widths.min() < 1 or widths.max() > MAX_CODE_BITS):
            raise FormatError(f"code widths must lie in 1..{MAX_CODE_BITS}, got {widths.min()}..{widths.max()}")
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool).reshape(-1)
            if self.mask.size != self.numel:
                raise FormatError(f"mask has {self.mask.size} entries for a tensor of {self.numel}")
        kept = self.kept
        if codes.size != kept:
            raise FormatError(f"{codes.size} codes for {kept} kept elements")
        if self._mask_encoding() == "positions":
            _check_mask_expansion(self.numel, kept)
        if self.channel_scale is not None:
            self.channel_scale = np.asarray(self.channel_scale, dtype=np.float64).reshape(-1)
        for name, n in (("codebook", getattr(self.codebook, "channels", 1)),
                        ("channel_scale", 1 if self.channel_scale is None else self.channel_scale.size)):
            if n > 1 and self.shape[:1] != (n,):
                raise FormatError(f"{name} has {n} channels, the tensor's axis 0 has {self.shape[:1]}")
        width = self._width()
        if codes.size:
            if codes.dtype.kind == "i" and codes.min() < 0:
                raise FormatError(f"code {int(codes.min())} is negative")
            limit = np.array([self.codebook.max_codes(int(b)) for b in range(MAX_CODE_BITS + 1)])
            if self.levels is not None:
                limit = np.minimum(limit, self.levels)
            if isinstance(width, int):
                bad = np.zeros(0, dtype=bool) if codes.max() < limit[width] else codes >= limit[width]
            else:
                bad = codes >= limit[width]
            if np.any(bad):
                i = int(np.argmax(bad))
                w = width if isinstance(width, int) else int(width[i])
                raise FormatError(f"code {int(codes[i])} is outside the {int(limit[w])}-entry codebook")
        top = width if isinstance(width, int) else int(width.max(initial=1))
        self.codes = codes.astype(_code_dtype(top))
        # side information is evaluated at the precision it is stored with
        self.codebook.round_to_storage(self.float_dtype)
        if self.channel_scale is not None:
            self.channel_scale = self.channel_scale.astype(self.float_dtype).astype(np.float64)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def kept(self) -> int:
        return self.numel if self.mask is None else int(self.mask.sum())

    def _width(self) -> int | np.ndarray:
        """The bit width of the codes: one int when all share it (for base-K codes: the width that
        holds K levels), else every code's (uint8, from its group's width)."""
        if self.levels is not None:
            return max(1, (self.levels - 1).bit_length())
        if self.group_bits is None:
            return self.bits
        return _group_widths(self.group_bits, self.group_size, self.numel, self.mask)

    def code_widths(self) -> np.ndarray:
        """The bit width of every code."""
        width = self._width()
        return np.full(self.kept, width, dtype=np.int64) if isinstance(width, int) else width.astype(np.int64)

    def _mask_encoding(self) -> str:
        """Bitmap (numel bits) or kept positions (count + positions), whichever is smaller."""
        if self.mask is None:
            return "none"
        positions = COUNT_BITS + self.kept * _position_bits(self.numel)
        return "positions" if positions < self.numel else "bitmap"

    def fields(self) -> list[Field]:
        out: list[Field] = []
        enc = self._mask_encoding()
        if enc == "bitmap":
            out.append(("mask", self.mask, 1))
        elif enc == "positions":
            out.append(("mask_count", np.array([self.kept]), COUNT_BITS))
            out.append(("mask_positions", np.flatnonzero(self.mask), _position_bits(self.numel)))
        if self.group_bits is not None:
            out.append(("group_bits", self.group_bits - 1, GROUP_WIDTH_BITS))
        out += self.codebook.fields(self.float_dtype)
        if self.channel_scale is not None:
            out.append(_float_field("channel_scale", self.channel_scale, self.float_dtype))
        if self.levels is not None:
            out.append(("codes", _radix_pack(self.codes, self.levels), _radix_widths(self.kept, self.levels)))
        else:
            out.append(("codes", self.codes, self._width()))
        return out

    def size_bits(self) -> int:
        return _fields_bits(self.fields())

    def overpaid(self, slack: float = CODE_COST_SLACK) -> str | None:
        """Where codes cost more than their codebook needs: per code width w, the bits paid per code
        must be at most log2(levels a code of that width can address) + ``slack`` (the levels: 2**w on a
        grid, at most the table's size for an explicit codebook, K for base-K codes, whose last, partial
        word may round up by one bit more). None when they do."""
        if not self.kept:
            return None
        if self.levels is not None:
            paid = int(np.sum(_radix_widths(self.kept, self.levels)))
            needed = math.log2(min(self.levels, self.codebook.max_codes(int(self.code_widths()[0]))))
            if paid <= self.kept * (needed + slack) + 1:
                return None
            return f"{paid / self.kept:.3f} bits per base-{self.levels} code, needs {needed:.3f}"
        for w in np.unique(self._width()):
            addressable = self.codebook.max_codes(int(w))
            needed = math.log2(addressable) if addressable > 1 else 0.0
            if w > needed + slack:
                return (f"{int(w)}-bit codes address {addressable} levels of its {self.codebook.kind} "
                        f"(needs {needed:.3f} bits)")
        return None

    def meta(self) -> dict:
        return {
            "type": "quantized", "shape": list(self.shape), "bits": self.bits, "levels": self.levels,
            "group_size": self.group_size, "grouped": self.group_bits is not None,
            "mask": self._mask_encoding(), "codebook": self.codebook.meta(),
            "channel_scale": None if self.channel_scale is None else int(self.channel_scale.size),
            "float_dtype": self.float_dtype,
        }

    @classmethod
    def read(cls, reader: BitReader, meta: dict) -> QuantizedTensor:
        """The record ``meta`` (a validated header entry) describes, from ``reader``; every array is
        allocated only after the payload is known to hold it."""
        shape = tuple(meta["shape"])
        numel = math.prod(shape)
        fd = meta["float_dtype"]
        mask = None
        if meta["mask"] == "bitmap":
            mask = reader.read(numel, 1, dtype=bool)
        elif meta["mask"] == "positions":
            count = int(reader.read(1, COUNT_BITS)[0])
            if count > numel:
                raise FormatError(f"mask keeps {count} of {numel} elements")
            _check_mask_expansion(numel, count)
            pos = reader.read(count, _position_bits(numel), dtype=np.int64)
            if pos.size and pos.max() >= numel:
                raise FormatError("mask position beyond the tensor")
            mask = np.zeros(numel, dtype=bool)
            mask[pos] = True
        group_bits = None
        if meta["grouped"]:
            group_bits = reader.read(-(-numel // meta["group_size"]), GROUP_WIDTH_BITS, dtype=np.int64) + 1
        codebook = CODEBOOKS[meta["codebook"]["kind"]].read(reader, meta["codebook"], fd)
        channel_scale = None if meta["channel_scale"] is None else _read_floats(reader, meta["channel_scale"], fd)
        n = numel if mask is None else int(mask.sum())
        levels = meta["levels"]
        if levels is not None:
            reader.need(_radix_bits(n, levels), f"{n} base-{levels} codes")
            width = max(1, (levels - 1).bit_length())
            widths = _radix_widths(n, levels)
            codes = _radix_unpack(reader.read(widths.size, widths), n, levels, _code_dtype(width))
        elif group_bits is None:
            codes = reader.read(n, meta["bits"], dtype=_code_dtype(meta["bits"]))
        else:
            reader.need(n, f"{n} codes")  # at least one bit each, before their widths are spelled out
            widths = _group_widths(group_bits, meta["group_size"], numel, mask)
            codes = reader.read(n, widths, dtype=_code_dtype(int(group_bits.max(initial=1))))
        return cls(shape, codes, codebook, bits=meta["bits"], group_size=meta["group_size"], group_bits=group_bits,
                   levels=levels, mask=mask, channel_scale=channel_scale, float_dtype=fd)

    def dequantize(self) -> torch.Tensor:
        """The dense float32 tensor these codes stand for, computed in float64 chunks of
        ``DEQUANTIZE_CHUNK`` elements straight into the float32 result."""
        out = np.zeros(self.numel, dtype=np.float32)
        per_channel = self.numel // self.shape[0] if self.shape and self.shape[0] else 1
        width = self._width()
        done = 0  # codes consumed (the kept elements before this chunk)
        for start in range(0, self.numel, DEQUANTIZE_CHUNK):
            stop = min(self.numel, start + DEQUANTIZE_CHUNK)
            index = np.arange(start, stop) if self.mask is None else np.flatnonzero(self.mask[start:stop]) + start
            codes = self.codes[done:done + index.size]
            widths = width if isinstance(width, int) else width[done:done + index.size]
            done += index.size
            channel = index // per_channel
            vals = self.codebook.dequantize(codes, widths, channel)
            if self.channel_scale is not None:
                vals = vals * (self.channel_scale[channel] if self.channel_scale.size > 1 else self.channel_scale[0])
            out[index] = vals
        return torch.from_numpy(out.reshape(self.shape))


Record = QuantizedTensor | DenseTensor
RECORDS = {"quantized": QuantizedTensor, "dense": DenseTensor}


def _fields_bits(fields: list[Field]) -> int:
    total = 0
    for _, values, widths in fields:
        total += int(np.sum(widths)) if np.ndim(widths) else int(widths) * int(np.size(values))
    return total


# --------------------------------------------------------------------------- the header
def _int(minimum: int, maximum: int | None = None) -> dict:
    return {"type": "integer", "minimum": minimum, **({} if maximum is None else {"maximum": maximum})}


_CODEBOOK_SCHEMA = {
    "type": "object", "required": ["kind"],
    "properties": {"kind": {"enum": sorted(CODEBOOKS)}},
    "allOf": [
        {"if": {"required": ["kind"], "properties": {"kind": {"const": "affine"}}},
         "then": {"required": ["channels"], "properties": {"channels": _int(1)}}},
        {"if": {"required": ["kind"], "properties": {"kind": {"const": "codebook"}}},
         "then": {"required": ["size"], "properties": {"size": _int(1)}}},
    ],
}
_TENSOR_SCHEMA = {
    "type": "object", "required": ["name", "type", "shape"],
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": sorted(RECORDS)},
        "shape": {"type": "array", "items": _int(0)},
    },
    "allOf": [
        {"if": {"required": ["type"], "properties": {"type": {"const": "dense"}}},
         "then": {"required": ["dtype", "role"],
                  "properties": {"dtype": {"enum": sorted(DENSE_DTYPES)}, "role": {"enum": ["param", "buffer"]}}}},
        {"if": {"required": ["type"], "properties": {"type": {"const": "quantized"}}},
         "then": {"required": ["bits", "levels", "group_size", "grouped", "mask", "codebook", "channel_scale",
                               "float_dtype"],
                  "properties": {
                      "bits": {"anyOf": [{"type": "null"}, _int(1, MAX_CODE_BITS)]},
                      "levels": {"anyOf": [{"type": "null"}, _int(2, 2**MAX_CODE_BITS)]},
                      "group_size": _int(0), "grouped": {"type": "boolean"},
                      "mask": {"enum": ["none", "bitmap", "positions"]},
                      "codebook": _CODEBOOK_SCHEMA,
                      "channel_scale": {"anyOf": [{"type": "null"}, _int(1)]},
                      "float_dtype": {"enum": sorted(FLOAT_BITS)}}}},
        {"if": {"required": ["grouped"], "properties": {"grouped": {"const": True}}},
         "then": {"properties": {"group_size": _int(1)}}},
    ],
}
HEADER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "required": ["arch", "arch_kwargs", "payload_bits", "tensors"],
    "properties": {
        "arch": {"type": "string"}, "arch_kwargs": {"type": "object"},
        "payload_bits": _int(0), "tensors": {"type": "array", "items": _TENSOR_SCHEMA},
    },
}


@functools.cache
def _header_validator():
    import jsonschema

    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(  # 1.0 and true are not integers here
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(HEADER_SCHEMA)


def read_header(raw: bytes, source: str) -> dict:
    """The JSON header of a packed file, checked against :data:`HEADER_SCHEMA` (types, required keys,
    record and codebook kinds, dtype names, non-negative shapes) before any payload is read: a
    :class:`FormatError` names ``source`` and the first key that breaks it."""
    import jsonschema

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{source}: the header is not JSON ({err})") from err
    error = jsonschema.exceptions.best_match(_header_validator().iter_errors(header))
    if error is not None:
        message = error.message if len(error.message) <= 200 else error.message[:200] + " ..."
        raise FormatError(f"{source}: malformed header at {error.json_path}: {message}")
    return header


# --------------------------------------------------------------------------- the model
def tied_keys(model: torch.nn.Module) -> dict[str, str]:
    """State-dict keys whose tensor is an earlier key's tensor (tied weights, e.g. an LM's input
    embedding and output projection): ``{alias: first key}``. Only the first key is recorded."""
    first: dict[tuple, str] = {}
    aliases = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if value.numel() == 0:
            continue
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
    return aliases


@dataclass
class CompressedModel:
    """An architecture id with its builder kwargs, and one record per state-dict entry."""

    arch: str
    arch_kwargs: dict
    records: dict[str, Record]

    def size_bits(self, role: str | None = None, quantized_only: bool = False) -> int:
        return sum(r.size_bits() for r in self.records.values()
                   if (role is None or r.role == role) and (not quantized_only or isinstance(r, QuantizedTensor)))

    def stats(self) -> dict[str, float]:
        """Size figures reported for every run (docs/architecture.md, "The compressed-model format": Reported)."""
        quant = [r for r in self.records.values() if isinstance(r, QuantizedTensor)]
        n_quant = sum(r.numel for r in quant)
        n_params = sum(r.numel for r in self.records.values() if r.role == "param")
        param_bits = self.size_bits(role="param")
        total = self.size_bits()
        return {
            "size_bits": float(param_bits),
            "bpw": self.size_bits(quantized_only=True) / n_quant if n_quant else 32.0,
            "model_bytes": float(math.ceil(total / 8)),
            "compression_ratio": 32.0 * n_params / param_bits if param_bits else float("nan"),
            "n_params": float(n_params),
            "n_quantized": float(n_quant),
        }

    # ---- packing
    def pack(self) -> bytes:
        writer = BitWriter()
        for record in self.records.values():
            for _, values, widths in record.fields():
                writer.write(values, widths)
        payload, payload_bits = writer.getvalue(), writer.nbits
        del writer
        header = json.dumps({
            "arch": self.arch, "arch_kwargs": self.arch_kwargs, "payload_bits": payload_bits,
            "tensors": [{"name": n, **r.meta()} for n, r in self.records.items()],
        }, sort_keys=True).encode()
        crc = zlib.crc32(payload, zlib.crc32(header))
        return b"".join((_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), crc), header, payload))

    @classmethod
    def unpack(cls, data: bytes, source: str = "<bytes>") -> CompressedModel:
        if len(data) < _PREFIX.size:
            raise FormatError(f"{source}: truncated: {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
        data = memoryview(data)
        magic, version, header_len, crc = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise FormatError(f"{source}: not a quantbench compressed model (magic {magic!r}, expected {MAGIC!r})")
        if version != FORMAT_VERSION:
            raise FormatError(f"{source}: format version {version}; this quantbench reads version {FORMAT_VERSION}")
        body = data[_PREFIX.size:]
        if len(body) < header_len:
            raise FormatError(f"{source}: truncated: header needs {header_len} bytes, {len(body)} present")
        if zlib.crc32(body) != crc:
            raise FormatError(f"{source}: corrupted: checksum mismatch (crc32 {zlib.crc32(body):#010x}, "
                              f"header says {crc:#010x})")
        header = read_header(bytes(body[:header_len]), source)
        payload = body[header_len:]
        if len(payload) != -(-header["payload_bits"] // 8):
            raise FormatError(f"{source}: payload is {len(payload)} bytes, header says "
                              f"{-(-header['payload_bits'] // 8)} (payload_bits {header['payload_bits']})")
        reader = BitReader(payload)
        records: dict[str, Record] = {}
        for i, meta in enumerate(header["tensors"]):
            where = f"{source}: tensors[{i}] ({meta['name']!r})"
            if meta["name"] in records:
                raise FormatError(f"{where}: a second tensor of that name")
            try:
                records[meta["name"]] = RECORDS[meta["type"]].read(reader, meta)
            except (FormatError, EOFError, ValueError, OverflowError) as err:
                raise FormatError(f"{where}: {err}") from err
        if reader.pos != header["payload_bits"]:
            raise FormatError(f"{source}: records read {reader.pos} bits, header says {header['payload_bits']}")
        return cls(header["arch"], header["arch_kwargs"], records)

    def save(self, path: str | Path) -> int:
        """Write the packed model atomically; returns its size in bytes."""
        data = self.pack()
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
        return len(data)

    @classmethod
    def load(cls, path: str | Path) -> CompressedModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"compressed model {path} does not exist")
        return cls.unpack(path.read_bytes(), source=str(path))

    def check_code_costs(self, source: str = "<model>") -> None:
        """Raise :class:`FormatError` naming the first quantized tensor whose codes cost more than its
        codebook needs (:meth:`QuantizedTensor.overpaid`): a budget pays only for levels that can be used."""
        for name, record in self.records.items():
            reason = record.overpaid() if isinstance(record, QuantizedTensor) else None
            if reason is not None:
                raise FormatError(f"{source}: tensor {name!r} pays for levels it cannot use: {reason}")

    def check_same_as(self, produced: CompressedModel, source: str = "<packed>") -> None:
        """Raise :class:`FormatError` naming the first tensor (and field) in which these records, read
        back from ``source``, differ bit for bit from ``produced`` (what the method returned)."""
        if (self.arch, self.arch_kwargs) != (produced.arch, produced.arch_kwargs):
            raise FormatError(f"{source}: architecture {self.arch} {self.arch_kwargs} read back, the method produced "
                              f"{produced.arch} {produced.arch_kwargs}")
        if list(self.records) != list(produced.records):
            missing = sorted(set(produced.records) - set(self.records))
            extra = sorted(set(self.records) - set(produced.records))
            raise FormatError(f"{source}: tensors read back differ from the method's: missing {missing[:5]}, "
                              f"unexpected {extra[:5]} (or in another order)")
        for name, record in produced.records.items():
            diff = record_difference(record, self.records[name])
            if diff is not None:
                raise FormatError(f"{source}: tensor {name!r} read back differs from what the method produced "
                                  f"(field {diff}): packing changed it")

    # ---- back to a network
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every record dequantized (one pass over the codes)."""
        return {name: r.dequantize() for name, r in self.records.items()}

    def to_dense(self, model: torch.nn.Module, weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """Load the dequantized weights (``weights``: this model's :meth:`state_dict`, computed once
        by the caller; else computed here) into ``model`` (strict: every entry must match; a tied
        weight's second name, see :func:`tied_keys`, has no record of its own)."""
        weights = self.state_dict() if weights is None else weights
        tied = tied_keys(model)
        own = {k: v for k, v in model.state_dict().items() if k not in tied}
        missing = sorted(set(own) - set(self.records))
        extra = sorted(set(self.records) - set(own))
        if missing or extra:
            raise FormatError(f"records do not match the {self.arch} state dict: "
                              f"missing {missing[:5]}, unexpected {extra[:5]}")
        for name, tensor in weights.items():
            if tuple(own[name].shape) != tuple(tensor.shape):
                raise FormatError(f"{name}: record shape {tuple(tensor.shape)}, model has {tuple(own[name].shape)}")
        result = model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=False)
        if set(result.missing_keys) - set(tied) or result.unexpected_keys:
            raise FormatError(f"{self.arch}: could not load {result}")
        return model

    def verify_on_codebook(self, model: torch.nn.Module, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Assert that every quantized weight of ``model`` equals its record's dequantized value
        (``weights``: this model's :meth:`state_dict`, when the caller has it)."""
        own = model.state_dict()
        for name, record in self.records.items():
            if isinstance(record, QuantizedTensor):
                expected = record.dequantize() if weights is None else weights[name]
                actual = own[name].detach().cpu().float()
                if not torch.equal(actual, expected):
                    bad = int((actual != expected).sum())
                    raise FormatError(f"{name}: {bad} weights of the evaluated model are off their codebook")
