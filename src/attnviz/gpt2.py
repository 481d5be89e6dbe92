"""GPT-2's forward pass, just far enough to read the attention of the layers asked for.

Token + position embeddings, then pre-LayerNorm blocks: ``x + attn(ln_1(x))``, then
``x + mlp(ln_2(x))``. Each block's attention is ``attention.MultiHeadAttention`` with the
checkpoint's weights copied in, so random and real attention are drawn by the same code.
Only the blocks up to the deepest layer asked for are read from the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from attnviz.attention import MultiHeadAttention, _causal_mask
from attnviz.checkpoint import ACTIVATIONS, Checkpoint, GPT2Config, TensorSource


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer: int):
        super().__init__()
        d = config.n_embd
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.attn = MultiHeadAttention(d, d, config.n_positions, num_heads=config.n_head,
                                       qkv_bias=config.qkv_bias)
        self.attn.scale = config.attn_scale(layer)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.c_fc = nn.Linear(d, config.n_inner)
        self.c_proj = nn.Linear(config.n_inner, d)
        self.activation = ACTIVATIONS[config.activation_function]

    def forward(self, x: torch.Tensor, weights_out: torch.Tensor | None = None,
                mlp: bool = True):
        """``x (b, T, d) -> (x_out (b, T, d), attn_input (b, T, d), weights (b, nh, T, T))``;
        the weights are written into ``weights_out`` when given. ``mlp=False`` skips the
        MLP (x_out is then None): the deepest block asked for needs only its attention."""
        attn_input = self.ln_1(x)
        attn_out, weights = self.attn(attn_input, return_weights=True, weights_out=weights_out)
        if not mlp:
            return None, attn_input, weights
        x = x + attn_out
        hidden = self.activation(self.c_fc(self.ln_2(x)))
        return x + self.c_proj(hidden), attn_input, weights

    @classmethod
    def from_hf(cls, config: GPT2Config, layer: int, tensors: TensorSource,
                mask: torch.Tensor) -> Block:
        """Block ``layer`` of a checkpoint, its parameters the checkpoint's own tensors.
        Built on the meta device: no random initialisation to overwrite, no copies."""
        with torch.device("meta"):
            block = cls(config, layer)
        block.load_hf(tensors, f"h.{layer}.")
        block.attn.mask = mask  # (n_positions, n_positions), shared by the blocks
        return block.eval()

    @torch.no_grad()
    def load_hf(self, tensors: TensorSource, prefix: str) -> None:
        """Take Hugging Face block weights in as parameters (views, not copies); its Conv1D
        stores (in, out), Linear (out, in): a transposed view is what F.linear multiplies by."""
        d = self.ln_1.normalized_shape[0]
        c_attn_w = tensors.get(prefix + "attn.c_attn.weight")  # (d, 3d): q | k | v
        c_attn_b = tensors.get(prefix + "attn.c_attn.bias") if self.attn.W_query.bias is not None else None
        for i, linear in enumerate((self.attn.W_query, self.attn.W_key, self.attn.W_value)):
            linear.weight = _parameter(c_attn_w[:, i * d : (i + 1) * d].T)
            if c_attn_b is not None:
                linear.bias = _parameter(c_attn_b[i * d : (i + 1) * d])
        pairs = {self.attn.out_proj: "attn.c_proj", self.c_fc: "mlp.c_fc", self.c_proj: "mlp.c_proj"}
        for linear, name in pairs.items():
            linear.weight = _parameter(tensors.get(prefix + name + ".weight").T)
            linear.bias = _parameter(tensors.get(prefix + name + ".bias"))
        for norm in ("ln_1", "ln_2"):
            getattr(self, norm).weight = _parameter(tensors.get(f"{prefix}{norm}.weight"))
            getattr(self, norm).bias = _parameter(tensors.get(f"{prefix}{norm}.bias"))


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class GPT2:
    """The embeddings and blocks of a GPT-2-family checkpoint. Blocks are read from the
    checkpoint when first needed, and only up to the deepest layer asked for."""

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu"):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.device = torch.device(device)
        self.blocks: list[Block] = []

    @property
    def n_layers(self) -> int:
        return self.config.n_layer

    @property
    def n_heads(self) -> int:
        return self.config.n_head

    @property
    def context_length(self) -> int:
        return self.config.n_positions

    def attn_scale(self, layer: int) -> float:
        return self.config.attn_scale(layer)

    def describe(self) -> dict:
        return self.checkpoint.describe()

    def load_blocks(self, n_blocks: int, progress=None) -> None:
        """Read blocks ``0 .. n_blocks - 1`` (those not read yet); ``progress(stage, done,
        total)`` is called after each."""
        mask = _causal_mask(self.config.n_positions)
        for i in range(len(self.blocks), n_blocks):
            block = Block.from_hf(self.config, i, self.checkpoint.tensors, mask)
            self.blocks.append(block.to(self.device))
            if progress:
                progress("Reading weights", i + 1, n_blocks)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``token_ids (B, T)`` -> ``(B, T, d)``: token + position embeddings, reading only
        the rows of the tables that are used."""
        tensors, (b, t) = self.checkpoint.tensors, token_ids.shape
        flat = token_ids.reshape(-1).tolist()
        tokens = tensors.rows("wte.weight", flat).reshape(b, t, -1)  # (B, T, d)
        positions = tensors.rows("wpe.weight", list(range(t)))  # (T, d)
        return (tokens + positions).to(self.device)

    def run(self, token_ids: torch.Tensor, layers: list[int],
            weights_out: torch.Tensor | None = None, progress=None) -> list[tuple]:
        """``token_ids (B, T)`` -> for each of ``layers``: ``(attn_input (B, T, d),
        weights (B, nh, T, T), attention module)``. Rows of a batch may be right-padded:
        the causal mask keeps every position blind to the padding after it.
        ``weights_out``: a float32 ``(len(layers), B, nh, T, T)`` CPU tensor the weights
        are written into (its slices are returned); ``progress(stage, done, total)`` is
        called after each block read and each block run."""
        out = {k: rest for k, *rest in self.iter_run(token_ids, layers, weights_out, progress)}
        return [tuple(out[k]) for k in range(len(layers))]

    @torch.inference_mode()
    def iter_run(self, token_ids: torch.Tensor, layers: list[int],
                 weights_out: torch.Tensor | None = None, progress=None):
        """``run``, one layer at a time: yields ``(k, attn_input, weights, module)`` for
        ``layers[k]`` as soon as its block has run (in the order of the blocks), so a caller
        can write a layer out before the next is computed."""
        deepest = max(layers) + 1
        self.load_blocks(deepest, progress)
        x = self.embed(token_ids)
        wanted = {layer: k for k, layer in enumerate(layers)}
        on_device = weights_out is not None and weights_out.device == self.device
        for i, block in enumerate(self.blocks[:deepest]):
            k = wanted.get(i)
            target = weights_out[k] if k is not None and weights_out is not None else None
            x, attn_input, weights = block(x, target if on_device else None, mlp=i + 1 < deepest)
            if target is not None and not on_device:
                weights = target.copy_(weights)  # back to the CPU, layer by layer
            if progress:
                progress("Forward pass", i + 1, deepest)
            if k is not None:
                yield k, attn_input, weights, block.attn
