"""`vmae info MODEL`: what a model is and how vmae would run it."""

from __future__ import annotations

from .options import JsonFlag, ModelArg, RevisionOpt


def info(model: ModelArg, revision: RevisionOpt = None, json_: JsonFlag = False) -> None:
    """Summarise a model folder or Hub id: size, frames, resolution, labels, parameters, sampling."""
    from ..inference.summary import model_summary
    from .ui import print_json, print_mapping

    summary = model_summary(model, revision=revision)
    if json_:
        print_json(summary)
    else:
        print_mapping(summary, title=f"vmae info {model}")
