"""The encoder–decoder families in Hugging Face's layout: ``t5`` (t5-small …, flan-t5's
gated-GELU with an untied head, and ``mt5``), ``bart`` and ``marian``
(``config.json`` + safetensors or ``pytorch_model.bin``).

The config's fields become a ``Seq2SeqSpec`` (see ``attnviz.models.seq2seq_spec``), the
file's tensor names the forward's (``Seq2SeqWeights``): ``encoder.N.`` / ``decoder.N.`` then
``self_attn.q.weight``, ``cross_attn.q.weight``, ``self_norm.weight``, ``mlp.fc.weight`` ….
What attnviz does not compute (mBART's pre-norm with a final norm, another activation, an
untied Marian decoder vocabulary) is refused by name.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import torch

from attnviz.core.errors import AttnvizWarning, InputError
from attnviz.models.activations import ACTIVATIONS
from attnviz.models.checkpoint import WeightMap
from attnviz.models.hf import check_shapes, count_layers, field, hf_checkpoint, open_source, stored_dtype
from attnviz.models.resolve import Located
from attnviz.models.seq2seq_spec import Seq2SeqSpec
from attnviz.models.sources import TensorSource


def _renamer(family: str):
    """BART/Marian files name ``model.encoder…`` (``*ForConditionalGeneration``) or
    ``encoder…`` (``*Model``): one spelling. Marian's sinusoidal tables are recomputed."""

    def rename(name: str) -> str | None:
        name = name.removeprefix("model.")
        return None if family == "marian" and name.endswith("embed_positions.weight") else name

    return rename


def read(located: Located, raw: dict, *, n_heads: int | None = None, tokenizer=None):
    """Check the config and tensor headers of an encoder–decoder and describe it."""
    where = located.config
    family = raw["model_type"]
    if raw.get("quantization_config"):
        raise InputError(f"{where}: quantization_config is not supported; attnviz reads float "
                         "checkpoints")
    if family in ("t5", "mt5"):
        spec, names = _t5(raw, where)
        source = open_source(located, lambda name: name)
    else:
        spec, names = _bart(raw, where, family)
        source = open_source(located, _renamer(family))
    weights = Seq2SeqWeights(source, spec, names)
    weights.check(located.origin, raw, where)
    spec = weights.spec = replace(spec, dtype=stored_dtype(source, weights.embed_key("embed"), raw))
    notes = []
    if n_heads is not None and n_heads != spec.n_heads:
        notes.append(f"--heads {n_heads} ignored: {where.name} says {spec.n_heads} heads")
    for note in notes:
        warnings.warn(note, AttnvizWarning, stacklevel=3)
    return hf_checkpoint(located, spec, weights, tokenizer, notes=notes)


def _activation(name, where, key: str) -> str:
    if name not in ACTIVATIONS:
        raise InputError(f"{where}: {key} {name!r} is not supported (supported: "
                         f"{', '.join(ACTIVATIONS)})")
    return name


