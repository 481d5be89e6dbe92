"""The attention rows of generated tokens -> pictures: per layer × head a heatmap whose
rows are the generated tokens and whose columns are every token (prompt and generated),
an overview of a layer's heads and one of the whole model, laid out like
``plot.write_heatmaps`` (``head_MM.png``, ``heads.png``, ``layer_NN/…``, ``model.png``).

Row ``g`` (labelled with generated token ``g``) is what the head looked at when the model
wrote that token: the query at position ``P + g - 1`` over keys ``0 .. P + g - 1``
(``generation.GenerationResult.rows``; ``P`` = prompt length). The keys after it — token
``g`` itself and everything written later — were not written yet and are drawn masked, like
the causal future of a heatmap; keys outside a sliding window in the window's colour. A
white line between two columns of pixels of their own (it covers no cell) marks the
boundary between the prompt's columns and the generated ones, and the generated tokens'
labels are coloured (``heatmap.PanelRows``). The rows are drawn as computed: every visible
row sums to 1 over its keys, and pooled pixels show the block maximum as everywhere else.

``tokens="A:B"`` is a window of positions of the whole sequence, as ``heatmap --tokens``:
the columns are keys ``A .. B-1`` and the rows the generated tokens among those positions
(negative numbers count from the end: ``"-40:"`` is the last 40 tokens). Rows keep the
weights the model gave, so they sum to less than 1 when keys before ``A`` are cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnviz.analyses.attention import parse_window
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.files.fileio import write_bytes
from attnviz.pictures.cells import exclude_first
from attnviz.pictures.checks import IMAGE_FORMATS, check_title
from attnviz.pictures.families import head_extras, outside_label, plural, window_note
from attnviz.pictures.fonts import Fonts, text_width_in
from attnviz.pictures.grid import (
    grid_layout,
    heads_overview,
    model_grid_names,
    overview_plan,
    overview_tiles,
    save_grid,
)
from attnviz.pictures.heatmap import HeatmapFigure, PanelRows, layout
from attnviz.pictures.images import check_image_size
from attnviz.pictures.plot import ENCODERS, WrittenFile, plan_folder, throttle

_TITLE_FONT = 11.0  # points: heatmap.HeatmapFigure's titles


@dataclass
class GenerationView:
    """The part of the generated rows a picture shows (``generation_view``)."""

    rows: np.ndarray  # (L, H, R, C): generated rows first_step.., keys start..stop-1
    row_labels: list[str]  # the R generated tokens shown
    col_labels: list[str]  # the C tokens of the columns
    prompt_length: int  # P
    n_generated: int  # N, all of them (the rows shown may be fewer)
    first_step: int  # the generated token of row 0
    start: int  # the position of column 0
    stop: int  # one past the position of the last column
    cut: bool  # a window (tokens="A:B") was asked for

    @property
    def offset(self) -> int:
        """Row ``r`` is the query at column ``r + offset`` (see ``cells.masked``)."""
        return self.prompt_length + self.first_step - 1 - self.start

    @property
    def marked_from(self) -> int:
        """The first column of the generated tokens (0 when every column is one)."""
        return max(self.prompt_length - self.start, 0)

    def panel_rows(self) -> PanelRows:
        return PanelRows(self.row_labels, self.offset, self.marked_from,
                         ("generated token (row)", "token (column)"))

    def describe(self) -> str:
        """'generated rows (30 tokens after a 12-token prompt)', and the window's positions."""
        text = (f"generated rows ({plural(self.n_generated, 'token')} after "
                f"{_article(self.prompt_length)} {self.prompt_length}-token prompt)")
        if self.cut:
            text += f" · tokens {self.start}–{self.stop - 1}"
        return text


