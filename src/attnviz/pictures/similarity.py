"""The head-similarity picture: the Jensen-Shannon divergences between the heads of each
layer (``(H, H)`` or ``(L, H, H)``) as annotated heatmaps, one panel per layer on one colour
scale (``save_similarity``), and its size checked before anything is written
(``check_similarity_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.files.fileio import write_bytes
from attnviz.pictures.colours import check_cmap, named_colorbar
from attnviz.pictures.fonts import Fonts
from attnviz.pictures.images import check_image_size, figure_bytes, new_figure


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
        named_colorbar(fig, image, "Jensen-Shannon divergence (bits)", label_pt=8, cax=cax)
        write_bytes(path, figure_bytes(fig, canvas, fmt))
    return path
