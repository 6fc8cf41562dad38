"""Writing files all at once: the one atomic-write helper (outputs, checkpoints, artifacts, tables)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path`` (named per process, with ``path``'s
    suffix so format detection still works), which then replaces ``path`` in one rename: readers
    see the old file or the whole new one, and an interrupted write leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(data: dict, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))
