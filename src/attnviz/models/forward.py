"""The one forward pass of every family, just far enough to read the attention of the
layers asked for (litgpt's one config-driven model: a real difference in the math is one
switch of ``ModelSpec``/``LayerSpec``, never a second forward).

Embeddings (``WeightMap.embed``), then pre-norm blocks: ``x + attn(norm1(x))``, then
``x + mlp(norm2(x))`` (post-norm for BERT and DistilBERT: ``norm1(x + attn(x))``, then
``norm2(x + mlp(x))``). An encoder (``ModelSpec.causal`` False) has no causal mask: a
window, where it has one, hides the keys ``|j - i| >= W`` on both sides.

Attention per layer: projections (grouped key/value heads when
``n_kv_heads < n_heads``), QK-norm, rotary positions, the scale, a causal mask (within a
sliding window when the layer has one), an explicit softmax — the weights a visualizer
needs, which fused kernels never materialise — computed by ``attnviz.models.engine``: whole for a short
text, a tile at a time and reduced as it goes for a long one. Blocks are read from the checkpoint when
first needed, and only up to the deepest layer asked for. Everything runs in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnviz.models.activations import ALL_ACTIVATIONS
from attnviz.models.checkpoint import Checkpoint, WeightMap
from attnviz.models.engine import attend
from attnviz.models.spec import LayerSpec, ModelSpec, RopeSpec


class RMSNorm(nn.Module):
    """transformers' ``LlamaRMSNorm``, operation for operation (float32 throughout)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the last dimension: dimension i pairs with i + d/2."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x (b, heads, T, head_dim)`` rotated by ``cos``/``sin`` ``(T, rotary_dim)``: the
    first ``rotary_dim`` dimensions of each head; the rest pass through unchanged."""
    rotary_dim = cos.shape[-1]
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)


class Attention(nn.Module):
    """Causal self-attention of one layer, with the book's names (``W_query``,
    ``W_key``, ``W_value``, ``out_proj``): queries ``(n_heads·head_dim, d)``, keys and
    values ``(n_kv_heads·head_dim, d)``; query head h reads key/value head h // group."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec):
        super().__init__()
        d, hd = spec.d_model, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = spec.n_heads, spec.n_kv_heads, hd
        self.W_query = nn.Linear(d, spec.n_heads * hd, bias=spec.qkv_bias)
        self.W_key = nn.Linear(d, spec.n_kv_heads * hd, bias=spec.qkv_bias)
        self.W_value = nn.Linear(d, spec.n_kv_heads * hd, bias=spec.qkv_bias)
        self.out_proj = nn.Linear(spec.n_heads * hd, d, bias=spec.out_bias)
        self.q_norm = RMSNorm(hd, spec.norm_eps) if layer.qk_norm else None
        self.k_norm = RMSNorm(hd, spec.norm_eps) if layer.qk_norm else None
        self.scale, self.rope, self.window, self.softcap = (
            layer.scale, layer.rope, layer.window, layer.softcap)
        self.causal = spec.causal
        self.rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin), likewise

    def project(self, x: torch.Tensor, stages: dict | None = None, start: int = 0):
        """``x (b, T, d)`` -> queries ``(b, nh, T, hd)``, keys and values ``(b, nkv, T, hd)``
        as the scores use them: after QK-norm and the rotation, before the scale. ``x``'s
        tokens sit at positions ``start ..`` (a KV cache holds those before them).
        ``stages``, when given, receives the queries and keys before each of those steps."""
        b, num_tokens, _ = x.shape
        # (b, T, heads·hd) -> (b, T, heads, hd) -> (b, heads, T, hd)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim)
        keys = self.W_key(x).view(b, num_tokens, self.num_kv_heads, self.head_dim)
        values = self.W_value(x).view(b, num_tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            if stages is not None:
                stages["queries_projected"], stages["keys_projected"] = (
                    queries.transpose(1, 2), keys.transpose(1, 2))
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
        if self.rope is not None:
            if stages is not None:
                stages["queries_unrotated"], stages["keys_unrotated"] = queries, keys
            cos, sin = self.rope_tables
            at = slice(start, start + num_tokens)
            queries, keys = apply_rope(queries, cos[at], sin[at]), apply_rope(keys, cos[at], sin[at])
        return queries, keys, values

    def heads_context(self, x: torch.Tensor, weights_out: torch.Tensor | None = None,
                      cache: LayerCache | None = None, keep: bool = True, reduce=None,
                      key_mask: torch.Tensor | None = None):
        """The per-head context before ``out_proj``, concatenated: ``(b, T, nh·hd)``, and the
        weights ``(b, nh, T, T)``, written into ``weights_out`` when given (no copy) — or
        None when they are not wanted (``keep=False``) or go to ``reduce`` tile by tile
        (see ``attnviz.models.engine.attend``).
        With ``cache``, ``x`` holds only the new tokens (after ``cache.length`` cached ones):
        their keys and values join the cache, and the weights are their rows over every
        position so far, ``(b, nh, T_new, T_cached + T_new)``. ``key_mask (b, T)``: the
        padding keys of a right-padded batch (see ``attnviz.models.engine.attend``)."""
        b, num_tokens, _ = x.shape
        start = cache.length if cache is not None else 0
        queries, keys, values = self.project(x, start=start)
        if cache is not None:
            keys, values = cache.append(keys, values)  # (b, nkv, start + T, hd)
        # A power-of-two scale (1/8 for head_dim 64) is exact on either side of the product:
        # scale the queries then, one fewer pass over the (T x T) matrix. Any other scale
        # rounds: apply it to the scores, as transformers does, to get its very numbers.
        exact = math.frexp(self.scale)[0] == 0.5
        if exact:
            queries = queries * self.scale
        context_vec, attn_weights = attend(
            queries, keys, values, start=start, scale=None if exact else self.scale,
            softcap=self.softcap, window=self.window, weights_out=weights_out, keep=keep,
            reduce=reduce, causal=self.causal, key_mask=key_mask)
        context_vec = context_vec.transpose(1, 2)  # (b, T, nh, hd)
        return context_vec.reshape(b, num_tokens, self.num_heads * self.head_dim), attn_weights

    def forward(self, x: torch.Tensor, weights_out: torch.Tensor | None = None,
                cache: LayerCache | None = None, edit=None, keep: bool = True, reduce=None,
                key_mask: torch.Tensor | None = None):
        """``edit``, when given, maps the per-head context ``(b, T, nh·hd)`` to the one
        ``out_proj`` receives (an ablation zeroes a head's slice; a recorder keeps it).
        ``keep``, ``reduce``, ``key_mask``: see ``heads_context``."""
        context_vec, attn_weights = self.heads_context(x, weights_out, cache, keep, reduce,
                                                       key_mask)
        if edit is not None:
            context_vec = edit(context_vec)
        return self.out_proj(context_vec), attn_weights  # (b, T, d), (b, nh, T, T)


class LayerCache:
    """One layer's keys and values so far (after QK-norm and RoPE), in buffers of
    ``capacity`` positions grown by ``append``: a step costs its new tokens, not a copy of
    the whole cache."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.keys: torch.Tensor | None = None  # (b, nkv, capacity, hd)
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor):
        """Add ``(b, nkv, n, hd)`` keys and values; returns all so far, ``(b, nkv, length, hd)``."""
        b, nkv, n, hd = keys.shape
        if self.keys is None:
            self.keys = keys.new_empty(b, nkv, max(self.capacity, n), hd)
            self.values = values.new_empty(b, nkv, max(self.capacity, n), hd)
        end = self.length + n
        if end > self.keys.shape[2]:
            raise ValueError(f"the KV cache holds {self.keys.shape[2]} positions, not {end}")
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``i`` of the batch becomes row ``index[i]``'s (a beam search's beams)."""
        if self.keys is not None:
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)


