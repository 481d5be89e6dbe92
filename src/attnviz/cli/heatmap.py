"""`attnviz heatmap` and `attnviz tokens`: pictures of the heads, and the tokenization."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    AllowSpecialOpt,
    AttentionOpt,
    BidirectionalOpt,
    BosOpt,
    CrossDInOpt,
    CrossOpt,
    DebugOpt,
    DecoderTextOpt,
    FileOpt,
    FormatOpt,
    HeadOpt,
    LayerOpt,
    ModelOptions,
    OfflineOpt,
    PairOpt,
    PictureOptions,
    QuietOpt,
    ResolutionOpt,
    SinkTokensOpt,
    TextArg,
    TokenizerOpt,
    TokensOpt,
    WeightingOpt,
    WeightsOpt,
    check_out_dir,
    deprecated,
    model_options,
    picture_options,
    second_text,
)
from attnviz.core.words import counted
from attnviz.text.inputs import read_text


@app.command()
@model_options
@picture_options(rollout=True)
def heatmap(
    text: TextArg = None,
    file: FileOpt = None,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the "
                   "pictures.")] = Path("attnviz-out"),
    out_deprecated: Annotated[Path | None, typer.Option("-o", hidden=True)] = None,
    head: HeadOpt = None,
    picture: PictureOptions = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    decoder_text: DecoderTextOpt = None,
    attention: AttentionOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    weighting: WeightingOpt = "attention",
    resolution: ResolutionOpt = None,
    sink_tokens: SinkTokensOpt = 4,
    pair: PairOpt = None,
    bidirectional: BidirectionalOpt = False,
    cross: CrossOpt = None,
    cross_d_in: CrossDInOpt = None,
    fmt: FormatOpt = "table",
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one heatmap PNG per head (head_00.png ...) and an overview grid (heads.png);
    with --view rollout, one picture of the model's attention rollout (rollout.png).
    An encoder–decoder (T5, BART, Marian): a folder per kind of attention (encoder,
    decoder, cross; --attention picks one), the target given with --decoder-text.

    A text longer than --resolution tokens (1024) is drawn pooled: each cell the largest
    weight of a block of the text, and each layer's statistics (stats.png). Prints what
    was written; with --quiet, only the paths, one per line.
    """
    from attnviz.core.errors import InputError
    from attnviz.files.output import Output

    if as_json and fmt not in ("table", "json"):
        raise InputError(f"--json and --format {fmt} disagree; give one of them")
    fmt = "json" if as_json else fmt
    output = Output(fmt, quiet)
    if out_deprecated is not None:
        deprecated("heatmap", "-o", "-o names one file in every other command")
        out = out_deprecated
    source = read_text(text, file)
    config, second = second_text(config, weights, bidirectional=bidirectional, cross=cross,
                                 cross_d_in=cross_d_in, pair=pair)
    from attnviz.pictures import checks, plot

    picture.check(rollout=True)
    picture_format = checks.image_format(None, picture.image_format)
    check_out_dir(out, "--out" if out_deprecated is None else "-o")
    if picture.view == "lines" and (cross is not None or bidirectional):
        raise InputError("--view lines draws causal self-attention: use --view heatmap with "
                         + ("--cross" if cross is not None else "--bidirectional"))
    if weighting == "norm" and cross is not None:
        raise InputError("--weighting norm weighs a text's keys by their values; with --cross "
                         "the keys are another text's: drop one of them")
    if weighting == "norm" and picture.exclude_first:
        raise InputError("--exclude-first renormalises attention rows; the norms of "
                         "--weighting norm are not probabilities (and already shrink a sink "
                         "whose value is short): give one of them")
    from attnviz.cli import seq2seq

    model = seq2seq.model_for(config, weights, attention, decoder_text)
    if model is not None and seq2seq.is_seq2seq(model):
        seq2seq.refuse({"--view rollout": picture.view == "rollout",
                        "--weighting norm": weighting == "norm", "--tokens": tokens is not None,
                        "--pair": pair is not None})
        described = seq2seq.heatmap(
            model, source, decoder_text=decoder_text, attention=attention, out=out,
            picture=picture, picture_format=picture_format, layer=layer, head=head,
            allow_special=allow_special, config=config, resolution=resolution, output=output,
            fmt=fmt, quiet=quiet)
        if described is not None:
            output.mapping(_config_summary(described), title="Model")
        return
    if picture.view == "rollout":
        if head:
            raise InputError("--view rollout draws the whole model in one picture: drop --head")
        if pair is not None or cross is not None:
            raise InputError(f"--view rollout follows one text through the layers: drop "
                             f"{'--pair' if pair is not None else '--cross'}")
        return _rollout(source, out, picture, picture_format, config, weights, layer, tokens,
                        allow_special, weighting, output, fmt, quiet)
    from attnviz.analyses.attention import check_text, encode_inputs, load_model
    from attnviz.analyses.longcontext import LongResult, analyze_tokens
    from attnviz.files.progress import Progress

    whole = ("--weighting norm" if weighting == "norm" else
             "--view lines" if picture.view == "lines" else
             "--exclude-first" if picture.exclude_first else
             "--annotate" if picture.annotate else None)
    with Progress(quiet) as progress:  # live bars on a terminal's stderr, else nothing
        check_text(source)
        model = model or load_model(config, weights)  # read once: seq2seq.model_for may have
        inputs = encode_inputs(model, source, allow_special, config.bos, config.chat, **second)
        result = analyze_tokens(model, layer=layer, heads=head, tokens=tokens,
                                resolution=resolution, sink_tokens=sink_tokens, maps=("max",),
                                whole=whole, progress=progress, **inputs)
        if picture.view == "lines":
            plot.check_lines(result)  # an encoder's: known once the model is read
        measure, long = {}, None
        if isinstance(result, LongResult):
            long, result, measure, extras = _long_pictures(result, picture, picture_format, head)
        if weighting == "norm":
            from attnviz.pictures.norms import norm_pictures

            result, measure["measure"] = norm_pictures(result)
        layers = f" × {counted(len(result.layers), 'layer')}" if len(result.layers) > 1 else ""
        pooled = f" (pooled {result.block}×{result.block})" if result.block > 1 else ""
        output.message(f"Drawing {counted(result.length, 'token')}{pooled}{layers} × {result.n_heads} "
                       f"heads…")
        files = plot.write_heatmaps(result, out, heads=head, image_format=picture_format,
                                    progress=progress, **picture.heatmap_args(), **measure,
                                    layer_extras=extras if long is not None else None)
        progress.summary(f"Wrote {counted(len(files), picture_format.upper() + ' file')} to {out}")
    rows = [{"file": str(f.path), "layer": f.layer, "head": f.head, **result.row_fields()}
            for f in files]
    document = {"files": [r["file"] for r in rows],
                "tokens": (long or result).tokens(), "config": result.config}
    document.update(result.row_fields())  # "attention": "encoder" / "cross"
    if result.cross:
        document["key_tokens"] = result.key_tokens()
    if result.window:
        document["window"] = {"start": result.window[0], "stop": result.window[1]}
    if long is not None:
        document.update(long_summary(long))
    if fmt == "table" and quiet:
        output.paths(document["files"])
        return
    window = f", tokens {result.window[0]}-{result.window[1] - 1}" if result.window else ""
    if measure:
        window += f" (value-weighted norms, colours 0-{measure['measure'].top:g})"
    output.emit(document, rows, ["file", "layer", "head", *result.row_fields()], keys=["file"],
                title=f"Wrote {counted(len(rows), picture_format.upper() + ' file')} to {out}{window}")
    if fmt == "table":
        output.mapping(_config_summary(result.config), title="Model")


