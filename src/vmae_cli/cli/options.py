"""Options shared by several commands, as `Annotated` aliases so every command spells them the same."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[str, typer.Argument(help="Model folder, weight file, or Hugging Face Hub id.", show_default=False)]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Hub revision: branch, tag or commit.", show_default=False)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Write JSON to stdout instead of a table.")]
