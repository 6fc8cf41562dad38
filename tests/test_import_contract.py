"""The import contract: the methods room (``methods/``, installed as ``quantbench.methods``) and
the library calls import nothing from the harness rooms — planning, config, tracking, the
runner, reporting, the CLI — neither at import time (checked in a fresh interpreter, transitive
imports included) nor inside a function (checked in the source, every import statement)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ("quantbench.plan", "quantbench.config", "quantbench.tracking", "quantbench.runner", "quantbench.spec",
           "quantbench.tables", "quantbench.summary", "quantbench.claims", "quantbench.significance",
           "quantbench.variance", "quantbench.plots", "quantbench.doctables", "quantbench.cli")
LIBRARY_ROOM = [*sorted((ROOT / "methods").rglob("*.py")), ROOT / "quantbench" / "library.py"]


def _harness(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HARNESS)


def test_importing_the_methods_and_the_library_loads_no_harness_module():
    code = ("import sys, quantbench.library, quantbench.methods; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('quantbench')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            timeout=300).stdout.split()
    assert "quantbench.methods.gptq" in loaded and "quantbench.library" in loaded
    assert [m for m in loaded if _harness(m)] == []


def test_no_import_statement_of_the_methods_room_names_a_harness_module():
    found = []
    for path in LIBRARY_ROOM:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if _harness(n)]
    assert len(LIBRARY_ROOM) > 10 and found == []
