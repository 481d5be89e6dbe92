"""``load(weights)``: resolve ``--weights`` and hand the files to its family's reader."""

from __future__ import annotations

import importlib
from pathlib import Path

from attnviz.models import book_reader
from attnviz.models.checkpoint import Checkpoint
from attnviz.models.families import READERS, check_model_type
from attnviz.models.generation_config import read_generation_config
from attnviz.models.resolve import is_gguf, read_config, resolve


def load(weights: str, *, n_heads: int | None = None, offline: bool = False,
         quiet: bool = True, tokenizer: str | Path | None = None,
         book_config: str | Path | None = None, preset: str | None = None) -> Checkpoint:
    """Resolve, read the headers and validate a checkpoint; tensors stay on disk until a
    block is built. ``n_heads``: for files that do not record the head count (GPT-2's
    lone .safetensors, the book's GPTModel). A ``.gguf`` file is read by ``gguf_reader``.
    ``tokenizer``: a tokenizer.json / tokenizer.model
    (or its folder) for a checkpoint that has none, or to use instead of its own.
    ``book_config`` / ``preset``: what a state dict of the book's Llama3Model, Qwen3Model or
    Gemma3Model does not record (``--book-config cfg.json``, ``--preset llama3.2-1b``)."""
    located = resolve(weights, offline=offline, quiet=quiet)
    if is_gguf(located.weights[0]):
        from attnviz.models import gguf_reader  # gguf's reader: loaded for GGUF files only

        checkpoint = gguf_reader.read(located, n_heads=n_heads, tokenizer=tokenizer)
        if located.repo is not None:  # ollama:NAME[:TAG]: named as the user named it
            checkpoint.described |= {"repo": located.repo}
        return checkpoint
    if located.config is None and located.weights[0].suffix in (".pth", ".pt"):
        kind = book_reader.detect(located.weights[0])
        if kind is not None:  # one of the book's ch. 5 bonus classes (not its GPTModel)
            return book_reader.read(located, kind, book_config=book_config, preset=preset,
                                    tokenizer=tokenizer)
    raw = read_config(located.config) if located.config else {}
    model_type = check_model_type(raw.get("model_type", "gpt2"), str(located.config))
    reader = importlib.import_module(READERS[model_type])
    checkpoint = reader.read(located, raw, n_heads=n_heads, tokenizer=tokenizer)
    checkpoint.generation = read_generation_config(located.config)
    if located.revision is not None:  # a training checkpoint (Pythia's step3000): say which
        checkpoint.described |= {"repo": located.repo, "revision": located.revision}
    return checkpoint
