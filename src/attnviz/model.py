"""Random mode: seeded token and position embeddings feeding one attention module.

The embedding tables are GPT-2 sized (50257 x d_model and context_length x d_model) but
only the rows a text uses are ever drawn: row ``r`` of a table is standard-normal noise
from its own seed ``(seed, table, r)``, exactly as if the whole table had been filled, at
a fraction of the cost (filling 50257 x 768 takes ~0.4 s). The attention projections are
``nn.Linear``'s default initialisation under ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import numpy as np
import torch

from attnviz.attention import MultiHeadAttention, wrapper_from_fused
from attnviz.config import GPT2_VOCAB_SIZE, ModelConfig

_TOKEN_TABLE, _POSITION_TABLE = 0, 1


def seeded_rows(seed: int, table: int, rows: list[int], dim: int) -> torch.Tensor:
    """Rows of a virtual N(0, 1) table: ``(len(rows), dim)`` float32, each row seeded alone."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i] = np.random.default_rng([seed, table, r]).standard_normal(dim, dtype=np.float32)
    return torch.from_numpy(out)


class RandomModel:
    """Token + position embeddings and a freshly initialised (untrained) attention layer."""

    def __init__(self, config: ModelConfig, mask_length: int | None = None):
        # The causal mask is a (length x length) buffer: size it for the text, not for a
        # possibly huge --context-length. The weights do not depend on it.
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.fused = MultiHeadAttention(
                config.d_model,
                config.d_model,
                mask_length or config.context_length,
                num_heads=config.n_heads,
                qkv_bias=config.qkv_bias,
            ).eval()
        self.attention = self.fused if config.impl == "fused" else wrapper_from_fused(self.fused)

    @property
    def embedding_parameters(self) -> int:
        return (GPT2_VOCAB_SIZE + self.config.context_length) * self.config.d_model

    @property
    def attention_parameters(self) -> int:
        return sum(p.numel() for p in self.fused.parameters())

    def describe(self) -> dict:
        """The configuration and parameter counts, as shown by ``info`` and in results."""
        return {"mode": "random", **self.config.as_dict(),
                "attention_parameters": self.attention_parameters,
                "embedding_parameters": self.embedding_parameters}

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """``(T, d_model)``: token embedding + position embedding."""
        d, seed = self.config.d_model, self.config.seed
        tokens = seeded_rows(seed, _TOKEN_TABLE, token_ids, d)
        positions = seeded_rows(seed, _POSITION_TABLE, list(range(len(token_ids))), d)
        return tokens + positions

    @torch.no_grad()
    def attention_weights(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(attn_input (T, d_model), weights (num_heads, T, T))``."""
        x = self.embed(token_ids)
        _, weights = self.attention(x.unsqueeze(0), return_weights=True)
        return x, weights[0]


def projections_of(mha: MultiHeadAttention) -> dict[str, torch.Tensor]:
    """``W_query``/``W_key``/``W_value`` as ``(d_out, d_in)`` (and ``b_*`` when biased)."""
    out = {}
    for name in ("query", "key", "value"):
        linear = getattr(mha, f"W_{name}")
        out[f"W_{name}"] = linear.weight.detach()
        if linear.bias is not None:
            out[f"b_{name}"] = linear.bias.detach()
    return out
