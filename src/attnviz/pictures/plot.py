"""Whole runs of attention pictures, files out: ``write_heatmaps`` (a picture per head,
each layer's heads overview and, for several layers, the model grid), ``write_rollout``,
``save_compare`` (chosen heads side by side in one picture, or as lines) and
``overview_png`` (every head in one PNG, for notebooks). Every check is made and the
folder's files planned (``plan_folder``) before the first is written; PNGs are compressed
in threads while the next picture is drawn (``throttle``).

The pictures themselves live beside this module: ``attnviz.pictures.heatmap`` (the figure
of one or more heads), ``attnviz.pictures.grid`` (grids and overviews),
``attnviz.pictures.similarity``, ``attnviz.pictures.checks`` (options) and
``attnviz.pictures.families`` (windows and kv groups in words).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnviz.analyses.attention import AttentionResult
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.files.fileio import write_bytes
from attnviz.files.outdir import OutputFolder
from attnviz.pictures.checks import check_title
from attnviz.pictures.colours import WEIGHTS, Measure
from attnviz.pictures.families import (
    cell_window,
    head_extras,
    outside_label,
    plural,
    window_note,
)
from attnviz.pictures.forms import Form
from attnviz.pictures.grid import (
    check_overviews,
    grid_figure,
    heads_overview,
    model_grid_names,
    overview_tiles,
    save_grid,
)
from attnviz.pictures.heatmap import HeatmapFigure

ENCODERS = 2  # threads compressing PNGs while the next picture is drawn


def save_compare(path: Path, result: AttentionResult, heads: Sequence[int], cmap: str = "viridis",
                 dpi: int = 100, scale: str = "sqrt", *, image_format: str = "png",
                 view: str = "heatmap", exclude_first_key: bool = False,
                 annotate: bool | None = None, title: str | None = None,
                 measure: Measure = WEIGHTS) -> Path:
    """``heads`` of every layer in ``result`` side by side in one picture (a row per
    layer when there are several; else up to four a row), on one colour scale. The
    lines view draws them over each other, one colour per head (one layer). ``measure``:
    what ``result.weights`` hold (``colours.Measure``): the norms of ``attnviz.analyses.weighting``
    are drawn on 0..``measure.top``, and as lines of opacity value / top."""
    check_title(title)
    form = Form.of(result, exclude_first_key)
    pretrained = result.config.get("mode") == "pretrained"
    several = len(result.layers) > 1
    panels, titles, windows = [], [], []
    for li, layer in enumerate(result.layers):
        where = kind_prefix(result) + (f"layer {layer}, " if pretrained or several else "")
        window = result.layer_window(li)
        for h in heads:
            panels.append(form.view(result.weights[li, h], window))
            windows.append(window)
            auto = (f"{where}head {h}{head_extras(result, li, h)}"
                    + (" (key 0 excluded)" if exclude_first_key else "") + measure.title)
            titles.append(title.format(layer=layer, head=h, tokens=result.n_tokens)
                          if title is not None else auto)
    if view == "lines":
        from attnviz.pictures.lines import LinesFigure, window_line_note

        check_lines(result)
        where = f"layer {result.layers[0]}, " if pretrained else ""
        names = ", ".join(map(str, heads))
        note = window_note(windows[0], result.n_tokens)
        text = (title.format(layer=result.layers[0], head=names, tokens=result.n_tokens)
                if title is not None else f"{where}{'heads' if len(heads) > 1 else 'head'} {names}"
                + (f" · {note}" if note else "") + measure.title)
        head_names = ([f"head {h} · kv {result.kv_heads[h]}" for h in heads] if result.grouped
                      else None)
        figure = LinesFigure(result.token_labels, dpi=dpi, extra_texts=[text])
        return figure.save(path, [lines_panel(p, measure) for p in panels[: len(heads)]], [text],
                           fmt=image_format, heads=heads, head_names=head_names,
                           note=lines_note(window_line_note(windows[0], result.n_tokens), measure))
    shown = form.windows(windows)
    figure = HeatmapFigure(form.columns, len(panels), cmap, dpi, scale, annotate,
                           mask_label=form.mask_label(windows),
                           extra_texts=titles, columns=len(heads) if several else None,
                           outside_label=outside_label(shown, result.n_tokens), measure=measure,
                           rows=form.rows)
    return figure.save(path, panels, titles, fmt=image_format,
                       windows=shown if any(w is not None for w in shown) else None)


KIND_NAMES = {"encoder": "encoder self-attention", "decoder": "decoder self-attention",
              "cross": "cross-attention"}


def kind_prefix(result: AttentionResult, capital: bool = False) -> str:
    """An encoder–decoder's pictures say which of its three attentions they show
    ("cross-attention · "); other models' titles are as they were."""
    if result.config.get("architecture") != "encoder-decoder":
        return ""
    name = KIND_NAMES[result.attention]
    return (name[0].upper() + name[1:] if capital else name) + " · "


