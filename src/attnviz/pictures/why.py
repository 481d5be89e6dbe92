"""Pictures of ``attnviz why``: the (query component × key component) contributions to one
score, grouped by layer, and the key-side totals of every component at every key the query
sees (the K-composition picture). Both on a diverging colormap centred on 0, whose colour
bar names the scale."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.files.fileio import write_bytes
from attnviz.pictures.attribution import DIVERGING
from attnviz.pictures.colours import check_cmap, named_colorbar
from attnviz.pictures.fonts import Fonts, text_width_in
from attnviz.pictures.images import check_image_size, figure_bytes, new_figure

SCALE_LABEL = "contribution to the score"  # on a linear scale symmetric about 0
_LAYER = re.compile(r"(?:L|mlp|bias\.x?out|bias\.ln_(?:attn|cross|mlp))(\d+)")
_NAMED = 48  # up to this many components, every one is named on the axes


def component_groups(names: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs of ``names`` that belong together: ``(label, first, stop)``: the
    embeddings (``embed``, ``pos``, ``type``, ``bias.ln_emb``), each earlier layer (its
    heads, output biases, MLP and post-norm biases: ``L3``), and the explained layer's own
    biases (``bias``); an encoder's components on cross-attention's key side: ``enc.L3``."""
    groups: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        encoder = name.startswith("enc.")  # cross-attention's keys: the encoder's components
        own = re.sub(r"\.[HX]\d+$", "", name[4:] if encoder else name)  # L3.H7, L3.X7: L3
        found = _LAYER.fullmatch(own)  # bias.norm5, bias.proj5: no match
        label = f"L{found.group(1)}" if found else (
            "emb" if own in ("embed", "pos", "type", "bias.ln_emb") else "bias")
        label = "enc." + label if encoder else label
        if groups and groups[-1][0] == label and groups[-1][2] == i:
            groups[-1] = (label, groups[-1][1], i + 1)
        else:
            groups.append((label, i, i + 1))
    return groups


def _ticks(ax, axis: str, names: Sequence[str], cell: float) -> None:
    """Every component named when there are few; else each group, at its middle."""
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    if len(names) <= _NAMED:
        setter(range(len(names)), list(names), fontsize=7, **({"rotation": 90} if axis == "x" else {}))
        return
    groups = component_groups(names)
    room = max(1, math.ceil(0.16 / (cell * max(1.0, np.median([b - a for _, a, b in groups])))))
    shown = groups[::room]
    setter([(a + b - 1) / 2 for _, a, b in shown], [label for label, _, _ in shown], fontsize=7,
           **({"rotation": 90} if axis == "x" else {}))


def _separators(ax, names: Sequence[str], rows: bool = True, columns: bool = True) -> None:
    for _, first, _ in component_groups(names)[1:]:
        if rows:
            ax.axhline(first - 0.5, color="#888888", linewidth=0.4)
        if columns:
            ax.axvline(first - 0.5, color="#888888", linewidth=0.4)


def _colorbar(fig, image, cax, label: str) -> None:
    named_colorbar(fig, image, label, "symmetric", label_pt=8, tick_pt=7, cax=cax)


def matrix_bytes(matrix: np.ndarray, names: Sequence[str], title: str, dpi: int = 100,
                 fmt: str = "png", key_names: Sequence[str] | None = None) -> bytes:
    """``matrix (C_q, C_k)``: query components (``names``) down, key components
    (``key_names``, default the same) across, grouped by layer."""
    key_names = names if key_names is None else key_names
    n, m = len(names), len(key_names)
    cell = min(0.3, max(0.04, 9.0 / max(n, m, 1)))
    left = (text_width_in(list(names), 7) if n <= _NAMED else 0.35) + 0.35
    labels_in = (text_width_in(list(key_names), 7) if m <= _NAMED else 0.35) + 0.35
    fonts = Fonts([title])
    with fonts.context():
        title_in = text_width_in([title], 10) + 0.4
    grid, grid_w = n * cell, m * cell
    width = max(left + grid_w + 1.4, title_in)
    height = 0.6 + grid + labels_in
    check_image_size(width, height, dpi)
    fig, canvas = new_figure(width, height, dpi)
    top = float(np.abs(matrix).max()) or 1.0
    with fonts.context():
        ax = fig.add_axes((left / width, labels_in / height, grid_w / width, grid / height))
        image = ax.imshow(matrix, cmap=check_cmap(DIVERGING), vmin=-top, vmax=top,
                          interpolation="nearest", aspect="auto")
        _ticks(ax, "x", key_names, cell)
        _ticks(ax, "y", names, cell)
        ax.xaxis.set_label_position("bottom")
        ax.set_xlabel("key-side component", fontsize=8)
        ax.set_ylabel("query-side component", fontsize=8)
        _separators(ax, names, columns=False)
        _separators(ax, key_names, rows=False)
        fig.text(0.5, 1 - 0.2 / height, title, fontsize=10, ha="center", va="top")
        cax = fig.add_axes(((left + grid_w + 0.25) / width, labels_in / height, 0.15 / width,
                            grid / height))
        _colorbar(fig, image, cax, SCALE_LABEL)
        return figure_bytes(fig, canvas, fmt)


