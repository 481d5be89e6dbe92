"""Attention weights -> heatmap pictures (matplotlib without pyplot; numpy in, files out):
the heatmap figure of one or more heads, the grids of many small heatmaps (a layer's
heads, the whole model), the head-similarity picture, and whole runs of files
(``write_heatmaps``, ``save_compare``) with the checks made before the first is written.

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
``attnviz.pictures.images`` (the headless figure and its bytes in each format).

Model families: a layer with a sliding window (``AttentionResult.windows``) has its keys
outside the window masked in a second colour (``colours.outside_color``) and says
"window W" in its titles; grouped-query heads (``AttentionResult.kv_heads``) name their
key/value head ("head 5 · kv 1") and the overview lays each kv group out together under
a shared label. A plain result (no window, no groups) is drawn exactly as before.

Generated rows (``PanelRows``, used by ``attnviz.pictures.generation``): panels and tiles of
``(R, C)`` rows that are not the columns' own queries — row ``r`` the query at column
``r + offset`` — labelled with their own labels, with a white line between two pixel
columns of its own at the prompt/generated boundary (it covers no cell) and the generated
tokens' labels coloured. Without it every picture is the square one, byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.analyses.attention import AttentionResult
from attnviz.core.errors import InputError
from attnviz.files.fileio import write_bytes
from attnviz.files.outdir import OutputFolder
from attnviz.pictures.cells import (
    boundary_words,
    cell_words,
    exclude_first,
    masked,
    pool_note,
    pool_note_cells,
    rgba_word,
)
from attnviz.pictures.colours import (
    WEIGHTS,
    Measure,
    check_cmap,
    colorbar,
    make_norm,
    normalized,
    outside_color,
    weight_colormap,
)
from attnviz.pictures.fonts import Fonts, text_width_in, use_font
from attnviz.pictures.images import (
    check_dpi,
    check_image_size,
    encode_png,
    encode_raster,
    figure_bytes,
    new_figure,
    vector_bytes,
)

IMAGE_FORMATS = ("png", "svg", "pdf", "jpg")
SUFFIX_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpg"}
ANNOTATE_MAX_TOKENS = 30  # --annotate: beyond this the numbers cannot be 8 pt in a sane figure
_ENCODERS = 2  # threads compressing PNGs while the next picture is drawn
_MIN_SIDE, _MAX_SIDE = 3.0, 11.0  # inches of heatmap per panel
_MIN_FONT, _MAX_FONT = 6.0, 10.0  # points
_ANNOTATE_TOKENS = 12  # print the weights in the cells up to this many tokens by default
_ANNOTATE_CELL_IN = 0.4  # a cell with a printed weight: room for "0.25" at 8 pt and more
_MIN_CELL_FONT = 8.0  # points: printed weights are never smaller
_FRAME_RGBA = (40, 40, 40, 255)
_LEGEND_FONT = 7.0  # points: the names beside the mask swatches
_GROUP_BREAK_IN = 0.25  # extra room between two kv groups side by side in a grid
_GROUP_LABEL_IN = 0.2  # room for a kv group's shared label above its tiles' titles
_GROUP_ROW_MAX = 8  # at most this many heads of whole kv groups on one row of the overview
# The line between the prompt's columns and the generated ones: pixel columns of its own
# between the cells (cells.boundary_words), so it covers none.
BOUNDARY_LINE = ("#ffffff", "#ffffff")
_GENERATED_COLOR = "#c2185b"  # the generated tokens' labels
_ROW_MIN_IN = 0.28  # a generated row is at least this tall, so its label can be read
_MIN_ROWS_IN = 0.8  # a panel of few rows: room for its axis name on two lines
_MIN_CBAR_IN = 2.0  # colorbar and legend beside a short panel


# ---------------------------------------------------------------------------- checks


def image_format(path: Path | None, fmt: str | None = None, option: str = "--plot") -> str:
    """The format to write: the file's suffix when it has one (it wins over ``fmt``),
    else ``fmt``, else png. An unknown suffix is refused: a file is what its name says."""
    if fmt is not None and fmt not in IMAGE_FORMATS:
        raise InputError(f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    if path is not None and Path(path).suffix:
        suffix = Path(path).suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise InputError(f"{option} {path}: attnviz cannot write {suffix} files; use .png, "
                             ".svg, .pdf or .jpg")
        return SUFFIX_FORMATS[suffix]
    return fmt or "png"


def check_title(template: str | None) -> None:
    """``--title`` may use {head}, {layer} and {tokens}; anything else is refused now,
    before a picture is drawn."""
    if template is not None:
        try:
            template.format(head=0, layer=0, tokens=1)
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(f"--title {template!r}: only {{head}}, {{layer}} and {{tokens}} can be "
                             f"filled in ({e})") from None


def check_picture_options(cmap: str = "viridis", dpi: int = 100, scale: str = "sqrt",
                          title: str | None = None, font: str | None = None) -> None:
    """Every picture option checked before any work (and the font put to use)."""
    check_cmap(cmap)
    check_dpi(dpi)
    make_norm(scale)
    check_title(title)
    use_font(font)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# ------------------------------------------------------------------- model families


def window_note(window: int | None, n_tokens: int) -> str:
    """How a title names a sliding window: "window 4"; "window 4096 ≥ 18 tokens" when it
    covers the whole picture (no key is outside it: the cells look causal, the title
    says why); "" without a window."""
    if window is None:
        return ""
    if window >= n_tokens:
        return f"window {window} ≥ {plural(n_tokens, 'token')}"
    return f"window {window}"


def head_extras(result: AttentionResult, layer_index: int, head: int) -> str:
    """What a head's title adds for the model families: " · kv 1" when heads share
    key/value heads, " · window 4" when the layer has a sliding window; "" otherwise."""
    parts = [f"kv {result.kv_heads[head]}"] if result.grouped else []
    note = window_note(result.layer_window(layer_index), result.n_tokens)
    return "".join(f" · {part}" for part in [*parts, *([note] if note else [])])


def outside_label(windows: Sequence[int | None], n_tokens: int) -> str | None:
    """The legend's name for the second mask colour when some key of a ``n_tokens``
    picture is outside one of ``windows``: "outside\nwindow 4" ("outside\nthe window"
    when the layers' windows differ: their titles say which); None when none is."""
    cut = sorted({w for w in windows if w is not None and w < n_tokens})
    if not cut:
        return None
    return f"outside\nwindow {cut[0]}" if len(cut) == 1 else "outside\nthe window"


def _legend_width_in(label: str | None) -> float:
    return text_width_in(label.split("\n"), _LEGEND_FONT) if label else 0.0


def kv_groups(kv_heads: Sequence[int]) -> list[tuple[int, list[int]]]:
    """``[(kv head, [its query heads])]`` in kv order."""
    members: dict[int, list[int]] = {}
    for head, kv in enumerate(kv_heads):
        members.setdefault(kv, []).append(head)
    return sorted(members.items())


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


# ---------------------------------------------------------------------------- heatmaps


def _boundary_line() -> list[np.uint32]:
    return [rgba_word(color) for color in BOUNDARY_LINE]


def _word(rgba: Sequence[int]) -> np.uint32:
    return np.array(rgba, dtype=np.uint8).view(np.uint32)[0]


def _paint_frame(words: np.ndarray, ys: slice, xs: slice) -> None:
    """A one-pixel frame just outside the cells, so it never covers row 0 or column 0."""
    frame = _word(_FRAME_RGBA)
    top, bottom, left, right = ys.start - 1, ys.stop, xs.start - 1, xs.stop
    words[top, left : right + 1] = frame
    words[bottom, left : right + 1] = frame
    words[top : bottom + 1, left] = frame
    words[top : bottom + 1, right] = frame


def _layout(n_tokens: int, annotate: bool = False) -> tuple[float, float, int]:
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
        side, font, stride = _layout(n, self.annotate)
        n_rows, n_cols = _grid_shape(n_panels)
        if columns:
            n_rows, n_cols = math.ceil(n_panels / columns), min(columns, n_panels)
        if n_panels > 2 and not self.annotate:
            side = max(min(side, 24.0 / n_cols), _MIN_SIDE)  # a grid stays on a screen
        labels = [fonts.label(lbl) for lbl in token_labels]
        ticks = list(range(0, n, stride))
        tick_labels = [labels[i] for i in ticks]
        label_in = text_width_in(tick_labels, font) + 0.1  # + tick length and padding
        side_h, row_ticks, row_tick_labels, row_label_in = side, ticks, tick_labels, label_in
        row_font = font
        row_name, col_name = (self.axis_labels or ("query token (row)", "key token (column)")) \
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
        if outside_label is not None:
            right = max(right, 1.3 * cbar_w + _legend_width_in(outside_label) + 0.1 - cbar_w)
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
        swatches = [(mask_label, self.mask_color)]
        if outside_label is not None:
            swatches.append((outside_label, self.outside_color))
        for k, (name, color) in enumerate(swatches):
            y = base + 0.3 * (len(swatches) - 1 - k)
            swatch = self.fig.add_axes((cbar_x / width, y / height, cbar_w / width, 0.2 / height))
            swatch.add_patch(Rectangle((0, 0), 1, 1, facecolor=color, edgecolor="#282828",
                                       linewidth=0.5))
            swatch.set_axis_off()
            swatch.text(1.3, 0.5, name, va="center", fontsize=_LEGEND_FONT,
                        transform=swatch.transAxes)
        self.pending: list[Future] = []  # writes handed to a writer thread by save()
        self.boxes = [self._pixel_box(ax) for ax in self.axes]
        ys, xs = self.boxes[0]
        if rows is None:
            self.note = pool_note(n, min(ys.stop - ys.start, xs.stop - xs.start))
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
        and the rows) in _GENERATED_COLOR; the boundary line is drawn with the cells."""
        for text, tick in zip(self.col_labels[p], ticks):
            if tick >= self.rows.marked_from:
                text.set_color(_GENERATED_COLOR)
        if p == 0:
            for text in self.row_labels:
                text.set_color(_GENERATED_COLOR)

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
                                  self.rows.marked_from, _boundary_line(), window,
                                  self.outside_color, self.offset)
        return cell_words(values, height, width, self.colormap, self.norm, window,
                          self.outside_color, self.offset)

    def render(self, panels: Sequence[np.ndarray], titles: Sequence[str],
               windows: Sequence[int | None] | None = None) -> np.ndarray:
        """Draw ``panels`` (each ``(T, T)``, or ``(R, T)`` with ``rows``) with ``titles``;
        the canvas as ``(H, W, 4)``."""
        self.canvas.restore_region(self.background)
        pixels = np.asarray(self.canvas.buffer_rgba())  # (H, W, 4), a writable view
        words = pixels.view(np.uint32)[..., 0]  # (H, W): one RGBA pixel per word
        windows = list(windows) if windows else [None] * len(panels)
        for p, (ax, title, weights, text, window) in enumerate(
                zip(self.axes, self.titles, panels, titles, windows)):
            values = masked(weights, window, self.offset)
            ys, xs = self.boxes[p]
            words[ys, xs] = self._words(p, values, window=window)
            _paint_frame(words, ys, xs)
            title.set_text(text)
            ax.draw_artist(title)
            if self.cell_texts:
                self._annotate(self.cell_texts[p], values, ax, draw=True)
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
             windows: Sequence[int | None] | None = None) -> Path:
        """Write the picture in ``fmt``; with ``writer``, compress and write in its thread
        while the caller renders the next image (the canvas is free again when this returns)."""
        if fmt in ("svg", "pdf"):
            write_bytes(path, self.vector(panels, titles, fmt, windows))
            return path
        # A plain copy of the canvas (a memcpy) frees it for the next picture; the scanline
        # packing and compression happen in the writer's thread.
        rgba = (self.render(panels, titles) if windows is None else
                self.render(panels, titles, windows)).copy()
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


# ------------------------------------------------------------------------------ grids


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
                          _boundary_line(), window, outside, rows.offset)


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
    ``measure``: what the colours stand for (``colours.Measure``; weights on 0..1 by default)."""
    rows, cols = len(tiles), len(tiles[0])
    n = _first_tile(tiles).shape[-1]
    legend = outside_label(row_windows, n)
    extra = rows_of_tiles.labels if rows_of_tiles is not None else ()
    fonts = Fonts([*token_labels, title, *extra])
    with fonts.context():
        layout = _grid_layout(rows, cols, n, fonts, row_names, col_names, tile_titles, dpi,
                              token_labels, col_breaks, bool(groups), legend, rows_of_tiles,
                              title if rows_of_tiles is not None else "")
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
        mosaic = np.full((area_h, area_w), _word((255, 255, 255, 255)), dtype=np.uint32)
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
                        **({"color": _GENERATED_COLOR} if marked is not None else {}))
        last = [max(r for r in range(rows) if boxes[r][c] is not None) for c in range(cols)
                if any(boxes[r][c] is not None for r in range(rows))]
        for c, r in enumerate(last):  # ... and below the lowest tile of each column
            for i, label in zip(ticks, tick_labels):
                generated = {"color": _GENERATED_COLOR} if marked is not None and i >= marked else {}
                ax.text(col_x[c] + centre(i, 0), round(r * step_y) + tile_h + 3, label,
                        ha="center", va="top", rotation=90, fontsize=label_font, parse_math=False,
                        **generated)
        suptitle = fig.suptitle(title, fontsize=12, y=1 - 0.12 / height)
        if note:
            fig.text(0.5, 1 - 0.33 / height, note, ha="center", va="top", fontsize=8,
                     color="#444444")
        cbar_h = layout.cbar_h
        cbar_x = width - 0.75 - _grid_legend_extra(legend)
        cax = fig.add_axes((cbar_x / width, (bottom + grid_h - cbar_h + 0.3) / height,
                            0.15 / width, (cbar_h - 0.3) / height))
        colorbar(fig, cax, norm, colormap, measure.label)
        swatches = [("masked", mask)] + ([(legend, outside)] if legend else [])
        for k, (name, color) in enumerate(swatches):  # the window's below the future's
            swatch = fig.add_axes((cbar_x / width, (bottom + grid_h - cbar_h - 0.3 * k) / height,
                                   0.15 / width, 0.15 / height))
            swatch.add_patch(Rectangle((0, 0), 1, 1, facecolor=color, edgecolor="#282828",
                                       linewidth=0.5))
            swatch.set_axis_off()
            swatch.text(1.3, 0.5, name, va="center", fontsize=_LEGEND_FONT,
                        transform=swatch.transAxes)
    return GridFigure(fig, canvas, ax, (slice(y0, y0 + area_h), slice(x0, x0 + area_w)), boxes,
                      mosaic, note, suptitle, colormap, norm, row_windows=list(row_windows),
                      outside_color=outside, rows=rows_of_tiles)


