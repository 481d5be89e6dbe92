"""Activation functions transformers' configs name (ACT2FN) that attnviz computes exactly."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Activation functions transformers' GPT-2 accepts (ACT2FN) that attnviz computes exactly.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "swish": torch.nn.functional.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}
# What the forward's MLP computes: the above, and transformers' NewGELUActivation as written
# (T5 v1.1's gated-gelu), whose last bits differ from torch's tanh approximation.
ALL_ACTIVATIONS = {**ACTIVATIONS, "gelu_new_python": lambda x: 0.5 * x * (1.0 + torch.tanh(
    math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))}
