"""The Llama-style families: ``llama`` (Llama 3.x, SmolLM2), ``mistral``, ``qwen2``,
``qwen3`` and ``smollm3`` — RMSNorm, a gated SiLU MLP, rotary positions and grouped
key/value heads, in Hugging Face's layout (``config.json`` + safetensors, or a
``pytorch_model.bin`` read with ``weights_only=True``).

What differs between them is read from the config into the one ``ModelSpec``:

- ``llama``: ``attention_bias`` (q, k, v and o), ``mlp_bias``; RoPE ``default``, ``linear``
  or ``llama3`` scaling;
- ``mistral``: ``sliding_window`` on every layer when set; no biases;
- ``qwen2``: biases on q, k and v (not o); ``use_sliding_window`` with
  ``max_window_layers`` (or ``layer_types``);
- ``qwen3``: ``q_norm``/``k_norm`` (RMSNorm over each head's dimensions, before RoPE),
  ``attention_bias``, windows as qwen2;
- ``smollm3``: ``no_rope_layers`` (1 = the layer rotates, 0 = no positions at all),
  windows only on layers without RoPE when ``use_sliding_window``.

A field attnviz does not implement (another RoPE type, quantization, experts, attention
that is not causal) is refused by name, never silently run as something else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from attnviz.core.errors import AttnvizWarning, InputError
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

# What transformers' config classes assume when config.json leaves a field out.
_DEFAULTS = {
    "llama": {"rope_theta": 10000.0, "tie_word_embeddings": False, "sliding_window": None},
    "mistral": {"rope_theta": 10000.0, "tie_word_embeddings": False, "sliding_window": 4096,
                "num_key_value_heads": 8},
    "qwen2": {"rope_theta": 10000.0, "tie_word_embeddings": False, "sliding_window": 4096,
              "num_key_value_heads": 32},
    "qwen3": {"rope_theta": 10000.0, "tie_word_embeddings": False, "sliding_window": 4096,
              "num_key_value_heads": 32, "head_dim": 128},
    "smollm3": {"rope_theta": 2000000.0, "tie_word_embeddings": True, "sliding_window": None,
                "num_key_value_heads": 4},
}
ROPE_TYPES = ("default", "linear", "llama3")


def _rename(name: str) -> str | None:
    """The file's names without the ``model.`` prefix of ``*ForCausalLM``; None for buffers
    some files carry (``rotary_emb.inv_freq``: recomputed, as transformers does)."""
    if "rotary_emb." in name:
        return None
    return name.removeprefix("model.")


def refuse_unsupported(raw: dict, where: Path) -> None:
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?") if isinstance(
            raw["quantization_config"], dict) else "?"
        raise InputError(f"{where}: quantization_config ({method}) is not supported; attnviz "
                         "reads float checkpoints (float32, bfloat16, float16)")
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size"):
        if raw.get(key):
            raise InputError(f"{where}: {key}={raw[key]}: mixture-of-experts models are not "
                             "supported")
    if raw.get("use_bidirectional_attention") or raw.get("is_causal") is False:
        raise InputError(f"{where}: bidirectional attention (use_bidirectional_attention / "
                         "is_causal false) is not supported; attnviz shows causal decoders")


def _rope(raw: dict, family: str, head_dim: int, where: Path) -> RopeSpec:
    """The RoPE of the config, in transformers' old form (``rope_theta`` + ``rope_scaling``)
    or its version-5 form (``rope_parameters``)."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise InputError(f"{where}: rope_parameters per layer type ({', '.join(params)}) are not "
                         f"supported for {family}")
    merged = dict(raw.get("rope_scaling") or {})
    if isinstance(params, dict):
        merged.update(params)
    theta = merged.get("rope_theta", raw.get("rope_theta", _DEFAULTS[family]["rope_theta"]))
    theta = field({"rope_theta": theta}, "rope_theta", where, float)
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise InputError(f"{where}: rope_type {kind!r} is not implemented (attnviz computes "
                         f"{', '.join(ROPE_TYPES)} exactly; dynamic, yarn and longrope are refused "
                         "rather than approximated)")
    partial = merged.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise InputError(f"{where}: partial_rotary_factor {partial} is not supported for "
                         f"{family} (transformers rotates every dimension of these models)")
    if kind == "default":
        return RopeSpec(theta, head_dim)
    factor = field(merged, "factor", where, float)
    if kind == "linear":
        return RopeSpec(theta, head_dim, ("linear", factor))
    original = field(merged, "original_max_position_embeddings", where, int)
    low, high = (field(merged, k, where, float) for k in ("low_freq_factor", "high_freq_factor"))
    if high <= low:
        raise InputError(f"{where}: rope high_freq_factor {high} must exceed low_freq_factor {low}")
    return RopeSpec(theta, head_dim, ("llama3", factor, low, high, original))


