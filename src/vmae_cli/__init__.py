"""vmae: VideoMAE for classifying, embedding, pre-training, fine-tuning and converting video models.

The public names load lazily, so `import vmae_cli` (and the CLI's help) does not import torch.
"""

from ._version import __version__

_EXPORTS = {
    "VideoMAEConfig": "models.config",
    "VideoMAEModel": "models.modeling",
    "VideoMAEForPreTraining": "models.modeling",
    "VideoMAEForVideoClassification": "models.modeling",
    "Preprocessor": "video.preprocess",
    "VideoReader": "video.reader",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vmae_cli' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
