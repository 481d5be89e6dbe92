"""The induction circuit of ``attnviz train``: which periods the task trains on and which
the probes test, every head's weight on the previous token and on the induction target
at each probed period, the two heads of the circuit, and the step at which it formed.

    training_periods(32)          # [2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16]: the task's
    held_out_periods(32)          # [3, 7, 11, 15]: never trained on
    probe_periods(32)             # [2, 3, 4, 7, 8, 11, 15, 16]: two probes each
    period_scores(model, prompts) # {"2": {"induction": [[...]], "previous_token": [[...]]}, ...}

A probe is random tokens repeated twice (``x x``, ``2p`` tokens for period ``p``), the
sequence of Olsson et al. (2022) and of TransformerLens's induction tutorials. For each
head (weights ``[layer][head][query][key]``):

- induction: the mean weight from each query ``i`` of the repeat (``p … 2p - 1``) on key
  ``i - p + 1``, the token after the previous occurrence of the current token;
- previous token: the mean weight from each query ``i >= 1`` on key ``i - 1``.

Both range over 0 … 1 and read as "the share of the head's attention on its target". A
head that copies at one period only scores high at that period alone; the induction head
of the circuit scores high at every period, the held-out ones included.
"""

from __future__ import annotations

import numpy as np

from attnviz.analyses.detectors import induction_from

PROBES_PER_PERIOD = 2
KINDS = ("induction", "previous_token")


def held_out_periods(n_positions: int) -> list[int]:
    """Periods the induction task never shows: 3, 7, 11, … (every fourth) up to T/2."""
    return list(range(3, n_positions // 2 + 1, 4))


def training_periods(n_positions: int) -> list[int]:
    """The segment lengths the induction task draws from: 2 … T/2, less the held-out ones."""
    held_out = set(held_out_periods(n_positions))
    return [p for p in range(2, n_positions // 2 + 1) if p not in held_out]


def probe_periods(n_positions: int) -> list[int]:
    """The probes' periods: the shortest (2) and the longest (T/2) that a sequence repeated
    twice in the context allows, 4 and T/4 between them, and every held-out period."""
    half = n_positions // 2
    wanted = {2, 4, n_positions // 4, half, *held_out_periods(n_positions)}
    return sorted(p for p in wanted if 2 <= p <= half)


def film_period(n_positions: int) -> int:
    """The period of the film's probe: the longest held-out one (the longest probed period
    when none is held out), so the film shows the head copying at a period it never saw."""
    held_out = held_out_periods(n_positions)
    return held_out[-1] if held_out else probe_periods(n_positions)[-1]


# ---------------------------------------------------------------------------- scores


def repeat_period(token_ids: list[int]) -> int | None:
    """``p`` when ``token_ids`` is ``p >= 2`` tokens repeated twice, else None (a text
    probe that re-encodes differently is not one)."""
    period = len(token_ids) // 2
    if period < 2 or len(token_ids) != 2 * period or token_ids[:period] != token_ids[period:]:
        return None
    return period


def head_scores(weights: np.ndarray, period: int) -> dict[str, np.ndarray]:
    """``weights (..., 2p, 2p)`` of sequences repeated twice -> per head (the leading axes
    but the last two) the induction and previous-token weights, float64."""
    w = np.asarray(weights, dtype=np.float64)
    queries = np.arange(period, 2 * period)
    rows = np.arange(1, 2 * period)
    return {"induction": w[..., queries, queries - period + 1].mean(-1),
            "previous_token": w[..., rows, rows - 1].mean(-1)}


def period_scores(model, prompts) -> dict[str, dict[str, list]]:
    """Every head's induction and previous-token weight per probed period, on ``prompts``
    (``scanning.Prompt``: the probes as the model tokenizes them) through ``model``
    (``attention.load_model``): ``{"p": {kind: [layer][head]}}``, each the mean over the
    period's probes. Prompts that are not a repeat are left out."""
    import torch

    groups: dict[int, list[list[int]]] = {}
    for prompt in prompts:
        period = repeat_period(list(prompt.token_ids))
        if period is not None:
            groups.setdefault(period, []).append(list(prompt.token_ids))
    layers = list(range(model.n_layers))
    out = {}
    for period in sorted(groups):
        token_ids = torch.tensor(groups[period])  # (B, 2p)
        per_layer = [head_scores(weights.cpu().numpy(), period)
                     for _, weights, _ in model.run(token_ids, layers)]  # each kind (B, H)
        out[str(period)] = {kind: np.round(np.stack([s[kind].mean(0) for s in per_layer]),
                                           8).tolist() for kind in KINDS}  # (L, H)
    return out


# ---------------------------------------------------------------------------- over a run


def mean_over_periods(record: dict, kind: str) -> np.ndarray:
    """``(L, H)``: a training.jsonl line's ``kind`` score averaged over its periods (zeros
    when no probe was a repeat, as a text's pieces may not be once read back, or the line
    is older than the periods)."""
    values = [np.array(v[kind], dtype=float) for v in record.get("periods", {}).values()]
    if not values:
        return np.zeros(np.shape(record["scores"]["induction_head"]))
    return np.mean(values, axis=0)


def best_induction(record: dict) -> float:
    """The best induction score (mean over the periods) of a head that can be an induction
    head (layer 1 on): the progress bar's number."""
    scores = mean_over_periods(record, "induction")
    return float(scores[induction_from(len(scores)):].max())


def circuit_heads(record: dict) -> dict[str, tuple[int, int]]:
    """The circuit in ``record`` (the last snapshot's line): the previous-token head of
    layer 0 and the induction head of layer 1 or later, each the best by its score averaged
    over the probed periods: ``{"previous_token": (layer, head), "induction": ...}``."""
    previous = mean_over_periods(record, "previous_token")[0]
    induction = mean_over_periods(record, "induction")
    low = induction_from(len(induction))
    layer, head = np.unravel_index(int(np.argmax(induction[low:])), induction[low:].shape)
    return {"previous_token": (0, int(np.argmax(previous))),
            "induction": (int(layer) + low, int(head))}


def head_series(records: list[dict], kind: str, layer: int, head: int,
                period: str | None = None) -> list[float]:
    """One head's ``kind`` score at every snapshot: at ``period``, or averaged over them."""
    if period is not None:
        return [float(r["periods"][period][kind][layer][head]) for r in records]
    return [float(mean_over_periods(r, kind)[layer, head]) for r in records]


def formed_at(records: list[dict], layer: int, head: int) -> int | None:
    """The index of the first snapshot at which the induction head's score (averaged over
    the periods) is halfway from its step-0 value to its highest: the moment the circuit
    forms, where the loss falls (None when it never rose by 0.2)."""
    series = np.array(head_series(records, "induction", layer, head))
    if series.max() - series[0] < 0.2:
        return None
    return int(np.argmax(series >= (series[0] + series.max()) / 2))
