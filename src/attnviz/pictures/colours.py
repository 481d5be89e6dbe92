"""Weights -> colours: the fixed 0..1 colour scales (sqrt, linear, log), the colormap
with a colour for masked cells that no weight can have in it, a second such colour for
the keys outside a sliding window, and the colorbar.

Weights are probabilities, so every head is drawn on the same scale and heads compare.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, LogNorm, Normalize, PowerNorm, to_rgb
from matplotlib.figure import Figure

from attnviz.core.errors import InputError

SCALES = ("sqrt", "linear", "log")
LOG_FLOOR = 1e-4  # --scale log: weights below this share the lowest colour
# Mask colours in order of preference; the first one far enough (CIELAB distance) from
# every colour of the colormap is used, else the farthest.
_MASK_CANDIDATES = ("#d0d0d0", "#ff66cc", "#00bcd4", "#e41a1c", "#ff9900", "#ffffff", "#000000")
_MASK_MIN_DISTANCE = 25.0
# Keys outside a sliding window: a darker grey than the future's when that is far enough
# from the colormap and from the future's colour, else the first clearly different one.
_OUTSIDE_CANDIDATES = ("#808080", "#ff66cc", "#00bcd4", "#e41a1c", "#ff9900", "#000000", "#804000")


def check_cmap(name: str) -> Colormap:
    """The colormap called ``name``, or an InputError listing the closest names."""
    try:
        return colormaps[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(colormaps), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else " (e.g. viridis, magma, Blues)"
        raise InputError(f"unknown colormap {name!r}{hint}") from None


@dataclass(frozen=True)
class Measure:
    """What the colours of a picture stand for: attention weights on 0..1 (the default),
    or another quantity >= 0 on 0..``top`` (the value-weighted norms of
    ``attnviz.analyses.weighting``), named ``label`` on the colorbar; ``title`` is what each
    picture's title adds (" · value-weighted")."""

    label: str = "attention weight"
    top: float = 1.0
    title: str = ""
    block: int = 1  # each cell is the largest weight of a block x block square (long texts)

    @property
    def decimals(self) -> int:
        """Decimals of a number printed in a cell: 2 for weights, about 3 significant
        digits of ``top`` otherwise."""
        if self.top == 1.0:
            return 2
        return max(0, 2 - int(np.floor(np.log10(self.top))))


WEIGHTS = Measure()


def make_norm(scale: str, top: float = 1.0) -> Normalize:
    """Weights are probabilities: one fixed 0..1 scale for every head, so heads compare.
    ``sqrt`` spreads the small weights of long texts over more of the colormap; ``log``
    spreads them further (LOG_FLOOR..1, smaller weights get the lowest colour). ``top``:
    the scale of another quantity (0..top, LOG_FLOOR·top..top on the log scale)."""
    if scale not in SCALES:
        raise InputError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if scale == "log":
        return LogNorm(LOG_FLOOR * top, top, clip=True)
    return PowerNorm(0.5, vmin=0.0, vmax=top) if scale == "sqrt" else Normalize(0.0, top)


def normalized(norm: Normalize, values: np.ma.MaskedArray) -> np.ma.MaskedArray:
    """``values`` mapped to 0..1 by ``norm``; on the log scale a weight of exactly 0 gets
    the lowest colour (a LogNorm would mask it, making it look like a masked cell)."""
    if isinstance(norm, LogNorm):
        values = np.ma.maximum(values, norm.vmin)
    return norm(values)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0..1 -> CIELAB (..., 3), D65."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def mask_distance(colormap: Colormap, color: str) -> float:
    """CIELAB distance from ``color`` to the nearest of the colormap's 256 colours."""
    shades = _lab(colormap(np.linspace(0.0, 1.0, 256))[:, :3])
    return float(np.linalg.norm(shades - _lab(to_rgb(color)), axis=1).min())


