"""GPT-2-family checkpoints (model_type ``gpt2``) and the book's ``GPTModel``: the config
and tensors checked and mapped to one ``ModelSpec`` and the forward's parameter names.

- Hugging Face layout: ``config.json`` + safetensors (read lazily: only the tensors of the
  blocks asked for) or ``pytorch_model.bin`` (``weights_only=True``); also a lone
  ``.safetensors`` file whose shapes give the config;
- the book's ``GPTModel`` state dict (*Build a Large Language Model (From Scratch)*, ch. 4-5):
  ``tok_emb``, ``pos_emb``, ``trf_blocks.N.att.W_query`` …, read with ``weights_only=True``,
  renamed to Hugging Face's names and ``Conv1D`` layout.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from attnviz.core.config import GPT2_VOCAB_SIZE
from attnviz.core.errors import AttnvizWarning, InputError
from attnviz.models.activations import ACTIVATIONS
from attnviz.models.checkpoint import Checkpoint, WeightMap
from attnviz.models.resolve import Located
from attnviz.models.sources import DictSource, SafetensorsSource, TensorSource, read_state_dict
from attnviz.models.spec import LayerSpec, ModelSpec
from attnviz.text import tokenization

_LAYER_KEY = re.compile(r"^h\.(\d+)\.")
# Per-block tensors and their shapes in Hugging Face's Conv1D layout (in, out), d = n_embd.
_BLOCK_SHAPES = {
    "ln_1.weight": lambda d, f: (d,),
    "ln_1.bias": lambda d, f: (d,),
    "attn.c_attn.weight": lambda d, f: (d, 3 * d),
    "attn.c_attn.bias": lambda d, f: (3 * d,),
    "attn.c_proj.weight": lambda d, f: (d, d),
    "attn.c_proj.bias": lambda d, f: (d,),
    "ln_2.weight": lambda d, f: (d,),
    "ln_2.bias": lambda d, f: (d,),
    "mlp.c_fc.weight": lambda d, f: (d, f),
    "mlp.c_fc.bias": lambda d, f: (f,),
    "mlp.c_proj.weight": lambda d, f: (f, d),
    "mlp.c_proj.bias": lambda d, f: (d,),
}


@dataclass(frozen=True)
class GPT2Config:
    """What attnviz needs to know to run a GPT-2-family model (names as in transformers)."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    n_inner: int
    vocab_size: int = GPT2_VOCAB_SIZE
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    qkv_bias: bool = True
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False  # float32 throughout here: the same numbers
    n_head_assumed: bool = False  # True when nothing in the checkpoint gave the head count

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def attn_scale(self, layer: int) -> float:
        """The factor the scores Q·Kᵀ of block ``layer`` are multiplied by before the mask."""
        scale = 1.0 / math.sqrt(self.head_dim) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


def _hf_name(key: str, untied: bool = False) -> str | None:
    """Hugging Face's tensor name without the ``transformer.`` prefix of GPT2LMHeadModel;
    None for what attnviz never needs (causal-mask buffers, an output head tied to wte).
    ``untied``: config.json says ``tie_word_embeddings: false``, so ``lm_head.weight`` is
    the unembedding (as in ``attnviz train``'s snapshots)."""
    key = key.removeprefix("transformer.")
    if key.endswith((".attn.bias", ".attn.masked_bias")):
        return None
    if key.startswith("lm_head."):
        return key if untied and key == "lm_head.weight" else None
    return key


def _is_book_layout(keys) -> bool:
    return "tok_emb.weight" in keys and "pos_emb.weight" in keys


_BOOK_BLOCK = re.compile(r"^trf_blocks\.(\d+)\.")


