"""Where results go: records (JSON / JSON Lines) and embeddings, written in input order through a journal that an
interrupted run resumes from, and the check that a run's outputs destroy nothing."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import UsageError, option, spell
from ..jsonfile import dumps


# ---- records (classify; embed into JSON Lines) --------------------------------------------------------------
def error_record(path: str, error: BaseException) -> dict:
    """A failed input's record: the error's type and the first line of its message, with the parameters it names
    spelled as this process shows them (`errors.spelled`: the CLI's records say what its terminal says)."""
    message = spell(str(error)) or type(error).__name__
    kind = getattr(error, "type_name", type(error).__name__)  # errors from worker processes keep their type
    return {"path": path, "ok": False, "error": {"type": kind, "message": message.splitlines()[0]}}


def read_jsonl(path: Path) -> list[dict]:
    """Complete JSON lines of a file; a last line cut short by a kill is ignored (and so is anything after a
    line that is not JSON: a binary file gives no records rather than an error)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def finished_records(out: Path) -> dict[str, dict]:
    """Records of inputs done by an earlier run into the same `out`: the finished file and its `.partial`
    journal. Failed inputs are not counted as done, so a resumed run tries them again."""
    try:
        return _finished_records(out)
    except UnicodeDecodeError:  # a binary file: not something vmae wrote
        raise UsageError(
            f"{out} (or {partial_path(out).name}): not a JSON/JSONL output of vmae (binary data), so "
            f"{option('resume')} has nothing to continue; give another {option('out')}",
            param="out",
            value=out,
            path=out,
        ) from None


def _finished_records(out: Path) -> dict[str, dict]:
    found: list[dict] = []
    if out.is_file():
        text = out.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("["):
            try:
                found.extend(json.loads(text))
            except json.JSONDecodeError:
                pass
        else:
            found.extend(read_jsonl(out))
    if partial_path(out).is_file():
        found.extend(read_jsonl(partial_path(out)))
    return {r["path"]: r for r in found if isinstance(r, dict) and r.get("ok") and "path" in r}


def check_settings(saved: dict | None, settings: dict, journal: Path) -> None:
    """Refuse to resume a journal made with other settings (what the outputs depend on: model, sampling...),
    so that one output never mixes two kinds of record or vector. A journal without settings passes."""
    if saved is None:
        return
    # a journal from before the dtype was kept as what auto resolved to: compared without it, as it was then
    if saved.get("dtype") == "auto":
        saved = {**saved, "dtype": settings.get("dtype")}
    changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if changed:
        was = ", ".join(f"{k} {saved.get(k)!r} (now {settings.get(k)!r})" for k in changed)
        raise UsageError(
            f"{option('resume')} continues {journal}, made with {was}; resume with the same settings, "
            f"or drop {option('resume')} to start over",
            param="resume",
            value=True,
            allowed=saved,
            path=journal,
        )


def journal_settings(out: Path) -> dict | None:
    """The settings line that opens a records journal (`RecordWriter`), if there is one."""
    journal = partial_path(out)
    if not journal.is_file():
        return None
    with open(journal, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        return None
    return head.get("settings") if isinstance(head, dict) else None


class RecordWriter:
    """Writes records in input order as JSON Lines (each flushed as it is written) or one JSON array.

    With `out`, records go to the journal `out.partial` as they finish, and at the end `out` appears whole,
    in input order, in one rename. `done`: records an interrupted run finished (`finished_records`); they are
    journaled first, in one atomic write, so that no moment of this run can lose them, and `write` does not
    journal them again. `settings` (what the records depend on) open the journal as a line of their own, so a
    resumed run can check them (`check_settings`).
    """

    def __init__(self, out: Path | None, fmt: str, stream=None, done: dict[str, dict] | None = None,
                 settings: dict | None = None):  # fmt: skip
        self.out, self.fmt = out, fmt
        self.stream = stream or sys.stdout
        self.records: list[dict] = []
        self._journal = None
        self._order: list[str] = []  # the paths written, in input order
        self._done = done or {}
        self.kept = len(self._done)  # finished records the journal holds
        if out is not None:
            from ..files import atomic_write_text

            out.parent.mkdir(parents=True, exist_ok=True)
            head = [{"settings": settings}] if settings is not None else []
            lines = "".join(dumps(r) + "\n" for r in [*head, *self._done.values()])
            atomic_write_text(partial_path(out), lines)
            self._journal = open(partial_path(out), "a", encoding="utf-8")

    @staticmethod
    def files(out: Path) -> dict[Path, str]:
        """What a run into `out` writes, and the kind of vmae file each is (see `check_outputs`)."""
        return {out: "records", partial_path(out): "records"}

    def write(self, record: dict) -> None:
        line = dumps(record)
        if self._journal is not None:
            self._order.append(record["path"])
            if self._done.get(record["path"]) is not record:
                self._journal.write(line + "\n")
                self._journal.flush()
                self.kept += bool(record.get("ok"))
            return
        if self.fmt == "jsonl":
            self.stream.write(line + "\n")
            self.stream.flush()
        else:
            self.records.append(record)

    def suspend(self) -> None:
        """Stop without finishing (an interrupt): the journal keeps every finished record to resume from."""
        if self._journal is not None:
            self._journal.close()

    def close(self) -> None:
        """Finish: print the JSON array, or write `out` from the journal in input order."""
        if self._journal is None:
            if self.fmt == "json":
                self.stream.write(dumps(self.records, indent=2) + "\n")
                self.stream.flush()
            return
        from ..files import atomic_path

        self._journal.close()
        partial = partial_path(self.out)
        journaled = {r["path"]: r for r in read_jsonl(partial) if "path" in r}
        with atomic_path(self.out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            if self.fmt == "json":
                records = [journaled[p] for p in self._order]
                f.write(dumps(records, indent=2) + "\n")
            else:
                f.writelines(dumps(journaled[p]) + "\n" for p in self._order)
        partial.unlink()


# ---- what a run may write over ------------------------------------------------------------------------------
JOURNAL_NAMES = {"rows.f32", "index.jsonl", "settings.json"}  # an embed journal folder (EmbeddingWriter)


def check_outputs(files: dict[Path, str], inputs: Iterable[str], force: bool = False) -> None:
    """Refuse output paths that would destroy something: an input, under any name (the same resolved path, or
    the same file through a hard or symbolic link), always; an existing file that is not a vmae output of its
    kind (`is_vmae_output`), unless `force`. `files`: path -> kind, as the writers' `files(out)` give them."""
    existing = [p for p in files if os.path.lexists(p)]
    if not existing:
        return
    resolved = {os.path.realpath(p) for p in existing}
    ids = {_file_id(p) for p in existing} - {None}
    for path in inputs:
        if os.path.realpath(path) in resolved or _file_id(path) in ids:
            out = next(p for p in existing if os.path.realpath(p) == os.path.realpath(path)
                       or _file_id(p) == _file_id(path))  # fmt: skip
            raise UsageError(f"{option('out')} {out} is the input {path}: writing it would destroy the input; "
                             f"choose another {option('out')}", param="out", value=out, path=path)  # fmt: skip
    for path in existing:
        if not force and not is_vmae_output(path, files[path]):
            what = "a folder" if path.is_dir() else "a file"
            raise UsageError(
                f"{path} exists and is {what} that vmae did not write; choose another {option('out')}, or add "
                f"{option('force')} to replace it",
                param="out",
                value=path,
                path=path,
            )


def _file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_vmae_output(path: Path, kind: str) -> bool:
    """Whether `path` is what vmae writes as `kind` (so a new run may replace it):

    - records: JSON Lines (or one JSON array) whose first item is a record with "path" and "ok" (a journal
      may open with its settings line);
    - embeddings: an .npy float32 matrix with `X.paths.txt` beside it, an .npz or .safetensors holding
      "embeddings" and "paths", or records;
    - journal: a folder holding nothing but an embed journal's files;
    - text: UTF-8 text (the paths index).
    An empty file is replaced too: it holds nothing to lose.
    """
    if path.is_dir():
        return kind == "journal" and all(p.name in JOURNAL_NAMES and p.is_file() for p in path.iterdir())
    if kind == "journal" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        return True
    if kind == "text":
        try:  # incremental: the 64 KiB read may end inside a character
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            return False
        return b"\0" not in head
    if kind == "embeddings" and head.startswith(b"\x93NUMPY"):
        stem = path.with_suffix("")
        return stem.with_name(stem.name + ".paths.txt").is_file()
    if kind == "embeddings" and head.startswith(b"PK"):
        import zipfile

        with contextlib.suppress(zipfile.BadZipFile, OSError):
            with zipfile.ZipFile(path) as z:
                return {"embeddings.npy", "paths.npy"} <= set(z.namelist())
        return False
    if kind == "embeddings" and len(head) > 8 and head[8:9] == b"{":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            size = int.from_bytes(head[:8], "little")
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(min(size, 100_000_000)))
            return "embeddings" in header and "paths" in header.get("__metadata__", {})
        return False
    return _first_record(path) is not None


