"""State dicts of the book's chapter-5 bonus classes — ``Llama3Model``, ``Qwen3Model`` and
``Gemma3Model`` (*Build a Large Language Model (From Scratch)*, ``ch05/07_gpt_to_llama``,
``11_qwen3``, ``12_gemma3``) — saved with ``torch.save(model.state_dict(), "model.pth")``
(or inside ``{"model_state_dict": …}``) and read with ``weights_only=True``.

A state dict records its shapes, not its configuration. The shapes give the vocabulary,
the width, the layers, the MLP width, the key/value width and, where q/k norms exist,
``head_dim`` (so the head counts too); the rest — the head count of a ``Llama3Model``, the
RoPE bases and scaling, the context length, Gemma 3's windows, layer types and query scale
— comes from the reader's own configuration dict saved as JSON (``--book-config``, the
book's keys) or from ``--preset`` naming one of the book's published dicts. What was taken
from there is said (``AttnvizWarning`` + ``notes``), as the ``GPTModel`` reader does.

The model is the book's code, not Hugging Face's, where the two differ: ``Llama3Model``
rescales ``rope_base`` by ``context_length / orig_context_length`` when a config has both
and they differ (the book's code up to June 2025), computes its Llama 3 frequency scaling in
its own order of operations (``BookRope``), and takes ``head_dim`` as ``emb_dim // n_heads``;
``Gemma3Model`` has no RoPE scaling and multiplies its embeddings by ``emb_dim ** 0.5`` as a
Python float. attnviz computes in float32 whatever ``dtype`` the book's code ran in.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from attnviz.core.errors import AttnvizWarning, InputError
from attnviz.models.checkpoint import Checkpoint, WeightMap
from attnviz.models.hf import check_vocabularies, count_layers
from attnviz.models.resolve import Located, read_config
from attnviz.models.sources import DictSource, TensorSource, read_state_dict
from attnviz.models.spec import LayerSpec, ModelSpec, RopeSpec
from attnviz.text import tokenization

KINDS = ("Llama3Model", "Qwen3Model", "Gemma3Model")
LAYOUTS = {"Llama3Model": "book-llama3", "Qwen3Model": "book-qwen3", "Gemma3Model": "book-gemma3"}
_FAMILIES = {"Llama3Model": "llama", "Qwen3Model": "qwen3", "Gemma3Model": "gemma3_text"}
_PREFIX = {"Llama3Model": "trf_blocks.", "Qwen3Model": "trf_blocks.", "Gemma3Model": "blocks."}
# Fixed in each class's code, never in its config: the RMSNorm eps and the MLP's activation.
_EPS = {"Llama3Model": 1e-5, "Qwen3Model": 1e-6, "Gemma3Model": 1e-6}
_ACTIVATION = {"Llama3Model": "silu", "Qwen3Model": "silu", "Gemma3Model": "gelu_pytorch_tanh"}
# What a state dict of each class cannot tell, and the config must (besides n_heads for a
# Llama3Model, or a Qwen3Model without q/k norms).
_REQUIRED = {
    "Llama3Model": ("context_length", "rope_base", "rope_freq"),
    "Qwen3Model": ("context_length", "rope_base"),
    "Gemma3Model": ("context_length", "rope_base", "rope_local_base", "layer_types",
                    "query_pre_attn_scalar"),
}
_DTYPES = ("float32", "bfloat16", "float16", "float64")

_GEMMA3_270M_TYPES = (["sliding_attention"] * 5 + ["full_attention"]) * 3
# The book's published configuration dicts (``dtype`` as a string), by preset name.
PRESETS: dict[str, tuple[str, dict]] = {
    "llama3.2-1b": ("Llama3Model", {  # LLAMA32_CONFIG_1B
        "vocab_size": 128_256, "context_length": 131_072, "emb_dim": 2048, "n_heads": 32,
        "n_layers": 16, "hidden_dim": 8192, "n_kv_groups": 8, "rope_base": 500_000.0,
        "dtype": "bfloat16", "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_context_length": 8192}}),
    "llama3.2-3b": ("Llama3Model", {  # LLAMA32_CONFIG_3B
        "vocab_size": 128_256, "context_length": 131_072, "emb_dim": 3072, "n_heads": 24,
        "n_layers": 28, "hidden_dim": 8192, "n_kv_groups": 8, "rope_base": 500_000.0,
        "dtype": "bfloat16", "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_context_length": 8192}}),
    "qwen3-0.6b": ("Qwen3Model", {  # QWEN_CONFIG_06_B
        "vocab_size": 151_936, "context_length": 40_960, "emb_dim": 1024, "n_heads": 16,
        "n_layers": 28, "hidden_dim": 3072, "head_dim": 128, "qk_norm": True, "n_kv_groups": 8,
        "rope_base": 1_000_000.0, "dtype": "bfloat16"}),
    "qwen3-1.7b": ("Qwen3Model", {  # QWEN3_CONFIG_1_7B
        "vocab_size": 151_936, "context_length": 40_960, "emb_dim": 2048, "n_heads": 16,
        "n_layers": 28, "hidden_dim": 6144, "head_dim": 128, "qk_norm": True, "n_kv_groups": 8,
        "rope_base": 1_000_000.0, "dtype": "bfloat16"}),
    "gemma3-270m": ("Gemma3Model", {  # GEMMA3_CONFIG_270M
        "vocab_size": 262_144, "context_length": 32_768, "emb_dim": 640, "n_heads": 4,
        "n_layers": 18, "hidden_dim": 2048, "head_dim": 256, "qk_norm": True, "n_kv_groups": 1,
        "rope_local_base": 10_000.0, "rope_base": 1_000_000.0, "sliding_window": 512,
        "layer_types": _GEMMA3_270M_TYPES, "dtype": "bfloat16", "query_pre_attn_scalar": 256}),
}


@dataclass(frozen=True)
class BookRope(RopeSpec):
    """RoPE as the book's ``Llama3Model`` computes it (``compute_rope_params`` with a
    ``freq_config``), operation for operation: the smoothed band is
    ``(1 - s) * (inv_freq / factor) + s * inv_freq``, where transformers divides after the
    product. ``scaling``: ``("llama3", factor, low_freq_factor, high_freq_factor,
    original_context_length)`` or None."""

    def inv_freq(self):
        dim = self.rotary_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2].float() / dim
        inv_freq = 1.0 / (self.base ** exponents)
        if self.scaling is None:
            return inv_freq
        _, factor, low_freq_factor, high_freq_factor, original = self.scaling
        low_freq_wavelen = original / low_freq_factor
        high_freq_wavelen = original / high_freq_factor
        wavelen = 2 * torch.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * (inv_freq / factor) + smooth * inv_freq
        medium = (wavelen <= low_freq_wavelen) & (wavelen >= high_freq_wavelen)
        return torch.where(medium, smoothed, scaled)


# --- which class a state dict is ------------------------------------------------------------

_LOADED: dict[tuple, dict] = {}  # detect's state dict, for the read that follows it


def _key(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def detect(path: Path) -> str | None:
    """The book class whose state dict ``path`` holds (``Llama3Model``, ``Qwen3Model``,
    ``Gemma3Model``), or None: anything else, the book's ``GPTModel`` included (its
    ``pos_emb``), is the GPT-2 reader's to read or refuse."""
    path = Path(path)
    try:
        state = read_state_dict(path)
    except InputError:
        return None  # the GPT-2 reader says why
    kind = _kind(state)
    if kind is not None:
        _LOADED.clear()
        _LOADED[_key(path)] = state
    return kind


