"""`attnviz compare-heads`: one row of statistics per head, similarity, side-by-side plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    AllowSpecialOpt,
    DebugOpt,
    FileOpt,
    FormatOpt,
    LayerOpt,
    ModelOptions,
    PictureOptions,
    QuietOpt,
    ResolutionOpt,
    SinkTokensOpt,
    TextArg,
    TokensOpt,
    WeightingOpt,
    WeightsOpt,
    check_file_target,
    deprecated,
    model_options,
    picture_options,
    score_induction,
)
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.text.inputs import read_text


@app.command("compare-heads")
@model_options
@picture_options()
def compare_heads(
    text: TextArg = None,
    file: FileOpt = None,
    sort_by: Annotated[str | None, typer.Option("--sort-by", help="Column to sort by: head, "
                       "layer, entropy, normalized_entropy, max_weight, self, previous_token, "
                       "first_token, mean_distance (or induction). Default: layer, head.",
                       show_default=False)] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort in descending order.")] = False,
    similarity: Annotated[bool, typer.Option("--similarity", help="Add the head x head "
                          "Jensen-Shannon divergence matrix.")] = False,
    induction: Annotated[bool, typer.Option("--induction", help="Add each head's induction "
                         "score (meaningful with --weights).")] = False,
    plot_path: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write "
                         "the --head heads (default 0 and 1) side by side to this picture "
                         "(.png, .svg, .pdf, .jpg); a row per layer when there are several.",
                         show_default=False)] = None,
    plot_deprecated: Annotated[Path | None, typer.Option("--plot", hidden=True)] = None,
    similarity_plot: Annotated[Path | None, typer.Option("--similarity-plot", metavar="FILE",
                               help="Write the similarity matrix to this picture: one panel "
                               "per layer.", show_default=False)] = None,
    head: Annotated[list[int] | None, typer.Option(
        "--head", min=0, metavar="I", help="A head to draw in the --output picture (repeatable; "
        "default: heads 0 and 1). The table always lists every head.", show_default=False)] = None,
    picture: PictureOptions = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    weighting: WeightingOpt = "attention",
    resolution: ResolutionOpt = None,
    sink_tokens: SinkTokensOpt = 4,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare the heads: entropy, focus, self / previous / first-token attention, distance.

    The table lists every head of the chosen layers; --head picks the heads drawn by -o/--output.
    With --weighting norm the statistics are those of the value-weighted rows renormalised
    to sum 1, and --output draws the norms. A text longer than --resolution tokens (1024):
    the statistics of the whole text (and sink_mass), exactly; --output draws pooled maps.
    """
    from dataclasses import replace

    import numpy as np

    from attnviz.analyses.stats import COLUMNS
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    if plot_deprecated is not None:
        if plot_path is not None:
            raise InputError("--plot is the old spelling of --output: give one of them")
        deprecated("compare-heads", "--plot", "--plot names a folder of pictures in every "
                   "other command")
        plot_path = plot_deprecated
    plot_option = "--output" if plot_deprecated is None else "--plot"
    columns = ["layer", "head", *COLUMNS] + (["induction"] if induction else [])
    if sort_by == "induction" and not induction:
        raise InputError("--sort-by induction needs the induction scores: add --induction")
    if sort_by is not None and sort_by not in columns:
        raise InputError(f"--sort-by {sort_by!r} is not a column; choose one of "
                         f"{', '.join(columns)} (or induction, with --induction)")
    if head and not plot_path:
        raise InputError("--head picks the heads of the --output picture; add -o FILE (the "
                         "table always lists every head)")
    source = read_text(text, file)
    if plot_path or similarity_plot:
        from attnviz.pictures import checks

        picture.check()
        if weighting == "norm" and picture.exclude_first:
            raise InputError("--exclude-first renormalises attention rows; the norms of "
                             "--weighting norm are not probabilities: give one of them")
        for path, option in ((plot_path, plot_option), (similarity_plot, "--similarity-plot")):
            if path:
                checks.image_format(path, picture.image_format, option)
                check_file_target(path, option)
    from attnviz.analyses.longcontext import LongResult, analyze_text
    from attnviz.analyses.stats import add_induction, head_rows, stats_rows
    from attnviz.analyses.stats import similarity as js_matrix
    from attnviz.files.output import sort_rows

    whole = ("--weighting norm" if weighting == "norm" else "--similarity" if similarity else
             "--similarity-plot" if similarity_plot else
             "--view lines" if plot_path and picture.view == "lines" else
             "--exclude-first" if plot_path and picture.exclude_first else
             "--annotate" if plot_path and picture.annotate else None)
    result = analyze_text(source, config, weights=weights, layer=layer,
                          allow_special=allow_special, heads=head, tokens=tokens,
                          resolution=resolution, sink_tokens=sink_tokens,
                          maps=("max",) if plot_path else (), whole=whole)
    long = result if isinstance(result, LongResult) else None
    if long is not None:  # the whole text's statistics; its pooled map (or window) drawn
        from attnviz.cli.heatmap import long_measure

        columns.append("sink_mass")
        result, measure = ((long.exact_window(), {}) if long.span is not None else
                           (long.pooled("max"), {"measure": long_measure(long)}) if plot_path
                           else (long, {}))
    several = len(result.layers) > 1
    if plot_path and picture.view == "lines" and several:
        raise InputError("--view lines draws the heads of one layer over each other; give one "
                         "--layer, or use --view heatmap for a grid of every layer")
    plot_heads = list(dict.fromkeys(head)) if head else list(range(min(2, result.n_heads)))
    drawn = result  # what --output draws, on which colour scale
    measure = measure if long is not None else {}
    if weighting == "norm":  # statistics of probability rows: the norms, renormalised
        from attnviz.analyses.weighting import STATISTICS_NOTE, renormalized, weighting_config
        from attnviz.pictures.norms import norm_pictures

        drawn, measure["measure"] = norm_pictures(result)
        about = weighting_config("norm", STATISTICS_NOTE)
        result = replace(result, weights=renormalized(drawn.weights),
                         config={**result.config, "weighting": about})
    rows = (head_rows(result.weights, result.layers, result.kv_heads) if long is None else
            stats_rows(_per_layer(long.stats()), long.layers, long.kv_heads, (*COLUMNS, "sink_mass")))
    if result.kv_heads:  # grouped-query models: which key/value head each head reads
        columns.insert(2, "kv_head")
    if induction:
        add_induction(rows, score_induction(output, config, weights, result.layers, weighting))
    rows = sort_rows(rows, sort_by, desc)
    document = {"heads": rows, "layers": result.layers, "tokens": (long or result).tokens(),
                "config": result.config}
    window_note = ""
    if long is not None:  # the statistics are the whole text's; a window is only drawn
        document["pooled"] = {"block": long.block, "cells": long.n_blocks,
                              "sink_tokens": long.sink_tokens}
        if long.span is not None:
            document["window"] = {"start": long.span[0], "stop": long.span[1]}
    if long is None and result.window:
        start, stop = result.window
        document["window"] = {"start": start, "stop": stop}
        window_note = (f" (window: tokens {start}-{stop - 1}; statistics of the cropped rows"
                       + (", which sum to less than 1)" if start > 0 else ")"))
    # (L, H, H): one matrix per layer, whatever the layer choice
    matrices = [js_matrix(w) for w in result.weights] if similarity or similarity_plot else []
    if similarity:
        document["similarity"] = matrices
    files = []
    if plot_path or similarity_plot:
        from attnviz.pictures import checks, plot
        from attnviz.pictures.similarity import check_similarity_size, save_similarity

        if similarity_plot:  # checked before --output is written: all checks come first
            check_similarity_size(len(result.layers), result.n_heads, picture.dpi)
        if plot_path:
            plot.save_compare(plot_path, drawn, plot_heads,
                              image_format=checks.image_format(plot_path, picture.image_format,
                                                                 plot_option),
                              **picture.heatmap_args(), **measure)
            files.append(str(plot_path))
        if similarity_plot:
            save_similarity(similarity_plot, np.stack(matrices),
                            "Head similarity (JS divergence)" + window_note, picture.dpi,
                            picture.cmap, checks.image_format(similarity_plot, picture.image_format),
                            layers=result.layers)
            files.append(str(similarity_plot))
    if files:
        document["files"] = files
    show_layer = fmt != "table" or several or result.config["mode"] == "pretrained"
    shown = columns if show_layer else columns[1:]
    if fmt == "csv" and similarity:
        shown = shown + [f"js_{h}" for h in range(result.n_heads)]
        for row in rows:
            matrix = matrices[result.layers.index(row["layer"])]
            row.update({f"js_{g}": float(matrix[row["head"], g]) for g in range(result.n_heads)})
    styles = {}
    if fmt == "table":
        focused = min(range(len(rows)), key=lambda i: rows[i]["entropy"])
        broadest = max(range(len(rows)), key=lambda i: rows[i]["entropy"])
        styles = {focused: "bold green", broadest: "yellow"}
    weighted = " of the value-weighted rows (renormalised)" if weighting == "norm" else ""
    output.emit(document, rows, shown,
                title=f"Head statistics{weighted}, "
                      f"{counted((long or result).n_tokens, 'token')}{window_note}",
                styles=styles, keys=shown[: 2 if show_layer else 1])
    if fmt != "table":
        return
    name = lambda r: (f"layer {r['layer']} " if several else "") + f"head {r['head']}"  # noqa: E731
    output.line(f"most focused: {name(rows[focused])} (lowest entropy, "
                f"{rows[focused]['entropy']:.3f} nats); broadest: {name(rows[broadest])} "
                f"({rows[broadest]['entropy']:.3f} nats)")
    if similarity:
        for layer_index, matrix in zip(result.layers, matrices):
            sim_rows = [{"head": h, **{str(g): float(matrix[h, g]) for g in range(len(matrix))}}
                        for h in range(len(matrix))]
            output.table(sim_rows, ["head", *map(str, range(len(matrix)))], keys=["head"],
                         title=f"Jensen-Shannon divergence between heads (bits), layer {layer_index}")
    for f in files:
        output.message(f"Wrote {f}")


def _per_layer(stats: dict) -> list[dict]:
    """``LongResult.stats()`` (name -> ``(L, H)``) as one mapping per layer."""
    n_layers = len(next(iter(stats.values())))
    return [{name: values[li] for name, values in stats.items()} for li in range(n_layers)]
