"""What the models return: dataclasses that read like transformers' `ModelOutput`.

As in transformers, an output is also a read-only mapping of its fields that are not None, in field order:
`out.logits`, `out["logits"]`, `out[0]`, `"loss" in out`, `len(out)`, `keys()`, `items()`, `values()` and
`to_tuple()` (the values, which `return_dict=False` returns). A field that is None is absent: `out["loss"]`
raises KeyError, `out.loss` is None. Each class is a torch pytree node, so torch.export traces a model that
returns one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch


class ModelOutput(Mapping):
    """The mapping view of an output dataclass (see the module's docstring)."""

    def _present(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self._present())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self._present():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._present()


# (@dataclass writes __eq__ into each class, so outputs compare field by field, not as Mappings do)
@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VideoMAEForPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, num_masked, patch_dim): predicted pixels of the masked tokens
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# pytree nodes, so that torch.export can trace a model that returns them (their None fields are left out).
# The names stay those of vmae_cli.models.modeling, where these classes lived: programs saved before still load.
for _output in (BaseModelOutput, VideoMAEForPreTrainingOutput, ImageClassifierOutput):
    torch.export.register_dataclass(
        _output, serialized_type_name=f"vmae_cli.models.modeling.{_output.__name__}"
    )
