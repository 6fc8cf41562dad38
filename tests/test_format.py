"""The compressed-model format: round trips, exact size, dequantization, refusal of bad files."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from quantbench.format import (
    AffineGrid,
    Codebook,
    CompressedModel,
    DenseTensor,
    FormatError,
    QuantizedTensor,
    RangeGrid,
)


def payload_bytes(data: bytes) -> int:
    header_len = struct.unpack_from(">4sHII", data)[2]
    return len(data) - struct.calcsize(">4sHII") - header_len


def roundtrip(records: dict) -> tuple[CompressedModel, CompressedModel, bytes]:
    cm = CompressedModel("arch", {"width": 1}, records)
    data = cm.pack()
    return cm, CompressedModel.unpack(data), data


def assert_same(a: QuantizedTensor, b: QuantizedTensor) -> None:
    assert np.array_equal(a.codes, b.codes)
    assert torch.equal(a.dequantize(), b.dequantize())
    assert (a.mask is None) == (b.mask is None)
    if a.mask is not None:
        assert np.array_equal(a.mask, b.mask)
    if a.group_bits is not None:
        assert np.array_equal(a.group_bits, b.group_bits)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("masked", [False, True])
def test_roundtrip_every_width_per_tensor(bits, masked):
    rng = np.random.default_rng(bits)
    shape = (7, 13)
    mask = rng.random(91) < 0.6 if masked else None
    kept = 91 if mask is None else int(mask.sum())
    codes = rng.integers(0, 2**bits, size=kept)
    rec = QuantizedTensor(shape, codes, AffineGrid(rng.random(7) + 0.1, rng.random(7) * 3), bits=bits, mask=mask)
    cm, back, data = roundtrip({"w": rec})
    assert_same(rec, back.records["w"])
    # size: codes at b bits, 7 scales + 7 zeros at fp32, the mask at its encoded size
    mask_bits = 0 if mask is None else min(91, 32 + kept * math.ceil(math.log2(91)))
    assert rec.size_bits() == kept * bits + 14 * 32 + mask_bits
    assert 0 <= 8 * payload_bytes(data) - cm.size_bits() < 8


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("group_size", [1, 5, 64])
def test_roundtrip_per_group_widths(masked, group_size):
    rng = np.random.default_rng(group_size)
    numel = 300
    n_groups = math.ceil(numel / group_size)
    group_bits = rng.integers(1, 17, size=n_groups)
    mask = rng.random(numel) < 0.3 if masked else None
    widths = np.repeat(group_bits, group_size)[:numel]
    if mask is not None:
        widths = widths[mask]
    codes = np.array([rng.integers(0, 2**w) for w in widths])
    rec = QuantizedTensor((numel,), codes, RangeGrid(-1.5, 2.0), group_size=group_size, group_bits=group_bits,
                          mask=mask)
    cm, back, data = roundtrip({"w": rec})
    assert_same(rec, back.records["w"])
    mask_bits = 0 if mask is None else min(numel, 32 + int(mask.sum()) * 9)
    assert rec.size_bits() == int(widths.sum()) + 4 * n_groups + 2 * 32 + mask_bits
    assert 0 <= 8 * payload_bytes(data) - cm.size_bits() < 8


def test_sparse_mask_uses_positions_and_dense_mask_uses_bitmap():
    numel = 4096
    sparse = np.zeros(numel, bool)
    sparse[[3, 100, 4000]] = True
    rec = QuantizedTensor((numel,), [1, 2, 3], Codebook([0.0, 1.0, 2.0, 3.0]), bits=2, mask=sparse)
    assert rec.meta()["mask"] == "positions"
    assert rec.size_bits() == 32 + 3 * 12 + 4 * 32 + 3 * 2
    dense = np.ones(numel, bool)
    dense[7] = False
    rec2 = QuantizedTensor((numel,), np.zeros(numel - 1), Codebook([0.5]), bits=1, mask=dense)
    assert rec2.meta()["mask"] == "bitmap"
    _, back, _ = roundtrip({"a": rec, "b": rec2})
    assert_same(rec, back.records["a"])
    assert_same(rec2, back.records["b"])


def test_dequantize_formulas_by_hand():
    # affine per channel: w = scale_c * (code - zero_c)
    rec = QuantizedTensor((2, 2), [0, 3, 1, 2], AffineGrid([0.5, 2.0], [1.0, 0.0]), bits=2)
    assert rec.dequantize().tolist() == [[-0.5, 1.0], [2.0, 4.0]]
    # range with per-group widths: w = lo + code * (hi - lo) / (2^b - 1)
    rec = QuantizedTensor((4,), [1, 0, 3, 1], RangeGrid(-1.0, 2.0), group_size=2, group_bits=[1, 2])
    assert rec.dequantize().tolist() == [2.0, -1.0, 2.0, 0.0]
    # explicit codebook, per-channel scales and a mask
    rec = QuantizedTensor((2, 2), [1, 0, 1], Codebook([-1.0, 1.0]), bits=1, mask=[1, 0, 1, 1],
                          channel_scale=[2.0, 0.5])
    assert rec.dequantize().tolist() == [[2.0, 0.0], [-0.5, 0.5]]


def test_fp16_side_information_is_stored_and_counted_at_16_bits():
    rec = QuantizedTensor((3,), [0, 1, 2], Codebook([0.1, 0.2, 0.3]), bits=2, float_dtype="float16")
    assert rec.size_bits() == 3 * 2 + 3 * 16
    assert rec.dequantize()[0].item() == pytest.approx(float(np.float16(0.1)), abs=0)
    _, back, _ = roundtrip({"w": rec})
    assert torch.equal(back.records["w"].dequantize(), rec.dequantize())


def test_dense_records_roundtrip_and_stats():
    w = QuantizedTensor((10, 10), np.arange(100) % 4, AffineGrid([1.0], [0.0]), bits=2)
    b = DenseTensor(np.linspace(-1, 1, 10, dtype=np.float32))
    half = DenseTensor(np.linspace(-1, 1, 4, dtype=np.float32), dtype="float16")
    count = DenseTensor(np.array(7), dtype="int64", role="buffer")
    cm, back, data = roundtrip({"w": w, "b": b, "h": half, "n": count})
    for name in ("b", "h", "n"):
        assert torch.equal(back.records[name].dequantize(), cm.records[name].dequantize())
    stats = cm.stats()
    assert stats["bpw"] == (200 + 64) / 100
    param_bits = 200 + 64 + 10 * 32 + 4 * 16
    assert stats["size_bits"] == param_bits
    assert stats["compression_ratio"] == 32 * 114 / param_bits
    assert stats["model_bytes"] == math.ceil((param_bits + 64) / 8)


def test_corrupted_truncated_and_foreign_files_are_refused(tmp_path):
    rec = QuantizedTensor((50,), np.arange(50) % 8, AffineGrid([0.1], [4.0]), bits=3)
    data = bytearray(CompressedModel("a", {}, {"w": rec}).pack())
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    with pytest.raises(FormatError, match="corrupted: checksum"):
        CompressedModel.unpack(bytes(flipped))
    with pytest.raises(FormatError, match="truncated|checksum"):
        CompressedModel.unpack(bytes(data[:-5]))
    with pytest.raises(FormatError, match="truncated"):
        CompressedModel.unpack(bytes(data[:6]))
    with pytest.raises(FormatError, match="not a quantbench compressed model"):
        CompressedModel.unpack(b"PK\x03\x04" + bytes(data[4:]))
    future = bytearray(data)
    future[4:6] = (99).to_bytes(2, "big")
    with pytest.raises(FormatError, match="format version 99"):
        CompressedModel.unpack(bytes(future))
    path = tmp_path / "m.qbc"
    path.write_bytes(bytes(flipped))
    with pytest.raises(FormatError, match=str(path)):
        CompressedModel.load(path)


def test_invalid_records_are_refused():
    with pytest.raises(FormatError, match="outside the 4-entry codebook"):
        QuantizedTensor((3,), [0, 4, 1], AffineGrid([1.0], [0.0]), bits=2)
    with pytest.raises(FormatError, match="outside the 3-entry codebook"):
        QuantizedTensor((2,), [0, 3], Codebook([0.0, 1.0, 2.0]), bits=2)
    with pytest.raises(FormatError, match="codes for"):
        QuantizedTensor((3,), [0, 1], AffineGrid([1.0], [0.0]), bits=2, mask=[1, 1, 1])
    with pytest.raises(FormatError, match="exactly one of"):
        QuantizedTensor((3,), [0, 1, 1], AffineGrid([1.0], [0.0]))
    with pytest.raises(FormatError, match="widths must lie in 1..16"):
        QuantizedTensor((3,), [0, 1, 1], AffineGrid([1.0], [0.0]), bits=17)
    with pytest.raises(FormatError, match="channels"):
        QuantizedTensor((3, 2), np.zeros(6), AffineGrid([1.0, 2.0], [0.0, 0.0]), bits=2)


def test_to_dense_loads_and_checks_the_state_dict():
    model = torch.nn.Linear(3, 2)
    rec = QuantizedTensor((2, 3), [0, 1, 2, 3, 0, 1], AffineGrid([0.5], [1.0]), bits=2)
    cm = CompressedModel("linear", {}, {"weight": rec, "bias": DenseTensor(np.array([1.0, -1.0], np.float32))})
    cm.to_dense(model)
    assert torch.equal(model.weight.data, rec.dequantize())
    cm.verify_on_codebook(model)
    with torch.no_grad():
        model.weight[0, 0] += 1e-3
    with pytest.raises(FormatError, match="off their codebook"):
        cm.verify_on_codebook(model)
    with pytest.raises(FormatError, match="missing"):
        CompressedModel("linear", {}, {"weight": rec}).to_dense(torch.nn.Linear(3, 2))


@pytest.mark.parametrize("levels", [3, 5, 6, 7, 100, 2**16 - 1])
@pytest.mark.parametrize("masked", [False, True])
def test_base_k_codes_roundtrip_and_size(levels, masked):
    rng = np.random.default_rng(levels)
    numel = 1000
    mask = rng.random(numel) < 0.5 if masked else None
    kept = numel if mask is None else int(mask.sum())
    codes = rng.integers(0, levels, size=kept)
    rec = QuantizedTensor((numel,), codes, AffineGrid([0.1], [0.0]), levels=levels, mask=mask)
    cm, back, data = roundtrip({"w": rec})
    assert_same(rec, back.records["w"])
    # g codes per word, g the largest with levels^g < 2^63; a word of g codes takes bit_length(levels^g - 1)
    g = max(g for g in range(1, 64) if levels**g < 2**63)
    full, rest = divmod(kept, g)
    code_bits = full * (levels**g - 1).bit_length() + ((levels**rest - 1).bit_length() if rest else 0)
    mask_bits = 0 if mask is None else min(numel, 32 + kept * 10)
    assert rec.size_bits() == code_bits + 2 * 32 + mask_bits
    assert code_bits <= kept * math.log2(levels) * 1.02 + 64
    assert 0 <= 8 * payload_bytes(data) - cm.size_bits() < 8
    with pytest.raises(FormatError, match="outside the"):
        QuantizedTensor((2,), [0, levels], AffineGrid([0.1], [0.0]), levels=levels)