def _grid_legend_extra(legend: str | None) -> float:
    """Inches the grid's right margin grows so the window's legend fits beside its swatch."""
    return max(0.0, _legend_width_in(legend) - 0.45) if legend else 0.0


def _first_tile(tiles) -> np.ndarray:
    for row in tiles:
        for tile in row:
            if tile is not None:
                return tile() if callable(tile) else tile
    raise ValueError("a grid needs at least one tile")


class GridLayout(NamedTuple):
    """``_grid_layout``'s geometry (inches unless named ``_px``)."""

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


def _grid_layout(rows: int, cols: int, n: int, fonts: Fonts, row_names: Sequence[str],
                 col_names: Sequence[str], tile_titles: Sequence[Sequence[str]], dpi: int,
                 token_labels: Sequence[str], col_breaks: Sequence[int] = (),
                 groups: bool = False, legend: str | None = None,
                 rows_of_tiles: PanelRows | None = None, title: str = "") -> GridLayout:
    """The geometry of ``grid_figure`` (sizes in inches), computed without drawing, so a
    run can check every picture's size before it writes its first file."""
    tile_in = 1.6 if cols <= 6 else 1.1
    gap_in = max(0.06, 0.08 * tile_in)
    row_gap_in = 0.25 if tile_titles else gap_in  # room for the titles of the next row
    if groups:
        row_gap_in += _GROUP_LABEL_IN  # and for the kv groups' labels above them
    label_font = 6.0
    pitch = tile_in * 72 / n  # points per cell
    stride = max(1, math.ceil(label_font * 1.25 / pitch))
    ticks = list(range(0, n, stride)) if token_labels and n / stride >= 2 else []
    tick_labels = [fonts.label(token_labels[i])[:8] for i in ticks]
    label_in = text_width_in(tick_labels, label_font) + 0.08 if ticks else 0.0
    names_in = text_width_in(list(row_names), 8) + 0.15 if row_names else 0.0
    left = 0.25 + names_in + label_in
    tile_px = math.floor(tile_in * dpi)
    note = pool_note(n, tile_px)
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
        width, height = left + grid_w + 1.0 + _grid_legend_extra(legend), top + grid_h + bottom
        return GridLayout(tile_in, gap_in, row_gap_in, label_font, ticks, tick_labels, label_in,
                          left, tile_px, note, top, bottom, grid_w, grid_h, width, height,
                          n, tile_px, ticks, tick_labels, label_in, min(grid_h, 3.0))
    # Tiles of R generated rows x n columns: as wide, cells as wide, R/n as tall (or more).
    n_rows = len(rows_of_tiles.labels)
    tile_h_in = tile_in * min(1.0, max(n_rows / n, _TILE_MIN_RATIO))
    tile_h = math.floor(tile_h_in * dpi)
    row_stride = max(1, math.ceil(label_font * 1.25 / (tile_h_in * 72 / n_rows)))
    row_ticks = (list(range(0, n_rows, row_stride))
                 if row_stride == 1 or n_rows / row_stride >= 2 else [])
    row_tick_labels = [fonts.label(rows_of_tiles.labels[i])[:8] for i in row_ticks]
    row_label_in = text_width_in(row_tick_labels, label_font) + 0.08 if row_ticks else 0.0
    left = 0.25 + names_in + row_label_in
    line = len(BOUNDARY_LINE) if rows_of_tiles.marked_from is not None else 0
    note = pool_note_cells(n_rows, n, tile_h, tile_px - line)
    top = 0.4 + (0.2 if note else 0) + (0.3 if col_names else 0) + (0.2 if tile_titles else 0)
    top += _GROUP_LABEL_IN if groups else 0.0
    grid_h = rows * tile_h_in + (rows - 1) * row_gap_in
    cbar_h = max(min(grid_h, 3.0), 1.6)  # a colorbar that can be read beside short tiles
    bottom = max(bottom, cbar_h - grid_h + (0.45 if legend else 0.15))
    width, height = left + grid_w + 1.0 + _grid_legend_extra(legend), top + grid_h + bottom
    width = max(width, text_width_in([title], 12) + 0.4)  # the title is not cut
    return GridLayout(tile_in, gap_in, row_gap_in, label_font, ticks, tick_labels, label_in,
                      left, tile_px, note, top, bottom, grid_w, grid_h, width, height,
                      n_rows, tile_h, row_ticks, row_tick_labels, row_label_in, cbar_h)


