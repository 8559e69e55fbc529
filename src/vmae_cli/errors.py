"""Exceptions that the CLI turns into one-line messages (see cli/app.py).

Every expected failure derives from `VmaeError`; its message is written for a person and says
what to do. Anything else reaching the CLI is a bug and keeps its traceback under VMAE_DEBUG=1.
"""

from __future__ import annotations


class VmaeError(Exception):
    """An expected failure with a one-line, actionable message."""

    exit_code = 1


class UsageError(VmaeError):
    """Bad flags or arguments (exit code 2)."""

    exit_code = 2


class CheckpointError(VmaeError):
    """A model reference that cannot be resolved or loaded (missing, damaged, the wrong kind of model).

    The run cannot start, so the exit code is 2, as for usage errors: a script tells a typo in --model
    from inputs that failed (1).
    """

    exit_code = 2


class ModelNotFoundError(CheckpointError, OSError):
    """A model whose files are not there: no such folder or file, no config.json or weights in it, or a Hub id
    that is not in the local cache and cannot be fetched. Also an `OSError`, as transformers raises for these,
    so code written for transformers (`except OSError`) catches it."""


class ConfigError(VmaeError, ValueError):
    """An invalid or inconsistent model configuration: the model cannot be built, the run cannot start (exit 2)."""

    exit_code = 2


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

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class Interrupted(VmaeError):
    """Ctrl-C (SIGINT) or SIGTERM: what was done is kept, and the same command with --resume continues it."""

    exit_code = 130
