"""Encoders: ``bert``, ``roberta``, ``distilbert`` and ``modernbert`` in Hugging Face's layout
(``config.json`` + safetensors, or ``pytorch_model.bin``), read into the one ``ModelSpec``
with ``causal=False``: every query sees every key.

- ``bert`` / ``roberta``: learned absolute positions (RoBERTa's start after its padding id:
  ``padding_idx + 1``, so 514 rows hold 512 positions), token type embeddings (BERT's two
  segments; RoBERTa's one), a LayerNorm over the embeddings, post-norm blocks
  (``LayerNorm(x + attn(x))``, then ``LayerNorm(x + mlp(x))``), biases everywhere;
- ``distilbert``: the same without token types (``q_lin`` … ``out_lin``, ``sa_layer_norm``,
  ``ffn.lin1``/``lin2``, ``output_layer_norm``);
- ``modernbert``: pre-norm (the first layer's attention reads the embeddings themselves),
  LayerNorms without biases, a fused ``Wqkv``, GeGLU (``Wi`` holds the activated half, then
  the gate), no biases by default, and RoPE in every layer with two thetas: global layers
  (every ``global_attn_every_n_layers``-th, or ``layer_types``' ``full_attention``) and local
  ones, which see the keys within ``local_attention // 2`` positions on either side.

Prefixes of the task heads (``bert.``, ``roberta.``, ``distilbert.``, ``model.``) are
dropped, and so are the heads themselves; the old ``LayerNorm.gamma``/``beta`` names are
read as ``weight``/``bias``. What attnviz does not compute (relative position embeddings,
another RoPE, another activation) is refused by name.
"""

from __future__ import annotations

import re

import torch

from attnviz.core.errors import InputError
from attnviz.models.activations import ACTIVATIONS
from attnviz.models.checkpoint import Checkpoint, WeightMap
from attnviz.models.hf import (
    check_layer_types,
    check_shapes,
    count_layers,
    field,
    hf_checkpoint,
    open_source,
    stored_dtype,
)
from attnviz.models.resolve import Located
from attnviz.models.sources import TensorSource
from attnviz.models.spec import LayerSpec, ModelSpec, RopeSpec

ENCODERS = ("bert", "roberta", "distilbert", "modernbert")
_PREFIXES = ("bert.", "roberta.", "distilbert.", "model.")
_HEADS = ("cls.", "lm_head.", "head.", "decoder.", "pooler.", "classifier.", "qa_outputs.",
          "vocab_", "pre_classifier.", "dense.")


def _rename(name: str) -> str | None:
    """The file's name without a task model's prefix (gamma/beta as weight/bias); None for
    the task heads, which attnviz never reads."""
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.startswith(_HEADS) or ".pooler." in name:
        return None
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$",
                                                                     "LayerNorm.bias", name))


def read(located: Located, raw: dict, *, n_heads: int | None = None, tokenizer=None) -> Checkpoint:
    """Check the config and tensor headers of an encoder and describe it."""
    where = located.config
    family = raw["model_type"]
    source = open_source(located, _rename)
    if family == "modernbert":
        spec, weights = _modernbert(raw, where, source)
    else:
        spec, weights = _bert_like(raw, family, where, source)
    found = count_layers(source, weights.layer_prefix)
    if found != spec.n_layers:
        raise InputError(f"{where} says {spec.n_layers} layers but the weights hold {found}")
    for i in range(spec.n_layers):
        check_shapes(source, {weights.key(i, ours): shape for ours, shape in weights.shapes(i).items()},
                     located.origin)
    if n_heads is not None and n_heads != spec.n_heads:
        raise InputError(f"--heads {n_heads}: {where.name} says {spec.n_heads} heads")
    checkpoint = hf_checkpoint(located, spec, weights, tokenizer)
    del checkpoint.described["n_kv_heads"]  # every head its own keys: no kv_head column
    return checkpoint


