"""The attention engine: scores, softmax and context a slab of complete query rows at a
time, so that a layer never holds more than ``CHUNK_BYTES`` of weights, at any length.

A slab holds whole rows (every key a query sees), so its softmax is exact, and the
layer's output ``A·V`` comes out of the same slab. What the caller wants of the weights
is either all of them (a text short enough: one slab is the whole ``(T, T)`` matrix, the
computation attnviz always did) or a ``reduce`` that receives each slab and keeps what it
needs (pooled maps, statistics, a window; see ``attnviz.analyses.longcontext``) before
the slab is dropped. Slabs skip what the causal mask hides: rows ``a .. a + C - 1`` are
scored against keys ``k0 .. a + C - 1`` only, ``k0 > 0`` for a sliding window.

Grouped-query attention scores every query head of a key/value group in one product, the
group's keys read once: queries ``(b, nkv, group·C, hd)`` against keys ``(b, nkv, hd, Tk)``.
"""

from __future__ import annotations

from typing import Protocol

import torch

CHUNK_BYTES = 64 * 2**20  # float32 weights of one slab, every head: the engine's working set


class Reduce(Protocol):
    """What a caller does with a layer's weights, one slab at a time."""

    align: int  # slab starts (queries and keys) are multiples of this: pooled blocks

    def __call__(self, weights: torch.Tensor, q_start: int, k_start: int) -> None:
        """``weights (b, nh, C, Tk)``: rows ``q_start ..`` over keys ``k_start ..`` (absolute
        positions), exact; hidden cells are 0. Valid only during the call."""


def hidden(q_lo: int, q_hi: int, k_lo: int, k_hi: int, window: int | None,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """``(q_hi - q_lo, k_hi - k_lo)`` bool, True where key j is hidden from query i: the
    future (j > i) and, with a sliding window W, the keys W or more positions back
    (j <= i - W). Made from two ranges: never a ``(T, T)`` table."""
    queries = torch.arange(q_lo, q_hi, device=device)[:, None]
    keys = torch.arange(k_lo, k_hi, device=device)[None, :]
    mask = keys > queries
    if window is not None:
        mask |= keys <= queries - window
    return mask


def slab_rows(n_heads: int, n_rows: int, n_keys: int, align: int = 1) -> int:
    """Rows per slab: as many as ``CHUNK_BYTES`` of ``(n_heads, rows, n_keys)`` float32
    weights allow, a multiple of ``align``, at least ``align``."""
    rows = CHUNK_BYTES // (4 * n_heads * max(n_keys, 1))
    rows = max(align, rows // align * align)
    return min(rows, -(-n_rows // align) * align)


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, start: int,
           scale: float | None, softcap: float | None, window: int | None,
           weights_out: torch.Tensor | None = None, keep: bool = True,
           reduce: Reduce | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal attention of ``queries (b, nh, T, hd)`` at positions ``start .. start + T - 1``
    over ``keys``/``values (b, nkv, start + T, hd)`` (queries scaled already when ``scale``
    is None; else the scores are multiplied by it, as transformers does).

    Returns ``(context (b, nh, T, hd), weights)``:
    - ``reduce`` given: the weights go to it slab by slab; ``weights`` is None;
    - ``keep`` (default): ``weights (b, nh, T, start + T)``, written into ``weights_out``
      when given — the whole matrix, in one slab;
    - ``keep=False``: only the context is wanted; ``weights`` is None, and slabs are as
      small as ``CHUNK_BYTES`` needs.
    """
    b, n_heads, n_rows, head_dim = queries.shape
    n_kv = keys.shape[1]
    group = n_heads // n_kv
    end = start + n_rows
    if reduce is None and keep:
        rows, align = n_rows, 1
    else:
        align = reduce.align if reduce is not None else 1
        span = end if window is None else min(end, window + slab_rows(n_heads, n_rows, end, align))
        rows = slab_rows(n_heads, n_rows, span, align)
    context = queries.new_empty(b, n_kv, group, n_rows, head_dim)
    weights = None
    for a in range(0, n_rows, rows):
        q_lo, q_hi = start + a, start + min(a + rows, n_rows)
        k_lo = 0 if window is None or rows == n_rows else max(0, q_lo - window + 1) // align * align
        count = q_hi - q_lo
        # (b, nh, C, hd) -> (b, nkv, group·C, hd): a group's heads against its keys at once
        slab_queries = queries[:, :, a:a + count].reshape(b, n_kv, group * count, head_dim)
        slab_keys, slab_values = keys[:, :, k_lo:q_hi], values[:, :, k_lo:q_hi]
        target = None
        if weights_out is not None:
            target = weights_out.view(b, n_kv, group * count, q_hi - k_lo)
        # (b, nkv, group·C, hd) @ (b, nkv, hd, Tk) -> (b, nkv, group·C, Tk)
        scores = torch.matmul(slab_queries, slab_keys.transpose(2, 3), out=target)
        if scale is not None:
            scores.mul_(scale)
        if softcap is not None:
            scores.div_(softcap).tanh_().mul_(softcap)
        scores = scores.view(b, n_heads, count, q_hi - k_lo)
        scores.masked_fill_(hidden(q_lo, q_hi, k_lo, q_hi, window, scores.device), float("-inf"))
        slab_weights = torch.softmax(scores, dim=-1, out=scores)
        # (b, nkv, group·C, Tk) @ (b, nkv, Tk, hd) -> (b, nkv, group·C, hd)
        grouped = slab_weights.view(b, n_kv, group * count, q_hi - k_lo)
        context[:, :, :, a:a + count] = (grouped @ slab_values).view(b, n_kv, group, count,
                                                                       head_dim)
        if reduce is not None:
            reduce(slab_weights, q_lo, k_lo)
        elif keep:
            weights = slab_weights
        del scores, slab_weights, grouped
    return context.view(b, n_heads, n_rows, head_dim), weights