@lru_cache(maxsize=64)
def mask_color(cmap: str) -> str:
    """A colour for masked cells that no weight can have in ``cmap``: neutral grey when
    it is far from every colour of the map, else the first clearly different candidate
    (pink for the greyscale maps), else the farthest."""
    colormap = check_cmap(cmap)
    distances = [mask_distance(colormap, c) for c in _MASK_CANDIDATES]
    for color, distance in zip(_MASK_CANDIDATES, distances):
        if distance >= _MASK_MIN_DISTANCE:
            return color
    return _MASK_CANDIDATES[int(np.argmax(distances))]


@lru_cache(maxsize=64)
def outside_color(cmap: str) -> str:
    """The colour of cells outside a sliding window (a query's keys more than W - 1
    before it): far from every colour of ``cmap`` and from ``mask_color(cmap)``, so the
    two kinds of masked cells and every weight stay apart; else the candidate farthest
    from the nearer of the two."""
    colormap = check_cmap(cmap)
    future = _lab(to_rgb(mask_color(cmap)))
    distances = [min(mask_distance(colormap, c), float(np.linalg.norm(_lab(to_rgb(c)) - future)))
                 for c in _OUTSIDE_CANDIDATES]
    for color, distance in zip(_OUTSIDE_CANDIDATES, distances):
        if distance >= _MASK_MIN_DISTANCE:
            return color
    return _OUTSIDE_CANDIDATES[int(np.argmax(distances))]


def weight_colormap(cmap: str) -> tuple[Colormap, str]:
    """The colormap with masked cells in its mask colour, and that colour."""
    color = mask_color(cmap)
    return check_cmap(cmap).with_extremes(bad=color), color


SCALE_NAMES = {"sqrt": "√ scale", "linear": "linear scale", "log": "log scale"}
SYMMETRIC = "linear, symmetric about 0"  # the diverging maps of signed values
CBAR_LABEL_PT, CBAR_TICK_PT = 9.0, 8.0  # points: a colour bar's name and its ticks


def scale_of(norm: Normalize) -> str:
    """The name of ``norm``'s scale in ``SCALES`` (a PowerNorm of any other exponent, or a
    plain Normalize, is linear only when it is one)."""
    if isinstance(norm, LogNorm):
        return "log"
    if isinstance(norm, PowerNorm):
        return "sqrt" if norm.gamma == 0.5 else "linear"
    return "linear"


def scale_label(label: str, scale: str, bar_in: float | None = None,
                font: float = CBAR_LABEL_PT) -> str:
    """``label`` naming its colour scale (one of ``SCALES``, or a name such as
    ``SYMMETRIC``): "attention weight (√ scale)"; on two lines when a bar ``bar_in``
    inches long would not hold it on one at ``font`` points, and the label's own words on
    as many lines as it takes when it alone is longer than the bar (a pooled map's "largest
    weight of each 8×8 block" beside a grid's short bar: never past the bar's ends, into
    the legend below it)."""
    name = SCALE_NAMES.get(scale, scale)
    # "‖α·f(x)‖ (value-weighted)" -> "‖α·f(x)‖ (value-weighted, √ scale)"
    one_line = f"{label[:-1]}, {name})" if label.endswith(")") else f"{label} ({name})"
    if bar_in is not None:
        from attnviz.pictures.fonts import text_width_in

        room = 0.9 * bar_in  # hinted text at a low dpi is wider
        if text_width_in([one_line], font) > room:
            lines = [""]
            for word in label.split(" "):
                joined = f"{lines[-1]} {word}".strip()
                if lines[-1] and text_width_in([joined], font) > room:
                    lines.append(word)
                else:
                    lines[-1] = joined
            return "\n".join([*lines, name])
    return one_line


