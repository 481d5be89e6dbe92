"""`attnviz needle` and `attnviz needle-merge`: which heads find the needle (retrieval and
streaming heads, lost-in-the-middle maps); see docs/needle.md."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import (
    DebugOpt,
    FormatOpt,
    ModelOptions,
    QuietOpt,
    WeightsOpt,
    check_file_target,
    check_out_dir,
    model_options,
)
from attnviz.core.errors import InputError
from attnviz.core.words import counted

PLOT_HELP = ("Write the pictures into this folder: the retrieval-score and streaming-mass maps, "
             "the depth x length accuracy map and the top heads' attention over the prompt.")
REPORT_HELP = "Write one self-contained HTML page with the tables and pictures."
COMPARE_HELP = ("Compare with published head labels: Retrieval_Head's head_score JSON "
                "({\"layer-head\": [scores]}) or DuoAttention's TSV (layers x kv heads).")
TOP_HELP = "Heads listed in the table (and drawn, up to 4, with --plot)."
DRAWN_HEADS = 4  # top heads whose rows are drawn
NeedleLayerOpt = Annotated[
    list[str] | None,
    typer.Option("--layer", metavar="L|L,M|all", help="Layer(s) whose heads are scored "
                 "(0-based): a number, a list or 'all'.  [default: all]", show_default=False),
]


# The outputs of needle and needle-merge, spelled once for both.
TopOpt = Annotated[int, typer.Option("--top", min=1, help=TOP_HELP)]
CompareOpt = Annotated[Path | None, typer.Option("--compare", metavar="FILE", help=COMPARE_HELP,
                                                 show_default=False)]
PlotOpt = Annotated[Path | None, typer.Option("--plot", metavar="DIR", help=PLOT_HELP,
                                              show_default=False)]
ReportOpt = Annotated[Path | None, typer.Option("--report", metavar="FILE.html",
                                                help=REPORT_HELP, show_default=False)]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="FILE.json", help="Write the JSON document (every test and head) "
    "to this file.", show_default=False)]


def parse_heads(spec: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``--zero-heads L16H3,L18H6`` -> ``[(16, 3), (18, 6)]``, checked against the model."""
    heads = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*L(\d+)\s*H(\d+)\s*", part, re.IGNORECASE)
        if match is None:
            raise InputError(f"--zero-heads takes heads as L<layer>H<head>, comma-separated (such "
                             f"as L16H3,L18H6), got {part!r}")
        layer, head = int(match[1]), int(match[2])
        if layer >= n_layers or head >= n_heads:
            raise InputError(f"--zero-heads {part.strip()}: the model has {n_layers} layers x "
                             f"{n_heads} heads")
        heads.append((layer, head))
    return heads


