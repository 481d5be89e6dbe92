"""`attnviz steps`: one head walked through the attention pipeline, as one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
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
    PictureOptions,
    QuietOpt,
    TextArg,
    TokensOpt,
    WeightsOpt,
    check_file_target,
    model_options,
    picture_options,
    second_text,
)
from attnviz.core.errors import AttnvizError, InputError
from attnviz.core.words import counted
from attnviz.text.inputs import read_text


@app.command()
@model_options
@picture_options(full=False)
def steps(
    text: TextArg = None,
    file: FileOpt = None,
    head: Annotated[int, typer.Option("--head", min=0, metavar="I",
                                      help="The head to follow through the pipeline.",
                                      show_default=False)] = ...,
    output_path: Annotated[Path, typer.Option(
        "--output", "-o", metavar="FILE", help="The figure to write (.png, .svg, .pdf or .jpg).")] = Path(
        "attnviz-steps.png"),
    dropout: Annotated[float | None, typer.Option(
        "--dropout", metavar="P", help="Random mode: show nn.Dropout(P) on the weights (drawn "
        "with --seed), applied before the context, as the book does while training.",
        show_default=False)] = None,
    picture: PictureOptions = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    decoder_text: DecoderTextOpt = None,
    attention: AttentionOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    pair: PairOpt = None,
    bidirectional: BidirectionalOpt = False,
    cross: CrossOpt = None,
    cross_d_in: CrossDInOpt = None,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Draw one head's pipeline: Q, K, Q·Kᵀ, ÷√d_k, causal mask, softmax, V, context.

    --bidirectional: no mask step; --cross TEXT: K and V from the second text's input.
    An encoder–decoder (T5, BART, Marian): --attention encoder|decoder|cross (default
    cross), --decoder-text TARGET; T5's relative position bias is a step of its own.
    --format json prints every matrix (null where the mask put −∞).
    """
    import numpy as np

    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    source = read_text(text, file)
    config, second = second_text(config, weights, bidirectional=bidirectional, cross=cross,
                                 cross_d_in=cross_d_in, pair=pair)
    from attnviz.analyses import steps as pipeline
    from attnviz.pictures import checks
    from attnviz.pictures import steps as plot_steps

    picture.check()
    image_format = checks.image_format(output_path, picture.image_format, "--output")
    check_file_target(output_path, "--output")
    if dropout is not None:
        if weights is not None:
            raise InputError("--dropout shows the training-time step of the book's random model; "
                             "a checkpoint is shown as at inference: drop --dropout or --weights")
        pipeline.check_dropout(dropout)
    layers = [part for item in layer or [] for part in str(item).split(",") if part.strip()]
    if len(layers) > 1 or any(part.strip().lower() == "all" for part in layers):
        raise InputError("steps follows one head of one layer: give a single --layer N")
    from attnviz.analyses.attention import (
        analyze_with,
        check_text,
        crop,
        encode_inputs,
        load_model,
        parse_window,
    )

    check_text(source)
    model = load_model(config, weights, seq2seq=True)
    from attnviz.cli import seq2seq

    window, note, texts = None, "", None
    if seq2seq.is_seq2seq(model):
        seq2seq.refuse({"--tokens": tokens is not None, "--pair": pair is not None,
                        "--chat": bool(config.chat)})
        head_steps, result, texts, note = seq2seq.steps(
            model, source, decoder_text=decoder_text, attention=attention,
            layer=layers[0] if layers else None, head=head, allow_special=allow_special,
            config=config)
        token_ids = result.token_ids
        kind_fields = {"attention": head_steps.kind}  # every kind, the decoder's too
    else:
        seq2seq.check_attention_options(model, attention, decoder_text)
        inputs = encode_inputs(model, source, allow_special, config.bos, config.chat, **second)
        token_ids = inputs["token_ids"]
        window = parse_window(tokens, len(token_ids))
        plot_steps.check_steps_size(max(window[1] - window[0] if window else len(token_ids),
                                        len(inputs.get("key_ids") or [])))
        result = analyze_with(model, layer=layers or None, heads=[head], **inputs)
        head_steps = pipeline.head_steps(result, head, dropout=dropout, seed=config.seed)
        if window:  # the whole text was computed; queries and keys of the window are shown
            head_steps = _crop_steps(head_steps, *window)
            result = crop(result, *window)
        kind_fields = result.row_fields()
    heading = _heading(head_steps)
    output.message(f"Drawing {heading[0].lower()}{heading[1:]}, head {head}: "
                   f"{counted(result.n_tokens, 'token')}…")
    try:
        plot_steps.save_steps(
            output_path, head_steps, result.token_labels, image_format, picture.cmap,
            picture.dpi, picture.scale, title=picture.title and picture.title.format(
                head=head, layer=head_steps.layer, tokens=result.n_tokens),
            subtitle=_model_line(result.config, config.seed) + (
                f"; tokens {window[0]}-{window[1] - 1} of {len(token_ids)}, computed on the whole "
                "text (the cut rows of A need not sum to 1)" if window else "") + (
                f"\n{note}" if note else ""),
            key_labels=result.key_labels if result.cross else None)
    except OSError as exc:
        raise AttnvizError(f"cannot write {output_path}: {exc.strerror or exc}") from None

    matrices = head_steps.matrices()
    formulas = head_steps.formulas()
    shapes = {name: list(m.shape) for name, m in matrices.items()}
    if fmt == "json":
        output.json({
            "file": str(output_path),
            "layer": head_steps.layer,
            "head": head,
            "head_dim": head_steps.head_dim,
            "scale": head_steps.scale,
            **{key: value for key, value in (
                ("kv_head", head_steps.kv_head), ("window", head_steps.window),
                ("softcap", head_steps.softcap), ("rope", head_steps.rope)) if value is not None},
            "dropout": None if dropout is None else {"p": dropout, "seed": head_steps.seed},
            "formulas": formulas,
            "shapes": shapes,
            "matrices": {name: _float32_lists(m) for name, m in matrices.items()},
            "tokens": result.tokens(),
            **({"key_tokens": result.key_tokens()} if result.cross else {}),
            **result.row_fields(),
            "config": result.config,
            **({"window": {"start": window[0], "stop": window[1]}} if window else {}),
        } if texts is None else {
            **kind_fields, "file": str(output_path), "layer": head_steps.layer, "head": head,
            "head_dim": head_steps.head_dim, "scale": head_steps.scale,
            **({"relative_attention": head_steps.relative} if head_steps.relative else {}),
            "formulas": formulas, "shapes": shapes,
            "matrices": {name: _float32_lists(m) for name, m in matrices.items()},
            **texts, "config": result.config,
        })
        return
    if fmt == "table" and quiet:
        output.paths([output_path])
        return
    rows = [{**kind_fields, "step": i, "matrix": name, "formula": formulas[name],
             "shape": " × ".join(map(str, m.shape)),
             "min": float(m[np.isfinite(m)].min()), "max": float(m[np.isfinite(m)].max())}
            for i, (name, m) in enumerate(matrices.items(), start=1)]
    columns = [*kind_fields, "step", "matrix", "formula", "shape", "min", "max"]
    if fmt == "csv":
        output.csv(rows, columns)
        return
    shown = (f"tokens {window[0]}-{window[1] - 1} of the text" if window
             else counted(result.n_tokens, 'token'))
    if texts is not None:
        shown = _seq2seq_tokens(head_steps)
    output.table(rows, columns, title=f"{_heading(head_steps)}, head {head}: "
                 f"{shown}, d_k = {head_steps.head_dim}")
    output.mapping({"file": str(output_path), "format": image_format}, title="Wrote")


