"""The attention module family of "Build a Large Language Model (From Scratch)", chapter 3.

``SelfAttention -> CausalAttention -> MultiHeadAttentionWrapper -> MultiHeadAttention``,
with the book's signatures, and beside them ``CrossAttention``: the chapter's other kind,
queries from one input and keys and values from another. The multi-head classes take
``causal=False`` for self-attention without the mask (the chapter's ``SelfAttention``, as
an encoder computes it). Every ``forward(x)`` takes ``x`` of shape ``(b, T, d_in)`` and
returns the context vectors; ``forward(x, return_weights=True)`` returns
``(context, attn_weights)``. Weights are ``(b, T, T)`` for one head and
``(b, num_heads, T, T)`` for several (``[batch, head, query_pos, key_pos]``): row ``i`` is
query ``i``'s distribution over the keys and sums to 1; with the causal mask every entry
above the diagonal is exactly 0 (the score was -inf before the softmax).

The weights are computed with an explicit softmax, never ``scaled_dot_product_attention``:
a visualizer needs the matrix that fused kernels never materialise.
"""

from __future__ import annotations

import torch
from torch import nn


def _causal_mask(context_length: int) -> torch.Tensor:
    # True above the diagonal: key j is in the future of query i when j > i. Always made
    # on the CPU, also under a meta-device context (gpt2.Block.from_hf), where triu would
    # pull in torch's symbolic-shape machinery (~1.5 s of imports).
    ones = torch.ones(context_length, context_length, dtype=torch.bool, device="cpu")
    return torch.triu(ones, diagonal=1)


def _check_length(num_tokens: int, context_length: int) -> None:
    if num_tokens > context_length:
        raise ValueError(f"{num_tokens} tokens exceed the context length {context_length}")


class SelfAttention(nn.Module):
    """Scaled dot-product self-attention with trainable weights, one head, no mask."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        queries = self.W_query(x)  # (b, T, d_out)
        keys = self.W_key(x)  # (b, T, d_out)
        values = self.W_value(x)  # (b, T, d_out)
        attn_scores = queries @ keys.transpose(-2, -1)  # (b, T, T)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        context_vec = attn_weights @ values  # (b, T, d_out)
        return (context_vec, attn_weights) if return_weights else context_vec


class CausalAttention(nn.Module):
    """One head of causal (masked) self-attention, with dropout on the weights."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # A buffer, so the mask follows .to(device) and is not a trainable parameter.
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        b, num_tokens, d_in = x.shape
        _check_length(num_tokens, self.mask.shape[0])
        queries = self.W_query(x)  # (b, T, d_out)
        keys = self.W_key(x)  # (b, T, d_out)
        values = self.W_value(x)  # (b, T, d_out)

        attn_scores = queries @ keys.transpose(1, 2)  # (b, T, T)
        attn_scores = attn_scores.masked_fill(
            self.mask[:num_tokens, :num_tokens], float("-inf")
        )
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        context_vec = attn_weights @ values  # (b, T, d_out)
        return (context_vec, attn_weights) if return_weights else context_vec


def _check_heads(d_out: int, num_heads: int) -> None:
    if num_heads < 1 or d_out % num_heads != 0:
        raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")


class MultiHeadAttentionWrapper(nn.Module):
    """``num_heads`` independent ``CausalAttention`` heads of width ``d_out // num_heads``,
    run one after another and concatenated (no output projection)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float = 0.0,
        num_heads: int = 12,
        qkv_bias: bool = False,
        causal: bool = True,
    ):
        super().__init__()
        _check_heads(d_out, num_heads)
        head_dim = d_out // num_heads
        # causal=False: the book's SelfAttention heads, every key seen
        self.heads = nn.ModuleList(
            CausalAttention(d_in, head_dim, context_length, dropout, qkv_bias) if causal
            else SelfAttention(d_in, head_dim, qkv_bias)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        outputs = [head(x, return_weights=True) for head in self.heads]
        context_vec = torch.cat([ctx for ctx, _ in outputs], dim=-1)  # (b, T, d_out)
        if not return_weights:
            return context_vec
        attn_weights = torch.stack([w for _, w in outputs], dim=1)  # (b, num_heads, T, T)
        return context_vec, attn_weights


class MultiHeadAttention(nn.Module):
    """All heads at once: one query/key/value projection of width ``d_out``, split into
    ``num_heads`` heads of ``head_dim = d_out // num_heads``, then ``out_proj``.
    ``causal=False``: no mask, every query sees every key (an encoder's self-attention)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float = 0.0,
        num_heads: int = 12,
        qkv_bias: bool = False,
        causal: bool = True,
    ):
        super().__init__()
        _check_heads(d_out, num_heads)
        self.causal = causal
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)
        # What the scores Q·Kᵀ are multiplied by: 1/√d_k, as in the book; GPT-2 variants
        # may set another (scale_attn_weights=false, scale_attn_by_inverse_layer_idx).
        self.scale = 1.0 / self.head_dim**0.5

    def heads_context(self, x: torch.Tensor, weights_out: torch.Tensor | None = None):
        """The per-head context before ``out_proj``, concatenated: ``(b, T, d_out)``,
        and the weights ``(b, num_heads, T, T)``. With ``weights_out`` (a float32
        ``(b, num_heads, T, T)`` tensor, e.g. a slice of a caller's preallocated array)
        the weights are written there and it is returned: no copy afterwards."""
        b, num_tokens, d_in = x.shape
        _check_length(num_tokens, self.mask.shape[0])
        split = (b, num_tokens, self.num_heads, self.head_dim)
        # (b, T, d_out) -> (b, T, num_heads, head_dim) -> (b, num_heads, T, head_dim)
        queries = self.W_query(x).view(split).transpose(1, 2)
        keys = self.W_key(x).view(split).transpose(1, 2)
        values = self.W_value(x).view(split).transpose(1, 2)
        # Scale the queries, not the (T x T) scores: one fewer pass over the big matrix.
        queries = queries * self.scale
        # All queries at once: at T = 1024 one (T x T) product per head runs ~3x faster
        # than blocks of queries that skip the masked half (many small products, strided
        # copies), and gives the same numbers. With weights_out the scores are computed
        # where the weights go and the softmax runs in place: no (T x T) temporary.
        # (b, nh, T, hd) @ (b, nh, hd, T) -> (b, nh, T, T)
        attn_scores = torch.matmul(queries, keys.transpose(2, 3), out=weights_out)
        if self.causal:
            attn_scores.masked_fill_(self.mask[:num_tokens, :num_tokens], float("-inf"))
        attn_weights = self.dropout(torch.softmax(attn_scores, dim=-1, out=weights_out))
        if weights_out is not None and attn_weights is not weights_out:
            weights_out.copy_(attn_weights)  # dropout (training mode) made a new tensor
        del attn_scores  # a (T x T) temporary (without weights_out) goes before the next product
        context_vec = attn_weights @ values  # (b, nh, T, T) @ (b, nh, T, hd) -> (b, nh, T, hd)
        context_vec = context_vec.transpose(1, 2)  # (b, T, nh, head_dim)
        return context_vec.reshape(b, num_tokens, self.d_out), attn_weights

    def forward(self, x: torch.Tensor, return_weights: bool = False,
                weights_out: torch.Tensor | None = None):
        context_vec, attn_weights = self.heads_context(x, weights_out)
        context_vec = self.out_proj(context_vec)  # (b, T, d_out)
        return (context_vec, attn_weights) if return_weights else context_vec