def _from_book(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The book's ``GPTModel`` names and ``nn.Linear`` (out, in) layout -> Hugging Face's
    names and ``Conv1D`` (in, out) layout, so one forward pass serves both."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise InputError(f"{path}: tensor {key} is missing; not a GPTModel checkpoint?")
        return state[key]

    out = {"wte.weight": need("tok_emb.weight"), "wpe.weight": need("pos_emb.weight"),
           "ln_f.weight": need("final_norm.scale"), "ln_f.bias": need("final_norm.shift")}
    blocks = sorted({int(m.group(1)) for k in state if (m := _BOOK_BLOCK.match(k))})
    for i in blocks:
        b, h = f"trf_blocks.{i}.", f"h.{i}."
        qkv = [need(f"{b}att.W_{n}.weight") for n in ("query", "key", "value")]  # (d, d) each
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, dim=0).T  # (d, 3d)
        if f"{b}att.W_query.bias" in state:
            out[h + "attn.c_attn.bias"] = torch.cat(
                [need(f"{b}att.W_{n}.bias") for n in ("query", "key", "value")])
        pairs = {"attn.c_proj": "att.out_proj", "mlp.c_fc": "ff.layers.0", "mlp.c_proj": "ff.layers.2"}
        for hf, book in pairs.items():
            out[f"{h}{hf}.weight"] = need(f"{b}{book}.weight").T
            out[f"{h}{hf}.bias"] = need(f"{b}{book}.bias")
        for hf, book in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[f"{h}{hf}.weight"] = need(f"{b}{book}.scale")
            out[f"{h}{hf}.bias"] = need(f"{b}{book}.shift")
    return out


def _check_config(raw: dict, path: Path) -> dict:
    """GPT-2's config fields that change the math, checked."""
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise InputError(f"{path}: activation_function {activation!r} is not supported "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    # Every other field of transformers' GPT2Config is inert for attention in inference
    # (dropout rates, initialisation, generation and task-head settings): see docs/pretrained.md.
    for key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                "tie_word_embeddings"):  # the last one picks the unembedding (lm_head or wte)
        if not isinstance(raw.get(key, False), bool):
            raise InputError(f"{path}: {key} must be true or false, got {raw[key]!r}")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise InputError(f"{path}: layer_norm_epsilon must be a small positive number, got {eps!r}")
    return raw


