"""The compressed-model format: records, exact size accounting, and the packed file.

This package is the one place that computes size. Every record lists its payload *fields*
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

One job per module: :mod:`~quantbench.format.codebooks` (how a code becomes a weight),
:mod:`~quantbench.format.encodings` (codes and masks as bits: fixed, per-group, base-K widths; mask
positions), :mod:`~quantbench.format.records` (records, their fields and size),
:mod:`~quantbench.format.container` (the header schema, the packed file, the way back to a network).
"""

from quantbench.format.codebooks import CODEBOOKS, FLOAT_BITS, AffineGrid, Codebook, Field, FormatError, RangeGrid
from quantbench.format.container import (
    FORMAT_VERSION,
    HEADER_SCHEMA,
    MAGIC,
    CompressedModel,
    read_header,
    tied_keys,
)
from quantbench.format.encodings import COUNT_BITS, MAX_CODE_BITS, MAX_ELEMENTS_PER_MASK_BIT, code_width
from quantbench.format.records import (
    CODE_COST_SLACK,
    DENSE_DTYPES,
    GROUP_WIDTH_BITS,
    RECORDS,
    DenseTensor,
    QuantizedTensor,
    Record,
    record_difference,
)

__all__ = [
    "CODEBOOKS", "CODE_COST_SLACK", "COUNT_BITS", "DENSE_DTYPES", "FLOAT_BITS", "FORMAT_VERSION", "GROUP_WIDTH_BITS",
    "HEADER_SCHEMA", "MAGIC", "MAX_CODE_BITS", "MAX_ELEMENTS_PER_MASK_BIT", "RECORDS", "AffineGrid", "Codebook",
    "CompressedModel", "DenseTensor", "Field", "FormatError", "QuantizedTensor", "RangeGrid", "Record", "code_width",
    "read_header", "record_difference", "tied_keys",
]
