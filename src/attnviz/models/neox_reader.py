"""GPT-NeoX checkpoints (``model_type`` ``gpt_neox``): Pythia and its training revisions
(``EleutherAI/pythia-160m@step3000``), GPT-NeoX-20B.

What differs from Llama: LayerNorm with biases; RoPE on the first ``rotary_pct`` of each
head's dimensions only (Pythia: 16 of 64, rotate-half within them, the rest passed
through), base ``rotary_emb_base``; the fused ``query_key_value`` is laid out per head
(``[heads, 3·head_dim]``: each head's q | k | v side by side, not GPT-2's q_all | k_all |
v_all); biases on the projections; a plain GELU MLP; the parallel residual
``x + attn(ln1 x) + mlp(ln2 x)`` when ``use_parallel_residual``. Mask and ``inv_freq``
buffers some files carry are ignored (recomputed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnviz.core.errors import InputError
from attnviz.models.activations import ACTIVATIONS
from attnviz.models.checkpoint import Checkpoint, WeightMap
from attnviz.models.hf import (
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


def _rename(name: str) -> str | None:
    name = name.removeprefix("gpt_neox.")
    if name.endswith((".attention.bias", ".attention.masked_bias")) or "rotary_emb." in name:
        return None
    return name


def _rope_fields(raw: dict, where: Path) -> tuple[float, float]:
    params = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    scaling = raw.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise InputError(f"{where}: rope_type {kind!r} is not implemented for gpt_neox")
    base = params.get("rope_theta", raw.get("rotary_emb_base", raw.get("rope_theta", 10000.0)))
    pct = params.get("partial_rotary_factor", raw.get("rotary_pct", 0.25))
    base = field({"rotary_emb_base": base}, "rotary_emb_base", where, float)
    if not isinstance(pct, (int, float)) or not 0 < pct <= 1:
        raise InputError(f"{where}: rotary_pct must be in (0, 1], got {pct!r}")
    return base, float(pct)


def read(located: Located, raw: dict, *, n_heads: int | None = None, tokenizer=None) -> Checkpoint:
    """Check the config and tensor headers of a GPT-NeoX checkpoint and describe it."""
    where, origin = located.config, located.origin
    d = field(raw, "hidden_size", where)
    heads = field(raw, "num_attention_heads", where)
    if d % heads:
        raise InputError(f"{where}: num_attention_heads={heads} does not divide hidden_size={d}")
    head_dim = d // heads
    n_layers = field(raw, "num_hidden_layers", where)
    activation = raw.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise InputError(f"{where}: hidden_act {activation!r} is not supported "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    base, pct = _rope_fields(raw, where)
    rotary_dim = int(head_dim * pct)
    if rotary_dim < 2 or rotary_dim % 2:
        raise InputError(f"{where}: rotary_pct {pct} gives {rotary_dim} rotated dimensions of "
                         f"{head_dim}; RoPE needs an even number")
    bias = field(raw, "attention_bias", where, bool, default=True, minimum=None)
    source = open_source(located, _rename)
    if "embed_in.weight" not in source:
        raise InputError(f"{origin}: tensor gpt_neox.embed_in.weight is missing; not a "
                         "gpt_neox checkpoint?")
    vocab, d_file = source.shape("embed_in.weight")
    if d_file != d:
        raise InputError(f"{where} says hidden_size={d} but the weights have {d_file}")
    found = count_layers(source, "layers.")
    if found != n_layers:
        raise InputError(f"{where} says num_hidden_layers={n_layers} but the weights hold "
                         f"{found} layers")
    width = field(raw, "intermediate_size", where, default=4 * d)
    rope = RopeSpec(base, rotary_dim)
    spec = ModelSpec(
        family="gpt_neox", n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=heads,
        head_dim=head_dim, vocab_size=vocab,
        context_length=field(raw, "max_position_embeddings", where, default=2048),
        mlp_width=width, positions="rope", norm="layernorm",
        norm_eps=field(raw, "layer_norm_eps", where, float, default=1e-5),
        activation=activation, qkv_bias=bias, out_bias=bias, mlp_bias=True,
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        parallel_residual=field(raw, "use_parallel_residual", where, bool, default=True,
                                minimum=None),
        dtype=stored_dtype(source, "embed_in.weight", raw),
        layers=tuple(LayerSpec(scale=head_dim**-0.5, rope=rope) for _ in range(n_layers)),
    )
    weights = NeoXWeights(source, spec)
    for i in range(n_layers):
        check_shapes(source, weights.shapes(i), origin, lambda key: "gpt_neox." + key)
    return hf_checkpoint(located, spec, weights, tokenizer)


class NeoXWeights(WeightMap):
    """``layers.N.attention.query_key_value`` (per head q | k | v) … -> the forward's names."""

    def __init__(self, tensors: TensorSource, spec: ModelSpec):
        super().__init__(tensors)
        self.spec = spec

    def shapes(self, layer: int) -> dict[str, tuple]:
        d, f, p = self.spec.d_model, self.spec.mlp_width, f"layers.{layer}."
        shapes = {p + "input_layernorm.weight": (d,), p + "input_layernorm.bias": (d,),
                  p + "post_attention_layernorm.weight": (d,),
                  p + "post_attention_layernorm.bias": (d,),
                  p + "attention.query_key_value.weight": (3 * d, d),
                  p + "attention.dense.weight": (d, d),
                  p + "mlp.dense_h_to_4h.weight": (f, d), p + "mlp.dense_h_to_4h.bias": (f,),
                  p + "mlp.dense_4h_to_h.weight": (d, f), p + "mlp.dense_4h_to_h.bias": (d,)}
        if self.spec.qkv_bias:
            shapes |= {p + "attention.query_key_value.bias": (3 * d,),
                       p + "attention.dense.bias": (d,)}
        return shapes

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        get, p = self.tensors.get, f"layers.{layer}."
        heads, hd, d = self.spec.n_heads, self.spec.head_dim, self.spec.d_model
        # (3d, d) rows: head 0's q, k, v, then head 1's … -> (heads, 3, hd, d)
        qkv = get(p + "attention.query_key_value.weight").view(heads, 3, hd, d)
        out = {"norm1.weight": get(p + "input_layernorm.weight"),
               "norm1.bias": get(p + "input_layernorm.bias"),
               "attn.out_proj.weight": get(p + "attention.dense.weight")}
        bias = get(p + "attention.query_key_value.bias").view(heads, 3, hd) if self.spec.qkv_bias else None
        for i, name in enumerate(("W_query", "W_key", "W_value")):
            out[f"attn.{name}.weight"] = qkv[:, i].reshape(heads * hd, d)
            if bias is not None:
                out[f"attn.{name}.bias"] = bias[:, i].reshape(heads * hd)
        if self.spec.out_bias:
            out["attn.out_proj.bias"] = get(p + "attention.dense.bias")
        if mlp:
            out |= {"norm2.weight": get(p + "post_attention_layernorm.weight"),
                    "norm2.bias": get(p + "post_attention_layernorm.bias"),
                    "mlp.fc.weight": get(p + "mlp.dense_h_to_4h.weight"),
                    "mlp.fc.bias": get(p + "mlp.dense_h_to_4h.bias"),
                    "mlp.proj.weight": get(p + "mlp.dense_4h_to_h.weight"),
                    "mlp.proj.bias": get(p + "mlp.dense_4h_to_h.bias")}
        return out

    def embed(self, token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        b, t = token_ids.shape
        return self.tensors.rows("embed_in.weight", token_ids.reshape(-1).tolist()).reshape(b, t, -1)

    def final_norm(self) -> dict[str, torch.Tensor] | None:
        if "final_layer_norm.weight" not in self.tensors:
            return None
        return {"weight": self.tensors.get("final_layer_norm.weight"),
                "bias": self.tensors.get("final_layer_norm.bias")}

    def unembedding(self) -> torch.Tensor | None:
        return self.tensors.get("embed_out.weight") if "embed_out.weight" in self.tensors else None
