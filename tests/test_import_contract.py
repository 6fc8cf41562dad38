"""The import contract: quantbench/'s rooms keep their directions (import-linter's contracts in
pyproject.toml: the harness rooms layered, the method contract and the library below them), and
the methods room (``methods/``, installed as ``quantbench.methods`` from a folder the import graph
does not walk) with the library imports nothing from the harness rooms — planning and jobs,
config, tracking, reporting, the CLI — neither at import time (checked in a fresh interpreter,
transitive imports included) nor inside a function (checked in the source, every import statement)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ("quantbench.jobs", "quantbench.config", "quantbench.tracking", "quantbench.report", "quantbench.cli")
LIBRARY_ROOM = [*sorted((ROOT / "methods").rglob("*.py")), *sorted((ROOT / "models").rglob("*.py")),
                ROOT / "quantbench" / "library.py"]


def test_the_rooms_keep_the_import_contracts():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "2 kept, 0 broken" in result.stdout, result.stdout[-3000:]


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
