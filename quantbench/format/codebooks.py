"""Codebooks: how a code becomes a weight, and the float side information they store.

Dequantization (per element i of a tensor, c = its output channel, b = its code width):

* :class:`AffineGrid`  ``w_i = scale_c * (code_i - zero_c)``
* :class:`RangeGrid`   ``w_i = lo + code_i * (hi - lo) / (2**b - 1)``
* :class:`Codebook`    ``w_i = values[code_i]``

Side information (scales, zeros, ranges, tables) is stored, and evaluated, at ``float_dtype``
(:data:`FLOAT_BITS`). :class:`FormatError`, raised by every part of the format, lives here, at the
bottom of the package's imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from quantbench.format.bitpack import BitReader

FLOAT_BITS = {"float32": 32, "float16": 16}

Field = tuple[str, np.ndarray, int | np.ndarray]


class FormatError(ValueError):
    """A record or packed file that breaks the format contract."""


def _float_field(name: str, values: Any, float_dtype: str) -> Field:
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(float_dtype)).reshape(-1))
    return name, arr.view(np.uint32 if float_dtype == "float32" else np.uint16), FLOAT_BITS[float_dtype]


def _read_floats(reader: BitReader, n: int, float_dtype: str) -> np.ndarray:
    raw = reader.read(n, FLOAT_BITS[float_dtype])
    return raw.astype(np.uint32 if float_dtype == "float32" else np.uint16).view(float_dtype)



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