def read(located: Located, raw: dict, *, n_heads: int | None = None,
         tokenizer=None) -> Checkpoint:
    """Read the headers and validate a GPT-2-family checkpoint; tensors stay on disk until
    a block is built (see ``TensorSource``). ``n_heads`` is used when the checkpoint cannot
    tell (a lone .safetensors file, the book's GPTModel); otherwise it must agree.
    ``tokenizer``: another tokenizer than GPT-2's (``--tokenizer``)."""
    origin, first = located.origin, located.weights[0]
    layout, head = "huggingface", None
    untied = located.config is not None and raw.get("tie_word_embeddings") is False
    hf_name = functools.partial(_hf_name, untied=untied)
    if located.gguf is not None:  # a GGUF file, under Hugging Face's names (gguf_reader)
        from attnviz.models.hf import open_source

        source: TensorSource = open_source(located, hf_name)
        keys = source.keys()
    elif first.suffix == ".safetensors":
        source = SafetensorsSource(located.weights, hf_name)
        keys = source.keys()
        if _is_book_layout(keys):
            raise InputError(f"{first}: a GPTModel state dict saved as safetensors; save it with "
                             "torch.save(model.state_dict(), 'model.pth') and pass that")
    else:
        state = read_state_dict(first)
        if _is_book_layout(state):
            layout = "book"
            source = DictSource(_from_book(state, first), first)
            head = state.get("out_head.weight")
        else:
            source = DictSource({n: v for k, v in state.items() if (n := hf_name(k))}, first)
        keys = source.keys()
    raw = _check_config(raw, located.config) if located.config and layout == "huggingface" else {}
    if located.config is None and any(k.endswith("embed_tokens.weight") for k in keys):
        raise InputError(f"{origin}: a Llama-style checkpoint (embed_tokens) without its "
                         "config.json; put config.json beside it and pass the folder")
    for key in ("wte.weight", "wpe.weight"):
        if key not in keys or len(source.shape(key)) != 2:
            raise InputError(f"{origin}: tensor {key} is missing; not a GPT-2 checkpoint?")
    vocab_size, n_embd = source.shape("wte.weight")
    tok = _tokenizer(located, tokenizer, vocab_size)
    n_layer = len({int(m.group(1)) for k in keys if (m := _LAYER_KEY.match(k))})
    if n_layer == 0:
        raise InputError(f"{origin}: no transformer blocks (h.0... / trf_blocks.0...) found")
    notes = []
    if "n_head" in raw:
        n_head, assumed = raw["n_head"], False
    elif n_heads is not None:
        n_head, assumed = n_heads, False
        notes.append(f"{n_heads} heads, from --heads (the checkpoint does not record it)")
    elif layout == "book":
        n_head, assumed = 12, True
        notes.append("12 heads assumed (the book's GPT_CONFIG_124M; the checkpoint does not "
                     "record it): pass --heads if the model was trained with another count")
    else:
        n_head, assumed = max(1, n_embd // 64), True
        notes.append(f"{max(1, n_embd // 64)} heads assumed (64 dimensions per head, as in GPT-2; "
                     "the file does not record it): pass --heads to set it")
    if not isinstance(n_head, int) or n_head < 1 or n_embd % n_head:
        if "n_head" in raw:
            raise InputError(f"{located.config}: n_head={n_head} does not divide n_embd={n_embd}")
        where = f"--heads={n_head}" if n_heads is not None else f"{n_head} heads (assumed)"
        raise InputError(f"{where} does not divide the checkpoint's width {n_embd}; pass --heads "
                         "with the head count the model was trained with")
    if n_heads is not None and "n_head" in raw and n_heads != n_head:
        notes.append(f"--heads {n_heads} ignored: {located.config.name} says n_head={n_head}")
    n_inner = source.shape("h.0.mlp.c_fc.weight")[-1] if "h.0.mlp.c_fc.weight" in keys else 4 * n_embd
    qkv_bias = layout == "huggingface" or "h.0.attn.c_attn.bias" in keys
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=source.shape("wpe.weight")[0],
        n_inner=n_inner, vocab_size=vocab_size, layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
        activation_function=raw.get("activation_function", "gelu_new"), qkv_bias=qkv_bias,
        scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(raw.get("scale_attn_by_inverse_layer_idx", False)),
        reorder_and_upcast_attn=bool(raw.get("reorder_and_upcast_attn", False)),
        n_head_assumed=assumed,
    )
    claimed = {k: raw[k] for k in ("n_layer", "n_embd", "n_positions", "vocab_size", "n_inner")
               if raw.get(k) is not None}
    for key, value in claimed.items():
        if value != getattr(config, key):
            raise InputError(f"{located.config} says {key}={value} but the weights have "
                             f"{getattr(config, key)}")
    _expect(source, "wpe.weight", (config.n_positions, n_embd), origin)
    if untied and layout == "huggingface":  # tie_word_embeddings: false -> its own output head
        _expect(source, "lm_head.weight", (vocab_size, n_embd), origin)
    for i in range(n_layer):
        for name, shape in _BLOCK_SHAPES.items():
            if name == "attn.c_attn.bias" and not qkv_bias:
                continue
            _expect(source, f"h.{i}.{name}", shape(n_embd, n_inner), origin)
    for note in notes:
        warnings.warn(note, AttnvizWarning, stacklevel=3)
    spec = replace(spec_of(config), tied_embeddings=not untied and head is None)
    return Checkpoint(spec=spec, weights=GPT2Weights(source, head), source=origin,
                      described=_describe(config, source, origin, layout, notes, tok),
                      tokenizer=tok, layout=layout, notes=notes)


def spec_of(config: GPT2Config) -> ModelSpec:
    """GPT-2 in the one description: learned positions, LayerNorm, a plain MLP."""
    return ModelSpec(
        family="gpt2", n_layers=config.n_layer, d_model=config.n_embd, n_heads=config.n_head,
        n_kv_heads=config.n_head, head_dim=config.head_dim, vocab_size=config.vocab_size,
        context_length=config.n_positions, mlp_width=config.n_inner,
        layers=tuple(LayerSpec(scale=config.attn_scale(i)) for i in range(config.n_layer)),
        positions="learned", norm="layernorm", norm_eps=config.layer_norm_epsilon,
        activation=config.activation_function, qkv_bias=config.qkv_bias,
    )