def wrapper_from_fused(mha: MultiHeadAttention) -> MultiHeadAttentionWrapper:
    """A ``MultiHeadAttentionWrapper`` whose heads are the slices of ``mha``'s projections,
    so its weights and concatenated context equal ``mha``'s (before ``out_proj``)."""
    d_in = mha.W_query.in_features
    qkv_bias = mha.W_query.bias is not None
    wrapper = MultiHeadAttentionWrapper(
        d_in, mha.d_out, mha.mask.shape[0], mha.dropout.p, mha.num_heads, qkv_bias, mha.causal
    )
    with torch.no_grad():
        for h, head in enumerate(wrapper.heads):
            rows = slice(h * mha.head_dim, (h + 1) * mha.head_dim)
            for name in ("W_query", "W_key", "W_value"):
                source, target = getattr(mha, name), getattr(head, name)
                target.weight.copy_(source.weight[rows])
                if qkv_bias:
                    target.bias.copy_(source.bias[rows])
    return wrapper


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from ``x`` ``(b, Tq, d_in)``, keys and values from
    another input ``context`` ``(b, Tk, d_context)`` — another text, or another modality when
    its width differs. Its own ``W_query`` (``d_in -> d_out``), ``W_key`` and ``W_value``
    (``d_context -> d_out``), split into ``num_heads`` heads, then ``out_proj``; no mask:
    every query sees every key of the other input. ``forward(x, context, True)`` returns
    ``(context_vec (b, Tq, d_out), attn_weights (b, num_heads, Tq, Tk))`` — what
    ``torch.nn.MultiheadAttention(d_out, num_heads, kdim=d_context, vdim=d_context)`` gives
    with ``average_attn_weights=False``."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        num_heads: int = 12,
        d_context: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = False,
    ):
        super().__init__()
        _check_heads(d_out, num_heads)
        d_context = d_in if d_context is None else d_context
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_context, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_context, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / self.head_dim**0.5
        self.causal = False

    def heads_context(self, x: torch.Tensor, context: torch.Tensor,
                      weights_out: torch.Tensor | None = None):
        """The per-head context before ``out_proj``, ``(b, Tq, d_out)``, and the weights
        ``(b, num_heads, Tq, Tk)`` (written into ``weights_out`` when given)."""
        b, n_queries, _ = x.shape
        n_keys = context.shape[1]
        # (b, T, d_out) -> (b, T, num_heads, head_dim) -> (b, num_heads, T, head_dim)
        queries = self.W_query(x).view(b, n_queries, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(context).view(b, n_keys, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(context).view(b, n_keys, self.num_heads, self.head_dim).transpose(1, 2)
        # (b, nh, Tq, hd) @ (b, nh, hd, Tk) -> (b, nh, Tq, Tk): every key of the other input
        attn_scores = torch.matmul(queries * self.scale, keys.transpose(2, 3), out=weights_out)
        attn_weights = self.dropout(torch.softmax(attn_scores, dim=-1, out=weights_out))
        if weights_out is not None and attn_weights is not weights_out:
            weights_out.copy_(attn_weights)
        context_vec = attn_weights @ values  # (b, nh, Tq, Tk) @ (b, nh, Tk, hd) -> (b, nh, Tq, hd)
        return context_vec.transpose(1, 2).reshape(b, n_queries, self.d_out), attn_weights

    def forward(self, x: torch.Tensor, context: torch.Tensor, return_weights: bool = False,
                weights_out: torch.Tensor | None = None):
        context_vec, attn_weights = self.heads_context(x, context, weights_out)
        context_vec = self.out_proj(context_vec)  # (b, Tq, d_out)
        return (context_vec, attn_weights) if return_weights else context_vec
