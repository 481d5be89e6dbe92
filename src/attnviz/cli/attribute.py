"""`attnviz attribute`: which heads matter for one prediction (direct logit attribution and
ablation, see ``attnviz.analyses.attribution``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    AllowSpecialOpt,
    DebugOpt,
    DpiOpt,
    FileOpt,
    FormatOpt,
    ImageFormatOpt,
    ModelOptions,
    QuietOpt,
    TextArg,
    WeightsOpt,
    check_out_dir,
    model_options,
)
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.text.inputs import read_text


@app.command()
@model_options
def attribute(
    text: TextArg = None,
    file: FileOpt = None,
    target: Annotated[str | None, typer.Option("--target", metavar="TOKEN", help="The token "
                      "whose logit is explained (one token, e.g. ' Mary' with its leading "
                      "space). Default: the model's top prediction.", show_default=False)] = None,
    contrast: Annotated[str | None, typer.Option("--contrast", metavar="TOKEN", help="Explain the "
                        "logit difference target - contrast instead (the IOI metric).",
                        show_default=False)] = None,
    position: Annotated[int, typer.Option("--position", help="The position whose next token is "
                        "predicted (0-based; negative counts from the end).")] = -1,
    ablate: Annotated[str, typer.Option("--ablate", help="zero: a head's output removed; mean: "
                      "replaced by its mean over the prompt's positions (or --baseline-file's)."
                      )] = "zero",
    baseline_file: Annotated[Path | None, typer.Option("--baseline-file", metavar="FILE",
                             help="With --ablate "
                             "mean: average each head's output over these prompts (one a "
                             "line) instead of the prompt.", show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Predictions listed.")] = 10,
    top_heads: Annotated[int, typer.Option("--top-heads", min=1, help="Heads listed per "
                         "measure (largest |value| first) and drawn in top_heads.png.")] = 10,
    plot: Annotated[Path | None, typer.Option("--plot", metavar="DIR", help="Write dla.png, "
                    "ablation.png (layers x heads) and top_heads.png (their attention at the "
                    "position) to this folder.", show_default=False)] = None,
    dpi: DpiOpt = 100,
    image_format: ImageFormatOpt = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Which heads matter for the model's prediction at a position: each head's direct
    logit attribution and the effect of ablating it, with the predictions.

    The metric is the target's logit, or target - contrast with --contrast (before a final
    softcap). Needs --weights: random mode has no output head. See docs/attribution.md.
    """
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    if ablate not in ("zero", "mean"):
        raise InputError(f"--ablate must be zero or mean, got {ablate!r}")
    if baseline_file is not None and ablate != "mean":
        raise InputError("--baseline-file gives the means of --ablate mean; add --ablate mean")
    fmt_out = None
    if plot is not None:
        from attnviz.pictures import checks

        checks.check_picture_options(dpi=dpi)
        fmt_out = checks.image_format(None, image_format)
        check_out_dir(plot, "--plot")
    if weights is None:
        raise InputError("attribute needs trained weights: random mode has no output head "
                         "(unembedding); pass --weights (a checkpoint or a Hub repo id such as "
                         "gpt2)")
    from attnviz.analyses.attention import check_length, encode_text, load_model
    from attnviz.analyses.attribution import attribute as run
    from attnviz.analyses.attribution import (
        attribution_document,
        attribution_rows,
        describe_metric,
        resolve_metric,
        token_labels,
    )

    model = load_model(config, weights)
    token_ids = encode_text(model, source, allow_special, bos=config.bos, chat=config.chat)
    check_length(len(token_ids), model.context_length, " (the checkpoint's context)")
    target_id, contrast_id = resolve_metric(model, token_ids, target, contrast, position)
    tokenizer = model.tokenizer
    baseline = _baseline(model, baseline_file, config.bos) if baseline_file is not None else None
    from attnviz.files.progress import Progress

    with Progress(quiet) as progress:  # live bars on a terminal's stderr, else nothing
        result = run(model, token_ids, position=position, target=target_id, contrast=contrast_id,
                     ablate=ablate, baseline=baseline, top_k=top_k, progress=progress)
        progress.summary(f"{counted(model.n_layers * model.n_heads, 'head')} attributed ({ablate} ablation)")
    labels = token_labels(tokenizer, token_ids)
    metric_name = describe_metric(result, tokenizer)
    files = []
    if plot is not None:
        from attnviz.pictures.attribution import write_attribution_pictures

        files = [str(f) for f in write_attribution_pictures(
            result, labels, plot, metric_name, top=top_heads, dpi=dpi, fmt=fmt_out)]
    document = attribution_document(result, tokenizer)
    if files:
        document["files"] = files
    rows = attribution_rows(result)
    if fmt == "json":
        output.json(document)
        return
    if fmt == "csv":
        output.csv(rows, ["layer", "head", "dla", "ablation"]
                   + [f"key_{k}" for k in range(result.position + 1)])
        return
    _print_table(output, result, tokenizer, labels, metric_name, top_heads)
    for f in files:
        output.message(f"Wrote {f}")


def _baseline(model, path: Path, bos: bool) -> list[list[int]]:
    from attnviz.analyses.attention import encode_text
    from attnviz.analyses.scanning import read_corpus

    records, where = read_corpus(None, path, option="--baseline-file")
    prompts = []
    for number, line in records:
        ids = encode_text(model, line, bos=bos)
        if len(ids) > model.context_length:
            raise InputError(f"{where} {number} is {len(ids)} tokens, longer than the context "
                             f"length {model.context_length}: shorten it")
        prompts.append(ids)
    return prompts


def _print_table(output, result, tokenizer, labels, metric_name, top_heads) -> None:
    from attnviz.analyses.attribution import token_info, top_head_rows

    at = f"position {result.position} ({labels[result.position]})"
    predictions = [{"rank": rank, "token": token_info(tokenizer, i)["label"], "id": i,
                    "probability": p, "logit": logit}
                   for rank, (i, p, logit) in enumerate(result.predictions, start=1)]
    output.table(predictions, ["rank", "token", "id", "probability", "logit"],
                 title=f"Predictions after {at}")
    output.line(f"metric: {metric_name} = {result.metric:.4f}; the heads' direct attributions "
                f"add up to {float(result.dla.sum()):.4f} (with the embeddings, MLPs and biases: "
                f"{result.decomposition_total():.4f})")
    ablated = "zeroed" if result.ablate == "zero" else "mean-ablated"
    for measure, title in (("dla", "direct logit attribution"),
                           ("ablation", f"ablation effect (head {ablated})")):
        rows = top_head_rows(result, labels, measure, top_heads)
        output.table(rows, ["rank", "layer", "head", "dla", "ablation", "looks at"],
                     title=f"Top heads by {title}", keys=["rank", "layer", "head"])
