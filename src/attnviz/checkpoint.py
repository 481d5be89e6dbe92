"""GPT-2-family checkpoints: one resolver in front of a few readers, each mapping what it
reads to one description of the model (``GPT2Config`` + a lazy ``TensorSource`` in Hugging
Face's tensor names). Loading never runs code.

Resolution of ``--weights NAME`` (``resolve``): an existing path first — a folder, a
``.safetensors`` file (single or the ``model.safetensors.index.json`` of shards), a
``pytorch_model.bin`` or the ``.pth`` of the book's ``GPTModel`` —, else a Hugging Face repo
id taken from the local cache or downloaded (``attnviz.hub``, safetensors only).

Readers:
- Hugging Face layout: ``config.json`` + safetensors (read lazily with ``safe_open``: only
  the tensors of the blocks asked for) or ``pytorch_model.bin`` (``weights_only=True``);
- the book's ``GPTModel`` state dict (*Build a Large Language Model (From Scratch)*, ch. 4-5):
  ``tok_emb``, ``pos_emb``, ``trf_blocks.N.att.W_query`` …, read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnviz.config import GPT2_VOCAB_SIZE
from attnviz.errors import AttnvizWarning, InputError

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
# Activation functions transformers' GPT-2 accepts (ACT2FN) that attnviz computes exactly.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "swish": torch.nn.functional.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
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


class TensorSource:
    """Named tensors in Hugging Face's names (``wte.weight``, ``h.0.attn.c_attn.weight``),
    read on demand: ``shape`` never reads data, ``get`` reads one tensor as float32."""

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, key: str, indices: list[int]) -> torch.Tensor:
        """``get(key)[indices]``, reading only those rows where the format allows."""
        return self.get(key)[indices]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())


class DictSource(TensorSource):
    def __init__(self, tensors: dict[str, torch.Tensor], origin: Path):
        self.tensors, self.origin = tensors, origin

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return _finite(self.tensors[key].float(), key, self.origin)


class SafetensorsSource(TensorSource):
    """One or more safetensors files (shards), opened with ``safe_open``: the header is
    read at once, each tensor's bytes only when asked for (memory-mapped)."""

    def __init__(self, files: list[Path]):
        from safetensors import SafetensorError, safe_open

        self.handles, self.where = [], {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="pt")
                names = list(handle.keys())
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise InputError(f"{path} is not a valid safetensors file ({_first_line(exc)})") from None
            self.handles.append((path, handle))
            for name in names:
                if (key := _hf_name(name)) is not None:
                    self.where[key] = (len(self.handles) - 1, name)

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def shape(self, key: str) -> tuple[int, ...]:
        index, name = self.where[key]
        return tuple(self.handles[index][1].get_slice(name).get_shape())

    def get(self, key: str) -> torch.Tensor:
        from safetensors import SafetensorError

        index, name = self.where[key]
        path, handle = self.handles[index]
        try:
            tensor = handle.get_tensor(name)
        except (SafetensorError, RuntimeError, ValueError) as exc:
            raise InputError(f"{path} is not a valid safetensors file (tensor {name}: "
                             f"{_first_line(exc)})") from None
        if not tensor.is_floating_point():
            raise InputError(f"{path}: tensor {name} holds {tensor.dtype}, not floating point")
        return _finite(tensor.float(), key, path)  # fp16/bf16 upcast; float32 stays as is

    def rows(self, key: str, indices: list[int]) -> torch.Tensor:
        """Only the rows asked for (an embedding table of gpt2-xl is 320 MB; a text uses
        a few hundred of its 50257 rows)."""
        from safetensors import SafetensorError

        index, name = self.where[key]
        path, handle = self.handles[index]
        table = handle.get_slice(name)
        unique = sorted(set(indices))
        try:
            parts = [table[i : i + 1] for i in unique]
        except (SafetensorError, RuntimeError, ValueError) as exc:
            raise InputError(f"{path} is not a valid safetensors file (tensor {name}: "
                             f"{_first_line(exc)})") from None
        picked = torch.cat(parts).float() if parts else torch.empty(0, table.get_shape()[1])
        position = {row: i for i, row in enumerate(unique)}
        return _finite(picked[[position[i] for i in indices]], key, path)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _finite(tensor: torch.Tensor, key: str, origin: Path) -> torch.Tensor:
    # One reduction pass, ~5x faster than isfinite().all(): a NaN anywhere makes both ends
    # NaN, an infinity is one of the ends.
    ends = torch.aminmax(tensor) if tensor.numel() else None
    if ends is not None and not (torch.isfinite(ends.min) and torch.isfinite(ends.max)):
        raise InputError(f"{origin}: tensor {key} holds NaN or infinite values")
    return tensor