def _t5(raw: dict, where):
    proj = raw.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise InputError(f"{where}: feed_forward_proj {proj!r} is not supported (relu, gelu, "
                         "gated-gelu, gated-silu …)")
    # transformers' gelu_new, operation for operation (NewGELUActivation)
    activation = ("gelu_new_python" if proj == "gated-gelu" or parts[-1] == "gelu_new"
                  else _activation(parts[-1], where, "feed_forward_proj"))
    d = field(raw, "d_model", where)
    layers = field(raw, "num_layers", where)
    # The decoder's output scaled before the head: what transformers 5 saves, else what
    # older configs imply (T5 v1.1 and flan-t5 say tie_word_embeddings false: unscaled);
    # transformers' mT5 never scales it
    scaled = raw["model_type"] == "t5" and raw.get(
        "scale_decoder_outputs", raw.get("tie_word_embeddings", True) is not False)
    spec = Seq2SeqSpec(
        family=raw["model_type"], n_layers=layers,
        n_decoder_layers=field(raw, "num_decoder_layers", where, default=layers),
        d_model=d, n_heads=field(raw, "num_heads", where), head_dim=field(raw, "d_kv", where),
        vocab_size=field(raw, "vocab_size", where), mlp_width=field(raw, "d_ff", where),
        positions="relative", context_length=None, norm="rmsnorm",
        norm_eps=field(raw, "layer_norm_epsilon", where, float, default=1e-6), pre_norm=True,
        activation=activation, gated_mlp=parts[0] == "gated", bias=False, scale=1.0,
        final_norm=True, output_scale=d**-0.5 if scaled else 1.0,
        relative_buckets=field(raw, "relative_attention_num_buckets", where, default=32),
        relative_max_distance=field(raw, "relative_attention_max_distance", where, default=128),
        decoder_start_id=field(raw, "decoder_start_token_id", where, default=0, minimum=0),
        eos_id=raw.get("eos_token_id", 1),
        extra={"feed_forward_proj": proj, "scale_decoder_outputs": bool(scaled)})
    mlp = ({"mlp.gate.weight": "DenseReluDense.wi_0.weight",
            "mlp.up.weight": "DenseReluDense.wi_1.weight",
            "mlp.down.weight": "DenseReluDense.wo.weight"} if spec.gated_mlp else
           {"mlp.fc.weight": "DenseReluDense.wi.weight",
            "mlp.proj.weight": "DenseReluDense.wo.weight"})

    def layer(stack: str, i: int) -> dict[str, str]:
        at = f"{stack}.block.{i}.layer."
        attn = {f"self_attn.{p}.weight": f"{at}0.SelfAttention.{p}.weight" for p in "qkvo"}
        names = {"self_norm.weight": f"{at}0.layer_norm.weight", **attn}
        ff = 1
        if stack == "decoder":
            names |= {f"cross_attn.{p}.weight": f"{at}1.EncDecAttention.{p}.weight" for p in "qkvo"}
            names["cross_norm.weight"] = f"{at}1.layer_norm.weight"
            ff = 2
        names["mlp_norm.weight"] = f"{at}{ff}.layer_norm.weight"
        return names | {ours: f"{at}{ff}.{theirs}" for ours, theirs in mlp.items()}

    names = {
        "layer": layer, "embed": "shared.weight", "decoder_embed": "shared.weight",
        "head": "lm_head.weight",
        "encoder_final_norm": {"weight": "encoder.final_layer_norm.weight"},
        "decoder_final_norm": {"weight": "decoder.final_layer_norm.weight"},
        "encoder_relative": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder_relative": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "counted": ("encoder.block.", "decoder.block."),
    }
    return spec, names


