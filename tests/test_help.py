"""Every command's --help, as a person sees it on an 80-column terminal: lines that fit, metavars that name
things (not Python types), and a closing section of 2-4 examples that parse as the command's own."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import typer

from vmae_cli.cli.app import app
from vmae_cli.cli.help import EXAMPLES

from .conftest import REPO

COMMANDS = sorted(typer.main.get_command(app).commands)  # a new command is checked too
PYTHON_TYPES = re.compile(r"<(bool|str|int|float|file|dir|path|list\[[^\]]*\])[^>]*>|\bTEXT\b")


def _help(*args: str) -> str:
    """`vmae ARGS --help` in a real subprocess, on an 80-column terminal."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"}
    result = subprocess.run([sys.executable, "-m", "vmae_cli", *args, "--help"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def _examples(text: str) -> list[str]:
    """The lines of the help's closing Examples section, stripped."""
    assert "Examples:" in text, text
    section = text.rsplit("Examples:", 1)[1]
    return [line.strip() for line in section.splitlines() if line.strip()]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_fits_80_columns_names_its_metavars_and_ends_with_examples(command):
    text = _help(*([command] if command else []))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert not PYTHON_TYPES.search(text), PYTHON_TYPES.search(text).group()
    assert "…" not in text  # nothing cut short
    examples = _examples(text)
    assert 2 <= len(examples) <= 4 and all(e.startswith("vmae ") for e in examples), examples
    if command:
        assert all(e.startswith(f"vmae {command} ") for e in examples), examples
    assert examples == EXAMPLES[command or "vmae"]


def test_descriptions_wrap_as_paragraphs():
    """The docstring's own line breaks are not kept: a description line ends where the terminal ends it, so
    no line of a paragraph (but its last) stops far short of the width."""
    text = _help("classify")
    description = text.split("╭")[0].split("\n\n")[2:]  # after the usage line
    for paragraph in description:
        rows = [row.rstrip() for row in paragraph.splitlines() if row.strip()]
        for row, following in zip(rows, rows[1:], strict=False):
            assert len(row) + 1 + len(following.split()[0]) > 79, (row, following)


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_are_the_commands_own(command):
    """Each example parses as the command (its options exist, its values pass the options' checks) without
    running it, and each stands in the README."""
    click_command = typer.main.get_command(app).commands[command]
    readme = (REPO / "README.md").read_text()
    for example in EXAMPLES[command]:
        words = shlex.split(example.split(" > ")[0])
        assert words[:2] == ["vmae", command]
        with click_command.make_context(command, words[2:]) as ctx:
            assert ctx.params
        assert example.split(" > ")[0] in readme or _same_as_readme(example, readme), example


def _same_as_readme(example: str, readme: str) -> bool:
    """A README line that starts with the example (the README may add options or a comment)."""
    return any(line.startswith(example) for line in readme.splitlines())
