"""What the readers of Hugging Face layouts share: typed config fields, the tensor source
of the located files, the tensors' stored dtype, the checkpoint's own tokenizer, and the
shape checks of a weight map."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from attnviz.core.errors import InputError
from attnviz.models.resolve import Located
from attnviz.models.sources import DictSource, SafetensorsSource, TensorSource, read_state_dict
from attnviz.text import tokenization

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def field(raw: dict, name: str, where: Path, kind=int, default=None, minimum: int | None = 1):
    """``raw[name]`` (or ``default``) checked to be a ``kind``: an int ≥ ``minimum``, a
    positive float, or a bool (null counts as missing). A missing field without a default
    is an error."""
    value = raw.get(name)
    value = default if value is None else value
    if value is None:
        if default is None and minimum is not None:
            raise InputError(f"{where}: {name} is missing")
        return None
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)
                        or (minimum is not None and value < minimum)):
        raise InputError(f"{where}: {name} must be an integer ≥ {minimum}, got {value!r}")
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                          or not value > 0):
        raise InputError(f"{where}: {name} must be a positive number, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise InputError(f"{where}: {name} must be true or false, got {value!r}")
    return kind(value)


def check_layer_types(types, n_layers: int, where: Path) -> None:
    """``layer_types`` (transformers' per-layer attention kinds) that attnviz computes."""
    if not isinstance(types, list) or len(types) != n_layers:
        raise InputError(f"{where}: layer_types must list one type per layer ({n_layers})")
    unknown = sorted({t for t in types if t not in ("full_attention", "sliding_attention")})
    if unknown:
        raise InputError(f"{where}: layer_types {', '.join(map(repr, unknown))} not supported "
                         "(full_attention, sliding_attention)")


def open_source(located: Located, rename: Callable[[str], str | None]) -> TensorSource:
    """The located safetensors (lazily), GGUF file (its tensors under Hugging Face's names,
    dequantized when read) or ``pytorch_model.bin`` (``weights_only``), under the reader's
    names."""
    first = located.weights[0]
    if located.gguf is not None or first.suffix == ".gguf":
        from attnviz.models.gguf_reader import gguf_source  # imports gguf

        return gguf_source(located).renamed(rename)
    if first.suffix == ".safetensors":
        return SafetensorsSource(located.weights, rename)
    state = read_state_dict(first)
    return DictSource({n: v for k, v in state.items() if (n := rename(k)) is not None}, first)


def stored_dtype(source: TensorSource, key: str, raw: dict) -> str:
    """How ``key`` is stored (bfloat16, float16, float32): attnviz computes in float32."""
    if isinstance(source, SafetensorsSource):
        return _DTYPES.get(source.dtype(key), source.dtype(key))
    return source.dtype(key) or str(raw.get("dtype") or raw.get("torch_dtype") or "float32")


def own_tokenizer(located: Located, path, *, fallback=None):
    """``--tokenizer PATH`` when given, else the tokenizer beside the checkpoint, else
    ``fallback()`` (GPT-Neo: GPT-2's), else an error that says ``--tokenizer``. A
    ``Tokenizer`` already read (a GGUF file's own) is taken as it is."""
    if isinstance(path, tokenization.Tokenizer):
        return path
    if path is not None:
        return tokenization.load_tokenizer(Path(path))
    folder = (located.config or located.weights[0]).parent
    found = tokenization.find_tokenizer(folder)
    if found is not None:
        return tokenization.load_tokenizer(found)
    if fallback is not None:
        return fallback()
    raise InputError(f"{folder} has no tokenizer (tokenizer.json, tokenizer.model, spiece.model or "
                     "Marian's source.spm); pass --tokenizer PATH with the model's own")


def check_vocabularies(tokenizer, rows: int) -> None:
    if tokenizer.vocab_size > rows:
        raise InputError(f"the tokenizer ({tokenizer.source}) has {tokenizer.vocab_size} tokens but "
                         f"the embedding only {rows} rows: they are not of one model (see --tokenizer)")


def check_shapes(source: TensorSource, shapes: dict[str, tuple], origin: Path,
                 shown: Callable[[str], str] = lambda key: key) -> None:
    """Every tensor of ``shapes`` is there with that shape (``shown``: the file's name)."""
    for key, shape in shapes.items():
        if key not in source:
            raise InputError(f"{origin}: tensor {shown(key)} is missing")
        if source.shape(key) != shape:
            raise InputError(f"{origin}: tensor {shown(key)} has shape {source.shape(key)}, "
                             f"expected {shape}")


def count_layers(source: TensorSource, prefix: str) -> int:
    """How many blocks ``prefix + "N."`` the tensors hold."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for k in source if (m := pattern.match(k))})


def hf_checkpoint(located: Located, spec, weights, tokenizer_path, *, fallback=None,
                  extra: dict | None = None, notes: list[str] = ()):
    """The ``Checkpoint`` of a Hugging Face layout: its own tokenizer (``own_tokenizer``),
    checked against the embedding, and the description ``info`` and every result show."""
    from attnviz.models.checkpoint import Checkpoint

    tok = own_tokenizer(located, tokenizer_path, fallback=fallback)
    check_vocabularies(tok, spec.vocab_size)
    described = {"mode": "pretrained", "weights": str(located.origin), "layout": "huggingface",
                 **spec.describe(), **(extra or {}), "parameters": weights.parameters(),
                 "tokenizer": tok.describe()}
    if notes:
        described["notes"] = list(notes)
    return Checkpoint(spec=spec, weights=weights, source=located.origin, described=described,
                      tokenizer=tok, notes=list(notes))
