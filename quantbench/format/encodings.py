"""How codes and masks become bits: codes at a fixed width, at per-group widths, or base-K packed
(several codes of a K-level alphabet in one word: word = Σ_i code_i · K^i, log2 K + < 1 % bits per
code); a pruning mask as its kept positions (each ``index_bits(numel)`` bits). The records
(:mod:`quantbench.format.records`) choose among them and list the resulting fields.
"""

from __future__ import annotations

import numpy as np

from quantbench.format.codebooks import FormatError

MAX_CODE_BITS = 16
COUNT_BITS = 32
RADIX_CHUNK_WORDS = 1 << 16  # words per vectorised step of base-K packing
MAX_ELEMENTS_PER_MASK_BIT = 1 << 20  # a position-coded mask describes at most this many elements per bit it takes


def radix_group(levels: int) -> int:
    """How many base-``levels`` digits fit one word below 2**63."""
    g = 1
    while levels ** (g + 1) < 2**63:
        g += 1
    return g


def radix_widths(n: int, levels: int) -> np.ndarray:
    """The bit width of every word holding ``n`` base-``levels`` codes (the last may hold fewer)."""
    g = radix_group(levels)
    full, rest = divmod(n, g)
    widths = np.full(full + bool(rest), (levels**g - 1).bit_length(), dtype=np.int64)
    if rest:
        widths[-1] = (levels**rest - 1).bit_length()
    return widths


def radix_bits(n: int, levels: int) -> int:
    """``radix_widths(n, levels).sum()`` without building the array."""
    g = radix_group(levels)
    full, rest = divmod(n, g)
    return full * (levels**g - 1).bit_length() + (levels**rest - 1).bit_length()


def radix_pack(codes: np.ndarray, levels: int) -> np.ndarray:
    """Code i of a word is its base-``levels`` digit i: word = sum_i code_i * levels**i."""
    g = radix_group(levels)
    words = np.empty(-(-codes.size // g), dtype=np.uint64)
    for first in range(0, words.size, RADIX_CHUNK_WORDS):
        chunk = codes[first * g:(first + RADIX_CHUNK_WORDS) * g]
        digits = np.zeros(-(-chunk.size // g) * g, dtype=np.uint64)
        digits[: chunk.size] = chunk
        digits = digits.reshape(-1, g)
        acc = np.zeros(digits.shape[0], dtype=np.uint64)
        for col in range(g - 1, -1, -1):
            acc = acc * np.uint64(levels) + digits[:, col]
        words[first:first + acc.size] = acc
    return words


def radix_unpack(words: np.ndarray, n: int, levels: int, dtype: np.typing.DTypeLike) -> np.ndarray:
    g = radix_group(levels)
    codes = np.empty(words.size * g, dtype=dtype)
    for first in range(0, words.size, RADIX_CHUNK_WORDS):
        rest = words[first:first + RADIX_CHUNK_WORDS].astype(np.uint64)
        digits = np.empty((rest.size, g), dtype=np.uint64)
        for col in range(g):
            digits[:, col] = rest % np.uint64(levels)
            rest = rest // np.uint64(levels)
        codes[first * g:(first + rest.size) * g] = digits.reshape(-1)
    return codes[:n]


def index_bits(n: int) -> int:
    """Bits that hold every index 0..n−1 (at least 1): a mask position in a tensor of n elements,
    a code of a K-level alphabet."""
    return max(1, (n - 1).bit_length())


def check_mask_expansion(numel: int, kept: int) -> None:
    """A position-coded mask costs ``COUNT_BITS + kept * log2(numel)`` bits whatever ``numel`` is: bound
    the elements it may describe, so that no small file expands into an arbitrarily large tensor."""
    paid = COUNT_BITS + kept * index_bits(numel)
    if numel > MAX_ELEMENTS_PER_MASK_BIT * paid:
        raise FormatError(f"a mask keeping {kept} of {numel} elements describes more than "
                          f"{MAX_ELEMENTS_PER_MASK_BIT} elements per bit it takes ({paid} bits)")


def group_widths(group_bits: np.ndarray, group_size: int, numel: int, mask: np.ndarray | None) -> np.ndarray:
    """Every kept code's width (uint8): its group's, for consecutive groups of ``group_size``."""
    if mask is None:
        sizes = np.full(group_bits.size, group_size, dtype=np.int64)
        if sizes.size:
            sizes[-1] = numel - group_size * (sizes.size - 1)
    else:
        sizes = np.add.reduceat(mask, np.arange(0, numel, group_size), dtype=np.int64) if numel \
            else np.zeros(0, dtype=np.int64)
    return np.repeat(group_bits.astype(np.uint8), sizes)


def code_dtype(width: int) -> type:
    """The unsigned dtype codes of at most ``width`` (<= MAX_CODE_BITS) bits are kept in."""
    return np.uint8 if width <= 8 else np.uint16


def code_width(levels: int) -> dict[str, int]:
    """The record field that stores codes of a K-level alphabet at what K levels cost: ``bits`` =
    log2 K when K is a power of two, else ``levels`` = K (base-K packing: log2 K + < 1 % per code)."""
    if levels < 2:
        raise FormatError(f"an alphabet needs at least 2 levels, got {levels}")
    return {"bits": levels.bit_length() - 1} if levels & (levels - 1) == 0 else {"levels": levels}
