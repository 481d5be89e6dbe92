"""Attention weights -> the heatmap figure of one or more heads (matplotlib without pyplot;
numpy in, bytes or a file out): ``HeatmapFigure``, and ``PanelRows`` for panels of other
rows than the columns' queries.

Rendering is built for many heads of one text: the figure — axes, token tick labels,
colorbar, legend — is laid out and drawn once; each head then only restores that
background, pastes its cells as pixels, draws its title (blitting) and encodes the
image. Twelve heads cost little more than one. SVG and PDF go through matplotlib's
vector backends instead, with the same cells embedded as an image and the text kept
as text.

Conventions: a head's matrix is ``(T, T)`` ``[query_pos, key_pos]``; queries on rows,
keys on columns. The parts live beside this module: ``attnviz.pictures.cells`` (the causal mask,
and cells -> pixels by block maximum, so no weight is hidden), ``attnviz.pictures.colours``
(scales, colormap, mask colour, colorbar), ``attnviz.pictures.fonts`` (fonts and token labels),
``attnviz.pictures.images`` (the headless figure and its bytes in each format),
``attnviz.pictures.families`` (windows and kv groups in titles and legends).

Generated rows (``PanelRows``, used by ``attnviz.pictures.generation``): panels and tiles of
``(R, C)`` rows that are not the columns' own queries — row ``r`` the query at column
``r + offset`` — labelled with their own labels, with a white line between two pixel
columns of its own at the prompt/generated boundary (it covers no cell) and the generated
tokens' labels coloured. Without it every picture is the square one, byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from attnviz.core.errors import InputError
from attnviz.files.fileio import write_bytes
from attnviz.pictures.cells import (
    block_stride,
    boundary_words,
    cell_words,
    masked,
    pool_note,
    pool_note_cells,
    rgba_word,
)
from attnviz.pictures.colours import (
    WEIGHTS,
    Measure,
    colorbar,
    make_norm,
    normalized,
    outside_color,
    weight_colormap,
)
from attnviz.pictures.families import LEGEND_FONT, legend_width_in
from attnviz.pictures.fonts import Fonts, text_width_in
from attnviz.pictures.images import encode_png, encode_raster, new_figure, vector_bytes

ANNOTATE_MAX_TOKENS = 30  # --annotate: beyond this the numbers cannot be 8 pt in a sane figure
_MIN_SIDE, _MAX_SIDE = 3.0, 11.0  # inches of heatmap per panel
_MIN_FONT, _MAX_FONT = 7.0, 10.0  # points: token labels never smaller (a stride instead)
_ANNOTATE_TOKENS = 12  # print the weights in the cells up to this many tokens by default
_ANNOTATE_CELL_IN = 0.4  # a cell with a printed weight: room for "0.25" at 8 pt and more
_MIN_CELL_FONT = 8.0  # points: printed weights are never smaller
_FRAME_RGBA = (40, 40, 40, 255)
# The line between the prompt's columns and the generated ones: pixel columns of its own
# between the cells (cells.boundary_words), so it covers none.
BOUNDARY_LINE = ("#ffffff", "#ffffff")
GENERATED_COLOR = "#c2185b"  # the generated tokens' labels
_ROW_MIN_IN = 0.28  # a generated row is at least this tall, so its label can be read
_MIN_ROWS_IN = 0.8  # a panel of few rows: room for its axis name on two lines
_MIN_CBAR_IN = 2.0  # colorbar and legend beside a short panel


POSITION_AXES = ("query position (row)", "key position (column)")  # pooled long texts


def boundary_line() -> list[np.uint32]:
    return [rgba_word(color) for color in BOUNDARY_LINE]


def word(rgba: Sequence[int]) -> np.uint32:
    return np.array(rgba, dtype=np.uint8).view(np.uint32)[0]


def _paint_frame(words: np.ndarray, ys: slice, xs: slice) -> None:
    """A one-pixel frame just outside the cells, so it never covers row 0 or column 0."""
    frame = word(_FRAME_RGBA)
    top, bottom, left, right = ys.start - 1, ys.stop, xs.start - 1, xs.stop
    words[top, left : right + 1] = frame
    words[bottom, left : right + 1] = frame
    words[top : bottom + 1, left] = frame
    words[top : bottom + 1, right] = frame


def layout(n_tokens: int, annotate: bool = False) -> tuple[float, float, int]:
    """(panel side in inches, tick font size, label stride) for ``n_tokens`` labels.
    With printed weights, cells are big enough for numbers of at least 8 pt."""
    if annotate:
        side = max(n_tokens * _ANNOTATE_CELL_IN, _MIN_SIDE)
    else:
        side = min(max(n_tokens * 0.28, _MIN_SIDE), _MAX_SIDE)
    pitch = side * 72 / n_tokens  # points between neighbouring cells
    font = min(max(pitch / 1.3, _MIN_FONT), _MAX_FONT)
    stride = max(1, math.ceil(font * 1.3 / pitch))
    return side, font, stride


def _grid_shape(n_panels: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) for ``n_panels``: one row up to ``max_cols``, then balanced rows."""
    rows = math.ceil(n_panels / max_cols)
    return rows, math.ceil(n_panels / rows)