def _bart(raw: dict, where, family: str):
    if raw.get("normalize_before") or raw.get("add_final_layer_norm"):
        raise InputError(f"{where}: normalize_before / add_final_layer_norm (mBART's pre-norm "
                         f"layout) is not supported for {family}")
    if family == "marian" and raw.get("share_encoder_decoder_embeddings") is False:
        raise InputError(f"{where}: share_encoder_decoder_embeddings false (a separate decoder "
                         "vocabulary) is not supported for marian")
    d = field(raw, "d_model", where)
    heads = field(raw, "encoder_attention_heads", where)
    if field(raw, "decoder_attention_heads", where, default=heads) != heads:
        raise InputError(f"{where}: encoder_attention_heads {heads} and "
                         f"decoder_attention_heads {raw['decoder_attention_heads']} differ; "
                         "attnviz needs one head count")
    width = field(raw, "encoder_ffn_dim", where)
    if field(raw, "decoder_ffn_dim", where, default=width) != width:
        raise InputError(f"{where}: encoder_ffn_dim and decoder_ffn_dim differ; not supported")
    scaled = field(raw, "scale_embedding", where, bool, default=family == "marian", minimum=None)
    default_act = "gelu" if family == "bart" else "swish"
    spec = Seq2SeqSpec(
        family=family, n_layers=field(raw, "encoder_layers", where),
        n_decoder_layers=field(raw, "decoder_layers", where), d_model=d, n_heads=heads,
        head_dim=d // heads, vocab_size=field(raw, "vocab_size", where),
        mlp_width=width, positions="learned" if family == "bart" else "sinusoidal",
        context_length=field(raw, "max_position_embeddings", where, default=1024),
        norm="layernorm", norm_eps=1e-5, pre_norm=False,
        activation=_activation(raw.get("activation_function", default_act), where,
                               "activation_function"),
        bias=True, scale=(d // heads) ** -0.5, embed_scale=math.sqrt(d) if scaled else 1.0,
        embed_norm=family == "bart", logits_bias=True,
        decoder_start_id=field(raw, "decoder_start_token_id", where,
                               default=2 if family == "bart" else raw.get("pad_token_id"),
                               minimum=0),
        eos_id=raw.get("eos_token_id", 2 if family == "bart" else 0))

    def layer(stack: str, i: int) -> dict[str, str]:
        at = f"{stack}.layers.{i}."
        names = {}
        parts = [("self_attn", "self_attn", "self_norm")]
        if stack == "decoder":
            parts.append(("cross_attn", "encoder_attn", "cross_norm"))
        for ours, theirs, norm in parts:
            for p, q in zip("qkvo", ("q_proj", "k_proj", "v_proj", "out_proj")):
                names |= {f"{ours}.{p}.{w}": f"{at}{theirs}.{q}.{w}" for w in ("weight", "bias")}
            names |= {f"{norm}.{w}": f"{at}{theirs}_layer_norm.{w}" for w in ("weight", "bias")}
        names |= {f"mlp.{ours}.{w}": f"{at}{theirs}.{w}" for ours, theirs in
                  (("fc", "fc1"), ("proj", "fc2")) for w in ("weight", "bias")}
        return names | {f"mlp_norm.{w}": f"{at}final_layer_norm.{w}" for w in ("weight", "bias")}

    norm = {w: f"{{}}.layernorm_embedding.{w}" for w in ("weight", "bias")}
    names = {
        "layer": layer, "embed": "shared.weight", "decoder_embed": "shared.weight",
        "head": "lm_head.weight", "logits_bias": "final_logits_bias",
        "counted": ("encoder.layers.", "decoder.layers."),
    }
    if family == "bart":
        names |= {"encoder_positions": "encoder.embed_positions.weight",
                  "decoder_positions": "decoder.embed_positions.weight",
                  "encoder_embed_norm": {w: n.format("encoder") for w, n in norm.items()},
                  "decoder_embed_norm": {w: n.format("decoder") for w, n in norm.items()}}
    return spec, names


class Seq2SeqWeights(WeightMap):
    """The file's tensors under the forward's names (see the module docstring)."""

    def __init__(self, tensors: TensorSource, spec: Seq2SeqSpec, names: dict):
        super().__init__(tensors)
        self.spec, self.names = spec, names

    def embed_key(self, which: str) -> str:
        """``shared.weight``, or a stack's own ``embed_tokens`` in files without it."""
        key = self.names[which]
        if key not in self.tensors:
            stack = "decoder" if which == "decoder_embed" else "encoder"
            key = f"{stack}.embed_tokens.weight"
        return key

    def check(self, origin, raw: dict, where) -> None:
        s = self.spec
        embed = self.embed_key("embed")
        if embed not in self.tensors:
            raise InputError(f"{origin}: tensor {self.names['embed']} is missing; not a "
                             f"{s.family} checkpoint?")
        vocab, width = self.tensors.shape(embed)
        if width != s.d_model:
            raise InputError(f"{where} says d_model={s.d_model} but the weights have {width}")
        if vocab != s.vocab_size:
            raise InputError(f"{where} says vocab_size={s.vocab_size} but the embedding has "
                             f"{vocab} rows")
        for prefix, count, key in zip(self.names["counted"], (s.n_layers, s.n_decoder_layers),
                                      ("encoder layers", "decoder layers")):
            found = count_layers(self.tensors, prefix)
            if found != count:
                raise InputError(f"{where} says {count} {key} but the weights hold {found}")
        for stack, count in (("encoder", s.n_layers), ("decoder", s.n_decoder_layers)):
            for i in range(count):
                check_shapes(self.tensors, {theirs: _shapes(s)[ours.split(".", 1)[1]]
                                            for ours, theirs in self.names["layer"](stack, i).items()},
                             origin)

    def layer(self, stack: str, i: int) -> dict[str, torch.Tensor]:
        """Every parameter of layer ``i`` of ``stack`` ("encoder" or "decoder")."""
        return {ours: self.tensors.get(theirs)
                for ours, theirs in self.names["layer"](stack, i).items()}

    def optional(self, which: str):
        """A tensor (or a dict of them) the family may have: None when it has none."""
        found = self.names.get(which)
        if isinstance(found, dict):
            return {k: self.tensors.get(v) for k, v in found.items()}
        return self.tensors.get(found) if found is not None and found in self.tensors else None

    def token_rows(self, token_ids: torch.Tensor, which: str = "embed") -> torch.Tensor:
        """``token_ids (B, T)`` -> ``(B, T, d)`` rows of the embedding (unscaled)."""
        b, t = token_ids.shape
        rows = self.tensors.rows(self.embed_key(which), token_ids.reshape(-1).tolist())
        return rows.reshape(b, t, -1)

    def unembedding(self) -> torch.Tensor:
        head = self.names["head"]
        return self.tensors.get(head if head in self.tensors else self.embed_key("decoder_embed"))


def _shapes(s: Seq2SeqSpec) -> dict[str, tuple]:
    """Each parameter's shape, by the last parts of its name."""
    d, f, inner = s.d_model, s.mlp_width, s.n_heads * s.head_dim
    return {"q.weight": (inner, d), "k.weight": (inner, d), "v.weight": (inner, d),
            "o.weight": (d, inner), "q.bias": (inner,), "k.bias": (inner,), "v.bias": (inner,),
            "o.bias": (d,), "weight": (d,), "bias": (d,), "fc.weight": (f, d), "fc.bias": (f,),
            "proj.weight": (d, f), "proj.bias": (d,), "gate.weight": (f, d), "up.weight": (f, d),
            "down.weight": (d, f)}