def _activation(raw: dict, key: str, where, default: str) -> str:
    activation = raw.get(key) or default
    if activation not in ACTIVATIONS:
        raise InputError(f"{where}: {key} {activation!r} is not supported "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    return activation


def _bert_like(raw: dict, family: str, where, source: TensorSource):
    distil = family == "distilbert"
    if not distil and raw.get("position_embedding_type", "absolute") != "absolute":
        raise InputError(f"{where}: position_embedding_type {raw['position_embedding_type']!r} "
                         "is not supported (attnviz computes absolute positions)")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise InputError(f"{where}: a {family} used as a decoder (is_decoder / add_cross_attention)"
                         " is not supported; attnviz reads encoders")
    names = {"d": "dim", "heads": "n_heads", "layers": "n_layers", "mlp": "hidden_dim",
             "act": "activation"} if distil else {
        "d": "hidden_size", "heads": "num_attention_heads", "layers": "num_hidden_layers",
        "mlp": "intermediate_size", "act": "hidden_act"}
    d = field(raw, names["d"], where, default=768)
    heads = field(raw, names["heads"], where, default=12)
    if d % heads:
        raise InputError(f"{where}: {names['heads']}={heads} does not divide {names['d']}={d}")
    n_layers = field(raw, names["layers"], where, default=6 if distil else 12)
    eps = 1e-12 if distil else field(raw, "layer_norm_eps", where, float, default=1e-12)
    rows = field(raw, "max_position_embeddings", where, default=512)
    # RoBERTa numbers positions from padding_idx + 1: its table's first rows are never used
    offset = field(raw, "pad_token_id", where, default=1, minimum=0) + 1 if family == "roberta" else 0
    if "embeddings.word_embeddings.weight" not in source:
        raise InputError(f"{located_name(where)}: tensor embeddings.word_embeddings.weight is "
                         f"missing; not a {family} checkpoint?")
    vocab, d_file = source.shape("embeddings.word_embeddings.weight")
    if d_file != d:
        raise InputError(f"{where} says {names['d']}={d} but the weights have {d_file}")
    head_dim = d // heads
    spec = ModelSpec(
        family=family, n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=heads,
        head_dim=head_dim, vocab_size=vocab, context_length=rows - offset,
        mlp_width=field(raw, names["mlp"], where, default=4 * d), positions="learned",
        norm="layernorm", norm_eps=eps, activation=_activation(raw, names["act"], where, "gelu"),
        qkv_bias=True, out_bias=True, mlp_bias=True, tied_embeddings=True,
        dtype=stored_dtype(source, "embeddings.word_embeddings.weight", raw),
        causal=False, post_norm=True,
        layers=tuple(LayerSpec(scale=head_dim**-0.5) for _ in range(n_layers)),
        extra={"position_offset": offset} if offset else {},
    )
    return spec, BertWeights(source, spec, distil, offset)


def located_name(where) -> str:
    return str(where.parent if where is not None else "the checkpoint")


def _modernbert(raw: dict, where, source: TensorSource):
    d = field(raw, "hidden_size", where, default=768)
    heads = field(raw, "num_attention_heads", where, default=12)
    if d % heads:
        raise InputError(f"{where}: num_attention_heads={heads} does not divide hidden_size={d}")
    n_layers = field(raw, "num_hidden_layers", where, default=22)
    head_dim = d // heads
    local = field(raw, "local_attention", where, default=128)
    types = raw.get("layer_types")
    if types is None:
        every = field(raw, "global_attn_every_n_layers", where, default=3)
        types = ["sliding_attention" if i % every else "full_attention" for i in range(n_layers)]
    check_layer_types(types, n_layers, where)
    thetas = {"full_attention": raw.get("global_rope_theta", 160_000.0),
              "sliding_attention": raw.get("local_rope_theta", 10_000.0)}
    params = raw.get("rope_parameters") or {}
    for kind in thetas:
        given = params.get(kind) or {}
        if given.get("rope_type", "default") != "default":
            raise InputError(f"{where}: rope_type {given['rope_type']!r} is not supported for "
                             "modernbert (default RoPE only)")
        thetas[kind] = field({"rope_theta": given.get("rope_theta", thetas[kind])}, "rope_theta",
                             where, float)
    if "embeddings.tok_embeddings.weight" not in source:
        raise InputError(f"{located_name(where)}: tensor embeddings.tok_embeddings.weight is "
                         "missing; not a modernbert checkpoint?")
    vocab, d_file = source.shape("embeddings.tok_embeddings.weight")
    if d_file != d:
        raise InputError(f"{where} says hidden_size={d} but the weights have {d_file}")
    # a local layer sees |j - i| <= local_attention // 2: the engine hides |j - i| >= W
    window = local // 2 + 1
    spec = ModelSpec(
        family="modernbert", n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=heads,
        head_dim=head_dim, vocab_size=vocab,
        context_length=field(raw, "max_position_embeddings", where, default=8192),
        mlp_width=field(raw, "intermediate_size", where, default=1152), positions="rope",
        norm="layernorm", norm_eps=field(raw, "norm_eps", where, float, default=1e-5),
        activation=_activation(raw, "hidden_activation", where, "gelu"), gated_mlp=True,
        qkv_bias=field(raw, "attention_bias", where, bool, default=False, minimum=None),
        out_bias=field(raw, "attention_bias", where, bool, default=False, minimum=None),
        mlp_bias=field(raw, "mlp_bias", where, bool, default=False, minimum=None),
        norm_bias=field(raw, "norm_bias", where, bool, default=False, minimum=None),
        tied_embeddings=True, dtype=stored_dtype(source, "embeddings.tok_embeddings.weight", raw),
        causal=False,
        layers=tuple(LayerSpec(scale=head_dim**-0.5, rope=RopeSpec(thetas[t], head_dim),
                               window=window if t == "sliding_attention" else None,
                               attn_norm=i > 0) for i, t in enumerate(types)),
        extra={"local_attention": local, "layer_types": list(types)},
    )
    return spec, ModernBertWeights(source, spec)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class BertWeights(WeightMap):
    """BERT's and RoBERTa's ``encoder.layer.N.attention.self.query`` … (DistilBERT's
    ``transformer.layer.N.attention.q_lin`` …) -> the forward's names; the embeddings: words
    + positions (+ token types) through their LayerNorm."""

    _BERT = {
        "attn.W_query": "attention.self.query", "attn.W_key": "attention.self.key",
        "attn.W_value": "attention.self.value", "attn.out_proj": "attention.output.dense",
        "norm1": "attention.output.LayerNorm", "mlp.fc": "intermediate.dense",
        "mlp.proj": "output.dense", "norm2": "output.LayerNorm",
    }
    _DISTIL = {
        "attn.W_query": "attention.q_lin", "attn.W_key": "attention.k_lin",
        "attn.W_value": "attention.v_lin", "attn.out_proj": "attention.out_lin",
        "norm1": "sa_layer_norm", "mlp.fc": "ffn.lin1", "mlp.proj": "ffn.lin2",
        "norm2": "output_layer_norm",
    }

    def __init__(self, tensors: TensorSource, spec: ModelSpec, distil: bool, offset: int):
        super().__init__(tensors)
        self.spec, self.offset = spec, offset
        self.layer_prefix = "transformer.layer." if distil else "encoder.layer."
        self.names = self._DISTIL if distil else self._BERT
        self.types = "embeddings.token_type_embeddings.weight"
        self.has_types = self.types in tensors

    def key(self, layer: int, ours: str) -> str:
        module, _, kind = ours.rpartition(".")
        return f"{self.layer_prefix}{layer}.{self.names[module]}.{kind}"

    def shapes(self, layer: int) -> dict[str, tuple]:
        d, f = self.spec.d_model, self.spec.mlp_width
        out = {f"attn.W_{n}.{k}": (d, d) if k == "weight" else (d,)
               for n in ("query", "key", "value") for k in ("weight", "bias")}
        out |= {"attn.out_proj.weight": (d, d), "attn.out_proj.bias": (d,),
                "norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
                "mlp.fc.weight": (f, d), "mlp.fc.bias": (f,), "mlp.proj.weight": (d, f),
                "mlp.proj.bias": (d,)}
        return out

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        return {ours: self.tensors.get(self.key(layer, ours)) for ours in self.shapes(layer)
                if mlp or ours.startswith(("norm1.", "attn."))}

    def positions(self, start: int, n: int) -> torch.Tensor:
        rows = list(range(self.offset + start, self.offset + start + n))
        return self.tensors.rows("embeddings.position_embeddings.weight", rows)

    def embed_parts(self, token_ids: torch.Tensor, start: int = 0,
                    token_types: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor]]:
        """What the embedding LayerNorm reads, as the terms ``embed`` adds in this order:
        ``[("embed", words), ("pos", positions), ("type", token types)]``, ``(B, T, d)``
        each (no ``type`` without a token type table)."""
        b, t = token_ids.shape
        words = self.tensors.rows("embeddings.word_embeddings.weight",
                                  token_ids.reshape(-1).tolist()).reshape(b, t, -1)
        parts = [("embed", words), ("pos", self.positions(start, t).expand(b, t, -1))]
        if self.has_types:  # BERT: the segment of each token (0 without a pair); RoBERTa's one row
            types = (torch.zeros_like(token_ids) if token_types is None or
                     self.tensors.shape(self.types)[0] == 1 else token_types)
            parts.append(("type", self.tensors.rows(self.types, types.reshape(-1).tolist())
                          .reshape(b, t, -1)))
        return parts

    def embed_norm(self) -> dict[str, torch.Tensor]:
        """The embedding LayerNorm's ``weight`` and ``bias``."""
        return {"weight": self.tensors.get("embeddings.LayerNorm.weight"),
                "bias": self.tensors.get("embeddings.LayerNorm.bias")}

    def embed(self, token_ids: torch.Tensor, start: int = 0,
              token_types: torch.Tensor | None = None) -> torch.Tensor:
        parts = self.embed_parts(token_ids, start, token_types)
        x = parts[0][1]
        for _, part in parts[1:]:
            x = x + part  # (B, T, d)
        norm = self.embed_norm()
        return _layer_norm(x, norm["weight"], norm["bias"], self.spec.norm_eps)