def check_lines(result: AttentionResult) -> None:
    """The lines view draws a causal head's queries over its own tokens: refuse the rest."""
    if not result.causal:
        raise InputError(f"--view lines draws causal self-attention; this is "
                         f"{result.attention} attention: use --view heatmap")


def tokens_note(result: AttentionResult, count: int | None = None) -> str:
    """How titles count a result's tokens: "6 tokens" (``count``, default ``length``);
    cross-attention "6 query tokens × 10 key tokens"."""
    if result.cross:
        return f"{plural(result.n_tokens, 'query token')} × {plural(result.n_keys, 'key token')}"
    return plural(result.length if count is None else count, "token")


def lines_panel(values: np.ndarray, measure: Measure = WEIGHTS) -> np.ndarray:
    """What the lines view draws for ``values`` measured by ``measure``: the weights
    themselves, or a quantity on 0..top as opacity value / top."""
    if measure.top == 1.0:
        return values
    return values / np.float32(measure.top)


def lines_note(note: str, measure: Measure = WEIGHTS) -> str:
    """The line under a lines picture's title, with what the opacity means for ``measure``."""
    if measure.top == 1.0:
        return note
    scale = f"opacity = {measure.label.split(' (')[0]} / {measure.top:g}"
    return f"{scale} · {note}" if note else scale


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    layer: int | None  # None for the model overview
    head: int | None  # None for an overview grid


def plan_folder(out_dir: Path, layers: Sequence[int], heads: Sequence[int], image_format: str,
                extras: Sequence[str] = ()):
    """``(folders, record)``: the ``layer_NN/`` prefix of each layer ("" for one layer) and
    the ``OutputFolder`` listing every file a heatmap folder will hold, before the first is
    written (an interrupted run's files are then known to the next run). ``extras``: more
    pictures of each layer, by name."""
    folders = [f"layer_{layer:02d}/" if len(layers) > 1 else "" for layer in layers]
    planned = [f"{folder}{name}.{image_format}" for folder in folders
               for name in [*(f"head_{h:02d}" for h in heads), "heads", *extras]]
    model = [f"model.{image_format}"] if len(layers) > 1 else []
    return folders, OutputFolder(Path(out_dir), planned + model)


def throttle(figures) -> None:
    """At most a few encoded-but-unwritten images wait (each holds a copy of the canvas)."""
    waiting = [f for figure in figures for f in figure.pending if not f.done()]
    for future in waiting[: max(0, len(waiting) - 2 * ENCODERS)]:
        future.result()


