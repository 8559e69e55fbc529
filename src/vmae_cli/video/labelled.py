"""Labelled video sets: what `vmae finetune` trains and validates on, and what `vmae evaluate` reads.

A labelled set is one of
    - class folders: ROOT/<label>/*.mp4 (a fine-tuning root holds ROOT/train/<label>/ and ROOT/val/<label>/);
    - a CSV/TSV list with a header naming a path column and a `label` column (label names, or indices
      into a label map);
    - the original VideoMAE list: `path label_index` per line, space separated, with an optional label map
      (one name per line; line i names index i).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, option
from .discover import PATH_COLUMNS, read_list, read_text, resolve_listed, subfolders, videos_in_folder

LABEL_COLUMNS = ("label", "class", "category", "label_index")


@dataclass
class LabelledSet:
    """Videos and their label indices into `id2label`."""

    paths: list[str]
    labels: list[int]
    id2label: dict[int, str]

    def __len__(self) -> int:
        return len(self.paths)

    def shard(self, rank: int, world: int) -> LabelledSet:
        return LabelledSet(self.paths[rank::world], self.labels[rank::world], self.id2label)


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """One label name per line (the original's label_map_k400.txt): line i names index i."""
    text = read_text(path, f"the label map ({option('label_map')})", param="label_map")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise _bad_label_map(
            path, "the label map is empty (expected one label name per line)", "one name per line"
        )
    if len(set(names)) != len(names):
        raise _bad_label_map(path, "a label name appears twice", "distinct label names")
    return dict(enumerate(names))


def _bad_label_map(path, problem: str, allowed: str) -> UsageError:
    return UsageError(
        f"{option('label_map')} {path}: {problem}",
        param="label_map",
        value=str(path),
        allowed=allowed,
        path=path,
    )


def load_labelled(
    data: str | os.PathLike,
    id2label: dict[int, str] | None = None,
    label_map: str | os.PathLike | None = None,
) -> LabelledSet:
    """Class folders or a list file. With `id2label` (a model's labels), names are mapped onto it; without,
    the labels are the sorted folder or label names (or the label map's order).

    Integer labels in a list file index the label map, else `id2label`; without either they are names.
    """
    root = Path(data).expanduser()
    index_names = read_label_map(label_map) if label_map else id2label
    if root.is_dir():
        paths, names = _class_folders(root)
    elif root.is_file():
        paths, names = _list_file(root, index_names)
    else:
        raise UsageError(
            f"{data}: no such file or folder; give class folders (DATA/<label>/*.mp4) or a list file"
        )
    if id2label is None:
        id2label = index_names or dict(enumerate(sorted(set(names), key=_natural)))
    label2id = {v: k for k, v in id2label.items()}
    unknown = sorted(set(names) - set(label2id))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f", ... ({len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise UsageError(f"{data}: label(s) not among the model's {len(label2id)} labels: {shown}")
    return LabelledSet(paths, [label2id[n] for n in names], dict(id2label))


def _natural(name: str) -> tuple:
    """Integer names in numeric order (2 before 10), then the rest alphabetically."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def finetune_splits(data: str | os.PathLike, val: str | os.PathLike | None = None,
                    label_map: str | os.PathLike | None = None) -> tuple[LabelledSet, LabelledSet | None]:  # fmt: skip
    """(train, val) for `vmae finetune`: DATA/train + DATA/val when DATA holds them, else DATA and `val`."""
    root = Path(data).expanduser()
    if root.is_dir() and (root / "train").is_dir():
        if val is None and (root / "val").is_dir():
            val = root / "val"
        root = root / "train"
    train = load_labelled(root, label_map=label_map)
    if len(train.id2label) < 2:
        raise UsageError(f"{data}: fine-tuning needs at least two labels; found {len(train.id2label)}")
    return train, (load_labelled(val, train.id2label, label_map) if val is not None else None)


def _class_folders(root: Path) -> tuple[list[str], list[str]]:
    if (root / "val").is_dir() and (root / "train").is_dir():
        raise UsageError(f"{root}: holds train/ and val/; give {root / 'val'} (or {root / 'train'}) itself")
    paths, names = [], []
    for folder in subfolders(root):
        found = videos_in_folder(folder)
        paths += found
        names += [folder.name] * len(found)
    if not paths:
        raise UsageError(f"{root}: no class folders with videos (expected {root}/<label>/*.mp4)")
    return paths, names


def _list_file(path: Path, index_names: dict[int, str] | None) -> tuple[list[str], list[str]]:
    """(paths, label names) of a CSV/TSV with a header, or of `path label_index` lines."""
    listed = read_list(path)
    if not listed.rows:
        raise UsageError(f"{path}: the list file names no videos")
    if listed.delimiter is not None:
        pcol, lcol = listed.column(PATH_COLUMNS), listed.column(LABEL_COLUMNS)
        if pcol is None or lcol is None:
            raise UsageError(f"{path}: a CSV/TSV list needs a header with a path column and a label column "
                             f"(e.g. `path,label`); got {listed.header or listed.rows[0]}")  # fmt: skip
        rows = listed.rows
        entries = [(r[pcol].strip(), r[lcol].strip()) for r in rows if len(r) > max(pcol, lcol)]
    else:  # the original format: `path label_index`, the path may not hold spaces
        entries = []
        for n, (line,) in enumerate(listed.rows, 1):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise UsageError(f"{path}:{n}: expected `path label_index`, got {line.strip()!r}")
            entries.append((parts[0].strip(), parts[1]))
    if index_names is not None:  # integer labels are indices into the label map
        entries = [(p, _index_name(label, index_names, path)) for p, label in entries]
    return [resolve_listed(p, path) for p, _ in entries], [label for _, label in entries]


def _index_name(label: str, names: dict[int, str], path: Path) -> str:
    if label.lstrip("-").isdigit():
        if int(label) not in names:
            raise UsageError(f"{path}: label index {label} is outside the label map (0..{len(names) - 1})")
        return names[int(label)]
    return label
