"""``--weights ollama:NAME[:TAG]``: the GGUF file of a model in Ollama's local store.

Ollama keeps each pulled model as a manifest and content-addressed blobs under its models
folder (``$OLLAMA_MODELS``, else ``~/.ollama/models``)::

    manifests/<registry>/<namespace>/<name>/<tag>    JSON: {"layers": [{"mediaType", "digest"}, …]}
    blobs/sha256-<hex>                               the layers' bytes

The layer whose media type is ``application/vnd.ollama.image.model`` is the model's GGUF
file. Names are written as Ollama writes them: ``llama3.2`` (tag ``latest``), ``llama3.2:1b``,
``NAMESPACE/NAME:TAG`` or ``REGISTRY/NAMESPACE/NAME:TAG``; the registry defaults to
``registry.ollama.ai`` and the namespace to ``library``. Nothing here contacts a server.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from attnviz.core.errors import InputError

PREFIX = "ollama:"
MODEL_LAYER = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes; refuse anything absurd


def models_folder() -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def parse_name(name: str) -> tuple[str, str, str, str]:
    """``ollama:NAME[:TAG]`` (with ``NAMESPACE/`` or ``REGISTRY/NAMESPACE/`` before NAME) ->
    ``(registry, namespace, name, tag)``."""
    spec = name[len(PREFIX):] if name.startswith(PREFIX) else name
    path, _, tag = spec.partition(":")
    parts = path.split("/")
    tag = tag or DEFAULT_TAG
    if not 1 <= len(parts) <= 3 or not all(_PART.fullmatch(p) for p in [*parts, tag]):
        raise InputError(f"--weights {name}: not an Ollama model name (ollama:NAME[:TAG], e.g. "
                         "ollama:llama3.2:1b or ollama:NAMESPACE/NAME:TAG)")
    registry, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        registry, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    return registry, namespace, model, tag


def installed(folder: Path) -> list[str]:
    """Every model in the store, named as ``ollama list`` names it (``name:tag``;
    ``namespace/name:tag`` outside the library; the registry when it is not Ollama's)."""
    root = folder / "manifests"
    names = []
    for manifest in sorted(root.glob("*/*/*/*")):
        if not manifest.is_file():
            continue
        registry, namespace, model, tag = manifest.relative_to(root).parts
        name = f"{model}:{tag}"
        if namespace != DEFAULT_NAMESPACE or registry != DEFAULT_REGISTRY:
            name = f"{namespace}/{name}"
        if registry != DEFAULT_REGISTRY:
            name = f"{registry}/{name}"
        names.append(name)
    return names


def locate(name: str) -> Path:
    """The GGUF blob of ``ollama:NAME[:TAG]`` in the local store, or one ``InputError``
    line: a name not installed lists what is, a manifest that is not JSON or names a
    missing blob says so."""
    registry, namespace, model, tag = parse_name(name)
    folder = models_folder()
    manifest = folder / "manifests" / registry / namespace / model / tag
    if not manifest.is_file():
        found = installed(folder)
        listing = (f"installed: {', '.join(found)}" if found
                   else "it holds no model (OLLAMA_MODELS names another store)")
        raise InputError(f"--weights {name}: not in Ollama's store {folder}; {listing}")
    try:
        data = (json.loads(manifest.read_bytes())
                if manifest.stat().st_size <= MAX_MANIFEST_BYTES else None)
    except (OSError, ValueError):
        data = None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise InputError(f"--weights {name}: {manifest} is not an Ollama manifest (JSON with a "
                         "list of layers)")
    digests = [layer.get("digest") for layer in layers
               if isinstance(layer, dict) and layer.get("mediaType") == MODEL_LAYER]
    if len(digests) != 1 or not isinstance(digests[0], str) or not _DIGEST.fullmatch(digests[0]):
        raise InputError(f"--weights {name}: the manifest {manifest} names no model layer "
                         f"({MODEL_LAYER})")
    blob = folder / "blobs" / f"sha256-{_DIGEST.fullmatch(digests[0]).group(1)}"
    if not blob.is_file():
        raise InputError(f"--weights {name}: the manifest names the blob {blob}, which is "
                         "missing (pull the model again with `ollama pull`)")
    return blob