def _overview_shape(n_heads: int) -> tuple[int, int]:
    """(rows, columns) of the heads overview: 4 or 6 heads a row."""
    cols = min(n_heads, 4 if n_heads <= 16 else 6)
    return math.ceil(n_heads / cols), cols


def check_overviews(result: AttentionResult, dpi: int = 100) -> None:
    """Refuse, before any file is written, a run whose overview pictures (``heads``, and
    ``model`` for several layers) would be too large: they are drawn last."""
    n_layers, n_heads, n = result.weights.shape[:3]
    labels = result.token_labels
    plan = overview_plan(n_heads, result.kv_heads)
    windows = [result.layer_window(li) for li in range(n_layers)]
    grids = [(len(plan.slots), len(plan.slots[0]), (), (), [["head"]], plan.col_breaks,
              bool(plan.groups), outside_label([w], n)) for w in dict.fromkeys(windows)]
    if n_layers > 1:
        row_names, col_names, breaks = _model_grid_names(result)
        grids.append((n_layers, n_heads, row_names, col_names, (), breaks, False,
                      outside_label(windows, n)))
    fonts = Fonts(labels)
    with fonts.context():
        for rows, cols, row_names, col_names, tile_titles, breaks, groups, legend in grids:
            layout = _grid_layout(rows, cols, n, fonts, row_names, col_names, tile_titles, dpi,
                                  labels, breaks, groups, legend)
            check_image_size(layout.width, layout.height, dpi)