def _hf_name(key: str) -> str | None:
    """Hugging Face's tensor name without the ``transformer.`` prefix of GPT2LMHeadModel;
    None for what attnviz never needs (causal-mask buffers, the tied output head)."""
    key = key.removeprefix("transformer.")
    if key.endswith((".attn.bias", ".attn.masked_bias")) or key.startswith("lm_head."):
        return None
    return key


@dataclass
class Checkpoint:
    config: GPT2Config
    tensors: TensorSource
    source: Path
    layout: str = "huggingface"  # or "book" (the GPTModel of Build a LLM From Scratch)
    notes: list[str] = field(default_factory=list)  # what was assumed, for the user

    def describe(self) -> dict:
        """The configuration in attnviz's terms, as shown by ``info`` and in results."""
        cfg = self.config
        described = {
            "mode": "pretrained", "weights": str(self.source), "layout": self.layout,
            "n_layers": cfg.n_layer, "n_heads": cfg.n_head, "d_model": cfg.n_embd,
            "head_dim": cfg.head_dim, "context_length": cfg.n_positions,
            "vocab_size": cfg.vocab_size, "mlp_width": cfg.n_inner, "qkv_bias": cfg.qkv_bias,
            "activation_function": cfg.activation_function,
            "layer_norm_epsilon": cfg.layer_norm_epsilon,
            "scale_attn_weights": cfg.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
            "n_heads_assumed": cfg.n_head_assumed,
            "parameters": sum(math.prod(self.tensors.shape(k)) for k in self.tensors),
        }
        if self.notes:
            described["notes"] = list(self.notes)
        return described


# --- resolution: path -> local cache -> Hub ------------------------------------------------

@dataclass(frozen=True)
class Located:
    """The files of a checkpoint on disk."""

    weights: list[Path]  # one file, or the shards of an index
    config: Path | None  # config.json, when there is one
    origin: Path  # what to name in messages


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")


def resolve(weights: str, *, offline: bool = False, quiet: bool = True) -> Located:
    """Where the files of ``--weights weights`` are: an existing path, else a Hub repo id
    (``gpt2``, ``org/name``, ``name@revision``) from the cache or downloaded."""
    path = Path(weights).expanduser()
    if path.exists():
        return _locate_path(path)
    looks_like_path = weights.endswith((".safetensors", ".bin", ".pth", ".pt", ".json")) or (
        weights.startswith((".", "/", "~")) or weights.count("/") > 1
    )
    if looks_like_path or not _REPO_ID.fullmatch(weights):
        raise InputError(f"--weights {weights}: no such file or directory (nor a Hugging Face "
                         "repo id such as gpt2 or org/name)")
    from attnviz import hub

    return _locate_path(hub.fetch(weights, offline=offline, quiet=quiet))


def _locate_path(path: Path) -> Located:
    if path.is_dir():
        config = path / "config.json"
        config = config if config.is_file() else None
        index = path / "model.safetensors.index.json"
        if index.is_file():
            return Located(_shards(index), config, index)
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return Located([path / name], config, path / name)
        found = sorted(p.name for p in path.glob("*.safetensors")) + sorted(
            p.name for p in path.glob("*.pth"))
        hint = f"; pass one of its files: {', '.join(found[:3])}" if found else ""
        raise InputError(f"{path} has neither model.safetensors nor pytorch_model.bin{hint}")
    if path.name.endswith(".index.json"):
        config = path.parent / "config.json"
        return Located(_shards(path), config if config.is_file() else None, path)
    config = path.parent / "config.json"
    use_config = config.is_file() and path.suffix in (".safetensors", ".bin")
    return Located([path], config if use_config else None, path)


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as exc:
        raise InputError(f"{index} is not a valid safetensors index ({type(exc).__name__})") from None
    paths = [index.parent / name for name in files]
    for p in paths:
        if Path(p.name) != Path(str(p.relative_to(index.parent))) or not p.is_file():
            raise InputError(f"{index} names the shard {p.name}, which is not beside it")
    return paths


