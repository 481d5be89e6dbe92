"""`attnviz why`: why a head attends where it does — one attention score split exactly into
query-side × key-side residual-stream components (see ``attnviz.analyses.why``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    HTML,
    NPZ,
    AllowSpecialOpt,
    DebugOpt,
    DpiOpt,
    FileOpt,
    FormatOpt,
    ImageFormatOpt,
    LayerOpt,
    ModelOptions,
    QuietOpt,
    TextArg,
    WeightsOpt,
    check_file_target,
    check_out_dir,
    deprecated,
    model_options,
)
from attnviz.core.errors import InputError
from attnviz.text.inputs import read_text


def parse_key(value: str | None) -> int | str | None:
    """``--key``: a position, ``all``, or None (the key the head attends to most)."""
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--key must be a key position (0, 1, …) or all, got {value!r}") from None


@app.command()
@model_options
def why(
    text: TextArg = None,
    file: FileOpt = None,
    head: Annotated[str, typer.Option("--head", metavar="I", help="The head explained "
                    "(0-based), in the --layer given.", show_default=False)] = ...,
    layer: LayerOpt = None,
    query: Annotated[int, typer.Option("--query", metavar="I", help="The query position "
                     "(0-based; negative counts from the end).")] = -1,
    key: Annotated[str | None, typer.Option("--key", metavar="J|all", help="The key explained "
                   "(default: the one the head attends to most from the query); all: also the "
                   "key-side totals of every component at every key the query sees.",
                   show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Pairs and components listed.")] = 10,
    output_path: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE.npz",
                           help="Write the whole split as .npz (see docs/why.md).",
                           show_default=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", metavar="FILE.html", help="Write "
                      "one offline page: the head's heatmap; clicking a cell shows its split "
                      "(computed in the page from the stored parts).", show_default=False)] = None,
    plot: Annotated[Path | None, typer.Option("--plot", metavar="DIR", help="Write "
                    "contributions.png (query components x key components, grouped by layer) "
                    "and keys.png (key-side totals x keys) to this folder.",
                    show_default=False)] = None,
    dpi: DpiOpt = 100,
    image_format: ImageFormatOpt = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Why a head attends where it does: the score of query I and key J split exactly into
    (query-side component x key-side component) contributions — the embeddings, every
    earlier head and MLP, the biases — with the norm scales frozen at their actual values.

    A softcapped score (Gemma 2) is split before the cap. Without --weights: random mode's
    one layer (components: the embeddings). See docs/why.md.
    """
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    chosen = parse_key(key)
    fmt_out = None
    if plot is not None:
        from attnviz.pictures import checks

        checks.check_picture_options(dpi=dpi)
        fmt_out = checks.image_format(None, image_format)
        check_out_dir(plot, "--plot")
    if output_path is not None:
        check_file_target(output_path, "--output", NPZ)
    if report is not None:
        check_file_target(report, "--report", HTML)
    from attnviz.analyses.attention import check_length, encode_text, load_model, parse_layers
    from attnviz.analyses.attribution import token_labels
    from attnviz.analyses.why import (
        check_head,
        check_key,
        check_query,
        head_name,
        key_rows,
        matrix_rows,
        parse_head,
        why_document,
    )
    from attnviz.analyses.why import why as run

    model = load_model(config, weights)
    if "." in head:  # the spelling of 0.2's first release: --head L.H
        deprecated("why", "--head L.H", "--head is a head number in every other command")
        layer, head_index = parse_head(head, model.n_layers, model.n_heads)
    elif not layer:
        raise InputError(f"--head {head} needs its layer: add --layer L")
    elif not head.isdigit():
        raise InputError(f"--head must be a head number (0, 1, …), got {head!r}")
    else:
        layers = parse_layers(layer, model.n_layers)
        if len(layers) != 1:
            raise InputError("why explains one head of one layer: give a single --layer L")
        layer, head_index = check_head(layers[0], int(head), model.n_layers, model.n_heads)
    token_ids = encode_text(model, source, allow_special, bos=config.bos, chat=config.chat)
    hint = (" or raise --context-length" if model.describe().get("mode") == "random"
            else " (the checkpoint's context)")
    check_length(len(token_ids), model.context_length, hint)
    position = check_query(query, len(token_ids))
    if isinstance(chosen, int):
        check_key(chosen, position, model.window(layer), layer)
    if report is not None:  # before the work: the page holds every position's parts
        from attnviz.analyses.why import count_components
        from attnviz.display.why_report import check_report_size

        n_components, head_dim = count_components(model, layer)
        check_report_size(n_components, len(token_ids), head_dim)
    from attnviz.files.progress import Progress

    with Progress(quiet) as progress:  # live bars on a terminal's stderr, else nothing
        result = run(model, token_ids, layer=layer, head=head_index, query=position,
                     key=chosen if isinstance(chosen, int) else None, progress=progress,
                     every_query=report is not None)
    labels = token_labels(model.tokenizer, token_ids)
    name = head_name(result, labels)
    files: list[str] = []
    page = None
    if report is not None:  # rendered (and its size checked) before anything is written
        from attnviz.display.why_report import render_why_html, why_payload

        page = render_why_html(why_payload(result, labels))
    if plot is not None:
        from attnviz.pictures.why import write_why_pictures

        files += [str(f) for f in write_why_pictures(
            plot, result.contributions(), result.key_totals_by_key(), result.components,
            [labels[j] for j in result.keys], result.keys, result.key, result.weights, name,
            dpi=dpi, fmt=fmt_out)]
    if page is not None:
        from attnviz.files.fileio import write_bytes

        write_bytes(report, page.encode("utf-8"))
        files.append(str(report))
    if output_path is not None:
        from attnviz.analyses.why import why_arrays
        from attnviz.files.fileio import atomic_write
        from attnviz.files.npz import write_npz

        with atomic_write(output_path) as f:
            write_npz(f, why_arrays(result))
        files.append(str(output_path))
    if fmt == "json":
        document = why_document(result, all_keys=chosen == "all", top=top)
        if files:
            document["files"] = files
        output.json(document)
        return
    if fmt == "csv":
        if chosen == "all":
            output.csv(key_rows(result), ["component"] + [f"key_{j}" for j in result.keys])
        else:
            output.csv(matrix_rows(result), ["query_component", *result.components])
        return
    _print_table(output, result, labels, name, top, chosen == "all")
    for f in files:
        output.message(f"Wrote {f}")


def _print_table(output, result, labels, name: str, top: int, all_keys: bool) -> None:
    from attnviz.analyses.why import key_table_rows, pair_table_rows, score_line, side_table_rows

    output.line(name)
    output.line(score_line(result))
    output.table(pair_table_rows(result, top), ["rank", "query component", "key component",
                                                "contribution"],
                 title="Top pairs")
    output.table(side_table_rows(result, top), ["rank", "query side", "query total", "key side",
                                                "key total"],
                 title="Totals per component")
    if all_keys:
        output.table(key_table_rows(result, labels, top),
                     ["key", "token", "weight", "score", "top key-side components"],
                     title=f"Keys by weight ({len(result.keys)} visible)")
