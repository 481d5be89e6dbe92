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
from attnviz.pictures.colours import check_cmap
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


def head_map_bytes(values: np.ndarray, title: str, label: str, dpi: int = 100,
                   fmt: str = "png") -> bytes:
    """``values (L, H)`` as a layers (rows, 0 at the top) × heads map on a colour scale
    symmetric about 0; each cell's value printed when the cells are large enough."""
    n_layers, n_heads = values.shape
    cell = min(0.55, max(0.16, 9.0 / max(n_heads, 1)), max(0.16, 9.0 / max(n_layers, 1)))
    fonts = Fonts([title])
    with fonts.context():
        title_in = text_width_in([title], 10) + 0.3
    map_in = n_heads * cell
    width = max(1.1 + map_in + 1.3, title_in + 0.2)
    left = max(1.1, (width - map_in - 1.3) / 2 + 0.55)  # the map centred under a long title
    height = 0.6 + max(n_layers * cell, 1.2) + 0.6
    fig, canvas = new_figure(width, height, dpi)
    colormap = check_cmap(DIVERGING)
    top = float(np.abs(values).max()) or 1.0
    with fonts.context():
        ax = fig.add_axes((left / width, 0.6 / height, map_in / width,
                           n_layers * cell / height))
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
        fig.text(0.5, 1 - 0.25 / height, title, fontsize=10,
                 ha="center", va="top")
        if cell >= 0.42:
            for layer in range(n_layers):
                for head in range(n_heads):
                    value = values[layer, head]
                    ax.text(head, layer, f"{value:.2f}" if abs(value) < 9.995 else f"{value:.1f}",
                            ha="center", va="center", fontsize=6.5,
                            color=_ink(colormap(0.5 + value / (2 * top))))
        cax = fig.add_axes(((left + map_in + 0.25) / width, 0.6 / height, 0.15 / width,
                            n_layers * cell / height))
        cbar = fig.colorbar(image, cax=cax)
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label(label, fontsize=8)
        return figure_bytes(fig, canvas, fmt)


def save_top_heads(path: Path, result: AttributionResult, heads: Sequence[tuple[int, int, float]],
                   token_labels: Sequence[str], measure: str, dpi: int = 100, fmt: str = "png",
                   cmap: str = "viridis") -> Path:
    """The attention row at the position of each of ``heads`` (``(layer, head, value)``)
    over keys 0 .. position: a row per head, named with its value of ``measure``."""
    keys = result.position + 1
    rows = np.stack([result.attention[layer, head] for layer, head, _ in heads])  # (k, keys)
    cell_w = min(0.32, max(0.012, 11.0 / keys))
    cell_h = 0.32
    labelled = cell_w >= 0.12  # a token label under every key
    bottom = 0.3 + text_width_in(list(token_labels[:keys]), 7) if labelled else 0.6
    colormap = check_cmap(cmap)
    query = token_labels[result.position]
    title = (f"Top heads by {MEASURES[measure]}: attention of the query at {result.position} "
             f"({query}) over the keys")
    fonts = Fonts([title, *token_labels[:keys]])
    with fonts.context():
        title_in = text_width_in([title], 9)
    grid_in = keys * cell_w
    width = max(2.4 + grid_in + 1.1, 2.4 + title_in + 0.3)  # the whole title, however few keys
    height = bottom + len(heads) * cell_h + 0.45
    fig, canvas = new_figure(width, height, dpi)
    with fonts.context():
        ax = fig.add_axes((2.4 / width, bottom / height, keys * cell_w / width,
                           len(heads) * cell_h / height))
        image = ax.imshow(rows, cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest",
                          aspect="auto")
        ax.set_yticks(range(len(heads)), [f"L{layer} H{head}  {measure} {value:+.3f}"
                                          for layer, head, value in heads], fontsize=8)
        if labelled:
            ax.set_xticks(range(keys), [fonts.label(t) for t in token_labels[:keys]],
                          rotation=90, fontsize=7)
        else:
            step = max(1, math.ceil(keys / 12))
            ax.set_xticks(range(0, keys, step), [str(k) for k in range(0, keys, step)], fontsize=7)
            ax.set_xlabel("key position", fontsize=8)
        ax.set_title(title, fontsize=9, loc="left")
        cax = fig.add_axes(((2.4 + grid_in + 0.25) / width, bottom / height, 0.12 / width,
                            len(heads) * cell_h / height))
        cbar = fig.colorbar(image, cax=cax)
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("attention weight", fontsize=8)
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
