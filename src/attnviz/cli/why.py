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
    AttentionOpt,
    BidirectionalOpt,
    CrossDInOpt,
    CrossOpt,
    DebugOpt,
    DecoderTextOpt,
    DpiOpt,
    FileOpt,
    FormatOpt,
    ImageFormatOpt,
    LayerOpt,
    ModelOptions,
    PairOpt,
    QuietOpt,
    TextArg,
    WeightsOpt,
    check_file_target,
    check_out_dir,
    deprecated,
    model_options,
    second_text,
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
    attention: AttentionOpt = None,
    decoder_text: DecoderTextOpt = None,
    pair: PairOpt = None,
    bidirectional: BidirectionalOpt = False,
    cross: CrossOpt = None,
    cross_d_in: CrossDInOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Why a head attends where it does: the score of query I and key J split exactly into
    (query-side component x key-side component) contributions — the embeddings, every
    earlier head and MLP, the biases — with the norm scales frozen at their actual values.

    A softcapped score (Gemma 2) is split before the cap. Encoders (BERT …, with --pair)
    and encoder–decoders (T5, BART, Marian: --attention encoder|decoder|cross, default
    cross, the target with --decoder-text) too: post-norm LayerNorms are frozen like the
    others. Without --weights: random mode's one layer (components: the embeddings;
    --bidirectional, --cross TEXT). See docs/why.md.
    """
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    chosen = parse_key(key)
    config, second = second_text(config, weights, bidirectional=bidirectional, cross=cross,
                                 cross_d_in=cross_d_in, pair=pair)
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
    from attnviz.analyses.attention import load_model, parse_layers
    from attnviz.analyses.attribution import token_labels
    from attnviz.analyses.why import (
        check_head,
        check_key,
        check_query,
        head_name,
        key_rows,
        layer_count,
        matrix_rows,
        parse_head,
        why_document,
        why_inputs,
    )
    from attnviz.analyses.why import why as run
    from attnviz.cli import seq2seq

    shown = seq2seq.KINDS  # one kind at a time: no --attention all
    model = seq2seq.model_for(config, weights, attention, decoder_text, shown) or load_model(
        config, weights)
    if seq2seq.is_seq2seq(model):
        seq2seq.refuse({"--pair": pair is not None, "--chat": config.chat})
    read = why_inputs(model, source, attention=attention, decoder_text=decoder_text,
                      allow_special=allow_special, bos=config.bos, chat=config.chat, **second)
    token_ids, kind, inputs = read.token_ids, read.kind, read.extra
    n_layers = layer_count(model, kind)
    if "." in head:  # the spelling of 0.2's first release: --head L.H
        deprecated("why", "--head L.H", "--head is a head number in every other command")
        layer, head_index = parse_head(head, n_layers, model.n_heads)
    elif not layer:
        raise InputError(f"--head {head} needs its layer: add --layer L")
    elif not head.isdigit():
        raise InputError(f"--head must be a head number (0, 1, …), got {head!r}")
    else:
        layers = parse_layers(layer, n_layers)
        if len(layers) != 1:
            raise InputError("why explains one head of one layer: give a single --layer L")
        layer, head_index = check_head(layers[0], int(head), n_layers, model.n_heads)
    position = check_query(query, len(read.query_ids))
    if isinstance(chosen, int):
        check_key(chosen, position, read.window(model, layer), layer, kind, len(read.key_ids))
    if report is not None:  # before the work: the page holds every position's parts
        from attnviz.analyses.why import count_components
        from attnviz.display.why_report import check_report_size

        n_query, n_key, head_dim = count_components(model, layer, kind)
        check_report_size(n_query, len(read.query_ids), head_dim, n_key, len(read.key_ids))
    from attnviz.files.progress import Progress

    with Progress(quiet) as progress:  # live bars on a terminal's stderr, else nothing
        result = run(model, token_ids, layer=layer, head=head_index, query=position,
                     key=chosen if isinstance(chosen, int) else None, progress=progress,
                     every_query=report is not None, attention=kind, **inputs)
    labels = token_labels(model.tokenizer, result.token_ids)
    key_labels = token_labels(model.tokenizer, result.key_ids)
    name = head_name(result, labels)
    files: list[str] = []
    page = None
    if report is not None:  # rendered (and its size checked) before anything is written
        from attnviz.display.why_report import render_why_html, why_payload

        page = render_why_html(why_payload(result, labels))
    if plot is not None:
        from attnviz.pictures.why import write_why_pictures

        files += [str(f) for f in write_why_pictures(
            plot, result.contributions(), result.key_totals_by_key(), result.query_components,
            [key_labels[j] for j in result.keys], result.keys, result.key, result.weights, name,
            dpi=dpi, fmt=fmt_out, key_names=result.key_components)]
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
            output.csv(matrix_rows(result), ["query_component", *result.key_components])
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
        bias = ["position bias"] if result.position_bias is not None else []
        output.table(key_table_rows(result, labels, top),
                     ["key", "token", "weight", "score", *bias, "top key-side components"],
                     title=f"Keys by weight ({len(result.keys)} visible)")