def _kind(keys) -> str | None:
    if "tok_emb.weight" not in keys or "pos_emb.weight" in keys:
        return None
    if any(k.startswith("blocks.") and k.endswith(".att.W_query.weight") for k in keys):
        return "Gemma3Model"
    if any(k.startswith("trf_blocks.") and k.endswith(".norm1.scale") for k in keys):
        return "Qwen3Model"
    if any(k.startswith("trf_blocks.") and k.endswith(".norm1.weight") for k in keys):
        return "Llama3Model"
    return None


def _state(path: Path) -> dict[str, torch.Tensor]:
    state = _LOADED.pop(_key(path), None)
    return read_state_dict(path) if state is None else state


# --- the tensors of each class ------------------------------------------------------------

def _block_names(kind: str, qk_norm: bool) -> dict[str, str]:
    """The forward's parameter names -> the book's, within one block."""
    names = {f"attn.{n}.weight": f"att.{n}.weight"
             for n in ("W_query", "W_key", "W_value", "out_proj")}
    names |= {"mlp.gate.weight": "ff.fc1.weight", "mlp.up.weight": "ff.fc2.weight",
              "mlp.down.weight": "ff.fc3.weight"}
    if kind == "Llama3Model":  # torch.nn.RMSNorm: .weight
        names |= {"norm1.weight": "norm1.weight", "norm2.weight": "norm2.weight"}
    elif kind == "Qwen3Model":  # the book's RMSNorm: .scale (and an optional .shift)
        names |= {"norm1.weight": "norm1.scale", "norm2.weight": "norm2.scale"}
    else:
        names |= {"norm1.weight": "input_layernorm.scale",
                  "attn_out_norm.weight": "post_attention_layernorm.scale",
                  "norm2.weight": "pre_feedforward_layernorm.scale",
                  "mlp_out_norm.weight": "post_feedforward_layernorm.scale"}
    if qk_norm:
        names |= {"attn.q_norm.weight": "att.q_norm.scale", "attn.k_norm.weight": "att.k_norm.scale"}
    return names


