"""Variable-width bit streams: the one place integers become packed bits.

A stream is a sequence of unsigned integers, each written MSB first with its own width
(1..64 bits). Fields are concatenated without alignment, so a payload built from n fields of
widths w_i takes exactly ceil(sum w_i / 8) bytes.

Both directions work in chunks of at most ``CHUNK_BITS`` bits of *container* (each value held
big-endian in the smallest of 8, 16, 32 or 64 bits that holds the widest value of the chunk), so
their scratch memory is bounded whatever the field's length: a value's bits are the last ``w``
of its container's ``np.unpackbits`` row, and reading puts them back there and ``np.packbits``
the rows.
"""

from __future__ import annotations

import numpy as np

MAX_WIDTH = 64
CHUNK_BITS = 1 << 22  # container bits per vectorised step (4 MiB of unpacked bits)


def _container_bits(width: int) -> int:
    """The smallest of 8, 16, 32, 64 that holds ``width`` bits."""
    return max(8, 1 << (int(width) - 1).bit_length())


def _check_widths(widths: int | np.ndarray, n: int) -> int | np.ndarray:
    """``widths`` as one int (every value alike) or an integer array of ``n`` (kept in its own dtype:
    a uint8 array of a billion widths stays a gigabyte)."""
    if np.ndim(widths) == 0:
        w = int(widths)
        if n and not 1 <= w <= MAX_WIDTH:
            raise ValueError(f"bit widths must lie in 1..{MAX_WIDTH}, got {w}")
        return w
    w = np.asarray(widths).reshape(-1)
    if w.dtype.kind not in "iu":
        raise ValueError(f"bit widths must be integers, got {w.dtype}")
    if w.size != n:
        raise ValueError(f"{w.size} bit widths for {n} values")
    if n and (w.min() < 1 or w.max() > MAX_WIDTH):
        raise ValueError(f"bit widths must lie in 1..{MAX_WIDTH}, got {w.min()}..{w.max()}")
    return w


def _total_bits(widths: int | np.ndarray, n: int) -> int:
    return n * widths if isinstance(widths, int) else int(widths.sum(dtype=np.int64))


def _chunks(widths: int | np.ndarray, n: int):
    """``(start, stop, widths of the chunk, container bits)`` covering ``0..n``."""
    top = widths if isinstance(widths, int) else int(widths.max()) if n else 1
    step = max(1, CHUNK_BITS // _container_bits(top))
    for start in range(0, n, step):
        stop = min(n, start + step)
        w = widths if isinstance(widths, int) else widths[start:stop].astype(np.int64)
        yield start, stop, w, _container_bits(top)


def _value_bits(values: np.ndarray, widths: int | np.ndarray, container: int) -> np.ndarray:
    """The bits of every value (MSB first, each at its width), as one flat uint8 array."""
    if isinstance(widths, int):
        too_wide = values >> np.uint64(widths) != 0 if widths < 64 else np.zeros(values.size, dtype=bool)
    else:
        narrow = widths < 64
        too_wide = np.zeros(values.size, dtype=bool)
        too_wide[narrow] = (values[narrow] >> widths[narrow].astype(np.uint64)) != 0
    if np.any(too_wide):
        i = int(np.argmax(too_wide))
        w = widths if isinstance(widths, int) else int(widths[i])
        raise ValueError(f"value {int(values[i])} does not fit in {w} bits")
    rows = np.unpackbits(values.astype(f">u{container // 8}").view(np.uint8)).reshape(-1, container)
    if isinstance(widths, int):
        return rows[:, container - widths:].reshape(-1)
    return rows[np.arange(container)[None, :] >= (container - widths)[:, None]]


class BitWriter:
    """Collects fields; :meth:`getvalue` returns the packed bytes."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._pending = np.zeros(0, dtype=np.uint8)  # the last < 8 bits, not yet a whole byte
        self.nbits = 0

    def write(self, values: np.ndarray | int, widths: int | np.ndarray) -> None:
        values = np.atleast_1d(np.asarray(values)).reshape(-1)
        if values.size and values.dtype.kind == "i" and values.min() < 0:
            raise ValueError("BitWriter writes unsigned integers only")
        w = _check_widths(widths, values.size)
        for start, stop, chunk_widths, container in _chunks(w, values.size):
            self._append(_value_bits(values[start:stop].astype(np.uint64), chunk_widths, container))

    def _append(self, bits: np.ndarray) -> None:
        self.nbits += bits.size
        if self._pending.size:
            bits = np.concatenate([self._pending, bits])
        whole = bits.size - bits.size % 8
        self._bytes += np.packbits(bits[:whole]).tobytes()
        self._pending = bits[whole:].copy()

    def getvalue(self) -> bytes:
        return bytes(self._bytes) + np.packbits(self._pending).tobytes()


class BitReader:
    """Reads fields back in the order they were written; refuses to read past the end before
    allocating anything for the field."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._bytes = np.frombuffer(data, dtype=np.uint8)
        self.pos = 0
        self.nbits = 8 * self._bytes.size

    def need(self, count: int, what: str) -> None:
        """Raise :class:`EOFError` unless ``count`` more bits (``what`` needs them) are left."""
        if self.pos + count > self.nbits:
            raise EOFError(f"payload ends after {self.nbits} bits; {what} needs bits {self.pos}..{self.pos + count}")

    def _bits(self, count: int) -> np.ndarray:
        first, last = self.pos // 8, (self.pos + count + 7) // 8
        bits = np.unpackbits(self._bytes[first:last])[self.pos - 8 * first:][:count]
        self.pos += count
        return bits

    def read(self, n: int, widths: int | np.ndarray, dtype: np.typing.DTypeLike = np.uint64) -> np.ndarray:
        """The next ``n`` values of the given widths, as ``dtype`` (which must hold them)."""
        w = _check_widths(widths, n)
        self.need(_total_bits(w, n), "a field")
        out = np.empty(n, dtype=dtype)
        for start, stop, chunk_widths, container in _chunks(w, n):
            out[start:stop] = self._read_chunk(stop - start, chunk_widths, container)
        return out

    def _read_chunk(self, n: int, widths: int | np.ndarray, container: int) -> np.ndarray:
        big_endian = f">u{container // 8}"
        if isinstance(widths, int) and widths == container and self.pos % 8 == 0:
            # whole aligned bytes: the buffer is the values
            first = self.pos // 8
            self.pos += n * container
            return self._bytes[first:first + n * container // 8].view(big_endian)
        bits = self._bits(_total_bits(widths, n))
        if isinstance(widths, int):  # each row packs left-aligned into whole bytes; shift it right
            rows = np.packbits(bits.reshape(n, widths), axis=1)
            if rows.shape[1] != container // 8:
                rows = np.pad(rows, ((0, 0), (0, container // 8 - rows.shape[1])))
            return rows.view(big_endian).reshape(-1) >> (container - widths)
        rows = np.zeros((n, container), dtype=np.uint8)
        rows[np.arange(container)[None, :] >= (container - widths)[:, None]] = bits
        return np.packbits(rows, axis=1).view(big_endian).reshape(-1)
