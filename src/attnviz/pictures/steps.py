"""The figure of ``attnviz steps``: one head walked through the attention pipeline.

Panels, in pipeline order (left to right, wrapped onto a second row when one row would
be too wide): Q, K, scores Q·Kᵀ, scaled scores, masked scores, softmax weights,
[dropout], V, context. Every panel keeps the token rows of the text at the same height,
so one token can be followed across the figure. Signed matrices use a diverging
colormap centred at 0 (panels that belong together share a scale: Q with K, the scaled
with the masked scores, V with the context, which is a weighted average of V's rows);
the weights use the colormap and scale of ``attnviz heatmap``. Without the causal mask
there is no masked panel (unless a window hides keys on both sides); cross-attention's K,
V and the columns of the square panels are the second text's tokens (``key_labels``), the
square panels as wide as square cells make them (up to ``_MAX_KEYS_W``). T5's relative
position bias B and the scores it is added to are panels of their own, on a row between the
scores and the weights; a model that does not scale its scores (T5) has no scaled panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, LogNorm, Normalize, PowerNorm
from matplotlib.figure import Figure

from attnviz.analyses.steps import STAGES, HeadSteps
from attnviz.core.errors import InputError
from attnviz.files.fileio import write_bytes
from attnviz.pictures import colours, images
from attnviz.pictures.fonts import Fonts, text_width_in

DIVERGING_CMAP = "RdBu_r"  # red > 0, blue < 0, white at 0
MAX_TOKENS = 128  # every cell is drawn: beyond this the cells would be thinner than a pixel
ANNOTATE_TOKENS = 8  # print the values in the cells up to this many tokens
ANNOTATE_DIMS = 8  # ... and in the T x d_k panels when d_k is this small too
# Sizes in inches.
_MIN_SIDE, _MAX_SIDE = 2.0, 4.4  # a T x T panel: 0.34 in a token between these
_MAX_KEYS_W = 7.0  # a T x T_k panel of cross-attention: as wide as its keys' square cells, up to this
_MIN_DIM_W, _DIM_SHARE = 1.1, 0.6  # a T x d_k panel: at most this share of a T x T one
_TITLE_H, _SUPTITLE_H, _SUBTITLE_H, _LEGEND_H = 0.6, 0.55, 0.25, 0.45
_YLABEL_W, _XLABEL_H = 0.3, 0.4  # the axis names ("query", "key")
_GAP, _MARGIN = 0.3, 0.2
_TITLE_FONT = 9.5  # points
_MASK_MIN_DISTANCE = 25.0  # CIELAB distance from every colour of the map, as colours.mask_color
_CBAR_W, _CBAR_PAD, _CBAR_TICKS = 0.11, 0.07, 0.45
_CBAR_NAME = 0.2  # the bar's name beside its ticks, on one or two lines of 8 pt


@dataclass
class Panel:
    """One matrix of the pipeline and how to draw it."""

    name: str  # the HeadSteps attribute, e.g. "scaled"
    data: np.ndarray  # (T, T) or (T, d_k)
    title: str  # formula, then what it is and its shape
    row_axis: str  # "query" or "key"
    square: bool  # (T, T) with keys on the columns, else (T, d_k)
    scale: int  # index into the figure's colour scales; panels sharing one are adjacent


@dataclass
class ColourScale:
    colormap: Colormap
    norm: Normalize
    label: str
    weights: bool  # drawn like heatmap's weights (colorbar ticks of the sqrt scale)
    image: object = None  # an image drawn on this scale, for its colorbar


def check_steps_size(n_tokens: int, what: str = "the text") -> None:
    if n_tokens > MAX_TOKENS:
        raise InputError(f"{what} is {n_tokens} tokens; the steps figure draws every cell and "
                         f"is limited to {MAX_TOKENS} tokens: use a shorter text")


def _shape(rows: int, cols: int, names: str) -> str:
    return f"{rows} × {cols}  ({names})"


def build_panels(steps: HeadSteps, cmap: str = "viridis", scale: str = "sqrt"
                 ) -> tuple[list[Panel], list[ColourScale]]:
    """The panels of ``steps`` in pipeline order, and their colour scales."""
    n, dk = steps.n_tokens, steps.head_dim
    tt, td = _shape(n, steps.n_keys, "T × T_k" if steps.cross else "T × T"), _shape(n, dk, "T × d_k")
    formula = steps.formulas()
    scale_text = (f"√d_k = √{dk} = {math.sqrt(dk):.4g}" if steps.divides_by_sqrt_dk
                  else f"scaled by {steps.scale:.4g}")

    def signed(label: str, *arrays: np.ndarray) -> ColourScale:
        finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
        top = float(np.abs(finite).max()) if finite.size else 1.0
        colormap = colours.check_cmap(DIVERGING_CMAP).with_extremes(bad=_mask_colour(DIVERGING_CMAP))
        return ColourScale(colormap, Normalize(-(top or 1.0), top or 1.0), label, weights=False)

    # A window of a longer text (--tokens A:B, A > 0) cuts the keys before A off its rows.
    whole_rows = np.allclose(steps.weights.sum(axis=1), 1.0, atol=1e-4)
    row_sums = "rows sum to 1" if whole_rows else "rows of a window (keys before it cut)"
    weights_map = colours.check_cmap(cmap).with_extremes(bad=_mask_colour(cmap))
    stages = {name: m for name, m in steps.matrices().items() if name in STAGES}
    scales = [signed("Q, K", steps.queries, steps.keys, *stages.values())]
    before = {"queries_projected": "queries before QK-norm", "keys_projected": "keys before QK-norm",
              "queries_unrotated": "queries before RoPE", "keys_unrotated": "keys before RoPE"}
    panels = [Panel(name, m, f"{formula[name]}\n{before[name]}, {td}",
                    "key" if name.startswith("keys") else "query", False, 0)
              for name, m in stages.items()]
    rotated = ", rotated by position" if steps.rope else ""
    hidden = ("−∞ above the diagonal" + (
        f" and {steps.window}+ back (window {steps.window})" if steps.window else "")
              if steps.causal else f"−∞ {steps.window}+ away (window ±{steps.window - 1})"
              if steps.window else "")
    td_keys = _shape(steps.n_keys, dk, "T_k × d_k") if steps.cross else td
    panels += [
        Panel("queries", steps.queries, f"{formula['queries']}\nqueries{rotated}, {td}", "query",
              False, 0),
        Panel("keys", steps.keys, f"{formula['keys']}\nkeys{rotated}, {td_keys}", "key", False, 0),
    ]
    # The scores up to the mask, each on its own scale (T5's bias is a few units where the
    # scores may be tens: on one scale it would vanish); the masked scores share the scale
    # of the matrix they mask.
    unscaled = "scores, not scaled by 1/√d_k" if steps.scaled is None else "scores"
    scales.append(signed("scores", steps.scores))
    panels.append(Panel("scores", steps.scores, f"{formula['scores']}\n{unscaled}, {tt}", "query",
                        True, len(scales) - 1))
    if steps.scaled is not None:
        scales.append(signed("scaled scores", steps.scaled))
        panels.append(Panel("scaled", steps.scaled, f"{formula['scaled']}\n{scale_text}, {tt}",
                            "query", True, len(scales) - 1))
    if steps.position_bias is not None:
        relative = steps.relative or {}
        origin = f", layer {relative['layer']}'s table" if "layer" in relative else ""
        scales.append(signed("position bias", steps.position_bias))
        panels.append(Panel("position_bias", steps.position_bias,
                            f"{formula['position_bias']}\nrelative position bias{origin}, {tt}",
                            "query", True, len(scales) - 1))
        scales.append(signed("scores + bias", steps.biased_scores))
        panels.append(Panel("biased_scores", steps.biased_scores,
                            f"{formula['biased_scores']}\nscores + position bias, {tt}", "query",
                            True, len(scales) - 1))
    if steps.masked is not None:
        panels.append(Panel("masked", steps.masked, f"{formula['masked']}\n{hidden}, {tt}",
                            "query", True, len(scales) - 1))
    scales.append(ColourScale(weights_map, colours.make_norm(scale), "attention weight",
                              weights=True))
    panels.append(Panel("weights", steps.weights, f"{formula['weights']}\nweights, {row_sums}, "
                        f"{tt}", "query", True, len(scales) - 1))
    if steps.dropped is not None:
        keep = 1 / (1 - steps.dropout)
        norm = {"sqrt": PowerNorm(0.5, 0.0, keep), "linear": Normalize(0.0, keep),
                "log": LogNorm(colours.LOG_FLOOR, keep, clip=True)}[scale]
        scales.append(ColourScale(weights_map, norm, "weight after dropout", weights=True))
        panels.append(Panel("dropped", steps.dropped,
                            f"{formula['dropped']}, seed {steps.seed}\n"
                            f"survivors ÷ (1 − p), i.e. × {keep:.3g}, {tt}", "query", True,
                            len(scales) - 1))
    scales.append(signed("V, context", steps.values, steps.context))
    v = len(scales) - 1
    panels += [
        Panel("values", steps.values, f"{formula['values']}\nvalues, {td_keys}", "key", False, v),
        Panel("context", steps.context, f"{formula['context']}\ncontext vectors, {td}",
              "query", False, v),
    ]
    return panels, scales


def _mask_colour(cmap: str) -> str:
    """The colour of masked (−∞) cells: one no value of ``cmap`` can have. For the
    diverging map of the scores, the lightest grey that is clearly not one of its colours
    (a calm colour on a slide; its light greys are too close to the pale colours near 0)."""
    if cmap == DIVERGING_CMAP:
        colormap = colours.check_cmap(cmap)
        for grey in ("#909090", "#808080", "#606060"):
            if colours.mask_distance(colormap, grey) >= _MASK_MIN_DISTANCE:
                return grey
    return colours.mask_color(cmap)


def _cell_text(value: float, weights: bool) -> str:
    if not np.isfinite(value):
        return "−∞"
    if weights:
        return f"{value:.2f}"
    size = abs(value)
    text = f"{value:.0f}" if size >= 99.5 else f"{value:.1f}" if size >= 9.95 else f"{value:.2f}"
    return text.replace("-", "−")


def _rows(panels: Sequence[Panel]) -> list[list[int]]:
    """Panel indices per row: the scores (Q, K, S, scaled, masked) on the first row, the
    weights and what they do (A, dropout, V, Z) on the second. All eight panels on one
    row would be too wide for a slide at any size worth reading. T5: Q, K, S; then B,
    S + B, mask; then A, V, Z."""
    names = [p.name for p in panels]
    cut = names.index("weights")
    # QK-norm / RoPE stages: Q and K get a row of their own; T5's bias starts a row of what
    # is done to the scores (B, S + B, the mask)
    middle = (names.index("scores") if names[0] in STAGES else
              names.index("position_bias") if "position_bias" in names else None)
    if middle is not None:
        return [list(range(middle)), list(range(middle, cut)), list(range(cut, len(panels)))]
    return [list(range(cut)), list(range(cut, len(panels)))]


def steps_figure(
    steps: HeadSteps,
    token_labels: Sequence[str],
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    title: str | None = None,
    subtitle: str | None = None,
    fonts: Fonts | None = None,
    key_labels: Sequence[str] | None = None,
) -> tuple[Figure, FigureCanvasAgg]:
    """The whole pipeline of ``steps`` as one figure (drawn when it is saved).

    Axes are labelled with the panel names (``ax.get_label()``: "queries", "scores", …,
    and "<name> colorbar"). ``subtitle`` goes under the title (e.g. which model).
    ``key_labels``: cross-attention's keys (the second text's tokens)."""
    n, dk = steps.n_tokens, steps.head_dim
    check_steps_size(max(n, steps.n_keys))
    panels, scales = build_panels(steps, cmap, scale)
    fonts = fonts or Fonts([*token_labels, *(key_labels or [])])
    labels = [fonts.label(t) for t in token_labels]
    keys = [fonts.label(t) for t in key_labels] if key_labels is not None else labels

    side = min(max(n * 0.34, _MIN_SIDE), _MAX_SIDE)  # a T x T panel, inches
    cell_pt = side / n * 72  # the height of one token row, in points
    font = min(max(cell_pt / 1.3, 7.0), 9.0)  # never under 7 pt: a stride instead
    stride = max(1, math.ceil(font * 1.2 / cell_pt))
    ticks = list(range(0, n, stride))
    # Cross-attention: the T x T_k panels keep square cells up to a width (more keys than
    # queries: the source's labels stay readable along the columns).
    key_w = side if not steps.cross else min(max(len(keys) * side / n, _MIN_SIDE), _MAX_KEYS_W)

    def every(count: int, length: float) -> list[int]:  # labels that fit along ``length`` in
        return list(range(0, count, max(1, math.ceil(font * 1.2 / (length / count * 72)))))

    key_ticks, column_ticks = every(len(keys), side), every(len(keys), key_w)  # K, V rows; columns
    label_w = text_width_in([labels[t] for t in ticks] + [keys[t] for t in key_ticks]
                            + [keys[t] for t in column_ticks], font)
    dim_w = min(max(dk * side / n, _MIN_DIM_W), _DIM_SHARE * side)  # a T x d_k panel, inches
    annotate = max(n, steps.n_keys) <= ANNOTATE_TOKENS
    rows = _rows(panels)

    def has_bar(i: int) -> bool:  # the last panel of its colour scale, or of its row
        return i == len(panels) - 1 or panels[i + 1].scale != panels[i].scale or any(
            row[-1] == i for row in rows)

    def named(i: int) -> bool:  # token labels on the rows: first of a row, or K's and V's keys
        return any(row[0] == i for row in rows) or panels[i].row_axis == "key"

    # Per panel (left margin, panel, right margin), inches; a title wider than its panel
    # pushes the next panel away rather than run into its title.
    slots = []
    for i, panel in enumerate(panels):
        w = key_w if panel.square else dim_w
        ticks_w = (_CBAR_TICKS + _CBAR_NAME
                   + (0.2 if isinstance(scales[panel.scale].norm, LogNorm) else 0.0))
        right = (_CBAR_PAD + _CBAR_W + ticks_w if has_bar(i) else 0.0) + _GAP
        slots.append([(label_w if named(i) else 0.0) + _YLABEL_W, w, right])
    overhang = [max(0.0, (_title_width(p.title) - slots[i][1]) / 2) for i, p in enumerate(panels)]
    for row in rows:
        for i, j in zip(row, row[1:]):
            slots[i][2] += max(0.0, overhang[i] + overhang[j] + 0.15 - slots[i][2] - slots[j][0])
    row_widths = [sum(sum(slots[i]) for i in row) - _GAP for row in rows]
    width = max(row_widths) + 2 * _MARGIN
    bottom = label_w + _XLABEL_H  # key labels (rotated) + the axis name
    row_h = _TITLE_H + side + bottom
    top = _SUPTITLE_H + (_SUBTITLE_H * (subtitle.count("\n") + 1) if subtitle else 0.0)
    legend = steps.masked is not None or steps.dropped is not None  # else no legend to draw
    height = top + row_h * len(rows) + (_LEGEND_H if legend else 0.1)
    fig, canvas = images.new_figure(width, height, dpi)

    def box(x: float, y_top: float, w: float, h: float):
        return (x / width, 1 - (y_top + h) / height, w / width, h / height)

    for r, row in enumerate(rows):
        x = _MARGIN + (max(row_widths) - row_widths[r]) / 2  # rows are centred
        y = top + r * row_h + _TITLE_H
        for i in row:
            panel, colour = panels[i], scales[panels[i].scale]
            left, w, right = slots[i]
            x += left
            ax = fig.add_axes(box(x, y, w, side), label=panel.name)
            rows_of = (keys, key_ticks) if panel.row_axis == "key" else (labels, ticks)
            _draw_panel(ax, panel, colour, steps, rows_of[0], rows_of[1] if named(i) else [],
                        rows_of[1], font, cell_pt, annotate, (keys, column_ticks))
            if has_bar(i):
                cax = fig.add_axes(box(x + w + _CBAR_PAD, y, _CBAR_W, side),
                                   label=f"{panel.name} colorbar")
                _colorbar(fig, cax, colour)
            x += w + right

    heading = title or _default_title(steps)
    fig.text(0.5, 1 - 0.2 / height, heading, ha="center", va="top", fontsize=13,
             label="title", parse_math=False)
    if subtitle:
        fig.text(0.5, 1 - (0.2 + _SUPTITLE_H - 0.3) / height, subtitle, ha="center", va="top",
                 fontsize=9.5, color="#444444", label="subtitle", parse_math=False)
    _legend(fig, steps, cmap, height)
    return fig, canvas


def _draw_panel(ax, panel: Panel, colour: ColourScale, steps: HeadSteps, labels: Sequence[str],
                row_ticks: list[int], key_ticks: list[int], font: float, cell_pt: float,
                annotate: bool, columns: tuple) -> None:
    """``labels``/``row_ticks``: the rows' tokens; ``columns``: (labels, ticks) of the keys
    along the square panels' columns."""
    dk = steps.head_dim
    data = np.ma.masked_invalid(panel.data)  # the -inf of the masked scores
    if colour.weights:  # the future, exactly 0, is drawn as masked, as in heatmap
        data = np.ma.masked_where(steps.hidden(), data)
        if isinstance(colour.norm, LogNorm):  # a visible 0 (dropout) is the lowest colour, not masked
            data = np.ma.maximum(data, colours.LOG_FLOOR)
    image = ax.imshow(data, cmap=colour.colormap, norm=colour.norm, aspect="auto",
                      interpolation="nearest")
    colour.image = image
    ax.set_title(panel.title, fontsize=_TITLE_FONT, pad=5, linespacing=1.4)
    ax.set_yticks(key_ticks, [labels[t] for t in row_ticks] if row_ticks else [], fontsize=font)
    ax.set_ylabel(panel.row_axis, fontsize=9, labelpad=2)
    if panel.square:
        column_labels, column_ticks = columns
        ax.set_xticks(column_ticks, [column_labels[t] for t in column_ticks], fontsize=font,
                      rotation=90)
        ax.set_xlabel("key", fontsize=9, labelpad=3)
    else:
        dims = [0, dk - 1] if dk <= 16 else [0, dk // 2, dk - 1]
        dims = list(range(dk)) if dk <= 4 else dims
        ax.set_xticks(sorted(set(dims)), [str(d) for d in sorted(set(dims))], fontsize=7)
        ax.set_xlabel("d_k dimension", fontsize=9, labelpad=3)
    ax.tick_params(length=2, pad=1.5)
    if panel.name == "dropped":
        _mark_dropped(ax, steps, cell_pt)
    if annotate and (panel.square or dk <= ANNOTATE_DIMS):
        _annotate(ax, panel, image, colour.weights, min(9.0, cell_pt / 3.4), steps.hidden())


def _colorbar(fig: Figure, cax, colour: ColourScale) -> None:
    """The bar of one colour scale, naming it: the weights' (√, linear or log) as in
    ``heatmap``, the signed values' linear and symmetric about 0."""
    if colour.weights:
        bar = colours.colorbar(fig, cax, colour.norm, colour.colormap, colour.label)
        bar.ax.yaxis.label.set_fontsize(8)
    else:
        colours.named_colorbar(fig, colour.image, colour.label, "symmetric", label_pt=8,
                               tick_pt=7, cax=cax)


def _title_width(title: str) -> float:
    return text_width_in(title.split("\n"), _TITLE_FONT)


def _default_title(steps: HeadSteps) -> str:
    if steps.kind == "cross":
        return (f"Cross-attention, decoder layer {steps.layer}, head {steps.head}: "
                f"{steps.n_tokens} decoder tokens read {steps.n_keys} source tokens "
                f"(d_k = {steps.head_dim})")
    if steps.kind is not None:
        text = "source" if steps.kind == "encoder" else "decoder"
        return (f"{steps.kind.capitalize()} self-attention, layer {steps.layer}, head "
                f"{steps.head}: how attention turns {steps.n_tokens} {text} token vectors into "
                f"context vectors (d_k = {steps.head_dim})")
    return (f"Layer {steps.layer}, head {steps.head}: how attention turns {steps.n_tokens} token "
            f"vectors into context vectors (d_k = {steps.head_dim})")


def _annotate(ax, panel: Panel, image, weights: bool, size: float, hidden: np.ndarray) -> None:
    """Print each value in its cell, black or white for contrast with the cell colour
    (``hidden``: the masked cells, whose weights are not printed)."""
    rgba = image.to_rgba(image.get_array())  # (T, cols, 4) floats, masked cells included
    rows, cols = panel.data.shape
    for i in range(rows):
        for j in range(cols):
            value = panel.data[i, j]
            if weights and hidden[i, j]:
                continue  # masked: no weight was ever there
            if panel.name == "dropped" and value == 0 and not hidden[i, j]:
                continue  # marked with a cross instead
            r, g, b = rgba[i, j, :3]
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, _cell_text(value, weights), ha="center", va="center", fontsize=size,
                    color="white" if dark else "black", parse_math=False)


