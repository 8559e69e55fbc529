"""The library's errors as users of the command line see them: one line, flags in place of parameter names,
and the exit code. The one table of both: `FLAGS` (parameter -> flag) and `EXIT_CODES` (error type -> code)."""

from __future__ import annotations

from ..errors import CheckpointError, ConfigError, Interrupted, UsageError, VmaeError

# A parameter whose flag is not `--` + its name with dashes: the table is the one place they differ.
FLAGS: dict[str, str] = {
    "verify=False": "--no-verify",
    "data.flip=False": "--no-flip",
    "input_format": "--live-format",
    "label_map": "--labels",
    "source": "--from",  # convert's source layout (`from` is a Python keyword)
    "mask.ratio": "--set mask.ratio",  # a recipe key: set with --set KEY=VALUE
    "optim.clip_grad": "--set optim.clip_grad",
    "data.cache_mb": "--set data.cache_mb",
}

# 2: the run cannot start (a value refused, a model that cannot be loaded or built: a script tells a typo in
# --model from inputs that failed); 130: interrupted; any other expected failure 1. The first type in an
# error's class hierarchy that is named here decides.
EXIT_CODES: dict[type[VmaeError], int] = {UsageError: 2, CheckpointError: 2, ConfigError: 2, Interrupted: 130}


def flag(name: str) -> str:
    """The command-line spelling of a library parameter (`dtype` -> `--dtype`, `num_frames` -> `--num-frames`)."""
    return FLAGS.get(name) or "--" + name.replace("_", "-")


def message(e: VmaeError) -> str:
    """The one line after `error: `."""
    return e.render(flag)


def exit_code(e: VmaeError) -> int:
    return next((EXIT_CODES[t] for t in type(e).__mro__ if t in EXIT_CODES), 1)
