"""`attnviz report`: one self-contained, offline, interactive HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    HTML,
    AllowSpecialOpt,
    AttentionOpt,
    BidirectionalOpt,
    DebugOpt,
    DecoderTextOpt,
    FileOpt,
    FormatOpt,
    LayerOpt,
    ModelOptions,
    PairOpt,
    QuietOpt,
    TextArg,
    TokensOpt,
    WeightingOpt,
    WeightsOpt,
    check_file_target,
    model_options,
    second_text,
)
from attnviz.core.words import counted
from attnviz.text.inputs import read_text


@app.command()
@model_options
def report(
    text: TextArg = None,
    file: FileOpt = None,
    output_path: Annotated[Path, typer.Option("--output", "-o", metavar="FILE.html",
                                              help="The HTML file to write.")] = Path(
        "attnviz-report.html"
    ),
    induction: Annotated[bool, typer.Option(
        "--induction", help="Add each head's induction score to the statistics (a 100-token "
        "probe, as compare-heads --induction; meaningful with --weights).")] = False,
    target: Annotated[str | None, typer.Option("--target", metavar="TOKEN", help="Add the "
                      "'heads that matter' view: each head's direct logit attribution and "
                      "ablation effect on this token's logit (see attnviz attribute).",
                      show_default=False)] = None,
    contrast: Annotated[str | None, typer.Option("--contrast", metavar="TOKEN", help="With the "
                        "view: the logit difference target - contrast.", show_default=False)] = None,
    position: Annotated[int, typer.Option("--position", help="With the view: the position whose "
                        "next token is explained (negative counts from the end).")] = -1,
    ablate: Annotated[str, typer.Option("--ablate", help="With the view: zero or mean "
                      "ablation.")] = "zero",
    weighting: WeightingOpt = "attention",
    rollout: Annotated[bool, typer.Option("--rollout", help="Add the attention rollout view: "
                       "through every layer from 0 to the deepest asked for (--layer all: the "
                       "whole model; --layer L: layers 0-L).")] = False,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    decoder_text: DecoderTextOpt = None,
    attention: AttentionOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    pair: PairOpt = None,
    bidirectional: BidirectionalOpt = False,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one offline, interactive HTML page: every head, heatmaps, statistics, tokens.

    With --weighting norm the page also holds the value-weighted norms and a switch between
    them and the weights; with --rollout, an attention rollout view. An encoder–decoder
    (T5, BART, Marian): a page with the switch between its encoder, decoder and cross
    attention (every layer unless --layer), the target given with --decoder-text. An
    encoder (BERT, RoBERTa, DistilBERT, ModernBERT; random --bidirectional): that page with
    its one kind, encoder, every layer unless --layer; with --pair the boundary between the
    two sentences drawn.
    """
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    check_file_target(output_path, "--output", HTML)
    from attnviz.analyses.attention import (
        check_causal,
        encode_inputs,
        encode_text,
        load_model,
    )
    from attnviz.display.report import write_report
    from attnviz.display.report_contents import check_report_options, report_contents

    check_report_options(weighting, target, contrast, ablate, pretrained=weights is not None)
    config, second = second_text(config, weights, bidirectional=bidirectional, pair=pair)
    model = load_model(config, weights, seq2seq=True)
    from attnviz.cli import seq2seq

    unsupported = {"--induction": induction, "--target": target is not None,
                   "--weighting norm": weighting == "norm", "--rollout": rollout,
                   "--tokens": tokens is not None}
    if seq2seq.is_seq2seq(model):
        seq2seq.refuse({**unsupported, "--pair": pair is not None})
        document = seq2seq.report(model, source, decoder_text=decoder_text, attention=attention,
                                  output_path=output_path, layer=layer,
                                  allow_special=allow_special, config=config, output=output)
        return _emit(document, output, output_path, fmt, quiet)
    seq2seq.check_attention_options(model, attention, decoder_text)
    if model.attention_kind == "encoder":
        seq2seq.refuse(unsupported, "for encoder models")
        document = seq2seq.encoder_report(model, source, pair=second["pair"],
                                          output_path=output_path, layer=layer,
                                          allow_special=allow_special, config=config,
                                          output=output)
        return _emit(document, output, output_path, fmt, quiet)
    if pair is not None:  # refused by name for a decoder
        encode_inputs(model, source, allow_special, pair=pair)
    check_causal(model, "attnviz report")
    token_ids = encode_text(model, source, allow_special, bos=config.bos, chat=config.chat)
    contents = report_contents(model, token_ids, layer=layer, tokens=tokens, weighting=weighting,
                               rollout=rollout, induction=induction, seed=config.seed,
                               target=target, contrast=contrast, position=position,
                               ablate=ablate, say=output.message)
    result = contents.result
    output.message(f"Writing {counted(result.n_tokens, 'token')} × "
                   f"{counted(result.weights.shape[0], 'layer')} × "
                   f"{counted(result.n_heads, 'head')}…")
    info = write_report(result, output_path, **contents.extras)
    document = info.as_dict()
    if result.window:
        document["window"] = {"start": result.window[0], "stop": result.window[1]}
    _emit(document, output, output_path, fmt, quiet)


def _emit(document: dict, output, output_path: Path, fmt: str, quiet: bool) -> None:
    """What was written: one row (the table), its path (--quiet) or the document."""
    row = {**document, "layers": ",".join(map(str, document["layers"]))}
    row.pop("window", None)
    if "window" in document:
        row["window"] = f"{document['window']['start']}:{document['window']['stop']}"
    if fmt == "table" and quiet:
        output.paths([output_path])
    elif fmt == "table":
        output.mapping(row, title=f"Wrote {output_path}")
    else:
        output.emit(document, [row], list(row))
