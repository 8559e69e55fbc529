"""The library's errors as users of the command line see them: one line, flags in place of parameter names,
and the exit code."""

from __future__ import annotations

from ..errors import VmaeError

# A parameter whose flag is not `--` + its name with dashes: the table is the one place they differ.
FLAGS: dict[str, str] = {}


def flag(name: str) -> str:
    """The command-line spelling of a library parameter (`dtype` -> `--dtype`, `num_frames` -> `--num-frames`)."""
    return FLAGS.get(name) or "--" + name.replace("_", "-")


def message(e: VmaeError) -> str:
    """The one line after `error: `."""
    return e.render(flag)


def exit_code(e: VmaeError) -> int:
    return e.exit_code
