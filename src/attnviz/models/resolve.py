"""Where the files of ``--weights NAME`` are: an existing path first — a folder, a
``.safetensors`` file (single or the ``model.safetensors.index.json`` of shards), a
``pytorch_model.bin``, the ``.pth`` of the book's ``GPTModel`` or a llama.cpp ``.gguf`` file
(by its suffix or its magic) —, else a Hugging Face repo id taken from the local cache or
downloaded (``attnviz.models.hub``, safetensors only); ``ollama:NAME[:TAG]`` is the GGUF file
of a model in Ollama's local store (``attnviz.models.ollama``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from attnviz.core.errors import InputError
from attnviz.models import hub, ollama


@dataclass(frozen=True)
class Located:
    """The files of a checkpoint on disk."""

    weights: list[Path]  # one file, or the shards of an index
    config: Path | None  # config.json, when there is one
    origin: Path  # what to name in messages
    repo: str | None = None  # the Hub repo id it came from (``org/name``), if any
    revision: str | None = None  # and the revision asked for (``@step3000``), if any
    # A GGUF file's tensors, already opened under Hugging Face's names (models.gguf_reader),
    # for the family reader's ``hf.open_source``; its ``config`` is then the .gguf itself.
    gguf: object = None


def is_gguf(path: Path) -> bool:
    """A llama.cpp GGUF file: named ``.gguf``, or starting with its magic."""
    if path.suffix == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")


def resolve(weights: str, *, offline: bool = False, quiet: bool = True) -> Located:
    """Where the files of ``--weights weights`` are: an existing path, else a Hub repo id
    (``gpt2``, ``org/name``, ``name@revision``) from the cache or downloaded."""
    if weights.startswith(ollama.PREFIX):  # a model in Ollama's local store: its GGUF blob
        blob = ollama.locate(weights)
        return Located([blob], None, blob, repo=weights)
    path = Path(weights).expanduser()
    if path.exists():
        return _locate_path(path)
    suffixes = (".safetensors", ".bin", ".pth", ".pt", ".json", ".gguf",  # and names no repo has
                ".md", ".txt", ".csv", ".npz", ".npy", ".html", ".png", ".toml", ".yaml",
                ".yml", ".py", ".ckpt", ".onnx", ".zip")
    looks_like_path = weights.endswith(suffixes) or (
        weights.startswith((".", "/", "~")) or weights.count("/") > 1
    )
    if looks_like_path or not _REPO_ID.fullmatch(weights):
        raise InputError(f"--weights {weights}: no such file or directory (nor a Hugging Face "
                         "repo id such as gpt2 or org/name)")
    repo, revision = hub.split_revision(weights)
    located = _locate_path(hub.fetch(weights, offline=offline, quiet=quiet))
    return replace(located, repo=repo, revision=revision)


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
            p.name for p in path.glob("*.pth")) + sorted(p.name for p in path.glob("*.gguf"))
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


def read_config(path: Path) -> dict:
    """``config.json`` as a dict, or one clear error."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path} is not a JSON object")
    return raw
