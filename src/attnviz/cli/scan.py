"""`attnviz scan`: head statistics and detector scores over many prompts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from attnviz.analyses.describe import layer_text
from attnviz.cli.app import app
from attnviz.cli.options import (
    AllowSpecialOpt,
    AttentionOpt,
    DebugOpt,
    FormatOpt,
    LayerOpt,
    ModelOptions,
    QuietOpt,
    check_file_target,
    check_out_dir,
    model_options,
)
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.files.progress import ScanProgress, scan_progress_kind


@app.command("scan")
@model_options
def scan_command(
    prompts: Annotated[list[str] | None, typer.Argument(
        help="Prompts to scan, one per argument; '-' reads one prompt a line from standard "
        "input.", show_default=False)] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", metavar="FILE", help="Read the prompts from this UTF-8 file: one a "
        "line, or JSON Lines "
        'with a "text" field when it ends in .jsonl (and, for an encoder–decoder, an optional '
        '"target" its decoder reads).', show_default=False)] = None,
    jsonl: Annotated[bool, typer.Option(
        "--jsonl", help="Read the input as JSON Lines whatever its name.")] = False,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Scan only the first N prompts.", show_default=False)] = None,
    truncate: Annotated[bool, typer.Option(
        "--truncate", help="Cut prompts longer than the context instead of refusing them.")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Heads listed per detector in the "
                                     "table.")] = 5,
    per_prompt: Annotated[Path | None, typer.Option(
        "--per-prompt", metavar="FILE.jsonl", help="Stream one JSON line per prompt to this "
        "file as each is done.", show_default=False)] = None,
    plot_dir: Annotated[Path | None, typer.Option(
        "--plot", metavar="DIR", help="Write one layers x heads score map PNG per detector "
        "into this folder.", show_default=False)] = None,
    exclude_first: Annotated[bool, typer.Option(
        "--exclude-first", help="Detectors ignore attention to the first token (key 0).")] = False,
    exclude_self: Annotated[bool, typer.Option(
        "--exclude-self", help="Detectors ignore attention to the token itself.")] = False,
    induction: Annotated[bool, typer.Option(
        "--induction", help="Add each head's induction probe on a repeated random sequence.")] = False,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Prompts run together (fewer when they are long).")] = 16,
    progress: Annotated[bool, typer.Option(
        "--progress", help="Report progress on stderr even when it is not a terminal.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="With --per-prompt: go on from the prompts an interrupted run logged "
        "there (same corpus, model and options, checked).")] = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", metavar="K/N", help="Scan only shard K of N (0-based): slices of 256 prompts, "
        "every N-th; merge the --partial files with attnviz scan-merge.", show_default=False)] = None,
    partial: Annotated[Path | None, typer.Option(
        "--partial", metavar="FILE.json", help="Write the aggregates (count, mean, M2 per head) "
        "for attnviz scan-merge.", show_default=False)] = None,
    revisions: Annotated[str | None, typer.Option(
        "--revisions", metavar="LIST|RANGE", help="Scan one --weights REPO at each of these "
        "revisions: step1000,step2000 or a range step0:143000:8000 (Pythia's training "
        "checkpoints).", show_default=False)] = None,
    config: ModelOptions = None,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", metavar="PATH|REPO", help="Real weights instead of random ones (a "
        "checkpoint folder or file, or a Hub repo id, repo@revision); repeat it (or give a "
        "glob such as 'run/step-*') to scan the corpus with every checkpoint and compare.",
        show_default=False)] = None,
    attention: AttentionOpt = None,
    layer: LayerOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score every head over many prompts: detectors and statistics, mean ± std; with several
    checkpoints, every checkpoint's scores and what changed between them. Encoders (BERT …)
    too, and encoder–decoders (T5, BART, Marian: --attention encoder|decoder|cross|all)."""
    from attnviz.analyses import scan_runs
    from attnviz.analyses import scanning as scan
    from attnviz.analyses.attention import check_fits, load_model, parse_layers
    from attnviz.analyses.induction import check_induction_probe, induction_probe
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    from attnviz.cli.scan_checkpoints import checkpoint_names, scan_checkpoints

    names, prompts = checkpoint_names(weights, revisions, prompts, file)
    if len(names) > 1 or revisions is not None:
        for value, option in ((resume, "--resume"), (shard, "--shard"), (partial, "--partial"),
                              (per_prompt, "--per-prompt"), (attention, "--attention")):
            if value:
                raise InputError(f"{option} scans one checkpoint; run it once per --weights")
        if plot_dir is not None:
            check_out_dir(plot_dir, "--plot")
        records, where = scan.read_corpus(prompts, file, jsonl, limit)
        return scan_checkpoints(output, fmt, names, records, where, config=config, layer=layer,
                                truncate=truncate, allow_special=allow_special,
                                batch_size=batch_size, exclude_first=exclude_first,
                                exclude_self=exclude_self, induction=induction, top=top,
                                plot_dir=plot_dir, progress=scan_progress_kind(progress, quiet))
    weights = names[0] if names else None
    if resume and per_prompt is None:
        raise InputError("--resume goes on from a --per-prompt log; add --per-prompt FILE.jsonl "
                         "(the file the interrupted run wrote)")
    shard_spec = scan_runs.parse_shard(shard) if shard is not None else (0, 1)
    for path, option in ((per_prompt, "--per-prompt"), (partial, "--partial")):
        if path is not None:
            check_file_target(path, option)
    if plot_dir is not None:
        check_out_dir(plot_dir, "--plot")
    records, where = scan.read_corpus(prompts, file, jsonl, limit, targets=True)
    model = load_model(config, weights, seq2seq=True)
    from attnviz.cli import seq2seq

    kinds = seq2seq.check_attention_options(model, attention, None)  # refused by name
    if seq2seq.is_seq2seq(model):
        seq2seq.refuse({"--induction": induction, "--resume": resume, "--shard": shard is not None,
                        "--partial": partial is not None})
        return scan_seq2seq(output, fmt, model, records, where, kinds, config=config,
                            layer=layer, truncate=truncate, allow_special=allow_special,
                            batch_size=batch_size, exclude_first=exclude_first,
                            exclude_self=exclude_self, top=top, per_prompt=per_prompt,
                            plot_dir=plot_dir, progress=scan_progress_kind(progress, quiet))
    layers = parse_layers(layer, model.n_layers)
    if induction:
        check_induction_probe(model, fit=True)  # before the corpus is scanned, not after
    corpus = scan.model_corpus(model, records, truncate=truncate, allow_special=allow_special,
                               bos=config.bos, chat=config.chat, where=where)
    options = {"exclude_first": exclude_first, "exclude_self": exclude_self}
    described = {**model.describe(), "layers": layers, "device": str(model.device)}
    fp = scan_runs.fingerprint(described, layers, options, corpus.prompts)
    chosen = scan_runs.shard_prompts(corpus.prompts, *shard_spec)
    if not chosen:
        raise InputError(f"--shard {shard} holds no prompts: the corpus has "
                         f"{len(corpus.prompts)} (slices of {scan_runs.SHARD_SLICE}); use fewer shards")
    done, resume_at = {}, None
    if resume:
        plan = scan.plan_batches(chosen, batch_size, len(layers), model.n_heads)
        done, resume_at = scan_runs.read_log(per_prompt, fp, plan)
    check_fits(len(layers), model.n_heads, max(len(p.token_ids) for p in chosen))
    if corpus.one_token:
        output.warning(f"skipped {corpus.one_token} one-token prompt(s): the detectors need a "
                       "previous token")
    if done:
        output.message(f"Resuming: {len(done)} of {counted(len(chosen), 'prompt')} were scored by the "
                       "earlier run")
    started = time.perf_counter()
    todo = [p for p in chosen if p.index not in done]
    with scan.PromptLog(per_prompt, layers, scan_runs.log_header(fp), resume_at) as log, \
            ScanProgress(len(todo), sum(len(p.token_ids) for p in todo),
                     show=scan_progress_kind(progress, quiet)) as bar:
        result = scan.scan(model, chosen, layers, batch_size=batch_size,
                           exclude_first=exclude_first, exclude_self=exclude_self,
                           on_prompt=log.write if per_prompt else None, on_batch=bar.advance,
                           done=done)
    seconds = time.perf_counter() - started
    corpus_info = {"truncated": corpus.truncated, "skipped_one_token": corpus.one_token}
    if partial is not None:
        scan_runs.write_partial(partial, scan_runs.partial_document(result, fp, shard_spec,
                                                                    corpus_info, described))
    if induction:
        output.message("Scoring induction on a repeated random sequence…")
        result.induction_probe = induction_probe(model, layers, config.seed, fit=True)
    summary = (f"{counted(result.n_prompts, 'prompt')}, {counted(result.n_tokens, 'token')}, "
               f"{layer_text(layers)}, {seconds:.1f} s")
    if corpus.truncated:
        summary += f"; {corpus.truncated} truncated to {counted(model.context_length, 'token')}"
    if shard is not None:
        summary += f"; shard {shard_spec[0]}/{shard_spec[1]}"
    extra = {"shard": {"index": shard_spec[0], "count": shard_spec[1]}} if shard is not None else {}
    present(output, fmt, result, corpus_info, options, described, top, plot_dir, summary, extra)
    for path in (per_prompt, partial):
        if path is not None:
            output.message(f"Wrote {path}")


