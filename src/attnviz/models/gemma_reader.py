"""Gemma 2 and Gemma 3 (``model_type`` ``gemma2``, ``gemma3_text``, and the text tower of
multimodal ``gemma3`` checkpoints: config under ``text_config``, tensors under
``model.language_model.`` or ``language_model.model.``).

What differs from Llama: the scale is ``query_pre_attn_scalar``^-½ (not head_dim's);
Gemma 2 caps the scores (``attn_logit_softcapping``: c·tanh(s/c) after scaling, before the
mask); sliding and full layers alternate (``layer_types``, or the older pattern fields) with
the window W; Gemma 3 has two RoPE bases (``rope_local_base_freq`` for sliding layers,
``rope_theta`` + ``rope_scaling`` for full ones, or transformers 5's ``rope_parameters`` per
layer type) and q/k norms; every RMSNorm is x·(1+w) (the file stores w zero-centred: 1 + w
is taken as the weight, in float32); sandwich norms (after the attention and around the
MLP); embeddings multiplied by √hidden_size; a GELU-tanh gated MLP.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnviz.core.errors import InputError
from attnviz.models.activations import ACTIVATIONS
from attnviz.models.checkpoint import Checkpoint
from attnviz.models.hf import (
    check_layer_types,
    check_shapes,
    count_layers,
    field,
    hf_checkpoint,
    open_source,
    stored_dtype,
)
from attnviz.models.llama_reader import ROPE_TYPES, LlamaWeights, refuse_unsupported
from attnviz.models.resolve import Located
from attnviz.models.spec import LayerSpec, ModelSpec, RopeSpec

_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_DEFAULTS = {
    "gemma2": {"softcap": 50.0, "pattern": 2, "theta": 10000.0, "context": 8192},
    "gemma3_text": {"softcap": None, "pattern": 6, "theta": 1_000_000.0, "context": 131072},
}


def _rename(name: str) -> str | None:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            rest = name.removeprefix(prefix)
            return None if "rotary_emb." in rest else rest
    if name.startswith("layers.") or name in ("embed_tokens.weight", "norm.weight"):
        return None if "rotary_emb." in name else name  # the bare model class (Gemma2Model)
    return None  # the vision tower, the projector, lm_head (tied)


def _rope(params: dict, where: Path, what: str, theta_default: float, head_dim: int) -> RopeSpec:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear"):
        raise InputError(f"{where}: rope_type {kind!r} ({what}) is not implemented (attnviz "
                         f"computes {', '.join(ROPE_TYPES[:2])} exactly for Gemma)")
    theta = field({"rope_theta": params.get("rope_theta", theta_default)}, "rope_theta", where, float)
    if kind == "default":
        return RopeSpec(theta, head_dim)
    return RopeSpec(theta, head_dim, ("linear", field(params, "factor", where, float)))


def _ropes(raw: dict, family: str, head_dim: int, where: Path) -> dict[str, RopeSpec]:
    """The RoPE of full and sliding layers."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        full, local = params.get("full_attention", {}), params.get("sliding_attention", {})
    else:
        full = {**(raw.get("rope_scaling") or {}), **(params or {})}
        full.setdefault("rope_theta", raw.get("rope_theta", _DEFAULTS[family]["theta"]))
        local = {"rope_theta": raw.get("rope_local_base_freq", 10000.0)} if family != "gemma2" else full
    theta = _DEFAULTS[family]["theta"]
    return {"full_attention": _rope(full, where, "full layers", theta, head_dim),
            "sliding_attention": _rope(local, where, "sliding layers",
                                       10000.0 if family != "gemma2" else theta, head_dim)}


def _layer_types(raw: dict, family: str, n_layers: int, where: Path) -> list[str]:
    types = raw.get("layer_types")
    if types is None:
        pattern = raw.get("sliding_window_pattern", raw.get("_sliding_window_pattern",
                                                            _DEFAULTS[family]["pattern"]))
        pattern = field({"sliding_window_pattern": pattern}, "sliding_window_pattern", where)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(n_layers)]
    check_layer_types(types, n_layers, where)
    return types


