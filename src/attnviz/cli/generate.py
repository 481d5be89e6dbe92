"""`attnviz generate`: the model writes, and the attention of every token it writes is kept."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    HTML,
    NPZ,
    AllowSpecialOpt,
    DebugOpt,
    FileOpt,
    HeadOpt,
    LayerOpt,
    ModelOptions,
    PictureOptions,
    QuietOpt,
    TextArg,
    TokensOpt,
    WeightsOpt,
    check_file_target,
    check_out_dir,
    model_options,
    picture_options,
)
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.text.inputs import read_text


@app.command()
@model_options
@picture_options()
def generate(
    text: TextArg = None,
    file: FileOpt = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", "-n", min=1, show_default=False,
        help="Tokens to write at most [default: 20; an encoder–decoder: its generation "
             "config's max_new_tokens or max_length, else 20].")] = None,
    num_beams: Annotated[int | None, typer.Option(
        "--num-beams", min=1, show_default=False,
        help="Beam search with N beams (encoder–decoders) [default: the generation config's "
             "num_beams, else 1: greedy].")] = None,
    length_penalty: Annotated[float | None, typer.Option(
        "--length-penalty", show_default=False,
        help="Beam search: a finished sequence scores its log-probability / length ** X "
             "[default: the generation config's, else 1.0].")] = None,
    early_stopping: Annotated[str | None, typer.Option(
        "--early-stopping", metavar="true|false|never", show_default=False,
        help="Beam search: when to stop, as transformers' early_stopping [default: the "
             "generation config's, else false].")] = None,
    no_repeat_ngram_size: Annotated[int | None, typer.Option(
        "--no-repeat-ngram-size", min=0, show_default=False,
        help="Never write an n-gram of N tokens twice (0: allowed) [default: the generation "
             "config's].")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(
        "--repetition-penalty", show_default=False,
        help="Divide the score of every token already in the text by X (> 0; 1.0: off) "
             "[default: the generation config's].")] = None,
    min_new_tokens: Annotated[int | None, typer.Option(
        "--min-new-tokens", min=0, show_default=False,
        help="No end-of-sequence token before N new tokens [default: the generation config's "
             "min_new_tokens or min_length].")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Sample the next token (seeded by "
                                         "--seed) instead of taking the most likely.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="With --sample: divide the "
                                               "logits by this (> 0).")] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="With --sample: only the k "
                                              "most likely tokens.", show_default=False)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="With --sample: the smallest set "
                                                "of tokens holding this probability, in (0, 1].",
                                                show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Go on past the model's "
                                             "end-of-sequence token.")] = False,
    top_k_report: Annotated[int, typer.Option("--top-k-report", min=1, help="Alternatives "
                                              "reported per step (JSON, report).")] = 5,
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="Folder for the pictures of the "
                                             "generated rows (per head, and the overview).",
                                             show_default=False)] = None,
    npz_path: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE.npz",
                                                  help="Write the rows as .npz (see docs/generate.md).",
                                                  show_default=False)] = None,
    report_path: Annotated[Path | None, typer.Option("--report", metavar="FILE.html",
                                                     help="Write the offline report of the whole "
                                                     "sequence.", show_default=False)] = None,
    head: HeadOpt = None,
    picture: PictureOptions = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    tokens: TokensOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: Annotated[str, typer.Option("--format", help="table (the text) or json.")] = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Let the model continue TEXT and keep, for every token it writes, what each head
    looked at when it wrote it (with a KV cache: one new token per step).

    Prints the continuation as it comes on a terminal (all of it at the end when piped).
    The checkpoint's generation config (generation_config.json) applies as in transformers;
    each option overrides its setting. An encoder–decoder (T5, BART, Marian) writes its
    output for TEXT from its decoder's start token, greedily or by beam search; --out draws
    each written token's cross-attention over TEXT (alignment).
    """
    from attnviz.files.output import Output

    if fmt not in ("table", "json"):
        raise InputError(f"--format must be table or json, got {fmt!r}")
    output = Output(fmt, quiet)
    source = read_text(text, file)
    from attnviz.analyses.generation import Sampling

    sampling = Sampling(sample, temperature, top_k, top_p, config.seed)
    sampling.check()
    if sample and num_beams is not None and num_beams > 1:
        raise InputError("--num-beams cannot be combined with --sample: beam search keeps the "
                         "most likely sequences, sampling draws one")
    settings = {"num_beams": num_beams, "length_penalty": length_penalty,
                "early_stopping": early_stopping, "no_repeat_ngram_size": no_repeat_ngram_size,
                "repetition_penalty": repetition_penalty, "min_new_tokens": min_new_tokens}
    for path, option, kind in ((npz_path, "--output", NPZ), (report_path, "--report", HTML)):
        if path is not None:
            check_file_target(path, option, kind)
    if out is not None:
        picture.check()
        check_out_dir(out, "--out")
    if weights is None:
        raise InputError("generation needs trained weights: random mode has no output head; "
                         "pass --weights (a checkpoint or a Hub repo id such as gpt2)")
    from attnviz.analyses.attention import check_heads, check_text, encode_text, load_model, parse_layers
    from attnviz.analyses.decoding import DEFAULT_NEW_TOKENS, not_applied
    from attnviz.analyses.generation import check_can_generate, continuation_text
    from attnviz.analyses.generation import generate as run

    check_text(source)
    model = load_model(config, weights, seq2seq=True)
    from attnviz.cli import seq2seq

    if seq2seq.is_seq2seq(model):
        seq2seq.refuse({"--tokens": tokens is not None, "--chat": config.chat},
                       "when an encoder–decoder generates")
        return seq2seq.generate(model, source, max_new_tokens=max_new_tokens, sampling=sampling,
                                settings=settings, ignore_eos=ignore_eos,
                                top_k_report=top_k_report, out=out, npz_path=npz_path,
                                report_path=report_path, picture=picture, head=head,
                                layer=layer, allow_special=allow_special, config=config,
                                output=output, fmt=fmt, quiet=quiet)
    max_new_tokens = max_new_tokens or DEFAULT_NEW_TOKENS
    layers = parse_layers(layer or "all", model.n_layers)
    check_heads(head, model.n_heads)
    prompt_ids = encode_text(model, source, allow_special, bos=config.bos, chat=config.chat)
    check_can_generate(model, len(prompt_ids), max_new_tokens)
    tokenizer = model.tokenizer
    live = fmt == "table" and sys.stdout.isatty()
    with seq2seq.live_tokens(tokenizer, live, "" if quiet else source) as stream:
        result = run(model, prompt_ids, max_new_tokens, sampling=sampling, layers=layers,
                     ignore_eos=ignore_eos, top_k_report=top_k_report, on_token=stream,
                     **settings)
    if warning := not_applied(result.generation):
        output.warning(warning)
    written = _write_outputs(result, model, out, npz_path, report_path, picture, head, tokens)
    continuation = continuation_text(tokenizer, result.new_ids)
    if fmt == "json":
        output.json(document(result, model, head, continuation, written))
        return
    if not live:
        sys.stdout.write(continuation if quiet else source + continuation)
        sys.stdout.write("\n")
    output.message(f"{counted(len(result.new_ids), 'token')} written (stopped: {result.stopped}); "
                   + "; ".join(f"wrote {w}" for w in written) if written else
                   f"{counted(len(result.new_ids), 'token')} written (stopped: {result.stopped})")


