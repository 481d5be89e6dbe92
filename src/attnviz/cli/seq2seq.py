"""The encoder–decoder side of the commands (T5, BART, Marian): heatmap, compare-heads and
export of the three kinds of attention (``--attention encoder|decoder|cross|all``, the
target with ``--decoder-text``). Each command calls in here when its model is an
encoder–decoder; what a command cannot show of one is refused by the option's name."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from attnviz.core.errors import InputError

KINDS = ("encoder", "decoder", "cross")  # what one command shows one of at a time


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

    model = load_model(config, weights, seq2seq=True)
    if not is_seq2seq(model):
        check_attention_options(model, attention, decoder_text, shown)
    return model


def check_attention_options(model, attention: str | None, decoder_text: str | None,
                            shown=None) -> tuple[str, ...]:
    """The kinds asked for; for a model that is not an encoder–decoder, the refusals
    (``--decoder-text``, a kind it lacks) and nothing else."""
    from attnviz.analyses.seq2seq import CHOICES, check_attention

    return check_attention(model, attention, decoder_text, shown or CHOICES)


@contextmanager
def live_tokens(tokenizer, live: bool, before: str = ""):
    """``generate``'s ``on_token``: each token's text written to stdout as it comes when
    ``live`` (after ``before``, the prompt), the line ended when generation stops; else None."""
    import sys

    from attnviz.analyses.generation import TextStream

    if not live:
        yield None
        return
    stream = TextStream(tokenizer, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    sys.stdout.write(before)
    sys.stdout.flush()
    try:
        yield stream
    finally:
        stream.close()
        sys.stdout.write("\n")
        sys.stdout.flush()


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
            layer, head, allow_special, config, resolution, output, fmt: str,
            quiet: bool) -> dict | None:
    """``heatmap`` of an encoder–decoder: one folder of pictures per kind asked for
    (``OUT/encoder``, ``OUT/decoder``, ``OUT/cross``; one kind: ``OUT`` itself). Returns
    the model's description for the table's summary (None when there is no table)."""
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
        return None
    output.emit(document, rows, ["file", "attention", "layer", "head"], keys=["file"],
                title=f"Wrote {len(rows)} {picture_format.upper()} files to {out}")
    return result.config if fmt == "table" else None


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


def export_result(model, source: str, *, decoder_text, attention, layer, allow_special,
                  config, resolution):
    """What ``export`` writes of an encoder–decoder (``export_arrays``)."""
    kinds = check_attention_options(model, attention, decoder_text)
    return export_arrays(analyze(model, source, decoder_text, kinds, layer, None,
                                 allow_special, config, resolution))


def compare_result(model, source: str, *, decoder_text, attention, layer, head, allow_special,
                   config):
    """The one kind ``compare-heads`` compares (``--attention`` names it; default cross,
    the alignment of the two texts)."""
    kinds = check_attention_options(model, attention or "cross", decoder_text,
                                     shown=KINDS)
    result = analyze(model, source, decoder_text, kinds, layer, head, allow_special, config)
    return result.of(kinds[0]), tokens_document(result)


def steps(model, source: str, *, decoder_text, attention, layer, head, allow_special, config):
    """``steps`` of an encoder–decoder: one head of one kind (``--attention``; default
    cross, as ``compare-heads``) and one layer of its stack. Returns the ``HeadSteps`` and
    that kind's ``AttentionResult`` (its rows' and columns' tokens)."""
    from attnviz.analyses.seq2seq import encode_texts
    from attnviz.analyses.seq2seq_steps import seq2seq_head_steps
    from attnviz.pictures.steps import check_steps_size

    kind = check_attention_options(model, attention or "cross", decoder_text, shown=KINDS)[0]
    source_ids, target_ids = encode_texts(model, source, decoder_text, allow_special, config.bos)
    if kind != "decoder":
        check_steps_size(len(source_ids))
    if kind != "encoder":
        check_steps_size(len(target_ids), "--decoder-text")
    head_steps, result = seq2seq_head_steps(model, source_ids, target_ids, kind=kind,
                                            layer=layer or 0, head=head)
    return head_steps, result.of(kind), tokens_document(result), _steps_note(head_steps, model)