@dataclass(frozen=True)
class PanelRows:
    """The rows of non-square panels: rows that are not the columns' own queries, such as
    the generated rows of ``attnviz.pictures.generation`` (``(R, C)`` panels, C = the column
    labels). ``offset``: row ``r`` is the query at column ``r + offset`` (the keys after it
    are masked, see ``cells.masked``). ``marked_from``: the first column of the generated
    tokens: a line marks the boundary before it and their labels (and the rows') are
    coloured."""

    labels: Sequence[str]
    offset: int = 0
    marked_from: int | None = None
    axis_labels: tuple[str, str] = ("query token (row)", "key token (column)")
    # The first row of the marked tokens, when not every row is marked: a line before it
    # too, and the row labels from it coloured (a sentence pair's second sentence).
    marked_rows_from: int | None = None

    def row_marked(self, row: int) -> bool:
        """Whether row ``row``'s label is coloured."""
        return self.marked_from is not None and (self.marked_rows_from is None
                                                 or row >= self.marked_rows_from)


def pair_rows(labels: Sequence[str], boundary: int | None) -> PanelRows | None:
    """The rows of a sentence pair's square panels: lines before the second sentence's row
    and column ``boundary``, its labels coloured; None for one text."""
    if boundary is None:
        return None
    return PanelRows(labels, marked_from=boundary, marked_rows_from=boundary)