def _model_grid_names(result: AttentionResult) -> tuple[list[str], list[str], list[int]]:
    """Row names, column names and kv group breaks of the model grid (layers x heads)."""
    row_names = []
    for li, layer in enumerate(result.layers):
        note = window_note(result.layer_window(li), result.n_tokens)
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
              rows_of_tiles: PanelRows | None = None, measure: Measure = WEIGHTS) -> Path:
    """A grid of small heatmaps as one image (fast for 12 x 12 layers x heads); see
    ``grid_figure``."""
    grid = grid_figure(tiles, title, row_names, col_names, tile_titles, cmap, dpi, scale,
                       token_labels, row_windows=row_windows, col_breaks=col_breaks,
                       rows_of_tiles=rows_of_tiles, measure=measure)
    write_bytes(path, grid.to_bytes(fmt))
    return path


def heads_overview(layer_weights: np.ndarray, title: str, cmap: str = "viridis", dpi: int = 100,
                   scale: str = "sqrt", token_labels: Sequence[str] = (), *,
                   kv_heads: Sequence[int] = (), window: int | None = None,
                   rows_of_tiles: PanelRows | None = None,
                   measure: Measure = WEIGHTS) -> GridFigure:
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
                       rows_of_tiles=rows_of_tiles, measure=measure)


