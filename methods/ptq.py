"""What post-training methods share: the calibration sample, the forward order of the layers, the
inputs a layer sees, and the rows that multiply its neurons.

A layer's statistics are sums over rows (``XᵀX``, ``X̃ᵀX``), so they are accumulated batch by batch
and in row blocks of at most ``ROWS_BUDGET`` elements: memory does not grow with the number of
calibration samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from quantbench.format import AffineGrid, QuantizedTensor, code_width
from quantbench.method import RunContext

ROWS_BUDGET = 2**27  # float64 elements of one block of layer rows (1 GiB)


def calibration_batches(ctx: RunContext, samples: int, batch: int) -> list[torch.Tensor]:
    """A seeded sample of ``samples`` training inputs (all of them when fewer), in batches of ``batch``."""
    data = ctx.task.train
    n = min(samples, len(data))
    idx = torch.randperm(len(data), generator=ctx.generator(0))[:n]
    x = torch.stack([data[int(i)][0] for i in idx])
    return [x[i:i + batch].to(ctx.device) for i in range(0, n, batch)]


def forward_order(model: nn.Module, mod_names: list[str], example: torch.Tensor) -> list[str]:
    """``mod_names`` in the order a forward pass on ``example`` calls them (modules it does not call last)."""
    called: list[str] = []
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: called.append(n)) for n in mod_names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hd in handles:
            hd.remove()
    seen = list(dict.fromkeys(called))
    return seen + [n for n in mod_names if n not in seen]


def quantizable_layers(model: nn.Module, weights: list[str]) -> list[str]:
    """The Linear/Conv2d modules that own the ``weights`` (a weight tied to an embedding stays dense)."""
    modules = dict(model.named_modules())
    owners = [n.rpartition(".")[0] for n in weights]
    return [m for m in owners if isinstance(modules[m], (nn.Linear, nn.Conv2d))]


def layer_inputs(model: nn.Module, module: nn.Module, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The input of ``module`` for every calibration batch (a forward hook)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                yield seen.pop()
    finally:
        handle.remove()


def layer_rows(module: nn.Module, x: torch.Tensor, group: int) -> torch.Tensor:
    """The rows X that multiply the neurons of ``module`` (for conv: unfolded patches of one group)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"post-training quantization needs numeric zero padding, got "
                             f"padding={module.padding!r} mode={module.padding_mode!r}")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)  # (B, C_in·kh·kw, L), channel-major like the weight
        per_group = cols.shape[1] // module.groups
        return cols[:, group * per_group:(group + 1) * per_group].transpose(1, 2).reshape(-1, per_group)
    raise ValueError(f"post-training quantization covers Linear and Conv2d layers, not {type(module).__name__}")


def row_blocks(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``x`` split along the batch so that one block of its rows stays under ``ROWS_BUDGET``
    elements (the statistics are sums over rows, so the split changes nothing but memory: unfolded
    224×224 ImageNet patches of a 128-sample batch would take ~30 GB each for VGG16's conv1_2)."""
    per_sample = x[0].numel() * (math.prod(module.kernel_size) if isinstance(module, nn.Conv2d) else 1)
    return torch.split(x, max(1, ROWS_BUDGET // max(1, per_sample)))


def groups(module: nn.Module) -> int:
    """Convolution groups of ``module`` (1 for a linear layer): each has its own rows and neurons."""
    return module.groups if isinstance(module, nn.Conv2d) else 1


def group_grids(grid: AffineGrid, n_groups: int, n_out: int) -> Iterator[tuple[int, slice, AffineGrid]]:
    """``(group, its rows of the weight, its part of grid)`` for each of ``n_groups`` groups of the
    ``n_out`` neurons (a per-tensor grid serves every group whole)."""
    per_group = n_out // n_groups
    for gi in range(n_groups):
        rows = slice(gi * per_group, (gi + 1) * per_group)
        yield gi, rows, grid if grid.channels == 1 else AffineGrid(grid.scale[rows], grid.zero[rows])


def quantized_weight(module: nn.Module, codes: torch.Tensor, grid: AffineGrid, levels: int) -> QuantizedTensor:
    """The record of ``module``'s weight as ``codes`` on ``grid``; the module's weight becomes its
    dequantized values, so that the layers after it see the quantized prefix."""
    record = QuantizedTensor(tuple(module.weight.shape), codes.reshape(module.weight.shape).cpu().numpy(), grid,
                             **code_width(levels))
    module.weight.copy_(record.dequantize())
    return record
