"""Random mode: seeded token and position embeddings feeding one attention module.

The embedding tables are GPT-2 sized (50257 x d_model and context_length x d_model) but
only the rows a text uses are ever drawn: row ``r`` of a table is standard-normal noise
from its own seed ``(seed, table, r)``, exactly as if the whole table had been filled, at
a fraction of the cost (filling 50257 x 768 takes ~0.4 s). The attention projections are
``nn.Linear``'s default initialisation under ``torch.manual_seed(seed)``.

``config.bidirectional``: the module runs without the causal mask. Given a second text's
``key_ids`` (``--cross``), a ``CrossAttention`` module (seeded alike: with ``cross_d_in``
equal to ``d_model`` its projections are the self-attention module's) attends from the
text to the second text, embedded the same way in ``cross_d_in`` dimensions.
"""

from __future__ import annotations

import numpy as np
import torch

from attnviz.core.attention import CrossAttention, MultiHeadAttention, wrapper_from_fused
from attnviz.core.config import GPT2_VOCAB_SIZE, ModelConfig
from attnviz.models.engine import attend
from attnviz.text.tokenization import gpt2_tokenizer

_TOKEN_TABLE, _POSITION_TABLE = 0, 1


def seeded_rows(seed: int, table: int, rows: list[int], dim: int) -> torch.Tensor:
    """Rows of a virtual N(0, 1) table: ``(len(rows), dim)`` float32, each row seeded alone."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i] = np.random.default_rng([seed, table, r]).standard_normal(dim, dtype=np.float32)
    return torch.from_numpy(out)


class RandomModel:
    """Token + position embeddings and a freshly initialised (untrained) attention layer."""

    n_layers = 1

    def __init__(self, config: ModelConfig, mask_length: int | None = None,
                 device: str | torch.device = "cpu"):
        # The causal mask is a (length x length) buffer: size it for the text, not for a
        # possibly huge --context-length (run() grows it when needed). The weights do not
        # depend on it.
        self.config = config
        self.device = torch.device(device)
        self._build(mask_length or min(config.context_length, 1024))

    def _build(self, mask_length: int) -> None:
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.fused = MultiHeadAttention(
                config.d_model,
                config.d_model,
                mask_length,
                num_heads=config.n_heads,
                qkv_bias=config.qkv_bias,
                causal=not config.bidirectional,
            ).eval()
        self.attention = self.fused if config.impl == "fused" else wrapper_from_fused(self.fused)
        self.attention.to(self.device)
        self._cross = None

    @property
    def cross_module(self) -> CrossAttention:
        """The cross-attention module of ``--cross`` (built when first used)."""
        if self._cross is None:
            config = self.config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self._cross = CrossAttention(config.d_model, config.d_model, config.n_heads,
                                             d_context=self.key_width,
                                             qkv_bias=config.qkv_bias).eval().to(self.device)
        return self._cross

    @property
    def key_width(self) -> int:
        """The width of the second input of cross-attention (``--cross-d-in``)."""
        return self.config.cross_d_in or self.config.d_model

    @property
    def attention_kind(self) -> str:
        """``"encoder"`` without the causal mask (``--bidirectional``), else ``"decoder"``."""
        return "encoder" if self.config.bidirectional else "decoder"

    vocab_size = GPT2_VOCAB_SIZE
    kv_heads: list[int] = []  # every head its own key/value head

    @property
    def tokenizer(self):
        return gpt2_tokenizer()

    def window(self, layer: int) -> None:
        return None  # plain causal attention

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def attn_scale(self, layer: int) -> float:
        return self.fused.scale

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
        tokens, positions = self.embed_parts(token_ids)
        return tokens + positions

    def embed_parts(self, token_ids: list[int], width: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token embeddings and the position embeddings ``embed`` adds, ``(T, width)``
        each (``width``: d_model by default)."""
        d, seed = width or self.config.d_model, self.config.seed
        return (seeded_rows(seed, _TOKEN_TABLE, token_ids, d),
                seeded_rows(seed, _POSITION_TABLE, list(range(len(token_ids))), d))

    def embed_keys(self, key_ids: list[int]) -> torch.Tensor:
        """``(Tk, key_width)``: the second text of cross-attention, embedded as ``embed``
        embeds a text (the same tables, ``key_width`` wide)."""
        tokens, positions = self.embed_parts(key_ids, self.key_width)
        return tokens + positions

    def run(self, token_ids: torch.Tensor, layers: list[int],
            weights_out: torch.Tensor | None = None, progress=None, reduce=None,
            key_ids: torch.Tensor | None = None) -> list[tuple]:
        """``token_ids (B, T)`` -> ``[(attn_input (B, T, d), weights (B, nh, T, T), module)]``
        for the one layer (0) random mode has; as ``Transformer.run`` (``weights_out``,
        ``progress``, ``reduce``). ``key_ids (B, Tk)``: cross-attention over that second
        text, weights ``(B, nh, T, Tk)``."""
        return [tuple(rest) for _, *rest in self.iter_run(token_ids, layers, weights_out, progress,
                                                          reduce, key_ids)]

    @torch.inference_mode()
    def iter_run(self, token_ids: torch.Tensor, layers: list[int],
                 weights_out: torch.Tensor | None = None, progress=None, reduce=None,
                 key_ids: torch.Tensor | None = None):
        """``run`` as ``Transformer.iter_run`` yields it: ``(k, attn_input, weights, module)``.
        With ``reduce``, the weights go to the engine's reduction tile by tile
        (``attnviz.models.engine``): the module's projections, the engine's softmax."""
        if key_ids is not None:
            x = torch.stack([self.embed(row) for row in token_ids.tolist()]).to(self.device)
            context = torch.stack([self.embed_keys(row) for row in key_ids.tolist()]).to(self.device)
            _, weights = self.cross_module(x, context, return_weights=True)
            if progress:
                progress("Forward pass", 1, 1)
            for k in range(len(layers)):
                yield (k, x, weights if weights_out is None else weights_out[k].copy_(weights),
                       self.cross_module)
            return
        if reduce is not None:
            x = torch.stack([self.embed(row) for row in token_ids.tolist()]).to(self.device)
            self._reduce(x, reduce[0])
            if progress:
                progress("Forward pass", 1, 1)
            for k in range(len(layers)):
                yield k, x, None, self.fused
            return
        if token_ids.shape[1] > self.fused.mask.shape[0]:
            self._build(token_ids.shape[1])
        x = torch.stack([self.embed(row) for row in token_ids.tolist()]).to(self.device)
        _, weights = self.attention(x, return_weights=True)
        if progress:
            progress("Forward pass", 1, 1)
        for k in range(len(layers)):
            yield k, x, weights if weights_out is None else weights_out[k].copy_(weights), self.fused


    def _reduce(self, x: torch.Tensor, reduce) -> None:
        """The one layer's attention, ``x (B, T, d)``, through the engine into ``reduce``."""
        mha = self.fused
        b, n, _ = x.shape
        heads = [f(x).view(b, n, mha.num_heads, mha.head_dim).transpose(1, 2)
                 for f in (mha.W_query, mha.W_key, mha.W_value)]  # (B, nh, T, hd) each
        attend(*heads, start=0, scale=mha.scale, softcap=None, window=None, reduce=reduce,
               causal=mha.causal)


def projections_of(mha: MultiHeadAttention) -> dict[str, torch.Tensor]:
    """``W_query``/``W_key``/``W_value`` as ``(d_out, d_in)`` (and ``b_*`` when biased)."""
    out = {}
    for name in ("query", "key", "value"):
        linear = getattr(mha, f"W_{name}")
        out[f"W_{name}"] = linear.weight.detach()
        if linear.bias is not None:
            out[f"b_{name}"] = linear.bias.detach()
    return out