@app.command("needle")
@model_options
def needle_command(
    haystack: Annotated[Path | None, typer.Option(
        "--haystack", metavar="FILE", help="The haystack: a UTF-8 text, cut at whole tokens "
        "(repeated when too short). Default: built-in plain sentences.", show_default=False)] = None,
    needle: Annotated[str | None, typer.Option(
        "--needle", metavar="TEXT", help="The fact to hide (with --question and --answer; "
        "default: the built-in needles).", show_default=False)] = None,
    question: Annotated[str | None, typer.Option(
        "--question", metavar="TEXT", help="The question after the haystack.",
        show_default=False)] = None,
    answer: Annotated[str | None, typer.Option(
        "--answer", metavar="TEXT", help="The answer: a part of the needle, the tokens the "
        "model must copy.", show_default=False)] = None,
    needles_file: Annotated[Path | None, typer.Option(
        "--needles", metavar="FILE.jsonl", help='Needles, one JSON object a line with "needle", '
        '"question" and "answer".', show_default=False)] = None,
    lengths: Annotated[str, typer.Option(
        "--lengths", metavar="LIST|RANGE", help="Prompt lengths in tokens: 1k,2k,4k or "
        "START:STOP:STEP (k = 1000).")] = "1k,2k",
    depths: Annotated[str, typer.Option(
        "--depths", metavar="LIST|RANGE", help="Needle depths, 0 (start) to 1 (end): 0,0.5,1 "
        "or START:STOP:STEP.")] = "0:1:0.25",
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", "-n", min=1, help="Tokens to write at most (default: the "
        "answer's tokens + 10).", show_default=False)] = None,
    sink: Annotated[int | None, typer.Option(
        "--sink", min=0, metavar="S", help="Streaming mass: the first S keys (default 128, "
        "scaled down to a quarter of a short prompt with --recent).", show_default=False)] = None,
    recent: Annotated[int | None, typer.Option(
        "--recent", min=0, metavar="R", help="Streaming mass: the last R keys (default 256, "
        "scaled down likewise).", show_default=False)] = None,
    ablate: Annotated[str | None, typer.Option(
        "--zero-heads", metavar="HEADS", help="Zero these heads in every step (L16H3,L18H6): what "
        "the accuracy is without them.", show_default=False)] = None,
    top: TopOpt = 10,
    compare: CompareOpt = None,
    plot_dir: PlotOpt = None,
    report_path: ReportOpt = None,
    output_path: OutputOpt = None,
    shard: Annotated[str | None, typer.Option(
        "--shard", metavar="K/N", help="Run only tests K, K+N, … of the grid (0-based); merge "
        "the --partial files with attnviz needle-merge.", show_default=False)] = None,
    partial: Annotated[Path | None, typer.Option(
        "--partial", metavar="FILE.json", help="Write this run's tests whole, for attnviz "
        "needle-merge.", show_default=False)] = None,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: NeedleLayerOpt = None,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Find the heads that carry a needle from deep in a long prompt to the answer
    (retrieval heads, Wu et al. 2024) and those that look only at the first and the
    latest tokens (streaming heads, DuoAttention), over a grid of lengths and depths."""
    from attnviz.analyses import needle as nd
    from attnviz.analyses import needle_runs
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    length_list, depth_list = nd.parse_lengths(lengths), nd.parse_depths(depths)
    given = [v is not None for v in (needle, question, answer)]
    if any(given) and not all(given):
        raise InputError("--needle, --question and --answer go together: give all three")
    if all(given) and needles_file is not None:
        raise InputError("give either --needle/--question/--answer or --needles FILE.jsonl")
    shard_spec = needle_runs.parse_shard(shard) if shard is not None else (0, 1)
    for path, option in ((partial, "--partial"), (report_path, "--report"),
                         (output_path, "--output")):
        if path is not None:
            check_file_target(path, option)
    if plot_dir is not None:
        check_out_dir(plot_dir, "--plot")
    for path, option in ((haystack, "--haystack"), (compare, "--compare")):
        if path is not None and not path.is_file():
            raise InputError(f"{option} {path}: no such file")
    if weights is None:
        raise InputError("needle tests need trained weights: pass --weights (a checkpoint, a "
                         "GGUF file or a Hub repo id)")
    if all(given):
        needles = [nd.make_needle(needle, question, answer)]
    else:
        needles = nd.read_needles(needles_file) if needles_file else nd.default_needles()
    if haystack is not None:
        from attnviz.text.inputs import read_text

        haystack_text = read_text(None, haystack)
    else:
        haystack_text = nd.builtin_haystack(max(length_list) // 8 + 50)
    from attnviz.analyses.attention import load_model, parse_layers
    from attnviz.analyses.generation import check_can_generate

    model = load_model(config, weights)
    check_can_generate(model, 1, max_new_tokens or 1)
    layers = parse_layers(layer or "all", model.n_layers)
    ablated = parse_heads(ablate, model.n_layers, model.n_heads) if ablate else []
    labels = _read_labels(compare, model.n_layers, model.n_heads, model.kv_heads)
    plans = nd.prepare(model, haystack_text, needles, length_list, depth_list, chat=config.chat,
                       bos=config.bos, max_new_tokens=max_new_tokens, on_warning=output.warning)
    if sink is not None or recent is not None:
        windows = nd.streaming_windows(min(length_list), sink, recent)
        if sum(windows) >= min(length_list):
            raise InputError(f"--sink {windows[0]} + --recent {windows[1]} cover the whole "
                             f"prompt of {min(length_list)} tokens: the streaming mass would be 1")
    chosen = needle_runs.shard_tests(plans, *shard_spec)
    if not chosen:
        raise InputError(f"--shard {shard} holds no tests: the grid has {len(plans)}")
    options = {"chat": config.chat, "bos": config.bos, "max_new_tokens": max_new_tokens,
               "sink": sink, "recent": recent, "ablate": [list(h) for h in ablated]}
    described = {**model.describe(), "layers": layers}
    fp = needle_runs.fingerprint(described, layers, options, needles, length_list, depth_list,
                                 plans)
    from attnviz.files.progress import Progress

    finished = []

    def on_test(test) -> None:
        finished.append(test)
        progress("Tests", len(finished), len(chosen))

    with Progress(quiet) as progress:
        result = nd.run_needle(model, chosen, needles, length_list, depth_list, layers,
                               sink=sink, recent=recent, ablate=ablated, on_test=on_test)
    if partial is not None:
        needle_runs.write_partial(partial, needle_runs.partial_document(result, fp, shard_spec))
    extra = {"shard": {"index": shard_spec[0], "count": shard_spec[1]}} if shard else {}
    present(output, fmt, result, options, top, plot_dir, report_path, output_path, labels,
            tokenizer=model.tokenizer, extra=extra)
    if partial is not None:
        output.message(f"Wrote {partial}")


def _read_labels(compare: Path | None, n_layers: int, n_heads: int, kv_heads: list[int]):
    if compare is None:
        return None
    from attnviz.analyses.needle_runs import read_labels

    n_kv = len(set(kv_heads)) if kv_heads else n_heads
    return read_labels(compare, n_layers, n_heads, n_kv)


def top_head_rows(result, k: int) -> list[dict]:
    return [{"rank": i + 1, "head": f"L{r['layer']} H{r['head']}",
             "retrieval_score": r["retrieval_score"], "streaming_mass": r["streaming_mass"],
             "accuracy_when_fired": r["fired_accuracy"]}
            for i, r in enumerate(result.top(k))]


def accuracy_rows(result) -> tuple[list[dict], list[str]]:
    grid = result.accuracy()  # (depths, lengths), NaN where no test ran (a shard)
    columns = ["depth", *[f"{n:,}" for n in result.lengths]]
    rows = [{"depth": f"{d:g}", **{c: (None if math.isnan(grid[i, j]) else float(grid[i, j]))
                                   for j, c in enumerate(columns[1:])}}
            for i, d in enumerate(result.depths)]
    return rows, columns


def drawn_rows(result, k: int) -> dict:
    """For the top heads that copied at all: their pooled rows at the longest length run,
    one per depth (the first needle run there), and the needle's place in each."""
    import numpy as np

    longest = max(t.plan.length for t in result.tests)
    tests = [t for t in result.tests if t.plan.length == longest]
    first = min(t.plan.needle for t in tests)
    tests = sorted((t for t in tests if t.plan.needle == first), key=lambda t: t.plan.depth)
    drawn = {}
    for row in result.top(k):
        if row["retrieval_score"] <= 0:
            break
        index = result.layers.index(row["layer"])
        rows = np.stack([t.row[index, row["head"]] for t in tests])
        spans = [(t.plan.needle_span[0] / len(t.plan.prompt_ids),
                  t.plan.needle_span[1] / len(t.plan.prompt_ids)) for t in tests]
        drawn[(row["layer"], row["head"])] = (rows, spans, [t.plan.depth for t in tests], longest)
    return drawn