def _tokenizer(located: Located, path, vocab_size: int):
    """``--tokenizer PATH``; else GPT-2's for GPT-2's vocabulary (a tokenizer.json beside it
    is GPT-2's too); else the model's own, beside it (a GPT-2-architecture model trained
    with another vocabulary, such as ``attnviz train``'s), checked against the embedding."""
    from attnviz.models.hf import check_vocabularies, own_tokenizer

    if path is None and vocab_size == GPT2_VOCAB_SIZE:
        return tokenization.gpt2_tokenizer()

    def none_beside_it():
        folder = (located.config or located.weights[0]).parent
        raise InputError(f"{located.origin}: tensor wte.weight has {vocab_size} rows, not GPT-2's "
                         f"{GPT2_VOCAB_SIZE}-token vocabulary, and {folder} has no tokenizer.json; "
                         "put the model's own beside it or pass --tokenizer PATH")

    tok = own_tokenizer(located, path, fallback=none_beside_it)
    check_vocabularies(tok, vocab_size)
    return tok


def _describe(cfg: GPT2Config, source: TensorSource, origin: Path, layout: str,
              notes: list[str], tok) -> dict:
    """The configuration in attnviz's terms, as shown by ``info`` and in results."""
    described = {
        "mode": "pretrained", "weights": str(origin), "layout": layout,
        "n_layers": cfg.n_layer, "n_heads": cfg.n_head, "d_model": cfg.n_embd,
        "head_dim": cfg.head_dim, "context_length": cfg.n_positions,
        "vocab_size": cfg.vocab_size, "mlp_width": cfg.n_inner, "qkv_bias": cfg.qkv_bias,
        "activation_function": cfg.activation_function,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "scale_attn_weights": cfg.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "n_heads_assumed": cfg.n_head_assumed,
        "parameters": sum(math.prod(source.shape(k)) for k in source),
    }
    if tok.kind != "gpt2":  # GPT-2's own stays unnamed, as it always was
        described["tokenizer"] = tok.describe()
    if notes:
        described["notes"] = list(notes)
    return described


class GPT2Weights(WeightMap):
    """Hugging Face GPT-2 names (``h.N.attn.c_attn.weight`` …) -> the forward's. Its Conv1D
    stores (in, out), Linear (out, in): a transposed view is what F.linear multiplies by;
    the fused q | k | v columns are sliced, not copied."""

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        tensors, prefix = self.tensors, f"h.{layer}."
        c_attn_w = tensors.get(prefix + "attn.c_attn.weight")  # (d, 3d): q | k | v
        d = c_attn_w.shape[0]
        biased = prefix + "attn.c_attn.bias" in tensors
        c_attn_b = tensors.get(prefix + "attn.c_attn.bias") if biased else None
        out = {}
        for i, name in enumerate(("W_query", "W_key", "W_value")):
            out[f"attn.{name}.weight"] = c_attn_w[:, i * d : (i + 1) * d].T
            if c_attn_b is not None:
                out[f"attn.{name}.bias"] = c_attn_b[i * d : (i + 1) * d]
        pairs = {"attn.out_proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
        norms = {"norm1": "ln_1", "norm2": "ln_2"}
        if not mlp:
            del pairs["mlp.fc"], pairs["mlp.proj"], norms["norm2"]
        for ours, theirs in pairs.items():
            out[f"{ours}.weight"] = tensors.get(prefix + theirs + ".weight").T
            out[f"{ours}.bias"] = tensors.get(prefix + theirs + ".bias")
        for ours, theirs in norms.items():
            out[f"{ours}.weight"] = tensors.get(f"{prefix}{theirs}.weight")
            out[f"{ours}.bias"] = tensors.get(f"{prefix}{theirs}.bias")
        return out

    def __init__(self, tensors: TensorSource, head: torch.Tensor | None = None):
        super().__init__(tensors)
        self.head = head  # the book's out_head (untied); Hugging Face's GPT-2 ties it to wte

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
        if self.head is not None:  # the book's out_head
            return self.head.float()
        if "lm_head.weight" in self.tensors:  # kept only when config.json unties it
            return self.tensors.get("lm_head.weight")
        return self.tensors.get("wte.weight")


def _expect(source: TensorSource, key: str, shape: tuple, origin: Path) -> None:
    if key not in source:
        raise InputError(f"{origin}: tensor {key} is missing; not a GPT-2 checkpoint?")
    if source.shape(key) != shape:
        raise InputError(f"{origin}: tensor {key} has shape {source.shape(key)}, expected {shape}")