class ModernBertWeights(WeightMap):
    """ModernBERT's ``layers.N.attn.Wqkv`` (split into the query, key and value rows),
    ``attn.Wo``, ``attn_norm`` (none in layer 0), ``mlp_norm``, ``mlp.Wi`` (the activated
    half, then the gate) and ``mlp.Wo``; the embeddings through their LayerNorm."""

    layer_prefix = "layers."

    def __init__(self, tensors: TensorSource, spec: ModelSpec):
        super().__init__(tensors)
        self.spec = spec

    def _files(self, layer: int) -> dict[str, tuple]:
        """The file's tensors of a layer and their shapes."""
        s, d, f = self.spec, self.spec.d_model, self.spec.mlp_width
        files = {"attn.Wqkv.weight": (3 * d, d), "attn.Wo.weight": (d, d),
                 "mlp_norm.weight": (d,), "mlp.Wi.weight": (2 * f, d), "mlp.Wo.weight": (d, f)}
        if layer > 0:
            files["attn_norm.weight"] = (d,)
        if s.norm_bias:
            files |= {n.replace("weight", "bias"): shape for n, shape in files.items()
                      if "norm" in n}
        if s.qkv_bias:
            files |= {"attn.Wqkv.bias": (3 * d,), "attn.Wo.bias": (d,)}
        if s.mlp_bias:
            files |= {"mlp.Wi.bias": (2 * f,), "mlp.Wo.bias": (d,)}
        return files

    def key(self, layer: int, name: str) -> str:
        return f"layers.{layer}.{name}"

    def shapes(self, layer: int) -> dict[str, tuple]:
        return self._files(layer)

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        d, f = self.spec.d_model, self.spec.mlp_width
        files = {name: self.tensors.get(self.key(layer, name)) for name in self._files(layer)}
        out = {}
        for kind in ("weight", "bias"):
            qkv = files.get(f"attn.Wqkv.{kind}")
            if qkv is not None:  # rows: queries, keys, values
                out |= {f"attn.W_{n}.{kind}": qkv[i * d:(i + 1) * d]
                        for i, n in enumerate(("query", "key", "value"))}
            renamed = {"attn.Wo": "attn.out_proj", "attn_norm": "norm1", "mlp_norm": "norm2",
                       "mlp.Wo": "mlp.down"}
            out |= {f"{ours}.{kind}": files[f"{theirs}.{kind}"] for theirs, ours in renamed.items()
                    if f"{theirs}.{kind}" in files}
            wi = files.get(f"mlp.Wi.{kind}")
            if wi is not None:  # act(Wi[:f] x) * (Wi[f:] x)
                out |= {f"mlp.gate.{kind}": wi[:f], f"mlp.up.{kind}": wi[f:]}
        return {k: v for k, v in out.items() if mlp or k.startswith(("norm1.", "attn."))}

    def embed(self, token_ids: torch.Tensor, start: int = 0,
              token_types: torch.Tensor | None = None) -> torch.Tensor:
        b, t = token_ids.shape
        words = self.tensors.rows("embeddings.tok_embeddings.weight",
                                  token_ids.reshape(-1).tolist()).reshape(b, t, -1)
        bias = self.tensors.get("embeddings.norm.bias") if self.spec.norm_bias else None
        return _layer_norm(words, self.tensors.get("embeddings.norm.weight"), bias,
                           self.spec.norm_eps)
