"""The docs' result tables are their CSVs' (``quantbench docs-tables``): the shipped docs are current,
and a doc whose table no longer matches its CSV is caught."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from quantbench.cli import main
from quantbench.report.doctables import BLOCK, render, stale, update

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "grids.md", *sorted((ROOT / "docs" / "methods").glob("*.md"))]


def test_every_table_in_the_docs_is_its_csvs():
    assert sum(len(BLOCK.findall(doc.read_text())) for doc in DOCS) >= 5
    assert [line for doc in DOCS for line in stale(doc, ROOT)] == []


def test_a_table_that_drifts_from_its_csv_is_found_and_rewritten(tmp_path, monkeypatch, capsys):
    csv = tmp_path / "digits.csv"
    long = pd.read_csv(ROOT / "docs" / "results" / "default" / "digits.csv")
    long.to_csv(csv, index=False)
    doc = tmp_path / "page.md"
    block = render(csv, ["lenet5"], ["rtn", "gptq"])
    doc.write_text(f"text\n<!-- table: digits.csv archs=lenet5 methods=rtn,gptq -->\n{block}<!-- /table -->\nmore\n")
    assert stale(doc, tmp_path) == []
    assert "| lenet5 | post-training | gptq" in block and "lenet300" not in block and "| LC " not in block
    row = long.index[(long["arch"] == "lenet5") & (long["method"] == "gptq") & (long["budget"] == 2)][0]
    long.loc[row, "mean"] += 1.0  # the record moved; the doc did not
    long.to_csv(csv, index=False)
    assert len(stale(doc, tmp_path)) == 1
    monkeypatch.chdir(tmp_path)
    assert main(["docs-tables", "--check", "page.md"]) == 1
    assert "page.md: the table of digits.csv archs=lenet5 methods=rtn,gptq differs" in capsys.readouterr().out
    assert update(doc, tmp_path) and stale(doc, tmp_path) == []
    text = doc.read_text()
    assert text.startswith("text\n") and text.endswith("<!-- /table -->\nmore\n")
    assert f"{long.loc[row, 'mean']:.2f}" in text
    empty = tmp_path / "new.md"  # a block just written, not yet filled
    empty.write_text("<!-- table: digits.csv archs=lenet5 methods=rtn,gptq -->\n<!-- /table -->\n")
    assert update(empty, tmp_path) and empty.read_text() == text[len("text\n"):-len("more\n")]


def test_a_block_naming_a_missing_csv_or_an_unknown_filter_is_refused(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("<!-- table: nowhere.csv -->\n<!-- /table -->\n")
    with pytest.raises(FileNotFoundError, match="nowhere.csv: the table CSV a doc names does not exist"):
        stale(doc, tmp_path)
    doc.write_text("<!-- table: nowhere.csv arch=x -->\n<!-- /table -->\n")
    with pytest.raises(LookupError, match="unknown table filter 'arch=x'"):
        stale(doc, tmp_path)