def overview_tiles(layer_weights, kv_heads: Sequence[int] = (), offset: int = 0) -> list[list]:
    """The heads of one layer as the rows of ``heads_overview``'s grid (None: empty slot);
    ``offset``: see ``cells.masked``."""
    plan = overview_plan(len(layer_weights), kv_heads)
    return [[None if h is None else masked(layer_weights[h], None, offset) for h in row]
            for row in plan.slots]


def _similarity_layout(n_layers: int, n_heads: int) -> tuple[int, int, float]:
    """(rows, columns, panel side in inches) of the similarity picture: one panel per layer."""
    if n_layers == 1:
        return 1, 1, min(max(n_heads * 0.45, 3.5), 10.0)
    cols = min(n_layers, 4)
    return math.ceil(n_layers / cols), cols, min(max(n_heads * 0.3, 2.5), 6.0)


def _similarity_size(n_layers: int, n_heads: int) -> tuple[float, float]:
    rows, cols, side = _similarity_layout(n_layers, n_heads)
    return 0.9 + cols * side + (cols - 1) * 0.6 + 0.9, 0.7 + rows * side + (rows - 1) * 0.7 + 0.5


def check_similarity_size(n_layers: int, n_heads: int, dpi: int) -> None:
    """Refuse a similarity picture too large to write, before anything else is written."""
    check_image_size(*_similarity_size(n_layers, n_heads), dpi)


def save_similarity(path: Path, js: np.ndarray, title: str, dpi: int = 100,
                    cmap: str = "magma_r", fmt: str = "png",
                    layers: Sequence[int] | None = None) -> Path:
    """The Jensen-Shannon matrices as annotated heatmaps (0 = same pattern): ``js`` is
    ``(H, H)`` or ``(L, H, H)``, one panel per layer (named from ``layers``), on one
    colour scale."""
    js = js[None] if js.ndim == 2 else js
    n_layers, n = js.shape[:2]
    layers = list(layers) if layers is not None else list(range(n_layers))
    colormap = check_cmap(cmap)
    rows, cols, side = _similarity_layout(n_layers, n)
    width, height = _similarity_size(n_layers, n)
    fig, canvas = new_figure(width, height, dpi)
    top = max(float(js.max()), 1e-6)
    annotate = n <= 16 if n_layers == 1 else side / n >= 0.3
    with Fonts([title]).context():
        for li, matrix in enumerate(js):
            r, c = divmod(li, cols)
            x0 = 0.9 + c * (side + 0.6)
            y0 = 0.7 + (rows - 1 - r) * (side + 0.7)
            ax = fig.add_axes((x0 / width, y0 / height, side / width, side / height))
            image = ax.imshow(matrix, cmap=colormap, vmin=0.0, vmax=top, interpolation="nearest")
            step = max(1, math.ceil(n * 8 / (side * 72)))  # tick labels that do not collide
            ax.set_xticks(range(0, n, step), [str(h) for h in range(0, n, step)], fontsize=8)
            ax.set_yticks(range(0, n, step), [str(h) for h in range(0, n, step)], fontsize=8)
            ax.set_xlabel("head")
            ax.set_ylabel("head")
            ax.set_title(title if n_layers == 1 else f"layer {layers[li]}",
                         fontsize=10)
            if annotate:
                for i in range(n):
                    for j in range(n):
                        red, green, blue = colormap(matrix[i, j] / top)[:3]
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                                fontsize=8 if n <= 12 else 7,
                                color="black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
                                else "white")
        if n_layers > 1:
            fig.suptitle(title, fontsize=11, y=1 - 0.1 / height, va="top")
        cbar_h = min(side, height - 1.2)
        cax = fig.add_axes(((width - 0.75) / width, (height - 0.5 - cbar_h) / height, 0.15 / width,
                            cbar_h / height))
        cbar = fig.colorbar(image, cax=cax)
        cbar.set_label("Jensen-Shannon divergence (bits)", fontsize=8)
        write_bytes(path, figure_bytes(fig, canvas, fmt))
    return path


