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


def _radix_widths(n: int, levels: int) -> np.ndarray:
    g = _radix_group(levels)
    full, rest = divmod(n, g)
    widths = [(levels**g - 1).bit_length()] * full + ([(levels**rest - 1).bit_length()] if rest else [])
    return np.array(widths, dtype=np.int64)


def _radix_pack(codes: np.ndarray, levels: int) -> np.ndarray:
    """Code i of a word is its base-``levels`` digit i: word = sum_i code_i * levels**i."""
    g = _radix_group(levels)
    padded = np.zeros(-(-codes.size // g) * g, dtype=np.uint64)
    padded[: codes.size] = codes
    digits = padded.reshape(-1, g)
    words = np.zeros(digits.shape[0], dtype=np.uint64)
    for col in range(g - 1, -1, -1):
        words = words * np.uint64(levels) + digits[:, col]
    return words


def _radix_unpack(words: np.ndarray, n: int, levels: int) -> np.ndarray:
    g = _radix_group(levels)
    digits = np.empty((words.size, g), dtype=np.uint64)
    rest = words.astype(np.uint64)
    for col in range(g):
        digits[:, col] = rest % np.uint64(levels)
        rest = rest // np.uint64(levels)
    return digits.reshape(-1)[:n]


def _position_bits(numel: int) -> int:
    return max(1, math.ceil(math.log2(numel))) if numel > 1 else 1


def code_width(levels: int) -> dict[str, int]:
    """The record field that stores codes of a K-level alphabet at what K levels cost: ``bits`` =
    log2 K when K is a power of two, else ``levels`` = K (base-K packing: log2 K + < 1 % per code)."""
    if levels < 2:
        raise FormatError(f"an alphabet needs at least 2 levels, got {levels}")
    return {"bits": levels.bit_length() - 1} if levels & (levels - 1) == 0 else {"levels": levels}


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
        n = int(np.prod(shape, dtype=np.int64))
        vals = reader.read(n, 8 * raw().itemsize).astype(raw).view(np.dtype(meta["dtype"]))
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
        self.codes = np.asarray(self.codes).reshape(-1).astype(np.uint64)
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
            if self.group_bits.size != math.ceil(self.numel / self.group_size):
                raise FormatError(
                    f"QuantizedTensor: {self.group_bits.size} group widths for "
                    f"{math.ceil(self.numel / self.group_size)} groups of {self.group_size}"
                )
        widths = np.atleast_1d(self.group_bits if self.group_bits is not None else self.bits or 1)
        if widths.min() < 1 or widths.max() > MAX_CODE_BITS:
            raise FormatError(f"code widths must lie in 1..{MAX_CODE_BITS}, got {widths.min()}..{widths.max()}")
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool).reshape(-1)
            if self.mask.size != self.numel:
                raise FormatError(f"mask has {self.mask.size} entries for a tensor of {self.numel}")
        if self.codes.size != self.kept:
            raise FormatError(f"{self.codes.size} codes for {self.kept} kept elements")
        if self.channel_scale is not None:
            self.channel_scale = np.asarray(self.channel_scale, dtype=np.float64).reshape(-1)
        for name, n in (("codebook", getattr(self.codebook, "channels", 1)),
                        ("channel_scale", 1 if self.channel_scale is None else self.channel_scale.size)):
            if n > 1 and n != self.shape[0]:
                raise FormatError(f"{name} has {n} channels, the tensor's axis 0 has {self.shape[0]}")
        if self.codes.size:
            w = self.code_widths()
            limit = np.array([self.codebook.max_codes(int(b)) for b in range(MAX_CODE_BITS + 1)])
            if self.levels is not None:
                limit = np.minimum(limit, self.levels)
            bad = self.codes >= limit[w]
            if np.any(bad):
                i = int(np.argmax(bad))
                raise FormatError(f"code {int(self.codes[i])} is outside the {int(limit[w[i]])}-entry codebook")
        # side information is evaluated at the precision it is stored with
        self.codebook.round_to_storage(self.float_dtype)
        if self.channel_scale is not None:
            self.channel_scale = self.channel_scale.astype(self.float_dtype).astype(np.float64)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> int:
        return self.numel if self.mask is None else int(self.mask.sum())

    def code_widths(self) -> np.ndarray:
        """The bit width of every code (for base-K codes: the width that holds K levels)."""
        if self.levels is not None:
            return np.full(self.kept, max(1, math.ceil(math.log2(self.levels))), dtype=np.int64)
        if self.group_bits is None:
            return np.full(self.kept, self.bits, dtype=np.int64)
        w = np.repeat(self.group_bits, self.group_size)[: self.numel]
        return w if self.mask is None else w[self.mask]

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
            out.append(("mask", self.mask.astype(np.uint64), 1))
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
            out.append(("codes", self.codes, self.code_widths()))
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
        for w in np.unique(self.code_widths()):
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
        shape = tuple(meta["shape"])
        numel = int(np.prod(shape, dtype=np.int64))
        fd = meta["float_dtype"]
        mask = None
        if meta["mask"] == "bitmap":
            mask = reader.read(numel, 1).astype(bool)
        elif meta["mask"] == "positions":
            count = int(reader.read(1, COUNT_BITS)[0])
            if count > numel:
                raise FormatError(f"mask keeps {count} of {numel} elements")
            mask = np.zeros(numel, dtype=bool)
            pos = reader.read(count, _position_bits(numel)).astype(np.int64)
            if pos.size and pos.max() >= numel:
                raise FormatError("mask position beyond the tensor")
            mask[pos] = True
        group_bits = None
        if meta["grouped"]:
            n_groups = math.ceil(numel / meta["group_size"])
            group_bits = reader.read(n_groups, GROUP_WIDTH_BITS).astype(np.int64) + 1
        codebook = CODEBOOKS[meta["codebook"]["kind"]].read(reader, meta["codebook"], fd)
        channel_scale = None if meta["channel_scale"] is None else _read_floats(reader, meta["channel_scale"], fd)
        n = numel if mask is None else int(mask.sum())
        levels = meta["levels"]
        if levels is not None:
            widths = _radix_widths(n, levels)
            codes = _radix_unpack(reader.read(widths.size, widths), n, levels)
        else:
            if group_bits is None:
                widths = meta["bits"]
            else:
                w = np.repeat(group_bits, meta["group_size"])[:numel]
                widths = w if mask is None else w[mask]
            codes = reader.read(n, widths)
        return cls(shape, codes, codebook, bits=meta["bits"], group_size=meta["group_size"], group_bits=group_bits,
                   levels=levels, mask=mask, channel_scale=channel_scale, float_dtype=fd)

    def dequantize(self) -> torch.Tensor:
        """The dense float32 tensor these codes stand for."""
        kept_index = np.arange(self.numel) if self.mask is None else np.flatnonzero(self.mask)
        per_channel = self.numel // self.shape[0] if self.shape else 1
        channel = kept_index // per_channel
        vals = self.codebook.dequantize(self.codes, self.code_widths(), channel)
        if self.channel_scale is not None:
            vals = vals * (self.channel_scale[channel] if self.channel_scale.size > 1 else self.channel_scale[0])
        dense = np.zeros(self.numel, dtype=np.float64)
        dense[kept_index] = vals
        return torch.from_numpy(dense.astype(np.float32).reshape(self.shape))


Record = QuantizedTensor | DenseTensor
RECORDS = {"quantized": QuantizedTensor, "dense": DenseTensor}


def _fields_bits(fields: list[Field]) -> int:
    total = 0
    for _, values, widths in fields:
        total += int(np.sum(widths)) if np.ndim(widths) else int(widths) * int(np.size(values))
    return total


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
        """Size figures reported for every run (DESIGN §4)."""
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
        payload = writer.getvalue()
        header = json.dumps({
            "arch": self.arch, "arch_kwargs": self.arch_kwargs, "payload_bits": writer.nbits,
            "tensors": [{"name": n, **r.meta()} for n, r in self.records.items()],
        }, sort_keys=True).encode()
        crc = zlib.crc32(header + payload)
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), crc) + header + payload

    @classmethod
    def unpack(cls, data: bytes, source: str = "<bytes>") -> CompressedModel:
        if len(data) < _PREFIX.size:
            raise FormatError(f"{source}: truncated: {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
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
        header = json.loads(body[:header_len])
        payload = body[header_len:]
        if len(payload) != math.ceil(header["payload_bits"] / 8):
            raise FormatError(f"{source}: payload is {len(payload)} bytes, header says "
                              f"{math.ceil(header['payload_bits'] / 8)}")
        reader = BitReader(payload)
        records: dict[str, Record] = {}
        for meta in header["tensors"]:
            records[meta["name"]] = RECORDS[meta["type"]].read(reader, meta)
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
