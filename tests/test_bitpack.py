"""Bit streams against a plain string-of-bits reference."""

import numpy as np
import pytest

from quantbench.format.bitpack import BitReader, BitWriter


def reference_pack(values, widths) -> bytes:
    bits = "".join(format(int(v), f"0{int(w)}b") for v, w in zip(values, widths, strict=True))
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 11, 16, 31, 32, 63, 64])
def test_fixed_width_matches_reference(width):
    rng = np.random.default_rng(width)
    values = rng.integers(0, 2**width, size=37, dtype=np.uint64, endpoint=False) if width < 64 else \
        rng.integers(0, 2**63, size=37, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    w = BitWriter()
    w.write(values, width)
    data = w.getvalue()
    assert data == reference_pack(values, [width] * values.size)
    assert w.nbits == width * values.size
    assert np.array_equal(BitReader(data).read(values.size, width), values)


def test_mixed_widths_and_sequential_fields():
    rng = np.random.default_rng(0)
    widths = rng.integers(1, 17, size=200)
    values = np.array([rng.integers(0, 2**w) for w in widths], dtype=np.uint64)
    w = BitWriter()
    w.write(values[:50], widths[:50])
    w.write(values[50:], widths[50:])
    data = w.getvalue()
    assert data == reference_pack(values, widths)
    r = BitReader(data)
    assert np.array_equal(r.read(50, widths[:50]), values[:50])
    assert np.array_equal(r.read(150, widths[50:]), values[50:])


def test_value_too_wide_and_reading_past_end_are_refused():
    w = BitWriter()
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        w.write(np.array([8]), 3)
    with pytest.raises(EOFError, match="payload ends"):
        BitReader(b"\x00").read(3, 4)
