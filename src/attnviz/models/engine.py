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

import math
from typing import NamedTuple, Protocol

import torch

CHUNK_BYTES = 64 * 2**20  # float32 weights of one slab, every head: the engine's working set
HIDDEN = -torch.finfo(torch.float32).max  # a hidden score in a slab: exp gives 0, and 0 · it is 0


class Slab(NamedTuple):
    """A slab of exact weights: rows ``q_start ..`` over keys ``k_start ..`` (absolute
    positions); valid only while the ``Reduce`` that receives it runs."""

    weights: torch.Tensor  # (b, nh, C, Tk), rows summing to 1; hidden cells 0
    shifted: torch.Tensor  # (b, nh, C, Tk): the scores minus their row's largest
    total: torch.Tensor  # (b, nh, C, 1): Σ exp(shifted) of each row (weights = exp / total)
    q_start: int
    k_start: int


class Reduce(Protocol):
    """What a caller does with a layer's weights, one slab at a time."""

    align: int  # slab starts (queries and keys) are multiples of this: pooled blocks

    def __call__(self, slab: Slab) -> None: ...


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


def slab_rows(n_heads: int, n_rows: int, n_keys: int, align: int = 1,
              window: int | None = None) -> int:
    """Rows per slab: as many as ``CHUNK_BYTES`` of ``(n_heads, rows, keys)`` float32
    weights allow, a multiple of ``align``, at least ``align``; a slab's keys are
    ``n_keys``, or with a sliding window at most ``window + rows + align``."""
    budget = CHUNK_BYTES // (4 * n_heads)  # cells of one head's slab
    rows = budget // max(n_keys, 1)
    if window is not None:  # rows · (window + rows + align) <= budget
        reach = window + align
        rows = max(rows, int((math.sqrt(reach * reach + 4 * budget) - reach) / 2))
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
        rows = slab_rows(n_heads, n_rows, end, align, window)
    context = queries.new_empty(b, n_kv, group, n_rows, head_dim)
    if reduce is None and (keep or rows >= n_rows):
        # the whole matrix in one slab (asked for, or small enough): torch's softmax, as always
        scores = _scores(queries, keys, scale, softcap, weights_out)
        scores.masked_fill_(hidden(start, end, 0, end, window, scores.device), float("-inf"))
        weights = torch.softmax(scores, dim=-1, out=scores)
        _context(weights, values, context, 0)
        return context.view(b, n_heads, n_rows, head_dim), weights if keep else None
    widest = end if window is None else min(end, window + rows + align)  # keys of a slab
    buffers = queries.new_empty(2, b * n_heads * rows * widest)  # scores, then their exp
    for a in range(0, n_rows, rows):
        q_lo, q_hi = start + a, start + min(a + rows, n_rows)
        k_lo = 0 if window is None else max(0, q_lo - window + 1) // align * align
        count, width = q_hi - q_lo, q_hi - k_lo
        shifted = _scores(queries[:, :, a:a + count], keys[:, :, k_lo:q_hi], scale, softcap,
                          buffers[0, :b * n_heads * count * width].view(b, n_heads, count, width))
        # Only the slab's last columns hold a future, only its first ones keys outside a window
        future = shifted[..., q_lo - k_lo:]
        future.masked_fill_(hidden(q_lo, q_hi, q_lo, q_hi, None, shifted.device), HIDDEN)
        if window is not None and q_hi - window > k_lo:
            old = shifted[..., :q_hi - window - k_lo]
            old.masked_fill_(hidden(q_lo, q_hi, k_lo, q_hi - window, window, shifted.device),
                             HIDDEN)
        shifted.sub_(shifted.amax(dim=-1, keepdim=True))
        exp = torch.exp(shifted, out=buffers[1, :shifted.numel()].view(shifted.shape))
        total = exp.sum(dim=-1, keepdim=True)  # (b, nh, C, 1)
        _context(exp, values[:, :, k_lo:q_hi], context, a, total)
        if reduce is not None:
            reduce(Slab(exp.div_(total), shifted, total, q_lo, k_lo))
    return context.view(b, n_heads, n_rows, head_dim), None


def _scores(queries: torch.Tensor, keys: torch.Tensor, scale: float | None,
            softcap: float | None, out: torch.Tensor | None) -> torch.Tensor:
    """``queries (b, nh, C, hd)`` against ``keys (b, nkv, Tk, hd)`` -> ``(b, nh, C, Tk)``
    scores (written into ``out`` when given), scaled and softcapped."""
    b, n_heads, count, head_dim = queries.shape
    n_kv, width = keys.shape[1], keys.shape[2]
    group = n_heads // n_kv
    # (b, nh, C, hd) -> (b, nkv, group·C, hd): a group's heads against its keys at once
    grouped = queries.reshape(b, n_kv, group * count, head_dim)
    target = out.view(b, n_kv, group * count, width) if out is not None else None
    # (b, nkv, group·C, hd) @ (b, nkv, hd, Tk) -> (b, nkv, group·C, Tk)
    scores = torch.matmul(grouped, keys.transpose(2, 3), out=target)
    if scale is not None:
        scores.mul_(scale)
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    return scores.view(b, n_heads, count, width)


def _context(weights: torch.Tensor, values: torch.Tensor, context: torch.Tensor, a: int,
             total: torch.Tensor | None = None) -> None:
    """Rows ``a ..`` of ``context (b, nkv, group, T, hd)``: ``weights (b, nh, C, Tk)`` times
    ``values (b, nkv, Tk, hd)``, divided by ``total`` when the weights are not normalised."""
    b, n_kv, group, _, head_dim = context.shape
    count, width = weights.shape[2], weights.shape[3]
    # (b, nkv, group·C, Tk) @ (b, nkv, Tk, hd) -> (b, nkv, group·C, hd)
    rows = weights.reshape(b, n_kv, group * count, width) @ values
    rows = rows.view(b, n_kv, group, count, head_dim)
    if total is not None:
        rows.div_(total.view(b, n_kv, group, count, 1))
    context[:, :, :, a:a + count] = rows