# -------------------------------------------------------------------------- whole runs


def save_compare(path: Path, result: AttentionResult, heads: Sequence[int], cmap: str = "viridis",
                 dpi: int = 100, scale: str = "sqrt", *, image_format: str = "png",
                 view: str = "heatmap", exclude_first_key: bool = False,
                 annotate: bool | None = None, title: str | None = None,
                 measure: Measure = WEIGHTS) -> Path:
    """``heads`` of every layer in ``result`` side by side in one picture (a row per
    layer when there are several; else up to four a row), on one colour scale. The
    lines view draws them over each other, one colour per head (one layer). ``measure``:
    what ``result.weights`` hold (``colours.Measure``): the norms of ``attnviz.analyses.weighting``
    are drawn on 0..``measure.top``, and as lines of opacity value / top."""
    check_title(title)
    view_of = exclude_first if exclude_first_key else masked
    pretrained = result.config.get("mode") == "pretrained"
    several = len(result.layers) > 1
    panels, titles, windows = [], [], []
    for li, layer in enumerate(result.layers):
        where = f"layer {layer}, " if pretrained or several else ""
        window = result.layer_window(li)
        for h in heads:
            panels.append(view_of(result.weights[li, h], window))
            windows.append(window)
            auto = (f"{where}head {h}{head_extras(result, li, h)}"
                    + (" (key 0 excluded)" if exclude_first_key else "") + measure.title)
            titles.append(title.format(layer=layer, head=h, tokens=result.n_tokens)
                          if title is not None else auto)
    if view == "lines":
        from attnviz.pictures.lines import LinesFigure, window_line_note

        where = f"layer {result.layers[0]}, " if pretrained else ""
        names = ", ".join(map(str, heads))
        note = window_note(windows[0], result.n_tokens)
        text = (title.format(layer=result.layers[0], head=names, tokens=result.n_tokens)
                if title is not None else f"{where}{'heads' if len(heads) > 1 else 'head'} {names}"
                + (f" · {note}" if note else "") + measure.title)
        head_names = ([f"head {h} · kv {result.kv_heads[h]}" for h in heads] if result.grouped
                      else None)
        figure = LinesFigure(result.token_labels, dpi=dpi, extra_texts=[text])
        return figure.save(path, [lines_panel(p, measure) for p in panels[: len(heads)]], [text],
                           fmt=image_format, heads=heads, head_names=head_names,
                           note=lines_note(window_line_note(windows[0], result.n_tokens), measure))
    figure = HeatmapFigure(result.token_labels, len(panels), cmap, dpi, scale, annotate,
                           mask_label="masked /\nexcluded" if exclude_first_key else "masked\n(future)",
                           extra_texts=titles, columns=len(heads) if several else None,
                           outside_label=outside_label(windows, result.n_tokens), measure=measure)
    return figure.save(path, panels, titles, fmt=image_format,
                       windows=windows if any(w is not None for w in windows) else None)


def lines_panel(values: np.ndarray, measure: Measure = WEIGHTS) -> np.ndarray:
    """What the lines view draws for ``values`` measured by ``measure``: the weights
    themselves, or a quantity on 0..top as opacity value / top."""
    if measure.top == 1.0:
        return values
    return values / np.float32(measure.top)


def lines_note(note: str, measure: Measure = WEIGHTS) -> str:
    """The line under a lines picture's title, with what the opacity means for ``measure``."""
    if measure.top == 1.0:
        return note
    scale = f"opacity = {measure.label.split(' (')[0]} / {measure.top:g}"
    return f"{scale} · {note}" if note else scale


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    layer: int | None  # None for the model overview
    head: int | None  # None for an overview grid


def plan_folder(out_dir: Path, layers: Sequence[int], heads: Sequence[int], image_format: str):
    """``(folders, record)``: the ``layer_NN/`` prefix of each layer ("" for one layer) and
    the ``OutputFolder`` listing every file a heatmap folder will hold, before the first is
    written (an interrupted run's files are then known to the next run)."""
    folders = [f"layer_{layer:02d}/" if len(layers) > 1 else "" for layer in layers]
    planned = [f"{folder}{name}.{image_format}" for folder in folders
               for name in [*(f"head_{h:02d}" for h in heads), "heads"]]
    model = [f"model.{image_format}"] if len(layers) > 1 else []
    return folders, OutputFolder(Path(out_dir), planned + model)


