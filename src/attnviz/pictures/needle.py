"""The pictures of ``attnviz needle``: the layers × heads maps of retrieval scores and
streaming mass, the depth × length accuracy map ("lost in the middle"), and for the top
heads the attention of the answer's steps over the whole prompt, one row per depth, with
the needle marked. Arrays in, PNG files out (matplotlib without pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnviz.files.fileio import write_bytes
from attnviz.pictures.colours import named_colorbar
from attnviz.pictures.images import check_image_size
from attnviz.pictures.scan import figure_png, score_map_figure


def head_label(layer: int, head: int) -> str:
    return f"L{layer} H{head}"


def _figure(width: float, height: float, dpi: int):
    """A headless figure laid out by matplotlib's constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_image_size(width, height, dpi)
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def accuracy_figure(accuracy: np.ndarray, depths: list[float], lengths: list[int],
                    title: str, dpi: int = 100):
    """``accuracy (depths, lengths)`` in 0..1: depth down, length across, each cell's value
    written in it; NaN (not run) grey."""
    from matplotlib import colormaps

    n_depths, n_lengths = accuracy.shape
    fig = _figure(max(4.5, 0.9 * n_lengths + 2.6), max(3.0, 0.4 * n_depths + 1.6), dpi)
    ax = fig.add_subplot()
    colormap = colormaps["RdYlGn"].with_extremes(bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(accuracy), cmap=colormap, vmin=0.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_lengths), [f"{n:,}" for n in lengths], fontsize=8)
    ax.set_yticks(range(n_depths), [f"{d:g}" for d in depths], fontsize=8)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("needle depth (0: start, 1: end)")
    ax.set_title(title, fontsize=10)
    for i in range(n_depths):
        for j in range(n_lengths):
            if not np.isnan(accuracy[i, j]):
                ax.text(j, i, f"{accuracy[i, j]:.2f}", ha="center", va="center", fontsize=8)
    named_colorbar(fig, image, "ROUGE-1 recall", label_pt=8, ax=ax, fraction=0.046, pad=0.03)
    return fig


def rows_figure(rows: np.ndarray, needles: list[tuple[float, float]], depths: list[float],
                title: str, dpi: int = 100):
    """``rows (depths, bins)``: a head's mean attention of the answer's steps over the
    prompt (each bin a share of it), one row per depth; the needle's place in each row
    outlined."""
    from matplotlib.patches import Rectangle

    n_rows, bins = rows.shape
    fig = _figure(8.0, max(2.6, 0.32 * n_rows + 1.5), dpi)
    ax = fig.add_subplot()
    top = max(float(rows.max()), 1e-6)
    image = ax.imshow(rows, cmap="magma", vmin=0.0, vmax=top, aspect="auto",
                      interpolation="nearest", extent=(0, 1, n_rows - 0.5, -0.5))
    for i, (start, end) in enumerate(needles):
        ax.add_patch(Rectangle((start, i - 0.5), max(end - start, 1 / bins), 1.0, fill=False,
                               edgecolor="#22c55e", linewidth=1.5))
    ax.set_yticks(range(n_rows), [f"{d:g}" for d in depths], fontsize=8)
    ax.set_ylabel("needle depth")
    ax.set_xlabel("position in the prompt (share of its length); green: the needle")
    ax.set_title(title, fontsize=10)
    named_colorbar(fig, image, "attention mass per 1/100 of the prompt", label_pt=8, ax=ax,
                   fraction=0.046, pad=0.03)
    return fig


def needle_pngs(layers: list[int], scores: np.ndarray, mass: np.ndarray,
                accuracy: np.ndarray, depths: list[float], lengths: list[int],
                head_rows: dict[tuple[int, int], tuple], n_counted: int,
                n_tests: int) -> dict[str, bytes]:
    """Every picture, as PNG bytes by file name. ``head_rows``: ``(layer, head) -> (rows
    (depths, bins), needle spans as shares of the prompt, depths, length)`` for the top
    heads."""
    figures = {
        "retrieval_score.png": score_map_figure(
            scores, layers, f"retrieval score (Wu et al.), mean over {n_counted} counted of "
            f"{n_tests} tests", "retrieval score"),
        "streaming_mass.png": score_map_figure(
            mass, layers, "streaming mass: weight on the sink and recent keys\n(mean of the "
            "key/value group)", "mean attention mass"),
        "accuracy.png": accuracy_figure(accuracy, depths, lengths,
                                        "accuracy by depth and length (lost in the middle)"),
    }
    for (layer, head), (rows, spans, row_depths, length) in head_rows.items():
        figures[f"rows_L{layer}_H{head}.png"] = rows_figure(
            rows, spans, row_depths, f"{head_label(layer, head)}: attention of the decoding "
            f"steps over the prompt, {length:,} tokens")
    return {name: figure_png(fig) for name, fig in figures.items()}


def write_pictures(out_dir: Path, pngs: dict[str, bytes]) -> list[Path]:
    """``out_dir/<name>`` for each picture (the folder made if missing), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in pngs.items():
        write_bytes(out_dir / name, png)
        written.append(out_dir / name)
    return written