def write_heatmaps(
    result: AttentionResult,
    out_dir: Path,
    heads: Sequence[int] | None = None,
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    *,
    image_format: str = "png",
    view: str = "heatmap",
    exclude_first_key: bool = False,
    annotate: bool | None = None,
    title: str | None = None,
    progress=None,
    measure: Measure = WEIGHTS,
    layer_extras: dict | None = None,
) -> list[WrittenFile]:
    """Per-head pictures plus an overview of all heads, for every layer in ``result``.

    One layer: ``out_dir/head_MM.<fmt>`` and ``out_dir/heads.<fmt>``. Several layers:
    ``out_dir/layer_NN/...`` each, plus ``out_dir/model.<fmt>`` (layers x heads).
    ``view="lines"`` draws each head as lines from queries to keys (the overviews stay
    heatmaps). ``exclude_first_key`` is a view transform (see ``exclude_first``).
    Files an earlier run wrote here (even an interrupted one) and this one did not are
    removed, and nothing else (see ``attnviz.files.outdir``).
    ``progress(stage, done, total)`` is called after each picture (see ``attnviz.files.progress``).
    ``measure``: what ``result.weights`` hold (``colours.Measure``): the norms of
    ``attnviz.analyses.weighting`` get their own colour scale, 0..``measure.top``, named on the
    colorbar, and ``measure.title`` in every title. ``layer_extras``: name -> function of
    the layer's index returning a picture's bytes, written as ``<name>.<fmt>`` beside each
    layer's heads (a long text's statistics).
    """
    layer_extras = layer_extras or {}
    n_layers, n_heads = result.weights.shape[:2]
    n = result.length  # tokens of the text: result.n_tokens cells a side, pooled or not
    check_overviews(result, dpi)  # drawn last, checked first: no run fails half-written
    chosen = list(dict.fromkeys(heads)) if heads else list(range(n_heads))
    pretrained = result.config.get("mode") == "pretrained"
    check_title(title)
    form = Form.of(result, exclude_first_key)
    if view == "lines":
        check_lines(result)
    suffix = (" (key 0 excluded, rows renormalised)" if exclude_first_key else "") + measure.title
    tokens = tokens_note(result)

    def titled(layer: int, head: int | str, auto: str) -> str:
        return title.format(layer=layer, head=head, tokens=n) if title is not None else auto

    windows = [result.layer_window(li) for li in range(n_layers)]  # in tokens
    cells = [cell_window(w, result.block) for w in windows]  # in cells: what the masks take
    figures: dict = {}  # per legend (the window's swatch or none): one figure, built once

    def figure_for(window: int | None):
        shown = form.windows([window])[0]
        key = ("lines" if view == "lines" else
               (outside_label([shown], n), form.mask_label([window])))
        if key not in figures:
            if view == "lines":
                from attnviz.pictures.lines import LinesFigure

                figures[key] = LinesFigure(result.token_labels, dpi=dpi, extra_texts=[title or ""])
            else:
                figures[key] = HeatmapFigure(
                    form.columns, 1, cmap, dpi, scale, annotate, mask_label=key[1],
                    extra_texts=[title or ""], outside_label=key[0], measure=measure,
                    rows=form.rows)
        return figures[key]

    for window in dict.fromkeys(windows):  # built (and their options checked) before any file
        figure_for(window)
    folders, record = plan_folder(out_dir, result.layers, chosen, image_format, list(layer_extras))
    written = []
    total = n_layers * (len(chosen) + 1 + len(layer_extras)) + (n_layers > 1)

    def drawn() -> None:
        throttle(figures.values())
        if progress:
            progress("Drawing", len(written), total)

    overview, overview_legend = None, None
    overview_writes: list = []  # each layer's overview being written (None: written)
    # zlib releases the GIL: the PNGs are compressed in threads while the next is drawn,
    # and (rasters) the next head's cells are coloured in another (numpy releases it too).
    ahead = view != "lines" and image_format not in ("svg", "pdf")
    with ThreadPoolExecutor(max_workers=ENCODERS) as writer, \
            ThreadPoolExecutor(max_workers=1) as colourer:
        for li, layer in enumerate(result.layers):
            folder = out_dir / f"layer_{layer:02d}" if n_layers > 1 else out_dir
            folder.mkdir(parents=True, exist_ok=True)
            where = kind_prefix(result) + (f"layer {layer}, " if pretrained else "")
            window, cell = windows[li], cells[li]
            figure = figure_for(window)
            shown = form.windows([cell])[0]

            def coloured(h: int, li=li, cell=cell, figure=figure, shown=shown) -> list:
                return figure.panel_words([form.view(result.weights[li, h], cell)],
                                          None if shown is None else [shown])

            coming: dict = {}  # head -> its cells' pixels, being made
            for k, h in enumerate(chosen):
                if ahead:
                    for later in chosen[k : k + 2]:
                        if later not in coming:
                            coming[later] = colourer.submit(coloured, later)
                text = titled(layer, h, f"{where}head {h}{head_extras(result, li, h)}{suffix}")
                if view == "lines":
                    from attnviz.pictures.lines import window_line_note

                    extra = {"heads": [h], "note": lines_note(window_line_note(window, n), measure),
                             "head_names": [f"head {h} · kv {result.kv_heads[h]}"]
                             if result.grouped else None}
                    panel = lines_panel(result.weights[li, h], measure)
                else:
                    extra = {"windows": [shown]} if shown is not None else {}
                    if ahead:
                        extra["words"] = coming.pop(h).result()
                    panel = result.weights[li, h]
                record.claim(f"{folders[li]}head_{h:02d}.{image_format}")
                path = figure.save(folder / f"head_{h:02d}.{image_format}",
                                   [form.view(panel, cell)], [text], writer,
                                   image_format, **extra)
                written.append(WrittenFile(path, layer, h))
                drawn()
            note = window_note(window, n, result.causal)
            groups = f" in {plural(len(set(result.kv_heads)), 'kv group')}" if result.grouped else ""
            auto = (f"{where}all {counted(n_heads, 'head')}{groups}, {tokens}"
                    + (f" · {note}" if note else "") + suffix)
            heads_title = titled(layer, "all", auto[0].upper() + auto[1:])
            views = [form.view(w, cell) for w in result.weights[li]]
            shown = form.windows([cell])[0]
            legend = (outside_label([window], n), form.grid_mask_label([window]))
            if overview is None or image_format in ("svg", "pdf") or legend != overview_legend:
                overview = heads_overview(views, heads_title, cmap, dpi, scale, form.columns,
                                          kv_heads=result.kv_heads, window=shown, measure=measure,
                                          rows_of_tiles=form.rows, mask_label=legend[1])
                overview_legend = legend
            else:  # the same layout for every layer: only the cells and the title change
                overview.retile(overview_tiles(views, result.kv_heads), heads_title,
                                [shown] * len(overview.tiles))
            path = folder / f"heads.{image_format}"
            record.claim(f"{folders[li]}heads.{image_format}")
            overview_writes.append(overview.save(path, image_format, writer))
            written.append(WrittenFile(path, layer, None))
            drawn()
            for name, draw in layer_extras.items():
                path = folder / f"{name}.{image_format}"
                record.claim(f"{folders[li]}{name}.{image_format}")
                write_bytes(path, draw(li))
                written.append(WrittenFile(path, layer, None))
                drawn()
        for future in [f for figure in figures.values() for f in figure.pending] + [
                f for f in overview_writes if f is not None]:
            future.result()  # re-raise a failed write here
    if n_layers > 1:
        # Each tile is made when drawn (a view; a copy only with exclude_first).
        tiles = [[(lambda w=w, window=window: form.view(w, window)) for w in layer]
                 for layer, window in zip(result.weights, cells)]
        row_names, col_names, breaks = model_grid_names(result)
        record.claim(f"model.{image_format}")
        path = save_grid(
            out_dir / f"model.{image_format}", tiles,
            titled(result.layers[0], "all",
                   f"{kind_prefix(result, True)}Every layer and head, {tokens}{suffix}"),
            row_names=row_names, col_names=col_names,
            cmap=cmap, dpi=dpi, scale=scale, token_labels=form.columns, fmt=image_format,
            row_windows=form.windows(cells), col_breaks=breaks, measure=measure,
            rows_of_tiles=form.rows, mask_label=form.grid_mask_label(windows),
        )
        written.append(WrittenFile(path, None, None))
        if progress:
            progress("Drawing", len(written), total)
    record.finish(f.path.relative_to(out_dir).as_posix() for f in written)
    return written