def keys_bytes(totals: np.ndarray, names: Sequence[str], key_labels: Sequence[str],
               keys: Sequence[int], key: int, weights: np.ndarray, title: str,
               dpi: int = 100, fmt: str = "png") -> bytes:
    """``totals (C, K)``: each component's key-side total at each of ``keys`` (columns, the
    explained ``key`` marked), under a strip of the head's weights over those keys."""
    n, k = totals.shape
    cell_h = min(0.3, max(0.04, 9.0 / max(n, 1)))
    cell_w = min(0.3, max(0.02, 12.0 / max(k, 1)))
    labelled = cell_w >= 0.12
    bottom = 0.35 + (text_width_in(list(key_labels), 7) if labelled else 0.3)
    left = (text_width_in(list(names), 7) if n <= _NAMED else 0.35) + 0.4
    fonts = Fonts([title, *key_labels])
    with fonts.context():
        title_in = text_width_in([title], 10) + 0.4
    strip = 0.25
    width = max(left + k * cell_w + 1.5, title_in)
    height = bottom + n * cell_h + 0.12 + strip + 0.6
    check_image_size(width, height, dpi)
    fig, canvas = new_figure(width, height, dpi)
    top = float(np.abs(totals).max()) or 1.0
    column = list(keys).index(key)
    with fonts.context():
        ax = fig.add_axes((left / width, bottom / height, k * cell_w / width, n * cell_h / height))
        image = ax.imshow(totals, cmap=check_cmap(DIVERGING), vmin=-top, vmax=top,
                          interpolation="nearest", aspect="auto")
        _ticks(ax, "y", names, cell_h)
        _separators(ax, names, columns=False)
        if labelled:
            ax.set_xticks(range(k), [f"{j} {fonts.label(t)}" for j, t in zip(keys, key_labels)],
                          rotation=90, fontsize=7)
        else:
            step = max(1, math.ceil(k / 12))
            ax.set_xticks(range(0, k, step), [str(j) for j in list(keys)[::step]], fontsize=7)
            ax.set_xlabel("key position", fontsize=8)
        ax.set_ylabel("key-side component", fontsize=8)
        ax.axvline(column - 0.5, color="black", linewidth=0.8)
        ax.axvline(column + 0.5, color="black", linewidth=0.8)
        strip_ax = fig.add_axes((left / width, (bottom + n * cell_h + 0.12) / height,
                                 k * cell_w / width, strip / height))
        strip_image = strip_ax.imshow(np.asarray(weights, dtype=np.float64)[None], cmap="viridis",
                                      vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        strip_ax.set_xticks([])
        strip_ax.set_yticks([0], ["weight"], fontsize=7)
        fig.text(0.5, 1 - 0.2 / height, title, fontsize=10, ha="center", va="top")
        cax = fig.add_axes(((left + k * cell_w + 0.25) / width, bottom / height, 0.15 / width,
                            n * cell_h / height))
        _colorbar(fig, image, cax, "key-side total")
        wax = fig.add_axes(((left + k * cell_w + 0.25) / width,
                            (bottom + n * cell_h + 0.12) / height, 0.15 / width, strip / height))
        wbar = named_colorbar(fig, strip_image, "attention weight", label_pt=7, tick_pt=7, cax=wax,
                              ticks=[0, 1])
        wbar.ax.yaxis.label.set_rotation(0)  # beside a strip too short for upright text
        wbar.ax.yaxis.label.set_horizontalalignment("left")
        return figure_bytes(fig, canvas, fmt)


def write_why_pictures(out: Path, matrix: np.ndarray, totals: np.ndarray, names: Sequence[str],
                       key_labels: Sequence[str], keys: Sequence[int], key: int,
                       weights: np.ndarray, head_name: str, dpi: int = 100,
                       fmt: str = "png", key_names: Sequence[str] | None = None) -> list[Path]:
    """``contributions`` (the matrix of one score) and ``keys`` (the key-side totals at
    every key) in ``out`` (created); ``head_name`` says which head, query and key.
    ``key_names``: the key side's components when they are not ``names`` (cross)."""
    key_names = names if key_names is None else key_names
    matrix_title = f"Why {head_name}: contributions to the score"
    keys_title = f"Why {head_name.split(' -> ')[0]}: key-side totals at each key"
    pictures = [(out / f"contributions.{fmt}", lambda: matrix_bytes(matrix, names, matrix_title,
                                                                     dpi, fmt, key_names)),
                (out / f"keys.{fmt}", lambda: keys_bytes(totals, key_names, key_labels, keys, key,
                                                         weights, keys_title, dpi, fmt))]
    drawn = [(path, draw()) for path, draw in pictures]  # both drawn before either is written
    out.mkdir(parents=True, exist_ok=True)
    for path, data in drawn:
        write_bytes(path, data)
    return [path for path, _ in drawn]
