"""The attention engine: a layer's exact weights at any length, a tile at a time, never the
whole ``(T, T)`` matrix unless it is asked for and fits.

A short text is computed as attnviz always computed it: the whole matrix in one product,
torch's softmax, the weights kept (``keep``). A long one goes in two passes over tiles of
``TILE_CELLS`` scores — one key/value group's query heads, a few rows, a range of keys;
small enough to stay in a core's cache:

1. the log-sum-exp of every row, by a running max and sum over the row's tiles;
2. each tile's exact weights ``exp(s - lse)`` — from the same scores, scale, softcap and
   mask as pass 1, so each row sums to 1 to float32 rounding — handed to a ``reduce``
   (pooled maps, statistics, a window; see ``attnviz.analyses.longcontext``), and the
   layer's output ``A·V`` summed tile by tile. Then the tile is dropped.

A long layer whose weights nobody asked for only needs its output: torch's fused CPU
kernel gives it (``_scaled_dot_product_flash_attention_for_cpu``) for plain causal
attention. Its log-sum-exp is not used for weights: it is ~2e-6 off ours (its own
arithmetic of the scores), more than the 1e-6 the reductions keep.

Tiles skip what the causal mask hides: rows ``a .. a + R - 1`` are scored against keys
``k0 .. a + R - 1`` only, ``k0 > 0`` for a sliding window. Without the causal mask (an
encoder, cross-attention) a row sees every key, or those within its window on both sides;
an additive ``bias`` (T5's relative positions) is computed per tile. Memory per layer is the tiles'
and the layer's own ``O(T·d)``, never ``O(T²)``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

import torch

CHUNK_BYTES = 64 * 2**20  # the whole matrix of a text up to this size is one product
TILE_CELLS = 2**18  # scores in a tile (1 MiB of float32): within a core's cache
TILE_ROWS = 64  # query rows in a tile (a multiple of the reduction's blocks)
HIDDEN = -torch.finfo(torch.float32).max  # a hidden score: exp gives 0, and 0 · it is 0


class Tile(NamedTuple):
    """Exact weights of query heads ``heads`` (one key/value group), rows ``q_start ..``,
    keys ``k_start ..`` (absolute positions); valid only while the ``Reduce`` runs."""

    weights: torch.Tensor  # (G, R, K); hidden cells 0
    logs: torch.Tensor  # (G, R, K): ln of the weights, s - lse (hidden: very negative); scratch
    heads: slice
    q_start: int
    k_start: int
    padded: torch.Tensor  # (G, R, K + 2P): each row of weights between P zeros each side
    worker: int = 0  # the thread that made it (tiles of one worker come one at a time)


class Reduce(Protocol):
    """What a caller does with a layer's weights, one tile at a time."""

    align: int  # tile starts (queries and keys) and sizes are multiples of this: pooled blocks

    def __call__(self, tile: Tile) -> None: ...


Bias = Callable[[int, int, int, int], torch.Tensor]
"""An additive score bias (T5's relative positions): ``bias(q_lo, q_hi, k_lo, k_hi)`` ->
``(nh, q_hi - q_lo, k_hi - k_lo)`` for queries and keys at those absolute positions."""


