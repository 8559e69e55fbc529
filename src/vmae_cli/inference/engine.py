"""The batch engine behind `classify` and `embed`: paths -> views -> batches -> per-video outputs, in input order.

Decoding and preprocessing run ahead of the model in worker threads (PyAV and torch release the GIL), and
the model sees full batches made of views from several videos. A video that fails to load becomes an error
result; the run goes on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.utils.data

from ..errors import VmaeError, option, spell
from ..runtime import default_workers, init_decode_worker
from ..video.clips import Clips, iter_views, plan_clips
from ..video.discover import expand_inputs, parse_shard, take_shard  # noqa: F401 - named here first
from ..video.preprocess import Preprocessor, checked
from ..video.reader import VideoReader
from ..video.sampling import SamplingSpec
from ..video.timeline import Timeline
from .options import RunOptions

if TYPE_CHECKING:
    from .ahead import DecodedAhead

log = logging.getLogger(__name__)


def preprocessor_for(model, preprocessor_config: dict | None) -> Preprocessor:
    """The model's own preprocessor_config.json (if it fits the model), else transformers' defaults at the
    model's image size."""
    if preprocessor_config:
        found = getattr(model, "resolved", None)  # the files from_pretrained read: errors name the file
        return checked(preprocessor_config, model.config, found.preprocessor_path if found else None)
    h, w = model.config.image_hw
    log.warning("model has no preprocessor_config.json; using transformers' defaults (mean/std 0.5)")
    return Preprocessor.from_dict(
        {"size": {"shortest_edge": min(h, w)}, "crop_size": {"height": h, "width": w}}
    )


# ---- loading in workers ------------------------------------------------------------------------------------
class LoadError(Exception):
    """A failure that happened in a worker process, carried back with its original type name."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.type_name = type_name

    def __reduce__(self):  # crosses the process boundary with both fields
        return (LoadError, (self.type_name, str(self)))


Item = tuple[int, str, Clips | torch.Tensor | LoadError]  # (input's index, path, header / views / error)


@dataclass
class ClipLoader:
    """Picklable recipe for one input's views (what worker processes run)."""

    spec: SamplingSpec
    preprocessor: Preprocessor
    reader_kwargs: dict
    max_views: int = 8  # views per chunk
    timeline: Timeline | None = None

    def items(self, index: int, path: str, reader: VideoReader | None = None) -> Iterator[Item]:
        """(index, path, x): first the input's Clips (where its views come from), then its views in chunks
        of about max_views, uint8 (normalised where the model runs: 4x fewer bytes through queues and PCIe);
        or, at any point, the error that ends the input. `reader`: the input already open (ahead.py)."""
        try:
            with reader or VideoReader(path, **self.reader_kwargs) as reader:
                clips = plan_clips(reader, self.spec, self.timeline)
                yield index, path, clips
                for views in iter_views(reader, clips, self.preprocessor, self.max_views):
                    yield index, path, views
        except Exception as e:  # noqa: BLE001 - one input's failure is its result, whatever it is
            message = (
                e.render(option) if isinstance(e, VmaeError) else str(e)
            )  # parameters spelled where shown
            yield index, path, LoadError(type(e).__name__, message)


class _ViewStream(torch.utils.data.IterableDataset):
    """Each worker process loads every n-th input; the DataLoader hands out their items round-robin."""

    def __init__(self, paths: list[str], loader: ClipLoader):
        self.paths, self.loader = paths, loader

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for k in range(first, len(self.paths), step):
            yield from self.loader.items(k, self.paths[k])


def _identity(item):
    return item


