"""Streaming packing and the reader's refusals.

* Every kind of record packs to the bytes the pre-streaming bit writer (tests/legacy_bitpack.py)
  gives for the same fields, and reads back and dequantizes to what the format's equations give
  element by element; with the chunk sizes shrunk so that every field spans many chunks.
* A malformed file, crafted or a valid one with bytes of its header flipped (its CRC recomputed),
  raises a FormatError naming the file, within a second and a few megabytes: the cases run in a
  child process under a time limit, so that a reader that stalls fails the test instead of
  hanging it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zlib

import legacy_bitpack
import numpy as np
import pytest
import torch

import quantbench.format as fmt
import quantbench.format.bitpack as bitpack
import quantbench.format.encodings as encodings
import quantbench.format.records as records
from quantbench.format import AffineGrid, Codebook, CompressedModel, DenseTensor, QuantizedTensor, RangeGrid
from quantbench.format.container import _PREFIX


def all_kinds(seed: int) -> dict:
    """One record of every kind the format has: widths, masks, groups, base-K codes, codebooks, dtypes."""
    rng = np.random.default_rng(seed)
    recs = {}
    for bits in (1, 3, 8, 11, 16):
        recs[f"affine{bits}"] = QuantizedTensor((12, 35), rng.integers(0, 2**bits, 420),
                                                AffineGrid(rng.random(12) + 0.1, rng.integers(0, 3, 12)), bits=bits)
    n, group = 1001, 64
    group_bits = rng.integers(1, 17, -(-n // group))
    codes = np.concatenate([rng.integers(0, 2**b, min(group, n - i * group)) for i, b in enumerate(group_bits)])
    recs["grouped"] = QuantizedTensor((n,), codes, RangeGrid(-1.0, 2.0), group_size=group, group_bits=group_bits)
    mask = rng.random(n) < 0.7
    kept_widths = np.repeat(group_bits, group)[:n][mask]
    recs["grouped_masked"] = QuantizedTensor((n,), rng.integers(0, 2**kept_widths), RangeGrid(-0.5, 0.5),
                                             group_size=group, group_bits=group_bits, mask=mask)
    mask = rng.random(2000) < 0.5
    recs["bitmap_ternary"] = QuantizedTensor((40, 50), rng.integers(0, 3, int(mask.sum())), Codebook([-0.5, 0, 0.5]),
                                             levels=3, mask=mask, channel_scale=rng.random(40), float_dtype="float16")
    mask = rng.random(5000) < 0.01
    recs["positions"] = QuantizedTensor((5000,), rng.integers(0, 4, int(mask.sum())), Codebook([-1, -0.2, 0.3, 1]),
                                        bits=2, mask=mask)
    recs["levels5"] = QuantizedTensor((777,), rng.integers(0, 5, 777), Codebook(np.linspace(-1, 1, 5)), levels=5)
    recs["levels300"] = QuantizedTensor((3, 100), rng.integers(0, 300, 300), AffineGrid(0.01, 150.0), levels=300)
    recs["dense32"] = DenseTensor(rng.standard_normal((7, 3)).astype(np.float32))
    recs["dense16"] = DenseTensor(rng.standard_normal(11), dtype="float16")
    recs["int64"] = DenseTensor(np.array([3, 2**40]), dtype="int64", role="buffer")
    return recs


def equations(record: QuantizedTensor) -> np.ndarray:
    """The module docstring's dequantization, element by element in float64, then float32."""
    out = np.zeros(record.numel)
    kept = range(record.numel) if record.mask is None else np.flatnonzero(record.mask)
    per_channel = record.numel // record.shape[0]
    widths = record.code_widths()
    for j, i in enumerate(kept):
        code, c, b = int(record.codes[j]), i // per_channel, int(widths[j])
        book = record.codebook
        if isinstance(book, AffineGrid):
            ch = c if book.channels > 1 else 0
            w = book.scale[ch] * (code - book.zero[ch])
        elif isinstance(book, RangeGrid):
            w = book.lo + code * ((book.hi - book.lo) / (2.0**b - 1.0))
        else:
            w = book.values[code]
        if record.channel_scale is not None:
            w *= record.channel_scale[c if record.channel_scale.size > 1 else 0]
        out[i] = w
    return out.astype(np.float32).reshape(record.shape)