def throttle(figures) -> None:
    """At most a few encoded-but-unwritten images wait (each holds a copy of the canvas)."""
    waiting = [f for figure in figures for f in figure.pending if not f.done()]
    for future in waiting[: max(0, len(waiting) - 2 * _ENCODERS)]:
        future.result()


def write_heatmaps(
    result: AttentionResult,
    out_dir: Path,
    heads: Sequence[int] | None = None,
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    *,
    image_format: str = "png",
    view: str = "heatmap",
    exclude_first_key: bool = False,
    annotate: bool | None = None,
    title: str | None = None,
    progress=None,
    measure: Measure = WEIGHTS,
) -> list[WrittenFile]:
    """Per-head pictures plus an overview of all heads, for every layer in ``result``.

    One layer: ``out_dir/head_MM.<fmt>`` and ``out_dir/heads.<fmt>``. Several layers:
    ``out_dir/layer_NN/...`` each, plus ``out_dir/model.<fmt>`` (layers x heads).
    ``view="lines"`` draws each head as lines from queries to keys (the overviews stay
    heatmaps). ``exclude_first_key`` is a view transform (see ``exclude_first``).
    Files an earlier run wrote here (even an interrupted one) and this one did not are
    removed, and nothing else (see ``attnviz.files.outdir``).
    ``progress(stage, done, total)`` is called after each picture (see ``attnviz.files.progress``).
    ``measure``: what ``result.weights`` hold (``colours.Measure``): the norms of
    ``attnviz.analyses.weighting`` get their own colour scale, 0..``measure.top``, named on the
    colorbar, and ``measure.title`` in every title.
    """
    n_layers, n_heads = result.weights.shape[:2]
    n = result.n_tokens
    check_overviews(result, dpi)  # drawn last, checked first: no run fails half-written
    chosen = list(dict.fromkeys(heads)) if heads else list(range(n_heads))
    pretrained = result.config.get("mode") == "pretrained"
    check_title(title)
    view_of = exclude_first if exclude_first_key else masked
    suffix = (" (key 0 excluded, rows renormalised)" if exclude_first_key else "") + measure.title
    tokens = plural(n, "token")

    def titled(layer: int, head: int | str, auto: str) -> str:
        return title.format(layer=layer, head=head, tokens=n) if title is not None else auto

    windows = [result.layer_window(li) for li in range(n_layers)]
    figures: dict = {}  # per legend (the window's swatch or none): one figure, built once

    def figure_for(window: int | None):
        key = "lines" if view == "lines" else outside_label([window], n)
        if key not in figures:
            if view == "lines":
                from attnviz.pictures.lines import LinesFigure

                figures[key] = LinesFigure(result.token_labels, dpi=dpi, extra_texts=[title or ""])
            else:
                figures[key] = HeatmapFigure(
                    result.token_labels, 1, cmap, dpi, scale, annotate,
                    mask_label="masked /\nexcluded" if exclude_first_key else "masked\n(future)",
                    extra_texts=[title or ""], outside_label=key, measure=measure)
        return figures[key]

    for window in dict.fromkeys(windows):  # built (and their options checked) before any file
        figure_for(window)
    folders, record = plan_folder(out_dir, result.layers, chosen, image_format)
    written = []
    total = n_layers * (len(chosen) + 1) + (n_layers > 1)

    def drawn() -> None:
        throttle(figures.values())
        if progress:
            progress("Drawing", len(written), total)

    overview, overview_legend = None, None
    # zlib releases the GIL: the PNGs are compressed in threads while the next is drawn.
    with ThreadPoolExecutor(max_workers=_ENCODERS) as writer:
        for li, layer in enumerate(result.layers):
            folder = out_dir / f"layer_{layer:02d}" if n_layers > 1 else out_dir
            folder.mkdir(parents=True, exist_ok=True)
            where = f"layer {layer}, " if pretrained else ""
            window = windows[li]
            figure = figure_for(window)
            for h in chosen:
                text = titled(layer, h, f"{where}head {h}{head_extras(result, li, h)}{suffix}")
                if view == "lines":
                    from attnviz.pictures.lines import window_line_note

                    extra = {"heads": [h], "note": lines_note(window_line_note(window, n), measure),
                             "head_names": [f"head {h} · kv {result.kv_heads[h]}"]
                             if result.grouped else None}
                    panel = lines_panel(result.weights[li, h], measure)
                else:
                    extra = {"windows": [window]} if window is not None else {}
                    panel = result.weights[li, h]
                record.claim(f"{folders[li]}head_{h:02d}.{image_format}")
                path = figure.save(folder / f"head_{h:02d}.{image_format}",
                                   [view_of(panel, window)], [text], writer,
                                   image_format, **extra)
                written.append(WrittenFile(path, layer, h))
                drawn()
            note = window_note(window, n)
            groups = f" in {plural(len(set(result.kv_heads)), 'kv group')}" if result.grouped else ""
            auto = (f"{where}all {n_heads} heads{groups}, {tokens}"
                    + (f" · {note}" if note else "") + suffix)
            heads_title = titled(layer, "all", auto[0].upper() + auto[1:])
            views = [view_of(w, window) for w in result.weights[li]]
            legend = outside_label([window], n)
            if overview is None or image_format in ("svg", "pdf") or legend != overview_legend:
                overview = heads_overview(views, heads_title, cmap, dpi, scale, result.token_labels,
                                          kv_heads=result.kv_heads, window=window, measure=measure)
                overview_legend = legend
            else:  # the same layout for every layer: only the cells and the title change
                overview.retile(overview_tiles(views, result.kv_heads), heads_title,
                                [window] * len(overview.tiles))
            path = folder / f"heads.{image_format}"
            record.claim(f"{folders[li]}heads.{image_format}")
            write_bytes(path, overview.to_bytes(image_format))
            written.append(WrittenFile(path, layer, None))
            drawn()
        for figure in figures.values():
            for future in figure.pending:
                future.result()  # re-raise a failed write here
    if n_layers > 1:
        # Each tile is made when drawn (a view; a copy only with exclude_first).
        tiles = [[(lambda w=w, window=window: view_of(w, window)) for w in layer]
                 for layer, window in zip(result.weights, windows)]
        row_names, col_names, breaks = _model_grid_names(result)
        record.claim(f"model.{image_format}")
        path = save_grid(
            out_dir / f"model.{image_format}", tiles,
            titled(result.layers[0], "all", f"Every layer and head, {tokens}{suffix}"),
            row_names=row_names, col_names=col_names,
            cmap=cmap, dpi=dpi, scale=scale, token_labels=result.token_labels, fmt=image_format,
            row_windows=windows, col_breaks=breaks, measure=measure,
        )
        written.append(WrittenFile(path, None, None))
        if progress:
            progress("Drawing", len(written), total)
    record.finish(f.path.relative_to(out_dir).as_posix() for f in written)
    return written


