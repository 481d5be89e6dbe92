"""The model layer: one description of a decoder-only model (``spec``), one forward pass
(``forward``), and one reader per checkpoint layout mapping onto them.

``load(weights)`` resolves ``--weights`` (path -> local cache -> Hub, ``resolve``), reads the
config's ``model_type`` and hands the files to that family's reader, which returns a
``Checkpoint``: the spec, the tensors under the forward's names, and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from attnviz.errors import InputError
from attnviz.models.checkpoint import Checkpoint
from attnviz.models.resolve import read_config, resolve

# model_type -> the module of its reader (imported when used)
READERS = {
    "gpt2": "attnviz.models.gpt2_reader",
    "llama": "attnviz.models.llama_reader",
    "mistral": "attnviz.models.llama_reader",
    "qwen2": "attnviz.models.llama_reader",
    "qwen3": "attnviz.models.llama_reader",
    "smollm3": "attnviz.models.llama_reader",
}
SUPPORTED = tuple(READERS)


def check_model_type(model_type, where: str) -> str:
    """``model_type`` when attnviz reads it; otherwise the one-line refusal."""
    if model_type not in READERS:
        raise InputError(f"{where}: model_type {model_type!r} is not supported; attnviz reads "
                         f"{', '.join(SUPPORTED)}")
    return model_type


def load(weights: str, *, n_heads: int | None = None, offline: bool = False,
         quiet: bool = True, tokenizer: str | Path | None = None) -> Checkpoint:
    """Resolve, read the headers and validate a checkpoint; tensors stay on disk until a
    block is built. ``n_heads``: for files that do not record the head count (GPT-2's
    lone .safetensors, the book's GPTModel). ``tokenizer``: a tokenizer.json / tokenizer.model
    (or its folder) for a checkpoint that has none, or to use instead of its own."""
    import importlib

    located = resolve(weights, offline=offline, quiet=quiet)
    raw = read_config(located.config) if located.config else {}
    model_type = check_model_type(raw.get("model_type", "gpt2"), str(located.config))
    reader = importlib.import_module(READERS[model_type])
    return reader.read(located, raw, n_heads=n_heads, tokenizer=tokenizer)