def _steps_note(head_steps, model) -> str:
    """What X (and X₂, B) are in the formulas of ``steps``, for the figure's subtitle."""
    kind, layer = head_steps.kind, head_steps.layer
    norm = ", after the layer's norm" if model.spec.pre_norm else ""
    note = {"encoder": f"X = what encoder layer {layer}'s self-attention reads{norm}",
            "decoder": f"X = what decoder layer {layer}'s self-attention reads{norm}",
            "cross": f"X = the decoder's state at layer {layer}'s cross-attention{norm}, "
                     "X₂ = the encoder's output"}[kind]
    relative = head_steps.relative
    if relative:
        stack = "encoder" if kind == "encoder" else "decoder"
        note += (f"; B from the {stack}'s layer {relative['layer']}, added in all its layers "
                 f"({relative['num_buckets']} buckets up to {relative['max_distance']} apart)")
    return note


def generate(model, source: str, *, max_new_tokens: int | None, sampling, settings: dict,
             ignore_eos: bool, top_k_report: int, out, npz_path, report_path, picture, head,
             layer, allow_special, config, output, fmt: str, quiet: bool) -> None:
    """``generate`` with an encoder–decoder: the source encoded once, the decoder writing
    from its start token as the generation config and ``settings`` (the options) say,
    greedily or by beam search; each written token's cross-attention over the source kept
    (the alignment picture with --out, ``cross_rows`` with --output); --report: the page of
    the three kinds over what the decoder read (its rows are the generation's, exactly)."""
    import sys

    from attnviz.analyses.attention import check_heads, check_ids, check_text, parse_layers
    from attnviz.analyses.decoding import not_applied
    from attnviz.analyses.generation import continuation_text
    from attnviz.analyses.seq2seq import generate_seq2seq

    check_text(source)
    layers = parse_layers(layer or "all", model.n_decoder_layers)
    check_heads(head, model.n_heads)
    source_ids = model.tokenizer.encode(source, allow_special=allow_special, add_bos=config.bos)
    check_ids(model, source_ids)
    tokenizer = model.tokenizer
    live = fmt == "table" and sys.stdout.isatty()
    with live_tokens(tokenizer, live) as stream:
        result = generate_seq2seq(model, source_ids, max_new_tokens, sampling=sampling,
                                  layers=layers, ignore_eos=ignore_eos, top_k_report=top_k_report,
                                  on_token=stream, **settings)
    if warning := not_applied(result.generation):
        output.warning(warning)
    written = _generation_files(result, model, out, npz_path, picture, head)
    if report_path is not None:
        from attnviz.analyses.seq2seq import analyze_seq2seq_ids
        from attnviz.display.seq2seq_report import write_seq2seq_report

        write_seq2seq_report(analyze_seq2seq_ids(model, source_ids, result.decoder_ids,
                                                 layer="all"), report_path)
        written.append(str(report_path))
    text = continuation_text(tokenizer, result.new_ids)
    if fmt == "json":
        output.json(generation_document(result, model, head, text, written))
        return
    if not live:
        sys.stdout.write(text + "\n")
    beams = f", {result.num_beams} beams" if result.num_beams > 1 else ""
    done = f"{len(result.new_ids)} tokens written (stopped: {result.stopped}{beams})"
    output.message("; ".join([done, *(f"wrote {w}" for w in written)]))


def alignment(result, model):
    """The generated tokens' cross-attention over the source as an ``AttentionResult``:
    a row per token written (labelled with it), a column per source token."""
    from attnviz.analyses.seq2seq import kind_result

    tokenizer = model.tokenizer
    special = frozenset(i for i in {*result.source_ids, *result.new_ids}
                        if tokenizer.is_special(i))
    return kind_result("cross", result.cross, result.layers,
                       (result.new_ids, tokenizer.token_bytes(result.new_ids)),
                       (result.source_ids, tokenizer.token_bytes(result.source_ids)),
                       {**result.config, "attention": "cross", "generated": True},
                       model.attn_scale(0), special)