def generation_view(result, token_labels: Sequence[str], tokens: str | None = None
                    ) -> GenerationView:
    """The rows and labels of ``result`` (``generation.GenerationResult``) a picture shows:
    all of them, or the window ``tokens="A:B"`` of positions of the whole sequence (the
    module docstring). Checks that ``rows`` and ``token_labels`` fit the ids."""
    prompt, n_new = result.prompt_length, len(result.new_ids)
    total = prompt + n_new
    if n_new == 0:
        raise InputError("nothing was generated: there are no generated rows to draw")
    if result.rows.ndim != 4 or result.rows.shape[2:] != (n_new, total):
        raise ValueError(f"rows must be (layers, heads, {n_new}, {total}) for {n_new} generated "
                         f"tokens after a {prompt}-token prompt, got {result.rows.shape}")
    if len(token_labels) != total:
        raise ValueError(f"{len(token_labels)} token labels for {total} tokens")
    window = parse_window(tokens, total)
    start, stop = window or (0, total)
    # The generated tokens g in [first, last): at positions in the window, and with a key in
    # it (the token at a generated position A saw keys before A only).
    first, last = max(0, start - prompt + 1), stop - prompt
    if last <= first:
        raise InputError(f"--tokens {tokens} holds no generated token: the prompt is positions "
                         f"0-{prompt - 1}, the {plural(n_new, 'generated token')} "
                         f"{prompt}-{total - 1}")
    labels = [f"{p}: {token_labels[p]}" if window else token_labels[p] for p in range(total)]
    return GenerationView(
        rows=result.rows[:, :, first:last, start:stop], row_labels=labels[prompt + first:prompt + last],
        col_labels=labels[start:stop], prompt_length=prompt, n_generated=n_new, first_step=first,
        start=start, stop=stop, cut=window is not None)


def _article(number: int) -> str:
    """'an' before the numbers read with a vowel first (8, 11, 18, 80, 11000, ...), else 'a'."""
    digits = str(number)
    lead = digits[: len(digits) % 3 or 3]  # the leading group of three digits
    return "an" if digits.startswith("8") or lead in ("11", "18") else "a"


@dataclass
class _Families:
    """What ``families.head_extras`` and ``grid.model_grid_names`` read of a result, for the
    generated rows: layer numbers, windows (per layer) and kv heads (per head)."""

    layers: list[int]
    n_heads: int
    n_tokens: int  # the whole sequence: whether a window cuts any key
    windows: list[int | None] = field(default_factory=list)
    kv_heads: list[int] = field(default_factory=list)

    def layer_window(self, layer_index: int) -> int | None:
        return self.windows[layer_index] if layer_index < len(self.windows) else None

    @property
    def grouped(self) -> bool:
        return bool(self.kv_heads) and len(set(self.kv_heads)) < len(self.kv_heads)

    @property
    def length(self) -> int:  # as AttentionResult.length: the generated rows are never pooled
        return self.n_tokens


def _fit_title(text: str, width_in: float) -> str:
    """``text`` on two lines (before "generated rows") when it is wider than ``width_in``."""
    if " · generated rows" in text and text_width_in([text], _TITLE_FONT) > width_in:
        return text.replace(" · generated rows", "\ngenerated rows", 1)
    return text