def _first_record(path: Path) -> dict | None:
    """The first record of a JSON Lines file or JSON array that vmae wrote, or None if it is not one."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
        if first.lstrip().startswith("["):  # a JSON array: its first element, read as far as needed
            text = first + f.read()
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                return None
            item = items[0] if isinstance(items, list) and items else {"path": "", "ok": True}
            return item if isinstance(item, dict) and {"path", "ok"} <= set(item) else None
        try:
            item = json.loads(first)
            if isinstance(item, dict) and set(item) == {"settings"}:  # a journal's settings line
                second = f.readline()
                item = json.loads(second) if second.strip() else {"path": "", "ok": True}
        except json.JSONDecodeError:
            return None
    return item if isinstance(item, dict) and {"path", "ok"} <= set(item) else None


# ---- embeddings ------------------------------------------------------------------------------------------
class EmbeddingWriter:
    """Streams one vector per input to disk; `close()` writes OUT (.npy, .npz or .safetensors) in input order.

    While running, vectors go to the journal folder `OUT.partial/` (raw float32 rows plus a JSON Lines index),
    so memory stays flat for any number of inputs and an interrupted run resumes from what it finished.
    At the end OUT and `OUT-stem.paths.txt` (line i names row i) appear whole; failed inputs are listed in
    `OUT-stem.errors.jsonl`.
    """

    def __init__(self, out: Path, fmt: str, resume: bool = False, settings: dict | None = None):
        """`settings`: what the vectors depend on (model, pooling, sampling...). Kept in the journal; a
        resumed run with other settings is refused, so that one file never mixes two kinds of vector."""
        import shutil

        self.out, self.fmt = out, fmt
        self.journal = partial_path(out)
        if self.journal.exists() and not resume:
            shutil.rmtree(self.journal)
        self.journal.mkdir(parents=True, exist_ok=True)
        if settings is not None:
            self._check_settings(settings, resume)
        self.rows_path, self.index_path = self.journal / "rows.f32", self.journal / "index.jsonl"
        self.index: dict[str, dict] = {}  # path -> {"row", "shape"} or {"error"}
        self.shape: list[int] | None = None
        self.rows = 0
        if resume:
            self._recover()
        self._rows = open(self.rows_path, "ab")
        self._index = open(self.index_path, "a", encoding="utf-8")

    def _check_settings(self, settings: dict, resume: bool) -> None:
        from ..files import atomic_write_text

        path = self.journal / "settings.json"
        if resume and path.exists():
            check_settings(json.loads(path.read_text(encoding="utf-8")), settings, self.journal)
            return
        atomic_write_text(path, dumps(settings, sort_keys=True))

    @staticmethod
    def files(out: Path) -> dict[Path, str]:
        """What a run into `out` writes, and the kind of vmae file each is (see `check_outputs`)."""
        stem = out.with_suffix("")
        return {out: "embeddings", partial_path(out): "journal",
                stem.with_name(stem.name + ".paths.txt"): "text",
                stem.with_name(stem.name + ".errors.jsonl"): "records"}  # fmt: skip

    def suspend(self) -> None:
        """Stop without finishing (an interrupt): the journal keeps every finished vector to resume from."""
        self._rows.close()
        self._index.close()

    @property
    def kept(self) -> int:
        return sum("row" in e for e in self.index.values())

    def _recover(self) -> None:
        """Keep the journal's complete rows; drop anything after a kill mid-write."""
        entries = read_jsonl(self.index_path) if self.index_path.exists() else []
        size = self.rows_path.stat().st_size if self.rows_path.exists() else 0
        ok = [e for e in entries if "row" in e]
        if ok:
            self.shape = ok[0]["shape"]
            row_bytes = 4 * int(np.prod(self.shape))
            complete = size // row_bytes
            ok = [e for e in ok if e["row"] < complete]
            self.rows = max((e["row"] for e in ok), default=-1) + 1
            with open(self.rows_path, "r+b") as f:
                f.truncate(self.rows * row_bytes)
        else:
            self.rows_path.write_bytes(b"")
        self.index = {e["path"]: e for e in ok}
        with open(self.index_path, "w", encoding="utf-8") as f:  # rewrite without torn or failed lines
            f.writelines(dumps(e) + "\n" for e in ok)

    def done(self) -> set[str]:
        return set(self.index)

    def write(self, path: str, vector: np.ndarray | None, error: BaseException | None = None) -> None:
        if vector is None:
            self.index[path] = error_record(path, error)
            return  # failures are not journaled: a resumed run tries them again
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if self.shape is None:
            self.shape = list(vector.shape)
        self._rows.write(vector.tobytes())
        self._rows.flush()  # the row before its index line: an index line always has its row
        entry = {"path": path, "row": self.rows, "shape": self.shape}
        self._index.write(dumps(entry) + "\n")
        self._index.flush()
        self.index[path] = entry
        self.rows += 1

    def close(self, order: list[str], width: int) -> tuple[int, int]:
        """Write the outputs with rows in `order`; returns (rows written, failed inputs). `width`: the length of
        one vector, for the shape of an output without rows ((0, width), so that it stacks with other shards)."""
        import shutil

        from ..files import atomic_path, atomic_write_text

        self._rows.close()
        self._index.close()
        ok = [p for p in order if "row" in self.index.get(p, {})]
        failed = [self.index[p] for p in order if "error" in self.index.get(p, {})]
        shape = self.shape or [width]
        stored = np.memmap(self.rows_path, np.float32, "r", shape=(self.rows, *shape)) if self.rows else None
        rows = [self.index[p]["row"] for p in ok]
        with atomic_path(self.out) as tmp:
            if self.fmt == "npy":
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ok), *shape))
                for start in range(0, len(rows), 4096):  # stream: never the whole matrix in memory
                    array[start : start + 4096] = stored[rows[start : start + 4096]]
                array.flush()
                del array
            else:
                data = stored[rows] if rows else np.zeros((0, *shape), np.float32)
                if self.fmt == "npz":
                    with open(tmp, "wb") as f:
                        np.savez(f, embeddings=data, paths=np.array(ok, dtype=str))
                else:
                    from safetensors.numpy import save_file

                    save_file(
                        {"embeddings": np.ascontiguousarray(data)},
                        str(tmp),
                        metadata={"paths": dumps(ok)},
                    )
        stem = self.out.with_suffix("")
        atomic_write_text(stem.with_name(stem.name + ".paths.txt"), "".join(p + "\n" for p in ok))
        errors = stem.with_name(stem.name + ".errors.jsonl")
        if failed:
            atomic_write_text(errors, "".join(dumps(r) + "\n" for r in failed))
        elif errors.exists():
            errors.unlink()
        del stored
        shutil.rmtree(self.journal)
        return len(ok), len(failed)
