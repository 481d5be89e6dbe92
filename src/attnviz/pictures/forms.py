"""How the heads of one result are drawn, by its kind of attention
(``AttentionResult.attention``): which cells are masked, what the legend calls them, and
which rows the panels have.

- causal self-attention (``"decoder"``): the future masked, a sliding window's outside in a
  second colour (``cells.masked``) — every picture as attnviz always drew it;
- an encoder's self-attention (``"encoder"``): nothing masked (``cells.unmasked``), or with
  a window on both sides the keys outside it, named "outside window ±W" in the legend; no
  legend swatch when nothing is masked;
- cross-attention (``"cross"``): ``(Tq, Tk)`` panels, the queries' tokens down the side and
  the other text's along the top (``PanelRows``);
- a sentence pair (``AttentionResult.pair_boundary``): a line before the second sentence's
  row and column, its labels coloured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnviz.analyses.attention import AttentionResult
from attnviz.pictures.cells import exclude_first, masked, unmasked
from attnviz.pictures.families import outside_label
from attnviz.pictures.heatmap import PanelRows, pair_rows

CROSS_AXES = ("query token (row)", "key token of the other text (column)")
SEQ2SEQ_AXES = ("decoder token (row)", "source token (column)")  # an encoder–decoder's cross
WRITTEN_AXES = ("token written (row)", "source token (column)")  # ... while it generates


@dataclass(frozen=True)
class Form:
    """The drawing of ``result``'s heads (see the module docstring). ``view(weights,
    window)`` is a head's panel as the pictures take it; ``windows(ws)`` the windows to
    hand them (None where the panel carries its own mask); ``columns`` the key labels,
    ``rows`` the panels' rows (None: square, the columns' own queries)."""

    causal: bool
    exclude_first_key: bool
    columns: list[str]
    rows: PanelRows | None
    n_tokens: int  # the longer side: what a window is compared with

    @classmethod
    def of(cls, result: AttentionResult, exclude_first_key: bool = False) -> Form:
        if result.cross:
            axes = CROSS_AXES
            if result.config.get("architecture") == "encoder-decoder":
                axes = WRITTEN_AXES if result.config.get("generated") else SEQ2SEQ_AXES
            rows = PanelRows(result.token_labels, axis_labels=axes)
        else:
            rows = pair_rows(result.token_labels, result.pair_boundary)
        return cls(result.causal, exclude_first_key, result.key_labels, rows,
                   max(result.length, result.n_keys))

    def view(self, weights: np.ndarray, window: int | None) -> np.ma.MaskedArray:
        """One head's ``(Tq, Tk)`` panel: masked (and renormalised without key 0)."""
        if self.causal:
            return (exclude_first if self.exclude_first_key else masked)(weights, window)
        panel = unmasked(weights, window)
        return exclude_first(panel, causal=False) if self.exclude_first_key else panel

    def windows(self, windows):
        """The windows the pictures are given: the layers' own for causal attention; None
        otherwise (the panels carry their masks: ``view``)."""
        return list(windows) if self.causal else [None] * len(windows)

    def mask_label(self, windows) -> str | None:
        """The legend's name for the masked cells (None: nothing is masked)."""
        if self.causal:
            return "masked /\nexcluded" if self.exclude_first_key else "masked\n(future)"
        outside = outside_label([w for w in windows if w is not None], self.n_tokens)
        if outside is not None:
            cut = sorted({w for w in windows if w is not None and w < self.n_tokens})
            outside = f"outside\nwindow ±{cut[0] - 1}" if len(cut) == 1 else outside
        if self.exclude_first_key:
            return "key 0 excluded" if outside is None else outside + " /\nexcluded"
        return outside

    def grid_mask_label(self, windows) -> str | None:
        """``mask_label`` as the grids name it ("masked" for causal attention)."""
        return "masked" if self.causal else self.mask_label(windows)