def _rollout(source, out, picture, picture_format, config, weights, layer, tokens,
             allow_special, weighting, output, fmt, quiet) -> None:
    """``heatmap --view rollout``: one picture of the model, rollout.<fmt>."""
    from attnviz.analyses.weighting import analyze_rollout
    from attnviz.files.progress import Progress
    from attnviz.pictures import plot

    with Progress(quiet) as progress:
        found = analyze_rollout(source, config, weights=weights, layer=layer,
                                allow_special=allow_special, tokens=tokens, weighting=weighting,
                                progress=progress)
        output.message(f"Drawing the rollout of {counted(found.n_tokens, 'token')} through "
                       f"{counted(len(found.layers), 'layer')}…")
        files = plot.write_rollout(found.matrix, found.token_labels, out, found.title,
                                   picture.cmap, picture.dpi, picture.scale,
                                   image_format=picture_format, annotate=picture.annotate,
                                   title_template=picture.title, layer=found.layers[-1])
    document = {"files": [str(f.path) for f in files], "tokens": found.tokens(),
                "config": found.config}
    if found.window:
        document["window"] = {"start": found.window[0], "stop": found.window[1]}
    if fmt == "table" and quiet:
        output.paths(document["files"])
        return
    rows = [{"file": f, "layer": None, "head": None} for f in document["files"]]
    output.emit(document, rows, ["file", "layer", "head"], keys=["file"],
                title=f"Wrote {found.title[0].lower() + found.title[1:]} to {out}")
    if fmt == "table":
        output.mapping(_config_summary(found.config), title="Model")


