"""`attnviz export` (.npz arrays) and `attnviz info` (configuration and versions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    NPZ,
    AllowSpecialOpt,
    AttentionOpt,
    BidirectionalOpt,
    CrossDInOpt,
    CrossOpt,
    DebugOpt,
    DecoderTextOpt,
    FileOpt,
    FormatOpt,
    LayerOpt,
    ModelOptions,
    PairOpt,
    QuietOpt,
    ResolutionOpt,
    SinkTokensOpt,
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
    decoder_text: DecoderTextOpt = None,
    attention: AttentionOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    resolution: ResolutionOpt = None,
    sink_tokens: SinkTokensOpt = 4,
    full_weights: Annotated[bool, typer.Option("--full-weights", help="A text longer than "
                            "--resolution tokens: also write every weight, (L, H, T, T) "
                            "float32 (4·L·H·T² bytes; refused when the disk has less free). "
                            "A shorter text's weights are always written.")] = False,
    pair: PairOpt = None,
    bidirectional: BidirectionalOpt = False,
    cross: CrossOpt = None,
    cross_d_in: CrossDInOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Save the attention weights (and optionally the inputs and parameters) as .npz.

    With --weighting norm also the value-weighted norms (norms, beside weights); with
    --rollout the attention rollout. A text longer than --resolution tokens (1024) gets
    pooled maps and statistics instead of every weight (docs/long-context.md). Prints
    what was written (with --quiet only the path); with -o - the .npz goes to standard
    output and the summary to standard error. An encoder–decoder (T5, BART, Marian):
    weights (encoder), decoder_weights and cross_weights, each (L, H, T_query, T_key),
    with both texts' tokens (docs/encoder-decoders.md).
    """
    import sys

    import numpy as np

    from attnviz.core.errors import InputError
    from attnviz.files.fileio import check_free_space
    from attnviz.files.output import Output

    to_stdout = str(output_path) == "-"
    output = Output("table", quiet)
    source = read_text(text, file)
    config, second = second_text(config, weights, bidirectional=bidirectional, cross=cross,
                                 cross_d_in=cross_d_in, pair=pair)
    if not to_stdout:
        check_file_target(output_path, "--output", NPZ)
    elif sys.stdout.isatty():
        raise InputError("--output - writes the binary .npz to standard output, which is a "
                         "terminal here; redirect it (> w.npz) or pipe it")
    from attnviz.analyses.attention import encode_inputs, layer_stream, load_model
    from attnviz.analyses.longcontext import check_resolution
    from attnviz.core.config import ModelConfig
    from attnviz.files.npz import Pieces
    from attnviz.files.progress import Progress

    options = config or ModelConfig()
    model = load_model(config, weights, seq2seq=True)
    from attnviz.cli import seq2seq

    if seq2seq.is_seq2seq(model):
        seq2seq.refuse({"--include-params": include_params, "--weighting norm": weighting == "norm",
                        "--rollout": rollout, "--tokens": tokens is not None,
                        "--full-weights": full_weights, "--pair": second.get("pair") is not None})
        with Progress(quiet) as progress:
            arrays = seq2seq.export_result(model, source, decoder_text=decoder_text,
                                           attention=attention, layer=layer,
                                           allow_special=allow_special, config=options,
                                           resolution=resolution)
            written = _write(arrays, output_path, to_stdout, progress)
        return _report(written, output_path, output, quiet, f"Wrote {output_path}")
    seq2seq.check_attention_options(model, attention, decoder_text)
    inputs = encode_inputs(model, source, allow_special, options.bos, options.chat, **second)
    token_ids = inputs["token_ids"]
    if len(token_ids) > check_resolution(resolution, len(token_ids)) and "key_ids" not in inputs:
        return _export_long(model, inputs, output_path, to_stdout, output, layer, tokens,
                            resolution, sink_tokens, full_weights, weighting, rollout,
                            include_params, quiet)  # a decoder's or an encoder's (a pair too)
    if len(inputs) > 1 or model.attention_kind != "decoder":  # a pair, cross, an encoder
        return _export_whole(model, inputs, output_path, to_stdout, output, layer, tokens,
                             resolution, sink_tokens, weighting, rollout, include_params, quiet)
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



def _export_whole(model, inputs, output_path, to_stdout, output, layer, tokens, resolution,
                  sink_tokens, weighting, rollout, include_params, quiet) -> None:
    """``export`` of an encoder's, a sentence pair's or cross-attention's weights: the whole
    result (``attention.result_arrays``): ``weights`` ``(L, H, Tq, Tk)``, the tokens, and for
    cross-attention the keys' ``key_tokens``; ``attention`` names the kind."""
    import numpy as np

    from attnviz.analyses.attention import result_arrays
    from attnviz.analyses.longcontext import analyze_tokens
    from attnviz.core.errors import InputError
    from attnviz.files.fileio import check_free_space
    from attnviz.files.progress import Progress

    for given, option in ((weighting == "norm", "--weighting norm"), (rollout, "--rollout")):
        if given:
            raise InputError(f"{option} is made for causal self-attention: export an encoder's "
                             f"or cross-attention's weights without it")
    with Progress(quiet) as progress:
        result = analyze_tokens(model, layer=layer, tokens=tokens, resolution=resolution,
                                sink_tokens=sink_tokens, progress=progress, **inputs)
        single = len(result.layers) == 1 and not any(str(x).strip().lower() == "all"
                                                     for x in layer or [])
        arrays = result_arrays(result, single)
        arrays["attention"] = np.asarray(result.attention)
        if result.pair_start is not None:
            arrays["token_types"] = np.asarray(inputs["token_types"], dtype=np.int64)[
                slice(*result.window) if result.window else slice(None)]
        if include_params:
            pick = (lambda a: a[0]) if single else (lambda a: a)  # noqa: E731
            arrays["attn_input"] = pick(result.attn_inputs)
            if result.cross:
                arrays["key_input"] = pick(result.key_inputs)
            arrays.update({name: pick(value) for name, value in result.params.items()})
        if not to_stdout:
            check_free_space(output_path, int(result.weights.nbytes), "--output")
        written = _write(arrays, output_path, to_stdout, progress)
    _report(written, output_path, output, quiet, f"Wrote {output_path}")


def _export_long(model, inputs, output_path, to_stdout, output, layer, tokens, resolution,
                 sink_tokens, full_weights, weighting, rollout, include_params, quiet) -> None:
    """``export`` of a long text (a decoder's or an encoder's, ``inputs`` as
    ``encode_inputs`` gives them): pooled maps and statistics (``LongResult.export_arrays``),
    the exact window of ``--tokens`` as ``weights``, and every weight with --full-weights."""
    import numpy as np

    from attnviz.analyses.attention import layer_stream
    from attnviz.analyses.longcontext import LongResult, analyze_tokens
    from attnviz.core.errors import InputError
    from attnviz.files.fileio import check_free_space
    from attnviz.files.npz import Pieces
    from attnviz.files.progress import Progress

    whole = ("--weighting norm" if weighting == "norm" else "--rollout" if rollout else
             "--include-params" if include_params else None)
    token_ids = inputs["token_ids"]
    if full_weights and "token_types" in inputs:
        raise InputError("--full-weights of a long sentence pair is not written: drop "
                         "--full-weights (the pooled maps and statistics are), or --pair")
    with Progress(quiet) as progress:
        result = analyze_tokens(model, layer=layer, tokens=tokens, resolution=resolution,
                                sink_tokens=sink_tokens, whole=whole, progress=progress,
                                **inputs)
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

    model = load_model(config, weights, seq2seq=True)
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