def write_generation_pictures(
    result,
    token_labels: Sequence[str],
    out_dir: Path,
    *,
    heads: Sequence[int] | None = None,
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    image_format: str = "png",
    exclude_first_key: bool = False,
    tokens: str | None = None,
    windows: Sequence[int | None] | None = None,
    kv_heads: Sequence[int] | None = None,
    annotate: bool | None = None,
    title: str | None = None,
    progress=None,
) -> list[WrittenFile]:
    """Pictures of the generated rows of ``result`` (``generation.GenerationResult``), for
    every layer it kept: ``head_MM.<fmt>`` per head in ``heads`` (default all) and the
    overview ``heads.<fmt>``; with several layers each in ``layer_NN/`` and the model
    overview ``model.<fmt>`` (layers × heads) — ``plot.write_heatmaps``' layout, so the
    files an earlier run wrote here and this one did not are removed (``attnviz.files.outdir``).

    ``token_labels``: one per token, prompt and generated (``gpt2_bpe.token_label`` of the
    model's ``token_bytes``). ``tokens``: ``"A:B"``, a window of positions (module
    docstring). ``windows``: per layer of ``result.layers``, the sliding window W or None;
    ``kv_heads``: per head, its key/value head (as ``AttentionResult``). ``exclude_first_key``
    drops key 0 and renormalises each row over its other keys (``cells.exclude_first``)
    before any window cuts it. ``annotate`` prints the weights (default: up to 12 columns);
    ``title`` is a template of {layer}, {head} and {tokens} (the generated tokens).
    ``progress(stage, done, total)`` is called after each picture.
    """
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, "
                         f"got {image_format!r}")
    check_title(title)
    view = generation_view(result, token_labels, tokens)
    n_layers, n_heads, n_rows, n_cols = view.rows.shape
    if len(result.layers) != n_layers:
        raise ValueError(f"{len(result.layers)} layer numbers for {n_layers} layers of rows")
    chosen = list(dict.fromkeys(heads)) if heads else list(range(n_heads))
    for h in chosen:
        if not 0 <= h < n_heads:
            raise InputError(f"--head {h} is out of range: the model has {n_heads} heads "
                             f"(0-{n_heads - 1})")
    families = _Families(list(result.layers), n_heads, view.prompt_length + view.n_generated,
                         list(windows or []), list(kv_heads or []))
    layer_windows = [families.layer_window(li) for li in range(n_layers)]
    rows_spec = view.panel_rows()
    reach = n_rows + view.offset  # a window cuts keys of the picture when it is below this
    about = view.describe() + (" · key 0 excluded, rows renormalised" if exclude_first_key else "")

    def titled(layer: int, head: int | str, auto: str) -> str:
        return (title.format(layer=layer, head=head, tokens=view.n_generated) if title is not None
                else auto)

    side = layout(n_cols, bool(annotate) or (annotate is None and n_cols <= 12))[0]
    head_titles = {
        (li, h): titled(layer, h, _fit_title(
            f"layer {layer}, head {h}{head_extras(families, li, h)} · {about}", side + 1.4))
        for li, layer in enumerate(result.layers) for h in chosen}
    groups = f" in {plural(len(set(families.kv_heads)), 'kv group')}" if families.grouped else ""
    overview_titles = []
    for li, layer in enumerate(result.layers):
        note = window_note(layer_windows[li], families.n_tokens)
        overview_titles.append(titled(layer, "all", f"Layer {layer}: all {counted(n_heads, 'head')}{groups}"
                                      + (f" · {note}" if note else "") + f" · {about}"))
    model_title = titled(result.layers[0], "all", f"Every layer and head · {about}")

    mask_label = "masked /\nexcluded" if exclude_first_key else "not yet\nwritten"
    figures: dict = {}  # per legend (the window's swatch or none): one figure, built once

    def figure_for(window: int | None) -> HeatmapFigure:
        key = outside_label([window], reach)
        if key not in figures:
            figures[key] = HeatmapFigure(view.col_labels, 1, cmap, dpi, scale, annotate,
                                         mask_label=mask_label,
                                         extra_texts=list(head_titles.values()) or [""],
                                         outside_label=key, rows=rows_spec)
        return figures[key]

    _check_overviews(view, families, layer_windows, rows_spec, reach, dpi, overview_titles,
                     model_title)
    for window in dict.fromkeys(layer_windows):  # built (their options checked) before any file
        figure_for(window)

    def head_view(li: int, h: int):
        if exclude_first_key:  # on the whole row (key 0 is position 0), then the window's part
            full = exclude_first(result.rows[li, h], layer_windows[li], view.prompt_length - 1)
            return full[view.first_step:view.first_step + n_rows, view.start:view.stop]
        return view.rows[li, h]

    folders, record = plan_folder(out_dir, result.layers, chosen, image_format)
    written: list[WrittenFile] = []
    total = n_layers * (len(chosen) + 1) + (n_layers > 1)

    def drawn() -> None:
        throttle(figures.values())
        if progress:
            progress("Drawing", len(written), total)

    out_dir = Path(out_dir)
    overview, overview_legend = None, None
    with ThreadPoolExecutor(max_workers=ENCODERS) as writer:
        for li, layer in enumerate(result.layers):
            folder = out_dir / f"layer_{layer:02d}" if n_layers > 1 else out_dir
            folder.mkdir(parents=True, exist_ok=True)
            window = layer_windows[li]
            figure = figure_for(window)
            extra = {"windows": [window]} if window is not None else {}
            for h in chosen:
                name = f"{folders[li]}head_{h:02d}.{image_format}"
                record.claim(name)
                path = figure.save(folder / f"head_{h:02d}.{image_format}", [head_view(li, h)],
                                   [head_titles[li, h]], writer, image_format, **extra)
                written.append(WrittenFile(path, layer, h))
                drawn()
            views = [head_view(li, h) for h in range(n_heads)]
            legend = outside_label([window], reach)
            if overview is None or image_format in ("svg", "pdf") or legend != overview_legend:
                overview = heads_overview(views, overview_titles[li], cmap, dpi, scale,
                                          view.col_labels, kv_heads=families.kv_heads,
                                          window=window, rows_of_tiles=rows_spec)
                overview_legend = legend
            else:  # the same layout for every layer: only the cells and the title change
                overview.retile(overview_tiles(views, families.kv_heads, view.offset),
                                overview_titles[li], [window] * len(overview.tiles))
            record.claim(f"{folders[li]}heads.{image_format}")
            path = folder / f"heads.{image_format}"
            write_bytes(path, overview.to_bytes(image_format))
            written.append(WrittenFile(path, layer, None))
            drawn()
        for figure in figures.values():
            for future in figure.pending:
                future.result()  # re-raise a failed write here
    if n_layers > 1:
        tiles = [[(lambda li=li, h=h: head_view(li, h)) for h in range(n_heads)]
                 for li in range(n_layers)]
        row_names, col_names, breaks = model_grid_names(families)
        record.claim(f"model.{image_format}")
        path = save_grid(out_dir / f"model.{image_format}", tiles, model_title,
                         row_names=row_names, col_names=col_names, cmap=cmap, dpi=dpi,
                         scale=scale, token_labels=view.col_labels, fmt=image_format,
                         row_windows=layer_windows, col_breaks=breaks, rows_of_tiles=rows_spec)
        written.append(WrittenFile(path, None, None))
        if progress:
            progress("Drawing", len(written), total)
    record.finish(f.path.relative_to(out_dir).as_posix() for f in written)
    return written


def _check_overviews(view: GenerationView, families: _Families, layer_windows, rows_spec,
                     reach: int, dpi: int, overview_titles: Sequence[str],
                     model_title: str) -> None:
    """Refuse, before any file is written, overviews too large to write (drawn last)."""
    n_layers, n_heads, _, n_cols = view.rows.shape
    plan = overview_plan(n_heads, families.kv_heads)
    grids = [(len(plan.slots), len(plan.slots[0]), (), (), [["head"]], plan.col_breaks,
              bool(plan.groups), outside_label([w], reach), title)
             for w, title in zip(layer_windows, overview_titles)]
    if n_layers > 1:
        row_names, col_names, breaks = model_grid_names(families)
        grids.append((n_layers, n_heads, row_names, col_names, (), breaks, False,
                      outside_label(layer_windows, reach), model_title))
    fonts = Fonts([*view.col_labels, *view.row_labels])
    with fonts.context():
        for rows, cols, row_names, col_names, tile_titles, breaks, groups, legend, title in grids:
            geometry = grid_layout(rows, cols, n_cols, fonts, row_names, col_names, tile_titles,
                                   dpi, view.col_labels, breaks, groups, legend, rows_spec, title)
            check_image_size(geometry.width, geometry.height, dpi)
