"""Score maps of ``attnviz scan``: one layers x heads picture per detector (matplotlib
without pyplot; files written atomically)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from attnviz.analyses.detectors import DETECTORS
from attnviz.analyses.stats import COLUMNS
from attnviz.core.words import counted
from attnviz.files.fileio import write_bytes
from attnviz.files.outdir import OutputFolder

# The names a scan --plot folder can hold: one map per detector or statistic, an
# encoder–decoder's prefixed by its kind (and, across checkpoints, <name>_over_checkpoints:
# pictures.series)
SCAN_MAPS = re.compile("((encoder|decoder|cross)_)?("
                       + "|".join((*DETECTORS, *COLUMNS, "induction_probe"))
                       + r")(_over_checkpoints)?\.png")

MAX_ANNOTATED = 24  # cells per side that still hold a readable number


TITLES = {
    "previous_token_head": "previous-token score",
    "duplicate_token_head": "duplicate-token score",
    "induction_head": "induction score",
    "first_token": "first-token (sink) mass",
    "max_weight": "max weight (focus)",
    "induction_probe": "induction probe score (repeated random tokens)",
}
FLAT_IN = 1.5  # a map less tall than this (inches) gets its colour bar under it, not beside


def detector_maps(result, detectors: list[str], prefix: str = "") -> dict[str, tuple[np.ndarray, str]]:
    """``name -> (scores (L, H), title)`` of a ``ScanResult``, for ``save_score_maps``;
    the titles name the kind of attention of an encoder's or encoder–decoder's scan, and
    ``prefix`` starts each name (an encoder–decoder's kind: ``cross_first_token``)."""
    maps = {}
    kind = f"{result.attention} attention: " if getattr(result, "attention", None) else ""
    for name in detectors:
        scores = result.induction_probe if name == "induction_probe" else result.mean[name]
        what = "" if name == "induction_probe" else f"\nmean over {counted(result.n_prompts, 'prompt')}"
        maps[prefix + name] = (scores, kind + TITLES[name] + what)
    return maps


def _cell_size(n_layers: int, n_heads: int) -> float:
    return 0.5 if max(n_layers, n_heads) <= MAX_ANNOTATED else max(0.12, 12 / max(n_layers, n_heads))


def _flat(n_layers: int, n_heads: int) -> bool:
    """A map of few layers (one layer: a row of heads): its colour bar goes under it."""
    return n_layers * _cell_size(n_layers, n_heads) < FLAT_IN


def draw_score_map(fig, ax, scores: np.ndarray, layers: list[int], title: str, label: str,
                   cmap: str = "viridis", cax=None) -> None:
    """``scores (L, H)`` on ``ax``: layers on rows, heads on columns, a 0..1 colour scale
    shared by every map, the value in each cell when the grid is small enough; NaN cells
    are grey. The colour bar goes in ``cax``, else beside ``ax`` (under a flat map)."""
    from matplotlib import colormaps

    from attnviz.pictures.colours import named_colorbar

    n_layers, n_heads = scores.shape
    colormap = colormaps[cmap].with_extremes(bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(scores), cmap=colormap, vmin=0.0, vmax=1.0,
                      interpolation="nearest", aspect="auto" if cax is not None else "equal")
    step_h = max(1, n_heads // 24)
    step_l = max(1, n_layers // 24)
    ax.set_xticks(range(0, n_heads, step_h), [str(h) for h in range(0, n_heads, step_h)], fontsize=8)
    ax.set_yticks(range(0, n_layers, step_l), [str(layers[i]) for i in range(0, n_layers, step_l)],
                  fontsize=8)
    ax.set_xlabel("head", fontsize=9)
    ax.set_ylabel("layer", fontsize=9)
    ax.set_title(title, fontsize=10)
    if max(n_layers, n_heads) <= MAX_ANNOTATED:
        size = 8 if max(n_layers, n_heads) <= 16 else 7
        for i in range(n_layers):
            for j in range(n_heads):
                value = scores[i, j]
                if np.isnan(value):
                    continue
                r, g, b = colormap(float(value))[:3]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=size,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    flat = _flat(n_layers, n_heads)
    where = ({"cax": cax} if cax is not None else
             {"ax": ax, "location": "bottom", "fraction": 0.25, "shrink": 0.6, "aspect": 30}
             if flat else {"ax": ax, "fraction": 0.046, "pad": 0.03, "shrink": 0.9})
    named_colorbar(fig, image, label, **({"orientation": "horizontal"}
                                         if flat and cax is not None else {}), **where)


def score_map_figure(scores: np.ndarray, layers: list[int], title: str, label: str,
                     dpi: int = 100, cmap: str = "viridis"):
    """A ``Figure`` of one map (see ``draw_score_map``), laid out by hand: square cells, the
    colour bar as long as the map beside it, or under a flat map (one layer) — never a
    tall bar beside a thin strip."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from attnviz.pictures.fonts import text_width_in

    n_layers, n_heads = scores.shape
    cell = _cell_size(n_layers, n_heads)
    map_w, map_h = n_heads * cell, n_layers * cell
    flat = _flat(n_layers, n_heads)
    lines = title.count("\n") + 1
    left, top = 0.75, 0.3 + 0.2 * lines
    right = 0.35 if flat else 0.25 + 0.15 + 1.0  # the bar, its ticks and its name
    bottom = 0.6 + (0.75 if flat else 0.0)  # the bar under the head numbers
    width = max(left + map_w + right, text_width_in(title.splitlines(), 10) + 0.6, 4.5)
    height = top + map_h + bottom
    left = (width - map_w - right + left) / 2  # the map centred under a wider title
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / width, bottom / height, map_w / width, map_h / height))
    if flat:  # under the map, as long as it (at least 2 in, at most 4 in), centred
        bar_w = min(max(map_w, 2.0), 4.0, width - 0.6)
        cax = fig.add_axes(((left + (map_w - bar_w) / 2) / width, 0.5 / height,
                            bar_w / width, 0.15 / height))
    else:
        cax = fig.add_axes(((left + map_w + 0.25) / width, bottom / height, 0.15 / width,
                            map_h / height))
    draw_score_map(fig, ax, scores, layers, title, label, cmap, cax=cax)
    return fig


def score_maps_figure(maps: dict[str, tuple[np.ndarray, str]], layers: list[int],
                      dpi: int = 100, columns: int = 2):
    """Every map of ``maps`` (``name -> (scores, title)``) in one ``Figure``, ``columns``
    a row: what a notebook shows of a scan."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_layers, n_heads = next(iter(maps.values()))[0].shape
    cell = _cell_size(n_layers, n_heads)
    title_width = max(0.085 * len(line) for _, title in maps.values() for line in title.splitlines())
    panel_w = max(n_heads * cell + 2.4, title_width + 0.6, 4.5)
    panel_h = n_layers * cell + 2.1 if _flat(n_layers, n_heads) else max(n_layers * cell + 1.6, 2.8)
    columns = min(columns, len(maps))
    rows = -(-len(maps) // columns)
    fig = Figure(figsize=(panel_w * columns, panel_h * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax, (name, (scores, title)) in zip(axes, maps.items()):
        label = "score" if name == "induction_probe" else "mean score over prompts"
        draw_score_map(fig, ax, scores, layers, title, label)  # the bar under a flat map
    for ax in axes[len(maps):]:  # the empty panels of the last row
        ax.set_visible(False)
    return fig


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def save_score_maps(out_dir: Path, maps: dict[str, tuple[np.ndarray, str]],
                    layers: list[int] | dict[str, list[int]]) -> list[Path]:
    """``out_dir/<name>.png`` for every ``name -> (scores (L, H), title)``; the maps of an
    earlier run (interrupted or not) that this one does not draw are removed, and nothing
    else (see ``attnviz.files.outdir``). ``layers``: the rows' layers, or per name (the two
    stacks of an encoder–decoder)."""
    record = OutputFolder(out_dir, [f"{name}.png" for name in maps], SCAN_MAPS)
    written = []
    for name, (scores, title) in maps.items():
        path = out_dir / f"{name}.png"
        label = "score" if name == "induction_probe" else "mean score over prompts"
        rows = layers[name] if isinstance(layers, dict) else layers
        png = figure_png(score_map_figure(scores, rows, title, label))
        record.claim(path.name)
        write_bytes(path, png)
        written.append(path)
    record.finish(p.name for p in written)
    return written
