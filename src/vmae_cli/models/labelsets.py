"""Well-known label sets, recognised from a classifier's id2label: which data set the model was trained on.

A model's default frame sampling follows its data set (Something-Something: one frame per segment; Kinetics,
UCF101, HMDB51: strided windows), so recognition must never mistake one set for another. Words are no
evidence (Kinetics-400 has "swinging on something"); a set is recognised by its exact label list where vmae
bundles it (labels/k400.json, labels/ssv2.json), else by its size and names it must contain.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

LABELS_DIR = Path(__file__).parents[1] / "labels"
LABEL_SETS = ("k400", "ssv2")  # the bundled lists, by file name

# Names that only these data sets have, as label_key spells them (the lists are not bundled).
UCF101_NAMES = {"applyeyemakeup", "applylipstick", "blowdryhair", "jumpingjack", "playingdhol", "yoyo"}
HMDB51_NAMES = {"brushhair", "cartwheel", "drawsword", "flicflac", "shootbow", "swingbaseball"}
KINETICS_SHARED = 250  # K600 and K700 keep most K400 classes: at least this many of its 400 names


def label_key(name: str) -> str:
    """A label's letters and digits, lowercased: the Hub's spellings of one class compare equal
    ("Putting [something] into [something]" / "Putting something into something", "air_drumming" /
    "air drumming", "ApplyEyeMakeup" / "Apply Eye Makeup")."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


@functools.cache
def bundled(name: str) -> dict[int, str]:
    """A bundled label list (`k400`, `ssv2`) as id2label."""
    data = json.loads((LABELS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return {int(k): v for k, v in data.items()}


@functools.cache
def _keys(name: str) -> frozenset[str]:
    return frozenset(label_key(v) for v in bundled(name).values())


def recognise(id2label: dict[int, str] | None) -> str | None:
    """The data set whose classes these are ("Kinetics-400", "Something-Something v2", "Kinetics-600",
    "Kinetics-700", "UCF101", "HMDB51"), or None when the labels do not say."""
    if not id2label:
        return None
    keys = {label_key(v) for v in id2label.values()}
    count = len(id2label)
    if count == 174 and keys == _keys("ssv2"):
        return "Something-Something v2"
    if count == 400 and keys == _keys("k400"):
        return "Kinetics-400"
    if count in (600, 700) and len(keys & _keys("k400")) >= KINETICS_SHARED:
        return f"Kinetics-{count}"
    if count == 101 and UCF101_NAMES <= keys:
        return "UCF101"
    if count == 51 and HMDB51_NAMES <= keys:
        return "HMDB51"
    return None
