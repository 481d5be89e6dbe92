"""Hugging Face Hub repo ids -> a local snapshot folder, with ``huggingface_hub``.

The local cache first (no request at all when the files are there), else a download of
``config.json`` plus ``model.safetensors`` or ``model.safetensors.index.json`` and its
shards, and (for every family but GPT-2, whose tokenizer attnviz ships) the tokenizer
files beside them, and ``generation_config.json`` when the repo has one — nothing else:
never a pickle (``pytorch_model.bin`` could run code when loaded), never code. Files land
in the standard cache (``HF_HOME``, ``HF_HUB_CACHE``), shared with transformers;
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE=1`` work as everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from attnviz.core.errors import AttnvizError, InputError
from attnviz.files.progress import in_notebook
from attnviz.models.families import check_model_type

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# What a model's own tokenizer is read from (attnviz.text.tokenization); the others only where
# there is no tokenizer.json: Llama 3's tiktoken or a SentencePiece tokenizer.model, T5's
# spiece.model, Marian's source.spm, target.spm and vocab.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_MODELS = ("tokenizer.model", "spiece.model", "source.spm")
MARIAN_FILES = ("target.spm", "vocab.json")  # beside source.spm
GENERATION = "generation_config.json"

# In a notebook without ipywidgets, tqdm.auto (the Hub's progress bars) warns that it falls
# back to text bars: which is fine, and not the user's business.
warnings.filterwarnings("ignore", message="IProgress not found")


def split_revision(name: str) -> tuple[str, str | None]:
    """``"gpt2@abc123"`` -> ``("gpt2", "abc123")``."""
    repo_id, _, revision = name.partition("@")
    return repo_id, revision or None


def _offline(flag: bool) -> bool:
    from huggingface_hub import constants

    return flag or constants.HF_HUB_OFFLINE


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder holding a complete safetensors checkpoint, or None."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> Path | None:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        return Path(found) if isinstance(found, str) else None

    config = cached(CONFIG)
    if config is None:
        return None
    if _model_type(config) != "gpt2" and cached("tokenizer.json") is None and all(
            cached(name) is None for name in TOKENIZER_MODELS):
        return None  # weights without their tokenizer: fetch it (the weights stay cached)
    if (single := cached(SINGLE)) is not None:
        return single.parent
    if (index := cached(INDEX)) is not None:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if all(cached(shard) is not None for shard in shards):
            return index.parent
    return None


def _model_type(config: Path):
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return raw.get("model_type", "gpt2") if isinstance(raw, dict) else None


def fetch(name: str, *, offline: bool = False, quiet: bool = True) -> Path:
    """The local snapshot folder of Hub repo ``name`` (``repo`` or ``repo@revision``)."""
    repo_id, revision = split_revision(name)
    try:
        snapshot = cached_snapshot(repo_id, revision)
    except Exception:  # a repo id the library rejects (e.g. "a--b"): not cached
        snapshot = None
    if snapshot is not None:
        return snapshot
    if _offline(offline):
        raise InputError(
            f"--weights {name}: not in the local Hugging Face cache and offline mode is on "
            f"(--offline or HF_HUB_OFFLINE=1); run once with network access to download it, "
            f"or pass a local folder"
        )
    return _download(repo_id, revision, name, quiet)


def _download(repo_id: str, revision: str | None, name: str, quiet: bool) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    show_progress = not quiet and (sys.stderr.isatty() or in_notebook())
    (enable_progress_bars if show_progress else disable_progress_bars)()
    # Its retry messages would add lines to our one-line errors.
    logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        files = {s.rfilename for s in info.siblings or []}
        if CONFIG not in files:
            raise InputError(f"--weights {name}: the repo has no config.json; not a transformers model")
        if INDEX not in files and SINGLE not in files:
            pickles = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
            offered = f" (it offers {', '.join(pickles)})" if pickles else ""
            raise InputError(
                f"--weights {name}: the repo has no model.safetensors{offered}; attnviz never "
                "downloads pickled weights, which can run code when loaded. Convert them to "
                "safetensors yourself and pass the folder"
            )
        # config.json first: a family attnviz cannot read is refused before the weights come
        config = Path(hf_hub_download(repo_id, CONFIG, revision=revision))
        _check_model_type(config, name)
        if INDEX in files:
            index = Path(hf_hub_download(repo_id, INDEX, revision=revision))
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InputError(f"--weights {name}: {INDEX} is not a valid index") from None
            wanted = [CONFIG, *shards]
        else:
            wanted = [CONFIG, SINGLE]
        if _model_type(config) != "gpt2":
            tokenizer = [f for f in TOKENIZER_FILES if f in files]
            if "tokenizer.json" not in files:
                tokenizer += [f for f in TOKENIZER_MODELS + MARIAN_FILES if f in files]
            wanted += tokenizer
        if GENERATION in files:  # what generate follows (models.generation_config)
            wanted.append(GENERATION)
        # By the name the user gave (not the commit): the cache then records the ref
        # (refs/main), and the next run finds the files without any request.
        paths = [Path(hf_hub_download(repo_id, f, revision=revision)) for f in wanted]
    except AttnvizError:
        raise
    except Exception as exc:
        raise _explain(exc, name, constants.ENDPOINT) from None
    folder = paths[0].parent
    if not quiet:
        sys.stderr.write(f"Downloaded {name} ({', '.join(wanted)}) to {folder}\n")
    return folder


def _check_model_type(config: Path, name: str) -> None:

    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        raise InputError(f"--weights {name}: its config.json is not valid JSON") from None
    if not isinstance(raw, dict):
        raise InputError(f"--weights {name}: its config.json is not a JSON object")
    check_model_type(raw.get("model_type", "gpt2"), f"--weights {name}")


def _explain(exc: Exception, name: str, endpoint: str) -> AttnvizError:
    """One sentence for the user, and the exit code: 2 for what they can fix in the name
    or their token, 1 for the network."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return InputError(f"--weights {name}: the repo is gated; accept its terms on the Hub and set "
                          "HF_TOKEN to a token of yours (or run `hf auth login`)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        token = "" if os.environ.get("HF_TOKEN") else " (private? set HF_TOKEN)"
        return InputError(f"--weights {name}: no such repo on {endpoint} and no such local "
                          f"path{token}")
    if isinstance(exc, errors.RevisionNotFoundError):
        return InputError(f"--weights {name}: the repo has no such revision")
    if isinstance(exc, (errors.EntryNotFoundError, errors.RemoteEntryNotFoundError)):
        return InputError(f"--weights {name}: a file the repo lists is missing on the server")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return AttnvizError(f"--weights {name}: the Hub at {endpoint} answered HTTP {status}; "
                            "try again later, or pass a local folder")
    return AttnvizError(
        f"--weights {name}: cannot download from the Hub at {endpoint} ({type(exc).__name__}); "
        "check the network (or HF_ENDPOINT) and run again to resume, use --offline for cached "
        "models, or pass a local folder"
    )
