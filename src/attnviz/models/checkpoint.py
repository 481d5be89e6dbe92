"""What a reader hands the forward pass: the model's description, its tensors under the
forward's parameter names, and the tokenizer that feeds it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnviz.models.sources import TensorSource
from attnviz.models.spec import ModelSpec


class WeightMap:
    """A checkpoint's tensors under the names of ``forward.Block``'s parameters
    (``norm1.weight``, ``attn.W_query.weight`` as ``(out, in)``, ``mlp.gate.weight`` …):
    one small subclass per checkpoint layout, litgpt's ``copy_weights_<family>``."""

    def __init__(self, tensors: TensorSource):
        self.tensors = tensors

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        """Every parameter of block ``layer``, float32 (views where the layout allows);
        ``mlp=False``: only those of its attention (``norm1.*``, ``attn.*``), for the
        deepest layer asked for, whose MLP never runs."""
        raise NotImplementedError

    def embed(self, token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``token_ids (B, T)`` at positions ``start ..`` -> ``(B, T, d)``: what enters
        block 0 (token embeddings, plus learned positions where the model has them),
        reading only the rows used."""
        raise NotImplementedError

    def positions(self, start: int, n: int) -> torch.Tensor | None:
        """``(n, d)``: the learned position embeddings of positions ``start .. start + n - 1``
        that ``embed`` adds (GPT-2 style), or None for a model without them."""
        return None

    def final_norm(self) -> dict[str, torch.Tensor] | None:
        """The final norm's ``weight`` (and ``bias``), or None for a file without one."""
        return None

    def unembedding(self) -> torch.Tensor | None:
        """``(V, d)``: the output head (or the tied embedding), or None without one."""
        return None

    def parameters(self) -> int:
        return sum(math.prod(self.tensors.shape(k)) for k in self.tensors)


@dataclass
class Checkpoint:
    spec: ModelSpec
    weights: WeightMap
    source: Path
    described: dict  # the reader's description, as ``info`` and every result show it
    tokenizer: object = None  # attnviz.text.tokenization.Tokenizer
    layout: str = "huggingface"
    notes: list[str] = field(default_factory=list)  # what was assumed, for the user
    # its generation settings (models.generation_config): generation_config.json's, or
    # config.json's generation keys; empty for a file without a config
    generation: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return dict(self.described)
