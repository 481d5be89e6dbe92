"""Pictures of a long text's statistics (``attnviz.analyses.longcontext.LongResult``): per
layer, where each head's attention goes by distance (log-log) and which positions receive
it (the sinks, and the spikes of far look-ups). An encoder's rows look both ways: its
distances are drawn signed, key − query, on a symmetric log axis (keys behind the query to
the left, ahead to the right). See docs/long-context.md."""

from __future__ import annotations

import numpy as np

from attnviz.analyses.longcontext import LongResult
from attnviz.core.words import counted
from attnviz.pictures.families import window_note
from attnviz.pictures.images import figure_bytes, new_figure

PALETTE = "tab20"  # one colour per head, 20 before they repeat


def stats_figure(result: LongResult, layer_index: int, dpi: int = 100, fmt: str = "png",
                 heads: list[int] | None = None) -> bytes:
    """One layer's two panels: attention mass by distance (mean per query, log-log) and
    the attention each position receives (summed over queries), a line per head."""
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter

    arrays = result.arrays
    n, layer = result.n_tokens, result.layers[layer_index]
    heads = heads if heads is not None else list(range(result.n_heads))
    fig, canvas = new_figure(13.0, 4.6, dpi)
    left, right = fig.subplots(1, 2, gridspec_kw={"wspace": 0.25})
    fig.subplots_adjust(left=0.06, right=0.80, top=0.86, bottom=0.13)
    colours = colormaps[PALETTE]
    distance = np.arange(1, n)  # δ = 0 cannot sit on a log axis: its mass is in the legend
    sinks = result.sink_mass[layer_index]
    queries = n - np.arange(n)  # the queries with a key at each distance
    for k, h in enumerate(heads):
        colour = colours(k % 20)
        per_query = arrays["distance"][layer_index, h] / queries  # mean over queries
        label = f"head {h} · self {per_query[0]:.2f} · sinks {sinks[h]:.2f}"
        if result.causal:
            left.plot(distance, np.maximum(per_query[1:], 1e-12), lw=0.9, color=colour,
                      label=label)
        else:  # key - query from -(T - 1) to T - 1: behind, the query itself, ahead
            ahead = arrays["ahead"][layer_index, h] / queries
            signed = np.concatenate([per_query[:0:-1], per_query[:1], ahead[1:]])
            left.plot(np.arange(1 - n, n), np.maximum(signed, 1e-12), lw=0.9, color=colour,
                      label=label)
        right.plot(np.arange(n), arrays["received"][layer_index, h], lw=0.7, color=colour)
    if result.causal:
        left.set(xscale="log", yscale="log", ylim=(1e-8, 1.5), xlim=(1, max(2, n - 1)))
        left.set_xlabel("distance back from the query (tokens)", fontsize=9)
    else:
        left.set_xscale("symlog", linthresh=1, linscale=0.5)
        left.set(yscale="log", ylim=(1e-8, 1.5), xlim=(1 - n, n - 1))
        left.axvline(0, lw=0.6, color="#888888")
        left.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}".replace("-", "−")))
        left.set_xlabel("key − query (tokens): ← behind · ahead →", fontsize=9)
    left.set_ylabel("mean weight at that distance", fontsize=9)
    left.set_title("How far the heads look", fontsize=10)
    right.set(yscale="log", xlim=(-0.015 * n, n - 1))  # the sinks at 0 off the frame's edge
    right.set_xlabel("key position", fontsize=9)
    right.set_ylabel("attention received (sum over queries)", fontsize=9)
    right.set_title(f"Which positions receive attention (first {result.sink_tokens}: sinks)",
                    fontsize=10)
    right.axvspan(-0.5, result.sink_tokens - 0.5, color="#f4c7c3", alpha=0.6, lw=0)
    for ax in (left, right):
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", lw=0.3, color="#cccccc")
    fig.legend(*left.get_legend_handles_labels(), loc="center right", fontsize=7,
               frameon=False, ncols=1 if len(heads) <= 24 else 2)
    window = result.windows[layer_index] if layer_index < len(result.windows) else None
    note = f" · {window_note(window, n, result.causal)}" if window is not None and window < n else ""
    fig.suptitle(f"Layer {layer}, {counted(result.n_heads, 'head')}, {n:,} tokens{note}", fontsize=11)
    return figure_bytes(fig, canvas, fmt)