class KVCache:
    """The keys and values of every layer, for generation: pass it to
    ``Transformer.decode`` step after step (``length``: positions cached)."""

    def __init__(self, n_layers: int, capacity: int):
        self.capacity = capacity
        self.layers = [LayerCache(capacity) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length


class MLP(nn.Module):
    """``proj(act(fc(x)))``, or gated: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        d, f, bias = spec.d_model, spec.mlp_width, spec.mlp_bias
        self.gated = spec.gated_mlp
        if self.gated:
            self.gate, self.up = nn.Linear(d, f, bias), nn.Linear(d, f, bias)
            self.down = nn.Linear(f, d, bias)
        else:
            self.fc, self.proj = nn.Linear(d, f, bias), nn.Linear(f, d, bias)
        self.activation = ALL_ACTIVATIONS[spec.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down(self.activation(self.gate(x)) * self.up(x))
        return self.proj(self.activation(self.fc(x)))


def padding_mask(lengths: torch.Tensor, n_keys: int, device) -> torch.Tensor | None:
    """``(B, n_keys)`` bool, True at the right-padding of a batch whose rows hold
    ``lengths (B,)`` real tokens; None when no row is padded."""
    mask = torch.arange(n_keys, device=device)[None, :] >= lengths.to(device)[:, None]
    return mask if bool(mask.any()) else None


def _norm(spec: ModelSpec) -> nn.Module:
    if spec.norm == "rmsnorm":
        return RMSNorm(spec.d_model, spec.norm_eps)
    return nn.LayerNorm(spec.d_model, eps=spec.norm_eps, bias=spec.norm_bias)


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; or in parallel,
    ``x + attn(norm1(x)) + mlp(norm2(x))``; with sandwich norms, each output normalised
    (``attn_out_norm``, ``mlp_out_norm``) before it joins the residual stream."""

    def __init__(self, spec: ModelSpec, layer: int):
        super().__init__()
        self.norm1 = _norm(spec) if spec.layers[layer].attn_norm else nn.Identity()
        self.attn = Attention(spec, spec.layers[layer])
        self.norm2 = _norm(spec)
        self.mlp = MLP(spec)
        self.parallel = spec.parallel_residual
        self.post_norm = spec.post_norm
        self.attn_out_norm = _norm(spec) if spec.sandwich_norms else None
        self.mlp_out_norm = _norm(spec) if spec.sandwich_norms else None

    def forward(self, x: torch.Tensor, weights_out: torch.Tensor | None = None,
                mlp: bool = True, cache: LayerCache | None = None, edit=None,
                record: dict | None = None, keep: bool = True, reduce=None,
                key_mask: torch.Tensor | None = None):
        """``x (b, T, d) -> (x_out (b, T, d), attn_input (b, T, d), weights (b, nh, T, T))``;
        the weights are written into ``weights_out`` when given. ``mlp=False`` skips the
        MLP (x_out is then None): the deepest block asked for needs only its attention.
        ``cache``: see ``Attention.heads_context``; ``edit``: see ``Attention.forward``.
        ``record``, when given, receives what the block adds to the residual stream,
        ``(b, T, d)`` each: ``attn_out`` (out_proj's output, before a sandwich norm),
        ``attn_added`` and ``mlp_added`` (x_out = x + attn_added + mlp_added).
        ``keep``, ``reduce``, ``key_mask``: see ``Attention.heads_context`` (weights is then
        None when not kept).
        Post-norm (BERT): the attention reads ``x`` itself; ``record`` receives
        ``attn_out``, ``norm1_in`` (x + attn_out), ``mlp_added`` (the MLP's output) and
        ``norm2_in`` (what norm2 reads): x_out = norm2(norm1(x + attn_out) + mlp_added)."""
        if self.post_norm:
            attn_out, weights = self.attn(x, weights_out, cache, edit, keep, reduce, key_mask)
            if not mlp:
                return None, x, weights
            norm1_in = x + attn_out
            hidden = self.norm1(norm1_in)
            mlp_out = self.mlp(hidden)
            norm2_in = hidden + mlp_out
            if record is not None:
                record.update(attn_out=attn_out, norm1_in=norm1_in, mlp_added=mlp_out,
                              norm2_in=norm2_in)
            return self.norm2(norm2_in), x, weights
        attn_input = self.norm1(x)
        attn_out, weights = self.attn(attn_input, weights_out, cache, edit, keep, reduce,
                                      key_mask)
        if not mlp:
            return None, attn_input, weights
        if record is not None:
            record["attn_out"] = attn_out
        if self.attn_out_norm is not None:
            attn_out = self.attn_out_norm(attn_out)
        if self.parallel:  # in transformers' order of the additions
            mlp_out = self.mlp(self.norm2(x))
            if record is not None:
                record["attn_added"], record["mlp_added"] = attn_out, mlp_out
            return mlp_out + attn_out + x, attn_input, weights
        x = x + attn_out
        mlp_out = self.mlp(self.norm2(x))
        if self.mlp_out_norm is not None:
            mlp_out = self.mlp_out_norm(mlp_out)
        if record is not None:
            record["attn_added"], record["mlp_added"] = attn_out, mlp_out
        return x + mlp_out, attn_input, weights

    @classmethod
    def from_weights(cls, spec: ModelSpec, layer: int, tensors: dict[str, torch.Tensor],
                     mlp: bool = True) -> Block:
        """Block ``layer`` with the checkpoint's own tensors as parameters (views, not
        copies). Built on the meta device: no random initialisation to overwrite.
        ``mlp=False``: only the attention's tensors are given; the MLP and norm2 stay
        unread (``has_mlp`` False) until ``add_mlp``."""
        with torch.device("meta"):
            block = cls(spec, layer)
        block._take(tensors, {n for n, _ in block.named_parameters() if mlp or _attention_part(n)})
        block.has_mlp = mlp
        return block.eval()

    def add_mlp(self, tensors: dict[str, torch.Tensor]) -> None:
        """Read the MLP (and norm2) of a block built with ``mlp=False``: the parts of
        ``tensors`` (the whole block's) that are not its attention."""
        wanted = {n for n, _ in self.named_parameters() if not _attention_part(n)}
        self._take({n: t for n, t in tensors.items() if n in wanted}, wanted)
        self.has_mlp = True

    def to_device(self, device: torch.device) -> Block:
        """``to(device)`` for the parts that are read (an unread MLP stays on meta)."""
        later = (self.norm2, self.mlp, self.attn_out_norm, self.mlp_out_norm)
        for part in (self.norm1, self.attn) + (later if self.has_mlp else ()):
            if part is not None:
                part.to(device)
        return self

    def _take(self, tensors: dict[str, torch.Tensor], expected: set[str]) -> None:
        if missing := sorted(expected - set(tensors)):
            raise ValueError(f"the weight map lacks {', '.join(missing)}")
        if extra := sorted(set(tensors) - expected):
            raise ValueError(f"the weight map has unused {', '.join(extra)}")
        for name, tensor in tensors.items():
            owner, _, leaf = name.rpartition(".")
            setattr(self.get_submodule(owner), leaf, nn.Parameter(tensor, requires_grad=False))


def _attention_part(name: str) -> bool:
    return name.startswith(("norm1.", "attn."))


class Transformer:
    """The embeddings and blocks of a checkpoint (see the module docstring). The interface
    every command uses through ``analysis.load_model``: ``n_layers``, ``n_heads``,
    ``context_length``, ``describe()``, ``attn_scale(layer)``, ``run``/``iter_run``."""

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu"):
        self.checkpoint = checkpoint
        self.spec = checkpoint.spec
        self.tokenizer = checkpoint.tokenizer
        self.device = torch.device(device)
        self.blocks: list[Block] = []
        self._rope: dict[RopeSpec, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def n_heads(self) -> int:
        return self.spec.n_heads

    @property
    def context_length(self) -> int:
        return self.spec.context_length

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size  # rows of the embedding table

    @property
    def kv_heads(self) -> list[int]:
        """The key/value head of each query head, for the families whose config has them
        (GPT-2's outputs have no kv_head: empty)."""
        return self.spec.kv_heads if "n_kv_heads" in self.checkpoint.described else []

    def attn_scale(self, layer: int) -> float:
        return self.spec.layers[layer].scale

    @property
    def attention_kind(self) -> str:
        """``"decoder"`` (causal self-attention) or ``"encoder"`` (bidirectional)."""
        return "decoder" if self.spec.causal else "encoder"

    def window(self, layer: int) -> int | None:
        return self.spec.layers[layer].window

    def describe(self) -> dict:
        return self.checkpoint.describe()

    def load_blocks(self, n_blocks: int, progress=None, whole: bool = False) -> None:
        """Read blocks ``0 .. n_blocks - 1`` (what is not read yet): the last one's attention
        only, since only its attention runs (a 1B model's first layer: 42 MB of float32, not
        240 MB), unless ``whole``; ``progress(stage, done, total)`` is called after each."""
        weights = self.checkpoint.weights
        for i in range(n_blocks):
            mlp = whole or i + 1 < n_blocks
            if i < len(self.blocks):
                if mlp and not self.blocks[i].has_mlp:
                    self.blocks[i].add_mlp(weights.block(i))
                    self.blocks[i].to_device(self.device)
                continue
            block = Block.from_weights(self.spec, i, weights.block(i, mlp=mlp), mlp=mlp)
            self.blocks.append(block.to_device(self.device))
            if progress:
                progress("Reading weights", i + 1, n_blocks)

    def _prepare(self, n_tokens: int, blocks: list[Block]) -> None:
        """Give ``blocks`` rotation tables for ``n_tokens`` positions, shared by the layers
        with the same RoPE (grown when a longer text comes). Masks are made per slab by
        the engine (``attnviz.models.engine.hidden``)."""
        for block in blocks:
            attn = block.attn
            if attn.rope is not None:
                tables = self._rope.get(attn.rope)
                if tables is None or tables[0].shape[0] < n_tokens:
                    tables = self._rope[attn.rope] = tuple(
                        t.to(self.device) for t in attn.rope.tables(n_tokens))
                attn.rope_tables = tables

    def embed(self, token_ids: torch.Tensor, start: int = 0,
              token_types: torch.Tensor | None = None) -> torch.Tensor:
        """``token_ids (B, T)`` at positions ``start ..`` -> ``(B, T, d)``, reading only the
        rows of the tables used. ``token_types (B, T)``: a sentence pair's segments, for the
        models with a token type table (BERT); None: all 0."""
        weights = self.checkpoint.weights
        if token_types is not None:
            return weights.embed(token_ids, start, token_types=token_types).to(self.device)
        return weights.embed(token_ids, start).to(self.device)

    @property
    def can_predict(self) -> bool:
        """Whether the checkpoint has what next-token logits need (final norm and head)."""
        weights = self.checkpoint.weights
        return type(weights).final_norm is not WeightMap.final_norm and weights.final_norm() is not None

    def output_head(self):
        """``(final norm module, unembedding (V, d))``, read once."""
        if getattr(self, "_head_parts", None) is None:
            weights = self.checkpoint.weights
            norm_tensors, unembedding = weights.final_norm(), weights.unembedding()
            if norm_tensors is None or unembedding is None:
                raise ValueError("the checkpoint has no final norm or output head")
            with torch.device("meta"):
                norm = _norm(self.spec)
            for name, tensor in norm_tensors.items():
                setattr(norm, name, nn.Parameter(tensor, requires_grad=False))
            self._head_parts = (norm.to(self.device), unembedding.to(self.device))
        return self._head_parts

    def ready(self, n_tokens: int, progress=None, n_blocks: int | None = None) -> list[Block]:
        """Every block, read whole and given masks and rotations for ``n_tokens``
        positions: for a caller that runs the blocks itself (attribution). ``n_blocks``:
        only the first ones (why: the blocks up to the layer it explains)."""
        n_blocks = self.n_layers if n_blocks is None else n_blocks
        self.load_blocks(n_blocks, progress, whole=True)
        self._prepare(n_tokens, self.blocks[:n_blocks])
        return self.blocks[:n_blocks]

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.n_layers, capacity)

    @torch.inference_mode()
    def decode(self, token_ids: torch.Tensor, cache: KVCache, keep: list[int] = (),
               last_only: bool = True, edits: dict | None = None):
        """Run ``token_ids (B, n)`` after the ``cache.length`` positions ``cache`` holds (its
        keys and values grow by n): ``(logits (B, n or 1, V), {layer: weights (B, nh, n,
        cache.length)})`` for the layers in ``keep`` — the new tokens' rows over every
        position so far. ``last_only``: the logits of the last new token only. ``edits``:
        ``{layer: edit}``, each as ``Attention.forward``'s (an ablation zeroes heads)."""
        start, n = cache.length, token_ids.shape[1]
        self.load_blocks(self.n_layers, whole=True)
        self._prepare(max(start + n, cache.capacity), self.blocks)  # once, not every step
        x = self.embed(token_ids, start)
        rows, wanted = {}, set(keep)
        for i, block in enumerate(self.blocks):
            x, _, weights = block(x, cache=cache.layers[i], keep=i in wanted,
                                  edit=edits.get(i) if edits else None)
            if i in wanted:
                rows[i] = weights
        norm, unembedding = self.output_head()
        hidden = norm(x[:, -1:] if last_only else x)
        logits = hidden @ unembedding.T  # (B, n, d) @ (d, V) -> (B, n, V)
        if self.spec.logit_softcap is not None:
            logits = torch.tanh(logits / self.spec.logit_softcap) * self.spec.logit_softcap
        return logits, rows

    def run(self, token_ids: torch.Tensor, layers: list[int],
            weights_out: torch.Tensor | None = None, progress=None, reduce=None,
            token_types: torch.Tensor | None = None,
            lengths: torch.Tensor | None = None) -> list[tuple]:
        """``token_ids (B, T)`` -> for each of ``layers``: ``(attn_input (B, T, d),
        weights (B, nh, T, T), attention module)``. Rows of a batch may be right-padded:
        the causal mask keeps every position blind to the padding after it; an encoder
        needs ``lengths (B,)``, each row's real tokens, to hide its padding keys.
        ``weights_out``: a float32 ``(len(layers), B, nh, T, T)`` CPU tensor the weights
        are written into (its slices are returned); ``progress(stage, done, total)`` is
        called after each block read and each block run. ``reduce``, ``token_types``: see
        ``iter_run``."""
        out = {k: rest for k, *rest in self.iter_run(token_ids, layers, weights_out, progress,
                                                     reduce, token_types, lengths)}
        return [tuple(out[k]) for k in range(len(layers))]

    @torch.inference_mode()
    def iter_run(self, token_ids: torch.Tensor, layers: list[int],
                 weights_out: torch.Tensor | None = None, progress=None, reduce=None,
                 token_types: torch.Tensor | None = None,
                 lengths: torch.Tensor | None = None):
        """``run``, one layer at a time: yields ``(k, attn_input, weights, module)`` for
        ``layers[k]`` as soon as its block has run (in the order of the blocks), so a caller
        can write a layer out before the next is computed. ``reduce``, when given, is a
        sequence of ``attnviz.models.engine.Reduce``, one per layer of ``layers``: the
        weights go to it tile by tile (never the whole matrix), and ``weights`` is None.
        Layers not in ``layers`` keep no weights (a long one: torch's fused kernel).
        ``token_types (B, T)``: a sentence pair's segments (see ``embed``). ``lengths
        (B,)``: see ``run`` (a causal model needs none: its mask already hides the padding)."""
        deepest = max(layers) + 1
        self.load_blocks(deepest, progress)
        self._prepare(token_ids.shape[1], self.blocks[:deepest])
        x = self.embed(token_ids, token_types=token_types)
        key_mask = padding_mask(lengths, token_ids.shape[1], self.device) if (
            lengths is not None and not self.spec.causal) else None
        wanted = {layer: k for k, layer in enumerate(layers)}
        on_device = weights_out is not None and weights_out.device == self.device
        for i, block in enumerate(self.blocks[:deepest]):
            k = wanted.get(i)
            target = weights_out[k] if k is not None and weights_out is not None else None
            x, attn_input, weights = block(
                x, target if on_device else None, mlp=i + 1 < deepest, keep=k is not None,
                reduce=reduce[k] if reduce is not None and k is not None else None,
                key_mask=key_mask)
            if target is not None and not on_device:
                weights = target.copy_(weights)  # back to the CPU, layer by layer
            if progress:
                progress("Forward pass", i + 1, deepest)
            if k is not None:
                yield k, attn_input, weights, block.attn