def _ahead(items: Iterator) -> Iterator:
    """`items`, the next one computed in a thread while the consumer works on the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="vmae-decode") as pool:
        future = pool.submit(next, items, None)
        while (item := future.result()) is not None:
            future = pool.submit(next, items, None)
            yield item


# ---- the engine ------------------------------------------------------------------------------------------
@dataclass
class VideoResult:
    """One input's outcome: its per-view outputs averaged, float32 on the CPU, or the error.

    `outputs` is (1, K), the mean over all views; with a timeline, (windows, K), the mean over each window's
    views. The mean is a running sum (float64) as batches come back, so no view outlives its batch.
    """

    index: int
    path: str
    clips: Clips | None = None
    outputs: torch.Tensor | None = None
    error: Exception | None = None
    _sums: torch.Tensor | None = field(default=None, repr=False)  # float64 (groups, K)
    _received: int = 0  # views loaded so far
    _added: int = 0  # views whose outputs are in _sums
    _queued: int = 0  # views waiting for the model or on it

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def views(self) -> int:
        return 0 if self.clips is None else len(self.clips.indices)

    @property
    def group(self) -> int:
        """Views averaged into one row of `outputs`: a timeline window's, else all of them."""
        plan = self.clips.timeline
        return self.views if plan is None else plan.clips_per_window * self.clips.crops

    @property
    def complete(self) -> bool:
        loaded = self.error is not None or (self.clips is not None and self._received == self.views)
        return loaded and self._queued == 0

    def _add(self, outputs: torch.Tensor) -> None:
        """Outputs (n, K) of this input's next n views, in view order."""
        self._queued -= len(outputs)
        if self.error is not None:
            return
        if self._sums is None:
            self._sums = torch.zeros(self.views // self.group, outputs.shape[1], dtype=torch.float64)
        rows = torch.arange(self._added, self._added + len(outputs)) // self.group
        self._sums.index_add_(0, rows, outputs.double())
        self._added += len(outputs)

    def _finish(self) -> VideoResult:
        if self.ok:
            self.outputs = (self._sums / self.group).float()
        self._sums = None
        return self


class Engine:
    """Runs `head(model, pixel_values) -> (B, K)` over the views of many videos, in batches, and averages
    each video's `per_view(outputs)` over its views (a classifier's softmax, `tasks.view_scores`; without
    per_view, the outputs themselves), in float32 on the CPU. `reader_kwargs`: what each VideoReader is opened
    with (`RunOptions.reader_kwargs`, as ahead.py opens its own, so that the engine takes its frames).

    batch_size counts views (clips x crops); views are decoded, preprocessed and run a batch at a time, so
    memory stays bounded whatever the sampling protocol, the video's length or its resolution.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        head: Callable[[torch.Tensor], torch.Tensor],
        preprocessor: Preprocessor,
        spec: SamplingSpec,
        *,
        batch_size: int = 8,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        workers: int = 0,
        reader_kwargs: dict | None = None,
        per_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.model, self.head, self.per_view = model, head, per_view
        self.preprocessor, self.spec = preprocessor, spec
        self.batch_size = max(1, batch_size)
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.workers = workers or default_workers()
        self.reader_kwargs = RunOptions().reader_kwargs if reader_kwargs is None else reader_kwargs
        self._inflight: tuple | None = None  # (owners, outputs, event) of the batch on the device
        self._warned_short_window = False

    # -- model side --
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) uint8 views (or float model input) on the CPU -> (B, K) float32 head outputs on the
        CPU (per view: `per_view` is not applied)."""
        outputs, done = self._launch([pixel_values])
        if done is not None:
            done.synchronize()
        return outputs

    @torch.inference_mode()
    def _launch(self, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start the model on a batch; returns its (B, K) float32 CPU output and, on CUDA, the event after
        which that output is valid (so the host prepares the next batch while the GPU works)."""
        # Chunks go to the device one by one (pinned by the loader: asynchronous copies) and are joined
        # there, so the host never copies a batch; uint8 views are normalised on the device.
        x = torch.cat([c.to(self.device, non_blocking=True) for c in chunks])
        if x.dtype == torch.uint8:
            x = self.preprocessor.normalize(x)
        out = self.head(x.to(self.dtype)).float()
        if self.device.type != "cuda":
            return out.cpu(), None
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    def run(
        self, paths: list[str], timeline: Timeline | None = None, ahead: DecodedAhead | None = None
    ) -> Iterator[VideoResult]:
        """Yield one VideoResult per path, in the order of `paths`, as soon as each is complete.

        timeline: classify consecutive windows of each video instead (see timeline.py); `outputs` then
        has one row per window. ahead: frames of a single input decoded while the model loaded (ahead.py),
        used where they are what this run samples.
        """
        loader = ClipLoader(self.spec, self.preprocessor, self.reader_kwargs, self.batch_size, timeline)
        results: dict[int, VideoResult] = {}  # inputs started and not yet handed out
        queue: deque[tuple[VideoResult, torch.Tensor]] = deque()  # views not yet through the model
        queued, next_out = 0, 0
        self._inflight = None

        def ready() -> Iterator[VideoResult]:
            nonlocal next_out
            while next_out in results and results[next_out].complete:
                next_out += 1
                yield results.pop(next_out - 1)._finish()

        for index, path, item in self._loaded(paths, loader, ahead):
            result = results.setdefault(index, VideoResult(index, path))
            if isinstance(item, Exception):
                result.error = item
            elif isinstance(item, Clips):
                result.clips = item
                self._check_window(item)
            else:
                queue.append((result, item))
                result._received += len(item)
                result._queued += len(item)
                queued += len(item)
            while queued >= self.batch_size:
                queued -= self._run_batch(queue)
            yield from ready()
        while queue:
            self._run_batch(queue)
        self._settle()
        yield from ready()

    def _loaded(
        self, paths: list[str], loader: ClipLoader, ahead: DecodedAhead | None = None
    ) -> Iterator[Item]:
        """The items of every input (ClipLoader.items), decoded ahead of the consumer.

        Several inputs decode in worker processes (a DataLoader; each worker single-threaded in torch, so
        they neither contend for the GIL nor oversubscribe the cores); a single input decodes in a thread,
        from the frames decoded while the model loaded where `ahead` has them.
        """
        if len(paths) <= 1:
            opened = None
            if ahead is not None and paths and loader.timeline is None:
                opened = ahead.take(paths[0], loader.spec, loader.reader_kwargs)
            yield from _ahead(item for k, p in enumerate(paths) for item in loader.items(k, p, opened))
            return
        import multiprocessing

        from torch.utils.data import DataLoader

        context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        yield from DataLoader(
            _ViewStream(paths, loader), batch_size=None, num_workers=min(self.workers, len(paths)),
            collate_fn=_identity, prefetch_factor=2, pin_memory=self.device.type == "cuda",
            multiprocessing_context=context, worker_init_fn=init_decode_worker,
        )  # fmt: skip

    def _run_batch(self, queue: deque[tuple[VideoResult, torch.Tensor]]) -> int:
        """Take up to batch_size views from the queue (splitting a chunk if needed); returns views used."""
        owners, chunks, size = [], [], 0
        while queue and size < self.batch_size:
            result, chunk = queue.popleft()
            room = self.batch_size - size
            if len(chunk) > room:
                queue.appendleft((result, chunk[room:]))
                chunk = chunk[:room]
            owners.append((result, len(chunk)))
            chunks.append(chunk)
            size += len(chunk)
        launched = self._launch(chunks)
        self._settle()  # the previous batch, while this one runs on the device
        self._inflight = (owners, *launched)
        return size

    def _settle(self) -> None:
        """Add the outputs of the batch in flight to the videos they belong to."""
        if self._inflight is None:
            return
        owners, outputs, done = self._inflight
        self._inflight = None
        if done is not None:
            done.synchronize()
        if self.per_view is not None:
            outputs = self.per_view(outputs)
        offset = 0
        for result, n in owners:
            result._add(outputs[offset : offset + n])
            offset += n

    def _check_window(self, clips: Clips) -> None:
        """Say once per run that timeline windows are shorter than the clips that classify them."""
        plan = clips.timeline
        if plan is None or not plan.clip_longer_than_window or self._warned_short_window:
            return
        self._warned_short_window = True
        log.warning(
            "%s: the %.2f s window is shorter than one clip (%d frames x stride %d = %.2f s here): each window "
            "is classified by the clip centred on it, which reaches beyond the window; %s %.2f or more "
            "keeps the clips inside their windows",
            clips.path, plan.window, plan.spec.frames, plan.spec.stride, plan.clip_seconds, spell(option("window")),
            plan.clip_seconds,
        )  # fmt: skip