def state_dict_shapes(kind: str, cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the book's ``kind`` built from ``cfg`` (the book's keys), by name, with
    its shape: what ``model.state_dict()`` holds (``out_head.weight`` too, tied or not)."""
    d, f, vocab = cfg["emb_dim"], cfg["hidden_dim"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") if kind != "Llama3Model" else None
    head_dim = head_dim or d // cfg["n_heads"]
    q, kv = cfg["n_heads"] * head_dim, cfg["n_kv_groups"] * head_dim
    qk_norm = kind != "Llama3Model" and bool(cfg.get("qk_norm"))
    ours = {"attn.W_query.weight": (q, d), "attn.W_key.weight": (kv, d),
            "attn.W_value.weight": (kv, d), "attn.out_proj.weight": (d, q),
            "mlp.gate.weight": (f, d), "mlp.up.weight": (f, d), "mlp.down.weight": (d, f),
            "attn.q_norm.weight": (head_dim,), "attn.k_norm.weight": (head_dim,)}
    final = "final_norm.weight" if kind == "Llama3Model" else "final_norm.scale"
    shapes = {"tok_emb.weight": (vocab, d)}
    for i in range(cfg["n_layers"]):
        for mine, theirs in _block_names(kind, qk_norm).items():
            shapes[f"{_PREFIX[kind]}{i}.{theirs}"] = ours.get(mine, (d,))
    return shapes | {final: (d,), "out_head.weight": (vocab, d)}


# --- the configuration ------------------------------------------------------------------------

class _Config:
    """The book's configuration dict, each key with where it came from (the JSON file, or
    ``--preset NAME``; the file's keys win over the preset's)."""

    def __init__(self, kind: str, book_config, preset: str | None, origin: Path):
        self.values: dict = {}
        self.where: dict[str, str] = {}
        self.sources: list[str] = []
        if preset is not None:
            if preset not in PRESETS:
                raise InputError(f"--preset {preset!r} names no config of the book's classes: "
                                 f"one of {', '.join(PRESETS)}")
            preset_kind, values = PRESETS[preset]
            if preset_kind != kind:
                fitting = [n for n, (k, _) in PRESETS.items() if k == kind]
                raise InputError(f"--preset {preset} is a config of the book's {preset_kind}, but "
                                 f"{origin.name} holds a {kind} state dict (presets for it: "
                                 f"{', '.join(fitting)})")
            self._add(values, f"--preset {preset}")
        if book_config is not None:
            path = Path(book_config)
            if not path.is_file():
                raise InputError(f"--book-config {path} does not exist (the configuration dict "
                                 "the model was built with, saved as JSON)")
            self._add(read_config(path), str(path))

    def _add(self, values: dict, where: str) -> None:
        self.values.update(values)
        self.where.update(dict.fromkeys(values, where))
        self.sources.append(where)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str):
        return self.values.get(key)

    def number(self, key: str, kind=int):
        """``cfg[key]``: an int ≥ 1 (``kind=int``) or a number > 0 (``kind=float``); None
        when null or absent."""
        value = self.values.get(key)
        if value is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and isinstance(value, int) and value >= 1
        else:
            ok = ok and math.isfinite(value) and value > 0
        if not ok:
            wanted = "an integer ≥ 1" if kind is int else "a positive number"
            raise InputError(f"{self.where[key]}: {key} must be {wanted}, got {value!r}")
        return kind(value)

    def agrees(self, key: str, found, what: str, origin: Path) -> None:
        """Refuse a ``key`` the config gives that the tensors contradict."""
        claimed = self.number(key) if key in self.values and key != "qk_norm" else self.get(key)
        if claimed is not None and claimed != found:
            raise InputError(f"{self.where[key]} says {key}={claimed!r} but {origin.name} has "
                             f"{found} ({what})")


def _need_config(kind: str, origin: Path, needs: list[str]) -> InputError:
    fitting = " or ".join(f"--preset {n}" for n, (k, _) in PRESETS.items() if k == kind)
    listed = ", ".join(needs[:-1]) + " and " + needs[-1] if len(needs) > 1 else needs[0]
    return InputError(f"{origin.name} is a state dict of the book's {kind}, which does not record "
                      f"{listed}: pass --book-config FILE.json (the config dict the model "
                      f"was built with, saved as JSON) or {fitting}")


def _rope_freq(cfg: _Config) -> tuple | None:
    freq = cfg.get("rope_freq")
    if freq is None:
        return None
    where = cfg.where["rope_freq"]
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_context_length")
    if not isinstance(freq, dict) or any(k not in freq for k in keys):
        raise InputError(f"{where}: rope_freq must be null or a dict with {', '.join(keys)}")
    for k in keys:
        value = freq[k]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise InputError(f"{where}: rope_freq.{k} must be a positive number, got {value!r}")
    if not freq["high_freq_factor"] > freq["low_freq_factor"]:
        raise InputError(f"{where}: rope_freq.high_freq_factor must exceed low_freq_factor")
    return ("llama3", *(freq[k] for k in keys))


def _llama_base(cfg: _Config, notes: list[str]) -> float:
    """``rope_base``, rescaled as the book's ``Llama3Model`` did (until June 2025) when the
    config has an ``orig_context_length`` that differs from ``context_length``."""
    base = cfg.number("rope_base", float)
    context = cfg.number("context_length")
    original = cfg.number("orig_context_length")
    if original is None or original == context:
        return base
    rescaled = base * (context / original)  # the book's rescale_theta, in its order
    # That code wrote the rescaled base back into the dict: a dict saved after the model was
    # built holds it already. Llama 3.x's published base is 500000.
    if base != 500_000.0 and base == 500_000.0 * (context / original):
        notes.append(f"rope_base {base:g} taken as already rescaled from Llama 3's 500000 by "
                     f"context_length/orig_context_length = {context}/{original} (the book's "
                     "Llama3Model writes the rescaled base back into its config dict)")
        return base
    notes.append(f"rope_base {base:g} rescaled to {rescaled:g} by context_length/"
                 f"orig_context_length = {context}/{original}, as the book's Llama3Model does")
    return rescaled


def _layer_types(cfg: _Config, n_layers: int) -> list[str]:
    types = cfg.get("layer_types")
    where = cfg.where["layer_types"]
    if not isinstance(types, list) or len(types) != n_layers:
        raise InputError(f"{where}: layer_types must list one type per layer ({n_layers} in the "
                         "state dict)")
    unknown = sorted({str(t) for t in types if t not in ("sliding_attention", "full_attention")})
    if unknown:
        raise InputError(f"{where}: layer_types {', '.join(map(repr, unknown))} not supported "
                         "(sliding_attention, full_attention)")
    return types


def _dtype(cfg: _Config) -> str | None:
    value = cfg.get("dtype")
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise InputError(f"{cfg.where['dtype']}: dtype must name a torch float type "
                         f"({', '.join(_DTYPES)}), got {value!r}")
    return name


# --- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sizes:
    vocab: int
    d: int
    n_layers: int
    hidden: int
    n_heads: int
    n_kv: int
    head_dim: int
    qk_norm: bool

    def as_config(self) -> dict:
        return {"vocab_size": self.vocab, "emb_dim": self.d, "n_layers": self.n_layers,
                "hidden_dim": self.hidden, "n_heads": self.n_heads, "n_kv_groups": self.n_kv,
                "head_dim": self.head_dim, "qk_norm": self.qk_norm}


def _sizes(kind: str, source: TensorSource, cfg: _Config, origin: Path) -> _Sizes:
    """What the shapes tell, checked against what the config claims; the head count from
    the config where the shapes cannot tell it."""
    prefix = _PREFIX[kind]

    def shape(key: str) -> tuple:
        if key not in source:
            raise InputError(f"{origin}: tensor {key} is missing; not a {kind} state dict?")
        return source.shape(key)

    vocab, d = shape("tok_emb.weight")
    n_layers = count_layers(source, prefix)
    if n_layers == 0:
        raise InputError(f"{origin}: no blocks ({prefix}0. …) found; not a {kind} state dict?")
    hidden = shape(f"{prefix}0.ff.fc1.weight")[0]
    q_rows, kv_rows = shape(f"{prefix}0.att.W_query.weight")[0], shape(f"{prefix}0.att.W_key.weight")[0]
    has_norm = f"{prefix}0.att.q_norm.scale" in source
    for key, found, what in (("vocab_size", vocab, "rows of tok_emb.weight"),
                             ("emb_dim", d, "columns of tok_emb.weight"),
                             ("n_layers", n_layers, "blocks"),
                             ("hidden_dim", hidden, f"rows of {prefix}0.ff.fc1.weight")):
        cfg.agrees(key, found, what, origin)
    if kind == "Llama3Model":  # head_dim = emb_dim // n_heads, whatever the config says
        n_heads = cfg.number("n_heads")
        if n_heads is None:
            raise InputError(f"{cfg.sources[-1]}: n_heads is missing (a Llama3Model state dict "
                             "does not record its head count)")
        if d % n_heads:
            raise InputError(f"{cfg.where['n_heads']}: n_heads={n_heads} does not divide "
                             f"emb_dim={d}")
        head_dim = d // n_heads
    else:
        if has_norm:
            head_dim = shape(f"{prefix}0.att.q_norm.scale")[0]
            cfg.agrees("head_dim", head_dim, f"the size of {prefix}0.att.q_norm.scale", origin)
        elif cfg.number("head_dim") is not None:
            head_dim = cfg.number("head_dim")
        elif cfg.number("n_heads") is not None:
            head_dim = d // cfg.number("n_heads")
        else:
            raise InputError(f"{cfg.sources[-1]}: n_heads or head_dim is missing ({origin.name} "
                             "has no q/k norms to tell head_dim)")
        if q_rows % head_dim:
            raise InputError(f"{origin}: {prefix}0.att.W_query.weight has {q_rows} rows, not a "
                             f"multiple of head_dim {head_dim}")
        n_heads = q_rows // head_dim
        cfg.agrees("n_heads", n_heads, f"{prefix}0.att.W_query.weight rows / head_dim "
                   f"{head_dim}", origin)
        if cfg.get("head_dim") is None and "n_heads" in cfg and d // n_heads != head_dim:
            raise InputError(f"{cfg.where['n_heads']}: head_dim is null, so emb_dim // n_heads = "
                             f"{d // n_heads}, but {origin.name} has head_dim {head_dim}")
        if "qk_norm" in cfg and cfg.get("qk_norm") is not None:
            if not isinstance(cfg.get("qk_norm"), bool):
                raise InputError(f"{cfg.where['qk_norm']}: qk_norm must be true or false")
            cfg.agrees("qk_norm", has_norm, "q/k norm tensors" if has_norm else "no q/k norms",
                       origin)
    if kv_rows % head_dim or not kv_rows:
        raise InputError(f"{origin}: {prefix}0.att.W_key.weight has {kv_rows} rows, not a "
                         f"multiple of head_dim {head_dim}")
    n_kv = kv_rows // head_dim
    cfg.agrees("n_kv_groups", n_kv, f"{prefix}0.att.W_key.weight rows / head_dim {head_dim}",
               origin)
    if n_heads % n_kv:
        raise InputError(f"{origin}: {n_kv} key/value groups do not divide {n_heads} heads")
    return _Sizes(vocab, d, n_layers, hidden, n_heads, n_kv, head_dim,
                  has_norm and kind != "Llama3Model")


_BUFFER = re.compile(r"^(?:trf_blocks\.\d+\.att\.)(mask|cos|sin)$")


def _check_tensors(kind: str, state: dict, sizes: _Sizes, origin: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the class there with its shape; nothing the class does not have (a
    mixture-of-experts MLP, biases); RMSNorm shifts only when zero (the forward has none).
    Returns block 0's RoPE tables when the file has them (``cos``, ``sin``: the book's
    ``Llama3Model`` kept them, and its mask, as persistent buffers until February 2025)."""
    tables = {}
    expected = state_dict_shapes(kind, sizes.as_config())
    optional = {"out_head.weight"}  # unused here (the attention never reaches it)
    for key, shape in expected.items():
        if key not in state:
            if key in optional:
                continue
            raise InputError(f"{origin}: tensor {key} is missing; not a {kind} state dict?")
        if tuple(state[key].shape) != shape:
            raise InputError(f"{origin}: tensor {key} has shape {tuple(state[key].shape)}, "
                             f"expected {shape}")
    for key, tensor in state.items():
        if key in expected:
            continue
        if kind == "Llama3Model" and (m := _BUFFER.match(key)):
            if key.startswith(f"{_PREFIX[kind]}0.") and m.group(1) != "mask":
                tables[m.group(1)] = tensor
            continue
        if re.search(r"\.ff\.(gate\.weight|fc\d\.\d+\.)", key):
            raise InputError(f"{origin}: tensor {key}: the book's mixture-of-experts "
                             f"{kind} is not supported")
        scale = key.removesuffix(".shift") + ".scale"
        if key.endswith(".shift") and scale in expected and tuple(tensor.shape) == expected[scale]:
            if torch.count_nonzero(tensor):
                raise InputError(f"{origin}: tensor {key}: an RMSNorm shift (bias) other than "
                                 "zero is not supported")
            continue
        raise InputError(f"{origin}: tensor {key} is not part of the book's {kind}")
    return tables


