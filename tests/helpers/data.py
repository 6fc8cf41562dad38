"""Small datasets for method tests."""

from __future__ import annotations

import torch


class Inputs(torch.utils.data.Dataset):
    """A dataset of the rows of ``x``, each labelled 0 (calibration needs inputs only)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0