def hidden(q_lo: int, q_hi: int, k_lo: int, k_hi: int, window: int | None,
           device: torch.device | str = "cpu", causal: bool = True) -> torch.Tensor:
    """``(q_hi - q_lo, k_hi - k_lo)`` bool, True where key j is hidden from query i. Causal:
    the future (j > i) and, with a sliding window W, the keys W or more positions back
    (j <= i - W). Not causal (an encoder): nothing, or with a window W the keys W or more
    positions away on either side (|j - i| >= W). Made from two ranges: never a ``(T, T)``
    table."""
    queries = torch.arange(q_lo, q_hi, device=device)[:, None]
    keys = torch.arange(k_lo, k_hi, device=device)[None, :]
    if not causal:
        if window is None:
            return torch.zeros(q_hi - q_lo, k_hi - k_lo, dtype=torch.bool, device=device)
        return (keys - queries).abs_() >= window
    mask = keys > queries
    if window is not None:
        mask |= keys <= queries - window
    return mask


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, start: int,
           scale: float | None, softcap: float | None, window: int | None,
           weights_out: torch.Tensor | None = None, keep: bool = True,
           reduce: Reduce | None = None, causal: bool = True,
           bias: Bias | None = None,
           key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of ``queries (b, nh, T, hd)`` at positions ``start .. start + T - 1``
    over ``keys``/``values (b, nkv, Tk, hd)`` (queries scaled already when ``scale``
    is None; else the scores are multiplied by it, as transformers does). Causal (the
    default): ``Tk = start + T``, key j hidden from query i > j. ``causal=False``: every
    key is seen (an encoder's self-attention, or cross-attention over another text's
    ``Tk`` keys), apart from those outside ``window``. ``bias`` is added to the scores
    (after scale and softcap). ``key_mask (b, Tk)`` bool: True hides that key from every
    query of its row of the batch (the right-padding of a batch of texts of different
    lengths, which nothing else hides from an encoder's queries); its weights are then
    exactly 0 in every row that sees a key it does not hide.
    A masked batch is computed whole (the weights of a scan's batch, bounded by the caller).

    Returns ``(context (b, nh, T, hd), weights)``:
    - ``reduce`` given: the weights go to it tile by tile; ``weights`` is None;
    - ``keep`` (default): ``weights (b, nh, T, start + T)``, written into ``weights_out``
      when given — the whole matrix, in one product;
    - ``keep=False``: only the context is wanted; ``weights`` is None.
    """
    b, n_heads, n_rows, head_dim = queries.shape
    end = start + n_rows
    n_keys = end if causal else keys.shape[2]
    if key_mask is not None and reduce is not None:
        raise ValueError("a key mask is for whole matrices, not reductions")
    if reduce is None and (keep or key_mask is not None
                           or 4 * b * n_heads * n_rows * n_keys <= CHUNK_BYTES):
        # the whole matrix (asked for, or small enough): torch's softmax, as always
        scores = _scores(queries, keys, scale, softcap, weights_out)
        if bias is not None:
            scores += bias(start, end, 0, n_keys)
        if causal or window is not None:
            scores.masked_fill_(hidden(start, end, 0, n_keys, window, scores.device, causal),
                                float("-inf"))
        if key_mask is not None:  # (b, Tk) -> (b, 1, 1, Tk): every head and row of a text.
            # HIDDEN, not -inf: a padding row whose window holds only padding stays finite
            # (no NaN to reach the real rows through its values); exp gives the others 0.
            scores.masked_fill_(key_mask[:, None, None, :].to(scores.device), HIDDEN)
        weights = torch.softmax(scores, dim=-1, out=scores)
        n_kv = keys.shape[1]
        # (b, nkv, group·T, Tk) @ (b, nkv, Tk, hd) -> (b, nkv, group·T, hd)
        context = weights.reshape(b, n_kv, -1, n_keys) @ values
        return context.view(b, n_heads, n_rows, head_dim), weights if keep else None
    if reduce is not None and b != 1:
        raise ValueError("a reduction takes one text at a time")
    if reduce is None and softcap is None and window is None and bias is None and (
            start == 0 or not causal) and queries.device.type == "cpu":
        return _fused(queries, keys, values, scale, causal)[0], None  # torch's fused kernel
    plan = _Plan(queries, keys, values, start, scale, softcap, window,
                 reduce.align if reduce is not None else 1, causal, bias)
    context = queries.new_zeros(b, n_heads, n_rows, head_dim)
    workers = torch.get_num_threads() if queries.device.type == "cpu" else 1
    if workers == 1:
        plan.run(0, 1, context, reduce)
        return context, None
    # Tiles are small: torch's threads would meet at every operation. Instead each worker
    # thread takes every n-th slab of rows (balanced under the causal triangle), one
    # core each; their rows are disjoint, and so is what they write.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def work(worker: int) -> None:  # the caller's modes: they are per thread
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            plan.run(worker, workers, context, reduce)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for done in [pool.submit(work, w) for w in range(workers)]:
                done.result()
    finally:
        torch.set_num_threads(workers)
    return context, None


def _fused(queries, keys, values, scale, causal=True):
    """torch's fused attention on the CPU: ``(context (b, nh, T, hd), lse (b, nh, T))``."""
    group = queries.shape[1] // keys.shape[1]
    if group > 1:  # the kernel wants a key/value head per query head
        keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    context, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        queries.contiguous(), keys.contiguous(), values.contiguous(), 0.0, causal,
        scale=1.0 if scale is None else scale)
    return context, lse


class _Plan:
    """The tiles of one layer's attention and the two passes over them."""

    def __init__(self, queries, keys, values, start, scale, softcap, window, align,
                 causal=True, bias=None):
        self.queries, self.keys, self.values = queries, keys, values
        self.start, self.scale, self.softcap, self.window = start, scale, softcap, window
        self.causal, self.bias = causal, bias
        b, n_heads, self.n_rows, _ = queries.shape
        self.group = n_heads // keys.shape[1]
        self.rows = max(align, TILE_ROWS // align * align)
        self.width = max(align, TILE_CELLS // (self.group * self.rows) // align * align)
        self.align = align

    def slabs(self, worker: int, workers: int):
        """``(batch, kv head, row offset a, rows)`` of every ``workers``-th slab of rows."""
        b, n_kv = self.queries.shape[0], self.keys.shape[1]
        slabs = [(bi, kv, a, min(self.rows, self.n_rows - a)) for bi in range(b)
                 for kv in range(n_kv) for a in range(0, self.n_rows, self.rows)]
        return slabs[worker::workers]

    def key_ranges(self, a: int, count: int):
        """The key tiles ``(k_lo, k_hi)`` of rows ``a .. a + count - 1``: the visible ones."""
        q_lo = self.start + a
        k_lo = 0 if self.window is None else max(0, q_lo - self.window + 1)
        k_lo = k_lo // self.align * self.align
        if self.causal:
            k_end = q_lo + count
        else:
            k_end = self.keys.shape[2]
            if self.window is not None:
                k_end = min(k_end, q_lo + count - 1 + self.window)
        return [(k, min(k + self.width, k_end)) for k in range(k_lo, k_end, self.width)]

    def run(self, worker: int, workers: int, context, reduce) -> None:
        """Both passes over this worker's slabs: each slab's log-sum-exp, then its weights
        (to ``reduce``, with the worker's index) and its rows of ``context``."""
        g = self.group
        scratch = self.queries.new_empty(g * self.rows * self.width)
        # Each row of weights between R zero columns on either side, so that one sheared
        # view reads every distance of a tile (see ``Tile.padded``); the left ones stay 0.
        padded = self.queries.new_zeros(g, self.rows, self.width + 2 * self.rows)
        for bi, kv, a, count in self.slabs(worker, workers):
            heads = slice(kv * g, (kv + 1) * g)
            tiles = self.key_ranges(a, count)
            peak, log_total = self.log_sum_exp(bi, kv, a, count, tiles, scratch)
            for k_lo, k_hi in tiles:
                logs = self.scores(bi, kv, a, count, k_lo, k_hi, HIDDEN, scratch)
                logs.sub_(peak).sub_(log_total)
                width, pad = k_hi - k_lo, self.rows
                rows_padded = padded[:, :count, :width + 2 * pad]
                rows_padded[:, :, pad + width:].zero_()  # what a wider tile left there
                weights = torch.exp(logs, out=rows_padded[:, :, pad:pad + width])
                # (G, R, K) @ (K, hd) -> (G, R, hd)
                context[bi, heads, a:a + count] += weights @ self.values[bi, kv, k_lo:k_hi]
                if reduce is not None:
                    reduce(Tile(weights, logs, heads, self.start + a, k_lo, rows_padded,
                                worker))

    def scores(self, bi, kv, a, count, k_lo, k_hi, fill, scratch) -> torch.Tensor:
        """The tile's scores ``(G, R, K)``: scaled, softcapped, hidden cells ``fill``."""
        g = self.group
        heads = slice(kv * g, (kv + 1) * g)
        # (G, R, hd) -> (G·R, hd) @ (hd, K) -> (G·R, K): the group's heads, its keys read once
        rows = self.queries[bi, heads, a:a + count].reshape(g * count, -1)
        out = scratch[:g * count * (k_hi - k_lo)].view(g * count, k_hi - k_lo)
        scores = torch.matmul(rows, self.keys[bi, kv, k_lo:k_hi].T, out=out)
        if self.scale is not None:
            scores.mul_(self.scale)
        if self.softcap is not None:
            scores.div_(self.softcap).tanh_().mul_(self.softcap)
        scores = scores.view(g, count, k_hi - k_lo)
        q_lo = self.start + a
        if self.bias is not None:
            scores += self.bias(q_lo, q_lo + count, k_lo, k_hi)[heads]
        if self.causal:
            masked = k_hi - 1 > q_lo or (
                self.window is not None and k_lo <= q_lo + count - 1 - self.window)
        else:
            masked = self.window is not None and (
                k_lo <= q_lo + count - 1 - self.window or k_hi - 1 >= q_lo + self.window)
        if masked:
            scores.masked_fill_(hidden(q_lo, q_lo + count, k_lo, k_hi, self.window,
                                       scores.device, self.causal), fill)
        return scores

    def log_sum_exp(self, bi, kv, a, count, tiles, scratch):
        """Pass 1 for one slab: each row's log-sum-exp by a running max and sum, as its two
        parts ``(max s, ln Σ exp(s - max s))``, ``(G, R, 1)`` each: subtracted one after the
        other, ``s - max`` is exact near the top, where a float32 lse of a large score (its
        last bit ~2e-6 at 30) would cost weights near 1 their sixth digit."""
        g = self.group
        peak = self.queries.new_full((g, count, 1), float("-inf"))
        total = self.queries.new_zeros((g, count, 1))
        for k_lo, k_hi in tiles:
            scores = self.scores(bi, kv, a, count, k_lo, k_hi, float("-inf"), scratch)
            new = torch.maximum(peak, scores.amax(dim=-1, keepdim=True))
            # a row with every key of the tile hidden (and none before) keeps -inf: no NaN
            shift = torch.where(torch.isinf(new), 0.0, new)
            total *= torch.exp(peak - shift)
            total += torch.exp(scores.sub_(shift), out=scores).sum(dim=-1, keepdim=True)
            peak = new
        return peak, total.log_()


def _scores(queries: torch.Tensor, keys: torch.Tensor, scale: float | None,
            softcap: float | None, out: torch.Tensor | None) -> torch.Tensor:
    """``queries (b, nh, T, hd)`` against ``keys (b, nkv, Tk, hd)`` -> ``(b, nh, T, Tk)``
    scores (written into ``out`` when given), scaled and softcapped."""
    b, n_heads, count, head_dim = queries.shape
    n_kv, width = keys.shape[1], keys.shape[2]
    group = n_heads // n_kv
    # (b, nh, T, hd) -> (b, nkv, group·T, hd): a group's heads against its keys at once
    grouped = queries.reshape(b, n_kv, group * count, head_dim)
    target = out.view(b, n_kv, group * count, width) if out is not None else None
    # (b, nkv, group·T, hd) @ (b, nkv, hd, Tk) -> (b, nkv, group·T, Tk)
    scores = torch.matmul(grouped, keys.transpose(2, 3), out=target)
    if scale is not None:
        scores.mul_(scale)
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    return scores.view(b, n_heads, count, width)