def overview_png(result: AttentionResult, dpi: int = 80) -> bytes:
    """Every head of ``result`` in one PNG: its layer's heads overview (one layer) or the
    layers x heads grid (several) — what a notebook shows where scripts cannot run. Drawn
    at a lower resolution when ``dpi`` would make it too large."""
    n_layers, n_heads = result.weights.shape[:2]
    windows = [result.layer_window(li) for li in range(n_layers)]
    tokens = plural(result.n_tokens, "token")
    while True:
        try:
            check_overviews(result, dpi)
            break
        except InputError:
            if dpi <= 20:
                raise
            dpi = max(20, dpi // 2)
    if n_layers == 1:
        pretrained = result.config.get("mode") == "pretrained"
        note = window_note(windows[0], result.n_tokens)
        title = ((f"Layer {result.layers[0]}, all" if pretrained else "All")
                 + f" {n_heads} heads, {tokens}" + (f" · {note}" if note else ""))
        figure = heads_overview([masked(w, windows[0]) for w in result.weights[0]], title,
                                dpi=dpi, token_labels=result.token_labels,
                                kv_heads=result.kv_heads, window=windows[0])
        return figure.to_bytes("png")
    tiles = [[(lambda w=w, window=window: masked(w, window)) for w in layer]
             for layer, window in zip(result.weights, windows)]
    row_names, col_names, breaks = _model_grid_names(result)
    return grid_figure(tiles, f"Every layer and head, {tokens}", row_names, col_names, dpi=dpi,
                       token_labels=result.token_labels, row_windows=windows,
                       col_breaks=breaks).to_bytes("png")


ROLLOUT = Measure(label="rollout: share of input token")
ROLLOUT_AXES = ("position after the last layer (row)", "input token (column)")


def write_rollout(
    rollout: np.ndarray,
    token_labels: Sequence[str],
    out_dir: Path,
    title: str,
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    *,
    image_format: str = "png",
    annotate: bool | None = None,
    title_template: str | None = None,
    layer: int = 0,
) -> list[WrittenFile]:
    """The attention rollout of the model (``(T, T)``, see ``attnviz.analyses.weighting``) as one
    picture, ``out_dir/rollout.<fmt>``: rows are positions after the last layer, columns
    the input tokens they draw on; rows sum to 1 (less in a ``--tokens`` window), so the
    weights' 0..1 scales apply. ``title_template`` (``--title``) is filled with
    ``layer`` (the deepest), ``head="all"`` and the token count. Files of an earlier run
    into the folder are removed, as ``write_heatmaps`` does."""
    check_title(title_template)
    n = len(token_labels)
    if title_template is not None:
        title = title_template.format(layer=layer, head="all", tokens=n)
    figure = HeatmapFigure(token_labels, 1, cmap, dpi, scale, annotate, extra_texts=[title],
                           measure=ROLLOUT, axis_labels=ROLLOUT_AXES)
    name = f"rollout.{image_format}"
    record = OutputFolder(Path(out_dir), [name])
    record.claim(name)
    path = figure.save(Path(out_dir) / name, [np.asarray(rollout, dtype=np.float32)], [title],
                       fmt=image_format)
    record.finish([name])
    return [WrittenFile(path, None, None)]