def _mark_dropped(ax, steps: HeadSteps, cell_pt: float) -> None:
    """A cross on every visible cell dropout set to 0."""
    visible = ~steps.hidden()
    rows, cols = np.nonzero(visible & (steps.dropped == 0) & (steps.weights > 0))
    ax.scatter(cols, rows, marker="x", s=(0.45 * cell_pt) ** 2, linewidths=max(0.6, cell_pt / 30),
               color="#ff5050", label="dropped")


def _legend(fig: Figure, steps: HeadSteps, cmap: str, height: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    why = ("a key in the future of its query" + (
        f", or {steps.window}+ back: window {steps.window})" if steps.window else ")")
        if steps.causal else f"a key {steps.window}+ away: window ±{steps.window - 1})"
        if steps.window else "")
    handles = [
        Patch(facecolor=_mask_colour(DIVERGING_CMAP), edgecolor="black", linewidth=0.5,
              label=f"masked score: −∞ ({why}"),
        Patch(facecolor=_mask_colour(cmap), edgecolor="black", linewidth=0.5,
              label="masked weight: e^−∞ = 0"),
    ] if steps.masked is not None else []
    if steps.dropped is not None:
        handles.append(Line2D([], [], linestyle="none", marker="x", color="#ff5050",
                              label="dropped by dropout (set to 0)"))
    if steps.masked is not None and handles[0].get_facecolor() == handles[1].get_facecolor():
        handles = [Patch(facecolor=_mask_colour(cmap), edgecolor="black", linewidth=0.5,
                         label=f"masked: score −∞, weight e^−∞ = 0 ({why}"), *handles[2:]]
    if not handles:
        return
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.08 / height))