def present(output, fmt: str, result, corpus_info: dict, options: dict, described: dict,
            top: int, plot_dir: Path | None, summary: str, extra: dict | None = None) -> None:
    """The results of a scan (or a merge of partials): JSON, CSV or the table, and maps.
    ``result``: a ``ScanResult``, or an encoder–decoder's, one per kind (a list)."""
    from attnviz.analyses import scanning as scan

    parts = result if isinstance(result, list) else [result]
    kinds = isinstance(result, list)  # an encoder–decoder: everything said per kind
    ranked = {id(part): list(scan.top_columns(part.attention))
              + (["induction_probe"] if part.induction_probe is not None else [])
              for part in parts}
    files = []
    if plot_dir is not None:
        from attnviz.pictures.scan import detector_maps, save_score_maps

        maps, layers = {}, {}
        for part in parts:
            found = detector_maps(part, ranked[id(part)], f"{part.attention}_" if kinds else "")
            maps.update(found)
            layers.update(dict.fromkeys(found, part.layers))
        files = [str(p) for p in save_score_maps(plot_dir, maps, layers)]
    rows = [row for part in parts for row in part.rows()]
    first = parts[0]
    tops = {part.attention: {name: part.top(name, top) for name in ranked[id(part)]}
            for part in parts}
    document = {
        "heads": rows,
        "top": tops if kinds else tops[first.attention],
        **({"attention": [part.attention for part in parts]} if kinds else {}),
        "prompts": first.n_prompts,
        "tokens": first.n_tokens,
        "truncated": corpus_info["truncated"],
        "skipped_one_token": corpus_info["skipped_one_token"],
        "layers": {part.attention: part.layers for part in parts} if kinds else first.layers,
        "options": options,
        "config": described,
        **(extra or {}),
    }
    if files:
        document["files"] = files
    if fmt == "json":
        output.json(document)
    elif fmt == "csv":
        output.csv(rows, list(dict.fromkeys(key for row in rows for key in row)))
    else:
        for part in parts:
            heads = (f"{part.attention.capitalize()} attention: top heads" if part.attention
                     else "Top heads")
            output.table(scan.top_table(part, ranked[id(part)], top),
                         ["rank", *ranked[id(part)]], keys=["rank"],
                         title=f"{heads} per detector, mean ± std over "
                               f"{counted(part.n_prompts, 'prompt')}")
        output.line(summary)
    for f in files:
        output.message(f"Wrote {f}")


