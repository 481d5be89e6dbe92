"""The forward pass of an encoder–decoder (T5, BART, Marian), far enough to read its three
kinds of attention: encoder self-attention (bidirectional), decoder self-attention
(causal) and cross-attention (decoder queries over the encoder's keys), and the decoder's
logits for generation. One pass for the three families: what differs is a field of
``Seq2SeqSpec`` (see ``attnviz.models.seq2seq_spec``). Attention itself is the engine's
(``attnviz.models.engine.attend``): ``causal=False`` for the encoder and cross, T5's
relative positions as its ``bias``. Everything runs in float32.

>>> model = EncoderDecoder(checkpoint)                         # doctest: +SKIP
>>> memory, encoder = model.encode(source_ids, keep=[0])       # {0: (1, H, S, S)}
>>> logits, decoder, cross = model.decode(target_ids, memory, keep=[0])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnviz.models.checkpoint import Checkpoint
from attnviz.models.engine import attend
from attnviz.models.forward import MLP, LayerCache, RMSNorm, padding_mask
from attnviz.models.seq2seq_spec import Seq2SeqSpec, relative_buckets, sinusoidal_table


def _norm(spec: Seq2SeqSpec) -> nn.Module:
    if spec.norm == "rmsnorm":
        return RMSNorm(spec.d_model, spec.norm_eps)
    return nn.LayerNorm(spec.d_model, eps=spec.norm_eps)


class Attention(nn.Module):
    """One attention of a layer (``q``, ``k``, ``v``, ``o`` as the files name them): self-
    attention over its own input, or cross-attention over the encoder's keys and values
    (``memory_kv``)."""

    def __init__(self, spec: Seq2SeqSpec):
        super().__init__()
        d, inner = spec.d_model, spec.n_heads * spec.head_dim
        self.n_heads, self.head_dim, self.scale = spec.n_heads, spec.head_dim, spec.scale
        self.q = nn.Linear(d, inner, bias=spec.bias)
        self.k = nn.Linear(d, inner, bias=spec.bias)
        self.v = nn.Linear(d, inner, bias=spec.bias)
        self.o = nn.Linear(inner, d, bias=spec.bias)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, T, nh·hd)`` -> ``(b, nh, T, hd)``."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k(x)), self.heads(self.v(x))

    def forward(self, x: torch.Tensor, *, causal: bool, memory_kv=None, bias=None,
                cache: LayerCache | None = None, keep: bool = True, key_mask=None,
                record: dict | None = None):
        """``x (b, T, d)`` -> ``(out (b, T, d), weights (b, nh, T, Tk) or None)``. Self-
        attention (``memory_kv`` None) over ``x``'s keys, after the ``cache``'s; cross-
        attention over ``memory_kv``, the encoder's ``(keys, values)``. ``key_mask (b,
        Tk)``: padding keys of a right-padded batch (``attnviz.models.engine.attend``).
        ``record``, when given, receives ``context``: the heads' context before ``o``,
        ``(b, T, nh·hd)``."""
        b, t, _ = x.shape
        start = cache.length if cache is not None else 0
        queries = self.heads(self.q(x))
        if memory_kv is None:
            keys, values = self.keys_values(x)
            if cache is not None:
                keys, values = cache.append(keys, values)  # (b, nh, start + T, hd)
        else:
            keys, values = memory_kv
        context, weights = attend(queries, keys, values, start=start if memory_kv is None else 0,
                                  scale=None if self.scale == 1.0 else self.scale, softcap=None,
                                  window=None, keep=keep, causal=causal, bias=bias,
                                  key_mask=key_mask)
        context = context.transpose(1, 2).reshape(b, t, -1)
        if record is not None:
            record["context"] = context
        return self.o(context), weights


class Layer(nn.Module):
    """An encoder layer (self-attention, MLP) or a decoder layer (self-attention, cross-
    attention, MLP); each part ``x + f(norm(x))`` (pre-norm, T5) or ``norm(x + f(x))``
    (post-norm, BART and Marian)."""

    def __init__(self, spec: Seq2SeqSpec, decoder: bool):
        super().__init__()
        self.pre_norm = spec.pre_norm
        self.self_norm, self.self_attn = _norm(spec), Attention(spec)
        if decoder:
            self.cross_norm, self.cross_attn = _norm(spec), Attention(spec)
        self.mlp_norm, self.mlp = _norm(spec), MLP(spec)

    def _part(self, x, norm, f, record: dict | None = None):
        """``record``, when given, receives ``input`` (x), ``out`` (what ``f`` returns)
        and ``norm_in`` (what ``norm`` reads: x pre-norm, x + out post-norm)."""
        if self.pre_norm:
            out, weights = f(norm(x))
            if record is not None:
                record.update(input=x, out=out, norm_in=x)
            return x + out, weights
        out, weights = f(x)
        summed = x + out
        if record is not None:
            record.update(input=x, out=out, norm_in=summed)
        return norm(summed), weights

    def forward(self, x, *, causal: bool, bias=None, cache=None, memory_kv=None,
                keep_self: bool = True, keep_cross: bool = True, self_mask=None,
                memory_mask=None, record: dict | None = None):
        """``x (b, T, d)`` -> ``(x, self weights, cross weights or None)``. ``self_mask``,
        ``memory_mask``: the padding keys of the self- and cross-attention, ``(b, Tk)``.
        ``record``, when given, receives ``self``, ``cross`` and ``mlp``: each part's
        ``input``, ``out``, ``norm_in`` (see ``_part``) and, for the attentions, the heads'
        ``context``."""
        parts = {k: {} for k in ("self", "cross", "mlp")} if record is not None else {}
        x, self_weights = self._part(x, self.self_norm, lambda h: self.self_attn(
            h, causal=causal, bias=bias, cache=cache, keep=keep_self, key_mask=self_mask,
            record=parts.get("self")), parts.get("self"))
        cross_weights = None
        if memory_kv is not None:
            x, cross_weights = self._part(x, self.cross_norm, lambda h: self.cross_attn(
                h, causal=False, memory_kv=memory_kv, keep=keep_cross, key_mask=memory_mask,
                record=parts.get("cross")), parts.get("cross"))
        x, _ = self._part(x, self.mlp_norm, lambda h: (self.mlp(h), None), parts.get("mlp"))
        if record is not None:
            record.update({k: v for k, v in parts.items() if v})
        return x, self_weights, cross_weights


def _module(cls, tensors: dict[str, torch.Tensor], *args) -> nn.Module:
    """``cls(*args)`` with ``tensors`` as its parameters (views, not copies), built on the
    meta device: no random initialisation to overwrite."""
    with torch.device("meta"):
        module = cls(*args)
    expected = {n for n, _ in module.named_parameters()}
    if missing := sorted(expected - set(tensors)):
        raise ValueError(f"the weight map lacks {', '.join(missing)}")
    for name, tensor in tensors.items():
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, leaf,
                nn.Parameter(tensor, requires_grad=False))
    return module.eval()


class Memory:
    """What the decoder reads of the encoder: its output ``(1, S, d)`` and each decoder
    layer's cross-attention keys and values, computed (and the decoder read) when first
    needed, then kept: a generation's every step reuses them."""

    def __init__(self, hidden: torch.Tensor, decoder_layers: Callable[[], list[Layer]],
                 key_mask: torch.Tensor | None = None):
        self.hidden, self._decoder_layers, self._kv = hidden, decoder_layers, None
        self.key_mask = key_mask  # (b, S): a padded batch's padding, hidden from cross
        self.final = hidden  # (b, S, d): the encoder's last stream, before a final norm

    @property
    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._kv is None:
            with torch.inference_mode():
                self._kv = [layer.cross_attn.keys_values(self.hidden)
                            for layer in self._decoder_layers()]
        return self._kv

    @property
    def length(self) -> int:
        return self.hidden.shape[1]

    def repeat(self, n: int) -> Memory:
        """The same memory for a batch of ``n`` decoders (a beam search's beams)."""
        wide = Memory(self.hidden.expand(n, -1, -1), self._decoder_layers)
        wide._kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.kv]
        return wide


