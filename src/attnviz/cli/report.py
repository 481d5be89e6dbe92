"""`attnviz report`: one self-contained, offline, interactive HTML file."""

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
    QuietOpt,
    TextArg,
    TokensOpt,
    WeightsOpt,
    check_file_target,
    model_options,
    score_induction,
)
from attnviz.inputs import read_text


@app.command()
@model_options
def report(
    text: TextArg = None,
    file: FileOpt = None,
    output_path: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path(
        "attnviz-report.html"
    ),
    induction: Annotated[bool, typer.Option(
        "--induction", help="Add each head's induction score to the statistics (a 100-token "
        "probe, as compare-heads --induction; meaningful with --weights).")] = False,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one offline, interactive HTML page: every head, heatmaps, statistics, tokens."""
    from attnviz.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    check_file_target(output_path, "--output")
    from attnviz.analysis import analyze
    from attnviz.report import check_size, write_report

    result = analyze(source, config, weights=weights, layer=layer, allow_special=allow_special,
                     tokens=tokens)
    check_size(*result.weights.shape[:3])
    scores = score_induction(output, config, weights, result.layers) if induction else None
    output.message(f"Writing {result.n_tokens} tokens × {result.weights.shape[0]} layer(s) × "
                   f"{result.n_heads} heads…")
    info = write_report(result, output_path, induction=scores)
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
