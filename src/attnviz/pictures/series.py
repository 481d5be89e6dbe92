"""Pictures of heads across checkpoints (``scan_series``): per detector, the layers × heads
map of every checkpoint as small multiples on one colour scale, and the scores of the top
heads against the training step (matplotlib without pyplot; files written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.analyses.scan_series import CheckpointScan, same_shape, scores, summary, top_heads_over_series
from attnviz.files.fileio import write_bytes
from attnviz.files.outdir import OutputFolder
from attnviz.pictures.colours import named_colorbar
from attnviz.pictures.scan import SCAN_MAPS, TITLES, figure_png

MAX_PANELS_A_ROW = 6
TOP_LINES = 6  # heads drawn in a line chart


def label(checkpoint: CheckpointScan) -> str:
    """``step 3000``, or the checkpoint's name (its last path part) when it has no step."""
    if checkpoint.step is not None:
        return f"step {checkpoint.step:,}"
    return Path(checkpoint.name.rstrip("/")).name or checkpoint.name


def x_axis(series: Sequence[CheckpointScan]) -> tuple[np.ndarray, str, list[str] | None]:
    """The x of each checkpoint: its step when every one has a step, else its place in the
    order given (tick labels: the names)."""
    if all(c.step is not None for c in series):
        return np.array([c.step for c in series], dtype=float), "training step", None
    return np.arange(len(series), dtype=float), "checkpoint (in the order given)", [
        label(c) for c in series]


def _figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def small_multiples(series: Sequence[CheckpointScan], detector: str, dpi: int = 100):
    """One layers × heads map per checkpoint (same shape), colour scale 0..1 for all."""
    from matplotlib import colormaps

    n_layers, n_heads = series[0].shape
    cols = min(len(series), MAX_PANELS_A_ROW)
    rows = -(-len(series) // cols)
    cell = min(0.3, 2.6 / max(n_layers, n_heads))
    panel_w, panel_h = max(n_heads * cell + 0.5, 1.6), n_layers * cell + 0.7
    fig = _figure(cols * panel_w + 1.0, rows * panel_h + 0.8, dpi)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    colormap = colormaps["viridis"].with_extremes(bad="#d0d0d0")
    layers = series[0].result.layers
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(series):
            ax.set_visible(False)
            continue
        image = ax.imshow(np.ma.masked_invalid(scores(series[i], detector)), cmap=colormap,
                          vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
        ax.set_title(label(series[i]), fontsize=8)
        step_l = max(1, n_layers // 6)
        ax.set_yticks(range(0, n_layers, step_l),
                      [str(layers[j]) for j in range(0, n_layers, step_l)], fontsize=7)
        step_h = max(1, n_heads // 6)
        ax.set_xticks(range(0, n_heads, step_h), [str(h) for h in range(0, n_heads, step_h)],
                      fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("layer", fontsize=7)
        if i // cols == rows - 1:
            ax.set_xlabel("head", fontsize=7)
    fig.suptitle(f"{TITLES[detector]}, every head at each checkpoint", fontsize=10)
    named_colorbar(fig, image, "mean score over prompts" if detector != "induction_probe"
                   else "score", label_pt=8, ax=list(axes.flat), shrink=0.8, fraction=0.03)
    return fig


def lines(series: Sequence[CheckpointScan], detector: str, dpi: int = 100):
    """The top heads' scores against the checkpoint (same shape), or — for models of
    different shapes — each checkpoint's best score and its heads over the threshold."""
    x, x_label, ticks = x_axis(series)
    fig = _figure(7.5, 4.2, dpi)
    if same_shape(series):
        ax = fig.subplots()
        layers = series[0].result.layers
        stacked = np.stack([scores(c, detector) for c in series])  # (C, L, H)
        for li, head in top_heads_over_series(series, detector, TOP_LINES):
            ax.plot(x, stacked[:, li, head], marker="o", markersize=3,
                    label=f"L{layers[li]} H{head}")
        ax.legend(fontsize=7, title="heads (best score first)", title_fontsize=7, loc="best")
        ax.set_ylabel("mean score over prompts" if detector != "induction_probe" else "score")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{TITLES[detector]}: the top {min(TOP_LINES, stacked[0].size)} heads",
                     fontsize=10)
    else:
        ax, count = fig.subplots(2, 1, sharex=True)
        found = [summary(c, detector) for c in series]
        ax.plot(x, [f["best"]["score"] for f in found], marker="o")
        for xi, f in zip(x, found):
            ax.annotate(f"L{f['best']['layer']} H{f['best']['head']}", (xi, f["best"]["score"]),
                        fontsize=7, xytext=(0, 4), textcoords="offset points", ha="center")
        ax.set_ylabel("best head's score", fontsize=8)
        ax.set_ylim(-0.02, 1.1)
        ax.set_title(f"{TITLES[detector]}: models of different shapes, compared by summaries",
                     fontsize=9)
        count.bar(x, [f["over_threshold"] for f in found], width=0.6 if ticks else None)
        count.set_ylabel(f"heads ≥ {found[0]['threshold']}", fontsize=8)
        ax = count
    ax.set_xlabel(x_label)
    if ticks is not None:
        ax.set_xticks(x, ticks, rotation=30, ha="right", fontsize=7)
    return fig


def save_series_plots(out_dir: Path, series: Sequence[CheckpointScan],
                      detectors: Sequence[str]) -> list[Path]:
    """``out_dir/<detector>.png`` (small multiples, same shape only) and
    ``out_dir/<detector>_over_checkpoints.png`` for every detector; the files of an
    earlier run that this one does not write are removed (``attnviz.files.outdir``)."""
    maps = same_shape(series)
    planned = [f"{d}_over_checkpoints.png" for d in detectors] + (
        [f"{d}.png" for d in detectors] if maps else [])
    record = OutputFolder(out_dir, planned, SCAN_MAPS)
    written = []
    for detector in detectors:
        figures = ([(f"{detector}.png", small_multiples(series, detector))] if maps else []) + [
            (f"{detector}_over_checkpoints.png", lines(series, detector))]
        for name, fig in figures:
            record.claim(name)
            write_bytes(out_dir / name, figure_png(fig))
            written.append(out_dir / name)
    record.finish(p.name for p in written)
    return written
