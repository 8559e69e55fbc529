"""The library's typed errors. The CLI turns them into one-line messages and exit codes (cli/errors.py).

Every expected failure derives from `VmaeError`; its message is written for a person and says what to do.
Anything else reaching the CLI is a bug and keeps its traceback under VMAE_DEBUG=1.

The library speaks of its own parameters, never of command-line flags: a message names a parameter with
`option("dtype")`, which reads `dtype` to a Python caller and, to a user of the command line, the flag that
cli/errors.py spells for it (its name with dashes, or what its table maps it to).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

_MARK = "\x1f"  # the ASCII unit separator: brackets a parameter's name inside a message
_OPTION = re.compile(f"{_MARK}([^{_MARK}]+){_MARK}")


def option(name: str) -> str:
    """A parameter named inside an error message (`name` as the Python API spells it, e.g. "dtype", "out")."""
    return f"{_MARK}{name}{_MARK}"


def python_name(name: str) -> str:
    return f"`{name}`"


_SPELLING: list[Callable[[str], str]] = [python_name]  # how this process spells parameters (`spelled`)


@contextlib.contextmanager
def spelled(name: Callable[[str], str]) -> Iterator[None]:
    """Inside the block, messages and error records spell parameters with `name` (the CLI: its flags), so
    that a record written to a file says what the terminal line says."""
    _SPELLING.append(name)
    try:
        yield
    finally:
        _SPELLING.pop()


def spell(text: str, name: Callable[[str], str] | None = None) -> str:
    """`text` with each parameter marked by `option()` spelled by `name` (by default, as `spelled` says)."""
    return _OPTION.sub(lambda m: (name or _SPELLING[-1])(m.group(1)), text)


def listing(names: list[str], n: int = 6) -> str:
    """Up to `n` of `names`, sorted, for a message: `a, b, c, ... (12 more)`."""
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


class VmaeError(Exception):
    """An expected failure with a one-line, actionable message."""

    def render(self, name: Callable[[str], str] | None = None) -> str:
        """The message, with each parameter it names spelled by `name` (the CLI passes its flags' table; by
        default as `spelled` says: `dtype` to a Python caller). `render(option)` keeps the marks."""
        return spell(super().__str__(), name)

    def __str__(self) -> str:
        return self.render()


class UsageError(VmaeError, ValueError):
    """A value that a caller passed and vmae refuses (exit code 2 on the command line).

    Fields, where known: `param` (the parameter's name, as in `option()`), `value` (what was passed),
    `allowed` (what would fit: a tuple of choices or a range in words), `path` (a file the value names).
    """

    def __init__(self, message: str, *, param: str | None = None, value=None, allowed=None, path=None):
        super().__init__(message)
        self.param, self.value, self.allowed, self.path = param, value, allowed, path


class CheckpointError(VmaeError):
    """A model reference that cannot be resolved or loaded (missing, damaged, the wrong kind of model).

    The run cannot start, so the exit code is 2, as for usage errors: a script tells a mistyped model
    reference from inputs that failed (1).
    """


class ModelNotFoundError(CheckpointError, OSError):
    """A model whose files are not there: no such folder or file, no config.json or weights in it, or a Hub id
    that is not in the local cache and cannot be fetched. Also an `OSError`, as transformers raises for these,
    so code written for transformers (`except OSError`) catches it."""


class ConfigError(VmaeError, ValueError):
    """An invalid or inconsistent model configuration: the model cannot be built, the run cannot start (exit 2)."""


class FieldError(ConfigError):
    """A field of a model file that vmae refuses: config.json, preprocessor_config.json or a weight file.

    `path` is the file (None while only the field is known: the reader that knows the file fills it in),
    `field` the field or tensor name, `value` what the file says, `allowed` what would fit (a range, or the
    value that the weights imply). The message is one line that names all of them.
    """

    def __init__(self, message: str, *, field: str, value, allowed, path=None):
        super().__init__(message)
        self.message, self.field, self.value, self.allowed, self.path = message, field, value, allowed, path

    def at(self, path) -> FieldError:
        """The same error, naming its file (kept if one is named already)."""
        if self.path is None:
            self.path = path
        return self

    def render(self, name: Callable[[str], str] | None = None) -> str:
        text = super().render(name)
        return f"{self.path}: {text}" if self.path is not None else text


class Interrupted(VmaeError):
    """Ctrl-C (SIGINT) or SIGTERM: what was done is kept, and the same call with `resume` continues it.

    Fields, where a batch run was stopped: `kept` (inputs done and kept), `total` (inputs of the run),
    `journal` (where they are kept; None where nothing was written to disk).
    """

    def __init__(self, message: str, *, kept: int | None = None, total: int | None = None, journal=None):
        super().__init__(message)
        self.kept, self.total, self.journal = kept, total, journal
