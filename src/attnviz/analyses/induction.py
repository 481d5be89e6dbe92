"""The induction probe: every head's induction score on a random sequence repeated twice.

compare-heads --induction, report and scan all use it."""

from __future__ import annotations

import numpy as np

from attnviz.analyses.attention import analyze_with, load_model, parse_layers
from attnviz.analyses.stats import induction_score
from attnviz.analyses.weighting import probability_rows
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError

INDUCTION_PERIOD = 50  # the induction probe: this many random tokens, then the same again


def check_induction_probe(model, period: int = INDUCTION_PERIOD, fit: bool = False) -> int:
    """The probe's period for ``model``, or ``InputError`` before any work when its context
    cannot hold the probe. ``fit``: shorten the period to fit the context (scan) instead
    of refusing (compare-heads, report)."""
    if fit:
        if model.context_length < 4:
            raise InputError(f"--induction needs a context of at least 4 tokens, the model has "
                             f"{model.context_length}")
        return min(period, model.context_length // 2)
    probe = 2 * period
    if model.context_length >= probe:
        return period
    random_mode = model.describe()["mode"] == "random"
    where = "--context-length" if random_mode else "the checkpoint's context (n_positions)"
    raise InputError(f"--induction scores the heads on a probe of {probe} tokens (a random "
                     f"sequence of {period}, repeated), longer than {where} "
                     f"{model.context_length}; " + (f"raise --context-length to at least {probe}"
                                                    if random_mode else "drop --induction"))


def induction_probe(model, layers: list[int], seed: int = 0, period: int = INDUCTION_PERIOD,
                    fit: bool = False, weighting: str = "attention") -> np.ndarray:
    """``(L, H)`` induction score of every head of ``layers`` of ``model`` (from
    ``load_model``): attention on ``period`` random tokens (drawn with ``seed``) repeated
    twice (see ``stats.induction_score``); ``fit`` as ``check_induction_probe``;
    ``weighting="norm"``: of the value-weighted rows renormalised (``attnviz.analyses.weighting``).
    compare-heads, report and scan all use this."""
    period = check_induction_probe(model, period, fit)
    rng = np.random.default_rng(seed)
    first = probe_tokens(model, rng, period)
    result = analyze_with(model, first + first, layers)
    rows = result.weights
    if weighting != "attention":
        rows = probability_rows(result, weighting)
    return np.stack([induction_score(w, period) for w in rows])


def probe_tokens(model, rng: np.random.Generator, n: int) -> list[int]:
    """``n`` random ordinary (not special) token ids of ``model``'s tokenizer."""
    tokenizer = model.tokenizer
    if tokenizer.kind == "gpt2":  # every id but <|endoftext|> (the last)
        return rng.integers(0, tokenizer.vocab_size - 1, size=n).tolist()
    high = min(tokenizer.vocab_size, model.vocab_size)
    ordinary = np.array([i for i in range(high) if not tokenizer.is_special(i)])
    return ordinary[rng.integers(0, len(ordinary), size=n)].tolist()


def induction_scores(
    config: ModelConfig | None = None,
    *,
    weights: str | None = None,
    layer: str | int = 0,
    period: int = INDUCTION_PERIOD,
    seed: int = 0,
) -> np.ndarray:
    """``induction_probe`` of the model ``config``/``weights`` describe, for ``layer``
    (a number, a list or ``"all"``, as ``analyze``)."""
    model = load_model(config, weights)
    return induction_probe(model, parse_layers(layer, model.n_layers), seed, period)
