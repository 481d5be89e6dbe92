"""The encoder–decoder side of the commands (T5, BART, Marian): heatmap, compare-heads and
export of the three kinds of attention (``--attention encoder|decoder|cross|all``, the
target with ``--decoder-text``). Each command calls in here when its model is an
encoder–decoder; what a command cannot show of one is refused by the option's name."""

from __future__ import annotations

from pathlib import Path

from attnviz.core.errors import InputError

KIND_FOLDERS = ("encoder", "decoder", "cross")


def is_seq2seq(model) -> bool:
    from attnviz.analyses.seq2seq import is_seq2seq as check

    return check(model)


def model_for(config, weights, attention, decoder_text, shown=None):
    """The model of ``weights`` when it may be an encoder–decoder (or ``--attention`` /
    ``--decoder-text`` need checking against it), else None: random mode without them.
    For another model, what it cannot do is refused here."""
    if weights is None and attention is None and decoder_text is None:
        return None
    from attnviz.analyses.attention import load_model

    model = load_model(config, weights)
    if not is_seq2seq(model):
        check_attention_options(model, attention, decoder_text, shown)
    return model


def check_attention_options(model, attention: str | None, decoder_text: str | None,
                            shown=None) -> tuple[str, ...]:
    """The kinds asked for; for a model that is not an encoder–decoder, the refusals
    (``--decoder-text``, a kind it lacks) and nothing else."""
    from attnviz.analyses.seq2seq import CHOICES, check_attention

    return check_attention(model, attention, decoder_text, shown or CHOICES)


def refuse(options: dict[str, bool], why: str = "for encoder–decoder models") -> None:
    """One Error line naming the first option given that the command cannot honour."""
    for option, given in options.items():
        if given:
            raise InputError(f"{option} is not supported {why}")


def analyze(model, source: str, decoder_text, kinds, layer, head, allow_special, config,
            resolution=None):
    from attnviz.analyses.seq2seq import analyze_seq2seq

    return analyze_seq2seq(model, source, decoder_text, layer=layer, kinds=kinds, heads=head,
                           allow_special=allow_special, specials=config.bos,
                           resolution=resolution)


def tokens_document(result) -> dict:
    """The two texts' tokens, as every command's JSON gives them."""
    return {"tokens": result.tokens(), "decoder_tokens": result.decoder_tokens()}


def heatmap(model, source: str, *, decoder_text, attention, out: Path, picture, picture_format,
            layer, head, allow_special, config, resolution, output, fmt: str, quiet: bool) -> None:
    """``heatmap`` of an encoder–decoder: one folder of pictures per kind asked for
    (``OUT/encoder``, ``OUT/decoder``, ``OUT/cross``; one kind: ``OUT`` itself)."""
    from attnviz.files.progress import Progress
    from attnviz.pictures import plot

    kinds = check_attention_options(model, attention, decoder_text)
    result = analyze(model, source, decoder_text, kinds, layer, head, allow_special, config,
                     resolution)
    rows = []
    with Progress(quiet) as progress:
        for kind in result.kinds:
            shown = result.of(kind)
            folder = out / kind if len(result.kinds) > 1 else out
            output.message(f"Drawing {kind} attention: {shown.n_tokens}×{shown.n_keys} tokens × "
                           f"{len(shown.layers)} layer(s) × {shown.n_heads} heads…")
            files = plot.write_heatmaps(shown, folder, heads=head, image_format=picture_format,
                                        progress=progress, **picture.heatmap_args())
            rows += [{"file": str(f.path), "attention": kind, "layer": f.layer, "head": f.head}
                     for f in files]
        progress.summary(f"Wrote {len(rows)} {picture_format.upper()} files to {out}")
    document = {"files": [r["file"] for r in rows], **tokens_document(result),
                "config": {**result.config, "attention": list(result.kinds)}}
    if fmt == "table" and quiet:
        output.paths(document["files"])
        return
    output.emit(document, rows, ["file", "attention", "layer", "head"], keys=["file"],
                title=f"Wrote {len(rows)} {picture_format.upper()} files to {out} "
                      f"({', '.join(result.kinds)} attention)")
    if fmt == "table":
        from attnviz.cli.heatmap import _config_summary

        output.mapping(_config_summary(result.config), title="Model")


def export_arrays(result) -> dict:
    """``export``'s arrays: ``weights`` (encoder self-attention), ``decoder_weights``,
    ``cross_weights`` ``(L, H, T_dec, T_enc)``, each with its ``*layers``, and both texts'
    tokens: ``token_ids``/``tokens``/``positions`` (the source) and ``decoder_*``."""
    import numpy as np

    from attnviz.analyses.attention import token_arrays

    arrays = {}
    names = {"encoder": "", "decoder": "decoder_", "cross": "cross_"}
    for kind in result.kinds:
        shown = result.of(kind)
        arrays[f"{names[kind]}weights"] = shown.weights
        arrays[f"{names[kind]}layers"] = np.asarray(shown.layers, dtype=np.int64)
    arrays.update(token_arrays(result.tokens()))
    arrays.update(token_arrays(result.decoder_tokens(), "decoder_"))
    return arrays


def export(model, source: str, *, decoder_text, attention, output_path, to_stdout: bool, layer,
           allow_special, config, resolution, output, quiet: bool) -> None:
    """``export`` of an encoder–decoder: ``export_arrays`` in one .npz."""
    from attnviz.cli.export import _report, _write
    from attnviz.files.progress import Progress

    kinds = check_attention_options(model, attention, decoder_text)
    with Progress(quiet) as progress:
        result = analyze(model, source, decoder_text, kinds, layer or ["all"], None,
                         allow_special, config, resolution)
        written = _write(export_arrays(result), output_path, to_stdout, progress)
    _report(written, output_path, output, quiet,
            f"Wrote {output_path} ({', '.join(result.kinds)} attention)")


def compare_result(model, source: str, *, decoder_text, attention, layer, head, allow_special,
                   config):
    """The one kind ``compare-heads`` compares (``--attention`` names it; default cross,
    the alignment of the two texts)."""
    kinds = check_attention_options(model, attention or "cross", decoder_text,
                                     shown=KIND_FOLDERS)
    result = analyze(model, source, decoder_text, kinds, layer, head, allow_special, config)
    return result.of(kinds[0]), tokens_document(result)