def _long_pictures(long, picture, picture_format: str, heads):
    """A long text's pictures: its exact window (``--tokens``), or its pooled maps (each
    cell the largest weight of its block) with each layer's statistics."""
    from attnviz.pictures.longcontext import stats_figure

    def stats(li: int) -> bytes:
        return stats_figure(long, li, picture.dpi, picture_format, heads)

    if long.span is not None:
        return long, long.exact_window(), {}, {}
    return long, long.pooled("max"), {"measure": long_measure(long)}, {"stats": stats}


def long_measure(long):
    """The colour scale of a pooled map: weights, each cell its block's largest."""
    from attnviz.pictures.colours import Measure

    return Measure(label=f"largest weight of each {long.block}×{long.block} block",
                   block=long.block)


def long_summary(long) -> dict:
    """What a command's JSON says of a long text: the pooling and every head's statistics."""
    stats = long.stats()
    return {"pooled": {"block": long.block, "cells": long.n_blocks,
                       "sink_tokens": long.sink_tokens},
            "heads": [{"layer": layer, "head": h, **long.row_fields(),
                       **{name: round(float(values[li, h]), 6) for name, values in stats.items()}}
                      for li, layer in enumerate(long.layers) for h in range(long.n_heads)]}


def _config_summary(config: dict) -> dict:
    keys = ("mode", "weights", "family", "revision", "n_heads", "n_kv_heads", "d_model",
            "head_dim", "context_length", "sliding_window", "seed", "qkv_bias", "impl", "bidirectional",
            "cross_d_in", "layers")
    return {k: config[k] for k in keys if k in config}


@app.command()
def tokens(
    text: TextArg = None,
    file: FileOpt = None,
    weights: WeightsOpt = None,
    tokenizer: TokenizerOpt = None,
    bos: BosOpt = True,
    offline: OfflineOpt = False,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the tokenization: position, id, text (visible whitespace), bytes. GPT-2's by
    default; with --weights that model's own (its BOS first), with --tokenizer that file's."""
    from attnviz.analyses.attention import check_text, encode_text, load_model, token_records
    from attnviz.core.config import ModelConfig
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    if weights is not None:
        model = load_model(ModelConfig(offline=offline, progress=not quiet, bos=bos,
                                       tokenizer=None if tokenizer is None else str(tokenizer)),
                           weights, seq2seq=True)
        token_ids, tok = encode_text(model, source, allow_special, bos), model.tokenizer
    else:
        from attnviz.text import tokenization

        tok = (tokenization.load_tokenizer(tokenizer) if tokenizer is not None
               else tokenization.gpt2_tokenizer())
        check_text(source)
        token_ids = tok.encode(source, allow_special=allow_special, add_bos=bos)
    records = token_records(token_ids, tok.token_bytes(token_ids),
                            bos=bool(token_ids) and token_ids[0] == tok.bos_id)
    columns = ["position", "id", "label", "bytes"] if fmt == "table" else [
        "position", "id", "text", "label", "bytes"]
    if tok.bos_id is not None:
        columns.append("bos")
    name = "GPT-2" if tok.kind == "gpt2" else f"{tok.kind} ({tok.source})"
    output.emit({"tokens": records}, records, columns, title=f"{counted(len(records), name + ' token')}")