# --- readers -------------------------------------------------------------------------------

def _torch_load(path: Path) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; we refuse or load
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise InputError(
                f"refusing to load {path}: it holds Python objects that would run code when "
                "unpickled, not only tensors; convert it to .safetensors"
            ) from None
        raise InputError(f"{path} is not a readable PyTorch checkpoint (not a pickle)") from None
    except Exception as exc:  # torch raises a variety of errors for corrupt files
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = _torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]  # the book's training checkpoints (ch. 5)
    if not isinstance(state, dict) or not state or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return state


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


def _read_config_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path} is not a JSON object")
    model_type = raw.get("model_type", "gpt2")
    if model_type != "gpt2":
        arch = ", ".join(raw.get("architectures") or []) or model_type
        raise InputError(f"{path}: model_type {model_type!r} ({arch}) is not a GPT-2 architecture; "
                         "attnviz reads GPT-2-family checkpoints only")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise InputError(f"{path}: activation_function {activation!r} is not supported "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    # Every other field of transformers' GPT2Config is inert for attention in inference
    # (dropout rates, initialisation, generation and task-head settings): see docs/pretrained.md.
    for key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if not isinstance(raw.get(key, False), bool):
            raise InputError(f"{path}: {key} must be true or false, got {raw[key]!r}")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise InputError(f"{path}: layer_norm_epsilon must be a small positive number, got {eps!r}")
    return raw


def load(weights: str, *, n_heads: int | None = None, offline: bool = False,
         quiet: bool = True) -> Checkpoint:
    """Resolve, read the headers and validate a checkpoint; tensors stay on disk until a
    block is built (see ``TensorSource``). ``n_heads`` is used when the checkpoint cannot
    tell (a lone .safetensors file, the book's GPTModel); otherwise it must agree."""
    located = resolve(weights, offline=offline, quiet=quiet)
    origin, first = located.origin, located.weights[0]
    layout = "huggingface"
    if first.suffix == ".safetensors":
        source: TensorSource = SafetensorsSource(located.weights)
        keys = source.keys()
        if _is_book_layout(keys):
            raise InputError(f"{first}: a GPTModel state dict saved as safetensors; save it with "
                             "torch.save(model.state_dict(), 'model.pth') and pass that")
    else:
        state = _state_dict(first)
        if _is_book_layout(state):
            layout = "book"
            source = DictSource(_from_book(state, first), first)
        else:
            source = DictSource({n: v for k, v in state.items() if (n := _hf_name(k))}, first)
        keys = source.keys()
    raw = _read_config_json(located.config) if located.config and layout == "huggingface" else {}
    for key in ("wte.weight", "wpe.weight"):
        if key not in keys or len(source.shape(key)) != 2:
            raise InputError(f"{origin}: tensor {key} is missing; not a GPT-2 checkpoint?")
    vocab_size, n_embd = source.shape("wte.weight")
    if vocab_size != GPT2_VOCAB_SIZE:
        raise InputError(f"{origin}: tensor wte.weight has {vocab_size} rows; attnviz needs "
                         f"GPT-2's {GPT2_VOCAB_SIZE}-token vocabulary")
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
        n_inner=n_inner, layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
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
    for i in range(n_layer):
        for name, shape in _BLOCK_SHAPES.items():
            if name == "attn.c_attn.bias" and not qkv_bias:
                continue
            _expect(source, f"h.{i}.{name}", shape(n_embd, n_inner), origin)
    for note in notes:
        warnings.warn(note, AttnvizWarning, stacklevel=2)
    return Checkpoint(config=config, tensors=source, source=origin, layout=layout, notes=notes)


def _expect(source: TensorSource, key: str, shape: tuple, origin: Path) -> None:
    if key not in source:
        raise InputError(f"{origin}: tensor {key} is missing; not a GPT-2 checkpoint?")
    if source.shape(key) != shape:
        raise InputError(f"{origin}: tensor {key} has shape {source.shape(key)}, expected {shape}")
