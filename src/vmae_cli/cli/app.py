"""The root `vmae` app: registers the subcommands and turns expected failures into one-line messages.

Nothing here imports torch: `vmae --help` must start fast. Subcommands import the heavy parts when they run.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
from typing import Annotated, NoReturn

import typer

from .._version import __version__
from ..errors import Interrupted, VmaeError, spelled
from . import classify, convert, embed, errors, evaluate, export, finetune, info, pretrain, probe
from .help import Command, Group, examples
from .logs import messages_to

app = typer.Typer(
    name="vmae",
    help="VideoMAE for video understanding: classify, embed, pre-train, fine-tune and convert video models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples("vmae"),
    cls=Group,
)


def _interruptible(command):
    """The command with Ctrl-C said in words: Typer would turn a KeyboardInterrupt into a silent exit 130."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None

    return run


for _command in (classify.classify, embed.embed, info.info, convert.convert, pretrain.pretrain,
                 finetune.finetune, evaluate.evaluate, probe.probe, export.export):  # fmt: skip
    app.command(_command.__name__, cls=Command, epilog=examples(_command.__name__))(_interruptible(_command))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vmae {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More messages on stderr.")] = False,
) -> None:
    """VideoMAE for video understanding. Data goes to stdout; progress, warnings and errors to stderr."""
    logging.getLogger("vmae_cli").setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Exit codes: 0 done, 1 failed (some or all inputs), 2 usage error, 130 interrupted."""
    debug = os.environ.get("VMAE_DEBUG", "") not in ("", "0")
    # log records and warnings: one line each, repeats counted; parameters spelled as flags, in messages and in
    # the error records written to files alike
    if "torch" not in sys.modules and threading.current_thread() is threading.main_thread():
        sys.meta_path.insert(0, _InterruptAfterTorch())
    with messages_to(sys.stderr), spelled(errors.flag):
        code = _run(argv, debug)
    code = code if isinstance(code, int) else 0
    if argv is None and "torch" in sys.modules:  # the console command, not a caller of main([...])
        _end_process(code)
    sys.exit(code)


class _InterruptAfterTorch:
    """Holds a Ctrl-C that comes while torch is being imported until the import is done.

    Raised inside torch's import, the KeyboardInterrupt can cross torch's C++ start-up code, which then ends the
    process with `terminate called after throwing an instance of 'pybind11::error_already_set'` (measured:
    SIGINT 0.6 s into `vmae classify clip.mp4`). The import takes about a second; the interrupt comes after it.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(
            name
        )  # as the import system finds it, from the finders after this one
        if spec is None or spec.loader is None or threading.current_thread() is not threading.main_thread():
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            came = []
            before = signal.signal(signal.SIGINT, lambda *_: came.append(True))
            try:
                load(module)
            finally:
                signal.signal(signal.SIGINT, before)
            if came:
                raise KeyboardInterrupt

        spec.loader.exec_module = exec_module
        return spec


def _end_process(code: int) -> NoReturn:
    """Exit without the interpreter's teardown of every module, which after `import torch` takes about 0.4 s
    (measured: `import torch` then exit, 1.40-1.53 s; then os._exit, 1.07-1.09 s) and is a tenth of a whole
    `vmae classify clip.mp4`. What exiting does for a program still happens first: the atexit handlers
    (multiprocessing's children, logging's flush, finalizers such as temporary folders), then stdout and stderr
    are flushed. Every file vmae writes is closed and renamed into place before the command returns. A thread
    that is still running (exit would wait for it) keeps the ordinary exit."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), or a closed stream
            code = code or 1
    os._exit(code)


def _run(argv: list[str] | None, debug: bool) -> int | None:
    """The command's exit code; expected failures become one line on stderr."""
    # Typer may vendor click; find its exception classes through typer's own BadParameter.
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        code = app(args=argv, prog_name="vmae", standalone_mode=False)
    except click_error as e:  # bad flags or arguments: one line, not click's Usage/Try/Error block
        code = 2 if isinstance(e, usage_error) else e.exit_code
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `vmae`: the help (printed already), exit 2
            if e.format_message().strip():
                e.show()
        else:
            typer.echo(_one_line(e, usage_error, sys.argv[1:] if argv is None else argv), err=True)
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        code = 130
    except VmaeError as e:
        if debug:
            raise
        typer.echo(f"error: {errors.message(e)}", err=True)
        code = errors.exit_code(e)
    except OSError as e:  # a path that cannot be written or read (no such folder, read-only, disk full)
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        typer.echo(f"error: {where}{e.strerror or e}; check that the path exists and is writable", err=True)
        code = 1
    except Exception as e:  # a bug: say so in one line, keep the traceback for VMAE_DEBUG=1
        if debug:
            raise
        typer.echo(
            f"internal error: {type(e).__name__}: {e} (run again with VMAE_DEBUG=1 for the traceback, and report it)",
            err=True,
        )
        code = 1
    return code


def _one_line(e: Exception, usage_error: type, argv: list[str]) -> str:
    """A click error as vmae prints errors: `error: No such option: --x (see vmae classify --help)`."""
    message = " ".join(e.format_message().split())  # click's messages may wrap
    message = re.sub(r"\s*\(Possible options: ([^)]*)\)", r"; did you mean \1?", message)
    if not isinstance(e, usage_error):
        return f"error: {message}"
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        where = ctx.command_path
    else:  # raised while parsing, before the command's context exists: name the command from argv
        names = {c.name for c in app.registered_commands}
        where = " ".join(["vmae", *[a for a in argv if a in names][:1]])
    return f"error: {message.rstrip('.')} (see {where} --help)"
