"""The packed file: header schema, :class:`CompressedModel` (pack / unpack / save / load and the
checks on what was read back), and the way back to an ``nn.Module`` (:func:`tied_keys`, ``to_dense``).

The file is ``MAGIC | version u16 | header length u32 | crc32 u32 | header (JSON: architecture,
tensor names, shapes, widths) | payload``; the payload is every record's fields in one bit stream
(:mod:`quantbench.format.records`), so ``8 * len(payload) - size_bits  in  [0, 8)``.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from quantbench.files import write_atomic
from quantbench.format.bitpack import BitReader, BitWriter
from quantbench.format.codebooks import CODEBOOKS, FLOAT_BITS, FormatError
from quantbench.format.encodings import MAX_CODE_BITS
from quantbench.format.records import (
    DENSE_DTYPES,
    RECORDS,
    QuantizedTensor,
    Record,
    record_difference,
)

MAGIC = b"QBCM"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">4sHII")  # magic, version, header length, crc32


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
        """Size figures reported for every run (docs/format.md, "Reported")."""
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

    def check_finite(self) -> None:
        """Raise :class:`FloatingPointError` naming the first tensor (and field) that holds a NaN or an
        infinity: what a diverged method returns, caught before anything is packed (the harness records
        the cell as diverged; no artifact of a network that evaluates to NaN is written)."""
        for name, record in self.records.items():
            where = record.nonfinite()
            if where is not None:
                raise FloatingPointError(f"tensor {name!r} has non-finite values ({where})")

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
