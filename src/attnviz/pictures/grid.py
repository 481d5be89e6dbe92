"""Grids of small heatmaps in one picture (matplotlib without pyplot): ``grid_figure`` lays
out tiles — every tile pooled by block maximum to its pixels — with one colorbar, token
labels on the left column and bottom row, and the masks' legend; ``grid_layout`` computes
that geometry without drawing, so a run checks every picture's size before its first file
(``check_overviews``). The grids of a run: the overview of a layer's heads
(``overview_plan``, ``heads_overview``: 4 or 6 a row, or kv group by kv group under a shared
label) and the model grid, layers x heads (``model_grid_names``, ``save_grid``). A
``GridFigure`` can take another layer's tiles without being laid out again (``retile``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.analyses.attention import AttentionResult
from attnviz.files.fileio import write_bytes
from attnviz.pictures.cells import (
    block_stride,
    boundary_words,
    cell_words,
    masked,
    pool_note,
    pool_note_cells,
)
from attnviz.pictures.colours import (
    WEIGHTS,
    Measure,
    colorbar,
    make_norm,
    outside_color,
    weight_colormap,
)
from attnviz.pictures.families import (
    LEGEND_FONT,
    kv_groups,
    legend_width_in,
    outside_label,
    window_note,
)
from attnviz.pictures.fonts import Fonts, text_width_in
from attnviz.pictures.heatmap import BOUNDARY_LINE, GENERATED_COLOR, PanelRows, boundary_line, word
from attnviz.pictures.images import check_image_size, encode_raster, new_figure, vector_bytes

_GROUP_BREAK_IN = 0.25  # extra room between two kv groups side by side in a grid
_GROUP_LABEL_IN = 0.2  # room for a kv group's shared label above its tiles' titles
_GROUP_ROW_MAX = 8  # at most this many heads of whole kv groups on one row of the overview
LABEL_FONT = 8.0  # points: the tiles' token labels, or their position numbers ...
MIN_LABEL_FONT = 7.0  # ... or as small as this, when that gives every token its label
_LABEL_PITCH = 1.05  # a token label per cell when the cells are this many lines apart


@dataclass
class GridFigure:
    """A laid-out grid of small heatmaps: the figure, and each tile's pixel box."""

    fig: Figure
    canvas: FigureCanvasAgg
    ax: object  # the axes over the grid area, in its pixel units from the top left
    area: tuple[slice, slice]  # buffer rows/columns of the whole grid
    tiles: list[list[tuple[slice, slice] | None]]  # per tile, its box inside the buffer
    mosaic: np.ndarray  # (H, W) RGBA words of the grid area, white between tiles
    note: str
    title: object = None  # the suptitle Text
    colormap: Colormap | None = None
    norm: Normalize | None = None
    background: object = None  # the static art, saved by the first image() (blitting)
    row_windows: Sequence[int | None] = ()  # each row's sliding window (see grid_figure)
    outside_color: str | None = None
    rows: PanelRows | None = None  # tiles of other rows than the columns' queries

    def retile(self, tiles, title: str, row_windows: Sequence[int | None] | None = None) -> None:
        """Other tiles (nested like ``grid_figure``'s, empty where this grid's are) and
        another title in the same layout: the next layer's overview without laying out
        and drawing the whole figure again (``row_windows``: the new tiles' windows)."""
        if row_windows is not None:
            self.row_windows = list(row_windows)
        top, left = self.area[0].start, self.area[1].start
        for r, (row, boxes) in enumerate(zip(tiles, self.tiles)):
            window = _row_window(self.row_windows, r)
            for tile, box in zip(row, boxes):
                if box is not None:
                    ys, xs = box
                    tile = tile() if callable(tile) else tile
                    self.mosaic[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left] = (
                        _tile_words(tile, window, ys.stop - ys.start, xs.stop - xs.start,
                                    self.colormap, self.norm, self.outside_color, self.rows))
        self.title.set_text(title)

    def image(self) -> np.ndarray:
        """The rendered figure, ``(H, W, 4)``: the static art (drawn once, then restored),
        the title, then the tiles pasted."""
        self.title.set_animated(True)  # drawn over the saved background, not into it
        try:
            if self.background is None:
                self.canvas.draw()
                self.background = self.canvas.copy_from_bbox(self.fig.bbox)
            else:
                self.canvas.restore_region(self.background)
            self.fig.draw_artist(self.title)
        finally:
            self.title.set_animated(False)  # vector output draws it as any other text
        pixels = np.asarray(self.canvas.buffer_rgba())
        words = pixels.view(np.uint32)[..., 0]
        top, left = self.area[0].start, self.area[1].start
        for ys, xs in (box for row in self.tiles for box in row if box is not None):
            # tile by tile: the titles between the tiles stay drawn
            words[ys, xs] = self.mosaic[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
        return pixels

    def to_bytes(self, fmt: str) -> bytes:
        if fmt in ("svg", "pdf"):
            area_h, area_w = self.mosaic.shape
            rgba = self.mosaic.view(np.uint8).reshape(area_h, area_w, 4)
            image = self.ax.imshow(rgba, interpolation="none", aspect="auto", zorder=0,
                                   extent=(0, area_w, area_h, 0))
            self.ax.set_xlim(0, area_w)
            self.ax.set_ylim(area_h, 0)
            try:
                return vector_bytes(self.fig, fmt)
            finally:
                image.remove()
        return encode_raster(self.image(), fmt, self.fig.dpi)

    def save(self, path: Path, fmt: str, writer: Executor | None = None) -> Future | None:
        """Write the picture; with ``writer`` (rasters), compress and write in its thread
        while the caller goes on (the figure is free again when this returns): the write's
        future, whose ``result()`` re-raises a failed write."""
        if writer is None or fmt in ("svg", "pdf"):
            write_bytes(path, self.to_bytes(fmt))
            return None
        rgba = self.image().copy()
        return writer.submit(lambda: write_bytes(path, encode_raster(rgba, fmt, self.fig.dpi)))


def _row_window(row_windows: Sequence[int | None], row: int) -> int | None:
    return row_windows[row] if row < len(row_windows) else None


def _tile_words(tile, window: int | None, height: int, width: int, colormap: Colormap,
                norm: Normalize, outside: str | None, rows: PanelRows | None) -> np.ndarray:
    """One tile's pixels (see ``cell_words``; with ``rows``, its offset and boundary line)."""
    if rows is None:
        return cell_words(masked(tile, window), height, width, colormap, norm, window, outside)
    values = masked(tile, window, rows.offset)
    if rows.marked_from is None:
        return cell_words(values, height, width, colormap, norm, window, outside, rows.offset)
    return boundary_words(values, height, width, colormap, norm, rows.marked_from,
                          boundary_line(), window, outside, rows.offset, rows.marked_rows_from)


def grid_figure(
    tiles: np.ndarray,
    title: str,
    row_names: Sequence[str] = (),
    col_names: Sequence[str] = (),
    tile_titles: Sequence[Sequence[str]] = (),
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    token_labels: Sequence[str] = (),
    *,
    row_windows: Sequence[int | None] = (),
    col_breaks: Sequence[int] = (),
    groups: Sequence[tuple[int, int, int, str]] = (),
    rows_of_tiles: PanelRows | None = None,
    measure: Measure = WEIGHTS,
    mask_label: str | None = "masked",
) -> GridFigure:
    """Lay out a grid of small heatmaps — ``tiles`` is ``(rows, cols, T, T)`` (or masked
    arrays), NaN for an empty slot — with one colorbar, token labels on the left column
    and bottom row where they fit, and every tile pooled by block maximum to its pixels.

    ``tiles`` may also be nested lists (rows of tiles): each a ``(T, T)`` array, None for an
    empty slot, or a function returning the array — called when that tile is drawn, so a
    grid of 144 transformed heads never holds them all at once.

    Model families: ``row_windows`` gives each row's sliding window (keys outside it in
    the second mask colour, named in the legend); ``col_breaks`` the columns that get
    extra room before them, and ``groups`` ``(row, first col, last col, label)`` a label
    with a bracket over those tiles (kv groups). ``rows_of_tiles`` (``PanelRows``): tiles of
    ``(R, T)`` other rows than the columns' queries (the generated rows), labelled on the left
    with its labels; their boundary line drawn between the cells, the generated labels coloured.
    ``measure``: what the colours stand for (``colours.Measure``; weights on 0..1 by default).
    ``mask_label``: the legend's name for masked cells (None: no swatch, nothing is masked)."""
    rows, cols = len(tiles), len(tiles[0])
    n = _first_tile(tiles).shape[-1]
    legend = outside_label(row_windows, n)
    if legend is not None and measure.block > 1:  # windows in cells: the titles name them
        legend = "outside\nthe window"
    extra = rows_of_tiles.labels if rows_of_tiles is not None else ()
    fonts = Fonts([*token_labels, title, *extra])
    with fonts.context():
        layout = grid_layout(rows, cols, n, fonts, row_names, col_names, tile_titles, dpi,
                              token_labels, col_breaks, bool(groups), legend, rows_of_tiles,
                              title if rows_of_tiles is not None else "", measure.block,
                              mask_label)
        (tile_in, gap_in, row_gap_in, label_font, ticks, tick_labels, label_in, left, tile_px,
         note, top, bottom, grid_w, grid_h, width, height) = layout[:16]
        tile_h, n_rows = layout.tile_h_px, layout.n_rows
        fig, canvas = new_figure(width, height, dpi)
        colormap, mask = weight_colormap(cmap)
        outside = outside_color(cmap)
        norm = make_norm(scale, measure.top)
        ax = fig.add_axes((left / width, bottom / height, grid_w / width, grid_h / height))
        ax.set_axis_off()
        box = ax.get_window_extent()
        height_px = canvas.get_width_height()[1]
        x0, y0 = round(box.x0), height_px - round(box.y1)
        area_w, area_h = round(box.x1) - x0, height_px - round(box.y0) - y0
        ax.set_xlim(0, area_w)
        ax.set_ylim(area_h, 0)  # data units = pixels of the grid area, from its top left
        break_px = _GROUP_BREAK_IN * dpi
        step_x = (area_w - tile_px - len(col_breaks) * break_px) / max(cols - 1, 1)
        step_y = (area_h - tile_h) / max(rows - 1, 1)
        # each column's left edge: even steps, plus the room before each kv group's first
        col_x = [round(c * step_x + sum(b <= c for b in col_breaks) * break_px) for c in range(cols)]
        mosaic = np.full((area_h, area_w), word((255, 255, 255, 255)), dtype=np.uint32)
        boxes: list[list] = []
        for r in range(rows):
            boxes.append([])
            window = _row_window(row_windows, r)
            for c in range(cols):
                ty, tx = round(r * step_y), col_x[c]
                tile = tiles[r][c]
                tile = tile() if callable(tile) else tile
                if tile is None or np.isnan(np.ma.getdata(tile)).all():
                    boxes[r].append(None)
                    continue
                mosaic[ty : ty + tile_h, tx : tx + tile_px] = _tile_words(
                    tile, window, tile_h, tile_px, colormap, norm, outside, rows_of_tiles)
                boxes[r].append((slice(y0 + ty, y0 + ty + tile_h), slice(x0 + tx, x0 + tx + tile_px)))
        centre = lambda k, start: start + (k + 0.5) * tile_px / n  # noqa: E731  cell k's centre
        row_centre = lambda k: (k + 0.5) * tile_h / n_rows  # noqa: E731
        for c, name in enumerate(col_names):
            ax.text(col_x[c] + tile_px / 2, -4, name, ha="center", va="bottom", fontsize=8)
        for r, name in enumerate(row_names):
            ax.text(-4 - layout.row_label_in * dpi, round(r * step_y) + tile_h / 2, name,
                    ha="right", va="center", fontsize=8)
        for r, names in enumerate(tile_titles):
            for c, name in enumerate(names):
                ax.text(col_x[c] + tile_px / 2, round(r * step_y) - 2, name, ha="center",
                        va="bottom", fontsize=8)
        for r, first, last, name in groups:  # a bracket over the group's tiles and titles
            y = round(r * step_y) - 2 - 0.17 * dpi
            x_from, x_to = col_x[first] + 2, col_x[last] + tile_px - 2
            ax.plot([x_from, x_from, x_to, x_to], [y + 0.05 * dpi, y, y, y + 0.05 * dpi],
                    color="#555555", linewidth=0.8, solid_joinstyle="miter", clip_on=False)
            ax.text((x_from + x_to) / 2, y - 2, name, ha="center", va="bottom", fontsize=8,
                    color="#222222")
        marked = None if rows_of_tiles is None else rows_of_tiles.marked_from
        for r in range(rows):  # token labels left of the first column ...
            for i, label in zip(layout.row_ticks, layout.row_tick_labels):
                ax.text(-3, round(r * step_y) + row_centre(i), label, ha="right", va="center",
                        fontsize=label_font, parse_math=False,
                        **({"color": GENERATED_COLOR} if rows_of_tiles is not None
                           and rows_of_tiles.row_marked(i) else {}))
        last = [max(r for r in range(rows) if boxes[r][c] is not None) for c in range(cols)
                if any(boxes[r][c] is not None for r in range(rows))]
        for c, r in enumerate(last):  # ... and below the lowest tile of each column
            for i, label in zip(ticks, tick_labels):
                generated = {"color": GENERATED_COLOR} if marked is not None and i >= marked else {}
                ax.text(col_x[c] + centre(i, 0), round(r * step_y) + tile_h + 3, label,
                        ha="center", va="top", rotation=90, fontsize=label_font, parse_math=False,
                        **generated)
        suptitle = fig.suptitle(title, fontsize=12, y=1 - 0.12 / height)
        if note:
            fig.text(0.5, 1 - 0.33 / height, note, ha="center", va="top", fontsize=8,
                     color="#444444")
        cbar_h = layout.cbar_h
        cbar_x = width - 0.9 - _grid_legend_extra(legend, mask_label)  # a name on two lines
        cax = fig.add_axes((cbar_x / width, (bottom + grid_h - cbar_h + 0.3) / height,
                            0.15 / width, (cbar_h - 0.3) / height))
        colorbar(fig, cax, norm, colormap, measure.label)
        swatches = ([(mask_label, mask)] if mask_label else []) + (
            [(legend, outside)] if legend else [])
        for k, (name, color) in enumerate(swatches):  # the window's below the future's
            swatch = fig.add_axes((cbar_x / width, (bottom + grid_h - cbar_h - 0.3 * k) / height,
                                   0.15 / width, 0.15 / height))
            swatch.add_patch(Rectangle((0, 0), 1, 1, facecolor=color, edgecolor="#282828",
                                       linewidth=0.5))
            swatch.set_axis_off()
            swatch.text(1.3, 0.5, name, va="center", fontsize=LEGEND_FONT,
                        transform=swatch.transAxes)
    return GridFigure(fig, canvas, ax, (slice(y0, y0 + area_h), slice(x0, x0 + area_w)), boxes,
                      mosaic, note, suptitle, colormap, norm, row_windows=list(row_windows),
                      outside_color=outside, rows=rows_of_tiles)


def _grid_legend_extra(legend: str | None, mask_label: str | None = None) -> float:
    """Inches the grid's right margin grows so the window's legend (and the masked cells'
    name) fits beside its swatch."""
    return max(0.0, legend_width_in(legend) - 0.45, legend_width_in(mask_label) - 0.45)


def _first_tile(tiles) -> np.ndarray:
    for row in tiles:
        for tile in row:
            if tile is not None:
                return tile() if callable(tile) else tile
    raise ValueError("a grid needs at least one tile")


class GridLayout(NamedTuple):
    """``grid_layout``'s geometry (inches unless named ``_px``)."""

    tile_in: float
    gap_in: float
    row_gap_in: float
    label_font: float
    ticks: list[int]
    tick_labels: list[str]
    label_in: float
    left: float
    tile_px: int
    note: str
    top: float
    bottom: float
    grid_w: float
    grid_h: float
    width: float
    height: float
    # Rows of the tiles (the columns' tokens for square tiles, else PanelRows' labels):
    n_rows: int
    tile_h_px: int
    row_ticks: list[int]
    row_tick_labels: list[str]
    row_label_in: float
    cbar_h: float  # the colorbar, its swatches below it


_TILE_MIN_RATIO = 0.2  # tiles of few generated rows are at least this tall for their width


def grid_layout(rows: int, cols: int, n: int, fonts: Fonts, row_names: Sequence[str],
                 col_names: Sequence[str], tile_titles: Sequence[Sequence[str]], dpi: int,
                 token_labels: Sequence[str], col_breaks: Sequence[int] = (),
                 groups: bool = False, legend: str | None = None,
                 rows_of_tiles: PanelRows | None = None, title: str = "",
                 block: int = 1, mask_label: str | None = None) -> GridLayout:
    """The geometry of ``grid_figure`` (sizes in inches), computed without drawing, so a
    run can check every picture's size before it writes its first file."""
    tile_in = 1.6 if cols <= 6 else 1.1
    gap_in = max(0.06, 0.08 * tile_in)
    row_gap_in = 0.25 if tile_titles else gap_in  # room for the titles of the next row
    if groups:
        row_gap_in += _GROUP_LABEL_IN  # and for the kv groups' labels above them
    pitch = tile_in * 72 / n  # points per cell
    ticks, tick_labels, label_font = axis_labels(token_labels, n, pitch, block, fonts)
    label_in = text_width_in(tick_labels, label_font) + 0.08 if ticks else 0.0
    names_in = text_width_in(list(row_names), 8) + 0.15 if row_names else 0.0
    left = 0.25 + names_in + label_in
    tile_px = math.floor(tile_in * dpi)
    note = pool_note(n, tile_px, block)
    top = 0.4 + (0.2 if note else 0) + (0.3 if col_names else 0) + (0.2 if tile_titles else 0)
    bottom = 0.3 + label_in
    grid_w = cols * tile_in + (cols - 1) * gap_in
    if groups:
        top += _GROUP_LABEL_IN
    if col_breaks:
        grid_w += len(col_breaks) * _GROUP_BREAK_IN
    if legend:
        bottom = max(bottom, 0.5)  # the window's swatch sits below the future's
    if rows_of_tiles is None:
        grid_h = rows * tile_in + (rows - 1) * row_gap_in
        width = left + grid_w + 1.15 + _grid_legend_extra(legend, mask_label)
        height = top + grid_h + bottom
        return GridLayout(tile_in, gap_in, row_gap_in, label_font, ticks, tick_labels, label_in,
                          left, tile_px, note, top, bottom, grid_w, grid_h, width, height,
                          n, tile_px, ticks, tick_labels, label_in, min(grid_h, 3.0))
    # Tiles of R generated rows x n columns: as wide, cells as wide, R/n as tall (or more).
    n_rows = len(rows_of_tiles.labels)
    tile_h_in = tile_in * min(1.0, max(n_rows / n, _TILE_MIN_RATIO))
    tile_h = math.floor(tile_h_in * dpi)
    # a row's number: the column of its own token (row r is the query at column r + offset)
    row_ticks, row_tick_labels, row_font = axis_labels(
        rows_of_tiles.labels, n_rows, tile_h_in * 72 / n_rows, 1, fonts, first=rows_of_tiles.offset + 1)
    label_font = min(label_font, row_font)
    row_label_in = text_width_in(row_tick_labels, label_font) + 0.08 if row_ticks else 0.0
    left = 0.25 + names_in + row_label_in
    line = len(BOUNDARY_LINE) if rows_of_tiles.marked_from is not None else 0
    note = pool_note_cells(n_rows, n, tile_h, tile_px - line)
    top = 0.4 + (0.2 if note else 0) + (0.3 if col_names else 0) + (0.2 if tile_titles else 0)
    top += _GROUP_LABEL_IN if groups else 0.0
    grid_h = rows * tile_h_in + (rows - 1) * row_gap_in
    cbar_h = max(min(grid_h, 3.0), 1.6)  # a colorbar that can be read beside short tiles
    bottom = max(bottom, cbar_h - grid_h + (0.45 if legend else 0.15))
    width = left + grid_w + 1.15 + _grid_legend_extra(legend, mask_label)
    height = top + grid_h + bottom
    width = max(width, text_width_in([title], 12) + 0.4)  # the title is not cut
    return GridLayout(tile_in, gap_in, row_gap_in, label_font, ticks, tick_labels, label_in,
                      left, tile_px, note, top, bottom, grid_w, grid_h, width, height,
                      n_rows, tile_h, row_ticks, row_tick_labels, row_label_in, cbar_h)


def axis_labels(labels: Sequence[str], n: int, pitch: float, block: int, fonts: Fonts,
                first: int = 0) -> tuple[list[int], list[str], float]:
    """The ticks along a tile side of ``n`` cells ``pitch`` points apart, their texts and
    font size: every token's label when each cell has room for one (at LABEL_FONT, down to
    MIN_LABEL_FONT); else position numbers (cell ``i`` is position ``first + i``) at a
    round step (1, 2, 5, 10, ...): a label every k-th token tells nothing of the tokens
    between. A pooled map (``block`` > 1) keeps its own labels (its blocks' first
    positions) at round steps. No labels when fewer than two would fit."""
    if not labels:
        return [], [], LABEL_FONT
    if block == 1 and pitch >= MIN_LABEL_FONT * _LABEL_PITCH:
        return (list(range(n)), [fonts.label(label) for label in labels[:n]],
                min(LABEL_FONT, pitch / _LABEL_PITCH))
    wanted = max(1, math.ceil(LABEL_FONT * 1.3 / pitch))
    stride = block_stride(wanted, block) if block > 1 else next(
        m * 10**k for k in range(10) for m in (1, 2, 5) if m * 10**k >= wanted)
    if n / stride < 2:
        return [], [], LABEL_FONT
    ticks = list(range(0, n, stride))
    if block > 1:
        return ticks, [fonts.label(labels[i]) for i in ticks], LABEL_FONT
    return ticks, [str(first + i) for i in ticks], LABEL_FONT


def _overview_shape(n_heads: int) -> tuple[int, int]:
    """(rows, columns) of the heads overview: 4 or 6 heads a row."""
    cols = min(n_heads, 4 if n_heads <= 16 else 6)
    return math.ceil(n_heads / cols), cols



def _heads_text(heads: Sequence[int]) -> str:
    if len(heads) == 1:
        return f"head {heads[0]}"
    if list(heads) == list(range(heads[0], heads[-1] + 1)):
        return f"heads {heads[0]}–{heads[-1]}"
    return "heads " + ", ".join(map(str, heads))


@dataclass
class OverviewPlan:
    """Where each head of a layer sits in its overview grid, and how tiles are named."""

    slots: list[list[int | None]]  # the head of each tile, row by row (None: empty slot)
    titles: list[list[str]]  # each tile's title
    col_breaks: Sequence[int] = ()  # columns with extra room before them (a new kv group)
    groups: Sequence[tuple[int, int, int, str]] = ()  # (row, first col, last col, label)


def overview_plan(n_heads: int, kv_heads: Sequence[int] = ()) -> OverviewPlan:
    """The overview's layout. Plain heads: 4 or 6 a row, "head 5". Grouped-query heads:
    each kv group's heads side by side, whole groups on a row (at most _GROUP_ROW_MAX
    heads; a larger group wraps onto rows of its own), a gap between groups on one row,
    a shared label over each ("kv 1: heads 4–7") and "head 5 · kv 1" over each tile."""
    if not kv_heads or len(set(kv_heads)) == len(kv_heads):
        rows, cols = _overview_shape(n_heads)
        heads = [*range(n_heads), *[None] * (rows * cols - n_heads)]
        slots = [heads[r * cols : (r + 1) * cols] for r in range(rows)]
        return OverviewPlan(slots, [[f"head {h}" if h is not None else "" for h in row]
                                    for row in slots])
    groups = kv_groups(kv_heads)
    size = max(len(heads) for _, heads in groups)
    slots, labels, breaks = [], [], []
    # One row of more than 6 small tiles leaves the colorbar too short: wrap a lone group.
    lone = len(groups) == 1 and size > 6
    if size > _GROUP_ROW_MAX or lone:  # one group over several rows
        cols = math.ceil(size / max(2 if lone else 1, math.ceil(size / _GROUP_ROW_MAX)))
        for kv, heads in groups:
            for start in range(0, len(heads), cols):
                chunk = heads[start : start + cols]
                labels.append((len(slots), 0, len(chunk) - 1, f"kv {kv}: {_heads_text(heads)}"))
                slots.append([*chunk, *[None] * (cols - len(chunk))])
    else:
        per_row = max(1, min(_GROUP_ROW_MAX // size, len(groups)))
        if per_row == len(groups) and per_row * size > 6:
            per_row = math.ceil(len(groups) / 2)  # two rows rather than one of small tiles
        per_row = math.ceil(len(groups) / math.ceil(len(groups) / per_row))  # balanced rows
        cols = per_row * size
        breaks = [k * size for k in range(1, per_row)]
        for r in range(math.ceil(len(groups) / per_row)):
            row = []
            for k, (kv, heads) in enumerate(groups[r * per_row : (r + 1) * per_row]):
                labels.append((r, k * size, k * size + len(heads) - 1,
                               f"kv {kv}: {_heads_text(heads)}"))
                row += [*heads, *[None] * (size - len(heads))]
            slots.append([*row, *[None] * (cols - len(row))])
    titles = [[f"head {h} · kv {kv_heads[h]}" if h is not None else "" for h in row]
              for row in slots]
    return OverviewPlan(slots, titles, breaks, labels)


def check_overviews(result: AttentionResult, dpi: int = 100) -> None:
    """Refuse, before any file is written, a run whose overview pictures (``heads``, and
    ``model`` for several layers) would be too large: they are drawn last."""
    from attnviz.pictures.forms import Form

    n_layers, n_heads, _, n = result.weights.shape
    form = Form.of(result)
    labels = form.columns
    plan = overview_plan(n_heads, result.kv_heads)
    windows = form.windows([result.layer_window(li) for li in range(n_layers)])
    length = result.length
    grids = [(len(plan.slots), len(plan.slots[0]), (), (), [["head"]], plan.col_breaks,
              bool(plan.groups), outside_label([w], length)) for w in dict.fromkeys(windows)]
    if n_layers > 1:
        row_names, col_names, breaks = model_grid_names(result)
        grids.append((n_layers, n_heads, row_names, col_names, (), breaks, False,
                      outside_label(windows, length)))
    fonts = Fonts([*labels, *(form.rows.labels if form.rows else ())])
    with fonts.context():
        for rows, cols, row_names, col_names, tile_titles, breaks, groups, legend in grids:
            layout = grid_layout(rows, cols, n, fonts, row_names, col_names, tile_titles, dpi,
                                  labels, breaks, groups, legend, form.rows, block=result.block)
            check_image_size(layout.width, layout.height, dpi)


def model_grid_names(result: AttentionResult) -> tuple[list[str], list[str], list[int]]:
    """Row names, column names and kv group breaks of the model grid (layers x heads)."""
    row_names = []
    for li, layer in enumerate(result.layers):
        note = window_note(result.layer_window(li), result.length, result.causal)
        row_names.append(f"layer {layer}" + (f" · {note}" if note else ""))
    if not result.grouped:
        return row_names, [f"head {h}" for h in range(result.n_heads)], []
    kv = result.kv_heads
    return (row_names, [f"head {h} · kv {kv[h]}" for h in range(result.n_heads)],
            [h for h in range(1, result.n_heads) if kv[h] != kv[h - 1]])


def save_grid(path: Path, tiles: np.ndarray, title: str, row_names: Sequence[str] = (),
              col_names: Sequence[str] = (), tile_titles: Sequence[Sequence[str]] = (),
              cmap: str = "viridis", dpi: int = 100, scale: str = "sqrt",
              token_labels: Sequence[str] = (), fmt: str = "png", *,
              row_windows: Sequence[int | None] = (), col_breaks: Sequence[int] = (),
              rows_of_tiles: PanelRows | None = None, measure: Measure = WEIGHTS,
              mask_label: str | None = "masked") -> Path:
    """A grid of small heatmaps as one image (fast for 12 x 12 layers x heads); see
    ``grid_figure``."""
    grid = grid_figure(tiles, title, row_names, col_names, tile_titles, cmap, dpi, scale,
                       token_labels, row_windows=row_windows, col_breaks=col_breaks,
                       rows_of_tiles=rows_of_tiles, measure=measure, mask_label=mask_label)
    write_bytes(path, grid.to_bytes(fmt))
    return path


def heads_overview(layer_weights: np.ndarray, title: str, cmap: str = "viridis", dpi: int = 100,
                   scale: str = "sqrt", token_labels: Sequence[str] = (), *,
                   kv_heads: Sequence[int] = (), window: int | None = None,
                   rows_of_tiles: PanelRows | None = None,
                   measure: Measure = WEIGHTS, mask_label: str | None = "masked") -> GridFigure:
    """All heads of one layer (``(H, T, T)``, or a list of ``(T, T)`` arrays) as a grid
    of small heatmaps, 4 or 6 a row, or kv group by kv group when ``kv_heads`` shares
    key/value heads (see ``overview_plan``); ``window``: the layer's sliding window. The
    heads are not copied. ``rows_of_tiles``: heads of ``(R, T)`` rows (see ``grid_figure``)."""
    plan = overview_plan(len(layer_weights), kv_heads)
    offset = 0 if rows_of_tiles is None else rows_of_tiles.offset
    return grid_figure(overview_tiles(layer_weights, kv_heads, offset), title,
                       tile_titles=plan.titles, cmap=cmap, dpi=dpi, scale=scale,
                       token_labels=token_labels, row_windows=[window] * len(plan.slots),
                       col_breaks=plan.col_breaks, groups=plan.groups,
                       rows_of_tiles=rows_of_tiles, measure=measure, mask_label=mask_label)


def overview_tiles(layer_weights, kv_heads: Sequence[int] = (), offset: int = 0) -> list[list]:
    """The heads of one layer as the rows of ``heads_overview``'s grid (None: empty slot);
    ``offset``: see ``cells.masked``."""
    plan = overview_plan(len(layer_weights), kv_heads)
    return [[None if h is None else masked(layer_weights[h], None, offset) for h in row]
            for row in plan.slots]
