"""Decoding one video, and converting the weights, while torch imports: the start-up of `vmae classify clip.mp4`.

Classifying one video on a CPU is mostly start-up: importing torch (about 1 s), reading the weights, decoding
the frames of its views (0.2-0.6 s for a 10 s 1080p H.264 clip) and one forward. Decoding needs no torch, so the
CLI starts it before it imports torch (`DecodedAhead.start`): the sampling is worked out from the model's config
files (as `load_model` will), the video opened and those frames decoded at full size. The engine takes the open
reader when it comes to that input (`take`) if the path, the sampling and the reader's settings are those it
would use itself, and decodes as usual otherwise.

On Linux, before torch is loaded, the work is done by a forked child process (inference/forked.py), which
also reads the model's safetensors weights into bf16 where the model will run in bf16 (models/prepared.py;
loading the model takes them instead of converting them itself): a thread would share the GIL with the import
and slow it down. Elsewhere a thread decodes: PyAV releases the GIL while it decodes and converts, and while the
thread runs, the interpreter's switch interval is shortened so that it gets the GIL back quickly between frames
from a main thread that is executing torch's import.

Log records and warnings of the decoding are held back and given out when the engine takes its frames (so that
they come once, in order, and not for frames that are thrown away); those of reading the config are dropped (the
main thread reads it again and says them). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..hub import cached
from ..jsonfile import read_object
from ..models import prepared
from ..video.reader import VideoReader
from ..video.sampling import SamplingSpec
from . import forked
from .options import RunOptions, sampling_spec

log = logging.getLogger(__name__)

AHEAD_BUDGET = 256 << 20  # full-size RGB bytes held for the engine: 16 frames of 1080p are 100 MB
SWITCH_INTERVAL = 0.0005  # seconds (Python's default is 0.005): how long the thread may wait for the GIL


class _Cancelled(Exception):
    pass


class DecodedAhead:
    """The frames of one input's views, decoded in a thread from before torch is imported.

    `start` returns None where it cannot help (not a file, a model whose config is not on this machine);
    `take` hands the engine the reader with the frames, or None; `close` stops the thread where nobody takes
    them (a run that failed before its first input, or that had nothing left to do).
    """

    def __init__(
        self, path: str, model: str, revision: str | None, opts: RunOptions, budget: int = AHEAD_BUDGET
    ):
        self.path, self.model, self.revision, self.opts, self.budget = path, model, revision, opts, budget
        self.reader_kwargs = opts.reader_kwargs
        self.spec: SamplingSpec | None = None
        self._reader: _AheadReader | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"vmae-decode-ahead-{id(self)}", daemon=True)
        self._records = _ThreadRecords(self._thread.name)
        self._switch = sys.getswitchinterval()
        self._child: forked.Child | None = None

    @classmethod
    def start(cls, path: str, model: str, revision: str | None, opts: RunOptions) -> DecodedAhead | None:
        """Begin decoding `path` for `model`'s sampling (in a child process where `forked.available()`, and
        converting the weights there too; in a thread otherwise); None if it is not a regular file."""
        if not Path(path).is_file():
            return None
        ahead = cls(path, model, revision, opts)
        if forked.available():
            ahead._child = forked.Child.start(ahead._in_child)
            if ahead._child is not None:
                prepared.offer(ahead._weights_from_child)
                return ahead
        ahead._records.install()
        sys.setswitchinterval(min(ahead._switch, SWITCH_INTERVAL))
        ahead._thread.start()
        return ahead

    def take(self, path: str, spec: SamplingSpec, reader_kwargs: dict) -> VideoReader | None:
        """The open reader holding the frames of `path` for `spec`, once they are decoded; None if it decoded
        something else (another path, sampling or reader setting) or could not decode (the engine then
        decodes, and reports any error, as for any input)."""
        if self._child is not None:
            self._reader = self._reader_from_child()
        elif self._thread.ident is not None:
            self._thread.join()
        reader, self._reader = self._reader, None
        if reader is not None and (path, spec, reader_kwargs) == (self.path, self.spec, self.reader_kwargs):
            self._records.give_out()
            return reader
        if reader is not None:
            reader.close()
        return None

    def close(self) -> None:
        """Stop the thread (at its next frame) or the child, and let go of what they decoded."""
        if self._child is not None:
            prepared.withdraw(self._weights_from_child)
            self._child.close()
        self._cancel.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- the thread --
    def _work(self) -> None:
        try:
            with self._records.dropped():  # the main thread reads the config again and says what is wrong
                self.spec, _ = self._sampling()
            if self.spec is not None and not self._cancel.is_set():
                self._reader = self._decode(self.spec)
        except Exception as e:  # noqa: BLE001 - the engine decodes this input again and reports its errors
            log.debug(
                "%s: decoding ahead failed (%s: %s); the engine decodes it", self.path, type(e).__name__, e
            )
        finally:
            self._records.uninstall()
            sys.setswitchinterval(self._switch)

    # -- the child process --
    def _in_child(self, out: forked.Outbox) -> None:
        """In the child: the weights first (loading the model needs them before the engine needs frames),
        then the frames, decoded on all cores but the one importing torch."""
        self._records.thread_name = threading.current_thread().name
        self._records.install()
        with self._records.dropped():
            self.spec, weights = self._sampling()
        keys = [prepared.identity(f) for f in weights]
        if weights and None not in keys and runs_in_bf16(self.opts):
            arrays: dict[str, np.ndarray] = {}
            for file, key in zip(weights, keys, strict=True):
                arrays.update(prepared.read_as_bf16(file, key))
            out.send("weights", keys, arrays)
        else:
            out.send("weights")
        reader = None
        try:
            if self.spec is not None:
                threads = self.opts.threads or max(1, len(os.sched_getaffinity(0)) - 1)
                reader = self._decode(self.spec, threads)
        finally:  # the parent decodes again (and reports the errors) where no frames come
            records = [_portable(r) for r in self._records.held]
            if reader is None:
                out.send("frames", (self.spec, None, None, records))
            else:
                out.send("frames", (self.spec, reader.frame_index(), reader.rotation, records), reader.held)

    def _weights_from_child(self) -> tuple[list, dict[str, np.ndarray]] | None:
        got = self._child.receive("weights") if self._child is not None else None
        return None if got is None or got[0] is None else got

    def _reader_from_child(self) -> _AheadReader | None:
        got = self._child.receive("frames")
        if got is None:
            return None
        (self.spec, index, rotation, records), held = got
        self._records.held = [logging.makeLogRecord(r) for r in records]
        if index is None:
            return None
        try:
            reader = _AheadReader(self.path, **self.reader_kwargs)  # opens the file; decodes nothing
        except Exception:  # noqa: BLE001 - gone since? the engine opens it again and reports its errors
            return None
        reader._index, reader._rotation, reader.held = index, rotation, held
        return reader

    def _sampling(self) -> tuple[SamplingSpec | None, list[Path]]:
        """What `load_model` will sample, from the model's config files on this machine (no download), and its
        weight files there, if they are all safetensors."""
        from ..models.config import VideoMAEConfig

        found = cached(self.model, self.revision)  # else the main thread downloads them; decoding waits
        if found is None:
            return None, []
        config = VideoMAEConfig.from_json_file(found.config_path)
        pre = read_object(found.preprocessor_path) if found.preprocessor_path else None
        weights = [f for f in found.weights if f.suffix == ".safetensors"]
        return sampling_spec(config, pre, self.opts), weights if weights == found.weights else []

    def _decode(self, spec: SamplingSpec, threads: int | None = None) -> _AheadReader | None:
        kwargs = self.reader_kwargs if threads is None else {**self.reader_kwargs, "threads": threads}
        reader = _AheadReader(self.path, **kwargs)
        try:
            wanted = np.unique(spec.indices(reader.count_frames()))
            if len(wanted) * reader.width * reader.height * 3 > self.budget:
                reader.close()
                return None

            def check(rgb: np.ndarray) -> np.ndarray:  # runs after each frame: stops a cancelled thread
                if self._cancel.is_set():
                    raise _Cancelled
                return rgb

            reader.held = dict(zip(wanted.tolist(), reader.get_frames(wanted, transform=check), strict=True))
            return reader
        except BaseException:
            reader.close()
            raise


def _portable(record: logging.LogRecord) -> dict:
    """A log record as plain values (its message formatted), to re-create in another process."""
    return {"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
            "pathname": record.pathname, "lineno": record.lineno, "funcName": record.funcName,
            "msg": record.getMessage(), "args": None}  # fmt: skip


def runs_in_bf16(opts: RunOptions) -> bool:
    """Whether `load_model` will run a classifier in bf16 (runtime.resolve_dtype), guessed without torch: dtype
    bf16; auto on CUDA; auto on a CPU with AVX-512 (torch's test for native bf16 asks for it), or wherever
    VMAE_CPU_BF16=1. A wrong guess costs only the conversion: loading takes the tensors only in bf16."""
    if opts.dtype in ("bf16", "bfloat16"):
        return True
    if opts.dtype != "auto":
        return False
    if opts.device.startswith("cuda"):
        return True
    forced = os.environ.get("VMAE_CPU_BF16", "")
    if forced:
        return forced == "1"
    if not os.environ.get("ATEN_CPU_CAPABILITY", "avx512").lower().startswith("avx512"):
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _cpu_flags()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


class _AheadReader(VideoReader):
    """A VideoReader that gives out frames decoded ahead (full size) before it decodes any again."""

    held: dict[int, np.ndarray] | None = None  # frame index as asked -> uint8 (H, W, 3); each given out once

    def get_frames(self, indices, size=None, *, transform=None) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if size is not None or not self.held or len(idx) == 0 or not set(idx.tolist()) <= self.held.keys():
            return super().get_frames(indices, size, transform=transform)
        done = {j: self.held.pop(j) for j in dict.fromkeys(idx.tolist())}  # distinct, in the order asked
        if transform is not None:
            done = {j: transform(rgb) for j, rgb in done.items()}
        self.clamped = np.unique(idx[idx >= len(self.frame_index().pts)])  # as get_frames sets it
        return np.stack([done[j] for j in idx.tolist()])


class _ThreadRecords(logging.Filter):
    """Holds back the log records (warnings included: they are logged as py.warnings) of one thread, named,
    at the handlers of vmae's loggers and the root's; drops them inside `dropped()`."""

    LOGGERS = ("vmae_cli", "py.warnings", "")

    def __init__(self, thread_name: str):
        super().__init__()
        self.thread_name = thread_name
        self.held: list[logging.LogRecord] = []
        self._drop = False
        self._handlers: list[logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.threadName != self.thread_name:
            return True
        if not self._drop and record not in self.held:  # one record may reach several handlers
            self.held.append(record)
        return False

    @contextlib.contextmanager
    def dropped(self) -> Iterator[None]:
        self._drop = True
        try:
            yield
        finally:
            self._drop = False

    def install(self) -> None:
        self._handlers = list(
            dict.fromkeys(h for name in self.LOGGERS for h in logging.getLogger(name).handlers)
        )
        for handler in self._handlers:  # first: the filters after it (repeats counted) must not see them yet
            handler.filters.insert(0, self)

    def uninstall(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers = []

    def give_out(self) -> None:
        """Log what was held back, now, from the thread that calls this."""
        held, self.held = self.held, []
        for record in held:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def decoded_ahead(
    path: str | None, model: str, revision: str | None, opts: RunOptions
) -> Iterator[DecodedAhead | None]:
    """`DecodedAhead.start` for `path` (None: nothing to decode ahead), closed when the block ends."""
    ahead = DecodedAhead.start(path, model, revision, opts) if path is not None else None
    try:
        yield ahead
    finally:
        if ahead is not None:
            ahead.close()
