"""`attnviz heatmap` and `attnviz tokens`: pictures of the heads, and the tokenization."""

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
    HeadOpt,
    LayerOpt,
    ModelOptions,
    PictureOptions,
    QuietOpt,
    TextArg,
    TokensOpt,
    WeightsOpt,
    check_out_dir,
    model_options,
    picture_options,
)
from attnviz.inputs import read_text


@app.command()
@model_options
@picture_options()
def heatmap(
    text: TextArg = None,
    file: FileOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = Path(
        "attnviz-out"
    ),
    head: HeadOpt = None,
    picture: PictureOptions = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one heatmap PNG per head (head_00.png ...) and an overview grid (heads.png).

    Prints what was written; with --quiet, only the paths, one per line.
    """
    from attnviz.errors import InputError
    from attnviz.output import Output

    if as_json and fmt not in ("table", "json"):
        raise InputError(f"--json and --format {fmt} disagree; give one of them")
    fmt = "json" if as_json else fmt
    output = Output(fmt, quiet)
    source = read_text(text, file)
    from attnviz import plot

    picture.check()
    picture_format = plot.image_format(None, picture.image_format)
    check_out_dir(out)
    from attnviz.analysis import analyze
    from attnviz.progress import Progress

    with Progress(quiet) as progress:  # live bars on a terminal's stderr, else nothing
        result = analyze(source, config, weights=weights, layer=layer,
                         allow_special=allow_special, heads=head, tokens=tokens, progress=progress)
        layers = f" × {len(result.layers)} layers" if len(result.layers) > 1 else ""
        output.message(f"Drawing {result.n_tokens} tokens{layers} × {result.n_heads} heads…")
        files = plot.write_heatmaps(result, out, heads=head, image_format=picture_format,
                                    progress=progress, **picture.heatmap_args())
        progress.summary(f"Wrote {len(files)} {picture_format.upper()} files to {out}")
    rows = [{"file": str(f.path), "layer": f.layer, "head": f.head} for f in files]
    document = {"files": [r["file"] for r in rows], "tokens": result.tokens(),
                "config": result.config}
    if result.window:
        document["window"] = {"start": result.window[0], "stop": result.window[1]}
    if fmt == "table" and quiet:
        output.paths(document["files"])
        return
    window = f", tokens {result.window[0]}-{result.window[1] - 1}" if result.window else ""
    output.emit(document, rows, ["file", "layer", "head"], keys=["file"],
                title=f"Wrote {len(rows)} {picture_format.upper()} files to {out}{window}")
    if fmt == "table":
        output.mapping(_config_summary(result.config), title="Model")


def _config_summary(config: dict) -> dict:
    keys = ("mode", "weights", "n_heads", "d_model", "head_dim", "context_length", "seed",
            "qkv_bias", "impl", "layers")
    return {k: config[k] for k in keys if k in config}


@app.command()
def tokens(
    text: TextArg = None,
    file: FileOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the GPT-2 tokenization: position, id, text (visible whitespace), bytes."""
    from attnviz.analysis import token_records
    from attnviz.output import Output
    from attnviz.tokenizer import encode, token_bytes

    output = Output(fmt, quiet)
    token_ids = encode(read_text(text, file), allow_special=allow_special)
    records = token_records(token_ids, token_bytes(token_ids))
    output.emit({"tokens": records}, records, ["position", "id", "label", "bytes"]
                if fmt == "table" else ["position", "id", "text", "label", "bytes"],
                title=f"{len(records)} GPT-2 tokens")


