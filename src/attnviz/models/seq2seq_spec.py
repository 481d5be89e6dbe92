"""One description of an encoder–decoder model (T5, BART, Marian): everything that shapes
its three kinds of attention — encoder self (bidirectional), decoder self (causal) and
cross (decoder queries over the encoder's keys).

What differs between the families is a field here, never a branch in the commands:

- T5 (and flan-t5, mT5): pre-norm blocks with T5's RMSNorm (no mean, no bias), no biases,
  scores not scaled, positions as a bucketed relative bias added to the scores (computed by
  the first layer of each stack, shared by all its layers; bidirectional buckets in the
  encoder, causal ones in the decoder), ReLU or gated-GELU MLP, the decoder's output scaled
  by ``d_model ** -0.5`` before a tied head;
- BART: post-norm blocks with LayerNorm, learned positions offset by 2, a LayerNorm on the
  embeddings, GELU, a ``final_logits_bias``;
- Marian: BART's blocks, sinusoidal positions (sines in the first half, cosines in the
  second), embeddings scaled by ``sqrt(d_model)``, no LayerNorm on them, SiLU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Seq2SeqSpec:
    family: str  # the config's model_type: t5, mt5, bart, marian
    n_layers: int  # encoder layers
    n_decoder_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    vocab_size: int
    mlp_width: int
    positions: str  # "relative" (T5), "learned" (BART, offset 2), "sinusoidal" (Marian)
    context_length: int | None  # positions a text may have (None: relative, no table)
    norm: str = "layernorm"  # or "rmsnorm" (T5's: no mean, no bias)
    norm_eps: float = 1e-5
    pre_norm: bool = False  # x + f(norm(x)) (T5); else norm(x + f(x)) (BART, Marian)
    activation: str = "gelu"
    gated_mlp: bool = False  # down(act(gate(x)) * up(x)): T5 v1.1's gated-gelu
    bias: bool = True  # biases in the projections and the MLP (BART, Marian)
    scale: float = 1.0  # what Q·Kᵀ is multiplied by (T5: 1, BART/Marian: 1/√head_dim)
    embed_scale: float = 1.0  # token embeddings times this (Marian: √d_model)
    embed_norm: bool = False  # a LayerNorm on the embeddings (BART's layernorm_embedding)
    final_norm: bool = False  # a norm after the last layer of each stack (T5)
    output_scale: float = 1.0  # the decoder's output times this before the head (T5 tied)
    logits_bias: bool = False  # final_logits_bias added to the logits (BART, Marian)
    relative_buckets: int = 32  # T5's relative_attention_num_buckets
    relative_max_distance: int = 128  # T5's relative_attention_max_distance
    decoder_start_id: int = 0  # the decoder's first token
    eos_id: int | None = None
    dtype: str = "float32"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def mlp_bias(self) -> bool:  # forward.MLP's name for it
        return self.bias

    def describe(self) -> dict:
        described = {
            "family": self.family, "architecture": "encoder-decoder",
            "n_layers": self.n_layers, "n_decoder_layers": self.n_decoder_layers,
            "n_heads": self.n_heads, "d_model": self.d_model, "head_dim": self.head_dim,
            "context_length": self.context_length, "vocab_size": self.vocab_size,
            "mlp_width": self.mlp_width, "positions": self.positions, "norm": self.norm,
            "norm_eps": self.norm_eps, "pre_norm": self.pre_norm,
            "activation_function": self.activation, "gated_mlp": self.gated_mlp,
            "qkv_bias": self.bias, "scale": self.scale, "embed_scale": self.embed_scale,
            "decoder_start_token_id": self.decoder_start_id, "dtype": self.dtype,
        }
        if self.positions == "relative":
            described["relative_attention"] = {"num_buckets": self.relative_buckets,
                                               "max_distance": self.relative_max_distance}
        return {**described, **self.extra}


def relative_buckets(relative, bidirectional: bool, num_buckets: int, max_distance: int):
    """T5's bucket of each ``relative`` position (key - query, an int64 tensor), as
    transformers' ``T5Attention._relative_position_bucket`` computes it: exact buckets
    for small distances, logarithmic ones up to ``max_distance``; bidirectional: half the
    buckets for keys after the query. Causal: keys after the query all share bucket 0."""
    import torch

    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).to(torch.long) * num_buckets
        relative = torch.abs(relative)
    else:
        relative = -torch.min(relative, torch.zeros_like(relative))
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, relative, large)


def sinusoidal_table(n_positions: int, dim: int):
    """Marian's position table ``(n_positions, dim)`` float32, as transformers'
    ``MarianSinusoidalPositionalEmbedding.create_weight`` makes it (float64, then cast)."""
    import torch

    positions = np.arange(n_positions)[:, None]
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = positions / np.power(10000, exponents)[None, :]  # (n, dim) float64
    half = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    table = torch.empty(n_positions, dim, dtype=torch.float32)
    table[:, :half] = torch.FloatTensor(np.sin(angles[:, 0::2]))
    table[:, half:] = torch.FloatTensor(np.cos(angles[:, 1::2]))
    return table
