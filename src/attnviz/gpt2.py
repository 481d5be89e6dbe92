"""GPT-2's forward pass, just far enough to read the attention of the layers asked for.

Token + position embeddings, then pre-LayerNorm blocks: ``x + attn(ln_1(x))``, then
``x + mlp(ln_2(x))`` with a tanh-approximated GELU. Each block's attention is
``attention.MultiHeadAttention`` with GPT-2's weights copied in, so random and real
attention are drawn by the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from attnviz.attention import MultiHeadAttention
from attnviz.checkpoint import Checkpoint, GPT2Config


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        d = config.n_embd
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.attn = MultiHeadAttention(
            d, d, config.n_positions, num_heads=config.n_head, qkv_bias=True
        )
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.c_fc = nn.Linear(d, config.n_inner)
        self.c_proj = nn.Linear(config.n_inner, d)

    def forward(self, x: torch.Tensor):
        """``x (b, T, d) -> (x_out (b, T, d), attn_input (b, T, d), weights (b, nh, T, T))``."""
        attn_input = self.ln_1(x)
        attn_out, weights = self.attn(attn_input, return_weights=True)
        x = x + attn_out
        hidden = nn.functional.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.c_proj(hidden), attn_input, weights

    @torch.no_grad()
    def load_hf(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        """Copy Hugging Face block weights in; its Conv1D stores (in, out), Linear (out, in)."""
        d = self.ln_1.normalized_shape[0]
        c_attn_w = tensors[prefix + "attn.c_attn.weight"]  # (d, 3d): q | k | v
        c_attn_b = tensors[prefix + "attn.c_attn.bias"]  # (3d,)
        for i, linear in enumerate((self.attn.W_query, self.attn.W_key, self.attn.W_value)):
            linear.weight.copy_(c_attn_w[:, i * d : (i + 1) * d].T)
            linear.bias.copy_(c_attn_b[i * d : (i + 1) * d])
        pairs = {
            self.attn.out_proj: "attn.c_proj",
            self.c_fc: "mlp.c_fc",
            self.c_proj: "mlp.c_proj",
        }
        for linear, name in pairs.items():
            linear.weight.copy_(tensors[prefix + name + ".weight"].T)
            linear.bias.copy_(tensors[prefix + name + ".bias"])
        for norm in ("ln_1", "ln_2"):
            getattr(self, norm).weight.copy_(tensors[f"{prefix}{norm}.weight"])
            getattr(self, norm).bias.copy_(tensors[f"{prefix}{norm}.bias"])


class GPT2:
    """The embeddings and the first ``n_blocks`` blocks of a GPT-2 checkpoint."""

    def __init__(self, checkpoint: Checkpoint, n_blocks: int | None = None):
        self.config = checkpoint.config
        n_blocks = self.config.n_layer if n_blocks is None else n_blocks
        self.wte = checkpoint.tensors["wte.weight"]  # (vocab, d)
        self.wpe = checkpoint.tensors["wpe.weight"]  # (n_positions, d)
        self.blocks = []
        for i in range(n_blocks):
            block = Block(self.config).eval()
            block.load_hf(checkpoint.tensors, f"h.{i}.")
            self.blocks.append(block)

    @torch.no_grad()
    def run(self, token_ids: list[int], layers: list[int]):
        """For each layer in ``layers``: ``(attn_input (T, d), weights (nh, T, T), attn)``."""
        ids = torch.tensor(token_ids)
        x = (self.wte[ids] + self.wpe[: len(token_ids)]).unsqueeze(0)  # (1, T, d)
        wanted, out = set(layers), {}
        for i, block in enumerate(self.blocks[: max(layers) + 1]):
            x, attn_input, weights = block(x)
            if i in wanted:
                out[i] = (attn_input[0], weights[0], block.attn)
        return [out[i] for i in layers]
