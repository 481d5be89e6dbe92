"""Pictures of ``attnviz attribute``: a layers × heads map per measure (a diverging
colormap centred on 0, the values in the cells when they fit) and the attention of the top
heads at the position (each head's query row over the keys, one picture)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.analyses.attribution import AttributionResult
from attnviz.files.fileio import write_bytes
from attnviz.pictures.colours import check_cmap, named_colorbar
from attnviz.pictures.fonts import Fonts, text_width_in
from attnviz.pictures.images import figure_bytes, new_figure

DIVERGING = "RdBu_r"  # red: raises the metric, blue: lowers it; white: 0
MEASURES = {
    "dla": "direct logit attribution",
    "ablation": "ablation effect",
}


def _ink(rgb) -> str:
    red, green, blue = rgb[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def save_head_map(path: Path, values: np.ndarray, title: str, label: str, dpi: int = 100,
                  fmt: str = "png") -> Path:
    """``head_map_bytes`` written to ``path``."""
    write_bytes(path, head_map_bytes(values, title, label, dpi, fmt))
    return path


MIN_WIDTH_IN, MIN_HEIGHT_IN = 6.0, 4.0  # at the default 100 dpi: 600 x 400 pixels at least
_CELL_MIN, _CELL_MAX = 0.16, 0.7  # inches of a layers x heads map's cell
_MAP_IN = 9.0  # a map is at most about this wide or tall
_NUMBER_CELL = 0.42  # a cell at least this wide holds its value, printed at CELL_FONT
CELL_FONT = 8.0


def head_map_bytes(values: np.ndarray, title: str, label: str, dpi: int = 100,
                   fmt: str = "png") -> bytes:
    """``values (L, H)`` as a layers (rows, 0 at the top) × heads map on a colour scale
    symmetric about 0; each cell's value printed when the cells are large enough. Square
    cells, as large as a 9-inch map allows (up to 0.7 in), on a canvas of at least
    6 × 4 in, the title inside it."""
    n_layers, n_heads = values.shape
    cell = min(_CELL_MAX, max(_CELL_MIN, _MAP_IN / max(n_heads, 1)),
               max(_CELL_MIN, _MAP_IN / max(n_layers, 1)))
    fonts = Fonts([title])
    with fonts.context():
        title_in = text_width_in([title], 11) + 0.4
    map_in, map_h = n_heads * cell, n_layers * cell
    width = max(1.1 + map_in + 1.4, title_in, MIN_WIDTH_IN)
    height = max(0.75 + map_h + 0.7, MIN_HEIGHT_IN)
    left = (width - map_in - 1.4 + 1.1) / 2  # the map (and its bar) centred
    bottom = (height - 0.75 - map_h + 0.7) / 2
    fig, canvas = new_figure(width, height, dpi)
    colormap = check_cmap(DIVERGING)
    top = float(np.abs(values).max()) or 1.0
    with fonts.context():
        ax = fig.add_axes((left / width, bottom / height, map_in / width, map_h / height))
        image = ax.imshow(values, cmap=colormap, vmin=-top, vmax=top, interpolation="nearest",
                          aspect="auto")
        step_h = max(1, math.ceil(0.22 / cell))
        step_l = max(1, math.ceil(0.18 / cell))
        ax.set_xticks(range(0, n_heads, step_h), [str(h) for h in range(0, n_heads, step_h)],
                      fontsize=8)
        ax.set_yticks(range(0, n_layers, step_l), [str(layer) for layer in range(0, n_layers, step_l)],
                      fontsize=8)
        ax.set_xlabel("head", fontsize=9)
        ax.set_ylabel("layer", fontsize=9)
        fig.text(0.5, 1 - 0.2 / height, title, fontsize=11, ha="center", va="top")
        if cell >= _NUMBER_CELL:
            for layer in range(n_layers):
                for head in range(n_heads):
                    value = values[layer, head]
                    ax.text(head, layer, f"{value:.2f}" if abs(value) < 9.995 else f"{value:.1f}",
                            ha="center", va="center", fontsize=CELL_FONT,
                            color=_ink(colormap(0.5 + value / (2 * top))))
        bar_h = max(map_h, 2.0)  # a bar that can be read beside a map of few layers
        cax = fig.add_axes(((left + map_in + 0.25) / width,
                            (bottom + (map_h - bar_h) / 2) / height, 0.15 / width, bar_h / height))
        named_colorbar(fig, image, label, "symmetric", label_pt=9, tick_pt=8, cax=cax)
        return figure_bytes(fig, canvas, fmt)


def save_top_heads(path: Path, result: AttributionResult, heads: Sequence[tuple[int, int, float]],
                   token_labels: Sequence[str], measure: str, dpi: int = 100, fmt: str = "png",
                   cmap: str = "viridis", scale: str = "sqrt") -> Path:
    """The attention row at the position of each of ``heads`` (``(layer, head, value)``)
    over keys 0 .. position: a row per head, named with its value of ``measure``, on the
    weights' colour scale of every other picture (``scale``, √ by default)."""
    from attnviz.pictures.colours import colorbar, make_norm

    keys = result.position + 1
    rows = np.stack([result.attention[layer, head] for layer, head, _ in heads])  # (k, keys)
    cell_w = min(0.4, max(0.012, 11.0 / keys))
    cell_h = 0.4
    labelled = cell_w >= 0.14  # a token label under every key
    colormap = check_cmap(cmap)
    norm = make_norm(scale)
    query = token_labels[result.position]
    title = (f"Top heads by {MEASURES[measure]}: attention of the query at {result.position} "
             f"({query}) over the keys")
    fonts = Fonts([title, *token_labels[:keys]])
    with fonts.context():
        title_in = text_width_in([title], 11)
        bottom = 0.35 + (text_width_in([fonts.label(t) for t in token_labels[:keys]], 8)
                         if labelled else 0.3)
        names_in = text_width_in([f"L{layer} H{head}  {measure} {value:+.3f}"
                                  for layer, head, value in heads], 8) + 0.3
    grid_in = keys * cell_w
    grid_h = len(heads) * cell_h
    bar_h = max(grid_h, 2.0)  # a bar that can be read beside few heads, centred on them
    bottom = max(bottom, 0.3 + (bar_h - grid_h) / 2)
    width = max(names_in + grid_in + 1.3, title_in + 0.4, MIN_WIDTH_IN)
    height = max(bottom + grid_h + 0.6 + max(0.0, (bar_h - grid_h) / 2 - 0.3), MIN_HEIGHT_IN)
    left = max(names_in, (width - grid_in - 1.3 + names_in) / 2)  # the rows centred
    fig, canvas = new_figure(width, height, dpi)
    with fonts.context():
        ax = fig.add_axes((left / width, bottom / height, grid_in / width, grid_h / height))
        ax.imshow(rows, cmap=colormap, norm=norm, interpolation="nearest", aspect="auto")
        ax.set_yticks(range(len(heads)), [f"L{layer} H{head}  {measure} {value:+.3f}"
                                          for layer, head, value in heads], fontsize=8)
        if labelled:
            ax.set_xticks(range(keys), [fonts.label(t) for t in token_labels[:keys]],
                          rotation=90, fontsize=8)
        else:
            step = max(1, math.ceil(keys / 12))
            ax.set_xticks(range(0, keys, step), [str(k) for k in range(0, keys, step)], fontsize=8)
            ax.set_xlabel("key position", fontsize=9)
        fig.text(0.5, 1 - 0.2 / height, title, fontsize=11, ha="center", va="top")
        cax = fig.add_axes(((left + grid_in + 0.25) / width,
                            (bottom + (grid_h - bar_h) / 2) / height, 0.15 / width, bar_h / height))
        colorbar(fig, cax, norm, colormap)
        write_bytes(path, figure_bytes(fig, canvas, fmt))
    return path


def write_attribution_pictures(result: AttributionResult, token_labels: Sequence[str], out: Path,
                               metric_name: str, top: int = 10, dpi: int = 100,
                               fmt: str = "png") -> list[Path]:
    """``dla``, ``ablation`` and ``top_heads`` pictures in ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    ablated = "zeroed" if result.ablate == "zero" else "replaced by its mean"
    files = [
        save_head_map(out / f"dla.{fmt}", result.dla, f"Direct logit attribution to {metric_name}",
                      "logits", dpi, fmt),
        save_head_map(out / f"ablation.{fmt}", result.ablation,
                      f"Ablation effect on {metric_name} (head {ablated})",
                      "Δ metric (logits)", dpi, fmt),
        save_top_heads(out / f"top_heads.{fmt}", result, result.top_heads("dla", top),
                       token_labels, "dla", dpi, fmt),
    ]
    return files
