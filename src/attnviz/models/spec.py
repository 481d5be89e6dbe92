"""One description of a decoder-only model or an encoder (``causal=False``): everything that
shapes its attention weights.

A reader (one per checkpoint layout) turns a checkpoint's config into a ``ModelSpec``;
the one forward pass (``attnviz.models.forward``) is built from it. A family is a reader
and a weight map, never a branch in the commands: what differs between GPT-2, Llama,
Qwen or Mistral is a field here.

Per layer (``LayerSpec``): the positions (RoPE with its table, or none), the factor the
scores are multiplied by, a sliding window (query ``i`` sees keys ``i-W+1 .. i``, itself
included), a softcap of the scores, and QK-norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NORMS = ("layernorm", "rmsnorm")


@dataclass(frozen=True)
class RopeSpec:
    """Rotary position embedding of one layer, as transformers builds it.

    ``rotary_dim`` of the ``head_dim`` dimensions are rotated (the first ones; the rest pass
    through), pairing dimension ``i`` with ``i + rotary_dim / 2`` ("rotate half").
    ``scaling``: None (default RoPE), ``("linear", factor)``, ``("llama3", factor,
    low_freq_factor, high_freq_factor, original_max_position_embeddings)`` or ``("factors",
    (f_0, …))``: each frequency divided by its own factor (llama.cpp's ``rope_freqs`` of a
    GGUF file, Llama 3.1's scaling as its converter computed it).
    """

    base: float
    rotary_dim: int
    scaling: tuple | None = None

    def inv_freq(self):
        """``(rotary_dim / 2,)`` float32: transformers' tables, operation for operation
        (an int64 arange cast to float32, the power and products in float32)."""
        import torch

        dim = self.rotary_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim
        inv_freq = 1.0 / (self.base ** exponents)
        if self.scaling is None:
            return inv_freq
        kind, factor, *rest = self.scaling
        if kind == "factors":
            return inv_freq / torch.tensor(factor, dtype=torch.float)
        if kind == "linear":
            return inv_freq / factor
        low_freq_factor, high_freq_factor, old_context_len = rest  # llama3
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)

    def tables(self, n_positions: int):
        """``(cos, sin)``, each ``(n_positions, rotary_dim)`` float32, for positions 0..n-1."""
        import torch

        positions = torch.arange(n_positions, dtype=torch.int64).float()
        freqs = positions[:, None] * self.inv_freq()[None, :]  # (T, rotary_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, rotary_dim)
        return emb.cos(), emb.sin()

    def describe(self) -> dict:
        described = {"base": self.base, "rotary_dim": self.rotary_dim}
        if self.scaling is not None:
            names = {"linear": ("type", "factor"), "factors": ("type", "factors"),
                     "llama3": ("type", "factor", "low_freq_factor", "high_freq_factor",
                                "original_max_position_embeddings")}[self.scaling[0]]
            described["scaling"] = {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in zip(names, self.scaling)}
        return described


@dataclass(frozen=True)
class LayerSpec:
    """What shapes one layer's attention beyond the model-wide sizes."""

    scale: float  # what Q·Kᵀ is multiplied by before the mask (1/√head_dim, usually)
    rope: RopeSpec | None = None  # None: no rotary embedding in this layer
    window: int | None = None  # sliding window W: keys j with i - W < j <= i
    softcap: float | None = None  # scores -> softcap · tanh(scores / softcap)
    qk_norm: bool = False  # RMSNorm over head_dim of each query and key head, before RoPE
    attn_norm: bool = True  # False: the attention reads the residual stream itself (ModernBERT's layer 0)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as attnviz runs it (see the module docstring).

    ``positions``: "learned" (a table added to the token embeddings, GPT-2) or "rope"
    (rotations inside the attention of the layers whose ``LayerSpec.rope`` is set).
    """

    family: str  # the config's model_type: gpt2, llama, mistral, qwen2, qwen3, smollm3
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    mlp_width: int
    layers: tuple[LayerSpec, ...]
    positions: str = "learned"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    activation: str = "gelu_new"
    gated_mlp: bool = False  # down(act(gate(x)) * up(x)) instead of proj(act(fc(x)))
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tied_embeddings: bool = True
    parallel_residual: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX, Pythia)
    sandwich_norms: bool = False  # a norm after the attention and after the MLP too (Gemma 2/3)
    logit_softcap: float | None = None  # next-token logits -> c·tanh(logits / c) (Gemma 2)
    dtype: str = "float32"  # what the file stores; attnviz computes in float32
    causal: bool = True  # False: an encoder, every key seen (a window: |j - i| < W)
    post_norm: bool = False  # x = norm1(x + attn(x)); x = norm2(x + mlp(x)) (BERT, DistilBERT)
    norm_bias: bool = True  # LayerNorm with a bias (ModernBERT's have none)
    extra: dict = field(default_factory=dict, compare=False)  # family-specific facts for info

    def __post_init__(self) -> None:
        if len(self.layers) != self.n_layers:
            raise ValueError(f"{len(self.layers)} layer specs for {self.n_layers} layers")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_kv_heads} key/value heads do not divide {self.n_heads} heads")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // self.group_size

    @property
    def kv_heads(self) -> list[int]:
        return [self.kv_head(h) for h in range(self.n_heads)]

    def describe(self) -> dict:
        """The attention-shaping facts, for ``info`` and every result's config."""
        windows = [layer.window for layer in self.layers]
        ropes = [layer.rope for layer in self.layers]
        described = {
            "family": self.family, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads, "d_model": self.d_model, "head_dim": self.head_dim,
            "context_length": self.context_length, "vocab_size": self.vocab_size,
            "mlp_width": self.mlp_width, "positions": self.positions, "norm": self.norm,
            "norm_eps": self.norm_eps, "activation_function": self.activation,
            "gated_mlp": self.gated_mlp, "qkv_bias": self.qkv_bias,
            "tied_embeddings": self.tied_embeddings, "dtype": self.dtype,
        }
        if self.parallel_residual:
            described["parallel_residual"] = True
        if self.sandwich_norms:
            described["sandwich_norms"] = True
        if any(r is not None for r in ropes):
            distinct = {r for r in ropes if r is not None}
            described["rope"] = (next(iter(distinct)).describe() if len(distinct) == 1
                                 else [None if r is None else r.describe() for r in ropes])
            if None in ropes:
                described["rope_layers"] = [i for i, r in enumerate(ropes) if r is not None]
        if any(w is not None for w in windows):
            described["sliding_window"] = windows
        if any(layer.qk_norm for layer in self.layers):
            described["qk_norm"] = True
        if not self.causal:
            described["attention"] = "encoder"
        if self.post_norm:
            described["post_norm"] = True
        softcaps = {layer.softcap for layer in self.layers}
        if softcaps != {None}:
            described["attn_softcap"] = next(iter(softcaps)) if len(softcaps) == 1 else [
                layer.softcap for layer in self.layers]
        return {**described, **self.extra}
