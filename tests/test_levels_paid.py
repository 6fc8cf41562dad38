"""Levels paid = levels used (issue #25): every built-in method at every budget of the default grid
it serves, on digits/LeNet300. A code never costs more bits than its codebook needs (at most
log2(levels that code can address) + 0.02), and a tensor stored at a whole code width uses every
level it pays for (a ternary alphabet at 2 bits would leave a code unused)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from quantbench.format import Codebook, CompressedModel, QuantizedTensor
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import available_methods, get_method

FAST = {"epochs": 1, "steps": 2, "calib_samples": 128, "penalties": {"1": 4.0, "2": 1.0}}
BUDGETS = (1, 1.58, 2)


def _params(method: str):
    cls = get_method(method)
    names = {f.name for f in dataclasses.fields(cls.Params)}
    overrides = {k: v for k, v in FAST.items() if k in names}
    if method == "lc_scaled":
        overrides["unit_codebook"] = [-1.0, 0.0, 1.0]
    return make_params(cls.Params, overrides, method)


CASES = [(m, b) for m in available_methods() for b in BUDGETS if get_method(m).serves(Budget(b), _params(m))]


def addressable(record: QuantizedTensor, width: int) -> int:
    """Levels a code of ``width`` bits can name, read off the record by hand."""
    n = 2**width
    if isinstance(record.codebook, Codebook):
        n = min(n, record.codebook.values.size)
    return n if record.levels is None else min(n, record.levels)


@pytest.mark.parametrize("method, bits", CASES, ids=[f"{m}-{b:g}" for m, b in CASES])
def test_codes_cost_only_the_levels_they_can_use(method, bits, digits_reference):
    cls = get_method(method)
    params = _params(method)
    task, kwargs, ref = digits_reference
    ctx = RunContext(task, "lenet300", kwargs, seed=0, show_progress=False)
    produced = cls(params).compress(ref, Budget(bits), ctx)
    packed = CompressedModel.unpack(produced.pack())
    packed.check_same_as(produced)
    packed.check_code_costs()
    for name, record in packed.records.items():
        if not isinstance(record, QuantizedTensor):
            continue
        codes_field = next(f for f in record.fields() if f[0] == "codes")
        paid = float(np.sum(codes_field[2]) if np.ndim(codes_field[2]) else codes_field[2] * record.kept)
        widths = record.code_widths()
        needed = sum(math.log2(addressable(record, int(w))) * int(np.sum(widths == w)) for w in np.unique(widths))
        assert paid <= needed + 0.02 * record.kept + 1, (name, paid / record.kept, needed / record.kept)
        # a whole width, the same for the tensor: the codes reach every level paid for
        if record.group_bits is None and record.kept >= 64 * addressable(record, int(widths[0])) <= 64 * 4:
            used = np.unique(record.codes).size
            assert used == addressable(record, int(widths[0])), (name, used, record.bits, record.levels)