def generation_document(result, model, heads, text: str, written: list[str]) -> dict:
    """The JSON of ``generate`` for an encoder–decoder (docs/encoder-decoders.md)."""
    from attnviz.analyses.attention import token_records

    tokenizer = model.tokenizer
    aligned = alignment(result, model)
    chosen = heads or list(range(result.cross.shape[1]))
    steps = []
    for g, record in enumerate(aligned.tokens()):
        steps.append({
            **record, "probability": result.probabilities[g],
            "top_k": [{**{k: v for k, v in token_records([i], tokenizer.token_bytes([i]))[0].items()
                          if k in ("id", "text", "label")}, "probability": p}
                      for i, p in result.alternatives[g]],
            # what each head of each layer looked at in the source when it wrote this token
            "cross_attention": [[result.cross[k, h, g].tolist() for h in chosen]
                                for k in range(len(result.layers))],
        })
    return {"source": {"tokens": aligned.key_tokens()}, "generated": steps, "text": text,
            "stopped": result.stopped, "decoder_start": result.start_id,
            "generation": result.generation, "num_beams": result.num_beams,
            **({"score": result.score} if result.score is not None else {}),
            "layers": result.layers, "heads": chosen, "config": result.config,
            **({"files": written} if written else {})}


def _generation_files(result, model, out, npz_path, picture, head) -> list[str]:
    """The .npz (``--output``) and the alignment pictures (``--out``), each written whole."""
    written = []
    if npz_path is not None:
        import numpy as np

        from attnviz.analyses.attention import token_arrays
        from attnviz.files.fileio import atomic_write
        from attnviz.files.npz import write_npz

        aligned = alignment(result, model)
        with atomic_write(npz_path) as f:
            write_npz(f, {
                "cross_rows": result.cross,  # (L, H, N, S): token g's row over the source
                "decoder_rows": result.decoder,  # (L, H, N, N): over the decoder's tokens 0..g
                **token_arrays(aligned.key_tokens()),  # the source
                **token_arrays(aligned.tokens(), "generated_"),
                "decoder_start": np.asarray(result.start_id, dtype=np.int64),
                "layers": np.asarray(result.layers, dtype=np.int64),
                "probabilities": np.asarray(result.probabilities, dtype=np.float32),
            })
        written.append(str(npz_path))
    if out is not None:
        from attnviz.pictures import checks, plot

        files = plot.write_heatmaps(alignment(result, model), out, heads=head,
                                    image_format=checks.image_format(None, picture.image_format),
                                    **picture.heatmap_args())
        written.append(f"{len(files)} pictures to {out}")
    return written


def report(model, source: str, *, decoder_text, attention, output_path, layer, allow_special,
           config, output) -> dict:
    """``report`` of an encoder–decoder: the page with the switch between its kinds
    (``display.seq2seq_report``), every layer unless ``--layer``; what was written."""
    from attnviz.display.seq2seq_report import write_seq2seq_report

    kinds = check_attention_options(model, attention, decoder_text)
    result = analyze(model, source, decoder_text, kinds, layer or ["all"], None, allow_special,
                     config)
    output.message(f"Writing {', '.join(result.kinds)} attention of {len(result.source_ids)} "
                   f"source and {len(result.target_ids)} decoder tokens…")
    info = write_seq2seq_report(result, output_path)
    return {**info.as_dict(), "attention": ",".join(result.kinds),
            "decoder_tokens": len(result.target_ids)}


def encoder_report(model, source: str, *, pair, output_path, layer, allow_special, config,
                   output) -> dict:
    """``report`` of an encoder model (BERT …, random ``--bidirectional``): the page of the
    encoder–decoders with its one kind, encoder (``analyses.seq2seq.encoder_result``), every
    layer unless ``--layer``; with ``pair`` (``--pair``) the sentence pair and its boundary."""
    from attnviz.analyses.attention import analyze_with, encode_inputs
    from attnviz.analyses.seq2seq import encoder_result
    from attnviz.display.seq2seq_report import write_seq2seq_report

    inputs = encode_inputs(model, source, allow_special, config.bos, config.chat, pair=pair)
    result = encoder_result(analyze_with(model, layer=layer or ["all"], **inputs))
    output.message(f"Writing encoder attention of {len(result.source_ids)} tokens"
                   + (" (a sentence pair)" if pair is not None else "") + "…")
    info = write_seq2seq_report(result, output_path)
    document = {**info.as_dict(), "attention": "encoder"}
    if result.pair_start is not None:
        document["pair_start"] = result.pair_start
    return document
