"""`attnviz train`: a small GPT-2 trained here, a snapshot every K steps, its heads filmed
(``attnviz.analyses.train_run`` runs it, ``attnviz.pictures.training`` draws it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli.app import app
from attnviz.cli.options import DebugOpt, DpiOpt, QuietOpt, check_out_dir
from attnviz.core.errors import InputError, Interrupted
from attnviz.core.words import counted


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="The run's folder: snapshots "
                   "step-NNNNNN/, training.jsonl, heads.gif, detectors.png.")],
    task: Annotated[str, typer.Option("--task", help="induction: random segments of 2 … "
                    "context/2 tokens tiled after noise, loss on the repeats (forms a layer-0 "
                    "previous-token head and a layer-1 induction head); previous: output the "
                    "previous token (forms previous-token heads).")] = "induction",
    text: Annotated[Path | None, typer.Option("--text", metavar="FILE", help="Train on this "
                    "UTF-8 text instead (next-token prediction, with a byte-level BPE of "
                    "--vocab tokens trained on it).", show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 4000,
    snapshot_every: Annotated[int, typer.Option("--snapshot-every", min=1, metavar="K",
                              help="Save a snapshot (and score it) every K steps.")] = 200,
    layers: Annotated[int, typer.Option("--layers", min=1, max=12, help="Layers.")] = 2,
    heads: Annotated[int, typer.Option("--heads", min=1, help="Heads per layer.")] = 2,
    d_model: Annotated[int, typer.Option("--d-model", min=8, help="Embedding width.")] = 64,
    context: Annotated[int, typer.Option("--context", min=16, max=1024, help="Sequence "
                       "length (the model's context).")] = 32,
    vocab: Annotated[int, typer.Option("--vocab", min=8, help="Vocabulary size (words for the "
                     "tasks, BPE tokens for --text).")] = 64,
    mlp: Annotated[bool, typer.Option("--mlp", help="Add MLPs (default: attention only).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")] = 6e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0,
                            help="AdamW weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seeds the "
                    "weights and every batch.")] = 3,
    probe: Annotated[str | None, typer.Option("--probe", metavar="TEXT", help="The sequence "
                     "the film shows (default: a probe of a period the training never used).",
                     show_default=False)] = None,
    film_format: Annotated[str, typer.Option("--film-format", help="gif, apng (heads.png) or "
                           "mp4 (needs ffmpeg).")] = "gif",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its "
                      "last snapshot (same options; --steps may grow).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the run in --out.")] = False,
    dpi: DpiOpt = 100,
    fmt: Annotated[str, typer.Option("--format", help="table or json (the summary on "
                   "stdout).")] = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a small GPT-2-architecture model here and film its heads as they learn.

    Every --snapshot-every steps a snapshot in the Hugging Face GPT-2 layout (any
    --weights opens it) and a line in training.jsonl with every head's scan scores on the
    probes and its circuit scores per period; at the end the film of the previous-token and
    induction heads (heads.gif) and detectors.png. See docs/training.md.
    """
    from attnviz.analyses.train_run import (
        RUN_FILE,
        RunSettings,
        check_settings,
        read_log,
        train,
    )
    from attnviz.analyses.training import TrainConfig
    from attnviz.files.output import Output
    from attnviz.pictures import checks
    from attnviz.pictures.training import check_film_format, write_run_pictures

    output = Output(fmt, quiet)
    if fmt not in ("table", "json"):
        raise InputError(f"--format must be table or json, got {fmt!r}")
    if text is not None and task != "induction":
        raise InputError("--text and --task: pass one (--text trains on the text)")
    film_name = check_film_format(film_format)
    checks.check_picture_options(dpi=dpi)
    check_out_dir(out, "--out")
    settings = RunSettings(
        TrainConfig(n_layer=layers, n_head=heads, n_embd=d_model, n_positions=context,
                    vocab_size=vocab, mlp=mlp, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, seed=seed),
        task="text" if text is not None else task, steps=steps, snapshot_every=snapshot_every,
        text=None if text is None else str(text), probe=probe)
    check_settings(settings)
    with _Bar(steps, quiet) as bar:
        try:
            summary = train(out, settings, resume=resume, force=force, on_step=bar.step,
                            on_snapshot=bar.snapshot)
        except KeyboardInterrupt:
            bar.stop()
            done = read_log(out) if (out / RUN_FILE).is_file() else []
            if not done:
                raise Interrupted("interrupted before the first snapshot; nothing to resume") from None
            raise Interrupted(f"interrupted; {out / done[-1]['snapshot']} is the last "
                              "complete snapshot (it opens with --weights); continue with "
                              f"attnviz train --out {out} --resume and the same options") from None
        bar.stop()
    from attnviz.files.progress import Progress

    with Progress(quiet) as progress:  # bars on a terminal's stderr, else nothing
        files = write_run_pictures(out, settings, summary.records, film_name, dpi=dpi,
                               progress=progress)
        progress.summary(f"Drew the film of {counted(len(summary.records), 'snapshot')} and the chart")
    _report(output, fmt, summary, files)