@pytest.fixture(params=["default chunks", "tiny chunks"])
def chunks(request, monkeypatch):
    if request.param == "tiny chunks":  # every field spans many chunks, at unaligned bit offsets
        monkeypatch.setattr(bitpack, "CHUNK_BITS", 64)
        monkeypatch.setattr(records, "DEQUANTIZE_CHUNK", 37)
        monkeypatch.setattr(encodings, "RADIX_CHUNK_WORDS", 3)
    return request.param


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_packs_the_bytes_of_the_old_writer(seed, chunks):
    model = CompressedModel("arch", {"width": 2}, all_kinds(seed))
    legacy = legacy_bitpack.BitWriter()
    for record in model.records.values():
        for _, values, widths in record.fields():
            legacy.write(np.asarray(values).astype(np.uint64), widths)
    data = model.pack()
    assert data.endswith(legacy.getvalue())
    header_len = int.from_bytes(data[6:10], "big")
    assert json.loads(data[14:14 + header_len])["payload_bits"] == legacy.nbits
    back = CompressedModel.unpack(data)
    for name, record in model.records.items():
        assert fmt.record_difference(record, back.records[name]) is None, name
        if isinstance(record, QuantizedTensor):
            dense = back.records[name].dequantize()
            assert dense.dtype == torch.float32
            assert torch.equal(dense, torch.from_numpy(equations(record))), name
        else:
            assert torch.equal(back.records[name].dequantize(), record.dequantize())


def test_streaming_reader_reads_what_the_old_writer_wrote(chunks):
    rng = np.random.default_rng(3)
    fixed = rng.integers(0, 2**13, 1001, dtype=np.uint64)
    widths = rng.integers(1, 65, 2000)
    mixed = np.array([rng.integers(0, 2 ** min(int(w), 63)) for w in widths], dtype=np.uint64)
    legacy = legacy_bitpack.BitWriter()
    legacy.write(fixed, 13)  # a fixed-width field, then a mixed one from an unaligned offset
    legacy.write(mixed, widths)
    reader = bitpack.BitReader(legacy.getvalue())
    assert np.array_equal(reader.read(1001, 13, dtype=np.uint16), fixed)
    assert np.array_equal(reader.read(2000, widths), mixed)
    assert reader.pos == legacy.nbits


def test_codes_are_kept_in_the_narrowest_dtype():
    recs = all_kinds(0)
    assert recs["affine8"].codes.dtype == np.uint8
    assert recs["affine11"].codes.dtype == np.uint16
    assert recs["levels300"].codes.dtype == np.uint16
    with pytest.raises(fmt.FormatError, match="negative"):
        QuantizedTensor((3,), np.array([0, -1, 2]), RangeGrid(0.0, 1.0), bits=2)


# ------------------------------------------------------------------ malformed files
FUZZ = textwrap.dedent('''
    import json, sys, time, tracemalloc, zlib
    from quantbench.format import CompressedModel, FormatError
    for line in sys.stdin:
        case = json.loads(line)
        data = bytes.fromhex(case["data"])
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            CompressedModel.unpack(data, source="shared/results/crafted.qbc")
            outcome = "loaded"
        except FormatError as err:
            outcome = "FormatError: " + str(err)
        except Exception as err:
            outcome = type(err).__name__ + ": " + str(err)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(json.dumps({"name": case["name"], "outcome": outcome, "seconds": seconds, "peak": peak}), flush=True)
''')


