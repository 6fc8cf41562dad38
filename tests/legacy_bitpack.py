"""The bit streams as they were before streaming (commit 8879250): per-value bit arrays for the whole field.

Kept verbatim as the reference the streaming writer and reader must match byte for byte
(tests/test_format_stream.py) while both exist.
"""

from __future__ import annotations

import numpy as np

MAX_WIDTH = 64


def _as_widths(widths: int | np.ndarray, n: int) -> np.ndarray:
    w = np.broadcast_to(np.asarray(widths, dtype=np.int64), (n,))
    if n and (w.min() < 1 or w.max() > MAX_WIDTH):
        raise ValueError(f"bit widths must lie in 1..{MAX_WIDTH}, got {w.min()}..{w.max()}")
    return w


def _value_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The bits of every value (MSB first, each at its width), as one flat uint8 array."""
    values = np.asarray(values, dtype=np.uint64)
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    top = int(widths.max())
    narrow = widths < 64
    too_wide = (values[narrow] >> widths[narrow].astype(np.uint64)) != 0
    if np.any(too_wide):
        i = int(np.flatnonzero(narrow)[np.argmax(too_wide)])
        raise ValueError(f"value {int(values[i])} does not fit in {int(widths[i])} bits")
    shifts = np.arange(top - 1, -1, -1, dtype=np.uint64)
    bits = ((values[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)
    if np.all(widths == top):
        return bits.reshape(-1)
    keep = np.arange(top)[None, :] >= (top - widths)[:, None]
    return bits[keep]


class BitWriter:
    """Collects fields; :meth:`getvalue` returns the packed bytes."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.nbits = 0

    def write(self, values: np.ndarray | int, widths: int | np.ndarray) -> None:
        values = np.atleast_1d(np.asarray(values))
        if values.size and values.min() < 0:
            raise ValueError("BitWriter writes unsigned integers only")
        w = _as_widths(widths, values.size)
        bits = _value_bits(values.astype(np.uint64), w)
        self._chunks.append(bits)
        self.nbits += bits.size

    def getvalue(self) -> bytes:
        if not self._chunks:
            return b""
        return np.packbits(np.concatenate(self._chunks)).tobytes()


class BitReader:
    """Reads fields back in the order they were written; refuses to read past the end."""

    def __init__(self, data: bytes) -> None:
        self._bytes = np.frombuffer(data, dtype=np.uint8)
        self.pos = 0
        self.nbits = 8 * self._bytes.size

    def read(self, n: int, widths: int | np.ndarray) -> np.ndarray:
        w = _as_widths(widths, n)
        total = int(w.sum())
        if self.pos + total > self.nbits:
            raise EOFError(
                f"payload ends after {self.nbits} bits; a field needs bits "
                f"{self.pos}..{self.pos + total}"
            )
        first, last = self.pos // 8, (self.pos + total + 7) // 8
        bits = np.unpackbits(self._bytes[first:last])[self.pos - 8 * first :][:total]
        self.pos += total
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        top = int(w.max())
        if np.all(w == top):
            mat = bits.reshape(n, top).astype(np.uint64)
        else:
            starts = np.concatenate([[0], np.cumsum(w)[:-1]])
            col = np.arange(top)[None, :]
            # right-align each value's bits in a row of `top` columns
            src = starts[:, None] + col - (top - w)[:, None]
            valid = col >= (top - w)[:, None]
            mat = np.where(valid, bits[np.clip(src, 0, total - 1)], 0).astype(np.uint64)
        shifts = np.arange(top - 1, -1, -1, dtype=np.uint64)
        return (mat << shifts[None, :]).sum(axis=1, dtype=np.uint64)