def render_steps(steps: HeadSteps, token_labels: Sequence[str], fmt: str = "png",
                 cmap: str = "viridis", dpi: int = 100, scale: str = "sqrt",
                 title: str | None = None, subtitle: str | None = None,
                 key_labels: Sequence[str] | None = None) -> bytes:
    """The figure as ``fmt`` (png, svg, pdf or jpg) bytes; the same input gives the same
    bytes. Token labels the main font cannot draw use a CJK font when one is installed."""
    fonts = Fonts([*token_labels, *(key_labels or [])])
    with fonts.context():
        fig, canvas = steps_figure(steps, token_labels, cmap, dpi, scale, title, subtitle, fonts,
                                   key_labels)
        return images.figure_bytes(fig, canvas, fmt)


def save_steps(path: Path, steps: HeadSteps, token_labels: Sequence[str], fmt: str = "png",
               cmap: str = "viridis", dpi: int = 100, scale: str = "sqrt",
               title: str | None = None, subtitle: str | None = None,
               key_labels: Sequence[str] | None = None) -> Path:
    """Write the figure to ``path`` atomically (never a half-written file); returns it."""
    write_bytes(path, render_steps(steps, token_labels, fmt, cmap, dpi, scale, title, subtitle,
                                   key_labels))
    return path
