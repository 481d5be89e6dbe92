"""What each head does, in numbers (numpy only). See docs/heads.md for the definitions.

Every function takes ``weights`` of shape ``(H, T, T)`` — ``[head, query_pos, key_pos]``,
rows summing to 1 — and returns one value per head. Means run over query rows.

``attention`` (``AttentionResult.attention``) says which keys a row could see: the
statistics of causal rows (``"decoder"``) are as they always were; those of an encoder's
rows (``"encoder"``) normalise the entropy by every key and measure signed distances
(negative: the head looks ahead); cross-attention rows (``"cross"``, ``(H, Tq, Tk)``) have
no self, previous token or distance: their keys are another text's positions (NaN).
"""

from __future__ import annotations

import numpy as np

COLUMNS = (
    "entropy",
    "normalized_entropy",
    "max_weight",
    "self",
    "previous_token",
    "first_token",
    "mean_distance",
)


def _xlogx(p: np.ndarray) -> np.ndarray:
    """``p ln p`` with ``0 ln 0 = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def row_entropy(weights: np.ndarray) -> np.ndarray:
    """``(H, T)``: entropy of every row, in nats."""
    return -_xlogx(weights.astype(np.float64)).sum(axis=-1)


def head_stats(weights: np.ndarray, attention: str = "decoder") -> dict[str, np.ndarray]:
    """The columns of ``COLUMNS`` for every head: name -> ``(H,)`` float64 (NaN where
    undefined: the ``i >= 1`` statistics of a one-token text; self, previous token and
    distance of cross-attention). ``attention``: see the module docstring."""
    w = weights.astype(np.float64)  # (H, Tq, Tk)
    n_heads, n, n_keys = w.shape
    rows = np.arange(n)
    entropy = row_entropy(w)  # (H, Tq)
    nan = np.full(n_heads, np.nan)
    if attention == "cross":
        # H_i / ln(Tk): 1 means "uniform over the other text"; key 0 is its first token
        normalized = (entropy / np.log(n_keys)).mean(axis=-1) if n_keys > 1 else nan
        return {"entropy": entropy.mean(axis=-1), "normalized_entropy": normalized,
                "max_weight": w.max(axis=-1).mean(axis=-1), "self": nan,
                "previous_token": nan, "first_token": w[:, :, 0].mean(axis=-1),
                "mean_distance": nan}
    if n > 1:
        # H_i / ln(visible keys): i + 1 behind the causal mask, every key (T) without it;
        # 1 means "uniform over the keys the row could see".
        visible = rows[1:] + 1.0 if attention == "decoder" else np.full(n - 1, float(n))
        normalized = (entropy[:, 1:] / np.log(visible)).mean(axis=-1)
        previous = np.diagonal(w, offset=-1, axis1=-2, axis2=-1).mean(axis=-1)
        first = w[:, 1:, 0].mean(axis=-1)
    else:
        normalized = previous = first = nan
    distance = rows[:, None] - rows[None, :]  # (T, T): i - j, negative for keys ahead
    return {
        "entropy": entropy.mean(axis=-1),
        "normalized_entropy": normalized,
        "max_weight": w.max(axis=-1).mean(axis=-1),
        "self": np.diagonal(w, axis1=-2, axis2=-1).mean(axis=-1),
        "previous_token": previous,
        "first_token": first,
        "mean_distance": (w * distance).sum(axis=-1).mean(axis=-1),
    }


def _kl_bits(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """KL(p || m) in bits along the last axis, for ``m`` > 0 wherever ``p`` > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / np.where(m > 0, m, 1.0)), 0)
    return terms.sum(axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (base 2, in [0, 1]) along the last axis."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    m = (p + q) / 2
    return np.clip(0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m), 0.0, 1.0)


def similarity(weights: np.ndarray) -> np.ndarray:
    """``(H, H)``: ``js[h, g]`` = mean over rows of the JS divergence between row ``i`` of
    head ``h`` and row ``i`` of head ``g`` (0 = identical patterns, 1 = disjoint)."""
    n_heads = weights.shape[0]
    js = np.zeros((n_heads, n_heads))
    for h in range(n_heads):  # one head against all: (H, T, T) at a time, not (H, H, T, T)
        js[h] = js_divergence(weights[h][None], weights).mean(axis=-1)
    return (js + js.T) / 2  # exactly symmetric despite rounding


def induction_score(weights: np.ndarray, period: int) -> np.ndarray:
    """``(H,)``: on a sequence whose second half repeats its first (``period`` tokens),
    the mean attention from position ``i`` in the second copy to ``i - period + 1`` —
    the token that followed the current token last time (Olsson et al., 2022)."""
    n = weights.shape[-1]
    queries = np.arange(period, n)
    return weights[:, queries, queries - period + 1].astype(np.float64).mean(axis=-1)


def add_induction(rows: list[dict], scores: np.ndarray) -> list[dict]:
    """``head_rows``' rows with an ``induction`` column: ``scores`` is ``(L, H)`` in the
    rows' order (``induction.induction_probe``)."""
    for row, score in zip(rows, np.asarray(scores).reshape(-1), strict=True):
        row["induction"] = float(score)
    return rows


def head_rows(weights: np.ndarray, layers: list[int], kv_heads: list[int] = (),
              attention: str = "decoder") -> list[dict]:
    """One record per (layer, head) of ``weights`` ``(L, H, T, T)``: ``layer``, ``head``,
    ``kv_head`` (the key/value head it reads, when ``kv_heads`` is given) and the
    ``COLUMNS``, NaN as None. ``attention`` other than ``"decoder"``: the rows say so
    (``"attention": "encoder"``) and the statistics are defined as the module says."""
    rows = stats_rows([head_stats(w, attention) for w in weights], layers, kv_heads)
    if attention != "decoder":
        rows = [{"layer": r["layer"], "head": r["head"], "attention": attention,
                 **{k: v for k, v in r.items() if k not in ("layer", "head")}} for r in rows]
    return rows


def stats_rows(per_layer: list[dict[str, np.ndarray]], layers: list[int],
               kv_heads: list[int] = (), columns=COLUMNS) -> list[dict]:
    """``head_rows`` from statistics already computed: per layer, name -> ``(H,)``."""
    rows = []
    for layer, stats in zip(layers, per_layer):
        for h in range(len(stats[columns[0]])):
            row = {"layer": layer, "head": h, **({"kv_head": kv_heads[h]} if kv_heads else {})}
            for name in columns:
                value = float(stats[name][h])
                row[name] = None if np.isnan(value) else value
            rows.append(row)
    return rows
