"""RTN: uniform round-to-nearest at b bits, per tensor or per output channel (baseline).

Every linear/conv weight W is replaced by ``scale * (round(W / scale + zero) - zero)`` on its
b-bit grid (:mod:`quantbench.uniform`); biases and buffers stay fp32. No data is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from quantbench.format import CompressedModel
from quantbench.method import Budget, Method, RunContext, compressible
from quantbench.registry import register_method
from quantbench.uniform import Scheme, quantize_uniform


@dataclass
class RTNParams:
    scheme: Scheme = "minmax"  # minmax: [min w, max w]; symmetric: [-max|w|, max|w|] with 0 on the grid
    per_channel: bool = False  # one grid per output channel (axis 0) instead of per tensor
    float_dtype: Literal["float32", "float16"] = "float32"  # precision of the stored scales


@register_method("rtn")
class RTN(Method):
    """Uniform round-to-nearest at b bits on the min-max (or symmetric) range, per tensor or per channel."""

    family = "baseline"
    Params = RTNParams

    @classmethod
    def serves(cls, budget: Budget, params: RTNParams) -> bool:
        b = budget.int_bits
        return b is not None and (2 if params.scheme == "symmetric" else 1) <= b <= 16

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p, bits = self.params, budget.int_bits
        state = ref.state_dict()
        quantized = {
            name: quantize_uniform(state[name], bits, p.scheme, p.per_channel, p.float_dtype)
            for name in ctx.progress(compressible(ref), desc=f"rtn {bits}-bit")
        }
        return ctx.assemble(ref, quantized)
