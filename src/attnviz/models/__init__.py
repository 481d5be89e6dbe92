"""The model layer: one description of a decoder-only model (``spec``), one forward pass
(``forward``), and one reader per checkpoint layout mapping onto them.

``load(weights)`` resolves ``--weights`` (path -> local cache -> Hub, ``resolve``), reads the
config's ``model_type`` and hands the files to that family's reader, which returns a
``Checkpoint``: the spec, the tensors under the forward's names, and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from attnviz.core.errors import InputError
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
    "gpt_neox": "attnviz.models.neox_reader",
    "gpt_neo": "attnviz.models.neo_reader",
    "gemma2": "attnviz.models.gemma_reader",
    "gemma3_text": "attnviz.models.gemma_reader",
    "gemma3": "attnviz.models.gemma_reader",  # multimodal: its text tower
}
SUPPORTED = tuple(READERS)


def check_model_type(model_type, where: str) -> str:
    """``model_type`` when attnviz reads it; otherwise the one-line refusal."""
    if model_type not in READERS:
        raise InputError(f"{where}: model_type {model_type!r} is not supported; attnviz reads "
                         f"{', '.join(SUPPORTED)}")
    return model_type


def load(weights: str, *, n_heads: int | None = None, offline: bool = False,
         quiet: bool = True, tokenizer: str | Path | None = None,
         book_config: str | Path | None = None, preset: str | None = None) -> Checkpoint:
    """Resolve, read the headers and validate a checkpoint; tensors stay on disk until a
    block is built. ``n_heads``: for files that do not record the head count (GPT-2's
    lone .safetensors, the book's GPTModel). ``tokenizer``: a tokenizer.json / tokenizer.model
    (or its folder) for a checkpoint that has none, or to use instead of its own.
    ``book_config`` / ``preset``: what a state dict of the book's Llama3Model, Qwen3Model or
    Gemma3Model does not record (``--book-config cfg.json``, ``--preset llama3.2-1b``)."""
    import importlib

    located = resolve(weights, offline=offline, quiet=quiet)
    if located.config is None and located.weights[0].suffix in (".pth", ".pt"):
        from attnviz.models import book_reader

        kind = book_reader.detect(located.weights[0])
        if kind is not None:  # one of the book's ch. 5 bonus classes (not its GPTModel)
            return book_reader.read(located, kind, book_config=book_config, preset=preset,
                                    tokenizer=tokenizer)
    raw = read_config(located.config) if located.config else {}
    model_type = check_model_type(raw.get("model_type", "gpt2"), str(located.config))
    reader = importlib.import_module(READERS[model_type])
    checkpoint = reader.read(located, raw, n_heads=n_heads, tokenizer=tokenizer)
    if located.revision is not None:  # a training checkpoint (Pythia's step3000): say which
        checkpoint.described |= {"repo": located.repo, "revision": located.revision}
    return checkpoint
