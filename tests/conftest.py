from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict:
    """A small, fast grid writing into a temporary results folder."""
    return {
        "name": "tiny",
        "results_dir": str(tmp_path / "results"),
        "budgets": [2, 8],
        "reference": {"epochs": 3},
    }
