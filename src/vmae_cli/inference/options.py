"""The options classify and embed share (RunOptions), and the sampling they give with a model's config.

Nothing here imports torch: `vmae classify` works out which frames to decode from these and the model's
config files before it imports torch (see ahead.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UsageError, VmaeError, option
from ..video.sampling import SamplingSpec
from .defaults import default_sampling


@dataclass
class RunOptions:
    """Options shared by classify and embed (None = the model's default)."""

    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    workers: int = 0  # 0: automatic
    threads: int = 0
    frames: int | None = None
    stride: int | None = None
    sampling: str | None = None
    clips: int | None = None
    crops: int | None = None
    timeout: float = 120.0

    @property
    def reader_kwargs(self) -> dict:
        """What each VideoReader of the run is opened with."""
        return {"threads": self.threads, "timeout": self.timeout}


def sampling_spec(config, preprocessor_config: dict | None, opts: RunOptions) -> SamplingSpec:
    """The model's own sampling (`default_sampling`) with the run's frames, stride, sampling, clips and crops."""
    spec = default_sampling(config, preprocessor_config)
    if opts.frames is not None and opts.frames != config.num_frames:
        raise UsageError(
            f"{option('frames')} {opts.frames}: this model takes exactly {config.num_frames} frames per clip "
            "(its position table is fixed)",
            param="frames", value=opts.frames, allowed=(config.num_frames,),
        )  # fmt: skip
    changes = {k: v for k, v in dict(mode=opts.sampling, stride=opts.stride, clips=opts.clips,
                                     crops=opts.crops).items() if v is not None}  # fmt: skip
    if opts.sampling == "uniform" and opts.clips is None:
        changes["clips"] = 1
    try:
        return replace(spec, frames=config.num_frames, **changes)
    except VmaeError as e:
        raise UsageError(e.render(option), **_fields(e)) from None


def _fields(e: VmaeError) -> dict:
    """The fields of a UsageError (param, value, allowed, path), to raise it again as one."""
    return {
        k: getattr(e, k) for k in ("param", "value", "allowed", "path") if getattr(e, k, None) is not None
    }
