"""`attnviz export` (.npz arrays) and `attnviz info` (configuration and versions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    NPZ,
    AllowSpecialOpt,
    DebugOpt,
    FileOpt,
    FormatOpt,
    LayerOpt,
    ModelOptions,
    QuietOpt,
    ResolutionOpt,
    SinkTokensOpt,
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
def export(
    text: TextArg = None,
    file: FileOpt = None,
    output_path: Annotated[Path, typer.Option("--output", "-o", metavar="FILE.npz", help="The "
                           ".npz file to write; "
                           "'-' writes it to standard output.", show_default=False)] = ...,
    include_params: Annotated[bool, typer.Option("--include-params", help="Also export the "
                              "attention input and the query/key/value weights.")] = False,
    weighting: WeightingOpt = "attention",
    rollout: Annotated[bool, typer.Option("--rollout", help="Also export the attention rollout "
                       "(T x T) through every layer from 0 to the deepest exported (--layer all: "
                       "the whole model); of the value-weighted rows with --weighting norm.")] = False,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    resolution: ResolutionOpt = None,
    sink_tokens: SinkTokensOpt = 4,
    full_weights: Annotated[bool, typer.Option("--full-weights", help="A text longer than "
                            "--resolution tokens: also write every weight, (L, H, T, T) "
                            "float32 (4·L·H·T² bytes; refused when the disk has less free). "
                            "A shorter text's weights are always written.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Save the attention weights (and optionally the inputs and parameters) as .npz.

    With --weighting norm also the value-weighted norms (norms, beside weights); with
    --rollout the attention rollout. A text longer than --resolution tokens (1024) gets
    pooled maps and statistics instead of every weight (docs/long-context.md). Prints
    what was written (with --quiet only the path); with -o - the .npz goes to standard
    output and the summary to standard error.
    """
    import sys

    import numpy as np

    from attnviz.core.errors import InputError
    from attnviz.files.fileio import check_free_space
    from attnviz.files.output import Output

    to_stdout = str(output_path) == "-"
    output = Output("table", quiet)
    source = read_text(text, file)
    if not to_stdout:
        check_file_target(output_path, "--output", NPZ)
    elif sys.stdout.isatty():
        raise InputError("--output - writes the binary .npz to standard output, which is a "
                         "terminal here; redirect it (> w.npz) or pipe it")
    from attnviz.analyses.attention import encode_text, layer_stream, load_model
    from attnviz.analyses.longcontext import check_resolution
    from attnviz.core.config import ModelConfig
    from attnviz.files.npz import Pieces
    from attnviz.files.progress import Progress

    options = config or ModelConfig()
    model = load_model(config, weights)
    token_ids = encode_text(model, source, allow_special, options.bos, options.chat)
    if len(token_ids) > check_resolution(resolution, len(token_ids)):
        return _export_long(model, token_ids, output_path, to_stdout, output, layer, tokens,
                            resolution, sink_tokens, full_weights, weighting, rollout,
                            include_params, quiet)
    with Progress(quiet) as progress:  # live bars on a terminal's stderr, else nothing
        # Each layer goes to the file as the forward pass reaches it: one in memory at a time.
        result = layer_stream(model, token_ids, layer, tokens, progress)
        if rollout:
            from attnviz.analyses.weighting import rollout_layers

            rolled = rollout_layers(layer, result.model.n_layers, default_all=False,
                                    option="--rollout")
        shape = result.shape  # (L, H, T, T), also for one layer: as the Python API has it
        arrays = {
            "weights": Pieces(shape, np.float32, result),
            "token_ids": np.asarray(result.token_ids, dtype=np.int64),
            "tokens": np.asarray([t["text"] for t in result.tokens()], dtype=str),
            "layers": np.asarray(result.layers, dtype=np.int64),
            # absolute positions of the tokens (a window of the text with --tokens)
            "positions": np.asarray([t["position"] for t in result.tokens()], dtype=np.int64),
        }
        if weighting == "norm":  # a second forward pass: still one layer in memory at a time
            from attnviz.analyses.weighting import stream_norms

            arrays["norms"] = Pieces(shape, np.float32, stream_norms(result))
        if rollout:
            from attnviz.analyses.weighting import model_rollout

            cut = slice(*result.window) if result.window else slice(None)
            arrays["rollout"] = lambda: model_rollout(result.model, result.all_token_ids, rolled,
                                                      weighting)[cut, cut].astype(np.float32)
            arrays["rollout_layers"] = np.asarray(rolled, dtype=np.int64)
        if include_params:  # gathered while the weights were written, so called after them
            arrays["attn_input"] = result.attn_inputs
            arrays.update({name: lambda name=name: result.params()[name]
                           for name in result.param_names()})
        if not to_stdout:  # the weights (and norms) dominate: each 4·L·H·T² bytes
            check_free_space(output_path, 4 * int(np.prod(shape)) * (1 + (weighting == "norm")),
                             "--output")
        written = _write(arrays, output_path, to_stdout, progress)
    _report(written, output_path, output, quiet, f"Wrote {output_path}")


