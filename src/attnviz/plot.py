"""Attention weights -> PNG heatmaps (matplotlib without pyplot; numpy in, files out).

Rendering is built for many heads of one text: the figure — axes, token tick labels,
colorbar, legend — is laid out and drawn once; each head then only restores that
background, draws its image and title (blitting) and encodes the pixels. Twelve heads
cost little more than one.

Conventions: a head's matrix is ``(T, T)`` ``[query_pos, key_pos]``; queries on rows,
keys on columns. Masked (future) cells, exactly 0 by construction, are drawn in a
neutral grey so they cannot be mistaken for a small weight.
"""

from __future__ import annotations

import difflib
import math
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Rectangle

from attnviz.analysis import AttentionResult
from attnviz.errors import InputError
from attnviz.fileio import write_bytes

MASKED_COLOR = "#d0d0d0"
DPI_RANGE = (30, 600)
MAX_PIXELS = 40_000_000  # per image; a 9000 x 4500 PNG is already absurd
SCALES = ("sqrt", "linear")
_LABEL_CHARS = 14  # longer labels are cut with an ellipsis
_MIN_SIDE, _MAX_SIDE = 3.0, 11.0  # inches of heatmap per panel
_MIN_FONT, _MAX_FONT = 6.0, 10.0  # points
_TILE_PX = 160  # overview tiles are pooled down to at most this many cells a side
_ANNOTATE_TOKENS = 12  # print the weights in the cells up to this many tokens