def present(output, fmt: str, result, options: dict, top: int, plot_dir: Path | None,
            report_path: Path | None, output_path: Path | None, labels, *, tokenizer=None,
            extra: dict | None = None) -> None:
    """The results of a grid (run or merged): table, JSON or CSV; pictures, page, file."""
    from attnviz.analyses.needle_runs import agreement
    from attnviz.files.output import clean, to_json

    rows = result.head_rows()
    scores = result.retrieval_scores()
    n_tests, n_counted = len(result.tests), len(result.counted)
    strong = int((scores > 0.1).sum())
    summary = (f"{counted(n_tests, 'test')} ({counted(len(result.lengths), 'length')} x "
               f"{counted(len(result.depths), 'depth')} x {counted(len(result.needles), 'needle')}), "
               f"{n_counted} counted (ROUGE-1 recall >= 0.5); "
               f"{strong} of {scores.size} heads score above 0.1")
    compared = None
    if labels is not None:
        kind, table = labels
        compared = agreement(scores, table[result.layers], result.kv_heads, kind)
    files: list[str] = []
    if plot_dir is not None or report_path is not None:
        from attnviz.pictures.needle import needle_pngs, write_pictures

        pngs = needle_pngs(result.layers, scores, result.streaming_mass(), result.accuracy(),
                           result.depths, result.lengths, drawn_rows(result, min(top, DRAWN_HEADS)),
                           n_counted, n_tests)
        if plot_dir is not None:
            files += [str(p) for p in write_pictures(plot_dir, pngs)]
        if report_path is not None:
            from attnviz.display.needle_report import needle_page, write_needle_page

            acc_rows, acc_columns = accuracy_rows(result)
            write_needle_page(report_path, needle_page(
                "attnviz needle: which heads find the needle", summary,
                top_head_rows(result, top), acc_rows, acc_columns, rows, pngs))
            files.append(str(report_path))
    tests = result.test_rows()
    if tokenizer is not None:
        from attnviz.analyses.needle import decode_text

        for test in tests:
            test["generated_text"] = decode_text(tokenizer, test["generated_ids"])
    document = clean({
        "heads": rows, "top": result.top(top), "tests": tests,
        "accuracy": {"lengths": result.lengths, "depths": result.depths,
                     "recall": result.accuracy()},
        "counted": n_counted, "n_tests": n_tests, "needles": [vars(n) for n in result.needles],
        "options": options, "config": result.config, **(extra or {}),
        **({"compare": compared} if compared is not None else {}),
        **({"files": files} if files else {}),
    })
    if output_path is not None:
        from attnviz.files.fileio import write_bytes

        write_bytes(output_path, (to_json(document) + "\n").encode())
        files.append(str(output_path))
    if fmt == "json":
        output.json(document)
    elif fmt == "csv":
        output.csv(rows, list(rows[0]))
    else:
        output.table(top_head_rows(result, top),
                     ["rank", "head", "retrieval_score", "streaming_mass", "accuracy_when_fired"],
                     keys=["rank", "head"], title="Retrieval heads (Wu et al.'s copy score)")
        acc_rows, acc_columns = accuracy_rows(result)
        output.line("Accuracy (ROUGE-1 recall) by depth (rows) and length (columns):")
        output.table(acc_rows, acc_columns, keys=["depth"])
        if compared is not None:
            rho = compared["spearman"]
            output.line(f"Compared with {compared['kind']}: {compared['overlap']} of the top "
                        f"{compared['k']} {compared['unit']}s in common; Spearman rho "
                        + ("—" if rho is None else f"{rho:.3f}"))
        output.line(summary)
    for f in files:
        output.message(f"Wrote {f}")


@app.command("needle-merge")
def needle_merge_command(
    partials: Annotated[list[Path] | None, typer.Argument(
        help="The --partial files of every shard of one needle grid.", show_default=False)] = None,
    top: TopOpt = 10,
    compare: CompareOpt = None,
    plot_dir: PlotOpt = None,
    report_path: ReportOpt = None,
    output_path: OutputOpt = None,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge the partials of a sharded needle grid (needle --shard K/N --partial F) into the
    results one run of the whole grid gives: the same table, JSON, CSV and pictures."""
    from attnviz.analyses import needle_runs
    from attnviz.files.output import Output

    output = Output(fmt, quiet)
    for path, option in ((report_path, "--report"), (output_path, "--output")):
        if path is not None:
            check_file_target(path, option)
    if plot_dir is not None:
        check_out_dir(plot_dir, "--plot")
    result, first = needle_runs.merge(partials or [])
    described = result.config
    labels = _read_labels(compare, int(described.get("n_layers", len(result.layers))),
                          result.n_heads, result.kv_heads)
    present(output, fmt, result, first["fingerprint"]["options"], top, plot_dir, report_path,
            output_path, labels, extra={"merged_shards": int(first["shard"]["count"])})
