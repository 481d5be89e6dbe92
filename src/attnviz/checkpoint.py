"""Safe loading of GPT-2 checkpoints in the Hugging Face layout. Loading never runs code.

Accepted: a directory with ``config.json`` and ``model.safetensors`` (or
``pytorch_model.bin``, read with ``torch.load(weights_only=True)``); a single
``.safetensors`` file, whose tensor shapes give the configuration; or a bare model name
such as ``gpt2``, looked up in the local Hugging Face cache (never downloaded).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from attnviz.config import GPT2_VOCAB_SIZE
from attnviz.errors import InputError

_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}
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
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    n_inner: int
    vocab_size: int = GPT2_VOCAB_SIZE
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class Checkpoint:
    config: GPT2Config
    tensors: dict[str, torch.Tensor]  # keys without the "transformer." prefix, float32
    source: Path

    def describe(self) -> dict:
        """The configuration in attnviz's terms, as shown by ``info`` and in results."""
        cfg = self.config
        return {"mode": "pretrained", "weights": str(self.source), "n_layers": cfg.n_layer,
                "n_heads": cfg.n_head, "d_model": cfg.n_embd, "head_dim": cfg.head_dim,
                "context_length": cfg.n_positions, "vocab_size": cfg.vocab_size,
                "mlp_width": cfg.n_inner, "qkv_bias": True,
                "parameters": sum(t.numel() for t in self.tensors.values())}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Parse a .safetensors file (8-byte header size, JSON header, raw little-endian data)."""
    try:
        data = bytearray(path.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    bad = f"{path} is not a valid safetensors file"
    if len(data) < 8:
        raise InputError(f"{bad} (only {len(data)} bytes)")
    (header_len,) = struct.unpack_from("<Q", data)
    if header_len > len(data) - 8:
        raise InputError(f"{bad} (truncated or corrupt header)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{bad} (corrupt header)") from exc
    if not isinstance(header, dict):
        raise InputError(f"{bad} (corrupt header)")
    header.pop("__metadata__", None)
    body = 8 + header_len
    tensors = {}
    for name, info in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            start, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{bad} (tensor {name}: unsupported dtype or bad entry)") from exc
        count = 1
        for n in shape:
            count *= n
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= start <= end <= len(data) - body or end - start != count * itemsize:
            raise InputError(f"{bad} (tensor {name}: data out of range; truncated file?)")
        tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=body + start)
        tensors[name] = tensor.reshape(shape).float()
    return tensors


def read_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; we refuse or load
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"refusing to load {path}: it is not a plain tensor file (it would run code when "
            "unpickled); convert it to .safetensors"
        ) from exc
    except Exception as exc:  # torch raises a variety of errors for corrupt files
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return {k: v.float() for k, v in state.items()}


def hf_cache_snapshot(name: str) -> Path | None:
    """The newest local snapshot of Hugging Face model ``name`` (e.g. ``gpt2``), if any."""
    if os.environ.get("HF_HUB_CACHE"):
        hub = Path(os.environ["HF_HUB_CACHE"])
    elif os.environ.get("HF_HOME"):
        hub = Path(os.environ["HF_HOME"]) / "hub"
    else:
        hub = Path.home() / ".cache" / "huggingface" / "hub"
    repo = hub / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def resolve(weights: str) -> tuple[Path, Path | None]:
    """``(weights file, config.json or None)`` for what the user passed to ``--weights``."""
    path = Path(weights).expanduser()
    if not path.exists():
        snapshot = None
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", weights) and not weights.endswith(
            (".safetensors", ".bin")
        ):
            snapshot = hf_cache_snapshot(weights)
        if snapshot is None:
            raise InputError(
                f"--weights {weights}: no such file or directory, and no local Hugging Face "
                f"cache of it; download once elsewhere (huggingface-cli download {weights}) "
                "and copy the folder here, or pass the folder's path (see docs/pretrained.md)"
            )
        path = snapshot
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                config = path / "config.json"
                return path / name, config if config.is_file() else None
        raise InputError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    config = path.parent / "config.json"
    return path, config if config.is_file() else None


def _normalise_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key.startswith("lm_head."):
            continue  # causal-mask buffers and the (tied) output head: not needed
        out[key] = value
    return out


def _read_config_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path} is not a JSON object")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("reorder_and_upcast_attn"):
        raise InputError(f"{path}: GPT-2 variants with scaled/reordered attention are not supported")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InputError(f"{path}: activation_function {activation!r} is not GPT-2's tanh GELU")
    return raw


def _expect(tensors: dict, key: str, shape: tuple, source: Path) -> None:
    if key not in tensors:
        raise InputError(f"{source}: tensor {key} is missing; not a GPT-2 checkpoint?")
    if tuple(tensors[key].shape) != shape:
        raise InputError(
            f"{source}: tensor {key} has shape {tuple(tensors[key].shape)}, expected {shape}"
        )


def load(weights: str) -> Checkpoint:
    """Load and validate a GPT-2 checkpoint (see the module docstring for what ``weights`` is)."""
    weights_file, config_file = resolve(weights)
    if weights_file.suffix == ".safetensors":
        tensors = read_safetensors(weights_file)
    else:
        tensors = read_pytorch_bin(weights_file)
    tensors = _normalise_keys(tensors)
    for key in ("wte.weight", "wpe.weight"):
        if key not in tensors or tensors[key].dim() != 2:
            raise InputError(f"{weights_file}: tensor {key} is missing; not a GPT-2 checkpoint?")
    vocab_size, n_embd = tensors["wte.weight"].shape
    if vocab_size != GPT2_VOCAB_SIZE:
        raise InputError(
            f"{weights_file}: tensor wte.weight has {vocab_size} rows; attnviz needs GPT-2's "
            f"{GPT2_VOCAB_SIZE}-token vocabulary"
        )
    n_layer = len({int(m.group(1)) for k in tensors if (m := _LAYER_KEY.match(k))})
    raw = _read_config_json(config_file) if config_file else {}
    n_head = raw.get("n_head", max(1, n_embd // 64))  # GPT-2's head size is 64
    n_inner = tensors.get("h.0.mlp.c_fc.weight", torch.empty(0, 4 * n_embd)).shape[-1]
    config = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=tensors["wpe.weight"].shape[0],
        n_inner=n_inner,
        layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
    )
    claimed = {k: raw[k] for k in ("n_layer", "n_embd", "n_positions", "vocab_size") if k in raw}
    for key, value in claimed.items():
        if value != getattr(config, key):
            raise InputError(
                f"{config_file} says {key}={value} but the weights have {getattr(config, key)}"
            )
    if not isinstance(n_head, int) or n_head < 1 or n_embd % n_head:
        raise InputError(f"{config_file}: n_head={n_head} does not divide n_embd={n_embd}")
    if n_layer == 0:
        raise InputError(f"{weights_file}: no transformer blocks (h.0...) found")
    _expect(tensors, "wpe.weight", (config.n_positions, n_embd), weights_file)
    for i in range(n_layer):
        for name, shape in _BLOCK_SHAPES.items():
            _expect(tensors, f"h.{i}.{name}", shape(n_embd, n_inner), weights_file)
    for key, value in tensors.items():
        if not torch.isfinite(value).all():
            raise InputError(f"{weights_file}: tensor {key} holds NaN or infinite values")
    return Checkpoint(config=config, tensors=tensors, source=weights_file)
