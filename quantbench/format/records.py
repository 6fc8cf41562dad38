"""Records: one per state-dict entry (:class:`QuantizedTensor`, :class:`DenseTensor`), and the
one place that computes size.

Every record lists its payload *fields* (``(name, unsigned ints, bit width)``); ``size_bits()``
sums those widths and the container writes exactly those fields, so the reported size cannot
drift from the file. Codes are stored at a fixed width, at per-group widths, or base-K packed
(several codes per word; :mod:`quantbench.format.encodings`); a pruning mask as a bitmap or as kept positions,
whichever is smaller. A quantized element is ``w_i *= channel_scale_c`` after its codebook
(:mod:`quantbench.format.codebooks`) when per-channel scales are present, and ``w_i = 0`` where the
mask is 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from quantbench.format.bitpack import BitReader
from quantbench.format.codebooks import (
    CODEBOOKS,
    FLOAT_BITS,
    AffineGrid,
    Codebook,
    Field,
    FormatError,
    RangeGrid,
    _float_field,
    _read_floats,
)
from quantbench.format.encodings import (
    COUNT_BITS,
    MAX_CODE_BITS,
    check_mask_expansion,
    code_dtype,
    group_widths,
    index_bits,
    radix_bits,
    radix_pack,
    radix_unpack,
    radix_widths,
)

GROUP_WIDTH_BITS = 4  # a per-group width b in 1..16 is stored as b - 1
DENSE_DTYPES = {"float32": (torch.float32, np.uint32), "float16": (torch.float16, np.uint16),
                "int64": (torch.int64, np.uint64)}


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

    def nonfinite(self) -> str | None:
        """``"values"`` when a float entry is NaN or infinite, else None."""
        return "values" if self.dtype != "int64" and not np.isfinite(self.values).all() else None


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
            check_mask_expansion(self.numel, kept)
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
        self.codes = codes.astype(code_dtype(top))
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
            return index_bits(self.levels)
        if self.group_bits is None:
            return self.bits
        return group_widths(self.group_bits, self.group_size, self.numel, self.mask)

    def code_widths(self) -> np.ndarray:
        """The bit width of every code."""
        width = self._width()
        return np.full(self.kept, width, dtype=np.int64) if isinstance(width, int) else width.astype(np.int64)

    def _mask_encoding(self) -> str:
        """Bitmap (numel bits) or kept positions (count + positions), whichever is smaller."""
        if self.mask is None:
            return "none"
        positions = COUNT_BITS + self.kept * index_bits(self.numel)
        return "positions" if positions < self.numel else "bitmap"

    def fields(self) -> list[Field]:
        out: list[Field] = []
        enc = self._mask_encoding()
        if enc == "bitmap":
            out.append(("mask", self.mask, 1))
        elif enc == "positions":
            out.append(("mask_count", np.array([self.kept]), COUNT_BITS))
            out.append(("mask_positions", np.flatnonzero(self.mask), index_bits(self.numel)))
        if self.group_bits is not None:
            out.append(("group_bits", self.group_bits - 1, GROUP_WIDTH_BITS))
        out += self.codebook.fields(self.float_dtype)
        if self.channel_scale is not None:
            out.append(_float_field("channel_scale", self.channel_scale, self.float_dtype))
        if self.levels is not None:
            out.append(("codes", radix_pack(self.codes, self.levels), radix_widths(self.kept, self.levels)))
        else:
            out.append(("codes", self.codes, self._width()))
        return out

    def size_bits(self) -> int:
        return _fields_bits(self.fields())

    def nonfinite(self) -> str | None:
        """The first float field (of the codebook, or the per-channel scales) that holds a NaN or an
        infinity, else None: the dequantized weights are then non-finite too."""
        floats = {f.name: getattr(self.codebook, f.name) for f in dataclasses.fields(self.codebook)}
        floats["channel_scale"] = self.channel_scale
        for key, value in floats.items():
            if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
                return f"{type(self.codebook).__name__}.{key}" if key != "channel_scale" else key
        return None

    def overpaid(self, slack: float = CODE_COST_SLACK) -> str | None:
        """Where codes cost more than their codebook needs: per code width w, the bits paid per code
        must be at most log2(levels a code of that width can address) + ``slack`` (the levels: 2**w on a
        grid, at most the table's size for an explicit codebook, K for base-K codes, whose last, partial
        word may round up by one bit more). None when they do."""
        if not self.kept:
            return None
        if self.levels is not None:
            paid = int(np.sum(radix_widths(self.kept, self.levels)))
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
            check_mask_expansion(numel, count)
            pos = reader.read(count, index_bits(numel), dtype=np.int64)
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
            reader.need(radix_bits(n, levels), f"{n} base-{levels} codes")
            width = index_bits(levels)
            widths = radix_widths(n, levels)
            codes = radix_unpack(reader.read(widths.size, widths), n, levels, code_dtype(width))
        elif group_bits is None:
            codes = reader.read(n, meta["bits"], dtype=code_dtype(meta["bits"]))
        else:
            reader.need(n, f"{n} codes")  # at least one bit each, before their widths are spelled out
            widths = group_widths(group_bits, meta["group_size"], numel, mask)
            codes = reader.read(n, widths, dtype=code_dtype(int(group_bits.max(initial=1))))
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