def colorbar(fig: Figure, cax, norm: Normalize, colormap: Colormap, label: str = "attention weight"):
    """A colorbar for weights in 0..1 (or 0..``norm.vmax``), with ticks where the eye
    needs them on each scale, no two so close that their labels touch, and the scale
    named after ``label``."""
    from matplotlib.cm import ScalarMappable

    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), cax=cax)
    top = float(norm.vmax)
    bar_in = cax.get_position().height * fig.get_figheight()
    if isinstance(norm, LogNorm):
        ticks = [LOG_FLOOR * top, 1e-3 * top, 1e-2 * top, 0.1 * top, top]
        labels = ["≤" + _tick(ticks[0])] + [_tick(t) for t in ticks[1:]]
        if top == 1.0:
            labels = [f"≤{LOG_FLOOR:g}", "0.001", "0.01", "0.1", "1"]
    elif isinstance(norm, PowerNorm):
        ticks = ([0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1] if top == 1.0
                 else scaled_ticks(top, short=bar_in < 2.0))
        labels = [f"{t:.2f}" for t in ticks] if top == 1.0 else [_tick(t) for t in ticks]
    else:
        ticks = [float(t) for t in cbar.get_ticks() if norm.vmin <= t <= top]
        labels = [f"{t:.1f}" for t in ticks] if top == 1.0 else [_tick(t) for t in ticks]
    kept = spaced_ticks(ticks, norm, bar_in, CBAR_TICK_PT)
    cbar.set_ticks([ticks[k] for k in kept], labels=[labels[k] for k in kept])
    cbar.minorticks_off()
    cbar.set_label(scale_label(label, scale_of(norm), bar_in), fontsize=CBAR_LABEL_PT)
    cbar.ax.tick_params(labelsize=CBAR_TICK_PT)
    return cbar


def named_colorbar(fig: Figure, mappable, label: str, scale: str = "linear",
                   label_pt: float = CBAR_LABEL_PT, tick_pt: float = CBAR_TICK_PT, **where):
    """``fig.colorbar(mappable, **where)`` (``cax=`` or ``ax=``) of a quantity other than the
    weights (scores, logits, divergences), named ``label`` with its scale: ``scale`` is one
    of ``SCALES`` or "symmetric" (a diverging map centred on 0, ``SYMMETRIC``)."""
    cbar = fig.colorbar(mappable, **where)
    name = SYMMETRIC if scale == "symmetric" else SCALE_NAMES[scale]
    horizontal = cbar.orientation == "horizontal"
    box = cbar.ax.get_position()
    # a vertical name fits the bar; a horizontal one may run past its ends, not the figure's
    bar_in = fig.get_figwidth() - 0.2 if horizontal else box.height * fig.get_figheight()
    cbar.set_label(scale_label(label, name, bar_in, label_pt), fontsize=label_pt)
    cbar.ax.tick_params(labelsize=tick_pt)
    return cbar


def spaced_ticks(ticks: list[float], norm: Normalize, bar_in: float, font: float) -> list[int]:
    """The indices of ``ticks`` to keep on a bar ``bar_in`` inches long so that no two
    labels of ``font`` points are closer than 1.75 lines: both ends always, and from the top
    down every tick far enough from the last kept and from the bottom."""
    if len(ticks) <= 2:
        return list(range(len(ticks)))
    gap = font * 1.75 / 72 / max(bar_in, 1e-6)  # in fractions of the bar
    where = [float(normalized(norm, np.ma.masked_array([t]))[0]) for t in ticks]
    kept = [len(ticks) - 1]
    for k in range(len(ticks) - 2, 0, -1):
        if where[kept[-1]] - where[k] >= gap and where[k] - where[0] >= gap:
            kept.append(k)
    return sorted([0, *kept])


def scaled_ticks(top: float, short: bool = False) -> list[float]:
    """Round ticks for a square-root colorbar of 0..``top``: round steps over the whole
    range, and two round small values where the square root stretches the bar (one on a
    ``short`` bar, where the labels of both would touch)."""
    from matplotlib.ticker import MaxNLocator

    linear = [float(t) for t in MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(0, top)
              if 0 <= t <= top * (1 + 1e-9)]
    small = [float(f"{top * f:.1g}") for f in ((0.05,) if short else (0.01, 0.05))]
    # the top itself, and no other tick so close below it that the labels would touch
    linear = [t for t in linear if (t / top) ** 0.5 < 0.95]
    return sorted({round(t, 12) for t in [0.0, *small, *linear, top]})


def _tick(value: float) -> str:
    """A colorbar tick of a scale other than 0..1: three significant digits at most."""
    return f"{float(f'{value:.3g}'):g}"
