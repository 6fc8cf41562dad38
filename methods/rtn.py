"""RTN: uniform round-to-nearest on K = 2^b levels, per tensor or per output channel (baseline).

Every linear/conv weight W is replaced by ``scale * (round(W / scale + zero) - zero)`` on its
K-level grid (:mod:`quantbench.methods.uniform`; a b-bit budget pays for K = ``Budget.levels`` levels: 2^b,
or 3 at 1.58 bits); biases and buffers stay fp32. No data is used. The symmetric grid needs an odd
K (0 on the grid): it serves 1.58 (3 levels), 2.32 (5), 2.81 (7), ... bits, not whole bits, since
2^b − 1 levels stored at b bits would pay for a level it never uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from quantbench.format import CompressedModel
from quantbench.method import Budget, Method, RunContext, compressible
from quantbench.methods.uniform import Scheme, quantize_uniform, scheme_allows
from quantbench.registry import register_method


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
        k = budget.levels
        return k is not None and k <= 2**16 and scheme_allows(k, params.scheme)

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p, levels = self.params, budget.levels
        state = ref.state_dict()
        quantized = {
            name: quantize_uniform(state[name], levels, p.scheme, p.per_channel, p.float_dtype)
            for name in ctx.progress(compressible(ref), desc=f"rtn {levels} levels")
        }
        return ctx.assemble(ref, quantized)