def scan_seq2seq(output, fmt: str, model, records, where: str, kinds: tuple[str, ...], *,
                 config, layer, truncate: bool, allow_special: bool, batch_size: int,
                 exclude_first: bool, exclude_self: bool, top: int, per_prompt: Path | None,
                 plot_dir: Path | None, progress: str | None) -> None:
    """``scan`` of an encoder–decoder (``analyses.scan_seq2seq``): each kind of ``kinds``
    scored over the corpus's sources (and JSON Lines targets), presented per kind."""
    from attnviz.analyses import scan_runs
    from attnviz.analyses import scan_seq2seq as s2s
    from attnviz.analyses import scanning as scan
    from attnviz.analyses.attention import check_fits

    layers = s2s.kind_layers(model, layer, kinds)
    corpus = s2s.seq2seq_corpus(model, records, truncate=truncate, allow_special=allow_special,
                                specials=config.bos, where=where)
    longest = max(max(len(p.token_ids), len(p.target_ids)) for p in corpus.prompts)
    check_fits(sum(len(v) for v in layers.values()), model.n_heads, longest)
    if corpus.one_token:
        output.warning(f"skipped {corpus.one_token} one-token prompt(s): the detectors need a "
                       "previous token")
    n_targets = sum(len(p.target_ids) > 1 for p in corpus.prompts)
    if n_targets < len(corpus.prompts) and {"decoder", "cross"} & set(kinds):
        output.message(f"{len(corpus.prompts) - n_targets} of {counted(len(corpus.prompts), 'prompt')} "
                       'have no "target": their decoder reads its start token only')
    options = {"exclude_first": exclude_first, "exclude_self": exclude_self}
    described = {**model.describe(), "attention": list(kinds), "device": str(model.device)}
    started = time.perf_counter()
    fp = {**scan_runs.fingerprint(described, [], options, corpus.prompts), "layers": layers}
    record = lambda prompt, values: s2s.seq2seq_record(prompt, values, layers)  # noqa: E731
    with scan.PromptLog(per_prompt, [], scan_runs.log_header(fp), record=record) as log, \
            ScanProgress(len(corpus.prompts), corpus.n_tokens, show=progress) as bar:
        results = s2s.scan_seq2seq(model, corpus.prompts, layers, batch_size=batch_size,
                                   on_prompt=log.write if per_prompt else None,
                                   on_batch=bar.advance, **options)
    seconds = time.perf_counter() - started
    corpus_info = {"truncated": corpus.truncated, "skipped_one_token": corpus.one_token}
    stacks = ", ".join(f"{kind} {layer_text(layers[kind])}" for kind in kinds)
    summary = (f"{counted(len(corpus.prompts), 'prompt')}, {counted(corpus.n_tokens, 'source token')}, "
               f"{counted(sum(len(p.target_ids) for p in corpus.prompts), 'decoder token')}; "
               f"{stacks}; {seconds:.1f} s")
    if corpus.truncated:
        summary += f"; {corpus.truncated} truncated to {counted(model.context_length, 'token')}"
    present(output, fmt, [results[kind] for kind in kinds], corpus_info, options, described, top,
            plot_dir, summary,
            {"decoder_tokens": sum(len(p.target_ids) for p in corpus.prompts)})
    if per_prompt is not None:
        output.message(f"Wrote {per_prompt}")


@app.command("scan-merge")
def scan_merge_command(
    partials: Annotated[list[Path] | None, typer.Argument(
        help="The --partial files of every shard of one scan.", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Heads listed per detector in the "
                                     "table.")] = 5,
    plot_dir: Annotated[Path | None, typer.Option(
        "--plot", metavar="DIR", help="Write one layers x heads score map PNG per detector "
        "into this folder.", show_default=False)] = None,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge the partials of a sharded scan (scan --shard K/N --partial F) into the results
    one scan of the whole corpus gives: the same table, JSON, CSV and maps."""
    from attnviz.analyses import scan_runs
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    if plot_dir is not None:
        check_out_dir(plot_dir, "--plot")
    result, first = scan_runs.merge(partials or [])
    n = int(first["shard"]["count"])
    summary = (f"{counted(result.n_prompts, 'prompt')}, {counted(result.n_tokens, 'token')}, "
               f"{layer_text(result.layers)}; merged from {n} shard(s)")
    present(output, fmt, result, first["corpus"], first["fingerprint"]["options"],
            first["config"], top, plot_dir, summary, {"merged_shards": n})