def _write(arrays, output_path, to_stdout: bool, progress):
    """The .npz to its file (atomically) or kept for standard output:
    ``(its arrays' shapes and dtypes, the bytes for stdout or None)``."""
    import io
    from contextlib import nullcontext

    from attnviz.files.fileio import atomic_write
    from attnviz.files.npz import write_npz

    buffer = io.BytesIO()
    with nullcontext(buffer) if to_stdout else atomic_write(output_path) as f:
        written = write_npz(f, arrays)
    progress("Writing", 1, 1)
    progress.summary("Wrote the .npz" if to_stdout else f"Wrote {output_path}")
    return written, buffer.getvalue() if to_stdout else None


def _report(written, output_path, output, quiet: bool, title: str) -> None:
    """What was written: the table, the path (``--quiet``), or the .npz on standard output
    with its summary on standard error."""
    from attnviz.files.output import write_stdout

    shapes, data = written
    rows = [{"array": name, "shape": "x".join(map(str, dims)) or "scalar", "dtype": str(dtype)}
            for name, (dims, dtype) in shapes.items()]
    if data is not None:  # binary on stdout, nothing else there; the summary goes to stderr
        write_stdout(data)
        output.message("Wrote the .npz to standard output: " + ", ".join(
            f"{r['array']} {r['shape']} {r['dtype']}" for r in rows))
        return
    if quiet:
        output.paths([output_path])
        return
    output.table(rows, ["array", "shape", "dtype"], title=title)



def _export_long(model, token_ids, output_path, to_stdout, output, layer, tokens, resolution,
                 sink_tokens, full_weights, weighting, rollout, include_params, quiet) -> None:
    """``export`` of a long text: pooled maps and statistics (``LongResult.export_arrays``),
    the exact window of ``--tokens`` as ``weights``, and every weight with --full-weights."""
    import numpy as np

    from attnviz.analyses.attention import layer_stream
    from attnviz.analyses.longcontext import LongResult, analyze_tokens
    from attnviz.files.fileio import check_free_space
    from attnviz.files.npz import Pieces
    from attnviz.files.progress import Progress

    whole = ("--weighting norm" if weighting == "norm" else "--rollout" if rollout else
             "--include-params" if include_params else None)
    with Progress(quiet) as progress:
        result = analyze_tokens(model, token_ids, layer=layer, tokens=tokens,
                                resolution=resolution, sink_tokens=sink_tokens, whole=whole,
                                progress=progress)
        assert isinstance(result, LongResult)  # export chose this path: longer than --resolution
        arrays = result.export_arrays()
        records = result.tokens()
        arrays.update(tokens=np.asarray([t["text"] for t in records], dtype=str),
                      positions=np.arange(result.n_tokens, dtype=np.int64))
        if result.span is not None:
            arrays["weights"] = arrays.pop("window")
            del arrays["window_start"]
            arrays["weights_positions"] = np.arange(*result.span, dtype=np.int64)
        size = sum(np.asarray(a).nbytes for a in arrays.values())
        n, heads = result.n_tokens, result.n_heads
        if full_weights:
            stream = layer_stream(model, token_ids, layer, progress=progress)
            size += 4 * len(result.layers) * heads * n * n
            arrays["weights"] = Pieces(stream.shape, np.float32, stream)
        if not to_stdout:
            check_free_space(output_path, size, "--output")
        written = _write(arrays, output_path, to_stdout, progress)
    _report(written, output_path, output, quiet,
            f"Wrote {output_path} ({counted(n, 'token')}, pooled {result.block}×{result.block})")


@app.command()
@model_options
def info(
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the model configuration, parameter counts, versions and tokenizer data."""
    import platform
    from importlib.metadata import version

    from attnviz.files.output import Output
    from attnviz.text import gpt2_bpe as tokenizer

    output = Output(fmt, quiet)
    from attnviz.analyses.attention import load_model

    model = load_model(config, weights)
    model_info = model.describe()
    own = model_info.pop("tokenizer", None)  # a model's own tokenizer: its own section
    document = {
        "config": model_info,
        "versions": {name: version(name) for name in ("attnviz", "torch", "tiktoken",
                                                       "matplotlib", "typer", "rich", "numpy")}
        | {"python": platform.python_version()},
        "tokenizer": own or {"data": str(tokenizer.bpe_data_dir()),
                             "cache": str(tokenizer.cache_file())},
    }
    rows = [{"key": f"{section}.{k}" if fmt == "csv" else k, "value": v}
            for section, values in document.items() for k, v in values.items()]
    if fmt == "table":
        for section, values in document.items():
            output.mapping(values, title=section.capitalize())
    else:
        output.emit(document, rows, ["key", "value"])


