"""transformers' ACT2FN entries without parameters, written as transformers writes them, so that every
`hidden_act` a config may name computes what transformers computes, operation by operation.

Module-level functions rather than lambdas, so that a model stays picklable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import HIDDEN_ACTS


def _gelu_10(x: torch.Tensor) -> torch.Tensor:
    return torch.clip(F.gelu(x), -10, 10)


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_python(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_pytorch_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


def _sqrtsoftplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x).sqrt()


ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU
    "gelu_10": _gelu_10,
    "gelu_fast": _gelu_fast,
    "gelu_new": _gelu_new,
    "gelu_python": _gelu_python,
    "gelu_pytorch_tanh": _gelu_pytorch_tanh,
    "gelu_python_tanh": _gelu_new,  # transformers writes these two apart; the same operations
    "gelu_accurate": _gelu_new,
    "hardswish": F.hardswish,
    "laplace": _laplace,
    "leaky_relu": F.leaky_relu,
    "linear": _linear,
    "mish": F.mish,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "relu2": _relu2,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "sqrtsoftplus": _sqrtsoftplus,
    "swish": F.silu,
    "tanh": torch.tanh,
}
assert set(ACTIVATIONS) == set(HIDDEN_ACTS)
