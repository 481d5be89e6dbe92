"""A head's cells -> the pixels that show them: the causal mask (and a sliding window's),
the ``exclude_first`` view, and every cell mapped to pixels of its colour.

A head's matrix is ``(T, T)`` ``[query_pos, key_pos]``; queries on rows, keys on columns.
Masked cells (the causal future; key 0 with ``exclude_first``) get the colormap's "bad"
colour (see ``attnviz.pictures.colours.weight_colormap``); with a sliding window of ``W`` keys,
the keys outside it (``j <= i - W``) are masked too and get a second colour of their own
(``attnviz.pictures.colours.outside_color``). A window of the text (``--tokens A:B``) cuts queries
and keys at the same absolute positions, so ``i - j`` — all the window test reads — is
the same in the cut as in the whole text.

Rows that are not the columns' own queries (``offset``, the generated rows of
``attnviz.pictures.generation``: ``(N, P + N)``, row ``g`` the query at position ``P + g - 1``)
are masked the same way: row ``r`` is the query at column ``r + offset``, the keys after it
masked as the future and those outside its window as outside. ``offset=0`` and a square
array are the plain head, drawn as before.

Attention without the causal mask (an encoder's, cross-attention) is drawn from
``unmasked``: every cell shown, or with a window W (on both sides) the keys W or more
positions away masked. Such a masked array passes through ``masked`` unchanged.

Pictures never hide a weight: when a heatmap has fewer pixels than cells, each pixel
shows the **maximum** of the block of cells it covers (masked cells left out), so a
weight of 1.0 stays visible at any size, and the figure says so (``pool_note``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from matplotlib.colors import Colormap, Normalize, to_rgba

from attnviz.pictures.colours import normalized


def masked(weights: np.ndarray, window: int | None = None,
           offset: int = 0) -> np.ma.MaskedArray:
    """``(T, T)`` weights with the causal future (above the diagonal) masked and, with a
    sliding ``window`` W, the keys outside it (``j <= i - W``); a masked array keeps its
    own mask (the window's added to it). ``(R, C)`` rows whose row ``r`` is the query at
    column ``r + offset`` (``offset``; see the module docstring) are masked the same way."""
    rows, n = weights.shape[-2], weights.shape[-1]
    if offset or rows != n:
        if isinstance(weights, np.ma.MaskedArray):
            if window is None or window >= rows + offset:
                return weights
            return np.ma.masked_array(np.ma.getdata(weights), mask=np.ma.getmaskarray(weights)
                                      | staircase_mask(rows, n, offset, window))
        return np.ma.masked_array(weights, mask=staircase_mask(rows, n, offset, window).copy())
    if isinstance(weights, np.ma.MaskedArray):
        if window is None or window >= n:
            return weights
        return np.ma.masked_array(np.ma.getdata(weights),
                                  mask=np.ma.getmaskarray(weights) | window_mask(n, window))
    # A copy of a cached mask: a memcpy, ~30x cheaper than np.triu, and still the head's own.
    mask = causal_mask(n) if window is None or window >= n else window_mask(n, window)
    return np.ma.masked_array(weights, mask=mask.copy())


def unmasked(weights: np.ndarray, window: int | None = None) -> np.ma.MaskedArray:
    """``(Tq, Tk)`` weights of attention without the causal mask, as a masked array
    ``masked`` leaves alone: nothing masked, or with a ``window`` W (on both sides: an
    encoder's local layer) the keys with ``|j - i| >= W``."""
    rows, cols = weights.shape[-2:]
    return np.ma.masked_array(weights, mask=open_mask(rows, cols, window).copy())


@lru_cache(maxsize=8)
def open_mask(rows: int, cols: int, window: int | None = None) -> np.ndarray:
    """``(rows, cols)`` bool of ``unmasked``: False, or True at ``|j - i| >= window``; one
    read-only array per shape (a copy is ~10x cheaper than building it)."""
    if window is None or window >= max(rows, cols):
        mask = np.zeros((rows, cols), dtype=bool)
    else:
        queries, keys = np.indices((rows, cols), sparse=True)
        mask = np.abs(keys - queries) >= window
    mask.flags.writeable = False
    return mask


@lru_cache(maxsize=8)
def staircase_mask(rows: int, cols: int, offset: int, window: int | None = None) -> np.ndarray:
    """``(rows, cols)`` bool: True at the keys after row ``r``'s query (column ``r + offset``)
    and, with a sliding ``window``, at those outside it; one read-only array per shape."""
    query = np.arange(rows)[:, None] + offset
    keys = np.arange(cols)[None, :]
    mask = keys > query
    if window is not None:
        mask |= keys <= query - window
    mask.flags.writeable = False
    return mask


@lru_cache(maxsize=4)
def causal_mask(n: int) -> np.ndarray:
    """``(n, n)`` bool, True above the diagonal; one read-only array per size."""
    mask = np.triu(np.ones((n, n), dtype=bool), k=1)
    mask.flags.writeable = False
    return mask


@lru_cache(maxsize=4)
def window_mask(n: int, window: int) -> np.ndarray:
    """``(n, n)`` bool, True above the diagonal and outside a sliding window of ``window``
    keys (``j <= i - window``); one read-only array per size."""
    mask = causal_mask(n) | outside_window(np.arange(n), np.arange(n), window)
    mask.flags.writeable = False
    return mask


def outside_window(last_rows: np.ndarray, first_cols: np.ndarray, window: int) -> np.ndarray:
    """``(R, C)`` bool: which blocks hold a cell outside a sliding window of ``window``
    keys, for blocks whose queries end at ``last_rows`` and keys start at ``first_cols``
    (one cell each: the cells outside the window). Key ``j`` is outside query ``i``'s
    window when ``j <= i - window``."""
    return first_cols[None, :] <= last_rows[:, None] - window


def exclude_first(weights: np.ndarray, window: int | None = None,
                  offset: int = 0, causal: bool = True) -> np.ma.MaskedArray:
    """View transform for heads whose first-token sink drowns the rest: key 0 dropped
    (masked) and each row renormalised over keys 1..i (those of its sliding ``window``,
    when there is one; the others stay masked); row 0 has no key left and is masked
    whole. ``(T, T)`` -> ``(T, T)``; the input is not changed. ``offset``: rows that are
    not the columns' own queries (see ``masked``); a row whose only key is 0 is masked whole.
    ``causal=False``: ``weights`` is ``unmasked``'s (an encoder's, cross-attention): each
    row renormalised over its keys other than 0."""
    if not causal:
        view = unmasked(np.ma.getdata(weights), None).astype(np.float64)
        view.mask = np.ma.getmaskarray(weights).copy()
    else:
        view = masked(np.asarray(weights, dtype=np.float64), window, offset).copy()
    view[:, 0] = np.ma.masked
    sums = view.sum(axis=1, keepdims=True)  # masked row 0 -> masked sum
    with np.errstate(invalid="ignore", divide="ignore"):
        out = view / sums
    if causal and offset <= 0:
        out[: 1 - offset, :] = np.ma.masked
    return np.ma.masked_array(np.ma.getdata(out).astype(np.float32), mask=np.ma.getmaskarray(out))


def _axis_plan(n_cells: int, n_px: int) -> tuple[np.ndarray, bool]:
    """Along one axis: for each of ``n_px`` pixels the cell it shows (nearest, when
    there are enough pixels), or the first cell of the block it pools (block maximum;
    the blocks partition the cells, so none is dropped)."""
    if n_px >= n_cells:
        return ((np.arange(n_px) + 0.5) * n_cells / n_px).astype(np.intp), False
    return (np.arange(n_px) * n_cells) // n_px, True


def cell_words(values: np.ma.MaskedArray, height: int, width: int, colormap: Colormap,
               norm: Normalize, window: int | None = None,
               outside_color: str | None = None, offset: int = 0) -> np.ndarray:
    """``(R, C)`` cell values as an ``(height, width)`` image of RGBA words (uint32):
    block maximum where pixels are fewer than cells (masked cells left out; a block is
    masked only when all its cells are), nearest neighbour where they are more. With a
    sliding ``window`` (``values`` masked by ``masked(weights, window)``), a masked block
    holding cells outside the window is drawn in ``outside_color`` rather than the
    colormap's "bad" colour; a block with a visible cell shows its weights. ``offset``:
    row ``r`` is the query at column ``r + offset`` (see ``masked``)."""
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
    if window is not None and window < values.shape[0] + offset:
        # Per row of ``words``: its last query; per column: its first key (blocks or cells).
        last_rows = np.append(rows[1:], values.shape[0]) - 1 if pool_rows else np.arange(
            values.shape[0])
        first_cols = cols if pool_cols else np.arange(values.shape[1])
        outside = hidden & outside_window(last_rows + offset, first_cols, window)
        words[outside] = rgba_word(outside_color)
    # Nearest cell for each pixel: the columns first, while the rows are still cells (fewer
    # words gathered one by one), then whole pixel rows copied.
    if not pool_cols:
        words = words.take(cols, axis=1)
    if not pool_rows:
        words = words.take(rows, axis=0)
    return np.ascontiguousarray(words)


def boundary_left(before: int, n_cols: int, width: int, line_px: int) -> int:
    """Pixels left of the line ``boundary_words`` draws before column ``before``."""
    return max(1, min(width - line_px - 1, round(before * (width - line_px) / n_cols)))


def boundary_words(values: np.ma.MaskedArray, height: int, width: int, colormap: Colormap,
                   norm: Normalize, before: int, line: Sequence[np.uint32],
                   window: int | None = None, outside_color: str | None = None,
                   offset: int = 0, row_before: int | None = None) -> np.ndarray:
    """``cell_words`` with a line of ``len(line)`` pixel columns (their colours) between
    columns ``before - 1`` and ``before``: the columns on each side get their own pixels
    (``boundary_left``), so the line covers no cell at any size. ``row_before``: a line of
    pixel rows between rows ``row_before - 1`` and ``row_before`` too (a sentence pair)."""
    n_rows = values.shape[0]
    if row_before is not None and 0 < row_before < n_rows and height >= len(line) + 2:
        top = boundary_left(row_before, n_rows, height, len(line))
        words = np.empty((height, width), dtype=np.uint32)
        words[:top] = boundary_words(values[:row_before], top, width, colormap, norm, before,
                                     line, window, outside_color, offset)
        words[top:top + len(line)] = np.asarray(line, dtype=np.uint32)[:, None]
        words[top + len(line):] = boundary_words(
            values[row_before:], height - top - len(line), width, colormap, norm, before, line,
            window, outside_color, offset + row_before)
        return words
    n_cols = values.shape[1]
    if not 0 < before < n_cols or width < len(line) + 2:
        return cell_words(values, height, width, colormap, norm, window, outside_color, offset)
    left = boundary_left(before, n_cols, width, len(line))
    words = np.empty((height, width), dtype=np.uint32)
    words[:, :left] = cell_words(values[:, :before], height, left, colormap, norm, window,
                                 outside_color, offset)
    words[:, left : left + len(line)] = np.asarray(line, dtype=np.uint32)[None, :]
    words[:, left + len(line):] = cell_words(values[:, before:], height, width - left - len(line),
                                             colormap, norm, window, outside_color,
                                             offset - before)
    return words


def rgba_word(color: str) -> np.uint32:
    """``color`` as one opaque RGBA word (uint32), as ``cell_words`` draws pixels."""
    return np.rint(np.array(to_rgba(color, 1.0)) * 255).astype(np.uint8).view(np.uint32)[0]


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


def pool_note(n_cells: int, n_px: int, block: int = 1) -> str:
    """'each pixel: max of 3×3 cells' when ``n_cells`` are shown on ``n_px`` pixels, or '';
    for cells that are each the largest of ``block`` x ``block`` weights (a pooled long
    text), 'each cell: the largest of 8×8 weights' or 'each pixel: the largest of up to
    24×24 weights'."""
    if block > 1:
        k = math.ceil(n_cells / n_px) if n_px < n_cells else 1
        up_to = "up to " if k > 1 and n_cells % n_px else ""
        return f"each {'pixel' if k > 1 else 'cell'}: the largest of {up_to}{k * block}×{k * block} weights"
    if n_px >= n_cells:
        return ""
    k = math.ceil(n_cells / n_px)
    return f"each pixel: max of {'' if n_cells % n_px == 0 else 'up to '}{k}×{k} cells"


def pool_note_cells(n_rows: int, n_cols: int, rows_px: int, cols_px: int) -> str:
    """``pool_note`` of ``n_rows`` x ``n_cols`` cells shown on ``rows_px`` x ``cols_px``
    pixels: 'each pixel: max of up to 1×4 cells' (rows first), or ''."""
    if n_rows <= rows_px and n_cols <= cols_px:
        return ""
    k_rows = math.ceil(n_rows / rows_px) if n_rows > rows_px else 1
    k_cols = math.ceil(n_cols / cols_px) if n_cols > cols_px else 1
    exact = all(n <= px or n % px == 0 for n, px in ((n_rows, rows_px), (n_cols, cols_px)))
    return f"each pixel: max of {'' if exact else 'up to '}{k_rows}×{k_cols} cells"


def first_pixel(cell: int, n_cells: int, n_px: int) -> int:
    """The first of ``n_px`` pixels (along one axis of ``n_cells`` cells, as ``cell_words``
    lays them out) that shows ``cell`` or a later one: where a line before ``cell`` goes."""
    plan, _ = _axis_plan(n_cells, n_px)
    return int(np.searchsorted(plan, cell))


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


def block_stride(stride: int, block: int) -> int:
    """A tick every ``s >= stride`` cells of a map pooled by ``block`` (each cell labelled
    with its first position, ``i * block``): the smallest ``s`` whose ``s * block`` is a round
    number (1, 2, 2.5 or 5 x 10^k tokens), else the smallest round ``s``."""
    if block == 1:
        return stride
    rounds = sorted(m * 10**k for k in range(9) for m in (1, 2, 2.5, 5))
    for tokens in rounds:
        if tokens >= stride * block and tokens % block == 0 and tokens <= 20 * stride * block:
            return int(tokens // block)
    return int(next(r for r in rounds if r >= stride and r == int(r)))
