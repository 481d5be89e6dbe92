"""Head detectors (numpy only): how much of a head's attention falls where a previous-token,
duplicate-token or induction head would put it.

The detection patterns and the ``"mul"`` score are TransformerLens's
(``transformer_lens/head_detector.py``: ``get_previous_token_head_detection_pattern``,
``get_duplicate_token_head_detection_pattern``, ``get_induction_head_detection_pattern``,
``compute_head_attention_similarity_score``). For token ids ``x`` of length ``T``:

- previous token:  ``D[i, i-1] = 1``
- duplicate token: ``D[i, j] = 1`` for ``j < i`` with ``x[j] == x[i]``
- induction:       ``D[i, j+1] = D_dup[i, j]`` — the duplicate pattern shifted one key to the
  right: attend to the token *after* an earlier copy of the current token.

score = ``Σ_ij A'_ij D_ij / Σ_ij A'_ij`` over the whole ``T x T`` matrix, where ``A'`` is
the head's weights with key 0 zeroed (``exclude_first``) and/or the diagonal zeroed
(``exclude_self``). Without exclusions ``Σ A' = T`` (every row sums to 1).

Weights follow the convention ``[..., query_pos, key_pos]``: any leading axes
(``(H, T, T)``, ``(L, H, T, T)``) are kept.
"""

from __future__ import annotations

import numpy as np

DETECTORS = ("previous_token_head", "duplicate_token_head", "induction_head")


def previous_token_pattern(n_tokens: int) -> np.ndarray:
    """``(T, T)``: 1 at ``[i, i-1]``."""
    return np.eye(n_tokens, k=-1)


def duplicate_token_pattern(token_ids) -> np.ndarray:
    """``(T, T)``: 1 at ``[i, j]`` for every earlier ``j < i`` holding the same token."""
    ids = np.asarray(token_ids)
    return np.tril(ids[:, None] == ids[None, :], k=-1).astype(np.float64)


def induction_pattern(token_ids) -> np.ndarray:
    """``(T, T)``: the duplicate pattern shifted one key to the right (key 0 stays 0)."""
    duplicate = duplicate_token_pattern(token_ids)
    shifted = np.zeros_like(duplicate)
    shifted[:, 1:] = duplicate[:, :-1]
    return shifted


def patterns(token_ids) -> dict[str, np.ndarray]:
    """The three detection patterns of a text, by detector name."""
    return {
        "previous_token_head": previous_token_pattern(len(token_ids)),
        "duplicate_token_head": duplicate_token_pattern(token_ids),
        "induction_head": induction_pattern(token_ids),
    }


def mul_score(weights: np.ndarray, pattern: np.ndarray, *, exclude_first: bool = False,
              exclude_self: bool = False) -> np.ndarray:
    """TransformerLens's ``"mul"`` measure: the fraction of the (kept) attention that falls
    on the pattern. ``weights (..., T, T)``, ``pattern (T, T)`` -> ``(...)`` float64;
    NaN when nothing is kept (a 0/0)."""
    kept = np.array(weights, dtype=np.float64)  # a copy: the exclusions write into it
    if exclude_first:
        kept[..., :, 0] = 0.0
    if exclude_self:
        diagonal = np.arange(kept.shape[-1])
        kept[..., diagonal, diagonal] = 0.0
    total = kept.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (kept * pattern).sum(axis=(-2, -1)) / total


def detector_scores(weights: np.ndarray, token_ids, *, exclude_first: bool = False,
                    exclude_self: bool = False) -> dict[str, np.ndarray]:
    """Every detector of ``DETECTORS`` for ``weights (..., T, T)`` of one text."""
    return {name: mul_score(weights, pattern, exclude_first=exclude_first,
                            exclude_self=exclude_self)
            for name, pattern in patterns(token_ids).items()}


def induction_from(n_layers: int) -> int:
    """The first layer an induction head can be in: 1 (0 for a one-layer model)."""
    return 1 if n_layers > 1 else 0