def _records(tokenizer, token_ids: list[int], first: int) -> list[dict]:
    from attnviz.analyses.attention import token_records

    return token_records(token_ids, tokenizer.token_bytes(token_ids), first)


def document(result, model, heads: list[int] | None, continuation: str, written: list[str]) -> dict:
    """The JSON of `generate` (schema: docs/generate.md)."""
    tokenizer, p = model.tokenizer, result.prompt_length
    prompt = _records(tokenizer, result.prompt_ids, 0)
    if model.tokenizer.bos_id is not None and result.prompt_ids[:1] == [model.tokenizer.bos_id]:
        prompt[0]["bos"] = True
    chosen = heads or list(range(result.rows.shape[1]))
    steps = []
    for g, record in enumerate(_records(tokenizer, result.new_ids, p)):
        alternatives = [{**_records(tokenizer, [i], 0)[0], "probability": prob}
                        for i, prob in result.alternatives[g]]
        steps.append({
            **record, "probability": result.probabilities[g],
            "top_k": [{k: a[k] for k in ("id", "text", "label", "probability")} for a in alternatives],
            # keys 0 .. P+g-1: what each head looked at when it wrote this token
            "attention": [[result.rows[k, h, g, : p + g].tolist() for h in chosen]
                          for k in range(len(result.layers))],
        })
    return {"prompt": {"tokens": prompt}, "generated": steps, "text": continuation,
            "stopped": result.stopped, "generation": result.generation,
            "layers": result.layers, "heads": chosen,
            "config": result.config, **({"files": written} if written else {})}


def _write_outputs(result, model, out, npz_path, report_path, picture, head, tokens) -> list[str]:
    """The files asked for, each written whole (atomically) after generation."""
    written = []
    if npz_path is not None:
        import numpy as np

        from attnviz.files.fileio import atomic_write
        from attnviz.files.npz import write_npz

        with atomic_write(npz_path) as f:
            write_npz(f, {
                "rows": result.rows,  # (L, H, N, P + N), see docs/generate.md
                "token_ids": np.asarray(result.token_ids, dtype=np.int64),
                "tokens": np.asarray([t["text"] for t in _records(model.tokenizer, result.token_ids, 0)],
                                     dtype=str),
                "prompt_length": np.asarray(result.prompt_length, dtype=np.int64),
                "layers": np.asarray(result.layers, dtype=np.int64),
                "probabilities": np.asarray(result.probabilities, dtype=np.float32),
            })
        written.append(str(npz_path))
    labels = None
    if out is not None or report_path is not None:
        from attnviz.text.gpt2_bpe import token_label

        labels = [token_label(raw) for raw in model.tokenizer.token_bytes(result.token_ids)]
    extras = {"windows": [model.window(i) for i in result.layers], "kv_heads": list(model.kv_heads)}
    if out is not None:
        from attnviz.pictures import checks
        from attnviz.pictures import generation as plot_generate

        files = plot_generate.write_generation_pictures(
            result, labels, out, heads=head, cmap=picture.cmap, dpi=picture.dpi,
            scale=picture.scale, image_format=checks.image_format(None, picture.image_format),
            exclude_first_key=picture.exclude_first, tokens=tokens, **extras)
        written.append(f"{counted(len(files), 'picture')} to {out}")
    if report_path is not None:
        from attnviz.display import report

        report.write_generation_report(result, labels, report_path, tokenizer=model.tokenizer, **extras)
        written.append(str(report_path))
    return written
