"""Exceptions that the CLI turns into one-line messages (see cli/app.py).

Every expected failure derives from `VmaeError`; its message is written for a person and says
what to do. Anything else reaching the CLI is a bug and keeps its traceback under VMAE_DEBUG=1.
"""


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


class ConfigError(VmaeError, ValueError):
    """An invalid or inconsistent model configuration: the model cannot be built, the run cannot start (exit 2)."""

    exit_code = 2
