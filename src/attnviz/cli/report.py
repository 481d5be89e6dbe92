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
    WeightingOpt,
    WeightsOpt,
    check_file_target,
    model_options,
    score_induction,
)
from attnviz.errors import InputError
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
    from attnviz.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    check_file_target(output_path, "--output")
    from attnviz.analysis import analyze_with, crop, encode_text, load_model, parse_window
    from attnviz.report import check_size, write_report

    attributing = target is not None or contrast is not None
    if attributing:
        from attnviz.attribution import ABLATIONS, resolve_metric

        if ablate not in ABLATIONS:
            raise InputError(f"--ablate must be zero or mean, got {ablate!r}")
        if weights is None:
            raise InputError("--target needs trained weights: random mode has no output head "
                             "(unembedding); pass --weights")
    model = load_model(config, weights)
    token_ids = encode_text(model, source, allow_special, bos=config.bos)
    window = parse_window(tokens, len(token_ids))
    if attributing:
        metric_ids = resolve_metric(model, token_ids, target, contrast, position)
    rolled = None
    if rollout:
        from attnviz.weighting import rollout_layers

        rolled = rollout_layers(layer, model.n_layers, default_all=False, option="--rollout")
    result = analyze_with(model, token_ids, layer)
    result = crop(result, *window) if window else result
    check_size(*result.weights.shape[:3], matrices=2 if weighting == "norm" else 1)
    extras = {}
    if weighting == "norm":
        from attnviz.weighting import norm_weights

        extras["norms"] = norm_weights(result)
    if rolled is not None:
        from attnviz.weighting import model_rollouts

        output.message(f"Rolling attention out through layers 0-{rolled[-1]}…")
        cut = slice(*window) if window else slice(None)
        found = model_rollouts(model, token_ids, rolled, ["attention"] + (
            ["norm"] if weighting == "norm" else []))
        extras["rollout"] = {"layers": rolled, **{k: v[cut, cut] for k, v in found.items()}}
    attribution = None
    if attributing:
        from attnviz.attribution import attribute, report_data

        output.message(f"Attributing the prediction to {model.n_layers * model.n_heads} heads…")
        found = attribute(model, token_ids, position=position, target=metric_ids[0],
                          contrast=metric_ids[1], ablate=ablate)
        attribution = report_data(found, model.tokenizer)
    scores = score_induction(output, config, weights, result.layers) if induction else None
    if induction and weighting == "norm":
        extras["norm_induction"] = score_induction(output, config, weights, result.layers, "norm")
    output.message(f"Writing {result.n_tokens} tokens × {result.weights.shape[0]} layer(s) × "
                   f"{result.n_heads} heads…")
    info = write_report(result, output_path, induction=scores, attribution=attribution, **extras)
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
