"""A head's cells -> the pixels that show them: the causal mask, the ``exclude_first`` view,
and every cell mapped to pixels of its colour.

A head's matrix is ``(T, T)`` ``[query_pos, key_pos]``; queries on rows, keys on columns.
Masked cells (the causal future; key 0 with ``exclude_first``) get the colormap's "bad"
colour (see ``attnviz.colours.weight_colormap``).

Pictures never hide a weight: when a heatmap has fewer pixels than cells, each pixel
shows the **maximum** of the block of cells it covers (masked cells left out), so a
weight of 1.0 stays visible at any size, and the figure says so (``pool_note``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from matplotlib.colors import Colormap, Normalize

from attnviz.colours import normalized


def masked(weights: np.ndarray) -> np.ma.MaskedArray:
    """``(T, T)`` weights with the causal future (above the diagonal) masked; a masked
    array is returned as it is (its own mask wins)."""
    if isinstance(weights, np.ma.MaskedArray):
        return weights
    # A copy of a cached mask: a memcpy, ~30x cheaper than np.triu, and still the head's own.
    return np.ma.masked_array(weights, mask=causal_mask(weights.shape[-1]).copy())


@lru_cache(maxsize=4)
def causal_mask(n: int) -> np.ndarray:
    """``(n, n)`` bool, True above the diagonal; one read-only array per size."""
    mask = np.triu(np.ones((n, n), dtype=bool), k=1)
    mask.flags.writeable = False
    return mask


def exclude_first(weights: np.ndarray) -> np.ma.MaskedArray:
    """View transform for heads whose first-token sink drowns the rest: key 0 dropped
    (masked) and each row renormalised over keys 1..i; row 0 has no key left and is
    masked whole. ``(T, T)`` -> ``(T, T)``; the input is not changed."""
    view = masked(np.asarray(weights, dtype=np.float64)).copy()
    view[:, 0] = np.ma.masked
    sums = view.sum(axis=1, keepdims=True)  # masked row 0 -> masked sum
    with np.errstate(invalid="ignore", divide="ignore"):
        out = view / sums
    out[0, :] = np.ma.masked
    return np.ma.masked_array(np.ma.getdata(out).astype(np.float32), mask=np.ma.getmaskarray(out))


def _axis_plan(n_cells: int, n_px: int) -> tuple[np.ndarray, bool]:
    """Along one axis: for each of ``n_px`` pixels the cell it shows (nearest, when
    there are enough pixels), or the first cell of the block it pools (block maximum;
    the blocks partition the cells, so none is dropped)."""
    if n_px >= n_cells:
        return ((np.arange(n_px) + 0.5) * n_cells / n_px).astype(np.intp), False
    return (np.arange(n_px) * n_cells) // n_px, True


def cell_words(values: np.ma.MaskedArray, height: int, width: int, colormap: Colormap,
               norm: Normalize) -> np.ndarray:
    """``(R, C)`` cell values as an ``(height, width)`` image of RGBA words (uint32):
    block maximum where pixels are fewer than cells (masked cells left out; a block is
    masked only when all its cells are), nearest neighbour where they are more."""
    rows, pool_rows = _axis_plan(values.shape[0], height)
    cols, pool_cols = _axis_plan(values.shape[1], width)
    if pool_rows or pool_cols:
        data = np.where(np.ma.getmaskarray(values), -np.inf, np.ma.getdata(values))
        if pool_rows:
            data = block_max(data, rows, axis=0)
        if pool_cols:
            data = block_max(data, cols, axis=1)
        hidden = data == -np.inf  # blocks of masked cells only
    else:  # every cell gets pixels: colour the cells, paint the masked ones over
        data, hidden = np.ma.getdata(values), np.ma.getmaskarray(values)
    # Colours of a plain array (a masked one costs ~3x more in the norm), then the masked
    # cells painted over in the colormap's "bad" colour: the same words either way.
    with np.errstate(invalid="ignore"):  # whatever a masked cell holds is never shown
        words = colormap(normalized(norm, data), bytes=True).view(np.uint32)[..., 0]  # (r, c)
    words[hidden] = colormap(np.ma.masked_all(1), bytes=True).view(np.uint32)[0, 0]
    if not pool_rows:
        words = words.take(rows, axis=0)  # nearest cell for each pixel row
    if not pool_cols:
        words = words.take(cols, axis=1)
    return np.ascontiguousarray(words)


def block_max(data: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    """The maximum of each block of ``data`` along ``axis``; block ``k`` runs from
    ``starts[k]`` to the next start. ``_axis_plan``'s blocks all hold ``q`` or ``q + 1``
    cells, so this is a strided max: the first ``q`` cells of every block gathered at
    once, then the extra cell of the longer blocks — the same numbers as
    ``np.maximum.reduceat``, ~15x faster along the rows (numpy's reduceat is slow there)."""
    data = np.moveaxis(data, axis, -1)
    sizes = np.diff(starts, append=data.shape[-1])
    q = int(sizes.min())
    out = data[..., starts[:, None] + np.arange(q)].max(axis=-1)  # (..., blocks)
    longer = sizes > q
    if longer.any():
        out[..., longer] = np.maximum(out[..., longer], data[..., starts[longer] + q])
    return np.moveaxis(out, -1, axis)


def pool_note(n_cells: int, n_px: int) -> str:
    """'each pixel: max of 3×3 cells' when ``n_cells`` are shown on ``n_px`` pixels, or ''."""
    if n_px >= n_cells:
        return ""
    k = math.ceil(n_cells / n_px)
    return f"each pixel: max of {'' if n_cells % n_px == 0 else 'up to '}{k}×{k} cells"


def pool(weights: np.ndarray, max_cells: int) -> np.ma.MaskedArray:
    """A ``(T, T)`` head shrunk to at most ``max_cells`` a side by the block maximum
    (masked cells excluded); small heads are returned as they are."""
    values = masked(weights)
    n = values.shape[0]
    if n <= max_cells:
        return values
    starts, _ = _axis_plan(n, max_cells)
    data = np.where(np.ma.getmaskarray(values), -np.inf, np.ma.getdata(values))
    data = block_max(block_max(data, starts, axis=0), starts, axis=1)
    return np.ma.masked_array(data, mask=data == -np.inf)