def overview_png(result: AttentionResult, dpi: int = 80) -> bytes:
    """Every head of ``result`` in one PNG: its layer's heads overview (one layer) or the
    layers x heads grid (several) — what a notebook shows where scripts cannot run. Drawn
    at a lower resolution when ``dpi`` would make it too large."""
    n_layers, n_heads = result.weights.shape[:2]
    windows = [result.layer_window(li) for li in range(n_layers)]
    tokens = tokens_note(result, result.n_tokens)
    while True:
        try:
            check_overviews(result, dpi)
            break
        except InputError:
            if dpi <= 20:
                raise
            dpi = max(20, dpi // 2)
    form = Form.of(result)
    if n_layers == 1:
        pretrained = result.config.get("mode") == "pretrained"
        note = window_note(windows[0], result.n_tokens, result.causal)
        title = ((f"Layer {result.layers[0]}, all" if pretrained else "All")
                 + f" {counted(n_heads, 'head')}, {tokens}" + (f" · {note}" if note else ""))
        figure = heads_overview([form.view(w, windows[0]) for w in result.weights[0]], title,
                                dpi=dpi, token_labels=form.columns,
                                kv_heads=result.kv_heads, window=form.windows(windows)[0],
                                rows_of_tiles=form.rows, mask_label=form.grid_mask_label(windows))
        return figure.to_bytes("png")
    tiles = [[(lambda w=w, window=window: form.view(w, window)) for w in layer]
             for layer, window in zip(result.weights, windows)]
    row_names, col_names, breaks = model_grid_names(result)
    return grid_figure(tiles, f"Every layer and head, {tokens}", row_names, col_names, dpi=dpi,
                       token_labels=form.columns, row_windows=form.windows(windows),
                       col_breaks=breaks, rows_of_tiles=form.rows,
                       mask_label=form.grid_mask_label(windows)).to_bytes("png")


ROLLOUT = Measure(label="rollout: share of input token")
ROLLOUT_AXES = ("position after the last layer (row)", "input token (column)")


def write_rollout(
    rollout: np.ndarray,
    token_labels: Sequence[str],
    out_dir: Path,
    title: str,
    cmap: str = "viridis",
    dpi: int = 100,
    scale: str = "sqrt",
    *,
    image_format: str = "png",
    annotate: bool | None = None,
    title_template: str | None = None,
    layer: int = 0,
) -> list[WrittenFile]:
    """The attention rollout of the model (``(T, T)``, see ``attnviz.analyses.weighting``) as one
    picture, ``out_dir/rollout.<fmt>``: rows are positions after the last layer, columns
    the input tokens they draw on; rows sum to 1 (less in a ``--tokens`` window), so the
    weights' 0..1 scales apply. ``title_template`` (``--title``) is filled with
    ``layer`` (the deepest), ``head="all"`` and the token count. Files of an earlier run
    into the folder are removed, as ``write_heatmaps`` does."""
    check_title(title_template)
    n = len(token_labels)
    if title_template is not None:
        title = title_template.format(layer=layer, head="all", tokens=n)
    figure = HeatmapFigure(token_labels, 1, cmap, dpi, scale, annotate, extra_texts=[title],
                           measure=ROLLOUT, axis_labels=ROLLOUT_AXES)
    name = f"rollout.{image_format}"
    record = OutputFolder(Path(out_dir), [name])
    record.claim(name)
    path = figure.save(Path(out_dir) / name, [np.asarray(rollout, dtype=np.float32)], [title],
                       fmt=image_format)
    record.finish([name])
    return [WrittenFile(path, None, None)]