class EncoderDecoder:
    """The model of a ``Checkpoint`` whose spec is a ``Seq2SeqSpec``: ``encode``, then
    ``decode`` (teacher forcing, or step by step with a ``new_cache``). Layers are read
    from the checkpoint the first time they run."""

    is_seq2seq = True

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu"):
        self.checkpoint, self.spec = checkpoint, checkpoint.spec
        self.tokenizer = checkpoint.tokenizer
        self.device = torch.device(device)
        self._stacks: dict[str, list[Layer]] = {}
        self._parts: dict[str, object] = {}

    # -- the interface the commands share with the decoder-only Transformer --------------
    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def n_decoder_layers(self) -> int:
        return self.spec.n_decoder_layers

    @property
    def n_heads(self) -> int:
        return self.spec.n_heads

    @property
    def context_length(self) -> int | None:
        return self.spec.context_length

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def can_predict(self) -> bool:
        return True

    def describe(self) -> dict:
        return self.checkpoint.describe()

    def attn_scale(self, layer: int) -> float:
        return self.spec.scale

    # -- parts, read once -----------------------------------------------------------------
    def stack(self, name: str) -> list[Layer]:
        """The layers of ``name`` ("encoder" or "decoder"), read whole."""
        if name not in self._stacks:
            weights, count = self.checkpoint.weights, (
                self.spec.n_layers if name == "encoder" else self.spec.n_decoder_layers)
            self._stacks[name] = [
                _module(Layer, weights.layer(name, i), self.spec, name == "decoder").to(self.device)
                for i in range(count)]
        return self._stacks[name]

    def _part(self, name: str):
        """A norm (``*_final_norm``, ``*_embed_norm``) as a module, or a tensor
        (``*_relative``, ``*_positions``, ``logits_bias``, ``head``), or None."""
        if name not in self._parts:
            weights = self.checkpoint.weights
            found = weights.unembedding() if name == "head" else weights.optional(name)
            if isinstance(found, dict):
                found = _module(_norm_module, found, self.spec).to(self.device)
            elif found is not None:
                found = found.to(self.device)
            self._parts[name] = found
        return self._parts[name]

    def relative_bias(self, stack: str):
        """T5's relative position bias of ``stack`` as the engine's ``bias`` callable
        (None for a model without it): buckets of key - query, bidirectional in the
        encoder, causal in the decoder."""
        table = self._part(f"{stack}_relative")  # (buckets, nh)
        if table is None:
            return None
        spec, last = self.spec, {}

        def bias(q_lo: int, q_hi: int, k_lo: int, k_hi: int) -> torch.Tensor:
            """Every layer of a stack asks for the same cells: the last answer is kept."""
            if last.get("cells") != (q_lo, q_hi, k_lo, k_hi):
                queries = torch.arange(q_lo, q_hi, device=table.device)[:, None]
                keys = torch.arange(k_lo, k_hi, device=table.device)[None, :]
                buckets = relative_buckets(keys - queries, stack == "encoder",
                                           spec.relative_buckets, spec.relative_max_distance)
                last["cells"] = (q_lo, q_hi, k_lo, k_hi)
                last["bias"] = table[buckets].permute(2, 0, 1)  # (R, K, nh) -> (nh, R, K)
            return last["bias"]

        return bias

    def embed_parts(self, token_ids: torch.Tensor, stack: str, start: int = 0):
        """The terms ``embed`` adds, in its order: ``[("embed", token rows (scaled)),
        ("pos", positions)]`` ``(1, T, d)`` each (no ``pos`` for T5), and the norm over
        their sum (BART's ``layernorm_embedding``) or None."""
        spec, n = self.spec, token_ids.shape[1]
        which = "decoder_embed" if stack == "decoder" else "embed"
        x = self.checkpoint.weights.token_rows(token_ids, which).to(self.device)
        if spec.embed_scale != 1.0:
            x = x * spec.embed_scale
        parts = [("embed", x)]
        if spec.positions == "learned":  # BART: the table's rows start 2 positions in
            parts.append(("pos", self._part(f"{stack}_positions")[start + 2:start + 2 + n][None]))
        elif spec.positions == "sinusoidal":
            parts.append(("pos", self._sinusoids(start + n)[start:start + n][None]))
        return parts, self._part(f"{stack}_embed_norm")

    def embed(self, token_ids: torch.Tensor, stack: str, start: int = 0) -> torch.Tensor:
        """``token_ids (1, T)`` at positions ``start ..`` -> what enters the first layer
        ``(1, T, d)``: token rows (scaled), positions (learned or sinusoidal), a norm."""
        parts, norm = self.embed_parts(token_ids, stack, start)
        x = parts[0][1]
        for _, part in parts[1:]:
            x = x + part
        return norm(x) if norm is not None else x

    def _sinusoids(self, n: int) -> torch.Tensor:
        table = self._parts.get("sinusoids")
        if table is None or table.shape[0] < n:
            size = max(n, self.spec.context_length or n)
            table = self._parts["sinusoids"] = sinusoidal_table(size, self.spec.d_model).to(
                self.device)
        return table

    # -- running --------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, token_ids: torch.Tensor, keep=(), lengths: torch.Tensor | None = None,
               records: list | None = None) -> tuple[Memory, dict]:
        """``token_ids (B, S)`` -> ``(Memory, {layer: weights (B, H, S, S)})`` for the
        layers in ``keep``. ``lengths (B,)``: the real tokens of each row of a right-padded
        batch; the padding keys are hidden from the encoder and, through the memory, from
        the cross-attention. ``records``, when given, receives each layer's record (see
        ``Layer.forward``); ``Memory.final`` is then the stream before the final norm."""
        x = self.embed(token_ids, "encoder")
        bias = self.relative_bias("encoder")
        mask = None if lengths is None else padding_mask(lengths, token_ids.shape[1], self.device)
        kept, wanted = {}, set(keep)
        for i, layer in enumerate(self.stack("encoder")):
            record = {} if records is not None else None
            x, weights, _ = layer(x, causal=False, bias=bias, keep_self=i in wanted,
                                  self_mask=mask, record=record)
            if records is not None:
                records.append(record)
            if i in wanted:
                kept[i] = weights
        norm = self._part("encoder_final_norm")
        memory = Memory(norm(x) if norm is not None else x, lambda: self.stack("decoder"), mask)
        memory.final = x
        return memory, kept

    def encoder_final_norm(self):
        """The norm after the encoder's last layer (T5), or None."""
        return self._part("encoder_final_norm")

    def new_cache(self, capacity: int) -> list[LayerCache]:
        """The decoder's self-attention keys and values, for ``decode`` step by step."""
        return [LayerCache(capacity) for _ in range(self.spec.n_decoder_layers)]

    @torch.inference_mode()
    def decode(self, token_ids: torch.Tensor, memory: Memory, keep=(), cache=None,
               last_only: bool = False, logits: bool = True, records: list | None = None):
        """``token_ids (B, T)`` (after the ``cache``'s positions, when given) over the
        encoder's ``memory`` -> ``(logits (B, T or 1, V), {layer: self weights (B, H, T,
        start + T)}, {layer: cross weights (B, H, T, S)})`` for the layers in ``keep``.
        Rows may be right-padded: the causal mask hides the padding after each position.
        ``logits=False``: only the attention is wanted (the head is not read; None).
        ``records``: as ``encode``'s."""
        start = cache[0].length if cache is not None else 0
        x = self.embed(token_ids, "decoder", start)
        bias = self.relative_bias("decoder")
        own, cross, wanted = {}, {}, set(keep)
        for i, layer in enumerate(self.stack("decoder")):
            record = {} if records is not None else None
            x, self_weights, cross_weights = layer(
                x, causal=True, bias=bias, cache=None if cache is None else cache[i],
                memory_kv=memory.kv[i], keep_self=i in wanted, keep_cross=i in wanted,
                memory_mask=memory.key_mask, record=record)
            if records is not None:
                records.append(record)
            if i in wanted:
                own[i], cross[i] = self_weights, cross_weights
        if not logits:
            return None, own, cross
        return self.logits(x[:, -1:] if last_only else x), own, cross

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states ``(1, T, d)`` -> ``(1, T, V)``."""
        norm = self._part("decoder_final_norm")
        if norm is not None:
            x = norm(x)
        if self.spec.output_scale != 1.0:
            x = x * self.spec.output_scale
        logits = x @ self._part("head").T
        bias = self._part("logits_bias")
        return logits + bias if bias is not None else logits


def _norm_module(spec: Seq2SeqSpec) -> nn.Module:
    """A stack-level norm (T5's final norm, BART's embedding norm) with the tensors
    ``weight`` (and ``bias``) at its top."""
    return _norm(spec)