class _Bar:
    """Steps, loss and time left on stderr while training, unless --quiet: live bars on a
    terminal; elsewhere (a log file, CI) one plain line per snapshot."""

    def __init__(self, total: int, quiet: bool):
        import time

        from attnviz.files.progress import stderr_is_terminal

        self.total, self.enabled, self.bars = total, not quiet and stderr_is_terminal(), None
        self.plain = not quiet and not self.enabled
        self.started, self.first, self.loss = time.monotonic(), None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bars = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"),
                                 TextColumn("induction {task.fields[induction]}"),
                                 TimeElapsedColumn(), TextColumn("elapsed,"),
                                 TimeRemainingColumn(), TextColumn("left"),
                                 console=Console(stderr=True), transient=True)
            self.bars.start()
            self.task = self.bars.add_task("train", total=self.total, loss="—", induction="—")
        return self

    def step(self, done: int, loss: float) -> None:
        self.loss = loss
        if self.bars is not None and (done % 10 == 0 or done == self.total):
            self.bars.update(self.task, completed=done, loss=f"{loss:.3f}")

    def snapshot(self, record: dict) -> None:
        from attnviz.analyses.circuit import best_induction

        if self.bars is not None:
            self.bars.update(self.task, completed=record["step"],
                             induction=f"{best_induction(record):.2f}")
        elif self.plain:
            import time

            now, step = time.monotonic(), record["step"]
            if self.first is None:  # a resumed run starts here: time per step from now on
                self.first = (step, now)
            done, since = step - self.first[0], now - self.first[1]
            left = (f", about {since / done * (self.total - step):.0f} s left" if done > 0
                    and step < self.total else "")
            loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
            sys.stderr.write(f"step {step:,}/{self.total:,}{loss}, induction "
                             f"{best_induction(record):.2f}, {now - self.started:.0f} s"
                             f"{left}\n")
            sys.stderr.flush()

    def stop(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None

    def __exit__(self, *exc):
        self.stop()


def _report(output, fmt: str, summary, files: list[Path]) -> None:
    from attnviz.analyses.train_run import summary_document

    document = summary_document(summary, files)
    if fmt == "json":
        output.json(document)
        return
    rows = _circuit_rows(document["circuit"], f"step {document['steps']:,}")
    resumed = (f", resumed at step {summary.resumed_from:,}" if summary.resumed_from is not None
               else "")
    formed = document["circuit"]["formed"]
    when = (f"; the circuit formed between steps {formed['from_step']:,} and "
            f"{formed['step']:,} (loss {formed['loss_before']:.2f} → {formed['loss_after']:.2f})"
            if formed else "; the circuit did not form")
    output.table(rows, list(rows[0]), title=f"Trained {document['steps']:,} steps in "
                 f"{summary.seconds:.0f} s{resumed}; final loss {summary.last['loss']:.4f}{when}")
    for f in files:
        output.message(f"Wrote {f}")
    output.message(f"Wrote {counted(len(summary.records), 'snapshot')}, {summary.records[0]['snapshot']} … "
                   f"{summary.last['snapshot']}, and training.jsonl to {summary.out}")
    output.message(f"Next: attnviz scan --weights {summary.out}/step-* --file "
                   f"{summary.out}/probes.txt --layer all --plot {summary.out}/maps")


def _circuit_rows(found: dict, end: str) -> list[dict]:
    """The table's rows: the layer-0 previous-token head, the induction head (its weight
    on the induction target, averaged over the probed periods), and the induction head at
    each period, held-out ones marked."""
    previous, induction = found["previous_token"], found["induction"]

    def row(head: dict, role: str, start: float, score: float) -> dict:
        return {"head": f"L{head['layer']} H{head['head']}", "role": role, "step 0": start,
                end: score}

    rows = [row(previous, f"previous token (layer {previous['layer']})",
                previous["score_at_step_0"], previous["score"]),
            row(induction, f"induction (layer {induction['layer']}), every period",
                induction["score_at_step_0"], induction["score"])]
    for period, scores in induction["periods"].items():
        never = "" if scores["trained"] else ", never trained"
        rows.append(row(induction, f"  induction at period {period}{never}",
                        scores["score_at_step_0"], scores["score"]))
    return rows