class HeatmapFigure:
    """``n_panels`` heatmaps sharing token labels, colour scale and colorbar: one row up
    to four panels, then a grid (labels on the left column and the bottom row).

    Build once per text; ``png(panels, titles)`` then renders any heads into it: the
    static figure is restored from a saved background, each head's colour-mapped cells
    are pasted into its axes' pixel box, and only the frame and title are drawn anew.
    A panel is a ``(T, T)`` array (the causal future is masked) or a masked array.
    ``windows`` (one per panel, when given) are the panels' sliding windows: the keys
    outside are masked in the second colour, named in the legend by ``outside_label``.
    ``rows`` (``PanelRows``): panels of other rows than the columns' queries, ``(R, T)``.
    """

    def __init__(
        self,
        token_labels: Sequence[str],
        n_panels: int = 1,
        cmap: str = "viridis",
        dpi: int = 100,
        scale: str = "sqrt",
        annotate: bool | None = None,
        mask_label: str = "masked\n(future)",
        extra_texts: Sequence[str] = (),
        columns: int | None = None,
        outside_label: str | None = None,
        rows: PanelRows | None = None,
        measure: Measure = WEIGHTS,
        axis_labels: tuple[str, str] | None = None,
    ):
        n = self.n_tokens = len(token_labels)
        self.measure, self.axis_labels = measure, axis_labels
        self.rows = rows
        self.n_rows = n if rows is None else len(rows.labels)
        self.offset = 0 if rows is None else rows.offset
        self.title_lines = 1 + max(t.count("\n") for t in ["", *extra_texts])
        self.annotate = n <= _ANNOTATE_TOKENS if annotate is None else annotate
        if self.annotate and n > ANNOTATE_MAX_TOKENS:
            raise InputError(f"--annotate prints weights up to {ANNOTATE_MAX_TOKENS} tokens; this "
                             f"text has {n} (pick a window with --tokens A:B)")
        self.dpi = dpi
        self.outside_color = outside_color(cmap)
        fonts = Fonts([*token_labels, *extra_texts, *(rows.labels if rows else ())])
        with fonts.context():
            self._build(fonts, token_labels, n_panels, cmap, dpi, scale, mask_label, columns,
                        outside_label)

    def _build(self, fonts, token_labels, n_panels, cmap, dpi, scale, mask_label, columns,
               outside_label=None) -> None:
        n, rows = self.n_tokens, self.rows
        side, font, stride = layout(n, self.annotate)
        n_rows, n_cols = _grid_shape(n_panels)
        if columns:
            n_rows, n_cols = math.ceil(n_panels / columns), min(columns, n_panels)
        if n_panels > 2 and not self.annotate:
            side = max(min(side, 24.0 / n_cols), _MIN_SIDE)  # a grid stays on a screen
        labels = [fonts.label(lbl) for lbl in token_labels]
        stride = block_stride(stride, self.measure.block)  # round positions on a pooled map
        ticks = list(range(0, n, stride))
        tick_labels = [labels[i] for i in ticks]
        label_in = text_width_in(tick_labels, font) + 0.1  # + tick length and padding
        side_h, row_ticks, row_tick_labels, row_label_in = side, ticks, tick_labels, label_in
        row_font = font
        row_name, col_name = (self.axis_labels or (POSITION_AXES if self.measure.block > 1 else
                                                   ("query token (row)", "key token (column)"))) \
            if rows is None else rows.axis_labels
        if rows is not None:  # other rows than the columns' queries: cells as wide, rows legible
            per_row = _ANNOTATE_CELL_IN if self.annotate else _ROW_MIN_IN
            side_h = max(self.n_rows * side / n, min(self.n_rows * per_row, _MAX_SIDE),
                         _MIN_ROWS_IN)
            row_pitch = side_h * 72 / self.n_rows
            row_font = min(max(row_pitch / 1.3, _MIN_FONT), _MAX_FONT)
            row_stride = max(1, math.ceil(row_font * 1.3 / row_pitch))
            row_ticks = list(range(0, self.n_rows, row_stride))
            row_tick_labels = [fonts.label(rows.labels[i]) for i in row_ticks]
            row_label_in = text_width_in(row_tick_labels, row_font) + 0.1
            if text_width_in([row_name], 10) > side_h:  # a short panel: the name on two lines
                row_name = row_name.replace(" ", "\n", 1)
        pooled = side * dpi < n or side_h * dpi < self.n_rows
        gap, row_gap, cbar_w, cbar_pad = 0.3, 0.5, 0.18, 0.25
        left = row_label_in + 0.35  # room for the tick labels and the axis label
        bottom = label_in + 0.35 + (0.2 if pooled else 0.0)
        right, top = 0.8, 0.45
        if rows is not None:
            top += 0.18 * (self.title_lines - 1)
        # Two swatches under the colorbar (the future's, then the window's): room for both.
        legend_h = 0.45 if outside_label is None else 0.75
        for label in (outside_label, mask_label):  # room for the swatches' names
            if label is not None:
                right = max(right, 1.3 * cbar_w + legend_width_in(label) + 0.1 - cbar_w)
        grid_w = n_cols * side + (n_cols - 1) * gap
        panels_h = n_rows * side_h + (n_rows - 1) * row_gap
        cbar_h = side_h if rows is None else max(panels_h, _MIN_CBAR_IN)  # colorbar + legend
        bottom = max(bottom, cbar_h - panels_h + 0.15) if rows is not None else bottom
        width = left + grid_w + cbar_pad + cbar_w + right
        height = bottom + n_rows * side_h + (n_rows - 1) * row_gap + top
        self.fig, self.canvas = new_figure(width, height, dpi)
        self.colormap, self.mask_color = weight_colormap(cmap)
        self.norm = make_norm(scale, self.measure.top)
        self.axes, self.titles = [], []
        self.row_labels, self.col_labels = [], []  # the token label Text artists drawn
        self.row_ticks = row_ticks
        for p in range(n_panels):
            r, c = divmod(p, n_cols)
            x0 = left + c * (side + gap)
            y0 = bottom + (n_rows - 1 - r) * (side_h + row_gap)
            ax = self.fig.add_axes((x0 / width, y0 / height, side / width, side_h / height))
            ax.set_xlim(-0.5, n - 0.5)
            ax.set_ylim(self.n_rows - 0.5, -0.5)  # query 0 at the top, like a printed matrix
            bottom_row = p + n_cols >= n_panels
            self.col_labels.append(
                _token_ticks(ax, ticks, tick_labels if bottom_row else [], font, "x"))
            if bottom_row:
                ax.set_xlabel(col_name, labelpad=label_in * 72)
            y_texts = _token_ticks(ax, row_ticks, row_tick_labels if c == 0 else [], row_font, "y")
            if p == 0:
                self.row_labels = y_texts
            if c == 0:
                ax.set_ylabel(row_name, labelpad=row_label_in * 72)
            for spine in ax.spines.values():  # raster: a frame painted outside the cells
                spine.set_visible(False)
                spine.set_position(("outward", 1.0))  # vector: the same, drawn by matplotlib
            self.titles.append(ax.set_title("", fontsize=11, animated=True))
            self.axes.append(ax)
            if rows is not None and rows.marked_from is not None:
                self._mark_generated(p, ticks)
        self.cell_texts = self._cell_texts(side * 72 / n) if self.annotate else []
        cbar_x = left + grid_w + cbar_pad
        base = bottom + panels_h - cbar_h if rows is not None else bottom
        cax = self.fig.add_axes(
            (cbar_x / width, (base + legend_h) / height, cbar_w / width, (cbar_h - legend_h) / height)
        )
        colorbar(self.fig, cax, self.norm, self.colormap, self.measure.label)
        # The legend for masked cells: a swatch of their colour under the colorbar.
        swatches = [(mask_label, self.mask_color)] if mask_label else []
        if outside_label is not None:
            swatches.append((outside_label, self.outside_color))
        for k, (name, color) in enumerate(swatches):
            y = base + 0.3 * (len(swatches) - 1 - k)
            swatch = self.fig.add_axes((cbar_x / width, y / height, cbar_w / width, 0.2 / height))
            swatch.add_patch(Rectangle((0, 0), 1, 1, facecolor=color, edgecolor="#282828",
                                       linewidth=0.5))
            swatch.set_axis_off()
            swatch.text(1.3, 0.5, name, va="center", fontsize=LEGEND_FONT,
                        transform=swatch.transAxes)
        self.pending: list[Future] = []  # writes handed to a writer thread by save()
        self.boxes = [self._pixel_box(ax) for ax in self.axes]
        ys, xs = self.boxes[0]
        if rows is None:
            self.note = pool_note(n, min(ys.stop - ys.start, xs.stop - xs.start),
                                  self.measure.block)
        else:
            line = len(BOUNDARY_LINE) if rows.marked_from is not None else 0
            self.note = pool_note_cells(self.n_rows, n, ys.stop - ys.start,
                                        xs.stop - xs.start - line)
        if self.note:
            self.fig.text(left / width, 0.06 / height, self.note, fontsize=8, color="#444444")
        self.canvas.draw()  # everything static, once
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)

    def _mark_generated(self, p: int, ticks) -> None:
        """The generated tokens' labels of panel ``p`` (columns from ``rows.marked_from``,
        and the rows) in GENERATED_COLOR; the boundary line is drawn with the cells."""
        for text, tick in zip(self.col_labels[p], ticks):
            if tick >= self.rows.marked_from:
                text.set_color(GENERATED_COLOR)
        if p == 0:
            for text, row in zip(self.row_labels, self.row_ticks):
                if self.rows.row_marked(row):
                    text.set_color(GENERATED_COLOR)

    def _cell_texts(self, cell_pt: float) -> list[list]:
        """Per panel, one animated Text per cell, for printing the weights (>= 8 pt)."""
        size = min(10.0, max(_MIN_CELL_FONT, cell_pt / 3.2))
        return [
            [ax.text(j, i, "", ha="center", va="center", fontsize=size, animated=True)
             for i in range(self.n_rows) for j in range(self.n_tokens)]
            for ax in self.axes
        ]

    def _pixel_box(self, ax) -> tuple[slice, slice]:
        """Rows and columns of the canvas buffer inside ``ax``."""
        box = ax.get_window_extent()
        height_px = self.canvas.get_width_height()[1]
        x0, x1 = round(box.x0), round(box.x1)
        y0, y1 = height_px - round(box.y1), height_px - round(box.y0)  # buffer rows go down
        return slice(y0, y1), slice(x0, x1)

    def _words(self, p: int, values: np.ma.MaskedArray, height=None, width=None,
               window: int | None = None) -> np.ndarray:
        ys, xs = self.boxes[p]
        height, width = height or ys.stop - ys.start, width or xs.stop - xs.start
        if self.rows is not None and self.rows.marked_from is not None:
            return boundary_words(values, height, width, self.colormap, self.norm,
                                  self.rows.marked_from, boundary_line(), window,
                                  self.outside_color, self.offset, self.rows.marked_rows_from)
        return cell_words(values, height, width, self.colormap, self.norm, window,
                          self.outside_color, self.offset)

    def panel_words(self, panels: Sequence[np.ndarray],
                    windows: Sequence[int | None] | None = None) -> list[np.ndarray]:
        """Each panel's cells as the pixels ``render`` pastes, ``(h, w)`` RGBA words. Reads
        the figure, never draws on it: a thread can make the next picture's while this one
        is drawn."""
        windows = list(windows) if windows else [None] * len(panels)
        return [self._words(p, masked(weights, window, self.offset), window=window)
                for p, (weights, window) in enumerate(zip(panels, windows))]

    def render(self, panels: Sequence[np.ndarray], titles: Sequence[str],
               windows: Sequence[int | None] | None = None,
               words: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Draw ``panels`` (each ``(T, T)``, or ``(R, T)`` with ``rows``) with ``titles``;
        the canvas as ``(H, W, 4)``. ``words``: the panels' ``panel_words``, made already."""
        self.canvas.restore_region(self.background)
        pixels = np.asarray(self.canvas.buffer_rgba())  # (H, W, 4), a writable view
        canvas_words = pixels.view(np.uint32)[..., 0]  # (H, W): one RGBA pixel per word
        windows = list(windows) if windows else [None] * len(panels)
        if words is None:
            words = self.panel_words(panels, windows)
        for p, (ax, title, weights, text, window) in enumerate(
                zip(self.axes, self.titles, panels, titles, windows)):
            ys, xs = self.boxes[p]
            canvas_words[ys, xs] = words[p]
            _paint_frame(canvas_words, ys, xs)
            title.set_text(text)
            ax.draw_artist(title)
            if self.cell_texts:
                self._annotate(self.cell_texts[p], masked(weights, window, self.offset), ax,
                               draw=True)
        return pixels

    def _annotate(self, texts: list, values: np.ma.MaskedArray, ax, draw: bool) -> None:
        colors = self.colormap(normalized(self.norm, values))  # (T, T, 4)
        shown = ~np.ma.getmaskarray(values)
        for k, artist in enumerate(texts):
            i, j = divmod(k, self.n_tokens)
            r, g, b = colors[i, j, :3]
            artist.set_text(f"{values[i, j]:.{self.measure.decimals}f}" if shown[i, j] else "")
            artist.set_color("black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
            if draw and shown[i, j]:
                ax.draw_artist(artist)

    def vector(self, panels: Sequence[np.ndarray], titles: Sequence[str], fmt: str,
               windows: Sequence[int | None] | None = None) -> bytes:
        """SVG or PDF of the same picture: the cells embedded as a pixel-exact image
        (pooled exactly as in the PNG), frame, titles and numbers as vector art and text."""
        n, n_rows = self.n_tokens, self.n_rows
        images, animated = [], [*self.titles, *(t for texts in self.cell_texts for t in texts)]
        windows = list(windows) if windows else [None] * len(panels)
        try:
            for p, (ax, title, weights, text, window) in enumerate(
                    zip(self.axes, self.titles, panels, titles, windows)):
                values = masked(weights, window, self.offset)
                ys, xs = self.boxes[p]
                # With a boundary line, every pixel of the panel (the line is one or two).
                full = self.rows is not None and self.rows.marked_from is not None
                words = self._words(p, values, ys.stop - ys.start if full else min(
                    n_rows, ys.stop - ys.start), xs.stop - xs.start if full else min(
                    n, xs.stop - xs.start), window)
                rgba = words.view(np.uint8).reshape(*words.shape, 4)
                images.append(ax.imshow(rgba, extent=(-0.5, n - 0.5, n_rows - 0.5, -0.5),
                                        interpolation="none", aspect="auto", zorder=0))
                ax.set_xlim(-0.5, n - 0.5)
                ax.set_ylim(n_rows - 0.5, -0.5)
                title.set_text(text)
                if self.cell_texts:
                    self._annotate(self.cell_texts[p], values, ax, draw=False)
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_linewidth(0.8)
            for artist in animated:
                artist.set_animated(False)
            return vector_bytes(self.fig, fmt)
        finally:
            for image in images:
                image.remove()
            for artist in animated:
                artist.set_animated(True)
            for ax in self.axes:
                for spine in ax.spines.values():
                    spine.set_visible(False)

    def png(self, panels: Sequence[np.ndarray], titles: Sequence[str],
            windows: Sequence[int | None] | None = None) -> bytes:
        return encode_png(self.render(panels, titles, windows), self.dpi)

    def save(self, path: Path, panels: Sequence[np.ndarray], titles: Sequence[str],
             writer: Executor | None = None, fmt: str = "png",
             windows: Sequence[int | None] | None = None,
             words: Sequence[np.ndarray] | None = None) -> Path:
        """Write the picture in ``fmt``; with ``writer``, compress and write in its thread
        while the caller renders the next image (the canvas is free again when this returns).
        ``words``: the panels' ``panel_words``, made already (raster formats)."""
        if fmt in ("svg", "pdf"):
            write_bytes(path, self.vector(panels, titles, fmt, windows))
            return path
        # A plain copy of the canvas (a memcpy) frees it for the next picture; the scanline
        # packing and compression happen in the writer's thread.
        rgba = self.render(panels, titles, windows, words).copy()
        encode = lambda: encode_raster(rgba, fmt, self.dpi)  # noqa: E731
        if writer is None:
            write_bytes(path, encode())
        else:
            self.pending.append(writer.submit(lambda: write_bytes(path, encode())))
        return path


def _token_ticks(ax, ticks: list[int], texts: Sequence[str], font: float, axis: str) -> list:
    """Tick marks and token labels along the ``x`` (below) or ``y`` (left) axis; no
    labels, no marks when ``texts`` is empty.

    One marker line and plain Text artists instead of matplotlib Tick objects: for
    dozens of tokens that is several times cheaper to build and draw, and looks the
    same. Returns the label artists.
    """
    from matplotlib.lines import TICKDOWN, TICKLEFT
    from matplotlib.transforms import blended_transform_factory, offset_copy

    if axis == "x":  # x in data units, y in axes fractions: just below the frame
        ax.set_xticks([])
        base = blended_transform_factory(ax.transData, ax.transAxes)
        place = offset_copy(base, fig=ax.figure, y=-3.5, units="points")
        points, marker, style = [(t, 0) for t in ticks], TICKDOWN, {"ha": "center", "va": "top",
                                                                   "rotation": 90}
    else:  # left of the frame
        ax.set_yticks([])
        base = blended_transform_factory(ax.transAxes, ax.transData)
        place = offset_copy(base, fig=ax.figure, x=-3.5, units="points")
        points, marker, style = [(0, t) for t in ticks], TICKLEFT, {"ha": "right", "va": "center"}
    if points and texts:
        xs, ys = zip(*points)
        ax.plot(xs, ys, linestyle="none", marker=marker, markersize=2.5, markeredgewidth=0.8,
                color="black", transform=base, clip_on=False)
    return [ax.text(x, y, label, transform=place, fontsize=font, parse_math=False, **style)
            for (x, y), label in zip(points, texts)]