def packed(header: dict | list | bytes, payload: bytes = b"\x00" * 8) -> bytes:
    """A file with this header and payload and a correct CRC: only the header can be at fault."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return _PREFIX.pack(fmt.MAGIC, fmt.FORMAT_VERSION, len(raw), zlib.crc32(raw + payload)) + raw + payload


QUANT = {"name": "w", "type": "quantized", "shape": [4, 4], "bits": 4, "levels": None, "group_size": 0,
         "grouped": False, "mask": "none", "codebook": {"kind": "range"}, "channel_scale": None,
         "float_dtype": "float32"}
DENSE = {"name": "b", "type": "dense", "shape": [2], "dtype": "float32", "role": "param"}
HUGE = [10**9, 10**9]


def header(**changes) -> dict:
    return {"arch": "lenet300", "arch_kwargs": {}, "payload_bits": 64, "tensors": [QUANT], **changes}


def tensor(base: dict = QUANT, drop: str = "", **changes) -> dict:
    return {k: v for k, v in {**base, **changes}.items() if k != drop}


CRAFTED = {
    "not json": packed(b'{"arch": '),
    "not utf-8": packed(b"\xff\xfe{}"),
    "a list": packed([1, 2]),
    "no payload_bits": packed({k: v for k, v in header().items() if k != "payload_bits"}),
    "payload_bits a string": packed(header(payload_bits="64")),
    "payload_bits beyond the payload": packed(header(payload_bits=10**30)),
    "arch_kwargs a list": packed(header(arch_kwargs=[1])),
    "tensors not a list": packed(header(tensors={"w": QUANT})),
    "unknown record type": packed(header(tensors=[tensor(type="sparse")])),
    "no record type": packed(header(tensors=[tensor(drop="type")])),
    "no shape": packed(header(tensors=[tensor(drop="shape")])),
    "negative shape": packed(header(tensors=[tensor(shape=[-3, 4])])),
    "shape not a list": packed(header(tensors=[tensor(shape=16)])),
    "float width": packed(header(tensors=[tensor(bits=4.0)])),
    "zero width": packed(header(tensors=[tensor(bits=0)])),
    "boolean width": packed(header(tensors=[tensor(bits=True)])),
    "unknown dtype": packed(header(tensors=[tensor(DENSE, dtype="float64")])),
    "unknown codebook": packed(header(tensors=[tensor(codebook={"kind": "lattice"})])),
    "groups of 0": packed(header(tensors=[tensor(bits=None, grouped=True, group_size=0)])),
    "name not a string": packed(header(tensors=[tensor(name=3)])),
    "a name twice": packed(header(tensors=[tensor(shape=[2], bits=1), tensor(shape=[2], bits=1)]),
                           payload=b"\x00" * 9),
    "dense 10^9 x 10^9": packed(header(tensors=[tensor(DENSE, shape=HUGE)])),
    "codes 10^9 x 10^9": packed(header(tensors=[tensor(shape=HUGE)])),
    "bitmap 10^9 x 10^9": packed(header(tensors=[tensor(shape=HUGE, mask="bitmap")])),
    "positions 10^9 x 10^9": packed(header(tensors=[tensor(shape=HUGE, mask="positions")])),
    "groups of 10^17": packed(header(tensors=[tensor(shape=HUGE, bits=None, grouped=True, group_size=10**17)])),
    "base-3 10^9 x 10^9": packed(header(tensors=[tensor(shape=HUGE, bits=None, levels=3)])),
    "codebook of 10^15": packed(header(tensors=[tensor(codebook={"kind": "codebook", "size": 10**15})])),
    "10^15 channels": packed(header(tensors=[tensor(codebook={"kind": "affine", "channels": 10**15})])),
    "channels of a scalar": packed(header(tensors=[tensor(shape=[], codebook={"kind": "affine", "channels": 2})])),
    "bits and levels": packed(header(tensors=[tensor(levels=3)]), payload=b"\x00" * 64),
}


def flipped_headers(count: int, seed: int = 0) -> dict[str, bytes]:
    """A valid file of every record kind with 1-3 random bytes of its header replaced, CRC recomputed."""
    data = CompressedModel("arch", {"width": 2}, all_kinds(0)).pack()
    _, _, header_len, _ = _PREFIX.unpack_from(data)
    raw = data[_PREFIX.size:_PREFIX.size + header_len]
    payload = data[_PREFIX.size + header_len:]
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(count):
        broken = bytearray(raw)
        for at in rng.integers(0, len(raw), rng.integers(1, 4)):
            broken[at] = rng.integers(0, 256)
        cases[f"flip {i}"] = packed(bytes(broken), payload)
    return cases


def test_malformed_files_are_refused_quickly_naming_the_file():
    cases = {**CRAFTED, **flipped_headers(400)}
    lines = "".join(json.dumps({"name": n, "data": d.hex()}) + "\n" for n, d in cases.items())
    # a stall guard, not a benchmark: the cases take milliseconds; a reader that allocates what a
    # header claims, or sums a billion broadcast widths, runs for minutes
    run = subprocess.run([sys.executable, "-c", FUZZ], input=lines, capture_output=True, text=True,
                         timeout=60 + len(cases))
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == len(cases)
    loaded = 0
    for r in results:
        if r["name"] in CRAFTED or r["outcome"] != "loaded":
            assert r["outcome"].startswith("FormatError: shared/results/crafted.qbc"), r
        loaded += r["outcome"] == "loaded"
        assert r["seconds"] < 1.0, r
        assert r["peak"] < 8 * 2**20, r
    assert loaded < len(results) // 4  # most flips break the header; the rest still describe a valid file


def test_header_errors_name_the_key():
    cases = {"negative shape": r"at \$\.tensors\[0\]\.shape\[0\]: -3 is less than the minimum of 0",
             "no record type": r"at \$\.tensors\[0\]: 'type' is a required property",
             "payload_bits a string": r"at \$\.payload_bits: '64' is not of type 'integer'",
             "dense 10^9 x 10^9": r"tensors\[0\] \('b'\): payload ends after 64 bits"}
    for name, message in cases.items():
        with pytest.raises(fmt.FormatError, match=r"^f\.qbc: .*" + message):
            CompressedModel.unpack(CRAFTED[name], source="f.qbc")
