"""The lines view: bertviz's head view as a static picture.

The tokens stand in two columns, queries on the left and keys on the right; a line joins
query ``i`` to key ``j`` with an opacity equal to the weight ``A[i, j]`` (a weight of 1.0
is an opaque line, a masked pair has none). Several heads on one picture get one colour
each. Readable up to LINES_MAX_TOKENS tokens; longer texts are refused (a window of the
text, ``--tokens A:B``, can be drawn instead). A layer with a sliding window has no line
to the keys outside it either (masked, as the future), and the picture says so under its
title (``window_line_note``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np

from attnviz.core.errors import InputError
from attnviz.files.fileio import write_bytes
from attnviz.pictures.cells import masked
from attnviz.pictures.fonts import Fonts, text_width_in
from attnviz.pictures.images import encode_raster, new_figure, vector_bytes

LINES_MAX_TOKENS = 64
HEAD_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
               "#17becf", "#bcbd22", "#7f7f7f")  # matplotlib's tab10, reordered: blue, red first
MIN_WEIGHT = 0.005  # lighter lines are invisible anyway; leaving them out keeps files small
_PITCH_IN = 0.2  # vertical distance between tokens
_LABEL_FONT = 9.0


def check_lines(n_tokens: int) -> None:
    if n_tokens > LINES_MAX_TOKENS:
        raise InputError(f"--view lines draws at most {LINES_MAX_TOKENS} tokens and this text has "
                         f"{n_tokens}: pick a window with --tokens A:B (e.g. --tokens 0:{LINES_MAX_TOKENS}) "
                         "or use --view heatmap")


def head_color(head: int) -> str:
    return HEAD_COLORS[head % len(HEAD_COLORS)]


def window_line_note(window: int | None, n_tokens: int) -> str:
    """The line under the title when a sliding window of ``window`` keys leaves keys of a
    ``n_tokens`` picture out: which pairs have no line although they are in the past."""
    if window is None or window >= n_tokens:
        return ""
    return f"no line to keys outside window {window} (j ≤ i − {window})"


class LinesFigure:
    """One picture per call of ``save``: every query joined to its keys, for one or more
    heads (``(T, T)`` arrays or masked arrays) drawn over each other."""

    def __init__(self, token_labels: Sequence[str], dpi: int = 100, extra_texts: Sequence[str] = ()):
        n = self.n_tokens = len(token_labels)
        check_lines(n)
        self.dpi = dpi
        self.fonts = Fonts([*token_labels, *extra_texts])
        with self.fonts.context():
            labels = [self.fonts.label(lbl) for lbl in token_labels]
            label_in = text_width_in(labels, _LABEL_FONT) + 0.15
            span_in, top, bottom = 2.6, 0.8, 0.35
            width = 2 * (label_in + 0.3) + span_in
            height = top + max(n, 3) * _PITCH_IN + bottom
            self.fig, self.canvas = new_figure(width, height, dpi)
            ax = self.ax = self.fig.add_axes(((label_in + 0.3) / width, bottom / height,
                                              span_in / width, max(n, 3) * _PITCH_IN / height))
            ax.set_xlim(0, 1)
            ax.set_ylim(max(n, 3) - 0.5, -0.5)
            ax.set_axis_off()
            for i, label in enumerate(labels):
                ax.text(-0.03, i, label, ha="right", va="center", fontsize=_LABEL_FONT, parse_math=False)
                ax.text(1.03, i, label, ha="left", va="center", fontsize=_LABEL_FONT, parse_math=False)
            ax.text(-0.03, -1.0, "query", ha="right", va="bottom", fontsize=9, style="italic")
            ax.text(1.03, -1.0, "key", ha="left", va="bottom", fontsize=9, style="italic")
            self.title = self.fig.suptitle("", fontsize=11, y=1 - 0.12 / height)
        self.note = None  # the window's line under the title, made when first needed
        self.pending: list[Future] = []
        self._artists: list = []

    def point(self, side: str, token: int) -> tuple[float, float]:
        """Display coordinates (pixels, origin bottom left) of a line's end at ``token``
        in the query (``"query"``) or key column."""
        return tuple(self.ax.transData.transform((0.0 if side == "query" else 1.0, token)))

    def _draw(self, panels: Sequence[np.ndarray], title: str, heads: Sequence[int],
              head_names: Sequence[str] | None = None, note: str = "") -> None:
        from matplotlib.collections import LineCollection
        from matplotlib.colors import to_rgb
        from matplotlib.lines import Line2D

        for artist in self._artists:
            artist.remove()
        self._artists = []
        segments, colors, weights = [], [], []
        for weights_of_head, head in zip(panels, heads):
            values = masked(weights_of_head)
            shown = ~np.ma.getmaskarray(values) & (np.ma.getdata(values) >= MIN_WEIGHT)
            rgb = to_rgb(head_color(head))
            for i, j in zip(*np.nonzero(shown)):
                w = float(values[i, j])
                segments.append(((0.0, i), (1.0, j)))
                colors.append((*rgb, min(w, 1.0)))
                weights.append(w)
        order = np.argsort(weights, kind="stable")  # the strongest lines on top
        lines = LineCollection([segments[k] for k in order], colors=[colors[k] for k in order],
                               linewidths=2.0, capstyle="round")
        self.ax.add_collection(lines)
        self._artists.append(lines)
        if len(heads) > 1:
            handles = [Line2D([], [], color=head_color(h), linewidth=2.5) for h in heads]
            names = list(head_names) if head_names else [f"head {h}" for h in heads]
            legend = self.fig.legend(handles, names, loc="lower center",
                                     ncols=min(len(heads), 6), fontsize=8, frameon=False,
                                     bbox_to_anchor=(0.5, 0.0))
            self._artists.append(legend)
        self.title.set_text(title)
        if note and self.note is None:
            height = self.fig.get_figheight()
            self.note = self.fig.text(0.5, 1 - 0.36 / height, "", ha="center", va="top",
                                      fontsize=8, color="#444444")
        if self.note is not None:
            self.note.set_text(note)

    def to_bytes(self, panels: Sequence[np.ndarray], title: str, heads: Sequence[int],
                 fmt: str = "png", head_names: Sequence[str] | None = None, note: str = "") -> bytes:
        with self.fonts.context():
            self._draw(panels, title, heads, head_names, note)
            if fmt in ("svg", "pdf"):
                return vector_bytes(self.fig, fmt)
            self.canvas.draw()
            return encode_raster(np.asarray(self.canvas.buffer_rgba()), fmt, self.dpi)

    def render(self, panels: Sequence[np.ndarray], title: str, heads: Sequence[int],
               head_names: Sequence[str] | None = None, note: str = "") -> np.ndarray:
        """The picture as ``(H, W, 4)`` pixels."""
        with self.fonts.context():
            self._draw(panels, title, heads, head_names, note)
            self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())

    def save(self, path: Path, panels: Sequence[np.ndarray], titles: Sequence[str],
             writer: Executor | None = None, fmt: str = "png",
             heads: Sequence[int] | None = None, head_names: Sequence[str] | None = None,
             note: str = "") -> Path:
        """Write one picture of ``panels`` (one title: ``titles[0]``); ``heads`` names
        them for their colours (default 0, 1, ...), ``head_names`` in the legend (default
        "head 5"); ``note`` is a line under the title (see ``window_line_note``)."""
        heads = list(heads) if heads is not None else list(range(len(panels)))
        write_bytes(path, self.to_bytes(panels, titles[0], heads, fmt, head_names, note))
        return path
