"""Tables in the docs, made from a grid's table CSV (``results/tables/<experiment>/<task>.csv``, a copy
of which is kept under ``docs/results/``), so that no doc shows a number the record does not.

A doc marks each such table with the CSV it comes from and, optionally, the archs and methods it
keeps (the reference rows of those archs always stay)::

    <!-- table: docs/results/default/digits.csv archs=lenet300 methods=rtn,gptq -->
    ... the table and its footnotes, written by `quantbench docs-tables` ...
    <!-- /table -->

The block is what :func:`quantbench.report.tables.wide_table` and :func:`~quantbench.report.tables.footnotes`
make of those CSV rows, the same code that writes ``<task>.md``. ``quantbench docs-tables FILE...``
rewrites the blocks; ``--check`` lists the blocks that differ (a test runs it on the README and
docs/methods/*.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from quantbench.files import write_text_atomic

BLOCK = re.compile(r"<!-- table: (?P<csv>\S+)(?P<filters>[^>]*?) -->\n(?P<body>.*?)<!-- /table -->", re.S)
FILTERS = ("archs", "methods")


def _filters(text: str, where: str) -> dict[str, list[str]]:
    found = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in FILTERS or not value:
            expected = " or ".join(f"{k}=a,b" for k in FILTERS)
            raise LookupError(f"{where}: unknown table filter {item!r}; expected {expected}")
        found[key] = value.split(",")
    return found


def render(csv: Path, archs: list[str] | None = None, methods: list[str] | None = None) -> str:
    """The markdown table (and its footnotes) of the rows of ``csv`` for ``archs`` and ``methods``."""
    from quantbench.report.tables import footnotes, wide_table

    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: the table CSV a doc names does not exist (copy it from results/tables/)")
    long = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    for col in ("method_params", "starts_from", "ci_kind"):
        if col in long:
            long[col] = long[col].fillna("")
    keep = long["arch"].isin(archs) if archs else pd.Series(True, index=long.index)
    if methods:
        keep &= long["method"].isin(["reference", *methods])
    part = long[keep]
    if part.empty:
        raise LookupError(f"{csv}: no rows for archs {archs} and methods {methods}")
    table = wide_table(part).to_markdown(index=False, disable_numparse=True)
    return table + "\n" + "".join(f"\n{line}\n" for line in footnotes(part))


def update(doc: Path, root: Path) -> bool:
    """Rewrite ``doc``'s table blocks from their CSVs; whether anything changed."""
    text = doc.read_text()
    new = BLOCK.sub(lambda m: f"<!-- table: {m['csv']}{m['filters']} -->\n{render_block(m, doc, root)}<!-- /table -->",
                    text)
    if new != text:
        write_text_atomic(doc, new)
    return new != text


def render_block(match: re.Match, doc: Path, root: Path) -> str:
    """What the block ``match`` of ``doc`` should read (its CSV path relative to ``root``)."""
    f = _filters(match["filters"], f"{doc}: table of {match['csv']}")
    return render(root / match["csv"], f.get("archs"), f.get("methods"))


def stale(doc: Path, root: Path) -> list[str]:
    """The CSVs whose table in ``doc`` differs from what the CSV gives (empty: the doc is current)."""
    return [f"{doc}: the table of {m['csv']}{m['filters']} differs from its CSV"
            for m in BLOCK.finditer(doc.read_text()) if m["body"] != render_block(m, doc, root)]
