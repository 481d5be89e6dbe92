"""Model families in words, for the pictures' titles and legends.

A layer with a sliding window (``AttentionResult.windows``) has its keys outside the window
masked in a second colour (``colours.outside_color``) and says "window W" in its titles
(``window_note``); the legend names that colour (``outside_label``, and the room its name
needs beside the swatch: ``legend_width_in``). Grouped-query heads
(``AttentionResult.kv_heads``) name their key/value head ("head 5 · kv 1", ``head_extras``),
and the overview lays each kv group out together under a shared label (``kv_groups``). A
plain result (no window, no groups) adds no words.
"""

from __future__ import annotations

from collections.abc import Sequence

from attnviz.analyses.attention import AttentionResult
from attnviz.pictures.fonts import text_width_in

LEGEND_FONT = 7.0  # points: the names beside the mask swatches


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def window_note(window: int | None, n_tokens: int, causal: bool = True) -> str:
    """How a title names a sliding window: "window 4"; "window 4096 ≥ 18 tokens" when it
    covers the whole picture (no key is outside it: the cells look causal, the title
    says why); "" without a window. ``causal=False`` (an encoder's local layer, keys
    ``|j - i| < W``): "window ±3" (W - 1 keys on either side)."""
    if window is None:
        return ""
    name = f"window {window}" if causal else f"window ±{window - 1}"
    if window >= n_tokens:
        return f"{name} ≥ {plural(n_tokens, 'token')}"
    return name


def cell_window(window: int | None, block: int = 1) -> int | None:
    """A sliding window of ``window`` keys in the cells of a map pooled by ``block``
    (``AttentionResult.block``): block (I, J) lies wholly outside the window when every query
    of row-block I is ``window`` or more past every key of J, ``(I - J) b >= window + b - 1``."""
    if window is None or block == 1:
        return window
    return -(-(window + block - 1) // block)


def head_extras(result: AttentionResult, layer_index: int, head: int) -> str:
    """What a head's title adds for the model families: " · kv 1" when heads share
    key/value heads, " · window 4" when the layer has a sliding window; "" otherwise."""
    parts = [f"kv {result.kv_heads[head]}"] if result.grouped else []
    note = window_note(result.layer_window(layer_index), result.length, result.causal)
    return "".join(f" · {part}" for part in [*parts, *([note] if note else [])])


def outside_label(windows: Sequence[int | None], n_tokens: int) -> str | None:
    """The legend's name for the second mask colour when some key of a ``n_tokens``
    picture is outside one of ``windows``: "outside\nwindow 4" ("outside\nthe window"
    when the layers' windows differ: their titles say which); None when none is."""
    cut = sorted({w for w in windows if w is not None and w < n_tokens})
    if not cut:
        return None
    return f"outside\nwindow {cut[0]}" if len(cut) == 1 else "outside\nthe window"


def legend_width_in(label: str | None) -> float:
    return text_width_in(label.split("\n"), LEGEND_FONT) if label else 0.0


def kv_groups(kv_heads: Sequence[int]) -> list[tuple[int, list[int]]]:
    """``[(kv head, [its query heads])]`` in kv order."""
    members: dict[int, list[int]] = {}
    for head, kv in enumerate(kv_heads):
        members.setdefault(kv, []).append(head)
    return sorted(members.items())