def read(located: Located, raw: dict, *, n_heads: int | None = None, tokenizer=None) -> Checkpoint:
    """Check the config and tensor headers of a Gemma 2/3 checkpoint and describe it."""
    where, origin = located.config, located.origin
    if raw["model_type"] == "gemma3":  # multimodal: the text tower's config
        if not isinstance(raw.get("text_config"), dict):
            raise InputError(f"{where}: a gemma3 config without text_config")
        raw = {"model_type": "gemma3_text", **raw["text_config"]}
    family = "gemma3_text" if raw["model_type"] == "gemma3_text" else "gemma2"
    refuse_unsupported(raw, where)
    d = field(raw, "hidden_size", where)
    heads = field(raw, "num_attention_heads", where)
    kv_heads = field(raw, "num_key_value_heads", where, default=heads)
    if heads % kv_heads:
        raise InputError(f"{where}: num_key_value_heads={kv_heads} does not divide "
                         f"num_attention_heads={heads}")
    head_dim = field(raw, "head_dim", where, default=256)
    n_layers = field(raw, "num_hidden_layers", where)
    activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in ACTIVATIONS:
        raise InputError(f"{where}: hidden_activation {activation!r} is not supported")
    scalar = field(raw, "query_pre_attn_scalar", where, float, default=256)
    softcap = raw.get("attn_logit_softcapping", _DEFAULTS[family]["softcap"])
    if softcap is not None:
        softcap = field({"attn_logit_softcapping": softcap}, "attn_logit_softcapping", where, float)
    window = field(raw, "sliding_window", where, default=4096)
    types = _layer_types(raw, family, n_layers, where)
    ropes = _ropes(raw, family, head_dim, where)
    bias = field(raw, "attention_bias", where, bool, default=False, minimum=None)
    source = open_source(located, _rename)
    if "embed_tokens.weight" not in source:
        raise InputError(f"{origin}: tensor model.embed_tokens.weight is missing; not a "
                         f"{raw['model_type']} checkpoint?")
    vocab, d_file = source.shape("embed_tokens.weight")
    if d_file != d:
        raise InputError(f"{where} says hidden_size={d} but the weights have {d_file}")
    found = count_layers(source, "layers.")
    if found != n_layers:
        raise InputError(f"{where} says num_hidden_layers={n_layers} but the weights hold "
                         f"{found} layers")
    spec = ModelSpec(
        family=family, n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=vocab,
        context_length=field(raw, "max_position_embeddings", where,
                             default=_DEFAULTS[family]["context"]),
        mlp_width=field(raw, "intermediate_size", where), positions="rope", norm="rmsnorm",
        norm_eps=field(raw, "rms_norm_eps", where, float, default=1e-6), activation=activation,
        gated_mlp=True, qkv_bias=bias, out_bias=bias, mlp_bias=False,
        tied_embeddings=bool(raw.get("tie_word_embeddings", True)), sandwich_norms=True,
        logit_softcap=raw.get("final_logit_softcapping", 30.0 if family == "gemma2" else None),
        dtype=stored_dtype(source, "embed_tokens.weight", raw),
        extra={"query_pre_attn_scalar": scalar},
        layers=tuple(LayerSpec(scale=scalar**-0.5, rope=ropes[t], softcap=softcap,
                               window=window if t == "sliding_attention" else None,
                               qk_norm=family == "gemma3_text") for t in types),
    )
    weights = GemmaWeights(source, spec)
    for i in range(n_layers):
        check_shapes(source, {f"layers.{i}.{weights.names[ours]}": shape
                              for ours, shape in weights.shapes().items()},
                     origin, lambda key: "model." + key)
    return hf_checkpoint(located, spec, weights, tokenizer)


class GemmaWeights(LlamaWeights):
    """Llama's names plus the sandwich norms; every norm weight as 1 + w (float32), and
    the embeddings scaled by √hidden_size."""

    _NAMES = {**LlamaWeights._NAMES,
              "norm2.weight": "pre_feedforward_layernorm.weight",
              "attn_out_norm.weight": "post_attention_layernorm.weight",
              "mlp_out_norm.weight": "post_feedforward_layernorm.weight"}

    def shapes(self) -> dict[str, tuple]:
        return self._shapes()

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        tensors = super().block(layer, mlp)
        return {name: 1.0 + t if "norm" in name else t for name, t in tensors.items()}

    def embed(self, token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        return super().embed(token_ids) * torch.tensor(self.spec.d_model**0.5)

    def final_norm(self) -> dict[str, torch.Tensor] | None:
        norm = super().final_norm()
        return None if norm is None else {"weight": 1.0 + norm["weight"]}
