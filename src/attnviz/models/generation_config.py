"""A checkpoint's generation settings, read as transformers reads them: its
``generation_config.json`` when there is one, else the generation keys of ``config.json``
(``GenerationConfig.from_model_config``: the top level, then a nested ``decoder`` /
``generator`` / ``text_config`` for what the top level leaves unset). Only the keys attnviz
applies (``KEYS``) are kept apart; the file's other keys are ``"others"`` (the caller warns
of those that change the tokens); a key set to null counts as unset."""

from __future__ import annotations

from pathlib import Path

from attnviz.models.resolve import read_config

GENERATION_CONFIG = "generation_config.json"

KEYS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
        "forced_bos_token_id", "forced_eos_token_id", "no_repeat_ngram_size", "bad_words_ids",
        "min_length", "min_new_tokens", "max_length", "max_new_tokens", "num_beams",
        "length_penalty", "early_stopping", "repetition_penalty")
_NESTED = ("decoder", "generator", "text_config")  # from_model_config's fallbacks


def read_generation_config(config: Path | None) -> dict:
    """The settings of the checkpoint whose ``config.json`` is ``config`` (None: a file
    without one, no settings): ``{key: value}`` for the keys of ``KEYS`` that are set,
    ``"source"``, the file they came from, and ``"others"``, its other keys."""
    if config is None:
        return {}
    own = config.parent / GENERATION_CONFIG
    if own.is_file():
        raw = read_config(own)
        return {**_keys(raw), "source": str(own), "others": _others(raw)}
    raw = read_config(config)
    found = _keys(raw)
    if raw.get("force_bos_token_to_be_generated") and "bos_token_id" in found:
        found.setdefault("forced_bos_token_id", found["bos_token_id"])  # the old spelling
    for name in _NESTED:
        if isinstance(raw.get(name), dict):
            found = {**_keys(raw[name]), **found}
            break
    return {**found, "source": str(config), "others": _others(raw)} if found else {}


def _keys(raw: dict) -> dict:
    return {key: raw[key] for key in KEYS if raw.get(key) is not None}


def _others(raw: dict) -> dict:
    return {key: value for key, value in raw.items() if key not in KEYS and value is not None}
