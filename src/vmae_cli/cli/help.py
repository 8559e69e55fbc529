"""How vmae's commands print their --help: descriptions that wrap to the terminal, metavars as the README writes
them (PATH, MODEL, N, SECONDS) where typer would print a Python type (`<list[str]>`, `<bool>`), and a closing
section of examples that run as written.

`Command` is the class of every command and `Group` that of `vmae` itself (cli/app.py); `EXAMPLES` holds the
examples of each.
"""

from __future__ import annotations

import re

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# Metavars by option, for options that do not name one themselves; else by type (`_BY_TYPE`: a Path option
# that takes only files is a FILE, only folders a DIR).
METAVARS = {
    "--model": "MODEL", "--init": "MODEL", "--revision": "REV", "--features": "FILE", "--labels": "FILE",
    "--val": "PATH", "--config": "NAME|FILE", "--model-config": "NAME|FILE", "--verify-clip": "VIDEO",
    "--device": "DEVICE", "--dtype": "DTYPE", "--shard": "I/N", "--window": "SECONDS", "--hop": "SECONDS",
    "--sampling": "window|uniform", "--crops": "1|3", "--from": "original|v2|hf", "--pool": "POOL",
    "--format": "FORMAT", "--task": "TASK",
}  # fmt: skip
_BY_TYPE = {"int": "N", "int range": "N", "float": "FLOAT", "float range": "FLOAT", "path": "PATH", "file": "FILE",
            "dir": "DIR", "str": "TEXT"}  # fmt: skip
# Arguments by parameter name; others are named by their parameter in capitals (MODEL, DATA, OUT).
ARGUMENTS = {"inputs": "PATH", "src": "CHECKPOINT", "dst": "OUT_DIR"}

EXAMPLES = {
    "vmae": [
        "vmae classify clip.mp4",
        "vmae embed videos/ --out feats.npy",
        "vmae pretrain footage/ --out runs/mae",
        "vmae finetune labelled/ --model runs/mae/model --out runs/cls",
    ],
    "classify": [
        "vmae classify clip.mp4",
        "vmae classify videos/ --jsonl > preds.jsonl",
        "vmae classify clip.mp4 --clips 5 --crops 3",
        "vmae classify long.mp4 --timeline --window 2 --hop 1",
    ],
    "embed": [
        "vmae embed videos/ --out feats.npy",
        "vmae embed videos/ --out feats.npz",
        "vmae embed clip.mp4 --model MCG-NJU/videomae-base --pool none --out tokens.npy",
    ],
    "info": [
        "vmae info MCG-NJU/videomae-base-finetuned-kinetics",
        "vmae info runs/model --json",
    ],
    "convert": [
        "vmae convert checkpoint.pth out_dir/",
        "vmae convert checkpoint.pth out_dir/ --labels k400 --verify",
    ],
    "pretrain": [
        "vmae pretrain footage/ --out runs/mae --model-config small",
        "vmae pretrain list.csv --out runs/mae --config base --set optim.epochs=400",
        "vmae pretrain footage/ --out runs/mae --resume",
    ],
    "finetune": [
        "vmae finetune labelled/ --model runs/mae/model --out runs/cls",
        "vmae finetune train.txt --labels label_map.txt --model base --out runs/cls",
    ],
    "evaluate": [
        "vmae evaluate labelled/val --model runs/cls/model --clips 5 --crops 3",
        "vmae evaluate val.csv --model runs/cls/model --json > eval.json",
    ],
    "probe": [
        "vmae probe labelled/ --model runs/mae/model",
        "vmae probe labelled/ --model runs/mae/model --features feats.npy --json",
        "vmae probe labelled/val --features feats.npy",
    ],
    "export": [
        "vmae export runs/cls/model clf.pt2",
        "vmae export runs/cls/model clf.onnx --dynamic-batch",
        "vmae export MCG-NJU/videomae-base enc.pt2 --task features --dtype bf16",
    ],
}


def examples(name: str) -> str:
    """The closing help section of command `name` (typer's epilog): one example per line."""
    return "Examples:\n\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])


def unwrapped(text: str | None) -> str | None:
    """Help text with each paragraph on one line, for the terminal to wrap: rich keeps single newlines, so
    a docstring's own line breaks would show mid-sentence at other widths."""
    if not text:
        return text
    return "\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip()) for p in re.split(r"\n\s*\n", text.strip()))


def _name(params: list) -> None:
    """Give arguments and options their metavars (see the module's docstring); flags show none."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.metavar = param.metavar or ARGUMENTS.get(param.name, param.name.upper())
            param.__class__ = _NamedArgument
        elif isinstance(param, TyperOption) and param.metavar is None:
            named = METAVARS.get(max(param.opts, key=len))
            param.metavar = (
                "" if param.is_flag else named or _BY_TYPE.get(param.display_type(None)[1:-1], "TEXT")
            )


class _NamedArgument(TyperArgument):
    """An argument whose metavar (shown as its name) says what it is, with no Python type beside it (typer
    prints one for arguments whatever their metavar, and has no setting for it)."""

    def display_type_rich(self, ctx) -> str | None:
        return None


class _Named:
    """What `Command` and `Group` add to typer's classes: help paragraphs that wrap, metavars that name."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = unwrapped(self.help)
        _name(self.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _name([option] if option is not None else [])
        return option


class Command(_Named, TyperCommand):
    """A vmae command: its help wraps to the terminal, its metavars are names, flags show none."""


class Group(_Named, TyperGroup):
    """The root `vmae`: as `Command`, for its own options."""
