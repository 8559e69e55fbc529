"""Which videos an argument names: folders (searched recursively) and list files (a CSV/TSV with a header
naming a path column, or one path per line). Shared by classify/embed inputs, training data and labelled sets.

Text is UTF-8, with or without the byte-order mark that Windows tools put first. A folder that cannot be
listed is reported with its reason, never silently left out.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, option

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts",
    ".m2ts", ".ogv", ".gif",
}  # fmt: skip
PATH_COLUMNS = ("path", "video", "filename", "file", "video_path")
BOM = "\ufeff"


# ---- folders ---------------------------------------------------------------------------------------------
def scan_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """(video files under `root`, searched recursively and sorted; the folders that could not be listed,
    as (folder, reason)). Symlinked folders are not followed, as `Path.rglob` does not follow them."""
    unlisted: list[tuple[str, str]] = []

    def failed(e: OSError) -> None:
        unlisted.append((e.filename or str(root), e.strerror or str(e)))

    found = []
    for folder, _, files in os.walk(root, onerror=failed):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS and os.path.isfile(path):
                found.append(path)
    return sorted(found), sorted(unlisted)


def videos_in_folder(root: str | os.PathLike) -> list[str]:
    """`scan_folder` for a data set: a folder that cannot be listed stops the run before it starts (a run
    that silently trained or evaluated on part of the data would cost more than fixing the permissions)."""
    found, unlisted = scan_folder(root)
    if unlisted:
        raise _cannot_list(*unlisted[0], more=len(unlisted) - 1)
    return found


def subfolders(root: str | os.PathLike) -> list[Path]:
    """The folders right under `root` (class folders), sorted, hidden ones left out."""
    try:
        return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise _cannot_list(str(root), e.strerror or str(e)) from None


def _cannot_list(folder: str, reason: str, more: int = 0) -> UsageError:
    also = f" (and {more} more folder(s))" if more else ""
    return UsageError(
        f"{folder}: cannot list this folder ({reason}){also}; fix its permissions or move it out"
    )


# ---- list files ------------------------------------------------------------------------------------------
@dataclass
class ListFile:
    """A list file's entries: the rows of a CSV/TSV (`header`: its lower-cased column names, None when it
    has none), or one single-cell row per line of a plain list (`delimiter` None)."""

    rows: list[list[str]]
    header: list[str] | None = None
    delimiter: str | None = None

    def column(self, names: tuple[str, ...]) -> int | None:
        """Index of the first of `names` in the header."""
        return next((self.header.index(c) for c in names if c in self.header), None) if self.header else None


def read_text(path: str | os.PathLike, what: str = "the list file", param: str | None = None) -> str:
    """A text file's content, UTF-8 with or without a BOM; an unreadable file is a usage error naming it
    (`param`: the parameter that named the file, if any)."""
    try:
        return Path(path).expanduser().read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"{path}: cannot read {what} ({e})", param=param, value=str(path), path=path
        ) from None


def read_list(path: str | os.PathLike) -> ListFile:
    """A list file's entries; blank lines and `#` comments are skipped.

    A tab in the first line makes a TSV, a comma in the first line of a .csv makes a CSV; either may name its
    columns in a header. In any other file a comma is part of a path (`Smith, J.mp4`) unless the first line
    is a header naming a path column (`path,label`). Without a delimiter in the first line a file is a plain
    list, whatever its name (the original VideoMAE lists are `path label` lines in .csv files).
    """
    lines = [
        line for line in read_text(path).splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        return ListFile([])
    suffix = Path(path).suffix.lower()
    for delimiter in ("\t", ","):
        if delimiter not in lines[0]:
            continue
        rows = list(csv.reader(lines, delimiter=delimiter))
        header = [cell.strip().lower() for cell in rows[0]]
        if any(c in header for c in PATH_COLUMNS):
            return ListFile(rows[1:], header, delimiter)
        if delimiter == "\t" or suffix == ".csv":
            return ListFile(rows, None, delimiter)
    return ListFile([[line] for line in lines])


def strip_bom(lines):
    """Lines of a stream (stdin), without the byte-order mark a first line may start with."""
    for n, line in enumerate(lines):
        yield line.removeprefix(BOM) if n == 0 else line


# ---- data sets (pre-training; labelled sets: labelled.py) ------------------------------------------------------------------------------------
def list_videos(data: str | os.PathLike) -> list[str]:
    """A folder of videos (searched recursively, sorted) or a list file.

    A list file holds one path per line, or is a CSV/TSV whose header names a path column (`path`,
    `video`, `filename`...); without such a header the first column is the path (the original
    VideoMAE lists are `path label`, space separated). Relative paths are relative to the list file.
    """
    root = Path(data).expanduser()
    if root.is_dir():
        paths = videos_in_folder(root)
        if not paths:
            raise UsageError(
                f"{data}: no video files in this folder (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})"
            )
        return paths
    if not root.is_file():
        raise UsageError(f"{data}: no such file or folder; give a folder of videos or a list file")
    if root.suffix.lower() in VIDEO_EXTENSIONS:
        return [str(root)]
    paths = [resolve_listed(p, root) for p in listed_paths(read_list(root))]
    if not paths:
        raise UsageError(f"{data}: the list file names no videos")
    return paths


def listed_paths(listed: ListFile) -> list[str]:
    """The paths a list file names, as written: its path column (else the first), or each line without a
    trailing integer label (`path label`)."""
    if listed.delimiter is None:
        # one path per line, or `path label`: a trailing integer label is not part of the path
        lines = [row[0] for row in listed.rows]
        return [line.rsplit(None, 1)[0] if _has_label(line) else line.strip() for line in lines]
    column = listed.column(PATH_COLUMNS) or 0
    return [row[column].strip() for row in listed.rows if len(row) > column and row[column].strip()]


def _has_label(line: str) -> bool:
    parts = line.split()
    return len(parts) >= 2 and parts[-1].lstrip("-").isdigit() and Path(parts[-1]).suffix == ""


def resolve_listed(path: str, list_file: Path) -> str:
    """A path named in a list file: relative paths are relative to the list file's folder."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else list_file.parent / p)


