"""`attnviz report`: one self-contained, offline, interactive HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    HTML,
    AllowSpecialOpt,
    DebugOpt,
    FileOpt,
    FormatOpt,
    LayerOpt,
    ModelOptions,
    QuietOpt,
    TextArg,
    TokensOpt,
    WeightingOpt,
    WeightsOpt,
    check_file_target,
    model_options,
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
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one offline, interactive HTML page: every head, heatmaps, statistics, tokens.

    With --weighting norm the page also holds the value-weighted norms and a switch between
    them and the weights; with --rollout, an attention rollout view.
    """
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    check_file_target(output_path, "--output", HTML)
    from attnviz.analyses.attention import encode_text, load_model
    from attnviz.display.report import write_report
    from attnviz.display.report_contents import check_report_options, report_contents

    check_report_options(weighting, target, contrast, ablate, pretrained=weights is not None)
    model = load_model(config, weights)
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
    row = {**document, "layers": ",".join(map(str, info.layers))}
    row.pop("window", None)
    if result.window:
        row["window"] = f"{result.window[0]}:{result.window[1]}"
    if fmt == "table" and quiet:
        output.paths([output_path])
    elif fmt == "table":
        output.mapping(row, title=f"Wrote {output_path}")
    else:
        output.emit(document, [row], list(row))