def _check_tables(tables: dict, rope: RopeSpec, cfg: _Config, origin: Path) -> None:
    """The RoPE tables an older ``Llama3Model`` saved, against those the config gives (to
    bfloat16's rounding: the book cast them to the model's dtype)."""
    if set(tables) != {"cos", "sin"}:
        return
    rows = tables["cos"].shape[0]
    cfg.agrees("context_length", rows, "rows of the RoPE table trf_blocks.0.att.cos", origin)
    n = min(rows, 8192)
    for name, table in zip(("cos", "sin"), rope.tables(n)):
        stored = tables[name][:n].float()
        if stored.shape != table.shape or not torch.allclose(stored, table, atol=1e-2, rtol=0):
            raise InputError(f"{origin}: the RoPE table trf_blocks.0.att.{name} it holds is not "
                             f"the one of rope_base={cfg.get('rope_base')!r} and rope_freq from "
                             f"{cfg.where['rope_base']}: not this model's config?")


def read(located: Located, kind: str, *, book_config=None, preset: str | None = None,
         tokenizer=None) -> Checkpoint:
    """Read a state dict of the book's ``kind`` (``detect``) with what its shapes tell and
    what ``book_config`` (a JSON file of the book's config keys) and/or ``preset`` (one of
    ``PRESETS``) give; ``tokenizer``: the tokenizer.json / tokenizer.model used with it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = located.weights[0]
    origin = located.origin
    state = _state(path)
    cfg = _Config(kind, book_config, preset, origin)
    needs = [k for k in _REQUIRED[kind] if k not in cfg]
    if not cfg.sources:
        what = {"context_length": "its context length", "rope_base": "its RoPE base",
                "rope_freq": "RoPE frequency scaling (rope_freq)",
                "rope_local_base": "the sliding layers' RoPE base",
                "layer_types": "which layers slide (layer_types, sliding_window)",
                "query_pre_attn_scalar": "its query scale (query_pre_attn_scalar)"}
        described_needs = [what[k] for k in needs]
        if kind == "Llama3Model":
            raise _need_config(kind, origin, ["its head count (n_heads)", *described_needs])
        raise _need_config(kind, origin, described_needs)
    source = DictSource(state, path)
    sizes = _sizes(kind, source, cfg, origin)
    if needs:
        raise InputError(f"{cfg.sources[-1]}: {', '.join(needs)} missing (a {kind} state dict "
                         "does not record them)")
    tables = _check_tensors(kind, state, sizes, origin)

    notes: list[str] = []
    taken = ["n_heads"] if kind == "Llama3Model" else []
    context = cfg.number("context_length")
    scale = sizes.head_dim ** -0.5
    if kind == "Llama3Model":
        taken += ["rope_base", "rope_freq", "context_length"]
        taken += ["orig_context_length"] if "orig_context_length" in cfg else []
        base = _llama_base(cfg, notes)
        rope = (BookRope(base, sizes.head_dim, _rope_freq(cfg)) if cfg.get("rope_freq") is not None
                else RopeSpec(base, sizes.head_dim))
        _check_tables(tables, rope, cfg, origin)
        layers = [LayerSpec(scale=scale, rope=rope) for _ in range(sizes.n_layers)]
    elif kind == "Qwen3Model":
        taken += ["rope_base", "context_length"]
        rope = RopeSpec(cfg.number("rope_base", float), sizes.head_dim)
        layers = [LayerSpec(scale=scale, rope=rope, qk_norm=sizes.qk_norm)
                  for _ in range(sizes.n_layers)]
    else:
        types = _layer_types(cfg, sizes.n_layers)
        taken += ["rope_base", "rope_local_base", "layer_types", "query_pre_attn_scalar",
                  "context_length"]
        window = None
        if "sliding_attention" in types:
            window = cfg.number("sliding_window")
            if window is None:
                raise InputError(f"{cfg.sources[-1]}: sliding_window is missing (layer_types has "
                                 "sliding layers)")
            taken.append("sliding_window")
        scalar = cfg.number("query_pre_attn_scalar", float)
        scale = scalar ** -0.5 if scalar is not None else scale
        ropes = {"full_attention": RopeSpec(cfg.number("rope_base", float), sizes.head_dim),
                 "sliding_attention": RopeSpec(cfg.number("rope_local_base", float), sizes.head_dim)}
        layers = [LayerSpec(scale=scale, rope=ropes[t], qk_norm=sizes.qk_norm,
                            window=window if t == "sliding_attention" else None) for t in types]
    stored = str(state["tok_emb.weight"].dtype).removeprefix("torch.")
    book_dtype = _dtype(cfg)
    tied = "out_head.weight" not in state or (
        state["out_head.weight"].data_ptr() == state["tok_emb.weight"].data_ptr())
    spec = ModelSpec(
        family=_FAMILIES[kind], n_layers=sizes.n_layers, d_model=sizes.d, n_heads=sizes.n_heads,
        n_kv_heads=sizes.n_kv, head_dim=sizes.head_dim, vocab_size=sizes.vocab,
        context_length=context, mlp_width=sizes.hidden, layers=tuple(layers), positions="rope",
        norm="rmsnorm", norm_eps=_EPS[kind], activation=_ACTIVATION[kind], gated_mlp=True,
        qkv_bias=False, out_bias=False, mlp_bias=False, tied_embeddings=tied,
        sandwich_norms=kind == "Gemma3Model", dtype=stored,
        extra={"query_pre_attn_scalar": cfg.get("query_pre_attn_scalar")}
        if kind == "Gemma3Model" else {},
    )
    label = " over ".join(reversed(cfg.sources))
    shown = ", ".join(f"{k}={cfg.get(k)!r}" for k in taken if k != "layer_types")
    if "layer_types" in taken:
        shown += f", layer_types ({sum(t == 'sliding_attention' for t in types)} sliding, "
        shown += f"{sum(t == 'full_attention' for t in types)} full)"
    notes.insert(0, f"{kind} state dict: {shown} from {label} (a state dict does not record them)")
    tok = _tokenizer(located, tokenizer, kind, notes)
    check_vocabularies(tok, sizes.vocab)
    for note in notes:
        warnings.warn(note, AttnvizWarning, stacklevel=3)
    weights = BookWeights(source, spec, kind)
    described = {"mode": "pretrained", "weights": str(origin), "layout": LAYOUTS[kind],
                 "book_class": kind, "book_config": label, **spec.describe(),
                 "parameters": weights.parameters(), "tokenizer": tok.describe(),
                 "notes": list(notes)}
    if book_dtype is not None:
        described["book_dtype"] = book_dtype  # what the book's code ran in; attnviz: float32
    return Checkpoint(spec=spec, weights=weights, source=origin, described=described,
                      tokenizer=tok, layout=LAYOUTS[kind], notes=notes)


def _tokenizer(located: Located, path, kind: str, notes: list[str]):
    """``--tokenizer PATH``, else a tokenizer beside the state dict (said), else the error
    that asks for ``--tokenizer``: a state dict holds none."""
    if path is not None:
        return tokenization.load_tokenizer(Path(path))
    found = tokenization.find_tokenizer(located.weights[0].parent)
    if found is None:
        raise InputError(f"{located.origin.name} is a state dict of the book's {kind}, which holds "
                         "no tokenizer: pass --tokenizer PATH (the tokenizer.json, or Llama 3's "
                         "tokenizer.model, used with the book's code)")
    notes.append(f"tokenizer {found} (beside the state dict; --tokenizer PATH chooses another)")
    return tokenization.load_tokenizer(found)


class BookWeights(WeightMap):
    """The book's names (``trf_blocks.N.att.W_query.weight``, ``blocks.N.input_layernorm.scale``
    …; already ``(out, in)``) -> the forward's. Gemma 3's zero-centred norm weights become
    ``1 + scale`` (float32) and its embeddings are multiplied by ``emb_dim ** 0.5``."""

    def __init__(self, tensors: DictSource, spec: ModelSpec, kind: str):
        super().__init__(tensors)
        self.spec, self.kind = spec, kind
        self.names = _block_names(kind, any(layer.qk_norm for layer in spec.layers))
        self.prefix = _PREFIX[kind]

    def block(self, layer: int, mlp: bool = True) -> dict[str, torch.Tensor]:
        out = {}
        for ours, theirs in self.names.items():
            if mlp or ours.startswith(("norm1.", "attn.")):
                tensor = self.tensors.get(f"{self.prefix}{layer}.{theirs}")
                out[ours] = 1.0 + tensor if self.kind == "Gemma3Model" and "norm" in ours else tensor
        return out

    def final_norm(self) -> dict[str, torch.Tensor] | None:
        name = next((k for k in ("final_norm.weight", "final_norm.scale") if k in self.tensors), None)
        if name is None:
            return None
        weight = self.tensors.get(name)
        return {"weight": 1.0 + weight if self.kind == "Gemma3Model" else weight}

    def unembedding(self) -> torch.Tensor | None:
        key = "out_head.weight" if "out_head.weight" in self.tensors else "tok_emb.weight"
        return self.tensors.get(key)

    def embed(self, token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        b, t = token_ids.shape
        table = self.tensors.tensors["tok_emb.weight"]  # rows first: a bf16 table stays bf16
        rows = table[token_ids.reshape(-1)].float().reshape(b, t, -1)  # (B, T, d)
        if not torch.isfinite(rows).all():
            raise InputError(f"{self.tensors.origin}: tensor tok_emb.weight holds NaN or "
                             "infinite values")
        if self.kind == "Gemma3Model":
            rows = rows * (self.spec.d_model ** 0.5)  # the book: a Python float, in float32 here
        return rows
