"""The commands the docs tell people to run exist as written: every ``quantbench <command>`` in
a code span or block of the README and docs/ names a subcommand the CLI has, with options it
takes, and every ``--forcerun`` names a rule the workflow defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMAND = re.compile(r"(?<![\w./-])quantbench ([a-z][a-z-]*)([^\n`#|;&]*)")
RULES = re.compile(r"^(all|reference|tables|cell|cells|cells_\w+)$")  # workflows/rules: cell rule per config batch


def _code(text: str) -> list[str]:
    """The contents of the fenced blocks and inline code spans of a markdown text."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def _commands() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for code in _code(doc.read_text()):
            for line in code.splitlines():
                if re.search(r"\b(from|import) quantbench\b", line):
                    continue
                found += [(doc.name, m.group(1), m.group(2)) for m in COMMAND.finditer(line)]
    return found


def test_the_docs_name_commands_at_all():
    assert {sub for _, sub, _ in _commands()} >= {"tables", "compare", "claims", "variance", "validate", "methods"}


@pytest.mark.parametrize("doc, sub, rest", _commands())
def test_a_quantbench_command_in_the_docs_exists_with_its_options(doc, sub, rest):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert sub in subparsers, f"{doc}: quantbench {sub}{rest}: no such command"
    options = subparsers[sub]._option_string_actions
    for flag in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", rest):
        assert flag in options, f"{doc}: quantbench {sub}{rest}: {sub} has no option {flag}"


def test_every_forcerun_in_the_docs_names_a_rule():
    named = [(doc.name, rule) for doc in DOCS for code in _code(doc.read_text())
             for rule in re.findall(r"--forcerun (\S+)", code)]
    assert named and all(RULES.match(rule) for _, rule in named), named
    defined = {m for f in (ROOT / "workflows" / "rules").glob("*.smk") for m in re.findall(r"^rule (\w+):",
                                                                                          f.read_text(), re.M)}
    assert {"reference", "tables"} <= defined  # the named rules; the cell rule's name is its batch's (cell.smk)