def check_cmap(name: str) -> Colormap:
    """The colormap called ``name``, or an InputError listing the closest names."""
    try:
        return colormaps[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(colormaps), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else " (e.g. viridis, magma, Blues)"
        raise InputError(f"unknown colormap {name!r}{hint}") from None


def check_dpi(dpi: int) -> None:
    lo, hi = DPI_RANGE
    if not lo <= dpi <= hi:
        raise InputError(f"--dpi {dpi} is outside the sensible range {lo}-{hi}")


def new_figure(width: float, height: float, dpi: int) -> tuple[Figure, FigureCanvasAgg]:
    """A headless figure of ``width`` x ``height`` inches, refusing absurd sizes."""
    check_dpi(dpi)
    if width * height * dpi**2 > MAX_PIXELS:
        raise InputError(f"the image would be {width * dpi:.0f} x {height * dpi:.0f} pixels; lower --dpi")
    fig = Figure(figsize=(width, height), dpi=dpi)
    return fig, FigureCanvasAgg(fig)


def make_norm(scale: str) -> Normalize:
    """Weights are probabilities: one fixed 0..1 scale for every head, so heads compare.
    ``sqrt`` spreads the small weights of long texts over more of the colormap."""
    if scale not in SCALES:
        raise InputError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return PowerNorm(0.5, vmin=0.0, vmax=1.0) if scale == "sqrt" else Normalize(0.0, 1.0)


@lru_cache(maxsize=1)
def _font_charmap() -> frozenset[int]:
    return frozenset(FT2Font(findfont(FontProperties())).get_charmap())


def displayable(label: str) -> str:
    """``label`` with characters the plotting font cannot draw escaped as ``\\uXXXX``
    (so CJK or rare emoji never become empty boxes or glyph warnings), cut to a length
    that fits beside a heatmap."""
    charmap = _font_charmap()
    out = "".join(
        ch if ord(ch) in charmap else (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        for ch in label
    )
    return out if len(out) <= _LABEL_CHARS else out[: _LABEL_CHARS - 1] + "…"


def masked(weights: np.ndarray) -> np.ma.MaskedArray:
    """``(T, T)`` weights with the causal future (above the diagonal) masked."""
    n = weights.shape[-1]
    return np.ma.masked_array(weights, mask=np.triu(np.ones((n, n), dtype=bool), k=1))


def png_rows(rgba: np.ndarray) -> bytes:
    """The PNG scanlines of an ``(H, W, 4)`` uint8 image: each row prefixed by its filter
    type, 0 (none). A copy, so the canvas can be drawn on again at once."""
    height, width = rgba.shape[:2]
    raw = np.empty((height, 1 + width * 4), dtype=np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = rgba.reshape(height, width * 4)
    return raw.tobytes()


def png_file(rows: bytes, width: int, height: int) -> bytes:
    """A complete RGBA PNG from ``png_rows`` output (zlib releases the GIL here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 3)) + chunk(b"IEND", b""))


def encode_png(rgba: np.ndarray) -> bytes:
    """An ``(H, W, 4)`` uint8 image as an RGBA PNG. Written by hand (zlib, no row filters,
    no metadata): ~3x faster than Pillow's encoder, and the same pixels give the same bytes."""
    return png_file(png_rows(rgba), rgba.shape[1], rgba.shape[0])


def canvas_png(canvas: FigureCanvasAgg) -> bytes:
    return encode_png(np.asarray(canvas.buffer_rgba()))


def _layout(n_tokens: int) -> tuple[float, float, int]:
    """(panel side in inches, tick font size, label stride) for ``n_tokens`` labels."""
    side = min(max(n_tokens * 0.28, _MIN_SIDE), _MAX_SIDE)
    pitch = side * 72 / n_tokens  # points between neighbouring cells
    font = min(max(pitch / 1.3, _MIN_FONT), _MAX_FONT)
    stride = max(1, math.ceil(font * 1.3 / pitch))
    return side, font, stride


class HeatmapFigure:
    """``n_panels`` heatmaps side by side sharing token labels, colour scale and colorbar.

    Build once per text; ``png(panels, titles)`` then renders any heads into it: the
    static figure is restored from a saved background, each head's colour-mapped cells
    are pasted into its axes' pixel box, and only the frame and title are drawn anew.
    """

    def __init__(
        self,
        token_labels: Sequence[str],
        n_panels: int = 1,
        cmap: str = "viridis",
        dpi: int = 100,
        scale: str = "sqrt",
    ):
        n = self.n_tokens = len(token_labels)
        side, font, stride = _layout(n)
        labels = [displayable(lbl) for lbl in token_labels]
        ticks = list(range(0, n, stride))
        tick_labels = [labels[i] for i in ticks]
        label_in = _text_width_in(tick_labels, font) + 0.1  # + tick length and padding
        gap, cbar_w, cbar_pad = 0.3, 0.18, 0.25
        left = bottom = label_in + 0.35  # room for the tick labels and the axis label
        right, top = 0.8, 0.45
        width = left + n_panels * side + (n_panels - 1) * gap + cbar_pad + cbar_w + right
        height = bottom + side + top
        self.fig, self.canvas = new_figure(width, height, dpi)
        self.colormap = check_cmap(cmap).with_extremes(bad=MASKED_COLOR)
        self.norm = make_norm(scale)
        self.axes, self.titles = [], []
        self.row_labels, self.col_labels = [], []  # the token label Text artists drawn
        for p in range(n_panels):
            x0 = left + p * (side + gap)
            ax = self.fig.add_axes((x0 / width, bottom / height, side / width, side / height))
            ax.set_xlim(-0.5, n - 0.5)
            ax.set_ylim(n - 0.5, -0.5)  # query 0 at the top, like a printed matrix
            self.col_labels.append(_token_ticks(ax, ticks, tick_labels, font, "x"))
            ax.set_xlabel("key token (column)", labelpad=label_in * 72)
            if p == 0:
                self.row_labels = _token_ticks(ax, ticks, tick_labels, font, "y")
                ax.set_ylabel("query token (row)", labelpad=label_in * 72)
            else:
                _token_ticks(ax, ticks, [], font, "y")
            self.titles.append(ax.set_title("", fontsize=11, animated=True))
            self.axes.append(ax)
        self.cell_texts = self._cell_texts(side * 72 / n) if n <= _ANNOTATE_TOKENS else []
        cbar_x = left + n_panels * side + (n_panels - 1) * gap + cbar_pad
        cax = self.fig.add_axes(
            (cbar_x / width, (bottom + 0.45) / height, cbar_w / width, (side - 0.45) / height)
        )
        colorbar(self.fig, cax, self.norm, self.colormap)
        # The legend for masked cells: a grey swatch under the colorbar.
        swatch = self.fig.add_axes((cbar_x / width, bottom / height, cbar_w / width, 0.2 / height))
        swatch.add_patch(Rectangle((0, 0), 1, 1, color=MASKED_COLOR))
        swatch.set_axis_off()
        swatch.text(1.3, 0.5, "masked\n(future)", va="center", fontsize=7,
                    transform=swatch.transAxes)
        self.pending: list[Future] = []  # writes handed to a writer thread by save()
        self.canvas.draw()  # everything static, once
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.boxes = [self._pixel_box(ax) for ax in self.axes]

    def _cell_texts(self, cell_pt: float) -> list[list]:
        """Per panel, one animated Text per unmasked cell, for printing the weights."""
        size = min(9.0, cell_pt / 3.4)
        return [
            [ax.text(j, i, "", ha="center", va="center", fontsize=size, animated=True)
             for i in range(self.n_tokens) for j in range(i + 1)]
            for ax in self.axes
        ]

    def _pixel_box(self, ax) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Rows/columns of the canvas buffer inside ``ax``, and for each buffer pixel the
        cell it shows (nearest neighbour)."""
        box = ax.get_window_extent()
        height_px = self.canvas.get_width_height()[1]
        x0, x1 = round(box.x0), round(box.x1)
        y0, y1 = height_px - round(box.y1), height_px - round(box.y0)  # buffer rows go down
        n = self.n_tokens
        cols = ((np.arange(x1 - x0) + 0.5) * n / (x1 - x0)).astype(np.intp)
        rows = ((np.arange(y1 - y0) + 0.5) * n / (y1 - y0)).astype(np.intp)
        return slice(y0, y1), slice(x0, x1), rows, cols

    def render(self, panels: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
        """Draw ``panels`` (each ``(T, T)``) with ``titles``; the canvas as ``(H, W, 4)``."""
        self.canvas.restore_region(self.background)
        pixels = np.asarray(self.canvas.buffer_rgba())  # (H, W, 4), a writable view
        words = pixels.view(np.uint32)[..., 0]  # (H, W): one RGBA pixel per word
        for p, (ax, title, weights, text) in enumerate(zip(self.axes, self.titles, panels, titles)):
            cells = self.colormap(self.norm(masked(weights)), bytes=True)  # (T, T, 4)
            ys, xs, rows, cols = self.boxes[p]
            words[ys, xs] = cells.view(np.uint32)[..., 0][rows][:, cols]  # nearest upscale
            for spine in ax.spines.values():  # the cells were pasted over the frame
                ax.draw_artist(spine)
            title.set_text(text)
            ax.draw_artist(title)
            if self.cell_texts:
                self._annotate(self.cell_texts[p], weights, cells, ax)
        return pixels

    def _annotate(self, texts: list, weights: np.ndarray, cells: np.ndarray, ax) -> None:
        cells_on = [(i, j) for i in range(self.n_tokens) for j in range(i + 1)]
        for artist, (i, j) in zip(texts, cells_on):
            r, g, b = cells[i, j, :3] / 255
            artist.set_text(f"{weights[i, j]:.2f}")
            artist.set_color("black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
            ax.draw_artist(artist)

    def png(self, panels: Sequence[np.ndarray], titles: Sequence[str]) -> bytes:
        return encode_png(self.render(panels, titles))

    def save(self, path: Path, panels: Sequence[np.ndarray], titles: Sequence[str],
             writer: Executor | None = None) -> Path:
        """Write the PNG; with ``writer``, compress and write in its thread while the
        caller renders the next image (the canvas is free again when this returns)."""
        width, height = self.canvas.get_width_height()
        rows = png_rows(self.render(panels, titles))
        if writer is None:
            write_bytes(path, png_file(rows, width, height))
        else:
            self.pending.append(writer.submit(lambda: write_bytes(path, png_file(rows, width, height))))
        return path


def colorbar(fig: Figure, cax, norm: Normalize, colormap: Colormap):
    """A colorbar for weights in 0..1; on the sqrt scale, ticks where the eye needs them."""
    from matplotlib.cm import ScalarMappable

    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), cax=cax)
    if isinstance(norm, PowerNorm):
        cbar.set_ticks([0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1])
    cbar.set_label("attention weight", fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    return cbar


def _token_ticks(ax, ticks: list[int], texts: Sequence[str], font: float, axis: str) -> list:
    """Tick marks and token labels along the ``x`` (below) or ``y`` (left) axis.

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
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, linestyle="none", marker=marker, markersize=2.5, markeredgewidth=0.8,
                color="black", transform=base, clip_on=False)
    return [ax.text(x, y, label, transform=place, fontsize=font, parse_math=False, **style)
            for (x, y), label in zip(points, texts)]


def _text_width_in(texts: Sequence[str], font: float) -> float:
    """Width in inches of the widest of ``texts`` at ``font`` points."""
    from matplotlib.textpath import TextToPath

    if not texts:
        return 0.0
    prop = FontProperties(size=font)
    measure = TextToPath()
    return max(measure.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts) / 72


def pool(weights: np.ndarray, max_cells: int = _TILE_PX) -> np.ma.MaskedArray:
    """A ``(T, T)`` head shrunk to at most ``max_cells`` a side by averaging blocks of
    cells (masked future cells excluded); small heads are returned as they are."""
    n = weights.shape[-1]
    k = math.ceil(n / max_cells)
    if k == 1:
        return masked(weights)
    m = math.ceil(n / k)
    allowed = ~masked(weights).mask
    padded = np.zeros((m * k, m * k), dtype=np.float64)
    count = np.zeros_like(padded)
    padded[:n, :n] = np.where(allowed, weights, 0.0)
    count[:n, :n] = allowed
    sums = padded.reshape(m, k, m, k).sum(axis=(1, 3))
    counts = count.reshape(m, k, m, k).sum(axis=(1, 3))
    with np.errstate(invalid="ignore"):
        return np.ma.masked_array(sums / np.maximum(counts, 1), mask=counts == 0)


def save_grid(
    path: Path,
    tiles: np.ndarray,
    title: str,
    row_names: Sequence[str] = (),
    col_names: Sequence[str] = (),
    tile_titles: Sequence[Sequence[str]] = (),
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
) -> Path:
    """A grid of small heatmaps — ``tiles`` is ``(rows, cols, T, T)``, NaN for an empty
    slot — drawn as one image (fast for 12 x 12 layers x heads), with one colorbar.
    Label rows and columns (``row_names``/``col_names``) or each tile (``tile_titles``)."""
    rows, cols = tiles.shape[:2]
    pooled = [[pool(tiles[r, c]) for c in range(cols)] for r in range(rows)]
    cell = pooled[0][0].shape[0]
    gap = max(1, cell // 12)
    colormap = check_cmap(cmap).with_extremes(bad=MASKED_COLOR)
    norm = make_norm(scale)
    size = (rows * (cell + gap) - gap, cols * (cell + gap) - gap)
    mosaic = np.ones(size + (4,), dtype=np.float32)  # white gaps
    for r in range(rows):
        for c in range(cols):
            if np.isnan(tiles[r, c]).all():
                continue
            y, x = r * (cell + gap), c * (cell + gap)
            mosaic[y : y + cell, x : x + cell] = colormap(norm(pooled[r][c]))
    tile_in = 1.6 if cols <= 6 else 1.1
    left = 0.9 if row_names else 0.25
    top = 0.55 + (0.3 if col_names else 0) + (0.2 if tile_titles else 0)
    width, height = left + cols * tile_in + 1.0, top + rows * tile_in + 0.3
    fig, canvas = new_figure(width, height, dpi)
    ax = fig.add_axes((left / width, 0.3 / height, cols * tile_in / width, rows * tile_in / height))
    ax.imshow(mosaic, interpolation="antialiased" if cell > 64 else "nearest", aspect="auto")
    step = cell + gap
    ax.set_xticks([c * step + (cell - 1) / 2 for c in range(cols)] if col_names else [],
                  col_names, fontsize=8)
    ax.set_yticks([r * step + (cell - 1) / 2 for r in range(rows)] if row_names else [],
                  row_names, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for r, names in enumerate(tile_titles):
        for c, name in enumerate(names):
            ax.text(c * step + (cell - 1) / 2, r * step - 0.5, name, ha="center", va="bottom",
                    fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=12, y=1 - 0.12 / height)
    cax = fig.add_axes(((width - 0.75) / width, 0.3 / height, 0.15 / width, rows * tile_in / height))
    colorbar(fig, cax, norm, colormap)
    canvas.draw()
    write_bytes(path, canvas_png(canvas))
    return path


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    layer: int | None  # None for the model overview
    head: int | None  # None for an overview grid


def save_similarity(path: Path, js: np.ndarray, title: str, dpi: int = 100) -> Path:
    """The ``(H, H)`` Jensen-Shannon matrix as an annotated heatmap (0 = same pattern)."""
    n = js.shape[0]
    side = min(max(n * 0.45, 3.5), 10.0)
    fig, canvas = new_figure(side + 1.8, side + 1.2, dpi)
    ax = fig.add_axes((0.9 / (side + 1.8), 0.7 / (side + 1.2), side / (side + 1.8),
                       side / (side + 1.2)))
    image = ax.imshow(js, cmap="magma_r", vmin=0.0, vmax=max(float(js.max()), 1e-6),
                      interpolation="nearest")
    ax.set_xticks(range(n), [str(h) for h in range(n)], fontsize=8)
    ax.set_yticks(range(n), [str(h) for h in range(n)], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("head")
    ax.set_title(title, fontsize=10)
    if n <= 16:
        top = float(js.max()) or 1.0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{js[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if js[i, j] > 0.6 * top else "black")
    cbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    cbar.set_label("Jensen-Shannon divergence (bits)", fontsize=8)
    canvas.draw()
    write_bytes(path, canvas_png(canvas))
    return path


def save_heads_overview(path: Path, layer_weights: np.ndarray, title: str, cmap: str = "viridis",
                        dpi: int = 100, scale: str = "sqrt") -> Path:
    """All heads of one layer (``(H, T, T)``) as a grid of small heatmaps, 4 or 6 a row."""
    n_heads = layer_weights.shape[0]
    cols = min(n_heads, 4 if n_heads <= 16 else 6)
    rows = math.ceil(n_heads / cols)
    tiles = np.full((rows * cols,) + layer_weights.shape[1:], np.nan, dtype=np.float32)
    tiles[:n_heads] = layer_weights
    names = [f"head {h}" if h < n_heads else "" for h in range(rows * cols)]
    return save_grid(path, tiles.reshape(rows, cols, *layer_weights.shape[1:]), title,
                     tile_titles=[names[r * cols : (r + 1) * cols] for r in range(rows)],
                     cmap=cmap, dpi=dpi, scale=scale)


def write_heatmaps(
    result: AttentionResult,
    out_dir: Path,
    heads: Sequence[int] | None = None,
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
) -> list[WrittenFile]:
    """Per-head PNGs plus an overview of all heads, for every layer in ``result``.

    One layer: ``out_dir/head_MM.png`` and ``out_dir/heads.png``. Several layers:
    ``out_dir/layer_NN/...`` each, plus ``out_dir/model.png`` (layers x heads).
    """
    n_layers, n_heads = result.weights.shape[:2]
    chosen = list(dict.fromkeys(heads)) if heads else list(range(n_heads))
    pretrained = result.config.get("mode") == "pretrained"
    figure = HeatmapFigure(result.token_labels, 1, cmap, dpi, scale)
    written = []
    with ThreadPoolExecutor(max_workers=1) as writer:  # compresses while we draw the next
        for li, layer in enumerate(result.layers):
            folder = out_dir / f"layer_{layer:02d}" if n_layers > 1 else out_dir
            folder.mkdir(parents=True, exist_ok=True)
            where = f"layer {layer}, " if pretrained else ""
            for h in chosen:
                path = figure.save(folder / f"head_{h:02d}.png", [result.weights[li, h]],
                                   [f"{where}head {h}"], writer)
                written.append(WrittenFile(path, layer, h))
            title = f"{where}all {n_heads} heads, {result.n_tokens} tokens"
            path = save_heads_overview(folder / "heads.png", result.weights[li],
                                       title[0].upper() + title[1:], cmap, dpi, scale)
            written.append(WrittenFile(path, layer, None))
        for future in figure.pending:
            future.result()  # re-raise a failed write here
    if n_layers > 1:
        path = save_grid(
            out_dir / "model.png", result.weights,
            f"Every layer and head, {result.n_tokens} tokens",
            row_names=[f"layer {layer}" for layer in result.layers],
            col_names=[f"head {h}" for h in range(n_heads)],
            cmap=cmap, dpi=dpi, scale=scale,
        )
        written.append(WrittenFile(path, None, None))
    return written