def _windows(raw: dict, family: str, n_layers: int, rotates: list[bool], where: Path) -> list:
    """The sliding window of each layer (None: plain causal), as transformers decides it."""
    window = raw.get("sliding_window", _DEFAULTS[family]["sliding_window"])
    if window is not None:
        window = field({"sliding_window": window}, "sliding_window", where, int)
    if family == "llama":
        return [None] * n_layers
    if family == "mistral":
        return [window] * n_layers
    use = field(raw, "use_sliding_window", where, bool, default=False, minimum=None)
    window = window if use else None
    types = raw.get("layer_types")
    if types is None:
        if family == "smollm3":
            types = ["sliding_attention" if use and window is not None and not r else "full_attention"
                     for r in rotates]
        else:
            first = field(raw, "max_window_layers", where, int, default=28, minimum=0)
            types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                     for i in range(n_layers)]
    check_layer_types(types, n_layers, where)
    return [window if t == "sliding_attention" else None for t in types]


def read(located: Located, raw: dict, *, n_heads: int | None = None, tokenizer=None) -> Checkpoint:
    """Check the config and tensor headers of a Llama-style checkpoint and describe it."""
    where = located.config
    family = raw["model_type"]
    refuse_unsupported(raw, where)
    d = field(raw, "hidden_size", where)
    heads = field(raw, "num_attention_heads", where)
    kv_heads = field(raw, "num_key_value_heads", where,
                      default=_DEFAULTS[family].get("num_key_value_heads", heads))
    if heads % kv_heads:
        raise InputError(f"{where}: num_key_value_heads={kv_heads} does not divide "
                         f"num_attention_heads={heads}")
    head_dim = field(raw, "head_dim", where, default=_DEFAULTS[family].get("head_dim", d // heads))
    n_layers = field(raw, "num_hidden_layers", where)
    width = field(raw, "intermediate_size", where)
    eps = field(raw, "rms_norm_eps", where, float, default=1e-6)
    activation = raw.get("hidden_act", "silu")
    if activation not in ACTIVATIONS:
        raise InputError(f"{where}: hidden_act {activation!r} is not supported "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    rope = _rope(raw, family, head_dim, where)
    if family == "smollm3":
        flags = raw.get("no_rope_layers")
        if flags is None:
            interval = field(raw, "no_rope_layer_interval", where, default=4)
            flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
        if not isinstance(flags, list) or len(flags) != n_layers:
            raise InputError(f"{where}: no_rope_layers must list one 0/1 flag per layer ({n_layers})")
        rotates = [bool(f) for f in flags]
    else:
        rotates = [True] * n_layers
    windows = _windows(raw, family, n_layers, rotates, where)
    qk_norm = family == "qwen3"
    attention_bias = field(raw, "attention_bias", where, bool, default=False, minimum=None)
    qkv_bias = True if family == "qwen2" else attention_bias and family != "mistral"
    out_bias = attention_bias and family not in ("qwen2", "mistral")
    mlp_bias = field(raw, "mlp_bias", where, bool, default=False, minimum=None) and family in (
        "llama", "smollm3")
    tied = field(raw, "tie_word_embeddings", where, bool,
                  default=_DEFAULTS[family]["tie_word_embeddings"], minimum=None)

    source = open_source(located, _rename)
    origin = located.origin
    if "embed_tokens.weight" not in source or len(source.shape("embed_tokens.weight")) != 2:
        raise InputError(f"{origin}: tensor model.embed_tokens.weight is missing; not a "
                         f"{family} checkpoint?")
    vocab, d_file = source.shape("embed_tokens.weight")
    if d_file != d:
        raise InputError(f"{where} says hidden_size={d} but the weights have {d_file}")
    if raw.get("vocab_size") is not None and raw["vocab_size"] != vocab:
        raise InputError(f"{where} says vocab_size={raw['vocab_size']} but the embedding has "
                         f"{vocab} rows")
    found_layers = count_layers(source, "layers.")
    if found_layers != n_layers:
        raise InputError(f"{where} says num_hidden_layers={n_layers} but the weights hold "
                         f"{found_layers} layers")
    spec = ModelSpec(
        family=family, n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=vocab,
        context_length=field(raw, "max_position_embeddings", where, default=2048),
        mlp_width=width, positions="rope", norm="rmsnorm", norm_eps=eps, activation=activation,
        gated_mlp=True, qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias,
        tied_embeddings=tied,
        dtype=stored_dtype(source, "embed_tokens.weight", raw),
        layers=tuple(LayerSpec(scale=head_dim**-0.5, rope=rope if rotates[i] else None,
                               window=windows[i], qk_norm=qk_norm) for i in range(n_layers)),
    )
    weights = LlamaWeights(source, spec)
    for i in range(n_layers):
        weights.check_shapes(i, origin)
    notes = []
    if n_heads is not None and n_heads != heads:
        notes.append(f"--heads {n_heads} ignored: {where.name} says num_attention_heads={heads}")
    for note in notes:
        warnings.warn(note, AttnvizWarning, stacklevel=3)
    return hf_checkpoint(located, spec, weights, tokenizer, notes=notes)


class LlamaWeights(WeightMap):
    """``layers.N.self_attn.q_proj.weight`` … -> the forward's names (already ``(out, in)``)."""

    _NAMES = {
        "norm1.weight": "input_layernorm.weight",
        "norm2.weight": "post_attention_layernorm.weight",
        "attn.W_query.weight": "self_attn.q_proj.weight",
        "attn.W_key.weight": "self_attn.k_proj.weight",
        "attn.W_value.weight": "self_attn.v_proj.weight",
        "attn.out_proj.weight": "self_attn.o_proj.weight",
        "mlp.gate.weight": "mlp.gate_proj.weight",
        "mlp.up.weight": "mlp.up_proj.weight",
        "mlp.down.weight": "mlp.down_proj.weight",
    }

    def __init__(self, tensors: TensorSource, spec: ModelSpec):
        super().__init__(tensors)
        self.spec = spec
        names = dict(self._NAMES)
        if spec.qkv_bias:
            names |= {f"attn.W_{n}.bias": f"self_attn.{p}_proj.bias"
                      for n, p in (("query", "q"), ("key", "k"), ("value", "v"))}
        if spec.out_bias:
            names["attn.out_proj.bias"] = "self_attn.o_proj.bias"
        if spec.mlp_bias:
            names |= {f"mlp.{n}.bias": f"mlp.{n}_proj.bias" for n in ("gate", "up", "down")}
        if any(layer.qk_norm for layer in spec.layers):
            names |= {"attn.q_norm.weight": "self_attn.q_norm.weight",
                      "attn.k_norm.weight": "self_attn.k_norm.weight"}
        self.names = names

    def _shapes(self) -> dict[str, tuple]:
        s = self.spec
        d, f, q, kv = s.d_model, s.mlp_width, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
        shapes = {"norm1.weight": (d,), "norm2.weight": (d,), "attn.W_query.weight": (q, d),
                  "attn.W_key.weight": (kv, d), "attn.W_value.weight": (kv, d),
                  "attn.out_proj.weight": (d, q), "mlp.gate.weight": (f, d),
                  "mlp.up.weight": (f, d), "mlp.down.weight": (d, f),
                  "attn.W_query.bias": (q,), "attn.W_key.bias": (kv,), "attn.W_value.bias": (kv,),
                  "attn.out_proj.bias": (d,), "mlp.gate.bias": (f,), "mlp.up.bias": (f,),
                  "mlp.down.bias": (d,), "attn.q_norm.weight": (s.head_dim,),
                  "attn.k_norm.weight": (s.head_dim,), "attn_out_norm.weight": (d,),
                  "mlp_out_norm.weight": (d,)}
        return {ours: shapes[ours] for ours in self.names}

    def check_shapes(self, layer: int, origin: Path) -> None:
        check_shapes(self.tensors, {f"layers.{layer}.{self.names[ours]}": shape
                                    for ours, shape in self._shapes().items()},
                     origin, lambda key: "model." + key)

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        return {ours: self.tensors.get(f"layers.{layer}.{theirs}")
                for ours, theirs in self.names.items()
                if mlp or ours.startswith(("norm1.", "attn."))}

    def embed(self, token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        b, t = token_ids.shape
        rows = self.tensors.rows("embed_tokens.weight", token_ids.reshape(-1).tolist())
        return rows.reshape(b, t, -1)  # (B, T, d): no positions here, RoPE rotates q and k

    def final_norm(self) -> dict[str, torch.Tensor] | None:
        return {"weight": self.tensors.get("norm.weight")} if "norm.weight" in self.tensors else None

    def unembedding(self) -> torch.Tensor | None:
        key = "lm_head.weight" if "lm_head.weight" in self.tensors else "embed_tokens.weight"
        return self.tensors.get(key)


