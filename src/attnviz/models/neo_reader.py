"""GPT-Neo checkpoints (``model_type`` ``gpt_neo``): EleutherAI's GPT-Neo 125M … 2.7B.

GPT-2's architecture with three differences that show in the weights: the scores are not
divided by √d (``scale`` 1), q/k/v are separate ``nn.Linear`` without biases (stored
(out, in)), and the "local" layers of ``attention_types`` attend within ``window_size``
keys (256), itself included. GPT-2's tokenizer: the checkpoint's tokenizer.json when it
has one, else the offline GPT-2 encoding (the same ids).
"""

from __future__ import annotations

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
from attnviz.models.spec import LayerSpec, ModelSpec
from attnviz.text.tokenization import gpt2_tokenizer


def _rename(name: str) -> str | None:
    name = name.removeprefix("transformer.")
    if name.endswith((".attn.attention.bias", ".attn.attention.masked_bias")) or name.startswith(
            "lm_head."):
        return None
    return name


def attention_layers(raw: dict, n_layers: int, where) -> list[str]:
    """``global``/``local`` per layer, expanded from ``attention_types`` as transformers
    does (``[[["global", "local"], 12]]`` -> 24 layers alternating)."""
    types = raw.get("attention_types") or [[["global", "local"], 12]]
    try:
        layers = [kind for kinds, repeat in types for _ in range(repeat) for kind in kinds]
    except (TypeError, ValueError):
        raise InputError(f"{where}: attention_types must look like [[[\"global\", \"local\"], 12]]"
                         ) from None
    if len(layers) != n_layers:
        raise InputError(f"{where}: attention_types give {len(layers)} layers, num_layers is {n_layers}")
    unknown = sorted(set(layers) - {"global", "local"})
    if unknown:
        raise InputError(f"{where}: attention type(s) {', '.join(map(repr, unknown))} not supported")
    return layers


def read(located: Located, raw: dict, *, n_heads: int | None = None, tokenizer=None) -> Checkpoint:
    """Check the config and tensor headers of a GPT-Neo checkpoint and describe it."""
    where, origin = located.config, located.origin
    d = field(raw, "hidden_size", where)
    heads = field(raw, "num_heads", where)
    if d % heads:
        raise InputError(f"{where}: num_heads={heads} does not divide hidden_size={d}")
    n_layers = field(raw, "num_layers", where)
    window = field(raw, "window_size", where, default=256)
    kinds = attention_layers(raw, n_layers, where)
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise InputError(f"{where}: activation_function {activation!r} is not supported "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    source = open_source(located, _rename)
    for key in ("wte.weight", "wpe.weight"):
        if key not in source:
            raise InputError(f"{origin}: tensor transformer.{key} is missing; not a gpt_neo checkpoint?")
    vocab, d_file = source.shape("wte.weight")
    if d_file != d:
        raise InputError(f"{where} says hidden_size={d} but the weights have {d_file}")
    found = count_layers(source, "h.")
    if found != n_layers:
        raise InputError(f"{where} says num_layers={n_layers} but the weights hold {found} layers")
    width = field(raw, "intermediate_size", where, default=4 * d)
    spec = ModelSpec(
        family="gpt_neo", n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=heads,
        head_dim=d // heads, vocab_size=vocab, context_length=source.shape("wpe.weight")[0],
        mlp_width=width, positions="learned", norm="layernorm",
        norm_eps=field(raw, "layer_norm_epsilon", where, float, default=1e-5),
        activation=activation, qkv_bias=False, out_bias=True, mlp_bias=True,
        dtype=stored_dtype(source, "wte.weight", raw),
        layers=tuple(LayerSpec(scale=1.0, window=window if kind == "local" else None)
                     for kind in kinds),
    )
    weights = NeoWeights(source, spec)
    for i in range(n_layers):
        check_shapes(source, weights.shapes(i), origin, lambda key: "transformer." + key)

    return hf_checkpoint(located, spec, weights, tokenizer, fallback=gpt2_tokenizer,
                         extra={"attention_layers": kinds})


class NeoWeights(WeightMap):
    """``h.N.attn.attention.q_proj.weight`` … (nn.Linear, (out, in)) -> the forward's names."""

    _NAMES = {"norm1": "ln_1", "norm2": "ln_2", "attn.W_query": "attn.attention.q_proj",
              "attn.W_key": "attn.attention.k_proj", "attn.W_value": "attn.attention.v_proj",
              "attn.out_proj": "attn.attention.out_proj", "mlp.fc": "mlp.c_fc",
              "mlp.proj": "mlp.c_proj"}
    _UNBIASED = ("attn.W_query", "attn.W_key", "attn.W_value")

    def __init__(self, tensors: TensorSource, spec: ModelSpec):
        super().__init__(tensors)
        self.spec = spec

    def shapes(self, layer: int) -> dict[str, tuple]:
        d, f, p = self.spec.d_model, self.spec.mlp_width, f"h.{layer}."
        weights = {"norm1": (d,), "norm2": (d,), "attn.W_query": (d, d), "attn.W_key": (d, d),
                   "attn.W_value": (d, d), "attn.out_proj": (d, d), "mlp.fc": (f, d),
                   "mlp.proj": (d, f)}
        biases = {"norm1": (d,), "norm2": (d,), "attn.out_proj": (d,), "mlp.fc": (f,), "mlp.proj": (d,)}
        return ({f"{p}{self._NAMES[k]}.weight": s for k, s in weights.items()}
                | {f"{p}{self._NAMES[k]}.bias": s for k, s in biases.items()})

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        p, out = f"h.{layer}.", {}
        for ours, theirs in self._NAMES.items():
            if not mlp and ours in ("norm2", "mlp.fc", "mlp.proj"):
                continue
            out[ours + ".weight"] = self.tensors.get(f"{p}{theirs}.weight")
            if ours not in self._UNBIASED:
                out[ours + ".bias"] = self.tensors.get(f"{p}{theirs}.bias")
        return out

    def embed(self, token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        b, t = token_ids.shape
        tokens = self.tensors.rows("wte.weight", token_ids.reshape(-1).tolist()).reshape(b, t, -1)
        return tokens + self.positions(start, t)

    def positions(self, start: int, n: int) -> torch.Tensor:
        return self.tensors.rows("wpe.weight", list(range(start, start + n)))  # (n, d)

    def final_norm(self) -> dict[str, torch.Tensor] | None:
        if "ln_f.weight" not in self.tensors:
            return None
        return {"weight": self.tensors.get("ln_f.weight"), "bias": self.tensors.get("ln_f.bias")}

    def unembedding(self) -> torch.Tensor | None:
        return self.tensors.get("wte.weight")  # GPT-Neo ties its output head to wte