def _heading(steps) -> str:
    """"Layer 2", or for an encoder–decoder which kind (and stack): "Encoder self-attention,
    layer 2", "Cross-attention, decoder layer 2"."""
    if steps.kind is None:
        return f"Layer {steps.layer}"
    kind = {"encoder": "Encoder self-attention", "decoder": "Decoder self-attention",
            "cross": "Cross-attention"}[steps.kind]
    return f"{kind}, {'decoder layer' if steps.cross else 'layer'} {steps.layer}"


def _seq2seq_tokens(steps) -> str:
    """The rows (and columns) of an encoder–decoder's steps: "9 decoder tokens over 16
    source tokens"."""
    rows = counted(steps.n_tokens, "source token" if steps.kind == "encoder" else "decoder token")
    return f"{rows} over {counted(steps.n_keys, 'source token')}" if steps.cross else rows


def _crop_steps(steps, start: int, stop: int):
    """Queries, keys, values and context rows ``start..stop-1``, and the ``(T, T)`` matrices'
    window ``[start:stop, start:stop]``, of a head computed on the whole text (so the
    context rows still mix the values of the keys before the window)."""
    from dataclasses import replace

    from attnviz.analyses import steps as pipeline

    rows = slice(start, stop)
    # cross-attention: the keys are another text's, never cut
    square = (rows, slice(None) if steps.cross else rows)
    keyed = ("queries", "context") if steps.cross else ("queries", "keys", "values", "context")
    return replace(steps, **{name: getattr(steps, name)[rows] for name in
                             (*keyed, *pipeline.STAGES)
                             if getattr(steps, name) is not None},
                   **{name: getattr(steps, name)[square] for name in pipeline.SQUARE
                      if getattr(steps, name) is not None})


def _float32_lists(matrix):
    """Nested lists of the float32 values, each written in its shortest exact form (0.2,
    not 0.20000000298023224); None for -inf."""
    import numpy as np

    strings = matrix.astype(np.float32).astype(str)  # shortest round-trip repr
    return [[None if s == "-inf" else float(s) for s in row] for row in strings]


def _model_line(config: dict, seed: int) -> str:
    if config.get("mode") == "random":
        kind = (", no causal mask" if config.get("bidirectional") else
                f", cross-attention to a {config['cross_d_in']}-wide input"
                if config.get("cross_d_in") else "")
        return (f"random weights (seed {seed}), {counted(config['n_heads'], 'head')}, "
                f"d_model {config['d_model']}{kind}")
    path = Path(str(config.get("weights", "checkpoint")))
    name = path.parent.name if path.name in ("model.safetensors", "pytorch_model.bin") else path.name
    return f"weights: {name}, {counted(config['n_heads'], 'head')}, d_model {config['d_model']}"