# ---- command inputs (classify, embed) -------------------------------------------------------------------
def expand_inputs(args: Iterable[str], stdin=None) -> tuple[list[str], list[str]]:
    """(paths, folders that could not be listed): files, folders (recursively, video extensions only),
    globs, and `-` (paths on stdin, one per line).

    The order is the order given; a folder's videos are sorted. A path that does not exist is kept, so that
    it is reported as a failed input rather than silently dropped; a folder that cannot be listed is named
    in a warning and returned, so that the run can end with "some inputs failed".
    """
    out: list[str] = []
    unlisted: list[str] = []
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            out.extend(line.strip() for line in strip_bom(stream) if line.strip())
        elif os.path.isdir(arg):
            found, failed = scan_folder(arg)
            for folder, reason in failed:
                log.warning("%s: cannot list this folder (%s); the videos in it are left out", folder, reason)
            unlisted += [folder for folder, _ in failed]
            if not found and not failed:
                log.warning("%s: no video files in this folder", arg)
            out.extend(found)
        elif not os.path.exists(arg) and glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                log.warning("%s: the pattern matches no file", arg)
            out.extend(matches)
        else:
            out.append(arg)
    return out, unlisted


def parse_shard(shard: str | None) -> tuple[int, int]:
    """`i/n` -> (i, n); without it, torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise UsageError(
            f"{option('shard')} must look like i/n (e.g. 0/4), got {shard!r}",
            param="shard",
            value=shard,
            allowed="i/n, 0 <= i < n",
        ) from None
    if not 0 <= i < n:
        raise UsageError(
            f"{option('shard')} {shard}: need 0 <= i < n",
            param="shard",
            value=shard,
            allowed="i/n, 0 <= i < n",
        )
    return i, n


def take_shard(items: list[str], index: int, count: int) -> list[str]:
    """Every count-th item from index: each input lands in exactly one shard, whatever the count."""
    return items[index::count]
